"""Fault suite: bad output paths and full disks (issue 14 item 8).

Every command that writes checks its output path(s) before any work (kormed.io.check_output_path): a directory where
a file is expected, a file where a directory is expected, a parent that is a file, an unwritable parent. Each gives
one `kormed: error:` line and exit code 2 through the CLI (in-process), never a traceback; a full disk while writing
names the path and leaves no partial output. No model or tokenizer is loaded: the expensive steps are patched to fail.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kormed.cli import app
from kormed.errors import KormedError
from kormed.io import atomic_write, check_output_path, write_json

runner = CliRunner()


def one_error_line(args: list[str]) -> str:
    """Run the CLI in-process; assert exit 2 with exactly one `kormed: error:` line and no traceback; return it."""
    result = runner.invoke(app, args)
    assert result.exit_code == 2, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("kormed: error: "), result.output
    return lines[0]


def _forbid(*_a, **_k):
    raise AssertionError("work started although the output path is bad")


@pytest.fixture
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Existing dir / existing file / a path whose parent is a file / a directory that cannot be written."""
    a_dir = tmp_path / "a_dir"
    a_dir.mkdir()
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me\n", encoding="utf-8")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    real_access = os.access

    def access(path, mode, *a, **k):  # root ignores permission bits: deny writing in `locked` as a user would be
        if Path(path) == locked and mode & os.W_OK:
            return False
        return real_access(path, mode, *a, **k)

    monkeypatch.setattr(os, "access", access)
    yield {"dir": a_dir, "file": a_file, "under_file": a_file / "sub" / "out", "locked": locked / "out"}
    locked.chmod(0o755)
    assert a_file.read_text(encoding="utf-8") == "keep me\n"  # a bad output path never touches what is there


FILE_CLASSES = {  # output-path class -> (path key, words the error line must hold)
    "is a directory": ("dir", "is a directory"),
    "parent is a file": ("under_file", "is a file, not a directory"),
    "unwritable parent": ("locked", "cannot write in"),
}
DIR_CLASSES = {
    "is a file": ("file", "is an existing file"),
    "parent is a file": ("under_file", "is a file, not a directory"),
    "unwritable parent": ("locked", "cannot write in"),
}


# -- the shared check --------------------------------------------------------------------------------------------

def test_check_output_path_accepts_good_paths(tmp_path: Path) -> None:
    (tmp_path / "old.json").write_text("{}", encoding="utf-8")
    assert check_output_path(tmp_path / "new" / "deeper" / "r.json", "file") == tmp_path / "new" / "deeper" / "r.json"
    assert check_output_path(tmp_path / "old.json", "file") == tmp_path / "old.json"  # replaced atomically later
    assert check_output_path(tmp_path, "dir") == tmp_path
    assert check_output_path(tmp_path / "new_dir", "dir") == tmp_path / "new_dir"
    assert not (tmp_path / "new").exists() and not (tmp_path / "new_dir").exists()  # the check creates nothing


@pytest.mark.parametrize("kind, classes", [("file", FILE_CLASSES), ("dir", DIR_CLASSES)])
def test_check_output_path_rejects_each_class(kind: str, classes: dict, paths: dict[str, Path]) -> None:
    for key, words in classes.values():
        with pytest.raises(KormedError) as info:
            check_output_path(paths[key], kind, "--flag")
        assert words in str(info.value) and "--flag" in str(info.value) and str(paths[key]) in str(info.value)


# -- file outputs, through the CLI -------------------------------------------------------------------------------

def _texts(tmp_path: Path) -> Path:
    p = tmp_path / "texts.jsonl"
    p.write_text(json.dumps({"text": "안녕하세요. 한의학 문서입니다."}, ensure_ascii=False) + "\n", encoding="utf-8")
    return p


