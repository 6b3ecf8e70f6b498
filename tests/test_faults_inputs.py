"""Hostile input values and records (issue 14, items 8-11): each gives one clear error naming file, line/section and
key (or a counted skip under --skip-bad), never a traceback and never silent acceptance."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from kormed.config import CONFIG_SECTIONS, SEED_RANGE, load_config, section_class
from kormed.errors import KormedError
from kormed.records import read_dictionary, read_mcq_jsonl

GOOD_MCQ = {
    "subject": "doctor", "year": 2012, "period": 1, "q_number": 1, "question": "고혈압의 정의는?",
    "A": "가", "B": "나", "C": "다", "D": "라", "E": "마", "answer": 2, "cot": "", "exam_type": "doctor",
}


def _cli(args: list[str]) -> Any:
    from kormed.cli import app

    return CliRunner().invoke(app, args)


def _one_line_error(result: Any, *needles: str) -> str:
    """Exit code 2, no traceback, one `kormed: error:` line holding every needle."""
    out = result.output
    assert result.exit_code == 2, out
    assert "Traceback" not in out, out
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [line for line in out.splitlines() if line.startswith("kormed: error:")]
    assert len(errors) == 1, out
    for needle in needles:
        assert needle in errors[0], out
    return errors[0]


# ---------------------------------------------------------------------------------------------- config values


def _float_fields(cls: type, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Paths of every float-valued option of a config dataclass (float, float | None, dict[str, float]), nested."""
    out: list[tuple[str, ...]] = []
    hints = typing.get_type_hints(cls)
    obj = cls()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        args = typing.get_args(tp)
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out += _float_fields(type(value), (*prefix, f.name))
        elif tp is float or (float in args and typing.get_origin(tp) is not dict):
            out.append((*prefix, f.name))
        elif typing.get_origin(tp) is dict and len(args) == 2 and args[1] is float:
            out.append((*prefix, f.name, "x"))
    return out


