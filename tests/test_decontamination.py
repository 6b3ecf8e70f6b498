"""Decontamination in `kormed prepare`: documents sharing a long word span with a KorMedMCQA test or dev question
are dropped and counted by source (stats, table, log); the span rules (13 words, short questions whole, never on
fewer than `min_words`), normalisation, hash collisions, chunk boundaries; off keeps everything; determinism."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kormed.config import load_config
from kormed.errors import KormedError
from kormed.prepare import decontaminate
from kormed.prepare.clean import FilterSpec, clean_document
from kormed.prepare.config import PrepareConfig
from kormed.prepare.corpus import run_prepare
from kormed.prepare.decontaminate import EvalIndex, words
from kormed.prepare.mix import format_table
from kormed.records import MCQ
from tests.test_prepare_corpus import C4, CHAR, MED, NAMU, SEED_MCQ, WIKI, _write_json, _write_jsonl
from tests.test_prepare_corpus import MCQ as MCQ_PATH

TEST = "data/01_raw/02_kor_med_test/test.jsonl"
DEV = "data/01_raw/02_kor_med_test/dev.jsonl"
FILLER = "환자의 증상과 병력을 자세히 살펴보는 것이 진단의 첫걸음이다. "

# Test questions: LONG has 14 words; SHORT 8 (10 with its answer: matched whole); TINY 4 (6 with its answer).
LONG = (
    "고칼륨혈증(Hyperkalemia) 응급치료에서 심근세포막 안정화를 위해 가장 먼저 정맥으로 투여하는 약물로 "
    "옳은 것은 무엇인가?"
)
LONG_WORDS = words(LONG)
SHORT = "와파린(warfarin) 치료 효과를 감시하는 데 사용하는 검사는?"
TINY = "다음 중 옳은 것은?"
DEV_Q = "결핵 1차 치료제 중 시신경염에 의한 시력 저하와 적록 색각 이상으로 가장 잘 알려진 약물은?"


def _mcq(question: str, answer: int = 1, **extra: Any) -> dict[str, Any]:
    options = {k: f"{question[:3]} 보기 {k}" for k in "ABCDE"}
    return {**SEED_MCQ, "question": question, **options, "answer": answer, **extra}


TEST_ROWS = [
    _mcq(LONG, A="글루콘산칼슘(calcium gluconate)"),
    _mcq(SHORT, A="국제정상화비율(INR)"),
    _mcq(TINY, A="A형 간염"),
]

# The 13-word span with other punctuation, spacing and case; 12 words (then an unrelated word); SHORT whole and
# SHORT without its last word.
SPAN_13 = (
    "고칼륨혈증 - HYPERKALEMIA -   응급치료에서,심근세포막 안정화를 위해  가장 먼저 정맥으로 투여하는 약물로\n옳은 것은"
)
SPAN_12 = " ".join(LONG_WORDS[:12]) + " 그리고"
SHORT_WHOLE = "와파린 — WARFARIN: 치료 효과를 감시하는 데 사용하는 검사는"
SHORT_7 = "와파린(warfarin) 치료 효과를 감시하는 데 사용하는"
DEV_SPAN = "결핵 1차 치료제 중 시신경염에 의한 시력 저하와 적록 색각 이상으로 가장 잘"


CONTAMINATED_DOCS = ("문서 0:", "문서 100:", "문서 200:")  # the documents holding SPAN_13, DEV_SPAN, SHORT_WHOLE


def _doc(i: int, inner: str = "") -> str:
    return f"문서 {i}: " + FILLER * 2 + inner + " " + FILLER * 2


def build_root(root: Path, *, dev: bool = True) -> Path:
    """A data root with one contaminated document per plain source (c4: test span, wikipedia: dev span, namu:
    a short test question whole), near misses that must be kept, and training MCQs that repeat test questions."""
    from datasets import Dataset

    c4 = [_doc(0, SPAN_13), _doc(1, SPAN_12), _doc(2, SHORT_7)] + [_doc(i) for i in range(3, 12)]
    wiki = [_doc(100, DEV_SPAN)] + [_doc(i) for i in range(101, 110)]
    namu = [_doc(200, SHORT_WHOLE)] + [_doc(i) for i in range(201, 210)]
    Dataset.from_list([{"text": t} for t in c4]).save_to_disk(str(root / C4), num_shards=2)
    Dataset.from_list([{"text": t} for t in wiki]).save_to_disk(str(root / WIKI))
    Dataset.from_list([{"text": t, "namespace": 0} for t in namu]).save_to_disk(str(root / NAMU))
    _write_jsonl(root / TEST, TEST_ROWS)
    if dev:
        _write_jsonl(root / DEV, [_mcq(DEV_Q)])
    train = [
        SEED_MCQ,
        TEST_ROWS[0],  # a test question copied into train: its 13-word spans match
        {**TEST_ROWS[2], "q_number": 99},  # a short test question with the same answer: an exact repeat
        {**TEST_ROWS[2], "answer": 2},  # the same short wording, another answer: another question, kept
    ]
    _write_jsonl(root / MCQ_PATH, train)
    _write_json(root / MED, [{"term": "고혈압", "definition": "Hypertension. 혈압이 정상 범위보다 높은 상태"}])
    _write_json(root / CHAR, [{"term": "±", "definition": "plus-minus sign"}])
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_root(tmp_path_factory.mktemp("decontam"))


def make_cfg(root: Path, out: Path, **overrides: Any) -> PrepareConfig:
    values = {"data_root": str(root), "out": str(out), "num_proc": 1, "all": True, "val_fraction": 0.0, **overrides}
    return load_config("prepare", None, values)


def read_texts(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]


# -- the span rules -------------------------------------------------------------------------------------------
def test_words_ignore_case_punctuation_spacing_and_width() -> None:
    assert words("고칼륨혈증(Hyperkalemia)  응급,치료") == ["고칼륨혈증", "hyperkalemia", "응급", "치료"]
    assert words("ＡＢＣ　１/３_x") == ["abc", "1", "3", "x"]  # full-width forms, underscore separates


def _index(n: int = 13, min_words: int = 8) -> EvalIndex:
    index = EvalIndex(n, min_words)
    rows = [MCQ(r["question"], tuple(r[k] for k in "ABCDE"), r["answer"]) for r in TEST_ROWS]  # type: ignore[arg-type]
    index.add_set("test.jsonl", "test.jsonl", rows)
    return index


def test_index_matches_13_words_or_a_whole_short_question_never_fewer() -> None:
    index = _index()
    assert index.match(FILLER + SPAN_13 + " " + FILLER) == 1
    assert index.match(FILLER + SPAN_12 + " " + FILLER) == 0  # 12 shared words are not enough
    assert index.match(FILLER + SHORT_WHOLE) == 1  # 8 words < 13: the whole question
    assert index.match(FILLER + SHORT_7) == 0
    assert index.match(TINY + " A형 간염") == 0  # 6 words with the answer, under min_words: never matched by span
    assert index.sets[0].too_short == 1
    assert index.match("") == 0 and index.match("?!") == 0
    # the answer continues the question: a span across both matches
    assert index.match(" ".join(LONG_WORDS[4:]) + " 글루콘산칼슘 calcium gluconate") == 1
    # min_words == n: the short question is no longer matched whole
    assert _index(13, 13).match(SHORT_WHOLE) == 0
    assert _index(8, 8).match(" ".join(LONG_WORDS[3:11])) == 1  # an 8-gram with n = 8


def test_a_hash_collision_never_drops_a_document(monkeypatch: pytest.MonkeyPatch) -> None:
    # with multiplier 0 every window's hash is its last word's id: all windows ending like a span collide
    monkeypatch.setattr(decontaminate, "_BASE", np.uint64(0))
    index = _index()
    shuffled = " ".join(LONG_WORDS[12::-1][:12] + [LONG_WORDS[12]])  # same words, same last word, other order
    assert index.match(shuffled) == 0
    assert index.match(SPAN_13) == 1


def test_spans_across_chunk_boundaries_are_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decontaminate, "_CHUNK_CHARS", 7)
    index = _index()
    for pad in range(8):
        assert index.match("가" * pad + " " + SPAN_13 + " 끝") == 1, pad
        assert index.match("가" * pad + " " + SPAN_12 + " 끝") == 0, pad


def test_a_repeated_training_question_matches_only_with_its_answer() -> None:
    index = _index()
    tiny = MCQ(TINY, ("A형 간염", "b", "c", "d", "e"), 1)
    assert index.match_mcq(tiny) == 1
    assert index.match_mcq(MCQ("다음 중, 옳은 것은", ("a형 간염", "b", "c", "d", "e"), 1)) == 1  # normalised
    assert index.match_mcq(MCQ(TINY, ("A형 간염", "b", "c", "d", "e"), 2)) == 0  # another answer


# -- whole runs -----------------------------------------------------------------------------------------------
def test_contaminated_documents_dropped_and_counted_by_source(root: Path, tmp_path: Path) -> None:
    logged: list[str] = []
    result = run_prepare(make_cfg(root, tmp_path / "m.jsonl"), log=logged.append, progress=False)
    stats = json.loads(Path(result["stats_path"]).read_text(encoding="utf-8"))
    assert stats == result["stats"]
    texts = read_texts(tmp_path / "m.jsonl")
    joined = "\n".join(texts)
    assert "문서 1:" in joined and SPAN_12 in joined and "문서 2:" in joined and SHORT_7 in joined  # near misses
    assert not any(marker in joined for marker in CONTAMINATED_DOCS)
    assert not any(t.startswith(LONG) for t in texts)
    tiny = [t for t in texts if t.startswith(TINY)]
    assert len(tiny) == 5 and "정답: A형 간염" not in tiny[0]  # the repeat dropped, the other answer kept (x5)

    # counts by source: drops, sources, the decontamination section and the table
    expected = {"c4_korean": 1, "wikipedia_korean": 1, "namu_wiki": 1, "mcq": 2}
    for name, count in expected.items():
        assert stats["drops"][name]["contaminated"] == count
        assert stats["sources"][name]["contaminated"] == count
    cleaned, _ = clean_document(_doc(0, SPAN_13), None, FilterSpec("wiki"))  # counted as cleaned, before x1
    assert stats["sources"]["c4_korean"]["contaminated_characters"] == len(cleaned or "") > 200
    assert stats["sources"]["medical_dict"]["contaminated"] == 0 and "medical_dict" not in stats["drops"]
    assert [stats["sources"][n]["base"] for n in ("c4_korean", "wikipedia_korean", "namu_wiki", "mcq")] == [11, 9, 9, 2]
    dc = stats["decontamination"]
    assert (dc["enabled"], dc["ngram"], dc["min_words"], dc["documents"]) == (True, 13, 8, 5)
    assert {n: s["documents"] for n, s in dc["by_source"].items()} == expected
    assert dc["characters"] == sum(s["characters"] for s in dc["by_source"].values())
    sets = {s["name"]: s for s in dc["eval_sets"]}
    assert (sets["test.jsonl"]["questions"], sets["test.jsonl"]["too_short"]) == (3, 1)
    assert sets["test.jsonl"]["matched_documents"] == 4 and sets["dev.jsonl"]["matched_documents"] == 1
    assert dc["missing_eval_sets"] == []
    rows = {r["source"]: r for r in stats["table"]}
    assert rows["c4_korean"]["contaminated"] == 1 and rows["MCQ"]["contaminated"] == 2
    assert rows["Korean Plain"]["contaminated"] == 3 and rows["Total"]["contaminated"] == 5
    assert rows["Total"]["contaminated_characters"] == dc["characters"]
    # printed: the table with its columns, the drop line and which eval sets matched
    table = format_table(stats["table"])
    assert table in logged and "| Contaminated | Contaminated chars |" in table
    assert "|   - c4_korean | 11 | 1x | 11 |" in table
    assert any(m.startswith("dropped: ") and "c4_korean: contaminated 1" in m for m in logged)
    summary = next(m for m in logged if m.startswith("decontamination: dropped"))
    assert "dropped 5 document(s)" in summary and "test.jsonl 4" in summary and "dev.jsonl 1" in summary
    assert any("questions from test.jsonl 3, dev.jsonl 1" in m for m in logged)


def test_validation_documents_are_checked_and_counted_once(root: Path, tmp_path: Path) -> None:
    cfg = make_cfg(root, tmp_path / "m.jsonl", val_fraction=0.5, val_min_chars=10)
    stats = run_prepare(cfg, log=None, progress=False)["stats"]
    val = "\n".join(read_texts(tmp_path / "m.val.jsonl"))
    assert stats["val_docs"] > 10 and not any(marker in val for marker in CONTAMINATED_DOCS)
    assert stats["decontamination"]["documents"] == 5  # each contaminated row counted once, in either step
    plain = sum(stats["sources"][n]["base"] for n in ("c4_korean", "wikipedia_korean", "namu_wiki"))
    assert plain + stats["val_docs"] == 29


def test_off_keeps_everything(root: Path, tmp_path: Path) -> None:
    logged: list[str] = []
    stats = run_prepare(make_cfg(root, tmp_path / "m.jsonl", decontaminate=False), log=logged.append, progress=False)[
        "stats"
    ]
    joined = "\n".join(read_texts(tmp_path / "m.jsonl"))
    assert all(marker in joined for marker in CONTAMINATED_DOCS)
    assert stats["decontamination"] == {"enabled": False}
    assert stats["sources"]["mcq"]["base"] == 4 and "contaminated" not in stats["sources"]["c4_korean"]
    assert all("contaminated" not in r for r in stats["table"])
    assert not any("ontaminat" in m for m in logged)


def test_without_a_dev_set(tmp_path: Path) -> None:
    root = build_root(tmp_path / "root", dev=False)
    logged: list[str] = []
    stats = run_prepare(make_cfg(root, tmp_path / "m.jsonl"), log=logged.append, progress=False)["stats"]
    assert "문서 100:" in "\n".join(read_texts(tmp_path / "m.jsonl"))
    dc = stats["decontamination"]
    assert [s["name"] for s in dc["eval_sets"]] == ["test.jsonl"] and dc["documents"] == 4
    assert dc["missing_eval_sets"] == [str(root / DEV)]
    assert any("not found, skipped: " + str(root / DEV) in m for m in logged)
    # no evaluation set at all: reported, nothing dropped
    cfg = make_cfg(root, tmp_path / "n.jsonl", decontam_eval_sets=["nope.jsonl"])
    stats = run_prepare(cfg, log=logged.append, progress=False)["stats"]
    assert stats["decontamination"]["documents"] == 0
    assert any("no evaluation set found" in m for m in logged)


def test_same_seed_same_bytes_whatever_the_workers(root: Path, tmp_path: Path) -> None:
    outs, stats = [], []
    for k, (batch, procs) in enumerate(((3, 1), (8, 2))):  # 2 worker processes: the matching runs in them
        cfg = make_cfg(root, tmp_path / str(k) / "m.jsonl", val_fraction=0.2, val_min_chars=10, batch_size=batch,
                       num_proc=procs)  # fmt: skip
        stats.append(run_prepare(cfg, log=None, progress=False)["stats"]["decontamination"])
        outs.append([(tmp_path / str(k) / n).read_bytes() for n in ("m.jsonl", "m.val.jsonl")])
    assert outs[0] == outs[1] and stats[0] == stats[1]
    assert "문서 0:" not in outs[0][0].decode() + outs[0][1].decode()
    assert stats[1]["documents"] == 5 and stats[1]["by_source"]["c4_korean"]["documents"] == 1


def test_options_checked(root: Path, tmp_path: Path) -> None:
    with pytest.raises(KormedError, match="decontam.min.words"):
        load_config("prepare", None, {"decontam_ngram": 5, "decontam_min_words": 6})
    with pytest.raises(KormedError, match="decontam.ngram"):
        load_config("prepare", None, {"decontam_ngram": 0})
    with pytest.raises(KormedError, match="training MCQ file") as err:
        run_prepare(make_cfg(root, tmp_path / "m.jsonl", decontam_eval_sets=[TEST, MCQ_PATH]), log=None)
    assert err.value.field == "prepare.decontam_eval_sets"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(TEST_ROWS[0], ensure_ascii=False) + "\n{oops\n", encoding="utf-8")
    with pytest.raises(KormedError) as err:
        run_prepare(make_cfg(root, tmp_path / "m.jsonl", decontam_eval_sets=[str(bad)]), log=None)
    assert (err.value.path, err.value.line) == (str(bad), 2)
    assert not (tmp_path / "m.jsonl").exists()