def _file_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[list[str], str]]:
    """Command -> (args before the output flag, the flag). Anything expensive fails the test if it runs."""
    import kormed.bench.eval as bench_eval
    import kormed.bench.prepare as bench_prepare
    import kormed.bench.train as bench_train
    import kormed.eval.kormedmcqa as kormedmcqa
    import kormed.eval.perplexity as perplexity
    import kormed.models as models

    for module, name in [(kormedmcqa, "load_questions"), (kormedmcqa, "evaluate_kormedmcqa"),
                         (perplexity, "iter_texts"), (perplexity, "evaluate_perplexity"),
                         (models, "load_model_and_tokenizer"), (bench_eval, "run_bench"),
                         (bench_prepare, "run_bench"), (bench_train, "run_bench")]:
        monkeypatch.setattr(module, name, _forbid)
    data = _texts(tmp_path)
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    return {
        "eval kormedmcqa": (["eval", "kormedmcqa", "--data", str(data)], "--output"),
        "eval ppl": (["eval", "ppl", "--data", str(data)], "--output"),
        "prepare": (["prepare", "--data-root", str(root)], "--out"),
        "namumark": (["namumark", str(data), "--jsonl"], "--out"),
        "bench prepare": (["bench", "prepare", "--docs", "1"], "--output"),
        "bench eval": (["bench", "eval"], "--output"),
        "bench train": (["bench", "train"], "--output"),
    }


FILE_COMMANDS = ["eval kormedmcqa", "eval ppl", "prepare", "namumark", "bench prepare", "bench eval", "bench train"]


@pytest.mark.parametrize("cls", list(FILE_CLASSES))
@pytest.mark.parametrize("command", FILE_COMMANDS)
def test_file_outputs_checked_before_work(command: str, cls: str, paths, tmp_path: Path, monkeypatch) -> None:
    key, words = FILE_CLASSES[cls]
    args, flag = _file_commands(tmp_path, monkeypatch)[command]
    line = one_error_line([*args, flag, str(paths[key])])
    assert words in line and flag in line and str(paths[key]) in line, line


# -- directory outputs, through the CLI --------------------------------------------------------------------------

def _dir_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[list[str], str]]:
    import kormed.export.run as export_all
    import kormed.models as models
    import kormed.pipeline.report as report
    import kormed.pipeline.run as run
    import kormed.records as records
    import kormed.tokenizer.extend as extend
    import kormed.train.cpt as cpt
    import kormed.train.sft as sft

    # the loop loads its model through the SFT recipe (sft.prepare_recipe): forbidding sft's covers both
    for module, name in [(cpt, "prepare_model_for_training"), (sft, "prepare_model_for_training"),
                         (models, "resolve_model"),
                         (models, "load_model_and_tokenizer"), (records, "read_dictionary"),
                         (extend, "read_texts"), (report, "collect"), (run, "resolve_configs"),
                         (export_all, "_stage_dir"), (export_all, "resolve_model")]:
        monkeypatch.setattr(module, name, _forbid)
    data = _texts(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    missing = str(tmp_path / "missing.json")
    return {
        "tokenizer extend": (["tokenizer", "extend", "--corpus", str(data), "--dict", missing], "--out"),
        "train cpt": (["train", "cpt", "--data", str(data), "--val", str(data)], "--output"),
        "train sft": (["train", "sft", "--mcq", missing, "--dict", missing, "--raw", str(data)], "--output"),
        "train loop": (["train", "loop", "--mcq", missing, "--dict", missing, "--eval-data", missing], "--output"),
        "export": (["export", "--gguf", "--model", str(run_dir)], "--out"),
        "report": (["report", str(run_dir)], "--output"),
        "demo": (["demo"], "--output")  # the run directory,
    }


DIR_COMMANDS = ["tokenizer extend", "train cpt", "train sft", "train loop", "export", "report", "demo"]


@pytest.mark.parametrize("cls", list(DIR_CLASSES))
@pytest.mark.parametrize("command", DIR_COMMANDS)
def test_dir_outputs_checked_before_work(command: str, cls: str, paths, tmp_path: Path, monkeypatch) -> None:
    key, words = DIR_CLASSES[cls]
    args, flag = _dir_commands(tmp_path, monkeypatch)[command]
    line = one_error_line([*args, flag, str(paths[key])])
    assert words in line and ("run_dir" if command == "demo" else flag) in line and str(paths[key]) in line, line


def test_report_checks_the_run_directory_itself(tmp_path: Path, monkeypatch) -> None:
    """Without --output the report goes into RUN_DIR, which must then be writable."""
    import kormed.pipeline.report as report

    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m, *a, **k: not (Path(p) == tmp_path and m & os.W_OK)
                        and real_access(p, m))
    monkeypatch.setattr(report, "render_html", _forbid)
    line = one_error_line(["report", str(tmp_path)])
    assert "cannot write in this directory" in line and str(tmp_path) in line


# -- full disk and other write errors ----------------------------------------------------------------------------

