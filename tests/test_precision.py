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


def test_auto_matches_this_cpu_and_dtype_overrides(monkeypatch):
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    flags = {f for line in text.splitlines() if line.startswith(("flags", "Features")) for f in line.split()}
    native = bool(flags & {"amx_bf16", "avx512_bf16", "bf16"})
    assert precision.cpu_has_native_bf16() is native
    auto = pick_runtime("cpu")
    assert auto.dtype == auto.compute_dtype == ("bfloat16" if native else "float32")
    assert pick_runtime("cpu", "float32").compute_dtype == "float32"
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    forced = pick_runtime("cpu", "bfloat16")
    assert (forced.dtype, forced.compute_dtype) == ("bfloat16", "bfloat16")  # as on CUDA
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    stored = pick_runtime("cpu", "bfloat16")  # no native bf16: bf16 storage, fp32 matmuls
    assert (stored.dtype, stored.compute_dtype) == ("bfloat16", "float32")
    assert pick_runtime("cpu").compute_dtype == pick_runtime("cpu").dtype == "float32"
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
    from kormed.train.engine.model_setup import prepare_model_for_training
    from kormed.train.engine.trainer import CausalCollator, build_trainer

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


def test_bf16_autocast_cpt_keeps_fp32_master_weights(small_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)  # the autocast path, on any CPU
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


# --- bf16 storage, fp32 compute (a CPU without native bf16) ----------------------------------------------------
def _fp32_reference(model_dir: Path, cls: type) -> object:
    """An fp32 model holding the bf16-rounded weights: what bf16 storage with fp32 matmuls must compute."""
    ref = cls.from_pretrained(model_dir, dtype=torch.bfloat16).float()
    ref.eval()
    return ref


@pytest.mark.parametrize("multimodal", [False, True])
def test_bf16_storage_fp32_compute_matches_fp32_model_of_rounded_weights(tmp_path, real_tokenizer, multimodal,
                                                                         monkeypatch):
    from conftest import tiny_multimodal_config
    from transformers import Gemma3ForCausalLM, Gemma3ForConditionalGeneration

    from kormed.models import load_model

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    torch.manual_seed(5)
    if multimodal:
        cls = Gemma3ForConditionalGeneration
        cls(tiny_multimodal_config(vocab_size=262208)).save_pretrained(tmp_path, safe_serialization=True)
    else:
        cls = Gemma3ForCausalLM
        cls(tiny_text_config(vocab_size=1024)).save_pretrained(tmp_path, safe_serialization=True)
    runtime = pick_runtime("cpu", "bfloat16")
    model = load_model(str(tmp_path), runtime).eval()
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())  # stored in bf16: half the memory
    ref = _fp32_reference(tmp_path, cls)
    ids = torch.tensor([[2, 17, 400, 33, 901, 5, 77, 12]])
    kwargs: dict = {}
    if multimodal:  # an image's tokens in the prompt: the vision tower and projector run too
        ids = torch.tensor([[2, 255999] + [262143] * 4 + [256000, 17, 400, 33]])
        kwargs = {"pixel_values": torch.randn(1, 3, 28, 28), "token_type_ids": (ids == 262143).long()}
    with torch.no_grad():
        got = model(input_ids=ids, **kwargs).logits
        want = ref(input_ids=ids, **kwargs).logits
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # fp32 rounding, not bf16 (~1e-2)
    assert set(model.state_dict()) == set(ref.state_dict())  # no wrapper state
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())  # nothing was upcast in place


NEW_TERMS = ["고혈압약", "당뇨병성", "심근경색증"]


def test_bf16_storage_fp32_compute_trains_lora_and_new_rows_and_reloads_exactly(tiny_gemma3_dir, tmp_path,
                                                                                  real_tokenizer, monkeypatch):
    """A LoRA step with new embedding rows (tokenizer extension) and gradient checkpointing: gradient reaches
    every trainable weight and nothing else moves; the saved adapter reloads to exactly the trained logits."""
    from datasets import Dataset

    from kormed.models import load_model_and_tokenizer
    from kormed.train.config import LoraOptions, TrainOptions
    from kormed.train.engine.model_setup import prepare_model_for_training
    from kormed.train.engine.outputs import finish_run
    from kormed.train.engine.trainer import CausalCollator, build_trainer, run_training

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    runtime = pick_runtime("cpu", "bfloat16")
    assert (runtime.dtype, runtime.compute_dtype) == ("bfloat16", "float32")
    ext = tmp_path / "ext"
    tok = real_tokenizer.__class__.from_pretrained(tiny_gemma3_dir)
    tok.add_tokens(NEW_TERMS)
    tok.save_pretrained(ext)
    lora = LoraOptions(dropout=0.0, train_embeddings=True, embedding_rows="new")
    model, tok, info = prepare_model_for_training(str(tiny_gemma3_dir), lora=lora, runtime=runtime,
                                                  tokenizer_path=ext, log=lambda m: None, tokenizer=real_tokenizer,
                                                  seed=0)
    ids = tok.convert_tokens_to_ids(NEW_TERMS)
    blocks = [[2, ids[0], 100, ids[1], 200, ids[2], 300, 1] for _ in range(4)]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opts = TrainOptions(batch_size=2, grad_accum=1, max_steps=2, eval_steps=1000, logging_steps=1, lr=5e-2,
                        warmup_ratio=0.0, gradient_checkpointing=True, report_to=[], eval_on_start=False, seed=0,
                        device="cpu", dtype="bfloat16")
    trainer = build_trainer(model, tok, Dataset.from_dict({"input_ids": blocks}), None,
                            CausalCollator(tok), opts, tmp_path / "run", runtime=runtime)
    assert not trainer.args.bf16  # no bf16 autocast: the matmuls run in fp32
    finish_run(trainer, tok, tmp_path / "run", info, run_training(trainer, log=lambda m: None))
    params = dict(model.named_parameters())
    changed = {n for n, p in params.items() if n in before and not torch.equal(p.detach(), before[n])}
    trainable = {n for n, p in params.items() if p.requires_grad}
    assert any("trainable_tokens" in n for n in trainable) and any("lora_" in n for n in trainable)
    assert changed == trainable  # gradient reached LoRA and the new rows; the frozen base did not move
    assert all(params[n].dtype == torch.float32 for n in trainable)  # fp32 masters
    assert all(p.dtype == torch.bfloat16 for n, p in params.items() if n not in trainable)  # bf16 storage
    model.eval()
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([blocks[0]])).logits
    assert ref.dtype == torch.float32
    again, _, _ = load_model_and_tokenizer(str(tiny_gemma3_dir), adapter=tmp_path / "run",
                                           runtime=pick_runtime("cpu", "bfloat16"), log=lambda m: None)
    assert all(p.dtype == torch.bfloat16 for n, p in again.named_parameters() if "lora_" not in n
               and "trainable_tokens" not in n)
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=torch.tensor([blocks[0]])).logits, ref, rtol=0, atol=0)