def _nested(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    for key in reversed(path):
        value = {key: value}
    return value


FLOAT_OPTIONS = [(s, p) for s in CONFIG_SECTIONS for p in _float_fields(section_class(s))]


def test_float_options_are_found() -> None:
    names = {f"{s}.{'.'.join(p)}" for s, p in FLOAT_OPTIONS}
    assert {"cpt.train.lr", "prepare.min_hangul_ratio", "loop.target", "chat.temperature"} <= names
    assert len(names) > 20


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_every_float_option_rejects_non_finite_values_from_yaml(tmp_path: Path, bad: float) -> None:
    """nan/inf at ANY float option of ANY section: one error naming the file and section.key (`--lr inf` trained
    a model whose weights were all NaN)."""
    for section, path in FLOAT_OPTIONS:
        cfg_file = tmp_path / "bad.yaml"
        cfg_file.write_text(yaml.safe_dump({section: _nested(path, bad)}), encoding="utf-8")
        with pytest.raises(KormedError) as err:
            load_config(section, cfg_file)
        text = str(err.value)
        where = f"{section}.{'.'.join(path)}"
        assert text.startswith(str(cfg_file)) and where in text and "finite" in text, (where, text)


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-Infinity"])
def test_non_finite_number_strings_rejected(text: str) -> None:
    with pytest.raises(KormedError, match="finite"):
        load_config("cpt", overrides={"train": {"lr": text}})


def test_range_errors_name_file_section_and_key(tmp_path: Path) -> None:
    cases = {
        "cpt": ({"train": {"lr": -1}}, "cpt.train.lr"),
        "sft": ({"steps": [{"name": "a"}, {"name": "b", "max_steps": 0}]}, "sft.steps[1].max_steps"),
        "eval": ({"limit": 0}, "eval.limit"),
        "prepare": ({"val_fraction": 1.5}, "prepare.val_fraction"),
        "loop": ({"lora": {"r": 0}}, "loop.lora.r"),
        "tokenizer": ({"seed": SEED_RANGE[1] + 1}, "tokenizer.seed"),
    }
    for section, (values, where) in cases.items():
        cfg_file = tmp_path / f"{section}.yaml"
        cfg_file.write_text(yaml.safe_dump({section: values}), encoding="utf-8")
        with pytest.raises(KormedError) as err:
            load_config(section, cfg_file)
        assert err.value.path == str(cfg_file) and err.value.field == where, str(err.value)


def test_range_error_in_a_pipeline_file_names_it(tmp_path: Path) -> None:
    from kormed.pipeline.run import pipeline_from_mapping, resolve_configs
    from kormed.pipeline.stages import default_specs

    source = tmp_path / "pipe.yaml"
    pipeline = pipeline_from_mapping({"stages": ["prepare", "cpt"], "cpt": {"train": {"lr": 0}}}, source=source,
                                     run_dir=tmp_path / "run")
    with pytest.raises(KormedError) as err:
        resolve_configs(pipeline, default_specs())
    assert err.value.path == str(source) and err.value.field == "cpt.train.lr"


@pytest.mark.parametrize("seed", [-1, SEED_RANGE[1] + 1])
def test_seed_out_of_range_is_one_error(seed: int) -> None:
    for section in ("prepare", "tokenizer", "cpt", "sft", "loop"):
        key = {"seed": seed} if section in ("prepare", "tokenizer") else {"train": {"seed": seed}}
        with pytest.raises(KormedError) as err:
            load_config(section, overrides=key)
        assert err.value.field == "--seed" and "between 0 and" in err.value.message
    assert load_config("prepare", overrides={"seed": SEED_RANGE[1]}).seed == SEED_RANGE[1]
    assert load_config("cpt", overrides={"train": {"seed": 0}}).train.seed == 0


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["train", "cpt", "--lr", "nan"], ("--lr", "finite")),
        (["train", "cpt", "--lr", "inf"], ("--lr", "finite")),
        (["train", "sft", "--lr", "-inf"], ("--lr", "finite")),
        (["train", "cpt", "--seed", "-1"], ("--seed", "between 0 and")),
        (["train", "cpt", "--lr", "-1"], ("--lr", "must be positive")),
        (["train", "cpt", "--max-length", "1"], ("--max-length",)),
        (["prepare", "--seed", "-1"], ("--seed",)),
        (["prepare", "--val-fraction", "nan"], ("--val-fraction", "finite")),
        (["prepare", "--duplicates", "maybe"], ("--duplicates",)),
        (["tokenizer", "extend", "--seed", "-5"], ("--seed",)),
    ],
)
def test_cli_flags_bad_values_exit_2_with_one_line(args: list[str], needles: tuple[str, ...]) -> None:
    _one_line_error(_cli(args), *needles)


# ---------------------------------------------------------------------------------------------- records


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.mark.parametrize("field", ["answer", "year"])
@pytest.mark.parametrize("value", ["²", "--2", "2", " 2", "2.0", 2.0, 2.5, True, "٣", [2], math.inf])
def test_integer_fields_take_only_json_integers(tmp_path: Path, field: str, value: Any) -> None:
    """'²' and '--2' gave a traceback (str.isdigit accepts them, int() does not); "2" and 2.0 were coerced
    silently. Now: one error naming file, line and field, or a counted skip under --skip-bad."""
    bad = {**GOOD_MCQ, field: value}
    p = _write_jsonl(tmp_path / "mcq.jsonl", [GOOD_MCQ, bad, GOOD_MCQ])
    with pytest.raises(KormedError) as err:
        read_mcq_jsonl(p)
    assert err.value.path == str(p) and err.value.line == 2 and err.value.field == field
    questions, report = read_mcq_jsonl(p, skip_bad=True)
    assert len(questions) == 2 and report.total == 1
    assert all(q.answer == 2 and q.year == 2012 for q in questions)


def test_integer_fields_accept_integers_and_absent_metadata(tmp_path: Path) -> None:
    p = _write_jsonl(tmp_path / "mcq.jsonl", [GOOD_MCQ, {**GOOD_MCQ, "year": None, "period": ""}])
    questions, report = read_mcq_jsonl(p)
    assert [q.year for q in questions] == [2012, None] and questions[1].period is None and report.total == 0


