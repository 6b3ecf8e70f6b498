"""`kormed prepare` end to end: filters and drop counts, sampling, multipliers and the distribution table,
determinism, the validation split, missing sources, bad input, the CLI (synthetic multi-shard Arrow corpus
built here, and the bundled sample data)."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from kormed.config import load_config
from kormed.errors import KormedError
from kormed.prepare.clean import FilterSpec, clean_document, hangul_ratio
from kormed.prepare.config import PrepareConfig, load_preset
from kormed.prepare.corpus import run_prepare
from kormed.prepare.mix import allocate, format_table, shuffle_file
from kormed.prepare.render import render_medical
from kormed.prepare.sources import ArrowSource

NAMU = "data/01_raw/00_korean/namu_wiki"
WIKI = "data/01_raw/00_korean/wikipedia-korean"
C4 = "data/01_raw/00_korean/c4_korean"
MCQ = "data/01_raw/02_kor_med_test/train.jsonl"
MED = "data/02_refined/01_medical_dict.json"
CHAR = "data/02_refined/02_char_dict.json"

SEED_MCQ = {
    "subject": "doctor",
    "year": 2012,
    "period": 1,
    "q_number": 1,
    "question": "항문압 측정 검사에서 항문 압력이 증가하는 경우는?",
    "A": "직장질루(rectovaginal fistula)",
    "B": "항문열창(anal fissure)",
    "C": "대변실금(fecal incontinence)",
    "D": "대변메막힘(fecal impaction)",
    "E": "직장탈출증(rectal prolapse)",
    "answer": 2,
    "cot": "",
    "exam_type": "doctor",
}
SEED_MCQ_001 = (
    "항문압 측정 검사에서 항문 압력이 증가하는 경우는?\n선택지: 직장질루, 항문열창, 대변실금, 대변메막힘, "
    "직장탈출증\n정답: 항문열창\n\n항문열창(anal fissure)은 의학적으로 중요한 개념이다."
)
FILLER = "환자의 증상과 병력을 자세히 살펴보는 것이 진단의 첫걸음이다. "

# Namu Wiki rows by kind (12 kinds cycling over 240 rows): 20 of each bad kind, 140 good documents.
N_NAMU, N_WIKI, N_C4 = 240, 100, 100


def _namu_text(i: int) -> tuple[int, str]:
    kind = i % 12
    if kind == 0:
        return 1, f"'''틀 문서 {i}'''은 [[다른 문서]]의 틀이다. " + FILLER * 4  # namespace 1
    if kind == 1:
        return 0, "#redirect 고혈압"
    if kind == 2:
        return 0, f"'''짧은 문서 {i}'''"  # too short after cleaning
    if kind == 3:
        return 0, f"'''English {i}''' " + "This article is written in English only, with [[links]]. " * 5
    if kind == 4:
        return 0, "[목차]\n[각주]"  # nothing left after cleaning
    return 0, f"[목차]\n== 개요 ==\n'''문서 {i}'''은 [[고혈압|고혈압]]에 관한 문서이다. " + FILLER * (3 + i % 7)


def build_corpus(root: Path) -> Path:
    """A data root in the seeds' layout: 3 Arrow sources with 6/5/5 shards, MCQ JSONL and two dictionaries."""
    from datasets import Dataset, DatasetDict

    rows = []
    for i in range(N_NAMU):
        ns, text = _namu_text(i)
        rows.append({"namespace": ns, "title": f"문서 {i}", "text": text, "contributors": ["u"], "id": str(i)})
    DatasetDict({"train": Dataset.from_list(rows)}).save_to_disk(str(root / NAMU), num_shards={"train": 6})
    wiki = [{"id": str(i), "text": f"위키 문서 {i}.<ref>출처</ref> " + FILLER * (3 + i % 5)} for i in range(N_WIKI)]
    Dataset.from_list(wiki).save_to_disk(str(root / WIKI), num_shards=5)
    c4 = [{"text": f"웹 문서 {i}: " + FILLER * (3 + i % 4), "url": f"https://example.com/{i}"} for i in range(N_C4)]
    Dataset.from_list(c4).save_to_disk(str(root / C4), num_shards=5)
    mcqs = [SEED_MCQ] + [
        {**SEED_MCQ, "question": f"다음 중 옳은 것은? ({k})", "answer": 1 + k % 5, "q_number": k + 2} for k in range(5)
    ]
    _write_jsonl(root / MCQ, mcqs)
    _write_json(
        root / MED,
        [
            {"term": "약", "definition": "medicine"},
            {"term": "고혈압", "definition": "Hypertension. 혈압이 정상 범위보다 높은 상태"},
            {"term": "당뇨병", "definition": "Diabetes Mellitus. 인슐린 분비나 작용의 이상"},
        ],
    )
    _write_json(
        root / CHAR,
        [
            {"term": "↑", "definition": "increased, elevated, or upward trend"},
            {"term": "±", "definition": "plus-minus sign"},
        ],
    )
    return root


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_corpus(tmp_path_factory.mktemp("corpus"))


