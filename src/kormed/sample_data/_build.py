"""Build the bundled sample data (Arrow datasets, JSON, JSONL) from the authored sources in `_source/`.

The build is deterministic: the same sources give the same JSON/JSONL bytes and the same Arrow rows (the
datasets' fingerprints are derived from their content, not random). Run it with `scripts/build_sample_data.py`.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path
from typing import Any

from kormed.io import write_json, write_jsonl
from kormed.sample_data import MCQ_TEST_PUBLIC_SCHEMA, RELATIVE_PATHS

LETTERS = ("A", "B", "C", "D", "E")
MCQ_FIELDS_PUBLIC = ("subject", "year", "period", "q_number", "question", "A", "B", "C", "D", "E", "answer", "cot")


def balanced_positions(n: int, salt: str) -> list[int]:
    """Answer positions 1-5 for `n` questions: each position used n//5 or n//5+1 times, in a shuffled order."""
    positions = [(i % 5) + 1 for i in range(n)]
    random.Random(f"kormed-sample-{salt}").shuffle(positions)
    return positions


def mcq_records(questions: list[dict[str, Any]], salt: str, *, exam_type: bool = True) -> list[dict[str, Any]]:
    """Turn authored questions (`correct`, `wrong` x4) into KorMedMCQA rows with balanced answer positions.

    A `{ans}` placeholder in `cot` becomes the letter of the correct option.
    """
    out = []
    for q, pos in zip(questions, balanced_positions(len(questions), salt), strict=True):
        wrong = list(q["wrong"])
        if len(wrong) != 4:
            raise ValueError(f"question needs 4 wrong options: {q['question']}")
        options = wrong[: pos - 1] + [q["correct"]] + wrong[pos - 1 :]
        rec: dict[str, Any] = {
            "subject": q["subject"],
            "year": q["year"],
            "period": q["period"],
            "q_number": q["q_number"],
            "question": q["question"],
        }
        rec.update(dict(zip(LETTERS, options, strict=True)))
        rec["answer"] = pos
        rec["cot"] = q.get("cot", "").replace("{ans}", LETTERS[pos - 1])
        if exam_type:
            rec["exam_type"] = q["subject"]
        out.append(rec)
    return out


def _content_fingerprint(rows: list[dict[str, Any]]) -> str:
    blob = json.dumps(rows, ensure_ascii=False, sort_keys=True).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


def _dataset(rows: list[dict[str, Any]], features: Any) -> Any:
    from datasets import Dataset

    ds = Dataset.from_list(rows, features=features)
    # A content-derived fingerprint instead of a random one, so state.json is the same on every build.
    return Dataset(ds.data, info=ds.info, fingerprint=_content_fingerprint(rows))


def _save_dataset(rows: list[dict[str, Any]], features: Any, path: Path, *, as_dict: bool, num_shards: int) -> None:
    from datasets import DatasetDict

    if path.exists():
        shutil.rmtree(path)
    ds = _dataset(rows, features)
    if as_dict:
        DatasetDict({"train": ds}).save_to_disk(str(path), num_shards={"train": num_shards})
    else:
        ds.save_to_disk(str(path), num_shards=num_shards)


def build(root: str | Path, *, arrow: bool = True) -> dict[str, int]:
    """Write every sample file under the data root `root`; returns the record count of each file."""
    from kormed.sample_data._source import dictionaries, mcq

    root = Path(root)
    paths = {name: root / rel for name, rel in RELATIVE_PATHS.items()}
    counts: dict[str, int] = {}

    # KorMedMCQA-style questions.
    train = mcq_records(mcq.TRAIN, "train")
    test = mcq_records(mcq.TEST, "test")
    fewshot = mcq_records(mcq.FEWSHOT, "fewshot")
    counts["mcq_train"] = write_jsonl(paths["mcq_train"], train)
    counts["mcq_test"] = write_jsonl(paths["mcq_test"], test)
    counts["mcq_fewshot"] = write_jsonl(paths["mcq_fewshot"], fewshot)
    public = [{k: r[k] for k in MCQ_FIELDS_PUBLIC} for r in test]
    counts["mcq_test_public_schema"] = write_jsonl(root / MCQ_TEST_PUBLIC_SCHEMA, public)
    write_json(
        paths["mcq_train"].parent / "dataset_info.json",
        {
            "description": "kormed sample: original questions in the KorMedMCQA schema, written for kormed",
            "splits": {"train": len(train), "test": len(test), "fewshot": len(fewshot)},
            "subsets": sorted({r["exam_type"] for r in test}),
        },
    )

    # Dictionaries.
    medical = [{"term": t, "definition": d} for t, d in dictionaries.MEDICAL]
    symbols = [{"term": t, "definition": d} for t, d in dictionaries.SYMBOLS]
    _write_dict(paths["medical_dict"], medical)
    _write_dict(paths["char_dict"], symbols)
    counts["medical_dict"] = len(medical)
    counts["char_dict"] = len(symbols)

    if arrow:
        from datasets import Features, List, Value

        from kormed.sample_data._source import c4, namu, wikipedia

        namu_rows = namu.records()
        namu_features = Features(
            {
                "namespace": Value("int64"),
                "title": Value("string"),
                "text": Value("string"),
                "contributors": List(Value("string")),
                "id": Value("string"),
            }
        )
        _save_dataset(namu_rows, namu_features, paths["namu_wiki"], as_dict=True, num_shards=2)
        counts["namu_wiki"] = len(namu_rows)

        wiki_rows = wikipedia.records()
        wiki_features = Features(
            {"id": Value("string"), "url": Value("string"), "title": Value("string"), "text": Value("string")}
        )
        _save_dataset(wiki_rows, wiki_features, paths["wikipedia_korean"], as_dict=False, num_shards=2)
        counts["wikipedia_korean"] = len(wiki_rows)

        c4_rows = c4.records()
        c4_features = Features({"text": Value("string"), "timestamp": Value("string"), "url": Value("string")})
        _save_dataset(c4_rows, c4_features, paths["c4_korean"], as_dict=False, num_shards=2)
        counts["c4_korean"] = len(c4_rows)
    return counts


def _write_dict(path: Path, entries: list[dict[str, str]]) -> None:
    """Dictionaries keep their authored order (term first), unlike write_json which sorts keys."""
    from kormed.io import atomic_write

    terms = [e["term"] for e in entries]
    dupes = sorted({t for t in terms if terms.count(t) > 1})
    if dupes:
        raise ValueError(f"duplicate terms in {path.name}: {dupes}")
    with atomic_write(path) as fh:
        json.dump(entries, fh, ensure_ascii=False, indent=2)
        fh.write("\n")
