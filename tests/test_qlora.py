"""QLoRA (`--quantize 4bit`): NF4 loading of the language model only, LoRA training on it (CPU, bitsandbytes 0.50),
gradients intact after a validation pass, save -> reload to identical logits from the adapter's metadata alone,
`kormed eval ppl` equal to the training's validation, export merging into the unquantized base, and the one-line
error when bitsandbytes is missing."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

from kormed.errors import KormedError
from kormed.train.config import CPTConfig, LoraOptions, TrainOptions

MCQ_DIR = Path(__file__).resolve().parents[1] / "src/kormed/sample_data/data/01_raw/02_kor_med_test"


def _has_bitsandbytes() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return False
    return True


needs_bnb = pytest.mark.skipif(not _has_bitsandbytes(), reason="bitsandbytes not installed (pip install kormed[qlora])")


def _quiet(_message: str) -> None:
    pass


def _korean_texts() -> list[str]:
    texts = []
    for name in ("train.jsonl", "test.jsonl"):
        for line in (MCQ_DIR / name).read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            texts.append(f"{r['question']} 정답은 {r['ABCDE'[r['answer'] - 1]]}이다. {r.get('cot') or ''}".strip())
    return texts


def _write_jsonl(path: Path, texts: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    texts = _korean_texts()
    root = tmp_path_factory.mktemp("qlora-corpus")
    return _write_jsonl(root / "train.jsonl", texts[:40]), _write_jsonl(root / "val.jsonl", texts[60:63])


def _cpu() -> object:
    from kormed.models import RuntimeSpec

    return RuntimeSpec("cpu", "float32", "sdpa")


def _tiny_cfg(model_dir: Path, corpus, out: Path, **train) -> CPTConfig:
    opts = dict(batch_size=2, grad_accum=1, max_steps=3, eval_steps=3, logging_steps=1, lr=5e-3, warmup_ratio=0.0,
                gradient_checkpointing=False, report_to=[], device="cpu", dtype="float32", seed=0, quantize="4bit")
    opts.update(train)
    return CPTConfig(data=str(corpus[0]), val=str(corpus[1]), model=str(model_dir), output=str(out), max_length=32,
                     max_samples=8, max_val_samples=3, cache_dir=str(out.parent / "packed-cache"),
                     lora=LoraOptions(r=4, dropout=0.0), train=TrainOptions(**opts))


# ---------------------------------------------------------------------------------------------------------------
# without bitsandbytes
# ---------------------------------------------------------------------------------------------------------------


def test_missing_bitsandbytes_is_one_clear_error(monkeypatch, tmp_path, corpus, capsys):
    from kormed.cli import main
    from kormed.quantization import require_bitsandbytes

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` now raises ImportError
    with pytest.raises(KormedError, match="needs bitsandbytes, which is not installed") as exc:
        require_bitsandbytes()
    assert "kormed[qlora]" in str(exc.value)
    with pytest.raises(SystemExit) as stop:
        main(["train", "cpt", "--data", str(corpus[0]), "--val", str(corpus[1]), "--model", str(tmp_path),
              "--output", str(tmp_path / "out"), "--quantize", "4bit"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("kormed: error: field '--quantize'") and "needs bitsandbytes" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 2  # the message and its hint
    with pytest.raises(SystemExit):
        main(["train", "cpt", "--quantize", "8bit"])
    assert "must be one of ['none', '4bit']" in capsys.readouterr().err


def test_missing_bitsandbytes_for_a_4bit_adapter(monkeypatch, tmp_path, tiny_gemma3_dir):
    """An adapter recorded as trained on a 4-bit base cannot silently load unquantized without bitsandbytes."""
    from kormed.models import load_model_and_tokenizer, write_adapter_meta

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA",
                                                             "base_model_name_or_path": str(tiny_gemma3_dir)}))
    # a well-formed (empty) safetensors file: its header is checked, its weights never load (the 4-bit check is first)
    (adapter / "adapter_model.safetensors").write_bytes((2).to_bytes(8, "little") + b"{}")
    write_adapter_meta(adapter, {"quantization": "4bit-nf4"})
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(KormedError, match="4-bit base.*needs bitsandbytes"):
        load_model_and_tokenizer(None, adapter=adapter, runtime=_cpu(), log=_quiet)


# ---------------------------------------------------------------------------------------------------------------
# with bitsandbytes (CPU)
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_multimodal_dir(tmp_path_factory, real_tokenizer) -> Path:
    """A tiny random Gemma3ForConditionalGeneration (SigLIP vision tower) with the real tokenizer."""
    import torch
    from conftest import tiny_text_config
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, SiglipVisionConfig

    torch.manual_seed(0)
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                image_size=28, patch_size=14)
    cfg = Gemma3Config(text_config=tiny_text_config().to_dict(), vision_config=vision.to_dict(),
                       mm_tokens_per_image=4, image_token_index=262143, boi_token_index=255999,
                       eoi_token_index=256000)
    out = tmp_path_factory.mktemp("tiny-gemma3-mm")
    Gemma3ForConditionalGeneration(cfg).save_pretrained(out, safe_serialization=True)
    real_tokenizer.save_pretrained(out)
    return out


def _linear_kinds(model) -> dict[str, str]:
    import torch

    return {n: type(m).__name__ for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


@needs_bnb
@pytest.mark.parametrize("which", ["text", "multimodal"])
def test_4bit_load_quantizes_only_the_language_model(which, tiny_gemma3_dir, tiny_multimodal_dir):
    import torch

    from kormed.models import load_model

    path = tiny_gemma3_dir if which == "text" else tiny_multimodal_dir
    model = load_model(str(path), _cpu(), quantize="4bit")
    kinds = _linear_kinds(model)
    lm = {n: k for n, k in kinds.items() if "vision" not in n and "projector" not in n and "lm_head" not in n}
    assert lm and set(lm.values()) == {"Linear4bit"}, lm  # every q/k/v/o/gate/up/down of the language model
    assert all(k != "Linear4bit" for n, k in kinds.items() if "vision" in n or "projector" in n)
    if which == "multimodal":
        assert any("vision" in n for n in kinds)
    emb, out = model.get_input_embeddings(), model.get_output_embeddings()
    assert type(emb.weight) is torch.nn.Parameter and emb.weight.dtype == torch.float32
    assert out.weight is emb.weight  # lm_head unquantized and still tied
    assert model.config.quantization_config.bnb_4bit_quant_type == "nf4"
    assert model.config.quantization_config.bnb_4bit_use_double_quant is True
    assert model.config.quantization_config.bnb_4bit_compute_dtype == torch.bfloat16


def _lora_grads(model, ids, *, validate_first: bool) -> dict:
    import torch

    if validate_first:  # what eval_on_start / a periodic validation does to the model before training steps
        model.eval()
        with torch.no_grad():
            model(input_ids=ids)
    model.train()
    model.zero_grad()
    model(input_ids=ids, labels=ids).loss.backward()
    return {n: p.grad.clone() if p.grad is not None else None for n, p in model.named_parameters() if p.requires_grad}


@needs_bnb
def test_qlora_trains_and_a_validation_pass_keeps_the_gradients(tiny_gemma3_dir):
    """LoRA on the 4-bit model learns a repeated batch, and a no-grad eval pass in between does not cut the
    gradient through the quantized layers (bitsandbytes' CPU inference repacking has no backward)."""
    import torch

    from kormed.train.engine.model_setup import prepare_model_for_training

    def fresh():
        model, tok, info = prepare_model_for_training(
            str(tiny_gemma3_dir), lora=LoraOptions(r=4, dropout=0.0), runtime=_cpu(), log=_quiet, seed=0,
            quantize="4bit")
        return model, tok, info

    model, tok, info = fresh()
    assert info["quantization"] == "4bit-nf4"
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    texts = ["고혈압은 혈압이 높은 상태이다.", "당뇨병은 혈당이 높은 병이다."]
    ids = tok(texts, padding=True, return_tensors="pt").input_ids
    # B starts at zero: make it non-zero so every LoRA matrix gets a gradient
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    before = _lora_grads(model, ids, validate_first=False)
    after = _lora_grads(model, ids, validate_first=True)
    assert before.keys() == after.keys()
    first_layer = [n for n in before if ".layers.0." in n]
    assert first_layer and all(before[n] is not None and before[n].abs().sum() > 0 for n in first_layer)
    for n in before:
        assert after[n] is not None, n
        torch.testing.assert_close(after[n], before[n])

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(6):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses


@needs_bnb
@pytest.mark.heavy
def test_qlora_cpt_save_reload_eval_ppl_and_export(tiny_gemma3_dir, corpus, tmp_path):
    import torch
    from transformers import TrainerCallback

    from kormed.cli import main
    from kormed.models import load_model_and_tokenizer, read_adapter_meta
    from kormed.quantization import is_quantized
    from kormed.train.cpt import run_cpt

    out = tmp_path / "cpt"
    trained = {}

    class Keep(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            trained["model"] = model

    info = run_cpt(_tiny_cfg(tiny_gemma3_dir, corpus, out), callbacks=[Keep()], log=_quiet)
    assert info["stop_reason"] == "completed" and info["quantization"] == "4bit-nf4"
    first, last = info["first_eval"]["eval_loss"], info["last_eval"]["eval_loss"]
    assert last < first, (first, last)
    assert read_adapter_meta(out)["quantization"] == "4bit-nf4"

    # reload from the adapter alone (no --model, no --quantize): a 4-bit base, the same logits
    model, tok, _ = load_model_and_tokenizer(None, adapter=out, runtime=_cpu(), log=_quiet)
    assert is_quantized(model)
    ids = tok(["간경화의 원인은 무엇인가?"], return_tensors="pt").input_ids
    from accelerate.utils import extract_model_from_parallel

    # accelerate wrapped the trained model's forward in the run's autocast; compare both without it
    ref = extract_model_from_parallel(trained["model"], keep_fp32_wrapper=False)
    ref.eval()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, ref(input_ids=ids).logits, rtol=0, atol=0)

    # `kormed eval ppl` on the adapter reproduces the training's last validation
    ppl_json = tmp_path / "ppl.json"
    with pytest.raises(SystemExit) as stop:
        main(["eval", "ppl", "--adapter", str(out), "--data", str(corpus[1]), "--max-length", "32", "--device", "cpu",
              "--dtype", "float32", "--output", str(ppl_json), "--quiet"])  # the training's precision
    assert stop.value.code in (0, None)
    ppl = json.loads(ppl_json.read_text())
    assert ppl["loss"] == pytest.approx(info["last_eval"]["eval_loss"], rel=1e-6)
    assert ppl["tokens"] == info["last_eval"]["eval_val_tokens"]

    # continuing the adapter stays 4-bit without being told, and records it again
    more = run_cpt(dataclasses.replace(_tiny_cfg(tiny_gemma3_dir, corpus, tmp_path / "more", quantize="none",
                                                 max_steps=1, eval_steps=1), adapter=str(out)), log=_quiet)
    assert more["quantization"] == "4bit-nf4" and read_adapter_meta(tmp_path / "more")["quantization"] == "4bit-nf4"

    # export --merge: the LoRA goes into the unquantized base (plain Linear weights, no quantization_config)
    merged = tmp_path / "merged"
    with pytest.raises(SystemExit) as stop:
        main(["export", "--adapter", str(out), "--merge", "--out", str(merged)])
    assert stop.value.code in (0, None)
    cfg = json.loads((merged / "config.json").read_text())
    assert "quantization_config" not in cfg
    from safetensors import safe_open

    with safe_open(str(merged / "model.safetensors"), "pt") as fh:
        keys = list(fh.keys())
        q = fh.get_tensor(next(k for k in keys if k.endswith("layers.0.self_attn.q_proj.weight")))
    assert not any("absmax" in k or "quant_state" in k for k in keys)
    assert q.dtype == torch.float32 and q.shape == (64, 64)
    # the merged weight is the ORIGINAL base weight + the LoRA delta (rsLoRA: alpha / sqrt(r)), not a dequantized one
    from safetensors.torch import load_file

    base = load_file(str(tiny_gemma3_dir / "model.safetensors"))
    lora = load_file(str(out / "adapter_model.safetensors"))
    base_q = next(v for k, v in base.items() if k.endswith("layers.0.self_attn.q_proj.weight"))
    a = next(v for k, v in lora.items() if "layers.0.self_attn.q_proj.lora_A" in k)
    b = next(v for k, v in lora.items() if "layers.0.self_attn.q_proj.lora_B" in k)
    delta = (b @ a) * (32 / 4 ** 0.5)
    assert delta.abs().max() > 0
    torch.testing.assert_close(q, base_q + delta, rtol=1e-5, atol=1e-6)


@needs_bnb
@pytest.mark.slow
@pytest.mark.heavy
def test_real_model_qlora_cpt_then_eval_ppl(embedded_model_dir, tmp_path):
    """2 steps of `kormed train cpt --quantize 4bit` on the embedded Gemma 3 270M; `kormed eval ppl` on the saved
    adapter equals the training's last validation perplexity."""
    from typer.testing import CliRunner

    from kormed.cli import app

    texts = _korean_texts()
    train = _write_jsonl(tmp_path / "train.jsonl", texts[:40])
    val = _write_jsonl(tmp_path / "val.jsonl", texts[70:72])
    out = tmp_path / "run"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"cpt:\n  max_val_samples: 2\n  cache_dir: {tmp_path / 'cache'}\n"
                   "  train: {gradient_checkpointing: false, report_to: [], warmup_ratio: 0.0}\n", encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(app, [
        "train", "cpt", "--config", str(cfg), "--data", str(train), "--val", str(val), "--output", str(out),
        "--max-steps", "2", "--max-samples", "8", "--batch-size", "2", "--grad-accum", "1", "--max-length", "64",
        "--lr", "3e-4", "--eval-steps", "2", "--device", "cpu", "--quantize", "4bit"])
    assert result.exit_code == 0, result.output
    info = json.loads((out / "training_info.json").read_text())
    assert info["quantization"] == "4bit-nf4"
    ppl_json = tmp_path / "ppl.json"
    result = runner.invoke(app, ["eval", "ppl", "--adapter", str(out), "--data", str(val), "--max-length", "64",
                                 "--device", "cpu", "--output", str(ppl_json), "--quiet"])
    assert result.exit_code == 0, result.output
    ppl = json.loads(ppl_json.read_text())
    print(f"real-model QLoRA CPT: validation perplexity {info['first_eval']['eval_perplexity']:.3f} -> "
          f"{info['last_eval']['eval_perplexity']:.3f}; eval ppl {ppl['perplexity']:.3f}")
    assert ppl["perplexity"] == pytest.approx(info["last_eval"]["eval_perplexity"], rel=1e-6)
