"""`kormed tokenizer extend` on the real Gemma 3 tokenizer: ids kept, round trips, terms as single tokens, report."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest

from kormed.config import load_config
from kormed.errors import KormedError
from kormed.io import read_texts
from kormed.tokenizer.extend import (
    CHARS_PER_NEW_TOKEN,
    MAX_AUTO_TOKENS,
    MIN_AUTO_TOKENS,
    auto_extension_size,
    dictionary_words,
    extend_tokenizer,
    korean_units,
    split_heldout,
)
from kormed.tokenizer.report import format_report

TERMS = ["당뇨병", "고혈압", "인슐린", "항문열창", "심근경색증", "갑상선기능저하증"]
DICT = [
    {"term": "당뇨병", "definition": "혈당 조절 장애로 인한 대사 질환"},
    {"term": "고혈압", "definition": "Hypertension"},
    {"term": "인슐린", "definition": "insulin"},
    {"term": "항문열창(anal fissure)", "definition": "anal fissure"},
    {"term": "급성 심근경색증", "definition": "acute myocardial infarction"},
    {"term": "갑상선기능저하증", "definition": "hypothyroidism"},
    {"term": "↑", "definition": "increased"},
    {"term": "뜁박동", "definition": "made-up term whose syllable 뜁 is outside the base vocabulary (3 byte tokens)"},
]
SENTENCES = [
    "{t}은 흔한 질환이다. 환자는 정기적으로 검사를 받아야 한다.",
    "의사는 {t} 환자에게 생활 습관 개선을 권고하였다.",
    "최근 연구에 따르면 {t}의 유병률이 증가하고 있다.",
    "{t} 진단을 받은 환자는 약물 치료를 시작하였다.",
]
# Varied text: Korean, English, symbols, emoji, whitespace runs, tabs and newlines, mixed scripts.
ROUND_TRIP = [
    "당뇨병은 혈당 조절 장애로 인한 대사 질환이다. 인슐린 분비나 작용의 이상으로 발생한다.",
    "The patient was diagnosed with type 2 diabetes (HbA1c 8.2%) and started metformin 500 mg.",
    "의학 기호 ↑는 increased, ±는 plus-minus, ≥ 140/90 mmHg → 고혈압 ℃ µg/㎖",
    "이모지 😀🩺💊 and 👩‍⚕️ test",
    "  leading spaces,   runs of spaces,\ttabs\t\tand\n\nnewlines \n trailing  ",
    "혼합 mixed 텍스트 text 123,456 ㄱㄴㄷ ㅏㅑ 똠방각하 뷁",
    "",
    " ",
    "<start_of_turn>user\n당뇨병이란?<end_of_turn>\n<start_of_turn>model\n대사 질환입니다.<end_of_turn>",
    "\r\n줄바꿈\r\n zero\u200bwidth 한\u200d글 \ue000 𝕳𝖊𝖑𝖑𝖔 🇰🇷 ㅋㅋㅋ",
    unicodedata.normalize("NFD", "당뇨병 환자 (NFD jamo)") + " 뜁박동 뜁",
]


def _unique_word(i: int) -> str:
    """A Korean nonsense word unique to document i (two rare-ish syllables)."""
    syll = "갈낟닫랄맏받삳앋잗찯칻탇팓핟"
    return "꿻" + syll[i % len(syll)] + syll[(i // len(syll)) % len(syll)] + "뷁"


def _write_inputs(root: Path, n_docs: int = 60) -> tuple[Path, Path]:
    corpus = root / "corpus.jsonl"
    lines = []
    for i in range(n_docs):
        parts = [SENTENCES[(i + k) % len(SENTENCES)].format(t=TERMS[(i + k) % len(TERMS)]) for k in range(4)]
        parts.append(" ".join([_unique_word(i)] * 5))  # a word only this document has, 5 times
        lines.append(json.dumps({"text": " ".join(parts)}, ensure_ascii=False))
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    dictionary = root / "dict.json"
    dictionary.write_text(json.dumps(DICT, ensure_ascii=False), encoding="utf-8")
    return corpus, dictionary


def _run(model_dir: Path, root: Path, out: str, **overrides) -> tuple[Path, dict]:
    corpus, dictionary = _write_inputs(root)
    values = {"model": str(model_dir), "corpus": str(corpus), "dict": str(dictionary), "out": str(root / out)}
    values.update({"max_new_tokens": 400, "max_dict_tokens": 4000, "min_frequency": 2, "heldout_fraction": 0.2})
    values.update(overrides)
    cfg = load_config("tokenizer", None, values)
    report = extend_tokenizer(cfg, log=lambda m: None)
    return root / out, report


@pytest.fixture(scope="module")
def extended(embedded_model_dir, tmp_path_factory):
    return _run(embedded_model_dir, tmp_path_factory.mktemp("tokext"), "tok")


@pytest.fixture(scope="module")
def extended_tok(extended):
    from kormed.models import load_tokenizer

    return load_tokenizer(str(extended[0]))


def test_existing_ids_and_special_tokens_unchanged(real_tokenizer, extended, extended_tok):
    out, report = extended
    base_vocab = real_tokenizer.get_vocab()
    new_vocab = extended_tok.get_vocab()
    assert {t: new_vocab[t] for t in base_vocab} == base_vocab  # the full mapping of every existing token
    added = sorted(i for t, i in new_vocab.items() if t not in base_vocab)
    assert report["new_tokens"] == len(added) > 50
    assert added == list(range(len(base_vocab), len(base_vocab) + len(added)))  # contiguous after the base
    assert len(extended_tok) == len(real_tokenizer) + len(added)
    for token, tid in (("<pad>", 0), ("<eos>", 1), ("<bos>", 2), ("<start_of_turn>", 105), ("<end_of_turn>", 106)):
        assert extended_tok.convert_tokens_to_ids(token) == tid
    assert (extended_tok.bos_token_id, extended_tok.eos_token_id, extended_tok.pad_token_id) == (2, 1, 0)
    ids = extended_tok("<start_of_turn>user\n안녕<end_of_turn>")["input_ids"]
    assert ids[:2] == [2, 105] and 106 in ids  # BOS first, chat tokens still atomic
    assert (out / "tokenizer.json").is_file() and (out / "tokenizer_config.json").is_file()
    assert not (out / "tokenizer.model").exists()


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip_base_and_extended(real_tokenizer, extended_tok, text):
    for tok in (real_tokenizer, extended_tok):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text


def test_english_and_symbols_encode_exactly_as_before(real_tokenizer, extended_tok):
    for text in ROUND_TRIP[1:5]:
        if any("\uac00" <= c <= "\ud7a3" for c in text):
            continue
        assert extended_tok(text)["input_ids"] == real_tokenizer(text)["input_ids"]


def test_medical_terms_become_single_tokens(real_tokenizer, extended, extended_tok):
    _, report = extended
    words = dictionary_words(e["term"] for e in DICT)
    assert words == ["당뇨병", "고혈압", "인슐린", "항문열창", "급성", "심근경색증", "갑상선기능저하증", "뜁박동"]
    assert "뜁" not in real_tokenizer.get_vocab() and "뜁" in extended_tok.get_vocab()
    assert report["new_hangul_characters"] >= 1
    for word in words:
        if len(real_tokenizer(word, add_special_tokens=False)["input_ids"]) == 1:
            continue  # already one token in the base
        for form in (word, " " + word):  # bare and word-start (▁) form
            ids = extended_tok(form, add_special_tokens=False)["input_ids"]
            assert len(ids) == 1, (form, extended_tok.convert_ids_to_tokens(ids))
    assert report["dictionary"]["words_single_token"] == report["dictionary"]["words_targeted"] >= 5
    # in running text the term is one token too, and the text is shorter than with the base tokenizer
    text = "급성 심근경색증 환자는 갑상선기능저하증 검사를 받았다."
    ids = extended_tok(text, add_special_tokens=False)["input_ids"]
    assert extended_tok.convert_tokens_to_ids("▁심근경색증") in ids
    assert len(ids) < len(real_tokenizer(text, add_special_tokens=False)["input_ids"])


def test_report_and_heldout_never_used_for_selection(extended, extended_tok):
    out, report = extended
    saved = json.loads((out / "tokenizer_report.json").read_text(encoding="utf-8"))
    assert saved == report
    held = report["heldout"]
    assert held["tokens_after"] < held["tokens_before"]
    assert held["reduction_percent"] == pytest.approx(
        100 * (held["tokens_before"] - held["tokens_after"]) / held["tokens_before"], abs=0.01
    )
    assert 0 < held["new_token_share_of_tokens"] < 1
    assert report["medical"]["tokens_after"] <= report["medical"]["tokens_before"]
    assert report["round_trip_failures"] == []
    # each document has a word of its own, 5 times: selected documents' words may become tokens, held-out ones never
    texts = read_texts(Path(report["corpus"]))
    select, heldout = split_heldout(texts, 0.2, 0)
    assert len(heldout) == 12
    index = {t: i for i, t in enumerate(texts)}
    vocab = extended_tok.get_vocab()
    held_words = [_unique_word(index[t]) for t in heldout]
    assert not any(w in vocab or "▁" + w in vocab for w in held_words)
    sel_words = [_unique_word(index[t]) for t in select]
    assert any("▁" + w in vocab for w in sel_words)


def test_selection_and_tokenizer_json_are_deterministic(embedded_model_dir, extended, tmp_path):
    """The same inputs give the same selection and byte-identical tokenizer.json (the pipeline's own steps)."""
    from collections import Counter

    from tokenizers import Tokenizer

    from kormed.tokenizer.extend import build_extended_json, save_tokenizer_dir, segment_units, select_bpe

    out, report = extended
    text = (embedded_model_dir / "tokenizer.json").read_text(encoding="utf-8")
    base = Tokenizer.from_str(text)
    texts = read_texts(Path(report["corpus"]))
    select, _ = split_heldout(texts, 0.2, 0)
    words = dictionary_words(e["term"] for e in DICT)
    sels = [
        select_bpe(
            base.get_vocab(), lambda u: segment_units(base, u), Counter(korean_units(select)), words,
            max_new_tokens=400, max_dict_tokens=4000, min_frequency=2,
        )
        for _ in range(2)
    ]
    assert sels[0] == sels[1]
    save_tokenizer_dir(embedded_model_dir, build_extended_json(json.loads(text), sels[0]), tmp_path)
    assert (tmp_path / "tokenizer.json").read_bytes() == (out / "tokenizer.json").read_bytes()


def test_added_tokens_method_via_the_cli(embedded_model_dir, real_tokenizer, tmp_path, capsys):
    """The CLI with a YAML section and flags (flags win), printing the report; method added_tokens."""
    from kormed.cli import main
    from kormed.models import load_tokenizer

    corpus, dictionary = _write_inputs(tmp_path)
    cfg = tmp_path / "run.yaml"
    cfg.write_text("tokenizer:\n  method: added_tokens\n  max_new_tokens: 5\n  heldout_fraction: 0.2\n")
    out = tmp_path / "tok"
    args = ["--config", str(cfg), "--model", str(embedded_model_dir), "--corpus", str(corpus)]
    args += ["--dict", str(dictionary), "--out", str(out), "--max-new-tokens", "400", "--min-frequency", "2"]
    with pytest.raises(SystemExit) as exc:  # click's standalone mode exits, with 0 on success
        main(["tokenizer", "extend", *args])
    assert exc.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "method added_tokens" in printed and "held-out Korean text" in printed and "fewer" in printed
    report = json.loads((out / "tokenizer_report.json").read_text(encoding="utf-8"))
    assert report["settings"]["max_new_tokens"] == 400 and report["settings"]["heldout_fraction"] == 0.2
    tok = load_tokenizer(str(out))
    assert report["method"] == "added_tokens" and report["new_merges"] == 0 and report["new_tokens"] > 10
    base_vocab = real_tokenizer.get_vocab()
    vocab = tok.get_vocab()
    assert {t: vocab[t] for t in base_vocab} == base_vocab
    for text in ROUND_TRIP:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    for form in ("당뇨병", " 당뇨병", " 심근경색증"):
        assert len(tok(form, add_special_tokens=False)["input_ids"]) == 1


def test_units_and_split_helpers():
    counts = korean_units(["당뇨병은 당뇨병 환자 English 123 당뇨병", "\n고혈압\t고혈압"])
    assert counts == {"당뇨병은": 1, "▁당뇨병": 2, "▁환자": 1, "고혈압": 2}
    texts = [f"doc {i}" for i in range(10)]
    a1, b1 = split_heldout(texts, 0.3, 7)
    a2, b2 = split_heldout(texts, 0.3, 7)
    assert (a1, b1) == (a2, b2) and len(b1) == 3 and sorted(a1 + b1) == sorted(texts)
    assert split_heldout(texts, 0.3, 8)[1] != b1


def test_auto_size_follows_the_budget():
    """No entries below the smallest budget published work extends at; one per 30,000 characters above; capped."""
    assert auto_extension_size(0) == 0
    assert auto_extension_size(40_000) == 0  # the largest budget measured here, where 100 entries still cost
    assert auto_extension_size(MIN_AUTO_TOKENS * CHARS_PER_NEW_TOKEN - 1) == 0
    assert auto_extension_size(MIN_AUTO_TOKENS * CHARS_PER_NEW_TOKEN) == MIN_AUTO_TOKENS
    assert auto_extension_size(3_000_000) == 100
    assert auto_extension_size(10**12) == MAX_AUTO_TOKENS


def test_null_size_on_a_small_budget_adds_nothing_and_cpt_keeps_the_base(embedded_model_dir, real_tokenizer,
                                                                          tmp_path):
    """The default (max_new_tokens null) on a corpus far below the threshold: no entries, the tokenizer encodes
    exactly as the base, the report says why, and CPT then runs on the base tokenizer."""
    from kormed.models import load_tokenizer
    from kormed.train.config import CPTConfig
    from kormed.train.cpt import apply_tokenizer_options

    out, report = _run(embedded_model_dir, tmp_path, "tok", max_new_tokens=None, max_dict_tokens=None)
    assert report["new_tokens"] == 0 and report["new_merges"] == 0
    sizing = report["sizing"]
    assert sizing["max_new_tokens"] == 0 and sizing["budget_characters"] == sizing["corpus_characters"] > 0
    assert sizing["rule"].startswith("auto")
    assert f"size: 0 entries for a CPT budget of {sizing['corpus_characters']:,} characters" in format_report(report)
    tok = load_tokenizer(str(out))
    for text in ROUND_TRIP + SENTENCES:
        assert tok(text)["input_ids"] == real_tokenizer(text)["input_ids"]
    logs: list[str] = []
    cfg = apply_tokenizer_options(CPTConfig(tokenizer_path=str(out)), None, log=logs.append)
    assert cfg.tokenizer_path is None and cfg.lora.train_embeddings is False
    assert "adds no tokens" in logs[0]


def test_null_size_follows_budget_tokens(embedded_model_dir, tmp_path):
    """`budget_tokens` (what `kormed run` wires from cpt.train.max_steps) is converted at the corpus's characters
    per token and sizes the extension; the dictionary gets a quarter of it."""
    budget_tokens = 4_000_000
    out, report = _run(embedded_model_dir, tmp_path, "tok", max_new_tokens=None, max_dict_tokens=None,
                       budget_tokens=budget_tokens)
    sizing = report["sizing"]
    expected = auto_extension_size(round(budget_tokens * sizing["chars_per_token"]))
    assert 1.0 < sizing["chars_per_token"] < 4.0
    assert sizing["max_new_tokens"] == expected >= MIN_AUTO_TOKENS
    assert sizing["max_dict_tokens"] == expected // 4
    assert 0 < report["new_tokens"] <= expected
    assert report["dictionary"]["entries"] <= expected // 4


def test_bad_input_is_a_kormed_error(embedded_model_dir, tmp_path):
    corpus, dictionary = _write_inputs(tmp_path, n_docs=3)

    def run(**kw):
        values = {"model": str(embedded_model_dir), "corpus": str(corpus), "dict": str(dictionary)}
        values["out"] = str(tmp_path / "out")
        values.update(kw)
        return extend_tokenizer(load_config("tokenizer", None, values), log=lambda m: None)

    with pytest.raises(KormedError, match="does not exist"):
        run(corpus=str(tmp_path / "missing.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "좋은 문장"}\n{"text": "깨진 줄\n', encoding="utf-8")
    with pytest.raises(KormedError) as exc:
        run(corpus=str(bad))
    assert exc.value.line == 2 and "malformed JSON" in str(exc.value)
    notext = tmp_path / "notext.jsonl"
    notext.write_text('{"text": "좋은 문장"}\n{"body": "x"}\n', encoding="utf-8")
    with pytest.raises(KormedError) as exc:
        run(corpus=str(notext))
    assert (exc.value.line, exc.value.field) == (2, "text")
    empty_dict = tmp_path / "empty.json"
    empty_dict.write_text("[]", encoding="utf-8")
    with pytest.raises(KormedError, match="no usable entries"):
        run(dict=str(empty_dict))
    one = tmp_path / "one.jsonl"
    one.write_text('{"text": "문서 하나"}\n', encoding="utf-8")
    with pytest.raises(KormedError, match="at least 2 documents"):
        run(corpus=str(one))
    with pytest.raises(KormedError, match="is required"):
        run(out=None)
    with pytest.raises(KormedError, match="one of"):
        run(method="sentencepiece")
    with pytest.raises(KormedError):
        load_config("tokenizer", None, {"heldout_fraction": 1.5})
    assert not (tmp_path / "out").exists()


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    from kormed.cli import main

    _, dictionary = _write_inputs(tmp_path, n_docs=2)
    args = ["--corpus", str(tmp_path / "nope.jsonl"), "--dict", str(dictionary), "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exc:
        main(["tokenizer", "extend", *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "nope.jsonl" in err and "Traceback" not in err
