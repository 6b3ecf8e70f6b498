"""Compute precision: bf16 (frozen weights + autocast) where the CPU multiplies bf16 natively, fp32 trainable
weights, `--dtype`."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from conftest import tiny_text_config

from kormed import precision
from kormed.errors import KormedError
from kormed.models import RuntimeSpec, pick_runtime


def test_cpu_flag_detection():
    x86 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\nprocessor\t: 1\nflags\t\t: fpu\n"
    assert precision.cpu_has_native_bf16(x86)
    assert precision.cpu_has_native_bf16("flags : fpu avx512f amx_tile amx_bf16\n")
    assert precision.cpu_has_native_bf16("Features\t: fp asimd sve bf16 i8mm\n")  # aarch64
    assert not precision.cpu_has_native_bf16("flags : fpu sse2 avx2 avx512f avx512_vnni\n")
    assert not precision.cpu_has_native_bf16("")
    assert "avx512_bf16" not in precision.cpu_flags("model name : avx512_bf16 marketing name\n")


def test_auto_matches_this_cpu_and_dtype_overrides():
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    flags = {f for line in text.splitlines() if line.startswith(("flags", "Features")) for f in line.split()}
    native = bool(flags & {"amx_bf16", "avx512_bf16", "bf16"})
    assert precision.cpu_has_native_bf16() is native
    auto = pick_runtime("cpu")
    assert auto.dtype == auto.compute_dtype == ("bfloat16" if native else "float32")
    assert pick_runtime("cpu", "float32").compute_dtype == "float32"
    forced = pick_runtime("cpu", "bfloat16")
    assert (forced.dtype, forced.compute_dtype) == ("bfloat16", "bfloat16")  # as on CUDA
    assert precision.resolve_dtypes("cuda", "auto") == ("bfloat16", "bfloat16")
    assert precision.resolve_dtypes("cuda:1", "float32") == ("float32", "float32")
    assert RuntimeSpec("cpu", "bfloat16", "sdpa").compute_dtype == "bfloat16"  # a bf16 base computes in bf16
    with pytest.raises(KormedError, match="unknown dtype 'fp16'"):
        pick_runtime("cpu", "fp16")


@pytest.fixture(scope="module")
def small_model_dir(tmp_path_factory, real_tokenizer) -> Path:
    from transformers import Gemma3ForCausalLM

    torch.manual_seed(3)
    out = tmp_path_factory.mktemp("precision-model")
    Gemma3ForCausalLM(tiny_text_config(vocab_size=1024)).save_pretrained(out, safe_serialization=True)
    real_tokenizer.save_pretrained(out)
    return out


def _blocks(n: int = 8, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[2] + [rng.randrange(3, 1000) for _ in range(31)] for _ in range(n)]


def _train_two_steps(model_dir: Path, dtype: str, tmp_path: Path) -> tuple[object, list[float], set]:
    """Two CPT-style optimizer steps through kormed's engine; returns (trainer, losses, dtypes of q_proj outputs)."""
    from datasets import Dataset

    from kormed.train.config import LoraOptions, TrainOptions
    from kormed.train.model_setup import prepare_model_for_training
    from kormed.train.trainer import CausalCollator, build_trainer

    runtime = pick_runtime("cpu", dtype)
    model, tok, info = prepare_model_for_training(str(model_dir), lora=LoraOptions(dropout=0.0),
                                                  runtime=runtime, log=lambda m: None, seed=0)
    assert info["runtime"]["compute_dtype"] == runtime.compute_dtype  # recorded in training_info.json
    seen: set = set()
    layer = next(m for n, m in model.named_modules() if n.endswith("layers.0.self_attn.q_proj.base_layer"))
    layer.register_forward_hook(lambda mod, args, out: seen.add(out.dtype) if mod.training else None)
    opts = TrainOptions(batch_size=4, grad_accum=1, max_steps=2, eval_steps=1000, logging_steps=1, lr=1e-3,
                        warmup_ratio=0.0, gradient_checkpointing=False, report_to=[], eval_on_start=False, seed=0,
                        device="cpu", dtype=dtype)
    trainer = build_trainer(model, tok, Dataset.from_dict({"input_ids": _blocks()}), None,
                            CausalCollator(tok), opts, tmp_path / dtype, runtime=runtime)
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return trainer, losses, seen


def test_bf16_autocast_cpt_keeps_fp32_master_weights(small_model_dir, tmp_path):
    _, ref_losses, ref_seen = _train_two_steps(small_model_dir, "float32", tmp_path)
    trainer, losses, seen = _train_two_steps(small_model_dir, "bfloat16", tmp_path)
    assert ref_seen == {torch.float32}
    assert seen == {torch.bfloat16}  # the matmuls really ran in bf16 (autocast on CPU)
    assert trainer.args.bf16 and trainer.args.use_cpu
    params = dict(trainer.model.named_parameters())
    trained = [p for p in params.values() if p.requires_grad]
    assert trained and all(p.dtype == torch.float32 for p in trained)  # the optimizer's master weights: fp32
    assert all(p.dtype == torch.bfloat16 for p in params.values() if not p.requires_grad)  # the frozen base: bf16
    assert len(losses) == len(ref_losses) == 2
    assert all(torch.isfinite(torch.tensor(losses)))
    for got, want in zip(losses, ref_losses, strict=True):
        assert got == pytest.approx(want, rel=0.02)  # bf16 rounding, not a different computation


def test_perplexity_under_bf16_autocast_is_close_to_fp32(small_model_dir):
    from transformers import AutoModelForCausalLM

    from kormed.eval.perplexity import evaluate_perplexity

    model = AutoModelForCausalLM.from_pretrained(small_model_dir, dtype=torch.float32)
    seen: set = set()
    model.model.layers[0].self_attn.q_proj.register_forward_hook(lambda m, a, out: seen.add(out.dtype))
    blocks = _blocks(5, seed=4)
    full = evaluate_perplexity(model, blocks, batch_size=2, progress=False, compute_dtype="float32")
    assert seen == {torch.float32}
    seen.clear()
    bf16 = evaluate_perplexity(model, blocks, batch_size=2, progress=False, compute_dtype="bfloat16")
    assert seen == {torch.bfloat16}
    assert bf16["tokens"] == full["tokens"]
    assert bf16["loss"] == pytest.approx(full["loss"], rel=0.02)
    assert next(model.parameters()).dtype == torch.float32