def _full_disk(*_a, **_k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_while_writing_is_one_line_and_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    data = _texts(tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "plain.jsonl").write_text("the previous result\n", encoding="utf-8")
    monkeypatch.setattr(os, "fsync", _full_disk)
    line = one_error_line(["namumark", str(data), "--jsonl", "--out", str(out_dir / "plain.jsonl")])
    assert "disk is full" in line and str(out_dir / "plain.jsonl") in line and "partial output was removed" in line
    assert [p.name for p in out_dir.iterdir()] == ["plain.jsonl"]  # no temp file left behind
    assert (out_dir / "plain.jsonl").read_text(encoding="utf-8") == "the previous result\n"  # old output intact


def test_atomic_write_names_the_target_for_every_environment_error(tmp_path: Path, monkeypatch) -> None:
    for code, words in [(errno.ENOSPC, "disk is full"), (errno.EDQUOT, "quota"), (errno.EACCES, "permission"),
                        (errno.EROFS, "read-only")]:
        monkeypatch.setattr(os, "fsync", lambda *_a, code=code: (_ for _ in ()).throw(OSError(code, "x")))
        with pytest.raises(KormedError) as info:
            write_json(tmp_path / "r.json", {"a": 1})
        assert words in str(info.value) and str(tmp_path / "r.json") in str(info.value)
    monkeypatch.undo()
    (tmp_path / "d").mkdir()
    with pytest.raises(KormedError) as info:  # the rename onto a directory: the target is named, not the temp file
        write_json(tmp_path / "d", {"a": 1})
    assert f"{tmp_path / 'd'}: is a directory" in str(info.value) and ".tmp" not in str(info.value)
    (tmp_path / "d").rmdir()
    monkeypatch.setattr(os, "fsync", lambda *_a: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(OSError) as raw, atomic_write(tmp_path / "r.json") as fh:  # not one kormed can explain
        fh.write("x")
    assert raw.value.errno == errno.EIO
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "disk is full"), (errno.EACCES, "permission denied"),
                                         (errno.EROFS, "read-only"), (errno.ENOTDIR, "not a directory"),
                                         (errno.EISDIR, "is a directory")])
def test_cli_turns_environment_os_errors_into_one_line(code: int, words: str, tmp_path: Path, monkeypatch) -> None:
    """A write outside atomic_write (e.g. a library's save_pretrained) that fails still gives one line with the path."""
    import kormed.bench.eval as bench_eval

    target = tmp_path / "model.safetensors"

    def fail(**_k):
        raise OSError(code, os.strerror(code), str(target))

    monkeypatch.setattr(bench_eval, "run_bench", fail)
    line = one_error_line(["bench", "eval"])
    assert words in line and str(target) in line


# -- outputs that are not regular files or directories (issue 28) ------------------------------------------------
# As root, `--out /dev/null` replaced /dev/null with a regular file. The stand-ins here: a FIFO and a symlink to
# the null device made in tmp (the real /dev/null is never named).

@pytest.fixture
def specials(tmp_path: Path) -> dict[str, Path]:
    fifo = tmp_path / "a_fifo"
    os.mkfifo(fifo)
    link = tmp_path / "null_link"
    link.symlink_to(os.devnull)
    yield {"fifo": fifo, "link to the null device": link}
    assert fifo.is_fifo() and link.is_symlink() and link.resolve() == Path(os.devnull).resolve()  # untouched


@pytest.mark.parametrize("special", ["fifo", "link to the null device"])
@pytest.mark.parametrize("command", FILE_COMMANDS + DIR_COMMANDS)
def test_an_output_that_is_a_device_or_fifo_is_refused(command: str, special: str, specials, tmp_path: Path,
                                                       monkeypatch) -> None:
    commands = {**_file_commands(tmp_path, monkeypatch), **_dir_commands(tmp_path, monkeypatch)}
    args, flag = commands[command]
    line = one_error_line([*args, flag, str(specials[special])])
    assert "device, FIFO or socket" in line and str(specials[special]) in line, line


# -- outputs that are the command's own inputs (issue 26) ----------------------------------------------------------
# `kormed prepare --out` naming the MCQ train.jsonl, the test set or the medical dictionary overwrote the user's
# file with the corpus, exit 0. Every command compares its outputs with its inputs (resolved, symlinks followed).

KEEP = "the user's input, never to be overwritten\n"


