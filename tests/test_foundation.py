"""Config loading, file I/O helpers, packing and model resolution."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from kormed.config import build, defaults_yaml, merge, opt, read_yaml
from kormed.data.packing import pack_documents
from kormed.errors import KormedError
from kormed.io import atomic_write, iter_jsonl, read_json, read_texts, replace_path, write_json


@dataclass
class _Inner:
    rate: float = opt(0.5, "a rate")


@dataclass
class _Cfg:
    steps: int = opt(10, "number of steps")
    name: str = opt("x", "a name")
    flags: list[str] = opt(["a"], "some flags")


def test_build_checks_names_and_types():
    cfg = build(_Cfg, {"steps": "12", "name": "y"})
    assert cfg.steps == 12 and cfg.name == "y"
    with pytest.raises(KormedError, match="unknown option") as exc:
        build(_Cfg, {"stepz": 1}, path="c.yaml", prefix="cpt.")
    assert "c.yaml" in str(exc.value) and "cpt.stepz" in str(exc.value)
    with pytest.raises(KormedError, match="expected an integer"):
        build(_Cfg, {"steps": "many"})
    with pytest.raises(KormedError, match="expected a list"):
        build(_Cfg, {"flags": 3})


def test_merge_keeps_unset_and_mutable_defaults_are_not_shared():
    a, b = _Cfg(), _Cfg()
    a.flags.append("b")
    assert b.flags == ["a"]
    m = merge(_Cfg(), {"steps": 3})
    assert m.steps == 3 and m.name == "x"


def test_read_yaml_reports_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("cpt:\n  lr: [1,\n")
    with pytest.raises(KormedError) as exc:
        read_yaml(p)
    assert "bad.yaml" in str(exc.value) and "malformed YAML" in str(exc.value)


def test_defaults_yaml_is_valid_yaml_for_registered_sections():
    import yaml

    text = defaults_yaml()
    data = yaml.safe_load(text) or {}
    assert isinstance(data, dict)


def test_iter_jsonl_errors_name_file_and_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'{"a": 1}\n\n{"a": 2\n')
    it = iter_jsonl(p)
    assert next(it) == (1, {"a": 1})
    with pytest.raises(KormedError) as exc:
        next(it)
    assert f"{p}:3" in str(exc.value)
    p.write_bytes(b'{"a": "\xff"}\n')
    with pytest.raises(KormedError, match="UTF-8"):
        list(iter_jsonl(p))
    p.write_text("[1, 2]\n")
    with pytest.raises(KormedError, match="JSON object"):
        list(iter_jsonl(p))
    with pytest.raises(KormedError, match="does not exist"):
        list(iter_jsonl(tmp_path / "missing.jsonl"))


def test_read_texts_one_limit_rule(tmp_path):
    """The one {"text"} JSONL reader: blanks skipped, `limit` texts or `max_chars` characters, later lines unread."""
    p = tmp_path / "t.jsonl"
    p.write_text('{"text": "abc"}\n{"text": "  "}\n{"text": "defg"}\n{"text": "hi"}\nnot json\n', encoding="utf-8")
    assert read_texts(p, limit=2) == ["abc", "defg"]
    assert read_texts(p, max_chars=4) == ["abc", "defg"]  # the text that crosses the budget is kept
    assert read_texts(p, max_chars=3) == ["abc"]
    with pytest.raises(KormedError) as err:
        read_texts(p)
    assert err.value.line == 5
    q = tmp_path / "q.jsonl"
    q.write_text('{"body": "x"}\n', encoding="utf-8")
    assert read_texts(q, field="body") == ["x"]
    with pytest.raises(KormedError, match="field 'text'"):
        read_texts(q)


def test_replace_path_swaps_files_and_directories(tmp_path):
    old, new = tmp_path / "out", tmp_path / "stage"
    old.mkdir()
    (old / "stale.txt").write_text("old", encoding="utf-8")
    new.mkdir()
    (new / "a.txt").write_text("new", encoding="utf-8")
    replace_path(new, old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no stage, no trash left
    assert [p.name for p in old.iterdir()] == ["a.txt"]
    (tmp_path / "f.tmp").write_text("2", encoding="utf-8")
    (tmp_path / "f").write_text("1", encoding="utf-8")
    replace_path(tmp_path / "f.tmp", tmp_path / "f")
    assert (tmp_path / "f").read_text(encoding="utf-8") == "2" and not (tmp_path / "f.tmp").exists()


def test_read_json_reports_line(tmp_path):
    p = tmp_path / "d.json"
    p.write_text('[\n{"term": "a"},\n{"term": }\n]')
    with pytest.raises(KormedError) as exc:
        read_json(p)
    assert f"{p}:3" in str(exc.value)


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"b": 1, "a": [1, 2]})
    before = target.read_bytes()
    with pytest.raises(RuntimeError), atomic_write(target) as fh:
        fh.write("partial")
        raise RuntimeError("boom")
    assert target.read_bytes() == before
    assert json.loads(before) == {"a": [1, 2], "b": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_packing_bos_eod_and_no_token_lost():
    docs = [[10, 11, 12], [20] * 9, [30, 31]]
    blocks = pack_documents(docs, max_length=5, bos_id=2, eod_id=106)
    assert all(b[0] == 2 for b in blocks)
    assert all(len(b) <= 5 for b in blocks)
    assert all(len(b) == 5 for b in blocks[:-1])
    stream = [t for b in blocks for t in b[1:]]
    assert stream == [10, 11, 12, 106, *([20] * 9), 106, 30, 31, 106]


def test_resolve_model_errors(tmp_path):
    from kormed.models import resolve_model

    with pytest.raises(KormedError, match="does not exist"):
        resolve_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(KormedError, match="not a model directory"):
        resolve_model(str(tmp_path / "empty"))
    f = tmp_path / "file.bin"
    f.write_bytes(b"x")
    with pytest.raises(KormedError, match="not a file"):
        resolve_model(str(f))
    # a hub id comes from the local Hugging Face cache only; one that is not there is an error, never a download
    with pytest.raises(KormedError, match="no hub model 'kormed-test/not-cached' is in the Hugging Face cache"):
        resolve_model("kormed-test/not-cached")


def test_embedded_model_is_real_gemma3(embedded_model_dir, real_tokenizer):
    from kormed.models import load_model_config

    cfg = load_model_config(str(embedded_model_dir))
    assert cfg.model_type == "gemma3_text" and cfg.vocab_size == 262144
    assert not hasattr(cfg, "quantization_config")
    assert real_tokenizer.convert_tokens_to_ids(["<start_of_turn>", "<end_of_turn>"]) == [105, 106]
    assert real_tokenizer("안녕").input_ids[0] == real_tokenizer.bos_token_id


def test_configuration_reference_is_current():
    """docs/configuration.md is generated from the config dataclasses; regenerate with
    `kormed config show --markdown > docs/configuration.md`."""
    from pathlib import Path

    from kormed.config import defaults_markdown

    doc = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
    assert doc.read_text(encoding="utf-8") == defaults_markdown()


def test_cli_reports_user_errors_without_traceback(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "kormed.cli", "model", "path", "--model", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "kormed: error:" in proc.stderr and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_drop_unset_removes_unset_flags_and_empty_sections():
    from kormed.config import drop_unset

    assert drop_unset({"a": None, "lora": {"r": None}, "train": {"lr": 0.1}, "seed": 0, "flag": False}) == {
        "train": {"lr": 0.1},
        "seed": 0,
        "flag": False,
    }


def test_file_key_is_the_sha256_below_the_limit_and_sees_both_ends_above(tmp_path):
    """The one reuse key of the run fingerprints and the eval cache: the full sha256 of a small file; for a file
    above the limit, a key that changes when its first or last MiB (or its size) changes."""
    import hashlib

    from kormed.io import file_key

    small = tmp_path / "small.bin"
    small.write_bytes(b"abc" * 1000)
    assert file_key(small, 1 << 20) == hashlib.sha256(b"abc" * 1000).hexdigest()
    big = tmp_path / "big.bin"
    data = bytearray(3 << 20)
    big.write_bytes(bytes(data))
    first = file_key(big, 1 << 20)
    assert first != hashlib.sha256(bytes(data)).hexdigest() and first.endswith(f":{3 << 20}:{big.stat().st_mtime_ns}")
    for where in (0, len(data) - 1):
        changed = bytearray(data)
        changed[where] = 1
        big.write_bytes(bytes(changed))
        assert file_key(big, 1 << 20).split(":")[0] != first.split(":")[0]
