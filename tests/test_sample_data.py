"""The bundled sample data: every file parses with the project's readers, has the promised shape, and is
reproducible from its authored sources."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from kormed.records import read_dictionary, read_mcq_jsonl
from kormed.sample_data import MCQ_TEST_PUBLIC_SCHEMA, RELATIVE_PATHS, sample_data_root, sample_paths

SUBSETS = {"doctor", "nurse", "pharm", "dentist"}
HANGUL_FINALS_VOWEL = 0  # (code - 0xAC00) % 28 == 0 means the syllable has no final consonant


def _has_final_consonant(word: str) -> bool | None:
    ch = word[-1]
    if "가" <= ch <= "힣":
        return (ord(ch) - 0xAC00) % 28 != HANGUL_FINALS_VOWEL
    return None


def test_paths_point_into_the_data_root() -> None:
    root = sample_data_root()
    paths = sample_paths()
    assert set(paths) == {
        "namu_wiki", "wikipedia_korean", "c4_korean", "mcq_train", "mcq_test", "mcq_fewshot", "medical_dict",
        "char_dict",
    }
    for name, path in paths.items():
        if name in {"namu_wiki", "wikipedia_korean", "c4_korean"}:
            continue  # datasets: checked by their own tests (added with the Arrow build)
        assert path.exists(), name
        assert path == root / RELATIVE_PATHS[name]
        assert path.relative_to(root).parts[0] == "data"


@pytest.mark.parametrize("name", ["mcq_train", "mcq_test", "mcq_fewshot"])
def test_mcq_files_parse_and_answers_are_balanced(name: str) -> None:
    questions, report = read_mcq_jsonl(sample_paths()[name])
    assert report.total == 0
    assert len(questions) >= 20
    counts = Counter(q.answer for q in questions)
    assert set(counts) == {1, 2, 3, 4, 5}
    assert max(counts.values()) - min(counts.values()) <= 1, counts
    for q in questions:
        assert q.exam_type in SUBSETS and q.subject == q.exam_type
        assert len(set(q.options)) == 5, q.question  # no duplicated option
        assert "{ans}" not in q.cot
    assert len({q.question for q in questions}) == len(questions)


def test_mcq_splits_do_not_overlap_and_cover_every_subset() -> None:
    paths = sample_paths()
    train, _ = read_mcq_jsonl(paths["mcq_train"])
    test, _ = read_mcq_jsonl(paths["mcq_test"])
    fewshot, _ = read_mcq_jsonl(paths["mcq_fewshot"])
    texts = [{q.question for q in split} for split in (train, test, fewshot)]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    assert {q.subset for q in test} == SUBSETS
    assert {q.year for q in test} == {2022, 2023, 2024}
    assert all(q.year is not None and q.year < 2022 for q in train + fewshot)
    assert sum(1 for q in train if q.cot) >= 10  # train carries some reasoning


def test_fewshot_has_five_per_subset_each_with_reasoning_naming_the_answer() -> None:
    fewshot, _ = read_mcq_jsonl(sample_paths()["mcq_fewshot"])
    assert Counter(q.subset for q in fewshot) == {s: 5 for s in SUBSETS}
    for q in fewshot:
        assert len(q.cot) > 80
        assert q.cot.rstrip().endswith(f"정답은 {q.answer_letter}이다."), q.cot


def test_options_look_like_korean_with_english_in_parentheses() -> None:
    questions, _ = read_mcq_jsonl(sample_paths()["mcq_train"])
    paired = [o for q in questions for o in q.options if o.endswith(")") and "(" in o]
    assert len(paired) > 100
    assert "항문열창(anal fissure)" not in paired  # the seeds' example is not copied in


def test_public_schema_copy_matches_test_without_exam_type() -> None:
    root = sample_data_root()
    public_path = root / MCQ_TEST_PUBLIC_SCHEMA
    raw = [json.loads(line) for line in public_path.read_text(encoding="utf-8").splitlines()]
    assert all("exam_type" not in r for r in raw)
    public, _ = read_mcq_jsonl(public_path)
    test, _ = read_mcq_jsonl(sample_paths()["mcq_test"])
    assert [(q.question, q.options, q.answer) for q in public] == [(q.question, q.options, q.answer) for q in test]
    assert [q.subset for q in public] == [q.subset for q in test]  # falls back to `subject`


def test_medical_dictionary_shape() -> None:
    entries, report = read_dictionary(sample_paths()["medical_dict"])
    assert report.total == 0
    assert 180 <= len(entries) <= 260
    assert len({e.term for e in entries}) == len(entries)
    english_korean = [e for e in entries if ". " in e.definition]
    english_only = [e for e in entries if ". " not in e.definition]
    assert len(english_korean) > 150
    assert all(d.isascii() for d in (e.definition for e in english_only))
    assert {"term": "고혈압", "definition": "Hypertension. 혈압이 정상 범위보다 높은 상태"} in [
        {"term": e.term, "definition": e.definition} for e in entries
    ]
    finals = Counter(_has_final_consonant(e.term) for e in entries)
    assert finals[True] > 30 and finals[False] > 30 and finals[None] >= 3  # consonant, vowel, Latin/digit ends
    for e in english_korean:
        english, korean = e.definition.split(". ", 1)
        assert english[0].isupper() or english[0].isdigit() or english.startswith("X-"), e
        assert any("가" <= ch <= "힣" for ch in korean), e


def test_char_dictionary_has_the_89_symbols_of_seed_001() -> None:
    entries, report = read_dictionary(sample_paths()["char_dict"])
    assert report.total == 0
    assert len(entries) == 89
    assert len({e.term for e in entries}) == 89
    defs = {e.term: e.definition for e in entries}
    assert defs["↑"] == "increased, elevated, or upward trend"
    assert defs["±"] == "plus-minus sign"
    for sym in ("↓", "→", "≥", "≤", "♂", "♀", "°C", "μg", "Δ", "∅"):
        assert sym in defs
    assert all(d.isascii() for d in defs.values() if not any(ch in d for ch in "²³⁻¹"))


def test_json_and_jsonl_rebuild_byte_identical(tmp_path: Path) -> None:
    from kormed.sample_data._build import build

    build(tmp_path, arrow=False)
    root = sample_data_root()
    built = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert built, "builder wrote nothing"
    for rel in built:
        assert (tmp_path / rel).read_bytes() == (root / rel).read_bytes(), f"{rel} differs from the committed file"
