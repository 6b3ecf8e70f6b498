#!/usr/bin/env python
"""Build kormed's bundled sample data from the authored files in scripts/sample_data_sources/.

Usage: python scripts/build_sample_data.py [--out DATA_ROOT] [--no-arrow]
Default output is the package's own data root (src/kormed/sample_data), i.e. the files that are committed.

The build is deterministic: the same sources give the same JSON/JSONL bytes and the same Arrow rows (the datasets'
fingerprints are derived from their content, not random). It checks what it reads and stops with a KormedError
naming the file and the entry at the first mistake (a missing field, a duplicated option, an unbalanced answer key).
See scripts/sample_data_sources/README.md for the layout of the sources.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from kormed.errors import KormedError
from kormed.io import atomic_write, write_json, write_jsonl
from kormed.sample_data import MCQ_TEST_PUBLIC_SCHEMA, RELATIVE_PATHS, sample_data_root

SOURCES = Path(__file__).resolve().parent / "sample_data_sources"

EXAMS = ("doctor", "nurse", "pharm", "dentist")
LETTERS = ("A", "B", "C", "D", "E")
# The public KorMedMCQA schema, in its column order; the bundled files add `exam_type` (= subject) after it.
MCQ_FIELDS = ("subject", "year", "period", "q_number", "question", *LETTERS, "answer", "cot")
# Source key -> the YAML file under sources/mcq/ that holds its questions.
MCQ_SPLITS = {"mcq_train": "train", "mcq_dev": "dev", "mcq_test": "test", "mcq_fewshot": "fewshot"}

# Columns of each corpus in the built dataset's order, with their types: `text` comes from the document file, the
# others from the corpus's index.yaml (which also names the `file`).
NAMU_COLUMNS = {"namespace": int, "title": str, "text": str, "contributors": list, "id": str}
WIKIPEDIA_COLUMNS = {"id": str, "url": str, "title": str, "text": str}
C4_COLUMNS = {"text": str, "timestamp": str, "url": str}


# ---------------------------------------------------------------------------------------------------- reading


def load_yaml(path: Path) -> Any:
    """Parse a YAML source; a syntax error becomes a KormedError with its line."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        raise KormedError(f"not valid YAML: {exc.problem}", path=path, line=line) from None


def read_text(path: Path) -> str:
    """A document's text: the file's content without the one final newline editors add."""
    if not path.is_file():
        raise KormedError("the document file named in the index does not exist", path=path)
    text = path.read_text(encoding="utf-8")
    return text[:-1] if text.endswith("\n") else text


def _entry_error(path: Path, n: int, message: str, field: str | None = None) -> KormedError:
    return KormedError(f"entry {n}: {message}", path=path, field=field)


def read_corpus(directory: Path, columns: dict[str, type]) -> list[dict[str, Any]]:
    """Rows of a corpus (keys in the order of `columns`) from its `index.yaml` (one entry per document, in dump
    order) and the text files it names."""
    index = directory / "index.yaml"
    fields = {name: kind for name, kind in columns.items() if name != "text"}
    entries = load_yaml(index)
    if not isinstance(entries, list):
        raise KormedError("expected a list of documents", path=index)
    rows = []
    for n, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict) or set(entry) != {*fields, "file"}:
            got = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
            raise _entry_error(index, n, f"expected the fields {sorted({*fields, 'file'})}, got {got}")
        for name, kind in fields.items():
            value = entry[name]
            if not isinstance(value, kind) or isinstance(value, bool):
                raise _entry_error(index, n, f"expected {kind.__name__}, got {value!r}", name)
            if kind is list and not (value and all(isinstance(v, str) for v in value)):
                raise _entry_error(index, n, "expected a non-empty list of strings", name)
        if not isinstance(entry["file"], str):
            raise _entry_error(index, n, f"expected a path relative to {directory.name}/", "file")
        text = read_text(directory / entry["file"])
        if not text.strip():
            raise _entry_error(index, n, f"{entry['file']} is empty", "file")
        rows.append({name: text if name == "text" else entry[name] for name in columns})
    return rows