@pytest.mark.heavy  # 30 s end to end (run_cpt + eval ppl); the reload-exactly test above stays in the default run
def test_bf16_storage_fp32_compute_eval_ppl_equals_last_validation(tmp_path, real_tokenizer, monkeypatch):
    """`kormed train cpt` then `kormed eval ppl --adapter` on the multimodal class with new rows, both with
    `--dtype bfloat16` on a CPU without native bf16: the same perplexity, bit for bit."""
    import json

    from conftest import tiny_multimodal_config
    from transformers import Gemma3ForConditionalGeneration

    from kormed.eval.config import EvalConfig
    from kormed.eval.perplexity import run_perplexity
    from kormed.train.config import CPTConfig, LoraOptions, TrainOptions
    from kormed.train.cpt import run_cpt

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    torch.manual_seed(0)
    base = tmp_path / "base"
    Gemma3ForConditionalGeneration(tiny_multimodal_config()).save_pretrained(base, safe_serialization=True)
    real_tokenizer.save_pretrained(base)
    ext = tmp_path / "ext"
    tok = real_tokenizer.__class__.from_pretrained(base)
    tok.add_tokens(NEW_TERMS)
    tok.save_pretrained(ext)
    texts = [f"{NEW_TERMS[i % 3]} 환자는 {i}번째 진료에서 {NEW_TERMS[(i + 1) % 3]} 검사를 받았다." for i in range(12)]
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    train.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts[:9]), encoding="utf-8")
    val.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts[9:]), encoding="utf-8")
    cfg = CPTConfig(
        data=str(train), val=str(val), model=str(base), tokenizer_path=str(ext), output=str(tmp_path / "cpt"),
        max_length=32, cache_dir=str(tmp_path / "cache"),
        lora=LoraOptions(dropout=0.0, train_embeddings=True, embedding_rows="new"),
        train=TrainOptions(batch_size=2, grad_accum=1, max_steps=2, eval_steps=2, logging_steps=1, lr=5e-2,
                           warmup_ratio=0.0, gradient_checkpointing=True, report_to=[], device="cpu", seed=0,
                           load_best_at_end=False, dtype="bfloat16"),
    )
    info = run_cpt(cfg, log=lambda m: None)
    assert (info["runtime"]["dtype"], info["runtime"]["compute_dtype"]) == ("bfloat16", "float32")
    ppl = run_perplexity(EvalConfig(data=str(val), adapter=str(tmp_path / "cpt"), model=str(base), max_length=32,
                                    batch_size=4, device="cpu", dtype="bfloat16"), progress=False, log=lambda m: None)
    assert ppl["perplexity"] == info["last_eval"]["eval_perplexity"]


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_the_output_layer_gets_a_contiguous_input_when_logits_are_sliced(tiny_gemma3_dir, dtype):
    """transformers slices the kept positions (`logits_to_keep`) before the 262K-row head; a strided bf16 input
    made torch.matmul copy the head's weight once per row (12 s for 8 rows on a CPU). Every loaded model's head
    receives a contiguous input, and the logits are those of the full forward's last positions."""
    from kormed.models import load_model

    model = load_model(str(tiny_gemma3_dir), RuntimeSpec(device="cpu", dtype=dtype, attn_implementation="sdpa",
                                                         compute_dtype=dtype))
    model.eval()
    seen: list[bool] = []
    model.get_output_embeddings().register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
    ids = torch.randint(10, 1000, (3, 7))
    with torch.no_grad():
        kept = model(input_ids=ids, logits_to_keep=2, use_cache=False).logits
        full = model(input_ids=ids, use_cache=False).logits
    assert seen == [True, True]
    assert torch.allclose(kept.float(), full[:, -2:, :].float(), atol=2e-2)
    # the hook is added once however often a model passes through the loader's step
    before = len(model.get_output_embeddings()._forward_pre_hooks)
    precision.contiguous_head_input(model)
    assert len(model.get_output_embeddings()._forward_pre_hooks) == before
