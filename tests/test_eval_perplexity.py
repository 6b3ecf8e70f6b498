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