def make_cfg(root: Path, out: Path, preset: str | None = None, **overrides: Any) -> PrepareConfig:
    values = {"data_root": str(root), "out": str(out), "num_proc": 1, "val_min_chars": 150, **overrides}
    return load_config("prepare", None, values, preset=load_preset(preset) if preset else None)


def read_texts(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]


def table_row(stats: dict[str, Any], source: str) -> dict[str, Any]:
    return next(r for r in stats["table"] if r["source"] == source)


# -- units ----------------------------------------------------------------------------------------------------
def test_hangul_ratio_and_clean_document_reasons() -> None:
    assert hangul_ratio("가나 ab") == pytest.approx(0.5)
    assert hangul_ratio("   ") == 0.0
    spec = FilterSpec("namumark", min_chars=20, min_hangul_ratio=0.1, main_namespace_only=True)
    assert clean_document("문서 " * 20, 1, spec) == (None, "non_main_namespace")
    assert clean_document("#redirect 고혈압", 0, spec) == (None, "redirect")
    assert clean_document(None, 0, spec) == (None, "empty")
    assert clean_document("[목차]", 0, spec) == (None, "empty")
    assert clean_document("'''짧다'''", 0, spec) == (None, "too_short")
    assert clean_document("English words only here, long enough.", 0, spec) == (None, "low_hangul")
    text, reason = clean_document("'''당뇨병'''은 [[혈당]] 조절 장애로 인한 [[대사 질환]]이다.", "0", spec)
    assert (text, reason) == ("당뇨병은 혈당 조절 장애로 인한 대사 질환이다.", None)  # seeds' example


def test_allocate_is_exact_and_proportional() -> None:
    assert allocate(120, [240, 100, 100]) == [66, 27, 27]
    assert allocate(10, [1, 1, 1]) == [4, 3, 3]
    assert allocate(0, [1, 2]) == [0, 0]
    assert sum(allocate(100_000, [6.2e6, 1e6, 1e6])) == 100_000


def test_shuffle_file_is_a_seeded_permutation_with_many_buckets(tmp_path: Path) -> None:
    spool = tmp_path / "spool.jsonl"
    lines = [json.dumps({"text": f"문서 {i}"}, ensure_ascii=False) + "\n" for i in range(500)]
    data = "".join(lines).encode()
    outs = []
    for k in range(2):
        spool.write_bytes(data)
        out = tmp_path / f"out{k}.jsonl"
        n = shuffle_file(spool, 500, len(data), out, seed=7, bucket_bytes=1000, tmpdir=tmp_path)
        assert n == 500
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    got = outs[0].decode().splitlines(keepends=True)
    assert sorted(got) == sorted(lines) and got != lines
    assert not list(tmp_path.glob("bucket-*"))  # temp buckets removed


def test_arrow_source_reads_shards_and_takes_rows_in_order(corpus: Path) -> None:
    src = ArrowSource("namu_wiki", corpus / NAMU)
    assert len(src.shards) == 6 and src.num_rows == N_NAMU and src.has_namespace
    got = src.take([239, 0, 125, 5])
    assert got.rows == [239, 0, 125, 5]
    assert got.texts == [_namu_text(i)[1] for i in (239, 0, 125, 5)]
    assert got.namespaces == [0, 1, 0, 0]
    streamed = [t for b in src.iter_all(17, skip={3, 200}) for t in b.texts]
    assert streamed == [_namu_text(i)[1] for i in range(N_NAMU) if i not in (3, 200)]


