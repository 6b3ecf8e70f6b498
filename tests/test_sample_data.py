"""The bundled sample data: every file parses with the project's readers, has the promised shape, and is
reproducible from its authored sources."""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml

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
        "namu_wiki", "wikipedia_korean", "c4_korean", "mcq_train", "mcq_dev", "mcq_test", "mcq_fewshot",
        "medical_dict", "char_dict",
    }
    for name, path in paths.items():
        assert path.exists(), name
        assert path == root / RELATIVE_PATHS[name]
        assert path.relative_to(root).parts[0] == "data"


MCQ_PER_EXAM = {"mcq_train": 10, "mcq_dev": 10, "mcq_test": 25, "mcq_fewshot": 5}


@pytest.mark.parametrize("name", sorted(MCQ_PER_EXAM))
def test_mcq_files_parse_and_answers_are_balanced(name: str) -> None:
    questions, report = read_mcq_jsonl(sample_paths()[name])
    assert report.total == 0
    assert Counter(q.exam_type for q in questions) == {s: MCQ_PER_EXAM[name] for s in SUBSETS}
    counts = Counter(q.answer for q in questions)
    assert set(counts) == {1, 2, 3, 4, 5}
    assert max(counts.values()) - min(counts.values()) <= 1, counts
    for q in questions:
        assert q.exam_type in SUBSETS and q.subject == q.exam_type
        assert len(set(q.options)) == 5, q.question  # no duplicated option
        assert "{ans}" not in q.cot
    assert len({q.question for q in questions}) == len(questions)


def _word_ngrams(text: str, n: int = 13) -> set[tuple[str, ...]]:
    words = text.split()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def test_mcq_splits_do_not_overlap_and_cover_every_subset() -> None:
    paths = sample_paths()
    splits = {name: read_mcq_jsonl(paths[name])[0] for name in MCQ_PER_EXAM}
    train, dev, test, fewshot = (splits[n] for n in ("mcq_train", "mcq_dev", "mcq_test", "mcq_fewshot"))
    assert {q.subset for q in test} == {q.subset for q in dev} == SUBSETS
    assert {q.year for q in test} == {q.year for q in dev} == {2022, 2023, 2024}
    assert all(q.year is not None and q.year < 2022 for q in train + fewshot)
    assert sum(1 for q in train if q.cot) >= 20  # train carries reasoning for SFT
    assert sum(1 for q in dev if q.cot) >= 10  # so does dev, as the real KorMedMCQA dev split does
    everything = [q for split in splits.values() for q in split]
    uids = [f"{q.subset}-{q.year}-{q.period}-{q.q_number}" for q in everything]
    assert len(set(uids)) == len(uids)  # KorMedMCQA-style uid (exam-year-period-number) is unique
    # No question appears in two splits, not even as a near-duplicate: no two questions share a run of 13 words
    # (the decontamination rule) in their question, options and reasoning.
    owner: dict[tuple[str, ...], tuple[str, str]] = {}
    for name, split in splits.items():
        for q in split:
            for gram in _word_ngrams(" ".join([q.question, *q.options, q.cot])):
                other = owner.setdefault(gram, (name, q.question))
                assert other[1] == q.question, f"{name} {q.question!r} shares 13 words with {other}"


def test_adding_questions_kept_the_first_forty_test_questions() -> None:
    """The test split grew from 40 to 100 questions by appending: earlier rows (and `--limit N` runs) are unchanged."""
    test, _ = read_mcq_jsonl(sample_paths()["mcq_test"])
    first = test[:40]
    assert Counter(q.answer for q in first) == {a: 8 for a in range(1, 6)}
    assert [(q.subset, q.year, q.q_number) for q in first[:2]] == [("doctor", 2022, 4), ("doctor", 2022, 23)]
    assert first[0].question == "신증후군(nephrotic syndrome)의 특징이 아닌 것은?" and first[0].answer == 2
    assert first[39].question == "치면열구전색(pit and fissure sealant)의 주된 적용 부위는?"


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


def _hangul_ratio(text: str) -> float:
    chars = [c for c in text if not c.isspace()]
    return sum("가" <= c <= "힣" for c in chars) / max(1, len(chars))


def _shards(directory: Path) -> list[Path]:
    return sorted(directory.glob("data-*-of-*.arrow"))


@pytest.fixture(scope="module")
def namu_rows() -> list[dict]:
    from datasets import DatasetDict, load_from_disk

    dsd = load_from_disk(str(sample_paths()["namu_wiki"]))
    assert isinstance(dsd, DatasetDict) and list(dsd) == ["train"]
    return dsd["train"].to_list()


