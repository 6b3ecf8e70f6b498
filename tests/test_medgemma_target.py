"""MedGemma's own path: the multimodal Gemma3ForConditionalGeneration class with an extended tokenizer reloads to
the model that was trained, the attention implementation is chosen per model class, trainable embedding copies stay
fp32 on a bf16 base, and the declared transformers floor is one that trains the multimodal class text-only."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from kormed.models import RuntimeSpec, attention_for, load_model_and_tokenizer, read_adapter_meta
from kormed.train.config import CPTConfig, LoraOptions, TrainOptions
from kormed.train.engine.model_setup import prepare_model_for_training
from kormed.train.engine.outputs import finish_run
from kormed.train.engine.trainer import CausalCollator, build_trainer, run_training

CPU = RuntimeSpec("cpu", "float32", "sdpa")
NEW_TERMS = ["고혈압약", "당뇨병성", "심근경색증"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def extended_tokenizer_dir(tmp_path_factory, tiny_multimodal_dir, real_tokenizer) -> Path:
    tok = real_tokenizer.__class__.from_pretrained(tiny_multimodal_dir)
    tok.add_tokens(NEW_TERMS)
    out = tmp_path_factory.mktemp("ext-tok")
    tok.save_pretrained(out)
    return out


def _write_corpus(root: Path) -> tuple[Path, Path]:
    texts = [f"{NEW_TERMS[i % 3]} 환자는 {i}번째 진료에서 {NEW_TERMS[(i + 1) % 3]} 검사를 받았다." for i in range(12)]
    root.mkdir(parents=True, exist_ok=True)
    train, val = root / "train.jsonl", root / "val.jsonl"
    train.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts[:9]), encoding="utf-8")
    val.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts[9:]), encoding="utf-8")
    return train, val


def test_multimodal_extended_tokenizer_adapter_reloads_to_the_trained_model(
    tiny_multimodal_dir, extended_tokenizer_dir, tmp_path
):
    """Issue 11 defect 1: the shipped medgemma-4b-1gpu.yaml setting (multimodal, extended tokenizer, new rows).

    `kormed eval ppl --adapter` gives the same number at every load, equal to the last validation perplexity of
    the run; the padding rows (to a multiple of 64) are rebuilt identically instead of drawn at random.
    """
    from kormed.eval.config import EvalConfig
    from kormed.eval.perplexity import run_perplexity
    from kormed.train.cpt import run_cpt

    train, val = _write_corpus(tmp_path / "corpus")
    lora = LoraOptions(dropout=0.0, train_embeddings=True, embedding_rows="new")
    cfg = CPTConfig(
        data=str(train), val=str(val), model=str(tiny_multimodal_dir), tokenizer_path=str(extended_tokenizer_dir),
        output=str(tmp_path / "cpt"), max_length=32, cache_dir=str(tmp_path / "cache"), lora=lora,
        train=TrainOptions(batch_size=2, grad_accum=1, max_steps=2, eval_steps=2, logging_steps=1, lr=5e-2,
                           warmup_ratio=0.0, gradient_checkpointing=False, report_to=[], device="cpu", seed=0,
                           load_best_at_end=False, dtype="float32"),
    )
    info = run_cpt(cfg, log=lambda m: None)
    assert info["multimodal"] and info["tokenizer"]["new_tokens"] == 3
    meta = read_adapter_meta(tmp_path / "cpt")
    assert meta["model_class"] == "Gemma3ForConditionalGeneration" and meta["embedding_rows"] % 64 == 0
    last_val = info["last_eval"]["eval_perplexity"]
    ppl_cfg = EvalConfig(data=str(val), adapter=str(tmp_path / "cpt"), model=str(tiny_multimodal_dir),
                         max_length=32, batch_size=2, device="cpu", dtype="float32")
    first = run_perplexity(ppl_cfg, progress=False, log=lambda m: None)
    second = run_perplexity(ppl_cfg, progress=False, log=lambda m: None)
    assert first["perplexity"] == second["perplexity"]
    assert first["perplexity"] == pytest.approx(last_val, rel=1e-5)
    # the adapter stores what was trained, not the whole (262K-row) embedding matrix
    size = (tmp_path / "cpt" / "adapter_model.safetensors").stat().st_size
    assert size < 8e6


def test_text_only_extended_tokenizer_adapter_is_small_and_exact(tiny_gemma3_dir, tmp_path, real_tokenizer):
    """The causal class too: new-rows training stores the rows, not the resized matrix, and reloads exactly."""
    ext = tmp_path / "ext"
    tok = real_tokenizer.__class__.from_pretrained(tiny_gemma3_dir)
    tok.add_tokens(NEW_TERMS)
    tok.save_pretrained(ext)
    lora = LoraOptions(dropout=0.0, train_embeddings=True, embedding_rows="new")
    model, tok, info = prepare_model_for_training(str(tiny_gemma3_dir), lora=lora, runtime=CPU,
                                                  tokenizer_path=ext, log=lambda m: None,
                                                  tokenizer=real_tokenizer, seed=0)
    ids = tok.convert_tokens_to_ids(NEW_TERMS)
    from datasets import Dataset

    blocks = [[2, ids[0], 100, ids[1], 200, ids[2], 300, 1] for _ in range(4)]
    opts = TrainOptions(batch_size=2, grad_accum=1, max_steps=2, eval_steps=1000, logging_steps=1, lr=5e-2,
                        warmup_ratio=0.0, gradient_checkpointing=False, report_to=[], eval_on_start=False, seed=0)
    trainer = build_trainer(model, tok, Dataset.from_dict({"input_ids": blocks}), None,
                            CausalCollator(tok), opts, tmp_path / "run", runtime=CPU)
    finish_run(trainer, tok, tmp_path / "run", info, run_training(trainer, log=lambda m: None))
    assert (tmp_path / "run" / "adapter_model.safetensors").stat().st_size < 8e6
    model.eval()
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([blocks[0]])).logits
    for _ in range(2):
        again, _, _ = load_model_and_tokenizer(str(tiny_gemma3_dir), adapter=tmp_path / "run", runtime=CPU,
                                               log=lambda m: None)
        with torch.no_grad():
            torch.testing.assert_close(again(input_ids=torch.tensor([blocks[0]])).logits, ref, rtol=0, atol=0)


def test_attention_is_chosen_per_model_class(monkeypatch):
    """Issue 11 defect 2: with flash-attn installed, the multimodal class gets SDPA, the causal class flash."""
    import transformers.utils
    from transformers import Gemma3ForCausalLM, Gemma3ForConditionalGeneration

    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: True)
    assert not Gemma3ForConditionalGeneration._supports_flash_attn  # the premise: transformers refuses it
    assert attention_for(Gemma3ForConditionalGeneration, "cuda") == "sdpa"
    expected_causal = "flash_attention_2" if Gemma3ForCausalLM._supports_flash_attn else "sdpa"
    assert attention_for(Gemma3ForCausalLM, "cuda") == expected_causal
    assert attention_for(Gemma3ForCausalLM, "cpu") == "sdpa"
    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: False)
    assert attention_for(Gemma3ForCausalLM, "cuda") == "sdpa"


def test_multimodal_load_records_the_attention_that_ran(tiny_multimodal_dir):
    from kormed.models import load_model

    runtime = RuntimeSpec("cpu", "float32", "flash_attention_2")  # asked for, not supported: falls back
    model = load_model(str(tiny_multimodal_dir), runtime)
    assert runtime.attn_implementation == "sdpa"
    assert model.config._attn_implementation == "sdpa"


def test_full_embedding_training_in_bf16_moves_the_rows(tiny_gemma3_dir, tmp_path, real_tokenizer):
    """Issue 11 defect 3: on a bf16 base, the trained embedding copy is fp32, so small Adam steps are not lost."""
    from datasets import Dataset

    bf16 = RuntimeSpec("cpu", "bfloat16", "sdpa")
    lora = LoraOptions(dropout=0.0, train_embeddings=True, embedding_rows="all")
    model, tok, info = prepare_model_for_training(str(tiny_gemma3_dir), lora=lora, runtime=bf16,
                                                  log=lambda m: None, tokenizer=real_tokenizer, seed=0)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(p.dtype == torch.float32 for p in trainable.values())
    emb_name = next(n for n in trainable if "modules_to_save" in n)
    before = trainable[emb_name].detach().clone()
    blocks = [[2, *range(100 + 7 * i, 130 + 7 * i)] for i in range(8)]
    opts = TrainOptions(batch_size=2, grad_accum=1, max_steps=4, eval_steps=1000, logging_steps=1, lr=2e-5,
                        warmup_ratio=0.0, scheduler="constant", gradient_checkpointing=False, report_to=[],
                        eval_on_start=False, seed=0)
    trainer = build_trainer(model, tok, Dataset.from_dict({"input_ids": blocks}), None,
                            CausalCollator(tok), opts, tmp_path / "run", runtime=bf16)
    summary = run_training(trainer, log=lambda m: None)
    assert summary["global_step"] == 4 and all(p.dtype == torch.float32 for p in trainable.values())
    touched = sorted({t for b in blocks for t in b})
    after = dict(model.named_parameters())[emb_name].detach()
    changed = (after[touched] != before[touched]).float().mean().item()
    assert changed > 0.9, f"only {changed:.1%} of the touched embedding elements changed"


def test_declared_transformers_floor_trains_multimodal_text_only():
    """Issue 11 defect 4: before 5.6 the multimodal class needs token_type_ids in training; kormed sends none."""
    from packaging.version import Version

    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    floor = re.search(r'"transformers>=([0-9.]+)', text).group(1)
    assert Version(floor) >= Version("5.6")
    import transformers

    assert Version(transformers.__version__) >= Version(floor)


def test_multimodal_trains_without_token_type_ids(tiny_multimodal_dir, real_tokenizer):
    """The text-only training forward of the multimodal class (what the floor guarantees) runs with labels."""
    model, _, _ = prepare_model_for_training(str(tiny_multimodal_dir), lora=LoraOptions(dropout=0.0),
                                             runtime=dataclasses.replace(CPU), log=lambda m: None,
                                             tokenizer=real_tokenizer)
    model.train()
    batch = CausalCollator(real_tokenizer)([{"input_ids": [2, 10, 11, 12, 1]}])
    assert "token_type_ids" not in batch
    out = model(**batch)
    out.loss.backward()
    assert any(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "examples" / "pipelines").glob("*.yaml")))
def test_example_pipelines_load(name, tmp_path):
    """Every shipped pipeline (MedGemma 4B, MedGemma 1.5 4B, multi-GPU) parses with every section valid."""
    from kormed.pipeline.run import load_pipeline, resolve_configs
    from kormed.pipeline.stages import default_specs

    pipeline = load_pipeline(ROOT / "examples" / "pipelines" / name, run_dir=tmp_path / "run")
    ctx = resolve_configs(pipeline, default_specs(), log=lambda m: None)  # a stage that fails to import raises
    assert "medgemma" in pipeline.model
    assert ctx.configs["cpt"].model == pipeline.model


@pytest.mark.parametrize("fixture", ["tiny_gemma3_dir", "tiny_multimodal_dir"])
def test_continuing_an_adapter_names_the_lora_settings_it_does_not_use(fixture, request):
    """A continued adapter keeps its own rank and scale: the config's LoRA settings that differ are named (and
    nothing when they match), whatever shape PEFT's target_modules has (the text-only or multimodal regex)."""
    from peft import LoraConfig

    from kormed.models import load_model
    from kormed.train.engine.model_setup import lora_settings_not_used, lora_target_regex

    base = load_model(str(request.getfixturevalue(fixture)), CPU)
    adapter = LoraConfig(r=64, lora_alpha=64, lora_dropout=0.05, use_rslora=True,
                         target_modules=lora_target_regex(base, ["v_proj", "q_proj"]))
    assert lora_settings_not_used(LoraOptions(r=64, alpha=64, target_modules=["q_proj", "v_proj"]), adapter) == ""
    assert lora_settings_not_used(LoraOptions(target_modules=["q_proj", "v_proj"]), adapter) == (
        "r 16 (adapter: 64), alpha 32 (adapter: 64)")
    assert lora_settings_not_used(LoraOptions(r=64, alpha=64), adapter) == (
        "target_modules ['down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj'] "
        "(adapter: ['q_proj', 'v_proj'])")