def read_mcq(path: Path) -> list[dict[str, Any]]:
    """Questions of one split, checked, as bundled rows (public schema + `exam_type`)."""
    entries = load_yaml(path)
    if not isinstance(entries, list):
        raise KormedError("expected a list of questions", path=path)
    rows = []
    for n, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            raise _entry_error(path, n, "expected a mapping")
        entry = {"cot": ""} | entry
        missing, unknown = set(MCQ_FIELDS) - set(entry), set(entry) - set(MCQ_FIELDS)
        if missing or unknown:
            problems = [f"{what} fields {sorted(names)}" for what, names in (("missing", missing), ("unknown", unknown))
                        if names]
            raise _entry_error(path, n, "; ".join(problems))
        for field in ("question", *LETTERS, "cot"):
            if not isinstance(entry[field], str) or (field != "cot" and not entry[field].strip()):
                raise _entry_error(path, n, "expected non-empty text", field)
        for field in ("year", "period", "q_number", "answer"):
            if not isinstance(entry[field], int) or isinstance(entry[field], bool):
                raise _entry_error(path, n, f"expected an integer, got {entry[field]!r}", field)
        if entry["subject"] not in EXAMS:
            raise _entry_error(path, n, f"expected one of {list(EXAMS)}, got {entry['subject']!r}", "subject")
        if not 1 <= entry["answer"] <= 5:
            raise _entry_error(path, n, f"expected 1-5 (1 = A), got {entry['answer']}", "answer")
        if len({entry[k] for k in LETTERS}) != 5:
            raise _entry_error(path, n, "two options are the same", "A-E")
        named = _answer_named_in_cot(entry["cot"])
        if named is not None and named != LETTERS[entry["answer"] - 1]:
            raise _entry_error(path, n, f"cot names {named} as the answer but answer is {entry['answer']}", "cot")
        rows.append({k: entry[k] for k in MCQ_FIELDS} | {"exam_type": entry["subject"]})
    _check_mcq_split(path, rows)
    return rows


def _answer_named_in_cot(cot: str) -> str | None:
    """The letter of a closing "정답은 X이다." in the reasoning, if it has one."""
    match = re.search(r"정답은 ([A-E])이다\.?\s*$", cot)
    return match.group(1) if match else None


def _check_mcq_split(path: Path, rows: list[dict[str, Any]]) -> None:
    """One split: questions and exam-year-period-number ids unique, and the answer key balanced (counts differ by 1)."""
    keys = {
        "question": [r["question"] for r in rows],
        "subject/year/period/q_number": [(r["subject"], r["year"], r["period"], r["q_number"]) for r in rows],
    }
    for what, values in keys.items():
        dupes = [k for k, c in Counter(values).items() if c > 1]
        if dupes:
            raise KormedError(f"duplicated {what}: {dupes[0]}", path=path)
    answers = Counter(r["answer"] for r in rows)
    counts = [answers.get(i, 0) for i in range(1, 6)]
    if rows and max(counts) - min(counts) > 1:
        raise KormedError(f"the answer key is not balanced (A-E: {counts}); move some correct options", path=path)


def read_dictionary(path: Path) -> list[dict[str, str]]:
    """A dictionary source `{section: {term: definition}}`, flattened in order; a term may appear only once."""

    def no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = Counter(k for k, _ in pairs)
        dupes = sorted(k for k, c in keys.items() if c > 1)
        if dupes:
            raise KormedError(f"duplicated keys: {dupes}", path=path)
        return dict(pairs)

    try:
        sections = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise KormedError(f"not valid JSON: {exc.msg}", path=path, line=exc.lineno) from None
    entries: list[dict[str, str]] = []
    for section, terms in sections.items():
        if not isinstance(terms, dict) or not all(isinstance(d, str) and d for d in terms.values()):
            raise KormedError("expected an object of term: definition", path=path, field=section)
        entries.extend({"term": t, "definition": d} for t, d in terms.items())
    dupes = sorted(t for t, c in Counter(e["term"] for e in entries).items() if c > 1)
    if dupes:
        raise KormedError(f"terms listed in two sections: {dupes}", path=path)
    return entries


# ---------------------------------------------------------------------------------------------------- writing