def test_bad_answer_in_prepare_is_a_counted_skip(tmp_path: Path) -> None:
    root = _medical_root(tmp_path, [GOOD_MCQ, {**GOOD_MCQ, "answer": "²", "question": "다른 질문?"}])
    with pytest.raises(KormedError, match="answer"):
        _prepare(root)
    result = _prepare(root, skip_bad=True)
    skipped = result["stats"]["skipped"]["mcq"]
    assert skipped["skipped"] == 1 and "answer" in next(iter(skipped["reasons"]))


# ---------------------------------------------------------------------------------------------- duplicates


MED_DICT = [{"term": "고혈압", "definition": "혈압이 높은 상태"}, {"term": "당뇨병", "definition": "혈당이 높은 병"}]


def _medical_root(tmp_path: Path, mcq: list[dict[str, Any]], medical: list[dict[str, Any]] | None = None) -> Path:
    """A data root with only the medical sources (the plain ones are optional and absent)."""
    root = tmp_path / "root"
    (root / "data/01_raw/02_kor_med_test").mkdir(parents=True)
    (root / "data/02_refined").mkdir(parents=True)
    _write_jsonl(root / "data/01_raw/02_kor_med_test/train.jsonl", mcq)
    (root / "data/02_refined/01_medical_dict.json").write_text(json.dumps(medical or MED_DICT), encoding="utf-8")
    (root / "data/02_refined/02_char_dict.json").write_text(json.dumps(MED_DICT[:1]), encoding="utf-8")
    return root


def _prepare(root: Path, log: list[str] | None = None, **values: Any) -> dict[str, Any]:
    from kormed.prepare.config import PrepareConfig
    from kormed.prepare.corpus import run_prepare

    optional = {n: {"optional": True} for n in ("namu_wiki", "wikipedia_korean", "c4_korean")}
    cfg = load_config("prepare", overrides={"data_root": str(root), "out": str(root / "out.jsonl"), "num_proc": 1,
                                            **optional, **values})
    assert isinstance(cfg, PrepareConfig)
    return run_prepare(cfg, log=(log.append if log is not None else None), progress=False)


def test_duplicate_records_are_dropped_and_counted_by_default(tmp_path: Path) -> None:
    other = {**GOOD_MCQ, "question": "당뇨병의 정의는?"}
    root = _medical_root(tmp_path, [GOOD_MCQ, other, GOOD_MCQ, GOOD_MCQ], MED_DICT + MED_DICT[:1])
    log: list[str] = []
    stats = _prepare(root, log)["stats"]
    mcq = stats["sources"]["mcq"]
    assert (mcq["base"], mcq["duplicates"], mcq["final"]) == (2, 2, 10)
    assert stats["drops"]["mcq"] == {"duplicate": 2} and stats["drops"]["medical_dict"] == {"duplicate": 1}
    assert stats["sources"]["char_dict"]["duplicates"] == 0 and "char_dict" not in stats["drops"]
    assert any("mcq: 2 duplicate record(s) dropped" in m for m in log), log
    lines = (root / "out.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == (2 + 2 + 1) * 5  # every document x5, none x15


def test_duplicate_records_kept_on_request_still_counted(tmp_path: Path) -> None:
    root = _medical_root(tmp_path, [GOOD_MCQ, GOOD_MCQ])
    log: list[str] = []
    stats = _prepare(root, log, duplicates="keep")["stats"]
    mcq = stats["sources"]["mcq"]
    assert (mcq["base"], mcq["duplicates"], mcq["final"]) == (2, 1, 10) and "mcq" not in stats["drops"]
    assert any("mcq: 1 duplicate record(s) kept" in m for m in log), log


def test_prepare_cli_duplicates_flag(tmp_path: Path) -> None:
    root = _medical_root(tmp_path, [GOOD_MCQ, GOOD_MCQ])
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump({"prepare": {n: {"optional": True} for n in
                                                    ("namu_wiki", "wikipedia_korean", "c4_korean")}}))
    res = _cli(["prepare", "--config", str(cfg_file), "--data-root", str(root), "--out", str(tmp_path / "o.jsonl"),
                "--num-proc", "1", "--quiet", "--duplicates", "keep"])
    assert res.exit_code == 0, res.output
    stats = json.loads((tmp_path / "o.stats.json").read_text(encoding="utf-8"))
    assert stats["sources"]["mcq"]["final"] == 10 and stats["sources"]["mcq"]["duplicates"] == 1


