"""Fault suite for `kormed prepare`'s outputs and CPT packing (issue 14 items 6, 7, 11c-d).

- publication: a kill at each phase of publishing corpus / .val.jsonl / .stats.json never leaves a mixed set that
  a reader accepts, and a rerun gives the bytes of an uninterrupted run (simulated in-process by raising a
  BaseException at the n-th rename onto an output, and once for real with os._exit in a subprocess);
- packing: linear in document length (each token copied once, memory bounded by a block), same blocks as before;
- leftovers of killed runs (kormed's temp names, dead pid) are removed and reported, a live run's are kept;
- outputs get the umask's normal modes (0644 / 0755), not mkstemp's 0600 / 0700.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import tracemalloc
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from kormed.config import load_config
from kormed.data.packing import pack_documents, pack_token_stream
from kormed.errors import KormedError
from kormed.io import atomic_write, clean_stale_temps, make_temp_dir, temp_prefix, write_json
from kormed.prepare.corpus import run_prepare
from kormed.prepare.publish import check_prepared_set


# -- helpers ---------------------------------------------------------------------------------------------------
class Killed(BaseException):
    """Stands for kill -9: not an Exception, so nothing on the way handles it as an error."""


def _cfg(out: Path, seed: int) -> Any:
    from kormed.sample_data import sample_data_root

    values = {"data_root": str(sample_data_root()), "out": str(out), "num_proc": 1, "seed": seed}
    return load_config("prepare", None, values)


def _set(out: Path) -> tuple[bytes | None, ...]:
    val = out.with_name(out.name.removesuffix(".jsonl") + ".val.jsonl")
    stats = out.with_name(out.name.removesuffix(".jsonl") + ".stats.json")
    return tuple(p.read_bytes() if p.exists() else None for p in (out, val, stats))


def _val(out: Path) -> Path:
    return out.with_name(out.name.removesuffix(".jsonl") + ".val.jsonl")


def _hidden(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith("."))


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _temp_name(name: str, pid: int, suffix: str = ".tmp") -> str:
    """A temp name as kormed makes it, for process `pid` on this host."""
    return temp_prefix(name).replace(f"-{os.getpid()}-", f"-{pid}-") + "abcd1234" + suffix


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple[bytes | None, ...]]:
    """An uninterrupted seed-2 run: the bytes every interrupted-then-rerun run must end with (same out path)."""
    d = tmp_path_factory.mktemp("prep")
    out = d / "mixed.jsonl"
    run_prepare(_cfg(out, 2), log=None, progress=False)
    ref = _set(out)
    for p in d.iterdir():
        p.unlink()
    return out, ref


# -- 6. publication as one unit --------------------------------------------------------------------------------
@pytest.mark.parametrize("kill_at", [1, 2, 3])
def test_kill_during_publication_never_leaves_an_accepted_mixed_set(
    reference: tuple[Path, tuple[bytes | None, ...]], monkeypatch: pytest.MonkeyPatch, kill_at: int
) -> None:
    out, ref = reference
    run_prepare(_cfg(out, 1), log=None, progress=False)  # an older, complete set (another seed)
    old = _set(out)
    assert old[0] != ref[0] and old[1] != ref[1]
    targets = {out, _val(out), out.with_name("mixed.stats.json")}
    real_replace = os.replace
    renames: list[Path] = []

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if Path(dst) in targets:
            if len(renames) + 1 == kill_at:
                raise Killed
            renames.append(Path(dst))
        real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Killed):
        run_prepare(_cfg(out, 2), log=None, progress=False)
    monkeypatch.setattr(os, "replace", real_replace)

    assert renames == [_val(out), out][: kill_at - 1]  # the stats file (the manifest) is published last
    state = _set(out)
    if state == old:
        check_prepared_set(out, _val(out))  # the older set is whole: accepted
    else:
        assert kill_at > 1
        with pytest.raises(KormedError, match="does not match mixed.stats.json"):
            check_prepared_set(out, _val(out))
    run_prepare(_cfg(out, 2), log=None, progress=False)
    assert _set(out) == ref
    check_prepared_set(out, _val(out))
    assert _hidden(out.parent) == []  # no work directory or temp file left


def test_readers_refuse_a_mixed_set_before_loading_anything(tmp_path: Path) -> None:
    """CPT refuses a corpus and validation file from two prepare runs (before the model is loaded); the pipeline
    runner's prepare stage treats such a set as missing output and redoes it."""
    from kormed.pipeline.stages import default_specs
    from kormed.train.config import CPTConfig
    from kormed.train.cpt import run_cpt

    out = tmp_path / "corpus" / "mixed.jsonl"
    run_prepare(_cfg(out, 1), log=None, progress=False)
    old_val = _val(out).read_bytes()
    check_prepared_set(out, _val(out))
    check_prepared_set(out, tmp_path / "elsewhere.jsonl")  # a validation file of the user's own: not checked
    run_prepare(_cfg(out, 2), log=None, progress=False)
    _val(out).write_bytes(old_val)  # what a kill between two renames of an older kormed left
    cfg = CPTConfig(data=str(out), val=str(_val(out)), output=str(tmp_path / "cpt"), model="/nonexistent/model")
    with pytest.raises(KormedError, match="mixed.val.jsonl: does not match mixed.stats.json"):
        run_cpt(cfg, log=lambda m: None)

    spec = default_specs()["prepare"]
    assert spec.verify is not None
    prep_cfg = _cfg(out, 2)
    problem = spec.verify(prep_cfg, None)
    assert problem and "does not match" in problem
    run_prepare(prep_cfg, log=None, progress=False)
    assert spec.verify(prep_cfg, None) is None