def _input_cases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[list[str], Path]]:
    """Case -> (the whole command line, the input its output names). Expensive steps fail the test if they run."""
    files = _file_commands(tmp_path, monkeypatch)
    dirs = _dir_commands(tmp_path, monkeypatch)
    data = _texts(tmp_path)
    root = tmp_path / "root"
    mcq = root / "data/01_raw/02_kor_med_test/train.jsonl"
    test_set = root / "data/01_raw/02_kor_med_test/test.jsonl"
    medical = root / "data/02_refined/01_medical_dict.json"
    for p in (mcq, test_set, medical):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(KEEP, encoding="utf-8")
    link = tmp_path / "link_to_train.jsonl"
    link.symlink_to(mcq)
    run_dir = tmp_path / "run"
    return {
        "eval kormedmcqa --output = --data": ([*files["eval kormedmcqa"][0], "--output", str(data)], data),
        "eval ppl --output = --data": ([*files["eval ppl"][0], "--output", str(data)], data),
        "prepare --out = the MCQ train.jsonl": ([*files["prepare"][0], "--out", str(mcq)], mcq),
        "prepare --out = the test set": ([*files["prepare"][0], "--out", str(test_set)], test_set),
        "prepare --out = the medical dictionary": ([*files["prepare"][0], "--out", str(medical)], medical),
        "prepare --out = a symlink to train.jsonl": ([*files["prepare"][0], "--out", str(link)], mcq),
        "namumark --out = FILE": ([*files["namumark"][0], "--out", str(data)], data),
        "tokenizer extend --out holds --corpus": ([*dirs["tokenizer extend"][0], "--out", str(tmp_path)], data),
        "train cpt --output holds --data": ([*dirs["train cpt"][0], "--output", str(tmp_path)], data),
        "train sft --output holds --raw": ([*dirs["train sft"][0], "--output", str(tmp_path)], data),
        "train loop --output = the dir of --mcq": ([*dirs["train loop"][0], "--output", str(tmp_path)], data),
        "export --out = --model": ([*dirs["export"][0], "--out", str(run_dir)], run_dir),
    }


INPUT_CASES = [
    "eval kormedmcqa --output = --data", "eval ppl --output = --data", "prepare --out = the MCQ train.jsonl",
    "prepare --out = the test set", "prepare --out = the medical dictionary",
    "prepare --out = a symlink to train.jsonl", "namumark --out = FILE", "tokenizer extend --out holds --corpus",
    "train cpt --output holds --data", "train sft --output holds --raw", "train loop --output = the dir of --mcq",
    "export --out = --model",
]


@pytest.mark.parametrize("case", INPUT_CASES)
def test_an_output_that_is_an_input_is_refused_before_work(case: str, tmp_path: Path, monkeypatch) -> None:
    args, victim = _input_cases(tmp_path, monkeypatch)[case]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    line = one_error_line(args)
    assert "input" in line and "overwrite your input" in line, line
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before  # nothing written, nothing lost
    assert victim.exists()


def test_the_input_check_follows_symlinks_and_skips_unset_inputs(tmp_path: Path) -> None:
    from kormed.io import check_not_an_input

    real = tmp_path / "real.jsonl"
    real.write_text(KEEP, encoding="utf-8")
    alias = tmp_path / "alias.jsonl"
    alias.symlink_to(real)
    with pytest.raises(KormedError, match="--out is the input --mcq"):
        check_not_an_input(alias, "--out", {"--mcq": str(tmp_path / "." / "real.jsonl")})
    with pytest.raises(KormedError, match="--out holds the input --mcq"):
        check_not_an_input(tmp_path, "--out", {"--mcq": alias}, holds_inputs=True)
    check_not_an_input(tmp_path / "other.jsonl", "--out", {"--mcq": real, "--dict": None, "--raw": ""})
    check_not_an_input(tmp_path, "--out", {"--mcq": real})  # a file output beside its input is fine


# -- issue 26: every safetensors write is atomic, and every file kormed writes follows the umask -----------------

def _tiny_peft(root: Path, **lora):
    """A tiny Gemma 3 (the Gemma 3 vocabulary, hidden size 64) saved to `root/model`, and a LoRA model on it."""
    import warnings

    import torch
    from conftest import tiny_text_config
    from peft import LoraConfig, get_peft_model
    from transformers import Gemma3ForCausalLM

    torch.manual_seed(0)
    Gemma3ForCausalLM(tiny_text_config()).save_pretrained(root / "model", safe_serialization=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(Gemma3ForCausalLM.from_pretrained(root / "model"),
                              LoraConfig(r=4, target_modules=r".*\.(q_proj|v_proj)", **lora))


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mode & 0o777 for p in sorted(root.rglob("*"))}