# -- whole runs -----------------------------------------------------------------------------------------------
def test_all_mode_filters_counts_and_multipliers(corpus: Path, tmp_path: Path) -> None:
    cfg = make_cfg(corpus, tmp_path / "mixed.jsonl", all=True, val_fraction=0.0)
    result = run_prepare(cfg, log=None, progress=False)
    stats = json.loads(Path(result["stats_path"]).read_text(encoding="utf-8"))
    assert stats == result["stats"]
    assert stats["drops"]["namu_wiki"] == {
        "non_main_namespace": 20,
        "redirect": 20,
        "empty": 20,
        "too_short": 20,
        "low_hangul": 20,
    }
    assert stats["sources"]["namu_wiki"]["base"] == 140
    assert stats["sources"]["wikipedia_korean"]["base"] == N_WIKI
    assert stats["sources"]["c4_korean"]["base"] == N_C4
    texts = read_texts(tmp_path / "mixed.jsonl")
    counts = Counter(texts)
    assert counts[SEED_MCQ_001] == 5  # medical x5
    assert counts["고혈압(Hypertension)은 혈압이 정상 범위보다 높은 상태를 의미한다."] == 5
    assert counts["약은 medicine을 의미하는 의학 용어이다."] == 5
    assert counts["의학 기호 ↑는 increased, elevated, or upward trend를 나타낸다."] == 5
    assert counts["의학 기호 ±는 plus-minus sign를 나타낸다."] == 5
    plain = [t for t in texts if "개요" in t or "위키 문서" in t or "웹 문서" in t]
    assert len(plain) == 340 and all(counts[t] == 1 for t in plain)  # plain x1
    assert not any("[[" in t or "'''" in t or "#redirect" in t or "<ref>" in t or "출처" in t for t in texts)
    assert all(t.count("개요") == 1 for t in texts if "개요" in t)
    # the distribution table: base, multiplier, final, ratio, characters
    total = len(texts)
    assert result["lines"] == total == 340 + 5 * (6 + 3 + 2)
    plain_row = table_row(stats, "Korean Plain")
    assert (plain_row["base"], plain_row["multiplier"], plain_row["final"]) == (340, 1, 340)
    assert plain_row["characters"] == sum(len(t) for t in plain)
    assert plain_row["ratio"] == pytest.approx(340 / total, abs=1e-6)
    for label, base in (("MCQ", 6), ("Medical Dict", 3), ("Char Dict", 2)):
        row = table_row(stats, label)
        assert (row["base"], row["multiplier"], row["final"]) == (base, 5, 5 * base)
    assert table_row(stats, "Total")["final"] == total