def test_real_kill_between_renames_then_rerun(reference: tuple[Path, tuple[bytes | None, ...]]) -> None:
    """kill -9 for real (os._exit after the first rename): the mixed set is refused, the killed run's work
    directory is removed by the rerun (and reported), and the rerun gives the uninterrupted bytes."""
    out, ref = reference
    run_prepare(_cfg(out, 1), log=None, progress=False)
    script = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from kormed.config import load_config
        from kormed.prepare.corpus import run_prepare
        from kormed.sample_data import sample_data_root

        real = os.replace
        def replace(src, dst, *a, **k):
            real(src, dst, *a, **k)
            if Path(dst) == Path({str(_val(out))!r}):
                os._exit(9)
        os.replace = replace
        cfg = load_config("prepare", None, {{"data_root": str(sample_data_root()), "out": {str(out)!r},
                                             "num_proc": 1, "seed": 2}})
        run_prepare(cfg, log=None, progress=False)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 9, proc.stderr
    leftovers = _hidden(out.parent)
    assert len(leftovers) == 1 and leftovers[0].endswith(".work")
    with pytest.raises(KormedError, match="does not match"):
        check_prepared_set(out, _val(out))
    messages: list[str] = []
    run_prepare(_cfg(out, 2), log=messages.append, progress=False)
    assert any("removed 1 stale temporary file(s)" in m and leftovers[0] in m for m in messages), messages
    assert _set(out) == ref
    assert _hidden(out.parent) == []


