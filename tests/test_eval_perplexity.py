"""Perplexity: blocks are the CPT packing blocks, and the loss is the token-weighted hand computation."""

from __future__ import annotations

import math

import pytest

from kormed.data.packing import pack_documents
from kormed.eval.perplexity import evaluate_perplexity, packed_eval_blocks


@pytest.fixture(scope="module")
def tiny_model(tiny_gemma3_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_gemma3_dir, dtype="float32").eval()


TEXTS = ["안녕하세요. 고혈압은 흔한 질환입니다.", "당뇨병 환자의 혈당 관리", "짧은 글"]


def test_blocks_match_training_packing(real_tokenizer):
    blocks = packed_eval_blocks(real_tokenizer, TEXTS, max_length=8)
    docs = [real_tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    assert blocks == pack_documents(docs, max_length=8, bos_id=2, eod_id=106)
    assert all(b[0] == 2 and len(b) <= 8 for b in blocks)
    assert all(b.count(2) == 1 for b in blocks)  # BOS exactly once per block
    flat = [t for b in blocks for t in b[1:]]
    assert flat.count(106) == len(TEXTS)  # one <end_of_turn> after every text
    assert flat == [t for d in docs for t in [*d, 106]]  # nothing lost, order kept
    eos_blocks = packed_eval_blocks(real_tokenizer, TEXTS, max_length=8, eod_token="<eos>")
    assert [t for b in eos_blocks for t in b[1:]].count(1) == len(TEXTS)


def test_perplexity_equals_hand_computation(real_tokenizer, tiny_model):
    import torch

    blocks = packed_eval_blocks(real_tokenizer, TEXTS, max_length=7)
    assert len({len(b) for b in blocks}) > 1  # the last block is shorter: padding is exercised
    nll, count = 0.0, 0
    with torch.no_grad():
        for b in blocks:  # unbatched, no padding: the reference
            logp = torch.log_softmax(tiny_model(input_ids=torch.tensor([b])).logits[0].double(), dim=-1)
            for t in range(len(b) - 1):
                nll -= float(logp[t, b[t + 1]])
                count += 1
    res = evaluate_perplexity(tiny_model, blocks, batch_size=3, progress=False)
    assert res["tokens"] == count == sum(len(b) - 1 for b in blocks)
    assert res["blocks"] == len(blocks)
    assert res["loss"] == pytest.approx(nll / count, rel=1e-4)
    assert res["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-4)
    # Batch size does not change the token-weighted number.
    res1 = evaluate_perplexity(tiny_model, blocks, batch_size=1, progress=False)
    assert res1["loss"] == pytest.approx(res["loss"], rel=1e-5)


def test_restores_training_mode(real_tokenizer, tiny_model):
    blocks = packed_eval_blocks(real_tokenizer, TEXTS[:1], max_length=16)
    tiny_model.train()
    try:
        evaluate_perplexity(tiny_model, blocks, progress=False)
        assert tiny_model.training
    finally:
        tiny_model.eval()


MIXED = ["고혈압 환자는 ACE inhibitor를 복용한다.\n둘째 줄입니다.", "Latin only text", "가나다라마바사아자차카타파하"]


def test_documents_scored_alone_without_end_of_text_target(real_tokenizer, tiny_model):
    """Each text: <bos> + its tokens, windows of max_length restarting after <bos>, no <end_of_turn> target; the
    sum equals a hand full-logits computation, and the Hangul share splits it by characters."""
    import torch

    from kormed.eval.perplexity import score_documents, summarise_documents

    docs = score_documents(tiny_model, real_tokenizer, MIXED, max_length=6, batch_size=2,
                           progress=False)
    for text, doc in zip(MIXED, docs, strict=True):
        ids = real_tokenizer(text, add_special_tokens=False)["input_ids"]
        nll = 0.0
        with torch.no_grad():
            for start in range(0, len(ids), 5):
                window = [2, *ids[start:start + 5]]
                logp = torch.log_softmax(tiny_model(input_ids=torch.tensor([window])).logits[0].double(), -1)
                nll -= sum(float(logp[t, window[t + 1]]) for t in range(len(window) - 1))
        assert doc["tokens"] == len(ids)  # every token predicted once, nothing else (no end-of-text target)
        assert doc["nll"] == pytest.approx(nll, rel=1e-4)
        assert doc["characters"] == len(text)
    assert docs[1]["hangul_characters"] == 0 and docs[1]["hangul_nll"] == 0.0
    assert docs[2]["hangul_characters"] == len(MIXED[2])
    assert docs[2]["hangul_nll"] == pytest.approx(docs[2]["nll"], rel=1e-9)  # all Hangul: all its loss
    assert 0 < docs[0]["hangul_nll"] < docs[0]["nll"]
    summary = summarise_documents(docs)
    assert summary["bits_per_char"] == pytest.approx(sum(d["nll"] for d in docs) / math.log(2) /
                                                     sum(len(t) for t in MIXED))
    assert summary["hangul_bits_per_char"] == pytest.approx(
        (docs[0]["hangul_nll"] + docs[2]["hangul_nll"]) / math.log(2) /
        (docs[0]["hangul_characters"] + docs[2]["hangul_characters"]))
    again = score_documents(tiny_model, real_tokenizer, MIXED, max_length=64, batch_size=3, progress=False)
    assert [d["tokens"] for d in again] == [d["tokens"] for d in docs]
    full = score_documents(tiny_model, real_tokenizer, MIXED, max_length=6, batch_size=2, progress=False,
                           loss_impl="full")
    assert [d["nll"] for d in full] == pytest.approx([d["nll"] for d in docs], rel=1e-5)


def test_paired_bootstrap_interval():
    from kormed.eval.paired import mean_difference, ratio_difference

    base = [10.0, 20.0, 30.0, 40.0]
    arm = [9.0, 19.0, 29.5, 38.0]
    chars = [10, 20, 30, 40]
    res = ratio_difference(arm, base, chars, seed=3)
    assert res["difference"] == pytest.approx(-4.5 / 100)
    lo, hi = res["ci95"]
    assert lo <= res["difference"] <= hi < 0  # every document improved: the interval excludes 0
    assert ratio_difference(arm, base, chars, seed=3) == res  # seeded: same interval
    same = mean_difference(base, base)
    assert same["difference"] == 0.0 and same["ci95"] == [0.0, 0.0]
    with pytest.raises(ValueError):
        mean_difference([1.0], [1.0, 2.0])


def _write_texts(path, texts):
    import json

    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    return path


def test_eval_ppl_streams_the_file_with_the_same_numbers(real_tokenizer, tiny_gemma3_dir, tmp_path):
    """`kormed eval ppl` scores the file block by block as it is read: the numbers equal those of the whole list
    (packed_eval_blocks + evaluate_perplexity), exactly, on a file of several batches with a short last block."""
    from kormed.eval.config import EvalConfig
    from kormed.eval.perplexity import run_perplexity
    from kormed.io import read_texts
    from kormed.models import RuntimeSpec, load_model_and_tokenizer

    data = _write_texts(tmp_path / "val.jsonl", [*TEXTS, "", *TEXTS[::-1], "   ", TEXTS[0] * 4])
    cfg = EvalConfig(model=str(tiny_gemma3_dir), data=str(data), max_length=9, batch_size=3, device="cpu",
                     dtype="float32")
    got = run_perplexity(cfg, progress=False, log=lambda m: None)
    model, tok, _ = load_model_and_tokenizer(str(tiny_gemma3_dir), runtime=RuntimeSpec("cpu", "float32", "sdpa"),
                                             log=lambda m: None)
    blocks = packed_eval_blocks(tok, read_texts(data), max_length=9)
    assert len(blocks) > 2 * cfg.batch_size and len(blocks[-1]) < 9
    want = evaluate_perplexity(model, blocks, batch_size=3, progress=False, compute_dtype="float32")
    assert {k: got[k] for k in want} == want  # loss, perplexity, tokens, blocks: bit for bit
    assert got["documents"] == 7


def test_eval_ppl_memory_does_not_grow_with_the_file(tiny_gemma3_dir, tmp_path, monkeypatch):
    """The first batch is scored after one tokenizer batch of texts has been read, not after the whole file (the
    file's texts are never held at once)."""
    from kormed import loss
    from kormed.data.corpus_stream import DOCS_PER_BATCH
    from kormed.eval import perplexity
    from kormed.eval.config import EvalConfig

    n = 3 * DOCS_PER_BATCH
    data = _write_texts(tmp_path / "big.jsonl", [f"{TEXTS[i % 3]} {i}" for i in range(n)])
    read = [0]
    real_iter_texts = perplexity.iter_texts

    def counting(*args, **kwargs):
        read[0] = 0
        for text in real_iter_texts(*args, **kwargs):
            read[0] += 1
            yield text

    class FirstBatch(Exception):
        pass

    def first_batch(*args, **kwargs):
        raise FirstBatch(read[0])

    monkeypatch.setattr(perplexity, "iter_texts", counting)
    monkeypatch.setattr(loss, "sequence_nll", first_batch)
    cfg = EvalConfig(model=str(tiny_gemma3_dir), data=str(data), max_length=16, batch_size=2, device="cpu",
                     dtype="float32")
    with pytest.raises(FirstBatch) as first:
        perplexity.run_perplexity(cfg, progress=False, log=lambda m: None)
    assert first.value.args[0] <= DOCS_PER_BATCH < n