def _write_dictionary(path: Path, entries: list[dict[str, str]]) -> None:
    """Dictionaries keep their authored order (term first), unlike write_json, which sorts keys."""
    with atomic_write(path) as fh:
        json.dump(entries, fh, ensure_ascii=False, indent=2)
        fh.write("\n")


def _save_dataset(rows: list[dict[str, Any]], features: Any, path: Path, *, as_dict: bool) -> None:
    """Save `rows` as a 2-shard Arrow dataset (a DatasetDict with one `train` split when `as_dict`)."""
    from datasets import Dataset, DatasetDict

    if path.exists():
        shutil.rmtree(path)
    ds = Dataset.from_list(rows, features=features)
    # A content-derived fingerprint instead of a random one, so state.json is the same on every build (the
    # datasets library offers no option for a deterministic fingerprint).
    blob = json.dumps(rows, ensure_ascii=False, sort_keys=True).encode("utf-8")
    ds = Dataset(ds.data, info=ds.info, fingerprint=hashlib.sha256(blob).hexdigest()[:16])
    if as_dict:
        DatasetDict({"train": ds}).save_to_disk(str(path), num_shards={"train": 2})
    else:
        ds.save_to_disk(str(path), num_shards=2)


def build(root: str | Path, *, sources: Path = SOURCES, arrow: bool = True) -> dict[str, int]:
    """Write every sample file under the data root `root`; returns the record count of each file."""
    root = Path(root)
    paths = {name: root / rel for name, rel in RELATIVE_PATHS.items()}
    counts: dict[str, int] = {}

    splits = {key: read_mcq(sources / "mcq" / f"{split}.yaml") for key, split in MCQ_SPLITS.items()}
    for key, rows in splits.items():
        counts[key] = write_jsonl(paths[key], rows)
    public = [{k: r[k] for k in MCQ_FIELDS} for r in splits["mcq_test"]]
    counts["mcq_test_public_schema"] = write_jsonl(root / MCQ_TEST_PUBLIC_SCHEMA, public)
    write_json(
        paths["mcq_train"].parent / "dataset_info.json",
        {
            "description": "kormed sample: original questions in the KorMedMCQA schema, written for kormed",
            "splits": {split: len(splits[key]) for key, split in MCQ_SPLITS.items()},
            "subsets": sorted({r["exam_type"] for r in splits["mcq_test"]}),
        },
    )

    for key in ("medical_dict", "char_dict"):
        entries = read_dictionary(sources / "dictionaries" / f"{key}.json")
        _write_dictionary(paths[key], entries)
        counts[key] = len(entries)

    if arrow:
        from datasets import Features, List, Value

        namu = read_corpus(sources / "namu_wiki", NAMU_COLUMNS)
        namu_features = Features(
            {
                "namespace": Value("int64"),
                "title": Value("string"),
                "text": Value("string"),
                "contributors": List(Value("string")),
                "id": Value("string"),
            }
        )
        _save_dataset(namu, namu_features, paths["namu_wiki"], as_dict=True)
        counts["namu_wiki"] = len(namu)

        wiki = read_corpus(sources / "wikipedia_korean", WIKIPEDIA_COLUMNS)
        wiki_features = Features(
            {"id": Value("string"), "url": Value("string"), "title": Value("string"), "text": Value("string")}
        )
        _save_dataset(wiki, wiki_features, paths["wikipedia_korean"], as_dict=False)
        counts["wikipedia_korean"] = len(wiki)

        c4 = read_corpus(sources / "c4_korean", C4_COLUMNS)
        c4_features = Features({"text": Value("string"), "timestamp": Value("string"), "url": Value("string")})
        _save_dataset(c4, c4_features, paths["c4_korean"], as_dict=False)
        counts["c4_korean"] = len(c4)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="data root to write (default: the bundled one)")
    parser.add_argument("--no-arrow", action="store_true", help="only the JSON/JSONL files, not the Arrow datasets")
    args = parser.parse_args()
    out = args.out or sample_data_root()
    try:
        counts = build(out, arrow=not args.no_arrow)
    except KormedError as exc:
        raise SystemExit(f"error: {exc}") from None
    for name, n in counts.items():
        print(f"{name:24s} {n:5d}")
    print(f"written under {out}")


if __name__ == "__main__":
    main()
