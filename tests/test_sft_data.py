"""SFT data building on the bundled sample data with the real tokenizer: splits, masks, BOS, mixes."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from kormed.data.chat import IGNORE_INDEX, ChatTemplates
from kormed.data.mixture import mix_datasets
from kormed.errors import KormedError
from kormed.io import read_texts
from kormed.sample_data import sample_paths
from kormed.train.sft import encode_sources, load_sources

RAW_SENTENCES = [
    "당뇨병은 혈당 조절 장애로 인한 대사 질환이다.",
    "고혈압은 혈압이 정상 범위보다 높은 상태를 의미한다.",
    "폐렴은 폐에 생기는 염증으로 기침과 발열이 흔하다.",
    "빈혈은 혈액 속 적혈구나 헤모글로빈이 부족한 상태이다.",
    "천식은 기도가 좁아져 숨이 차는 만성 질환이다.",
]


def write_raw(path, n: int = 30) -> str:
    lines = [json.dumps({"text": RAW_SENTENCES[i % 5] * (1 + i % 3)}, ensure_ascii=False) for i in range(n)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    p = sample_paths()
    raw = write_raw(tmp_path_factory.mktemp("raw") / "raw.jsonl")
    return load_sources(mcq=str(p["mcq_train"]), dictionary=str(p["medical_dict"]), char_dict=str(p["char_dict"]),
                        raw=raw, raw_val=None, val_fraction=0.1, val_max=5, raw_max_texts=100,
                        raw_val_max_texts=3, seed=1, log=lambda m: None)


def test_sources_are_split_without_overlap(sources):
    assert len(sources.mcq_val) == 4 and len(sources.mcq_train) == 36
    assert not {q.source for q in sources.mcq_val} & {q.source for q in sources.mcq_train}
    symbols = [e for e, sym in sources.dict_val if sym]
    assert symbols and len(symbols) < len(sources.dict_val)  # each dictionary gets its own held-out part
    assert len(sources.raw_val) == 3 and len(sources.raw_train) == 27


def test_encoded_sets_mask_prompts_and_learn_end_of_turn(sources, real_tokenizer):
    tok = real_tokenizer
    data = encode_sources(tok, sources, max_length=256, templates=ChatTemplates(),
                          needed={"qa", "qa_cot", "dict", "raw"}, eod_token="<end_of_turn>", log=lambda m: None)
    assert set(data.train) == {"qa", "qa_cot", "dict", "raw"}
    assert list(data.eval)[0] == "qa" and {"dict", "raw"} <= set(data.eval)
    eot = tok.convert_tokens_to_ids("<end_of_turn>")
    for name in ("qa", "qa_cot", "dict"):
        for row in data.train[name].select(range(5)):
            ids, labels = row["input_ids"], row["labels"]
            assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
            learned = [i for i, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX]
            assert learned[-1] == eot and learned.count(eot) == 1
            prompt = tok.decode(ids[: labels.index(learned[0])])
            assert prompt.startswith("<bos><start_of_turn>user\n") and prompt.endswith("<start_of_turn>model\n")
    qa_answer = tok.decode([i for i, lab in zip(*data.train["qa"][0].values(), strict=True) if lab != -100])
    assert qa_answer.startswith("정답: ") and qa_answer[4] in "ABCDE"
    cot_lengths = [sum(lab != -100 for lab in r["labels"]) for r in data.train["qa_cot"]]
    qa_lengths = [sum(lab != -100 for lab in r["labels"]) for r in data.train["qa"]]
    assert sum(c > q for c, q in zip(cot_lengths, qa_lengths, strict=True)) >= 5  # reasoning where cot exists
    raw_row = data.train["raw"][0]
    assert raw_row["labels"] == raw_row["input_ids"] and raw_row["input_ids"][0] == tok.bos_token_id
    assert data.raw_blocks and all(b[0] == tok.bos_token_id for b in data.raw_blocks)


def test_step4_mix_of_encoded_sets_follows_the_ratio(sources, real_tokenizer):
    from datasets import Dataset

    data = encode_sources(real_tokenizer, sources, max_length=256, templates=ChatTemplates(),
                          needed={"qa_cot", "dict", "raw"}, eod_token="<end_of_turn>", log=lambda m: None)
    tagged = {k: Dataset.from_dict({"source": [k] * len(v)}) for k, v in data.train.items()}
    mixed = mix_datasets(tagged, {"qa_cot": 0.4, "dict": 0.2, "raw": 0.4}, seed=5)
    n = 2000
    counts = Counter(mixed.select(range(min(n, len(mixed))))["source"])
    total = sum(counts.values())
    assert total >= 1000
    for name, w in {"qa_cot": 0.4, "dict": 0.2, "raw": 0.4}.items():
        assert abs(counts[name] / total - w) < 0.04


def test_missing_source_for_a_mix_is_a_clear_error(sources, real_tokenizer):
    from kormed.train.sft import Sources

    empty = Sources(mcq_train=sources.mcq_train, mcq_val=sources.mcq_val)
    with pytest.raises(KormedError, match="(?s)'dict'.*--dict"):
        encode_sources(real_tokenizer, empty, max_length=256, templates=ChatTemplates(), needed={"dict"},
                       eod_token="<end_of_turn>", log=lambda m: None)


def test_raw_text_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": "oops"}\n', encoding="utf-8")
    with pytest.raises(KormedError) as err:
        read_texts(bad)
    assert err.value.line == 2 and err.value.field == "text"
    assert read_texts(bad, limit=1) == ["ok"]