@pytest.mark.parametrize("where", ["spool", "staged file"])
def test_full_disk_over_an_earlier_output_names_the_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           where: str) -> None:
    """A full disk while prepare works (the spool, whose write errors carry no file name, or a staged file in its
    hidden work directory) is one line naming the --out the user gave, says the earlier output is kept, and leaves
    it byte for byte, with nothing hidden behind (issue 28)."""
    import errno

    from typer.testing import CliRunner

    from kormed.cli import app
    from kormed.prepare import mix
    from kormed.sample_data import sample_data_root

    out = tmp_path / "corpus" / "mixed.jsonl"
    run_prepare(_cfg(out, 1), log=None, progress=False)
    earlier = _set(out)

    def full(*_a: Any, **_k: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(*((mix.Spool, "add") if where == "spool" else (os, "fsync")), full)
    result = CliRunner().invoke(app, ["prepare", "--data-root", str(sample_data_root()), "--out", str(out),
                                      "--num-proc", "1", "--seed", "2"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    line = result.output.splitlines()[-1].split("\r")[-1]
    assert line.startswith(f"kormed: error: {out}: the disk is full"), line
    assert ".kormed-" not in line  # not the hidden staging path, which is gone by the time the user reads it
    if where == "spool":
        assert "the earlier output is unchanged" in line
    assert _set(out) == earlier
    assert _hidden(out.parent) == []


# -- 7. linear packing -----------------------------------------------------------------------------------------
def _reference_pack(documents: Any, *, max_length: int, bos_id: int, eod_id: int) -> Iterator[list[int]]:
    """The packer as it was (quadratic on a long document, but the definition of the blocks)."""
    body = max_length - 1
    buffer: list[int] = []
    for ids in documents:
        buffer.extend(ids)
        buffer.append(eod_id)
        while len(buffer) >= body:
            yield [bos_id, *buffer[:body]]
            del buffer[:body]
    if buffer:
        yield [bos_id, *buffer]


def test_packing_gives_the_same_blocks_as_before() -> None:
    r = random.Random(0)
    for _ in range(400):  # boundaries: empty documents, exact multiples of the block body, carry-overs
        max_length = r.randint(2, 12)
        body = max_length - 1
        lengths = [r.choice([0, 1, body - 1, body, body + 1, 2 * body - 1, 2 * body, r.randint(0, 40)])
                   for _ in range(r.randint(0, 8))]
        docs = [[r.randint(5, 99) for _ in range(n)] for n in lengths]
        assert pack_documents(docs, max_length=max_length, bos_id=2, eod_id=1) == list(
            _reference_pack(docs, max_length=max_length, bos_id=2, eod_id=1))
    moderate = [[r.randint(5, 99) for _ in range(n)] for n in (3, 50_000, 7, 1_000, 0, 20_001)]
    assert pack_documents(moderate, max_length=512, bos_id=2, eod_id=1) == list(
        _reference_pack(moderate, max_length=512, bos_id=2, eod_id=1))


class CountingDocument(Sequence[int]):
    """A document that counts every token handed out (by index, slice or iteration)."""

    def __init__(self, n: int) -> None:
        self.data = list(range(10, 10 + n))
        self.touched = 0

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: Any) -> Any:
        got = self.data[index]
        self.touched += len(got) if isinstance(got, list) else 1
        return got

    def __iter__(self) -> Iterator[int]:
        self.touched += len(self.data)
        return iter(self.data)


def test_packing_a_long_document_is_linear() -> None:
    """A 2M-token document: each token is handed out once and the packer holds no more than about a block
    (a packer that buffers the document and deletes from its front, as before, is quadratic and holds it all)."""
    n, max_length = 2_000_000, 512
    doc = CountingDocument(n)
    short = CountingDocument(5)
    tracemalloc.start()
    try:
        blocks = tokens = 0
        last: list[int] = []
        for block in pack_token_stream([short, doc, short], max_length=max_length, bos_id=2, eod_id=1):
            assert block[0] == 2 and len(block) <= max_length
            blocks += 1
            tokens += len(block) - 1
            last = block
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert tokens == n + 2 * 5 + 3 and blocks == -(-tokens // (max_length - 1))
    assert doc.touched == n and short.touched == 2 * 5
    assert last[-1] == 1 and last[-6:-1] == short.data
    assert peak < 200 * max_length * 8, peak  # a few blocks of pointers; the whole document would be 16 MB


# -- 11c. leftovers of killed runs -----------------------------------------------------------------------------
def test_clean_stale_temps_removes_only_dead_runs_leftovers(tmp_path: Path) -> None:
    dead, live = _dead_pid(), os.getpid()
    stale_file = tmp_path / _temp_name("out.jsonl", dead)
    stale_dir = tmp_path / _temp_name("out.jsonl", dead, ".work")
    live_file = tmp_path / _temp_name("out.jsonl", live)
    foreign = tmp_path / ".out.jsonl.kormed-000000-123-abcd1234.tmp"  # another host: by age only
    old_foreign = tmp_path / ".out.jsonl.kormed-000000-124-abcd1234.tmp"
    legacy = tmp_path / ".out.jsonl.k2j4h5g6.work"  # an older kormed's name, a week old
    unrelated = [tmp_path / ".out.jsonl.swp", tmp_path / "out.jsonl", tmp_path / _temp_name("other", dead)]
    stale_dir.mkdir()
    (stale_dir / "spool.jsonl").write_bytes(b"x" * 1000)
    legacy.mkdir()
    for p in (stale_file, live_file, foreign, old_foreign, *unrelated):
        p.write_bytes(b"x")
    week_ago = os.stat(foreign).st_mtime - 7 * 24 * 3600
    os.utime(old_foreign, (week_ago, week_ago))
    os.utime(legacy, (week_ago, week_ago))

    removed = clean_stale_temps(tmp_path, ["out.jsonl"])
    assert sorted(removed) == sorted([stale_file, stale_dir, old_foreign, legacy])
    assert live_file.exists() and foreign.exists() and all(p.exists() for p in unrelated)
    assert clean_stale_temps(tmp_path) == [tmp_path / _temp_name("other", dead)]  # any output's, new names only


def test_atomic_write_removes_its_outputs_stale_temp(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stale = tmp_path / _temp_name("result.json", _dead_pid())
    stale.write_bytes(b"half a file")
    write_json(tmp_path / "result.json", {"a": 1})
    assert _hidden(tmp_path) == []
    assert "removed 1 stale temporary file(s)" in capsys.readouterr().err


def _tiny_tokenizer() -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", "<end_of_turn>", "가", "나", "다"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
                                   pad_token="<pad>")


def test_packing_cache_removes_a_killed_runs_half_built_set(tmp_path: Path) -> None:
    from kormed.train.cpt import build_packed_dataset

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"text": "가 나 다 " * k}) + "\n" for k in range(1, 6)), encoding="utf-8")
    cache = tmp_path / "cache"
    cache.mkdir()
    stale = cache / _temp_name("0123456789abcdef0123", _dead_pid(), "")
    (stale / "gen").mkdir(parents=True)
    (stale / "gen" / "data.arrow").write_bytes(b"x" * 4096)
    live = cache / _temp_name("fedcba98765432100123", os.getpid(), "")
    live.mkdir()
    messages: list[str] = []
    ds, info = build_packed_dataset(data, _tiny_tokenizer(), max_length=8, cache_dir=cache, log=messages.append)
    assert not stale.exists() and live.exists()
    assert any("removed 1 stale temporary file(s)" in m for m in messages), messages
    assert info["blocks"] == len(ds) and not info["cache_hit"]
    assert sorted(p.name for p in cache.iterdir()) == sorted([info["cache_key"], live.name])


# -- 11d. permissions ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_outputs_get_the_umasks_normal_modes(tmp_path: Path, umask: int, file_mode: int, dir_mode: int) -> None:
    old = os.umask(umask)
    try:
        with atomic_write(tmp_path / "a.txt") as fh:
            fh.write("x")
        staged = make_temp_dir(tmp_path, "adapter")
        out = tmp_path / "corpus" / "mixed.jsonl"
        run_prepare(_cfg(out, 1), log=None, progress=False)
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == file_mode
    assert staged.stat().st_mode & 0o777 == dir_mode  # renamed into place as an output directory
    for p in out.parent.iterdir():
        assert p.stat().st_mode & 0o777 == file_mode, p