@pytest.fixture
def umask():
    """Set the process umask for a test (restored after)."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def _disk_full_in_fsync(monkeypatch) -> None:
    monkeypatch.setattr(os, "fsync", _full_disk)


def _disk_full_in_the_serializer(monkeypatch) -> None:
    """What the safetensors library does on a full disk: part of the file written, then SafetensorError."""
    import safetensors.torch
    from safetensors import SafetensorError

    def serialize_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 100)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "serialize_file", serialize_file)


FULL_DISK = {"fsync": _disk_full_in_fsync, "serializer": _disk_full_in_the_serializer}


class TestSafetensorsWrites:
    """adapter_model.safetensors, a Trainer checkpoint's and `export --merge`'s weights go through the atomic writer:
    the umask's mode (was 0600), nothing partial left and one line naming the output on a full disk (was
    SafetensorError and a partial file)."""

    @pytest.mark.parametrize("mask", [0o022, 0o002])
    def test_adapter_files_follow_the_umask(self, mask: int, tmp_path: Path, umask, real_tokenizer) -> None:
        from kormed.train.engine.outputs import save_adapter

        model = _tiny_peft(tmp_path)
        umask(mask)
        out = save_adapter(model, real_tokenizer, tmp_path / "adapter", {"stage": "test"})
        modes = _modes(out)
        assert modes["adapter_model.safetensors"] == 0o666 & ~mask
        assert {m for name, m in modes.items() if (out / name).is_file()} == {0o666 & ~mask}, modes
        assert {m for name, m in modes.items() if (out / name).is_dir()} == {0o777 & ~mask}, modes

    @pytest.mark.parametrize("how", sorted(FULL_DISK))
    def test_full_disk_while_saving_an_adapter(self, how: str, tmp_path: Path, monkeypatch, real_tokenizer) -> None:
        from kormed.train.engine.outputs import save_adapter

        model = _tiny_peft(tmp_path)
        out = tmp_path / "adapter"
        out.mkdir()
        (out / "adapter_model.safetensors").write_bytes(b"the previous adapter")
        FULL_DISK[how](monkeypatch)
        with pytest.raises(KormedError) as exc:
            save_adapter(model, real_tokenizer, out, {"stage": "test"})
        assert "disk is full" in exc.value.message and "partial output was removed" in exc.value.message
        assert exc.value.path == str(out / "adapter_model.safetensors"), exc.value  # the output, not a temp name
        assert [p.name for p in out.iterdir()] == ["adapter_model.safetensors"]  # no stage, no temp file left
        assert (out / "adapter_model.safetensors").read_bytes() == b"the previous adapter"

    def test_full_disk_during_export_merge(self, tmp_path: Path, monkeypatch, real_tokenizer) -> None:
        import kormed.models

        _tiny_peft(tmp_path).save_pretrained(tmp_path / "adapter")
        monkeypatch.setattr(kormed.models, "load_tokenizer", lambda path: real_tokenizer)
        _disk_full_in_the_serializer(monkeypatch)
        before = sorted(p.name for p in tmp_path.iterdir())
        result = runner.invoke(app, ["export", "--adapter", str(tmp_path / "adapter"), "--model",
                                     str(tmp_path / "model"), "--out", str(tmp_path / "merged"), "--merge"])
        assert result.exit_code == 2 and "Traceback" not in result.output, (result.output, result.exception)
        errors = [line for line in result.output.splitlines() if line.startswith("kormed: error: ")]
        assert len(errors) == 1 and result.output.rstrip().endswith(errors[0]), result.output  # (progress bars above)
        line = errors[0]
        assert "disk is full" in line and str(tmp_path / "merged" / "model.safetensors") in line
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # no merged/, no hidden stage left behind

    def test_export_merge_files_follow_the_umask(self, tmp_path: Path, monkeypatch, umask, real_tokenizer) -> None:
        import kormed.models
        from kormed.export.merge import export_merged

        _tiny_peft(tmp_path).save_pretrained(tmp_path / "adapter")
        monkeypatch.setattr(kormed.models, "load_tokenizer", lambda path: real_tokenizer)
        umask(0o022)
        export_merged(tmp_path / "adapter", tmp_path / "merged", str(tmp_path / "model"), log=lambda m: None)
        modes = _modes(tmp_path / "merged")
        assert modes["model.safetensors"] == 0o644 and set(modes.values()) == {0o644}, modes