def test_namu_wiki_is_a_sharded_datasetdict_with_dump_fields(namu_rows: list[dict]) -> None:
    from datasets import load_from_disk

    path = sample_paths()["namu_wiki"]
    assert len(_shards(path / "train")) >= 2
    features = load_from_disk(str(path))["train"].features
    assert list(features) == ["namespace", "title", "text", "contributors", "id"]
    assert features["namespace"].dtype == "int64"
    for row in namu_rows:
        assert isinstance(row["contributors"], list) and row["contributors"]
        assert all(isinstance(c, str) for c in row["contributors"])
    assert len({r["id"] for r in namu_rows}) == len(namu_rows)
    assert len({r["title"] for r in namu_rows}) == len(namu_rows)


def test_namu_wiki_holds_the_pages_the_cleaner_and_filters_must_handle(namu_rows: list[dict]) -> None:
    main = [r for r in namu_rows if r["namespace"] == 0]
    other = [r for r in namu_rows if r["namespace"] != 0]
    assert len(other) >= 2 and any(r["title"].startswith("틀:") for r in other)
    redirects = [r for r in main if r["text"].lower().startswith("#redirect")]
    assert len(redirects) >= 2
    content = [r for r in main if r not in redirects]
    stubs = [r for r in content if len(r["text"]) < 200]
    assert len(stubs) >= 2
    foreign = [r for r in content if _hangul_ratio(r["text"]) < 0.10]
    assert len(foreign) >= 1 and all(len(r["text"]) >= 300 for r in foreign)
    articles = [r for r in content if r not in stubs and r not in foreign]
    assert 30 <= len(articles) <= 40
    for r in articles:
        assert 500 <= len(r["text"]) <= 3000, (r["title"], len(r["text"]))
        assert _hangul_ratio(r["text"]) > 0.35, r["title"]  # raw text: markup and code lower it
    titles = {r["title"] for r in articles}
    medical = {"당뇨병", "고혈압", "인슐린", "폐렴", "간염", "빈혈", "위염", "천식", "골다공증", "뇌졸중", "항생제"}
    assert medical <= titles


NAMUMARK_CONSTRUCTS = [
    "[목차]", "== 개요 ==", "=== ", "==# ", "'''", "''", "__", "^^", ",,", "~~", "--", "[[", "#s-",
    "[[파일:", "width=190&align=right", ".webp", "[[분류:", "||", "<tablewidth=", "<bgcolor=", "<-2>", "<|2>", "<:>",
    "|커피 음료|", "{{{+1 ", "{{{#red ", "{{{#!wiki style=", "{{{#!folding [ 펼치기 · 접기 ]", "{{{#!html ",
    "{{{#!syntax python", "{{{import this}}}", "[* ", "[*A ", "[각주]", "[footnote]", "[include(틀:", "[br]", "[ruby(",
    "[math(", "<math>", "[youtube(", "[age(", "[pagecount]", "[anchor(", "|#]]", "\\#", "\\_", "\n##", "\n> ",
    "\n----", "\n * ", "\n  * ", "\n 1. ", "[v]", "\u200b", "\u00a0", " 3 > 2",
]


def test_namu_wiki_articles_use_the_whole_namumark_syntax(namu_rows: list[dict]) -> None:
    corpus = "\n".join(r["text"] for r in namu_rows if r["namespace"] == 0)
    missing = [c for c in NAMUMARK_CONSTRUCTS if c not in corpus]
    assert not missing, missing
    # nested blocks: colour blocks inside a #!wiki block inside a #!folding block
    subway = next(r["text"] for r in namu_rows if r["title"] == "서울 지하철")
    folding = subway.index("{{{#!folding")
    assert folding < subway.index("{{{#!wiki", folding) < subway.index("{{{#0052A4", folding)


def test_wikipedia_is_a_sharded_dataset_with_extractor_leftovers() -> None:
    from datasets import Dataset, load_from_disk

    path = sample_paths()["wikipedia_korean"]
    ds = load_from_disk(str(path))
    assert isinstance(ds, Dataset)
    assert len(_shards(path)) >= 2
    assert list(ds.features) == ["id", "url", "title", "text"]
    rows = ds.to_list()
    assert 12 <= len(rows) <= 20
    corpus = "\n".join(r["text"] for r in rows)
    for leftover in ("<ref>", "</ref>", "<ref name=", "<references />", "{{각주}}", "{{전거 통제}}", "\n같이 보기\n",
                     "\n외부 링크"):
        assert leftover in corpus, leftover
    assert all(r["url"].startswith("https://") for r in rows)


def test_c4_is_a_sharded_dataset_of_web_documents() -> None:
    from datasets import Dataset, load_from_disk

    path = sample_paths()["c4_korean"]
    ds = load_from_disk(str(path))
    assert isinstance(ds, Dataset)
    assert len(_shards(path)) >= 2
    assert list(ds.features) == ["text", "timestamp", "url"]
    rows = ds.to_list()
    assert 12 <= len(rows) <= 20
    assert sum(len(r["text"]) < 100 for r in rows) == 1  # one very short page the length filter drops
    assert all(r["timestamp"].endswith("Z") and "example." in r["url"] for r in rows)
    assert sum("Copyright" in r["text"] or "ⓒ" in r["text"] or "©" in r["text"] for r in rows) >= 3