def test_sampled_run_is_deterministic_val_disjoint_and_reads_only_what_it_needs(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken: list[int] = []
    original_take = ArrowSource.take

    def counting_take(self: ArrowSource, rows: Any) -> Any:
        taken.append(len(rows))
        return original_take(self, rows)

    monkeypatch.setattr(ArrowSource, "take", counting_take)
    cfg = make_cfg(corpus, tmp_path / "a" / "mixed.jsonl", plain_docs=60, val_fraction=0.1, batch_size=8)
    first = run_prepare(cfg, log=None, progress=False)
    stats = first["stats"]
    # 60 plain docs split in proportion to rows (240:100:100), validation 10% of them
    assert [stats["sources"][n]["base"] for n in ("namu_wiki", "wikipedia_korean", "c4_korean")] == [33, 14, 13]
    assert stats["val_docs"] == 6
    train = read_texts(tmp_path / "a" / "mixed.jsonl")
    val = read_texts(tmp_path / "a" / "mixed.val.jsonl")
    assert len(val) == 6 and all(len(t) >= 150 for t in val)
    assert not set(val) & set(train)  # disjoint from training documents
    assert sum(taken) < N_NAMU + N_WIKI + N_C4  # sampled by index, not read whole

    # same inputs + seed -> byte-identical outputs, whatever num_proc and batch size
    cfg2 = make_cfg(corpus, tmp_path / "b" / "mixed.jsonl", plain_docs=60, val_fraction=0.1, num_proc=2, batch_size=5)
    run_prepare(cfg2, log=None, progress=False)
    for name in ("mixed.jsonl", "mixed.val.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    cfg3 = make_cfg(corpus, tmp_path / "a" / "mixed.jsonl", plain_docs=60, val_fraction=0.1, batch_size=8)
    before = {n: (tmp_path / "a" / n).read_bytes() for n in ("mixed.jsonl", "mixed.val.jsonl", "mixed.stats.json")}
    run_prepare(cfg3, log=None, progress=False)
    for n, data in before.items():
        assert (tmp_path / "a" / n).read_bytes() == data
    # another seed: another order and sample
    cfg4 = make_cfg(corpus, tmp_path / "c" / "mixed.jsonl", plain_docs=60, val_fraction=0.1, seed=1)
    run_prepare(cfg4, log=None, progress=False)
    assert (tmp_path / "c" / "mixed.jsonl").read_bytes() != before["mixed.jsonl"]
    assert not list((tmp_path / "a").glob(".*"))  # no temp files left


def test_all_mode_validation_rows_left_out_of_training(corpus: Path, tmp_path: Path) -> None:
    cfg = make_cfg(corpus, tmp_path / "m.jsonl", all=True, val_fraction=0.05)
    stats = run_prepare(cfg, log=None, progress=False)["stats"]
    train, val = read_texts(tmp_path / "m.jsonl"), read_texts(tmp_path / "m.val.jsonl")
    assert len(val) == round(0.05 * (N_NAMU + N_WIKI + N_C4)) and not set(val) & set(train)
    plain_base = sum(stats["sources"][n]["base"] for n in ("namu_wiki", "wikipedia_korean", "c4_korean"))
    assert plain_base + len(val) == 340  # every good document is in exactly one of the two files


def test_preset_seed_000_multiplies_everything(corpus: Path, tmp_path: Path) -> None:
    cfg = make_cfg(corpus, tmp_path / "m.jsonl", preset="seed-000", plain_docs=30, val_fraction=0.0)
    assert cfg.mcq_style == "with_english"
    stats = run_prepare(cfg, log=None, progress=False)["stats"]
    for label in ("Korean Plain", "MCQ", "Medical Dict", "Char Dict"):
        row = table_row(stats, label)
        assert row["multiplier"] == 5 and row["final"] == 5 * row["base"]
    texts = read_texts(tmp_path / "m.jsonl")
    assert len(texts) == 5 * (30 + 6 + 3 + 2)
    assert Counter(texts)[SEED_MCQ_001.replace("직장질루, 항문열창", "직장질루(rectovaginal fistula), 항문열창")] == 0
    with_english = "선택지: 직장질루(rectovaginal fistula), 항문열창(anal fissure),"
    assert any(t.startswith("항문압") and with_english in t for t in texts)


def test_format_table_matches_seed_layout() -> None:
    from kormed.prepare.mix import distribution_rows

    rows = distribution_rows(
        {
            "namu_wiki": {"base": 100_000, "multiplier": 1, "final": 100_000, "characters": 9},
            "mcq": {"base": 1890, "multiplier": 5, "final": 9450, "characters": 8},
            "medical_dict": {"base": 4071, "multiplier": 5, "final": 20355, "characters": 7},
            "char_dict": {"base": 89, "multiplier": 5, "final": 445, "characters": 6},
        },
        ("namu_wiki", "wikipedia_korean", "c4_korean"),
    )
    text = format_table(rows)
    assert "| Korean Plain | 100,000 | 1x | 100,000 | 76.8% | 9 |" in text  # seed 001: 77%
    assert "| MCQ | 1,890 | 5x | 9,450 | 7.3% | 8 |" in text
    assert "| Medical Dict | 4,071 | 5x | 20,355 | 15.6% | 7 |" in text
    assert "| Char Dict | 89 | 5x | 445 | 0.3% | 6 |" in text
    assert "| **Total** | 106,050 |  | 130,250 | 100.0% | 30 |" in text


# -- missing sources and bad input ----------------------------------------------------------------------------
def test_missing_source_optional_vs_required(corpus: Path, tmp_path: Path) -> None:
    gone = str(tmp_path / "no-such-dir")
    with pytest.raises(KormedError) as err:
        run_prepare(make_cfg(corpus, tmp_path / "m.jsonl", c4_korean={"path": gone}), log=None, progress=False)
    assert err.value.path == gone and "c4_korean" in str(err.value) and "optional" in str(err.value)
    logged: list[str] = []
    cfg = make_cfg(corpus, tmp_path / "m.jsonl", plain_docs=20, c4_korean={"path": gone, "optional": True},
                   char_dict={"path": gone, "optional": True})  # fmt: skip
    stats = run_prepare(cfg, log=logged.append, progress=False)["stats"]
    assert set(stats["missing"]) == {"c4_korean", "char_dict"}
    assert "c4_korean" not in stats["sources"] and any("skipped (optional)" in m for m in logged)
    assert not any(r["source"] == "Char Dict" for r in stats["table"])


MCQ_LINE = json.dumps(SEED_MCQ, ensure_ascii=False)
NO_QUESTION = json.dumps({k: v for k, v in SEED_MCQ.items() if k != "question"})


@pytest.mark.parametrize(
    ("content", "line", "field", "message"),
    [
        (MCQ_LINE + "\n{not json\n", 2, None, "malformed JSON"),
        (MCQ_LINE + "\n" + json.dumps({k: v for k, v in SEED_MCQ.items() if k != "answer"}) + "\n", 2, "answer", ""),
        (MCQ_LINE + "\n" + json.dumps({**SEED_MCQ, "answer": 6}) + "\n", 2, "answer", "1-5"),
        (MCQ_LINE + "\n" + json.dumps({**SEED_MCQ, "answer": 0}) + "\n", 2, "answer", "1-5"),
        (MCQ_LINE + "\n" + json.dumps({**SEED_MCQ, "C": " "}) + "\n", 2, "C", "empty"),
        (MCQ_LINE + "\n" + NO_QUESTION + "\n", 2, "question", ""),
        (MCQ_LINE.encode() + b"\n" + MCQ_LINE.encode()[:-5] + b'\xff\xfe"}\n', 2, None, "UTF-8"),
    ],
    ids=["malformed", "missing-answer", "answer-6", "answer-0", "empty-option", "missing-question", "non-utf8"],
)
def test_bad_mcq_input_named_or_skipped(
    corpus: Path, tmp_path: Path, content: str | bytes, line: int, field: str | None, message: str
) -> None:
    bad = tmp_path / "train.jsonl"
    bad.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(KormedError) as err:
        run_prepare(make_cfg(corpus, tmp_path / "m.jsonl", plain_docs=5, mcq={"path": str(bad)}), log=None)
    assert (err.value.path, err.value.line, err.value.field) == (str(bad), line, field)
    assert message in str(err.value)
    assert not (tmp_path / "m.jsonl").exists()
    cfg = make_cfg(corpus, tmp_path / "m.jsonl", plain_docs=5, mcq={"path": str(bad)}, skip_bad=True)
    logged: list[str] = []
    stats = run_prepare(cfg, log=logged.append, progress=False)["stats"]
    assert stats["skipped"]["mcq"]["skipped"] == 1 and stats["sources"]["mcq"]["base"] == 1
    assert any("skipped 1 bad record" in m for m in logged)


@pytest.mark.parametrize(
    ("entries", "field"),
    [
        ([{"term": "약", "definition": "medicine"}, {"term": " ", "definition": "x"}], "[1].term"),
        ([{"term": "약", "definition": "medicine"}, {"term": "피"}], "[1].definition"),
        ([{"term": "약", "definition": "medicine"}, "피"], "[1]"),
    ],
    ids=["empty-term", "missing-definition", "not-an-object"],
)
def test_bad_dictionary_named_or_skipped(corpus: Path, tmp_path: Path, entries: list[Any], field: str) -> None:
    bad = tmp_path / "dict.json"
    _write_json(bad, entries)
    with pytest.raises(KormedError) as err:
        run_prepare(make_cfg(corpus, tmp_path / "m.jsonl", plain_docs=5, medical_dict={"path": str(bad)}), log=None)
    assert (err.value.path, err.value.field) == (str(bad), field)
    cfg = make_cfg(corpus, tmp_path / "m.jsonl", plain_docs=5, medical_dict={"path": str(bad)}, skip_bad=True)
    stats = run_prepare(cfg, log=None, progress=False)["stats"]
    assert stats["skipped"]["medical_dict"]["skipped"] == 1 and stats["sources"]["medical_dict"]["base"] == 1


def test_bad_paths_and_datasets(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(KormedError, match="data root"):
        run_prepare(make_cfg(tmp_path / "nowhere", tmp_path / "m.jsonl"), log=None)
    not_dataset = tmp_path / "empty_ds"
    not_dataset.mkdir()
    with pytest.raises(KormedError, match="not an Arrow dataset") as err:
        run_prepare(make_cfg(corpus, tmp_path / "m.jsonl", namu_wiki={"path": str(not_dataset)}), log=None)
    assert err.value.path == str(not_dataset)
    broken = tmp_path / "broken_ds"
    shutil.copytree(corpus / WIKI, broken)
    next(broken.glob("*.arrow")).write_bytes(b"not arrow at all")
    with pytest.raises(KormedError):
        run_prepare(make_cfg(corpus, tmp_path / "m.jsonl", wikipedia_korean={"path": str(broken)}), log=None)
    with pytest.raises(KormedError, match="no 'body' column") as err:
        run_prepare(make_cfg(corpus, tmp_path / "m.jsonl", c4_korean={"text_field": "body"}), log=None)
    with pytest.raises(KormedError, match="no 'validation' split"):
        run_prepare(make_cfg(corpus, tmp_path / "m.jsonl", namu_wiki={"split": "validation"}), log=None)
    bad_utf8 = tmp_path / "dict.json"
    bad_utf8.write_bytes(b'[{"term": "\xff", "definition": "x"}]')
    with pytest.raises(KormedError, match="UTF-8") as err:
        run_prepare(make_cfg(corpus, tmp_path / "m.jsonl", char_dict={"path": str(bad_utf8)}), log=None)
    assert (err.value.path, err.value.line) == (str(bad_utf8), 1)


def test_config_errors_and_paths(tmp_path: Path) -> None:
    with pytest.raises(KormedError, match="mcq.style"):  # the flag --mcq-style
        load_config("prepare", None, {"mcq_style": "both"})
    with pytest.raises(KormedError, match="unknown preset"):
        load_preset("seed-999")
    with pytest.raises(KormedError, match="min.hangul.ratio"):
        load_config("prepare", None, {"min_hangul_ratio": 2})
    cfg = load_config("prepare", None, {"data_root": str(tmp_path), "mcq": {"path": "/abs/train.jsonl"}})
    assert cfg.source_path("namu_wiki") == tmp_path / NAMU
    assert cfg.source_path("mcq") == Path("/abs/train.jsonl")
    assert cfg.out_path() == tmp_path / "data/01_raw/00_korean/korean/raw_text_mixed.jsonl"
    assert cfg.val_path().name == "raw_text_mixed.val.jsonl" and cfg.stats_path().name == "raw_text_mixed.stats.json"
    default = PrepareConfig()
    assert default.plain_docs == 100_000 and default.namu_wiki.multiplier == 1 and default.mcq.multiplier == 5


# -- CLI ------------------------------------------------------------------------------------------------------
def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from kormed.cli import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


def test_cli_synthetic_corpus_sampled_and_all(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.jsonl"
    code, stdout, _ = run_cli(
        ["prepare", "--data-root", str(corpus), "--out", str(out), "--plain-docs", "40", "--num-proc", "1", "--quiet"],
        capsys,
    )
    assert code == 0
    assert "| Korean Plain | 40 | 1x | 40 |" in stdout and "| MCQ | 6 | 5x | 30 |" in stdout
    assert len(read_texts(out)) == 40 + 55 and out.with_name("cli.stats.json").is_file()
    code, stdout, _ = run_cli(
        ["prepare", "--data-root", str(corpus), "--out", str(out), "--all", "--num-proc", "2", "--quiet", "--seed=3"],
        capsys,
    )
    assert code == 0 and "namu_wiki" in stdout and "redirect 20" in stdout
    stats = json.loads(out.with_name("cli.stats.json").read_text(encoding="utf-8"))
    assert stats["mode"] == "all" and stats["seed"] == 3
    plain = sum(stats["sources"][n]["base"] for n in ("namu_wiki", "wikipedia_korean", "c4_korean"))
    assert plain + stats["val_docs"] == 340
    config = tmp_path / "prepare.yaml"
    config.write_text("prepare:\n  plain_docs: 10\n  val_fraction: 0\n  num_proc: 1\n", encoding="utf-8")
    args = ["prepare", "--data-root", str(corpus), "--out", str(out), "--preset", "seed-000", "--config", str(config)]
    code, stdout, _ = run_cli([*args, "--quiet"], capsys)
    assert code == 0 and "| Korean Plain | 10 | 5x | 50 |" in stdout and "| MCQ | 6 | 5x | 30 |" in stdout


def test_cli_source_option_and_error_message(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(
        ["prepare", "--data-root", str(corpus), "--out", str(tmp_path / "x.jsonl"), "--mcq", str(tmp_path / "nope")],
        capsys,
    )
    assert code == 2 and err.startswith("kormed: error: ") and "nope" in err and "Traceback" not in err
    assert not (tmp_path / "x.jsonl").exists()


def test_cli_on_bundled_sample_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kormed.sample_data import sample_data_root

    root = sample_data_root()
    out = tmp_path / "sample.jsonl"
    code, stdout, _ = run_cli(["prepare", "--data-root", str(root), "--out", str(out), "--quiet"], capsys)
    assert code == 0, stdout
    stats = json.loads(out.with_name("sample.stats.json").read_text(encoding="utf-8"))
    assert {"namu_wiki", "wikipedia_korean", "c4_korean", "mcq", "medical_dict", "char_dict"} <= set(stats["sources"])
    assert table_row(stats, "MCQ")["multiplier"] == 5 and table_row(stats, "Korean Plain")["multiplier"] == 1
    texts = read_texts(out)
    held = json.loads(out.with_name("sample.dict_heldout.json").read_text(encoding="utf-8"))
    held_terms = {e["term"] for e in held["medical_dict"] + held["char_dict"]}
    for term, sentence in (("약", "약은 medicine을 의미하는 의학 용어이다."),
                           ("고혈압", "고혈압(Hypertension)은 혈압이 정상 범위보다 높은 상태를 의미한다."),
                           ("↑", "의학 기호 ↑는 increased, elevated, or upward trend를 나타낸다.")):
        assert (sentence in texts) == (term not in held_terms)  # a held-out entry is in no training text
    assert any(t.endswith(("은 의학적으로 중요한 개념이다.", "는 의학적으로 중요한 개념이다.")) for t in texts)
    assert stats["val_docs"] >= 1 and not set(read_texts(out.with_name("sample.val.jsonl"))) & set(texts)
    assert "| **Total** |" in stdout


def test_dictionary_entries_held_out_of_training_and_recorded(tmp_path: Path) -> None:
    """prepare.dict_holdout: a seeded share of each dictionary (rounded down) is left out of the corpus and of the
    trained-entry files the pipeline's SFT/loop/tokenizer stages read, and recorded for `kormed eval knowledge`."""
    from kormed.prepare.corpus import hold_out_entries
    from kormed.records import DictEntry, read_dictionary
    from kormed.sample_data import sample_data_root

    root = sample_data_root()
    out = tmp_path / "c.jsonl"
    stats = run_prepare(make_cfg(root, out, plain_docs=20, dict_holdout=0.25, seed=7), log=None)["stats"]
    record = json.loads(out.with_name("c.dict_heldout.json").read_text(encoding="utf-8"))
    medical, _ = read_dictionary(root / MED)
    assert record["fraction"] == 0.25 and record["seed"] == 7
    assert len(record["medical_dict"]) == int(0.25 * len(medical)) > 0
    trained, _ = read_dictionary(out.with_name("c.medical_dict.json"))
    held_terms = {e["term"] for e in record["medical_dict"]}
    assert {e.term for e in trained} | held_terms == {e.term for e in medical}
    assert not {e.term for e in trained} & held_terms
    assert stats["dict_holdout"]["medical_dict"] == {"trained": len(trained), "held_out": len(held_terms),
                                                     "trained_path": str(out.with_name("c.medical_dict.json"))}
    corpus_text = "\n".join(read_texts(out))
    rendered = {e.term: render_medical(e) for e in medical}
    assert not any(rendered[t] in corpus_text for t in held_terms)
    assert all(rendered[e.term] in corpus_text for e in trained[:20])
    char_record = {e["term"] for e in record["char_dict"]}
    assert read_dictionary(out.with_name("c.char_dict.json"))[0] and char_record
    # seeded and order-independent of anything but the entries: same seed, same split; another seed, another
    entries = [DictEntry(f"용어{i}", f"정의 {i}") for i in range(50)]
    assert hold_out_entries(entries, 0.2, 1) == hold_out_entries(entries, 0.2, 1)
    assert hold_out_entries(entries, 0.2, 1)[1] != hold_out_entries(entries, 0.2, 2)[1]
    assert hold_out_entries(entries, 0.0, 1) == (entries, [])
    again = run_prepare(make_cfg(root, tmp_path / "d.jsonl", plain_docs=20, dict_holdout=0.25, seed=7), log=None)
    assert again["stats"]["dict_holdout"]["medical_dict"]["held_out"] == len(held_terms)
    assert tmp_path.joinpath("d.dict_heldout.json").read_bytes() == out.with_name("c.dict_heldout.json").read_bytes()