# ---------------------------------------------------------------------------------------------- Arrow sources


def test_arrow_text_column_of_integers_is_an_error(tmp_path: Path) -> None:
    from datasets import Dataset

    from kormed.prepare.sources import ArrowSource

    Dataset.from_dict({"text": [1, 2, 3]}).save_to_disk(str(tmp_path / "ints"))
    with pytest.raises(KormedError) as err:
        ArrowSource("c4_korean", tmp_path / "ints")
    assert "'text'" in err.value.message and "int64" in err.value.message and err.value.field == "text_field"


def test_empty_arrow_dataset_is_a_clear_error(tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict, Features, Value

    from kormed.prepare.sources import ArrowSource

    Dataset.from_dict({"text": []}, features=Features({"text": Value("string")})).save_to_disk(str(tmp_path / "e"))
    DatasetDict({"train": Dataset.from_dict({"text": []})}).save_to_disk(str(tmp_path / "d"))
    for name in ("e", "d"):
        with pytest.raises(KormedError) as err:
            ArrowSource("namu_wiki", tmp_path / name)
        assert "empty (0 rows)" in err.value.message and "IndexError" not in str(err.value)
        assert err.value.path == str(tmp_path / name)


# ---------------------------------------------------------------------------------------------- BOM


def test_bom_error_says_what_to_do_with_the_file(tmp_path: Path) -> None:
    mcq = tmp_path / "mcq.jsonl"
    mcq.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD_MCQ).encode() + b"\n")
    dictionary = tmp_path / "dict.json"
    dictionary.write_bytes(b"\xef\xbb\xbf" + json.dumps(MED_DICT).encode())
    for read, path in ((read_mcq_jsonl, mcq), (read_dictionary, dictionary)):
        with pytest.raises(KormedError) as err:
            read(path)
        text = str(err.value)
        assert err.value.path == str(path) and err.value.line == 1, text
        assert "byte-order mark" in text and "without BOM" in text and "sed -i" in text and str(path) in text
        assert "utf-8-sig" not in text.lower()


# ---------------------------------------------------------------------------------------------- kormed run


def test_run_without_data_root_hints_at_the_pipeline_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kormed.pipeline.run import pipeline_from_mapping, run_pipeline

    monkeypatch.chdir(tmp_path)
    source = tmp_path / "pipe.yaml"
    pipeline = pipeline_from_mapping({"stages": ["prepare"]}, source=source, run_dir=tmp_path / "run")
    with pytest.raises(KormedError) as err:
        run_pipeline(pipeline, report=False, log=lambda m: None)
    hint = err.value.hint or ""
    assert "data_root" in hint and str(source) in hint and "--namu-wiki" not in hint and "--" not in hint
    assert err.value.field == "prepare.namu_wiki.path"


# ---------------------------------------------------------------------------------------------- report.md


def _table_cells(line: str) -> list[str]:
    """Split a GFM table row on its unescaped pipes (what a Markdown renderer does)."""
    cells, cur, i = [], "", 0
    body = line.strip()[1:-1]
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body):
            cur += body[i : i + 2]
            i += 2
            continue
        if body[i] == "|":
            cells.append(cur)
            cur = ""
        else:
            cur += body[i]
        i += 1
    return [*cells, cur]


