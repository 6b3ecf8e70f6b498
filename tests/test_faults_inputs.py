"""Hostile input values and records (issue 14, items 8-11): each gives one clear error naming file, line/section and
key (or a counted skip under --skip-bad), never a traceback and never silent acceptance."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
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


def test_report_escapes_the_decontamination_set_names_in_both_formats(tmp_path: Path) -> None:
    """Issue 28: a text the report builds from the data (the decontamination sentence, with the evaluation sets'
    file names) is escaped like every other: no raw HTML in report.md, no markup made of the name in either."""
    from kormed.pipeline.report import write_report

    run = tmp_path / "run"
    (run / "corpus").mkdir(parents=True)
    name = "<img src=x onerror=alert(1)>**bold**`code`[l](http://x).jsonl"
    stats = {"table": [{"source": "mcq", "base": 1, "final": 1}], "drops": {},
             "decontamination": {"enabled": True, "ngram": 13, "documents": 1, "characters": 5,
                                 "eval_sets": [{"name": name, "questions": 3, "matched_documents": 1}]}}
    (run / "corpus" / "c.stats.json").write_text(json.dumps(stats), encoding="utf-8")
    html_path, md_path = write_report(run)
    md = md_path.read_text(encoding="utf-8")
    line = next(x for x in md.splitlines() if x.startswith("Decontamination"))
    assert not re.search(r"(?<!\\)<[A-Za-z/]", md), line  # no raw HTML anywhere in report.md
    assert "\\<img src=x onerror=alert(1)\\>\\*\\*bold\\*\\*\\`code\\`\\[l\\](http://x).jsonl" in line
    html_text = html_path.read_text(encoding="utf-8")
    assert "<img src=x" not in html_text and "&lt;img src=x onerror=alert(1)&gt;**bold**`code`" in html_text
    assert "<b>bold</b>" not in html_text and "<code>code</code>" not in html_text


# ---------------------------------------------------------------------------------------------- guarded readers
# Issue 26: every JSON / JSONL / YAML a user supplies or a run reads back goes through one guarded reader. Hostile
# content by class - nesting thousands deep, a 5,000-digit integer, a lone surrogate (a `\ud800` escape), invalid
# UTF-8 - is one `kormed: error:` line naming the file and line, never a RecursionError / ValueError / TypeError.

DEEP_JSON = "[" * 5000 + "]" * 5000
HOSTILE_JSON = {  # value put in a record's text field -> (raw JSON of the value, words the error must hold)
    "deep": (DEEP_JSON, ("nested more than",)),
    "long_int": ("1" * 5000, ("5000 digits",)),
    "lone_surrogate": ('"\\ud800 text"', ("lone surrogate",)),
    "lone_low_surrogate": ('"a \\udc80"', ("lone surrogate",)),
}


def _record_line(field_json: str, base: dict[str, Any] | None = None) -> str:
    """One JSONL line: `base` with its "text"/"question" value replaced by the raw JSON `field_json`."""
    rec = dict(base or {"text": "x"})
    key = "question" if "question" in rec else "text"
    rec[key] = "@@"
    return json.dumps(rec, ensure_ascii=False).replace('"@@"', field_json)


def _jsonl_with_bad_second_line(path: Path, field_json: str, base: dict[str, Any] | None = None) -> Path:
    good = json.dumps(base or {"text": "정상 문장"}, ensure_ascii=False)
    path.write_text(good + "\n" + _record_line(field_json, base) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("kind", sorted(HOSTILE_JSON))
@pytest.mark.parametrize("command", ["eval_kormedmcqa", "eval_ppl", "namumark_jsonl", "tokenizer_extend"])
def test_hostile_jsonl_line_is_one_error_naming_file_and_line(tmp_path: Path, command: str, kind: str) -> None:
    raw, needles = HOSTILE_JSON[kind]
    base = GOOD_MCQ if command == "eval_kormedmcqa" else None
    data = _jsonl_with_bad_second_line(tmp_path / "data.jsonl", raw, base)
    args = {
        "eval_kormedmcqa": ["eval", "kormedmcqa", "--data", str(data)],
        "eval_ppl": ["eval", "ppl", "--data", str(data)],
        "namumark_jsonl": ["namumark", "--jsonl", str(data)],
        "tokenizer_extend": ["tokenizer", "extend", "--corpus", str(data), "--dict", str(tmp_path / "dict.json"),
                             "--out", str(tmp_path / "tok")],
    }[command]
    (tmp_path / "dict.json").write_text(json.dumps(MED_DICT, ensure_ascii=False), encoding="utf-8")
    _one_line_error(_cli(args), f"{data}:2", *needles)


def test_hostile_jsonl_on_stdin_is_one_error(tmp_path: Path) -> None:
    """`kormed namumark --jsonl` from stdin: a lone surrogate in any field (not only the converted one) used to
    raise UnicodeEncodeError while writing the record out."""
    from kormed.cli import app

    line = '{"text": "a", "title": "\\ud800"}\n'
    result = CliRunner().invoke(app, ["namumark", "--jsonl"], input='{"text": "b"}\n' + line)
    _one_line_error(result, "<stdin>:2", "lone surrogate")


@pytest.mark.parametrize("kind", ["deep", "long_int", "lone_surrogate"])
def test_hostile_dictionary_json_is_one_error(tmp_path: Path, kind: str) -> None:
    root = _medical_root(tmp_path, [GOOD_MCQ])
    dictionary = root / "data/02_refined/01_medical_dict.json"
    entry = '{"term": "고혈압", "definition": "혈압이 높은 상태"}'
    payload = {"deep": DEEP_JSON, "long_int": "1" * 5000, "lone_surrogate": '"\\ud800"'}[kind]
    dictionary.write_text(f'[{entry},\n{{"term": "a", "definition": {payload}}}]', encoding="utf-8")
    needles = HOSTILE_JSON[kind][1]
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump({"prepare": {n: {"optional": True} for n in
                                                    ("namu_wiki", "wikipedia_korean", "c4_korean")}}))
    res = _cli(["prepare", "--config", str(cfg_file), "--data-root", str(root), "--out", str(tmp_path / "o.jsonl"),
                "--num-proc", "1", "--quiet"])
    line = "" if kind == "deep" else ":2"  # nesting is found after parsing, where the line is no longer known
    _one_line_error(res, f"{dictionary}{line}", *needles)


@pytest.mark.parametrize("kind", sorted(HOSTILE_JSON))
def test_hostile_run_state_is_one_error(tmp_path: Path, kind: str) -> None:
    """A run's own state.json read back by `kormed run` (damaged, or planted in the run directory)."""
    run = tmp_path / "run"
    run.mkdir()
    raw, needles = HOSTILE_JSON[kind]
    (run / "state.json").write_text('{"version": 1,\n "stages": {}, "name": ' + raw + "}\n", encoding="utf-8")
    pipe = tmp_path / "pipe.yaml"
    pipe.write_text(yaml.safe_dump({"name": "p", "stages": ["prepare"]}), encoding="utf-8")
    _one_line_error(_cli(["run", str(pipe), "--run-dir", str(run), "--no-report"]), str(run / "state.json"),
                    *needles)


