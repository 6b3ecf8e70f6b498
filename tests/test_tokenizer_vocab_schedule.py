"""Vocabulary extension that must not cost quality: the `sequence` initialisation's logit relation, the
embeddings-first phase (only the new rows move, then LoRA), and the size of an extension."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from test_tokenizer_embeddings import KOREAN, ext_tokenizer, tiny_causal  # noqa: F401  (fixture reused)

from kormed.embeddings import piece_sequence_stats, resize_and_init_embeddings, token_pieces


def test_sequence_init_gives_new_token_the_piece_sequence_logit(real_tokenizer, ext_tokenizer):  # noqa: F811
    """At the mean hidden state h, a new row's logit is its first piece's logit + log P(rest | first piece),
    and the row differs from the mean of its pieces only along h (base rows untouched)."""
    model = tiny_causal()
    n_base = len(real_tokenizer)
    base_rows = model.get_input_embeddings().weight[:n_base].clone()
    new_ids = resize_and_init_embeddings(model, real_tokenizer, ext_tokenizer, init="sequence")
    weight = model.get_input_embeddings().weight.detach()
    assert torch.equal(weight[:n_base], base_rows)
    pieces = {i: token_pieces(real_tokenizer, ext_tokenizer, i) for i in new_ids}
    hidden, rest = piece_sequence_stats(model, pieces, real_tokenizer.bos_token_id)  # base rows only: same stats
    u = hidden / hidden.norm()
    multi = [i for i in new_ids if len(pieces[i]) > 1]
    assert multi, "the test extension must have tokens of several pieces"
    for i in new_ids:
        p = pieces[i]
        assert float(hidden @ weight[i]) == pytest.approx(float(hidden @ weight[p[0]]) + rest[i], abs=1e-3)
        offset = weight[i] - weight[p].mean(0)
        assert torch.allclose(offset, (offset @ u) * u, atol=1e-5)  # moved along the mean hidden direction only
    assert all(rest[i] < 0 for i in multi)
    # the mean initialisation does not satisfy the relation (so the test would catch a silent fallback)
    mean_model = tiny_causal()
    resize_and_init_embeddings(mean_model, real_tokenizer, ext_tokenizer, init="mean")
    mean_w = mean_model.get_input_embeddings().weight.detach()
    gaps = [abs(float(hidden @ mean_w[i]) - float(hidden @ mean_w[pieces[i][0]]) - rest[i]) for i in multi]
    assert max(gaps) > 1e-2


def test_unknown_init_is_refused(real_tokenizer, ext_tokenizer):  # noqa: F811
    from kormed.errors import KormedError

    with pytest.raises(KormedError, match="unknown embedding init"):
        resize_and_init_embeddings(tiny_causal(), real_tokenizer, ext_tokenizer, init="first")


def _corpus(tmp_path):
    texts = [KOREAN + f" {i}번째 문서입니다." for i in range(12)]
    paths = []
    for name, part in (("train.jsonl", texts[:10]), ("val.jsonl", texts[10:])):
        path = tmp_path / name
        path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in part), encoding="utf-8")
        paths.append(path)
    return paths


def _cfg(model_dir, tok_dir, tmp_path, **extra):
    from kormed.train.config import CPTConfig, LoraOptions, TrainOptions

    train, val = _corpus(tmp_path)
    opts = TrainOptions(batch_size=2, grad_accum=1, max_steps=2, eval_steps=2, logging_steps=1, lr=5e-3,
                        warmup_ratio=0.0, gradient_checkpointing=False, report_to=[], device="cpu", seed=0,
                        dtype="float32")
    return CPTConfig(data=str(train), val=str(val), model=str(model_dir), tokenizer_path=str(tok_dir),
                     output=str(tmp_path / "cpt"), max_length=32, cache_dir=str(tmp_path / "packed"),
                     lora=LoraOptions(dropout=0.0), train=opts, **extra)


def test_embedding_warmup_moves_only_the_new_rows(tiny_gemma3_dir, ext_tokenizer, tmp_path):  # noqa: F811
    """Phase 1 changes the new rows' delta and nothing else (LoRA and every base weight bit-identical); LoRA
    is trainable again afterwards."""
    from kormed.models import pick_runtime
    from kormed.train.cpt import apply_tokenizer_options, build_packed_dataset, run_embedding_warmup
    from kormed.train.engine.model_setup import prepare_model_for_training

    cfg = apply_tokenizer_options(_cfg(tiny_gemma3_dir, ext_tokenizer.name_or_path, tmp_path,
                                       embedding_warmup_steps=3, embedding_warmup_lr=1e-2))
    runtime = pick_runtime("cpu", "float32")
    model, tokenizer, info = prepare_model_for_training(
        cfg.model, lora=cfg.lora, runtime=runtime, tokenizer_path=cfg.tokenizer_path, log=lambda m: None, seed=0)
    assert info["tokenizer"]["new_tokens"] > 0
    train_ds, _ = build_packed_dataset(cfg.data, tokenizer, max_length=32, cache_dir=cfg.cache_dir, log=lambda m: None)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    lora_trainable = {n for n, p in model.named_parameters() if p.requires_grad and "lora_" in n}
    assert lora_trainable
    result = run_embedding_warmup(model, tokenizer, train_ds, cfg, tmp_path / "cpt", runtime, log=lambda m: None)
    assert result["steps"] == 3 and all("trainable_tokens" in n for n in result["trainable"])
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and all("trainable_tokens" in n for n in changed)
    assert {n for n, p in model.named_parameters() if p.requires_grad and "lora_" in n} == lora_trainable
    assert not (tmp_path / "cpt" / "embedding_warmup").exists()


def test_run_cpt_runs_embeddings_first_then_lora(tiny_gemma3_dir, ext_tokenizer, tmp_path):  # noqa: F811
    from kormed.train.cpt import run_cpt

    cfg = _cfg(tiny_gemma3_dir, ext_tokenizer.name_or_path, tmp_path, embedding_warmup_steps=2)
    info = run_cpt(cfg, log=lambda m: None)
    assert info["embedding_warmup"]["steps"] == 2 and len(info["embedding_warmup"]["losses"]) == 2
    assert info["global_step"] == 2 and info["stop_reason"] == "completed"  # the LoRA run keeps its own budget
    saved = json.loads((tmp_path / "cpt" / "training_info.json").read_text())
    assert saved["embedding_warmup"]["lr"] == cfg.embedding_warmup_lr
    # without an extended tokenizer there are no new rows: the phase is skipped, not an error
    plain = dataclasses.replace(cfg, tokenizer_path=None, output=str(tmp_path / "plain"))
    assert "embedding_warmup" not in run_cpt(plain, log=lambda m: None)


def test_embedding_warmup_options_are_validated():
    from kormed.config import load_config
    from kormed.errors import KormedError

    with pytest.raises(KormedError, match="embedding-warmup-steps"):
        load_config("cpt", overrides={"embedding_warmup_steps": -1})
    with pytest.raises(KormedError, match="embedding-warmup-lr"):
        load_config("cpt", overrides={"embedding_warmup_lr": 0.0})


@pytest.mark.parametrize("size", [5, 20])
def test_extension_size_is_honoured(embedded_model_dir, tmp_path, size):
    from kormed.tokenizer.config import TokenizerConfig
    from kormed.tokenizer.extend import extend_tokenizer

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": KOREAN + f" 문서 {i}"}, ensure_ascii=False) + "\n"
                              for i in range(30)), encoding="utf-8")
    dict_path = tmp_path / "d.json"
    dict_path.write_text(json.dumps([{"term": "당뇨병", "definition": "diabetes"}], ensure_ascii=False))
    cfg = TokenizerConfig(corpus=str(corpus), dict=str(dict_path), out=str(tmp_path / f"tok{size}"),
                          max_new_tokens=size, max_dict_tokens=2, min_frequency=2)
    report = extend_tokenizer(cfg, log=lambda m: None)
    assert report["new_tokens"] == size