def test_report_markdown_escapes_text_from_the_data(tmp_path: Path) -> None:
    from kormed.pipeline.report import write_report

    run = tmp_path / "run"
    (run / "corpus").mkdir(parents=True)
    error = "ValueError: a|b <img src=x onerror=alert(1)> `c` *d* [l](http://x)\n# not a heading"
    state = {"name": "evil | `name` <b>", "pipeline": "p`|.yaml", "order": ["prepare"],
             "stages": {"prepare": {"status": "failed", "error": error}}}
    (run / "state.json").write_text(json.dumps(state), encoding="utf-8")
    stats = {"table": [{"source": "MCQ|<i>x</i>", "base": 1, "multiplier": 5, "final": 5, "ratio": 1.0,
                        "characters": 10}], "drops": {"mcq": {"duplicate": 1}}}
    (run / "corpus" / "c.stats.json").write_text(json.dumps(stats), encoding="utf-8")
    _html, md = write_report(run)
    text = md.read_text(encoding="utf-8")
    assert not re.search(r"(?<!\\)<[A-Za-z/]", text) and "\n# not a heading" not in text  # no raw HTML, no new heading
    title = text.splitlines()[0]
    assert title.startswith("# ") and "\\|" in title and "\\`name\\`" in title and "\\<b\\>" in title
    row = next(line for line in text.splitlines() if line.startswith("| prepare"))
    cells = _table_cells(row)
    assert len(cells) == 6, row  # the | in the error does not add a column
    assert "a\\|b \\<img" in cells[-1] and "\\`c\\` \\*d\\* \\[l\\]" in cells[-1]
    src = next(line for line in text.splitlines() if "MCQ" in line)
    assert len(_table_cells(src)) == 6 and "MCQ\\|\\<i\\>x\\</i\\>" in src
    meta = text.splitlines()[2]
    assert "``p`|.yaml``" in meta  # a code span fenced longer than the backtick inside it
    html_text = _html.read_text(encoding="utf-8")
    assert "<img src=x" not in html_text and "&lt;img src=x" in html_text


# ---------------------------------------------------------------------------------------------- CPT's parallel reader

BAD_CPT_LINES = {
    "malformed": b'{"text": "\xeb\x91\x98"',
    "missing field": b'{"body": "x"}',
    "not a string": b'{"text": 5}',
    "not an object": b'["text"]',
    "invalid utf-8": b'{"text": "\xff\xfe"}',
    "bom mid-file": b'\xef\xbb\xbf{"text": "x"}',
}


@pytest.mark.parametrize("bad", sorted(BAD_CPT_LINES))
def test_cpt_parallel_reader_gives_read_texts_error(tmp_path: Path, real_tokenizer, bad: str) -> None:
    """A bad line deep in a corpus tokenized by 2 workers over many shards is the error read_texts gives (file,
    line, field), found before anything is cached; after a max_samples limit it is not read, as by read_texts."""
    from kormed.data.corpus_cache import shard_ranges
    from kormed.io import read_texts
    from kormed.train.cpt import build_packed_dataset

    good = [json.dumps({"text": f"한국어 문장 {i}번은 의학 용어를 담는다."}, ensure_ascii=False).encode()
            for i in range(400)]
    data = tmp_path / "train.jsonl"
    data.write_bytes(b"\n".join([*good[:300], BAD_CPT_LINES[bad], *good[300:]]) + b"\n")
    assert len(shard_ranges(data, 2048)) > 10
    with pytest.raises(KormedError) as want:
        read_texts(data, what="training text")
    cache = tmp_path / "cache"
    with pytest.raises(KormedError) as got:
        build_packed_dataset(data, real_tokenizer, num_proc=2, cache_dir=cache, log=lambda m: None, shard_bytes=2048)
    assert str(got.value) == str(want.value) and got.value.line == 301
    assert not any(cache.iterdir())  # nothing half-built left behind
    ds, info = build_packed_dataset(data, real_tokenizer, num_proc=2, max_samples=250, cache_dir=cache,
                                    log=lambda m: None, shard_bytes=2048)
    assert info["documents"] == 250 == len(read_texts(data, limit=250))


def test_cpt_corpus_of_blank_texts_is_an_error(tmp_path: Path, real_tokenizer) -> None:
    from kormed.train.cpt import build_packed_dataset

    data = tmp_path / "blank.jsonl"
    data.write_text('{"text": "  "}\n\n{"text": ""}\n', encoding="utf-8")
    with pytest.raises(KormedError, match=r"blank.jsonl: no non-empty 'text' records in the training text"):
        build_packed_dataset(data, real_tokenizer, cache_dir=tmp_path / "c", log=lambda m: None)