def test_json_reader_limits_unit() -> None:
    """The shared guard itself: limits hold at their edges, good JSON (surrogate pairs, long floats) still reads."""
    from kormed.io import MAX_INT_DIGITS, MAX_NESTING, loads_json

    assert loads_json("[" * MAX_NESTING + "]" * MAX_NESTING, where="x") is not None
    with pytest.raises(KormedError, match="nested more than"):
        loads_json("[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1), where="x")
    assert loads_json("-" + "9" * MAX_INT_DIGITS, where="x") == -int("9" * MAX_INT_DIGITS)
    with pytest.raises(KormedError, match="digits"):
        loads_json("9" * (MAX_INT_DIGITS + 1), where="x")
    assert loads_json('{"e": "\\ud83d\\ude00", "f": 1.' + "5" * 500 + "}", where="x")["e"] == "\U0001F600"
    with pytest.raises(KormedError) as err:
        loads_json('{"a": 1,\n"b": "\\udfff"}', where="f.json")
    assert err.value.line == 2 and err.value.path == "f.json"


def test_size_limits_refuse_before_reading_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A JSONL line, a JSON file or a YAML file over its limit is one error naming it (limits lowered here so the
    test need not write gigabytes); a line is refused before it is read whole."""
    import kormed.io as kio

    monkeypatch.setattr(kio, "MAX_LINE_BYTES", 100)
    monkeypatch.setattr(kio, "MAX_JSON_BYTES", 100)
    monkeypatch.setattr(kio, "MAX_YAML_BYTES", 100)
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "a"}\n{"text": "' + "x" * 200 + '"}\n', encoding="utf-8")
    _one_line_error(_cli(["eval", "ppl", "--data", str(data)]), f"{data}:2", "line longer than")
    big = tmp_path / "d.json"
    big.write_text(json.dumps(["x" * 200]), encoding="utf-8")
    with pytest.raises(KormedError, match="more than the"):
        read_dictionary(big)
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("prepare:\n  out: " + "x" * 200 + "\n", encoding="utf-8")
    _one_line_error(_cli(["prepare", "--config", str(cfg_file)]), str(cfg_file), "more than the")


# ---------------------------------------------------------------------------------------------- YAML configs
_LAUGHS = "lol0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"lol{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]\n" for i in range(1, 10))
HOSTILE_YAML = {  # name -> (YAML text, words the error must hold, line)
    "duplicate_key": ("prepare:\n  seed: 1\n  val_fraction: 0.1\n  seed: 2\n", ("duplicate key 'seed'", "line 2"), 4),
    "duplicate_section": ("prepare:\n  seed: 1\nprepare:\n  seed: 2\n", ("duplicate key 'prepare'",), 3),
    "deep": ("prepare:\n  x: " + "[" * 5000 + "]" * 5000 + "\n", ("nested more than",), 2),
    "deep_block": ("prepare:\n  x:\n" + "   - " * 3000 + "1\n", ("nested more than",), 3),
    "long_int": ("prepare:\n  seed: " + "1" * 5000 + "\n", ("5000 digits",), 2),
    "lone_surrogate": ('prepare:\n  out: "\\ud800.jsonl"\n', ("lone surrogate",), 2),
    "recursive_alias": ("prepare:\n  x: &a [1, *a]\n", ("refers to a node that contains it",), 2),
    "billion_laughs": (_LAUGHS + "prepare:\n  x: *l9\n", ("aliases repeat more than",), None),
}


def _cli_subprocess(args: list[str], timeout: float, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """`kormed ARGS` in a fresh interpreter on the sources under test (a hang guard: the caller's timeout ends it)."""
    import kormed

    env = {**os.environ, "PYTHONPATH": str(Path(kormed.__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-c", "from kormed.cli import main; main()", *args], input=stdin,
                          capture_output=True, timeout=timeout, env=env, check=False)


@pytest.mark.parametrize("kind", sorted(HOSTILE_YAML))
def test_hostile_config_yaml_is_one_error(tmp_path: Path, kind: str) -> None:
    """Each in a subprocess with a generous timeout: a billion-laughs config used to hang (no answer in 120 s),
    duplicate keys were silently resolved (the last won), the rest gave tracebacks."""
    text, needles, line = HOSTILE_YAML[kind]
    cfg_file = tmp_path / "bad.yaml"
    cfg_file.write_text(text, encoding="utf-8")
    proc = _cli_subprocess(["prepare", "--config", str(cfg_file), "--out", str(tmp_path / "o.jsonl")], timeout=60)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2, err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("kormed: error:") and "Traceback" not in err, err
    where = f"{cfg_file}:{line}:" if line is not None else f"{cfg_file}:"
    assert where in lines[0] and all(n in lines[0] for n in needles), err


def test_billion_laughs_in_a_pipeline_file_is_refused(tmp_path: Path) -> None:
    pipe = tmp_path / "pipe.yaml"
    pipe.write_text(_LAUGHS + "name: p\ndescription: *l9\nstages: [prepare]\n", encoding="utf-8")
    proc = _cli_subprocess(["run", str(pipe), "--run-dir", str(tmp_path / "run"), "--no-report"], timeout=60)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2 and "aliases repeat more than" in err and str(pipe) in err, err
    assert len([x for x in err.splitlines() if x.strip()]) == 1, err


def test_invalid_utf8_config_names_the_line(tmp_path: Path) -> None:
    cfg_file = tmp_path / "bad.yaml"
    cfg_file.write_bytes(b"prepare:\n  seed: 1\n  out: \xff\xfe.jsonl\n")
    _one_line_error(_cli(["prepare", "--config", str(cfg_file)]), f"{cfg_file}:3", "UTF-8")


def test_yaml_reader_keeps_what_yaml_allows(tmp_path: Path) -> None:
    """Merge keys, a few aliases, underscores in integers and a surrogate pair still read as before."""
    from kormed.io import load_yaml

    text = ('base: &b {x: 1, y: [1, 2]}\nc:\n  <<: *b\n  y: 3\nd: *b\nn: 1_000\ne: "\\U0001F600"\n'
            'f: {1: a, 2: b}\n')
    assert load_yaml(text, where="x") == yaml.safe_load(text)


def test_yaml_in_a_command_line_value_is_guarded() -> None:
    """A structured flag's value is read as YAML through the same guard: aliases bounded, one error naming the
    flag; text that is not YAML stays plain text."""
    from kormed.flags import _is_structured, _parse_structured, field_flags
    from kormed.train.config import CPTConfig

    ff = next(f for f in field_flags(CPTConfig) if _is_structured(f.tp))
    laughs = "{" + _LAUGHS.strip().replace("\n", ", ") + ", z: *l9}"
    with pytest.raises(KormedError, match="aliases repeat more than") as err:
        _parse_structured(ff, laughs)
    assert err.value.path == ff.flag
    assert _parse_structured(ff, "[a, b") in ("[a, b", ["[a", "b"])


# ---------------------------------------------------------------------------------------------- text to tokenizer


def test_chat_prompt_with_a_lone_surrogate_is_one_error() -> None:
    """`--prompt` with bytes that are not UTF-8 (Python keeps them as lone surrogates) reached the tokenizer as
    TypeError; now one line, before the model loads."""
    _one_line_error(_cli(["chat", "--prompt", "안녕 \udcff"]), "--prompt", "lone surrogate")


def test_chat_stdin_invalid_utf8_is_one_error() -> None:
    from kormed.cli import app

    result = CliRunner().invoke(app, ["chat"], input=b"\xec\x95\x88\n\xff\xfe\n")
    _one_line_error(result, "<stdin>:2", "UTF-8")


def test_chat_stdin_interactive_line_with_a_surrogate_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    """In the interactive loop a bad line gets one error line and the session goes on (the line is not sent)."""
    import io

    from kormed.chat import interactive

    class NoModel:
        asked: list[str] = []

        def ask(self, text: str, out: Any = None) -> str:
            self.asked.append(text)
            return ""

    chat = NoModel()
    out = io.StringIO()
    lines = iter(["bad \udc80", "good"])

    def fake_input(prompt: str = "") -> str:
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", fake_input)
    interactive(chat, out=out)  # type: ignore[arg-type]
    assert chat.asked == ["good"] and "lone surrogate" in out.getvalue()


# ---------------------------------------------------------------------------------------------- NamuMark hangs
# 1 MB of each open / unterminated construct, each converted in a subprocess under a generous timeout (60 s: a hang
# guard, not a speed assert). Before the fix a heading line of spaces was cubic (2 s at 800 characters), repeated
# `[math(x\)]` quadratic (12 s at 50 k characters: each opener rescanned every escaped closer after it), and so were
# repeated `<math>` and unknown `[x(` openers with one closer at the end.
_MB = 1_000_000
NAMUMARK_OPEN = {
    "heading_of_spaces": "= " + " " * _MB + "a",
    "math_escaped_closers": "[math(x\\)]" * (_MB // 10),
    "math_open": "[math(" + "a" * _MB,
    "math_openers": "[math(" * (_MB // 6),
    "math_tags": "<math>" * (_MB // 6),
    "unknown_macros_far_close": "[foo(" * (_MB // 5) + ")]",
    "ruby_openers": "[ruby(" * (_MB // 6),
    "links": "[[" * (_MB // 2),
    "link_labels": "[[a|" * (_MB // 4),
    "footnotes": "[*" * (_MB // 2),
    "brackets": "[" * _MB,
    "braces": "{{{" * (_MB // 3),
    "folding": "{{{#!folding x\n" * (_MB // 15),
    "table_rows": "||a\n" * (_MB // 4),
    "markers": "'''__~~--^^,,a" * (_MB // 14),
    "html_comments": "{{{#!html " + "<!--" * (_MB // 4) + "}}}",
}
_CONVERT = ("import sys; from kormed.prepare.namumark import namumark_to_text; "
            "print(len(namumark_to_text(sys.stdin.read())))")


@pytest.mark.parametrize("name", sorted(NAMUMARK_OPEN))
def test_namumark_is_linear_on_a_megabyte_of_each_open_construct(name: str) -> None:
    import kormed

    env = {**os.environ, "PYTHONPATH": str(Path(kormed.__file__).resolve().parents[1]), "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.run([sys.executable, "-c", _CONVERT], input=NAMUMARK_OPEN[name].encode("utf-8"),
                          capture_output=True, timeout=60, env=env, check=False)
    assert proc.returncode == 0 and proc.stdout.strip().isdigit(), proc.stderr.decode()


@pytest.mark.parametrize(
    ("markup", "expected"),
    [  # the same outputs as before the linear rewrite
        ("= " + " " * 5 + "a", "= a"),
        ("=     =", ""),
        ("== 제목  ==  ", "제목"),
        ("=#  접힘 #=\n본문", "접힘\n본문"),
        ("[math(x\\)]" * 3, "[math(x)]" * 3),
        ("[math(x\\)] y)]", "x\\)] y"),
        ("<math>" * 3 + "a", "<math>" * 3 + "a"),
        ("<math>a<math>b</MATH>", "a<math>b"),
        ("[foo(" * 3 + ")]", "[foo(" * 3 + ")]"),
        ("[br(x)] [ruby(a,ruby=b)] [age(2000-01-01)]끝", "[br(x)] a(b) 끝"),
        ("[ruby([ruby(x,ruby=y)]", "[ruby(x(y)"),
    ],
)
def test_namumark_small_cases_unchanged(markup: str, expected: str) -> None:
    from kormed.prepare.namumark import namumark_to_text

    assert namumark_to_text(markup) == expected


# ---------------------------------------------------------------------------------------------- silent acceptances
# An input that is there but is not what it must be was taken for an absent one (skipped) or read in part: exit 0.


def _sample_root() -> Path:
    from kormed.sample_data import sample_data_root

    return Path(sample_data_root())


@pytest.mark.parametrize("layout", ["Dataset", "DatasetDict"])
def test_an_arrow_dataset_with_a_missing_shard_is_one_error(tmp_path: Path, layout: str) -> None:
    """save_to_disk wrote 3 shards, one is gone: the other two were read as the whole source, exit 0."""
    from datasets import Dataset, DatasetDict

    ds = Dataset.from_dict({"text": [f"한국어 문서 {i}번입니다. " * 20 for i in range(30)], "namespace": [0] * 30})
    source = tmp_path / "namu_wiki"
    if layout == "Dataset":
        ds.save_to_disk(str(source), num_shards=3)
        gone = source / "data-00001-of-00003.arrow"
    else:
        DatasetDict({"train": ds}).save_to_disk(str(source), num_shards={"train": 3})
        gone = source / "train" / "data-00002-of-00003.arrow"
    gone.unlink()
    out = tmp_path / "out" / "corpus.jsonl"
    line = _one_line_error(_cli(["prepare", "--data-root", str(_sample_root()), "--namu-wiki", str(source),
                                 "--out", str(out), "--num-proc", "1", "--quiet"]), "missing", gone.name)
    assert str(gone) in line
    assert not out.exists()


def test_an_evaluation_set_that_is_a_directory_is_an_error_not_a_skip(tmp_path: Path) -> None:
    """A test set path that names a directory was reported 'not found, skipped' and prepare went on: exit 0."""
    test_dir = tmp_path / "test.jsonl"
    test_dir.mkdir()
    out = tmp_path / "out" / "corpus.jsonl"
    _one_line_error(_cli(["prepare", "--data-root", str(_sample_root()), "--decontam-eval-sets", str(test_dir),
                          "--out", str(out), "--num-proc", "1", "--quiet"]), str(test_dir), "is a directory")
    assert not out.exists()


def test_a_dev_split_beside_the_test_set_that_is_a_directory_is_an_error(tmp_path: Path) -> None:
    """dev.jsonl beside --eval-data that is a directory: the loop selected on held-out training questions instead,
    in silence."""
    from kormed.train.loop import DEV_FILE, selection_split

    test = tmp_path / "test.jsonl"
    test.write_text(json.dumps(GOOD_MCQ, ensure_ascii=False) + "\n", encoding="utf-8")
    (tmp_path / DEV_FILE).mkdir()
    cfg = load_config("loop", overrides={"eval_data": str(test)})
    with pytest.raises(KormedError) as err:
        selection_split(cfg, src=None, log=lambda m: None)  # type: ignore[arg-type]
    assert err.value.path == str(tmp_path / DEV_FILE) and "is a directory" in err.value.message


def test_bench_quality_general_text_that_is_a_directory_is_an_error(tmp_path: Path) -> None:
    """--korean-text DIR whose train.jsonl is a directory: the bench fell back to the bundled sample, exit 0."""
    from kormed.bench.quality import Budget, prepare_data

    korean = tmp_path / "korean_text"
    (korean / "train.jsonl").mkdir(parents=True)
    with pytest.raises(KormedError) as err:
        prepare_data(tmp_path / "work", korean_text=korean, budget=Budget(), log=lambda m: None)
    assert err.value.path == str(korean / "train.jsonl") and "is a directory" in err.value.message


# ---------------------------------------------------------------------------------------------- --device (issue 28)


@pytest.mark.parametrize("command", [["train", "cpt"], ["train", "sft"], ["train", "loop"], ["eval", "kormedmcqa"],
                                     ["eval", "ppl"], ["chat"], ["bench", "eval"], ["bench", "train"],
                                     ["bench", "quality"]])
def test_an_unknown_device_is_refused_when_the_options_are_read(command: list[str], monkeypatch) -> None:
    """`--device tpu` was refused only when the run started (after the data was read, in a pipeline after the stages
    before it had run); now by the option's declaration, before anything else."""
    import kormed.models as models

    def started(*_a: Any, **_k: Any) -> None:
        raise AssertionError("the run started")

    monkeypatch.setattr(models, "pick_runtime", started)
    _one_line_error(_cli([*command, "--device", "tpu"]), "--device", "must be auto, cpu, cuda or cuda:N", "'tpu'")


def test_an_unknown_device_in_a_pipeline_file_is_refused_before_any_stage(tmp_path: Path) -> None:
    from kormed.pipeline.run import pipeline_from_mapping, resolve_configs
    from kormed.pipeline.stages import default_specs

    for data in ({"stages": ["prepare", "cpt", "eval"], "device": "tpu"},
                 {"stages": ["prepare", "eval"], "eval": {"device": "cuda:x"}}):
        pipeline = pipeline_from_mapping(data, source=tmp_path / "pipe.yaml", run_dir=tmp_path / "run")
        with pytest.raises(KormedError, match="must be auto, cpu, cuda or cuda:N"):
            resolve_configs(pipeline, default_specs(), log=lambda m: None)


# The values of issue 26's battery that passed validation and failed later (or never): each one line, exit 2.
@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["train", "cpt", "--train.weight-decay", "-0.1"], "--train.weight-decay"),
        (["train", "sft", "--train.early-stopping-patience", "-1"], "--train.early-stopping-patience"),
        (["train", "cpt", "--lora.embedding-lr", "-0.0001"], "--lora.embedding-lr"),
        (["train", "cpt", "--train.target-perplexity", "-3"], "--train.target-perplexity"),
        (["train", "cpt", "--train.save-total-limit", "-1"], "--train.save-total-limit"),
        (["train", "cpt", "--train.max-grad-norm", "-1"], "--train.max-grad-norm"),
        (["train", "cpt", "--lora.alpha", "0"], "--lora.alpha"),
        (["train", "cpt", "--train.scheduler", "cosine_typo"], "--train.scheduler"),
        (["train", "loop", "--train.optim", "adamw_typo"], "--train.optim"),
        (["train", "cpt", "--train.report-to", "tensorbord"], "--train.report-to"),
        (["train", "cpt", "--lora.target-modules", "5"], "--lora.target-modules"),
        (["train", "cpt", "--grad-accum", "1000000000"], "--grad-accum"),
        (["prepare", "--val-max-docs", "-1"], "--val-max-docs"),
    ],
)
def test_issue_26_option_values_are_refused_when_read(args: list[str], flag: str) -> None:
    _one_line_error(_cli(args), f"field '{flag}'", "must be")


@pytest.mark.parametrize("value", [[1, 2], ["q_proj", 7]])
def test_target_modules_that_are_not_module_names_are_refused_in_yaml(tmp_path: Path, value: Any) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"cpt": {"lora": {"target_modules": value}}}), encoding="utf-8")
    _one_line_error(_cli(["train", "cpt", "--config", str(config)]), str(config), "cpt.lora.target_modules")


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


# ---------------------------------------------------------------------------------------------- eval knowledge


@pytest.mark.parametrize("record", [{"medical_dict": [{"term": 1, "definition": "x"}]}, ["not", "an", "object"],
                                    {"char_dict": "x"}])
def test_bad_heldout_record_is_one_error_before_the_model_loads(tmp_path: Path, record: Any) -> None:
    """`kormed eval knowledge --heldout` with a record that is not prepare's: exit 2, one line naming the file (and
    the list), no model loaded (the --model path does not exist)."""
    from typer.testing import CliRunner

    from kormed.cli import app

    med = tmp_path / "med.json"
    med.write_text(json.dumps([{"term": "고혈압", "definition": "Hypertension. 혈압이 높은 상태"}]), encoding="utf-8")
    bad = tmp_path / "bad.dict_heldout.json"
    bad.write_text(json.dumps(record), encoding="utf-8")
    res = CliRunner().invoke(app, ["eval", "knowledge", "--model", str(tmp_path / "no-model"), "--dict", str(med),
                                   "--heldout", str(bad)])
    assert res.exit_code == 2 and "bad.dict_heldout.json" in res.output and "Traceback" not in res.output
    assert "no-model" not in res.output


@pytest.mark.parametrize("bad", sorted(BAD_CPT_LINES))
def test_cpt_streaming_reader_gives_read_texts_error(tmp_path: Path, real_tokenizer, bad: str) -> None:
    """`--streaming` reads with the same guard: a bad line is the error read_texts gives (file, line, field), raised
    when the stream reaches it; after a max_samples limit it is never read."""
    from kormed.data.corpus_stream import stream_blocks
    from kormed.io import read_texts

    good = [json.dumps({"text": f"한국어 문장 {i}번은 의학 용어를 담는다."}, ensure_ascii=False).encode()
            for i in range(400)]
    data = tmp_path / "train.jsonl"
    data.write_bytes(b"\n".join([*good[:300], BAD_CPT_LINES[bad], *good[300:]]) + b"\n")
    with pytest.raises(KormedError) as want:
        read_texts(data, what="training text")
    ids = {"bos_id": real_tokenizer.bos_token_id, "eod_id": real_tokenizer.convert_tokens_to_ids("<end_of_turn>")}
    with pytest.raises(KormedError) as got:
        list(stream_blocks(data, real_tokenizer, max_length=64, **ids))
    assert str(got.value) == str(want.value) and got.value.line == 301
    counts: dict[str, int] = {}
    assert list(stream_blocks(data, real_tokenizer, max_length=64, limit=250, counts=counts, **ids))
    assert counts["documents"] == 250


@pytest.mark.heavy  # loads and starts training the tiny model: 10-30 s on a shared 2-core CPU
def test_cpt_streaming_bad_line_stops_training_with_one_line(tmp_path: Path, tiny_gemma3_dir: Path) -> None:
    """`kormed train cpt --streaming`: the bad line, met by the stream during training, is one `kormed: error:` line
    naming file:line (no traceback through the Trainer)."""
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "정상 문장 하나."}\n{"text": "둘째 문장."}\n{"text": "셋"\n', encoding="utf-8")
    val = tmp_path / "val.jsonl"
    val.write_text('{"text": "검증 문장."}\n', encoding="utf-8")
    result = _cli(["train", "cpt", "--streaming", "--max-steps", "2", "--data", str(data), "--val", str(val),
                   "--model", str(tiny_gemma3_dir), "--output", str(tmp_path / "out"), "--max-length", "16",
                   "--batch-size", "1", "--grad-accum", "1", "--device", "cpu", "--no-train.eval-on-start",
                   "--train.report-to", "none"])
    out = result.output
    assert result.exit_code == 2 and "Traceback" not in out, out
    assert out.count("kormed: error:") == 1 and f"kormed: error: {data}:3: malformed JSON" in out, out  # after the bar


def test_an_sft_summary_with_a_broken_step_row_is_one_error_not_a_dropped_row(tmp_path: Path) -> None:
    """A row of sft_summary.json without its step number was read as step 99 (dropped by `--from-step`) or not
    read at all (the runner and report): now the one typed reader names the file."""
    from kormed.pipeline.results import sft_result

    row = {"name": "qa", "description": "", "stop_reason": "conditions_met", "global_step": 3,
           "metrics_at_stop": {}, "adapter": str(tmp_path / "step1")}  # no "step"
    (tmp_path / "sft_summary.json").write_text(json.dumps({
        "baseline": {"raw_perplexity": 2.0}, "steps": [row], "finished": True, "final_adapter": row["adapter"],
    }), encoding="utf-8")
    with pytest.raises(KormedError, match=r"sft_summary.json.*not a kormed SFT summary.*'step'"):
        sft_result(tmp_path)


@pytest.mark.parametrize("change, field", [
    ({"global_step": "three"}, "global_step"),  # mistyped: was read as a step count of "three"
    ({"last_eval": [0.5]}, "last_eval"),  # was read as "no metrics"
    ({"conditions_at_stop": "eval_qa_loss < 0.3"}, "conditions_at_stop"),  # an SFT step's record, mistyped
    ({"lora": 8}, "lora"),
])
def test_a_malformed_training_info_is_one_error_naming_the_file_and_field(tmp_path: Path, change: dict[str, Any],
                                                                           field: str) -> None:
    """training_info.json is read by one typed reader (the runner, the report, the model cards and the recipes):
    a mistyped field is one line naming the file and the field, not a silently wrong number or a traceback."""
    from kormed.pipeline.results import train_result

    info = {"stage": "sft", "stop_reason": "conditions_met", "stop_step": 3, "global_step": 3,
            "last_eval": {"step": 3, "eval_qa_loss": 0.25}, "conditions_at_stop": [], "lora": {"r": 8}}
    (tmp_path / "training_info.json").write_text(json.dumps({**info, **change}), encoding="utf-8")
    with pytest.raises(KormedError) as err:
        train_result(tmp_path)
    message = str(err.value)
    assert "\n" not in message and f"{tmp_path / 'training_info.json'}" in message and f"'{field}'" in message



# ---------------------------------------------------------------------------------------------- loop knowledge
# The loop's held-out dictionary record (`--dict-heldout`, prepare's control): a record whose entries the loop would
# train on, or one of the wrong shape, is one error naming the file and field, before any model loads.


def _loop_args(tmp_path: Path, dictionary: Path, record: Path) -> list[str]:
    from kormed.sample_data import sample_paths

    p = sample_paths()
    return ["train", "loop", "--mcq", str(p["mcq_train"]), "--dict", str(dictionary), "--dict-heldout", str(record),
            "--eval-data", str(p["mcq_test"]), "--model", str(tmp_path / "no-model"),
            "--output", str(tmp_path / "loop")]


def test_loop_refuses_a_held_out_record_it_would_train_on(tmp_path: Path) -> None:
    from kormed.sample_data import sample_paths

    dictionary = Path(sample_paths()["medical_dict"])  # the whole dictionary, not prepare's trained subset
    entries = json.loads(dictionary.read_text(encoding="utf-8"))
    record = tmp_path / "corpus.dict_heldout.json"
    record.write_text(json.dumps({"medical_dict": entries[:3], "char_dict": []}, ensure_ascii=False), "utf-8")
    line = _one_line_error(_cli(_loop_args(tmp_path, dictionary, record)), "loop.dict_heldout", str(dictionary),
                           "3 held-out entries")
    assert "train on its control" in line
    assert not (tmp_path / "loop").exists()


@pytest.mark.parametrize("content", [[1, 2], {"medical_dict": [{"term": "x"}]}, {"char_dict": "x"}])
def test_loop_bad_held_out_record_is_one_error(tmp_path: Path, content: Any) -> None:
    from kormed.sample_data import sample_paths

    record = tmp_path / "corpus.dict_heldout.json"
    record.write_text(json.dumps(content), encoding="utf-8")
    _one_line_error(_cli(_loop_args(tmp_path, Path(sample_paths()["medical_dict"]), record)), str(record))


def test_model_card_escapes_text_from_the_run(tmp_path: Path) -> None:
    """A model card quotes the run's files (sources, stop details, the eval file and run directory names): each is
    literal Markdown text, never raw HTML, a link, emphasis, a new heading or an extra table column."""
    from kormed.export.model_card import adapter_card

    hostile = "a|b <img src=x onerror=alert(1)> **bold** [l](http://x) `c`"
    run = tmp_path / "run `x` <b>"
    (run / "corpus").mkdir(parents=True)
    (run / "state.json").write_text(json.dumps({"name": "x", "stages": {}}), encoding="utf-8")
    (run / "resolved_config.yaml").write_text(json.dumps({"eval": {"data": f"/d/{hostile}.jsonl"}}), encoding="utf-8")
    (run / "corpus" / "c.stats.json").write_text(json.dumps({"table": [
        {"source": hostile, "base": 1, "multiplier": 1, "final": 1, "ratio": 1.0, "characters": 3}]}), "utf-8")
    adapter = run / "cpt"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "m", "r": 8}), "utf-8")
    (adapter / "training_info.json").write_text(json.dumps({
        "stage": "cpt", "model": "embedded", "global_step": 2, "stop_reason": "max_steps",
        "stop_detail": hostile + "\n# not a heading"}), "utf-8")
    (run / "eval").mkdir()
    (run / "eval" / "kormedmcqa_base.json").write_text(json.dumps({"accuracy": 0.2, "total": 5, "mode": hostile}),
                                                        "utf-8")
    card = adapter_card(adapter)
    outside_code = re.sub(r"(`+)(?!`).*?(?<!`)\1(?!`)", "", card)  # a code span shows its text literally
    assert not re.search(r"(?<!\\)<[A-Za-z/]", outside_code)  # no raw HTML
    assert "**bold**" not in card and "](http://x)" not in card.replace("\\](http://x)", "")
    assert "\n# not a heading" not in card
    for line in card.splitlines():
        if line.startswith("| ") and "\\|" in line:
            header = card.splitlines()[card.splitlines().index(line) - 2]
            assert len(_table_cells(line)) == len(_table_cells(header)), line  # the | in the text adds no column
    assert "`` run `x` <b> ``" in card or "``run `x` <b>``" in card  # the run directory's name as a code span