def _build_script():
    """scripts/build_sample_data.py as a module (scripts/ is not a package)."""
    path = Path(__file__).resolve().parents[1] / "scripts" / "build_sample_data.py"
    spec = importlib.util.spec_from_file_location("build_sample_data", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_build_is_reproducible(tmp_path: Path) -> None:
    from datasets import load_from_disk

    counts = _build_script().build(tmp_path)
    root = sample_data_root()
    built = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(p.relative_to(root) for p in (root / "data").rglob("*") if p.is_file())
    assert built == committed
    for rel in built:
        if rel.suffix in {".json", ".jsonl"}:
            assert (tmp_path / rel).read_bytes() == (root / rel).read_bytes(), f"{rel} differs from the committed file"
    for name in ("namu_wiki", "wikipedia_korean", "c4_korean"):
        rel = RELATIVE_PATHS[name]
        fresh, kept = load_from_disk(str(tmp_path / rel)), load_from_disk(str(root / rel))
        if name == "namu_wiki":
            fresh, kept = fresh["train"], kept["train"]
        assert fresh.to_list() == kept.to_list(), name
        assert counts[name] == len(kept)


def test_sources_stay_out_of_the_installed_package() -> None:
    package = sample_data_root()
    assert not (package / "_source").exists() and not (package / "_build.py").exists()
    assert sorted(p.name for p in package.iterdir() if p.name != "__pycache__") == ["README.md", "__init__.py", "data"]


@pytest.fixture()
def sources_copy(tmp_path: Path) -> Path:
    """A scratch copy of scripts/sample_data_sources/ to break on purpose."""
    copy = tmp_path / "sources"
    shutil.copytree(_build_script().SOURCES, copy)
    return copy


def _swap_first_answer(path: Path) -> None:
    """Move the first question's correct option to another letter (the answer key then counts one letter twice)."""
    entries = yaml.safe_load(path.read_text(encoding="utf-8"))
    first = entries[0]
    old, new = "ABCDE"[first["answer"] - 1], "ABCDE"[first["answer"] % 5]
    first[old], first[new] = first[new], first[old]
    first["answer"] = first["answer"] % 5 + 1
    first.pop("cot", None)
    path.write_text(yaml.safe_dump(entries, allow_unicode=True, sort_keys=False), encoding="utf-8")


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("unbalanced", "answer key is not balanced"),
        ("cot", "cot names"),
        ("duplicate_option", "two options are the same"),
        ("missing_field", "missing fields ['year']"),
        ("duplicate_term", "terms listed in two sections: ['고혈압']"),
        ("missing_page", "does not exist"),
    ],
)
def test_build_names_the_file_and_entry_of_a_mistake(sources_copy: Path, tmp_path: Path, breakage: str,
                                                     message: str) -> None:
    from kormed.errors import KormedError

    dev = sources_copy / "mcq" / "dev.yaml"
    entries = yaml.safe_load(dev.read_text(encoding="utf-8"))
    broken = dev
    if breakage == "unbalanced":
        _swap_first_answer(dev)
    elif breakage in ("cot", "duplicate_option", "missing_field"):
        with_cot = next(i for i, e in enumerate(entries) if e.get("cot"))
        e = entries[with_cot]
        if breakage == "cot":
            right, wrong = "ABCDE"[e["answer"] - 1], "ABCDE"[e["answer"] % 5]
            e["cot"] = e["cot"].replace(f"정답은 {right}이다", f"정답은 {wrong}이다")
        elif breakage == "duplicate_option":
            e["E"] = e["A"]
        else:
            del e["year"]
        dev.write_text(yaml.safe_dump(entries, allow_unicode=True, sort_keys=False), encoding="utf-8")
        message = f"entry {with_cot + 1}: {message}"
    elif breakage == "duplicate_term":
        broken = sources_copy / "dictionaries" / "medical_dict.json"
        text = broken.read_text(encoding="utf-8")
        broken.write_text(text.replace('"약": "medicine",', '"약": "medicine",\n    "고혈압": "Hypertension.",', 1),
                          encoding="utf-8")
    else:
        broken = sources_copy / "wikipedia_korean" / "articles" / "간.txt"
        broken.unlink()
    with pytest.raises(KormedError) as err:
        _build_script().build(tmp_path / "out", sources=sources_copy, arrow=breakage == "missing_page")
    assert str(broken) in str(err.value) and message in str(err.value), str(err.value)
