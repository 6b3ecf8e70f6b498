"""`--method full`: every language-model weight trains (fp32 master weights on a bf16 base), a multimodal
checkpoint's vision tower does not, and the saved model directory reloads to exactly the trained weights and is
what `kormed eval`, `kormed chat` and `kormed export` take as --model."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from kormed.cli import app
from kormed.models import RuntimeSpec, load_model
from kormed.train.config import CPTConfig, TrainOptions
from kormed.train.engine.model_setup import prepare_full_model
from kormed.train.engine.outputs import finish_run, is_full_model_dir
from kormed.train.engine.trainer import CausalCollator, build_trainer, run_training

FP32 = RuntimeSpec("cpu", "float32", "sdpa")
runner = CliRunner()
TEXTS = [f"환자는 {i}번째 진료에서 고혈압 검사를 받았고 혈압은 {120 + i}이었다." for i in range(14)]
QUIET = dict(log=lambda m: None)
NEW_TERMS = ["고혈압약", "당뇨병성", "심근경색증"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("full-corpus")
    train, val = root / "train.jsonl", root / "val.jsonl"
    train.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in TEXTS[:10]), "utf-8")
    val.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in TEXTS[10:]), "utf-8")
    return train, val


def _options(**kw) -> TrainOptions:
    opts = dict(batch_size=2, grad_accum=1, max_steps=2, eval_steps=1000, logging_steps=1, lr=1e-2, method="full",
                warmup_ratio=0.0, gradient_checkpointing=False, report_to=[], eval_on_start=False, seed=0,
                device="cpu")
    opts.update(kw)
    return TrainOptions(**opts)


def test_multimodal_full_training_on_bf16_base_freezes_vision_and_reloads_exactly(
    tiny_multimodal_dir, tmp_path, real_tokenizer
):
    """On a bf16 base the language weights train as fp32 masters and all move, the vision tower and projector stay
    frozen in bf16 (bit-identical), and the saved directory reloads to exactly the trained weights."""
    from datasets import Dataset

    bf16 = RuntimeSpec("cpu", "bfloat16", "sdpa", compute_dtype="float32")
    model, tok, info = prepare_full_model(str(tiny_multimodal_dir), bf16, tokenizer=real_tokenizer, **QUIET)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}  # bf16 -> fp32 upcasts are exact
    assert info["method"] == "full" and info["multimodal"] and info["frozen_params"] > 0
    for name, p in model.named_parameters():
        language = "language_model" in name
        assert p.requires_grad == language, name
        assert p.dtype == (torch.float32 if language else torch.bfloat16), name
    blocks = [[2, 100 + i, 200, 300 + i, 400, 1] for i in range(2)]
    trainer = build_trainer(model, tok, Dataset.from_dict({"input_ids": blocks}), None, CausalCollator(tok),
                            _options(max_steps=1, save_checkpoints=False), tmp_path / "run", runtime=bf16)
    finish_run(trainer, tok, tmp_path / "run", info, run_training(trainer, **QUIET))
    trained = {k: v.detach() for k, v in model.state_dict().items()}
    seen = torch.tensor(sorted({t for b in blocks for t in b}))
    for key, value in trained.items():
        if "vision_tower" in key or "multi_modal_projector" in key:
            assert value.dtype == torch.bfloat16 and torch.equal(value, before[key]), key
        elif "embed_tokens" in key or key == "lm_head.weight":
            assert not torch.equal(value[seen], before[key][seen]), key  # the rows seen
        else:
            assert not torch.equal(value, before[key]), key
    out = tmp_path / "run"
    assert is_full_model_dir(out) and not (out / "adapter_config.json").exists()
    again = load_model(str(out), dataclasses.replace(FP32))
    assert type(again).__name__ == "Gemma3ForConditionalGeneration"
    reloaded = again.state_dict()
    assert set(reloaded) == set(trained)
    for key, value in trained.items():
        assert torch.equal(reloaded[key], value.float()), key  # fp32 masters saved as trained; bf16 upcasts exactly


def test_full_training_with_8bit_adam_on_cpu(tiny_gemma3_dir, tmp_path, real_tokenizer):
    """`--train.optim adamw_bnb_8bit`: bitsandbytes' AdamW keeps its moments in 8 bits and every weight moves (its
    CPU backend runs it too)."""
    from datasets import Dataset

    model, tok, info = prepare_full_model(str(tiny_gemma3_dir), FP32, tokenizer=real_tokenizer, **QUIET)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    blocks = [[2, 100 + i, 200, 300 + i, 400, 1] for i in range(2)]
    trainer = build_trainer(model, tok, Dataset.from_dict({"input_ids": blocks}), None, CausalCollator(tok),
                            _options(max_steps=1, save_checkpoints=False, optim="adamw_bnb_8bit"), tmp_path / "run",
                            runtime=FP32)
    run_training(trainer, **QUIET)
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    assert type(optimizer).__module__.startswith("bitsandbytes")
    assert any(v.dtype == torch.uint8 for state in optimizer.state.values() for v in state.values()
               if isinstance(v, torch.Tensor))
    assert all(not torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_8bit_adam_without_bitsandbytes_is_one_line(tmp_path, corpus, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if it were not installed
    result = runner.invoke(app, ["train", "cpt", "--method", "full", "--train.optim", "adamw_bnb_8bit", "--data",
                                 str(corpus[0]), "--val", str(corpus[1]), "--output", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "train.optim adamw_bnb_8bit needs bitsandbytes" in result.output and "Traceback" not in result.output


@pytest.mark.heavy  # about two minutes on a 2-core CPU: two CPT runs, eval ppl, chat, a GGUF export
def test_cli_full_cpt_resume_then_eval_chat_and_export(tiny_gemma3_dir, corpus, tmp_path, real_tokenizer):
    """`kormed train cpt --method full` with an extended tokenizer, interrupted and resumed; the directory (grown
    vocabulary) is --model for eval ppl (the number equals CPT's last validation), chat and export --gguf (where
    llama.cpp's converter is installed); export --merge says it is already a full model."""
    from kormed.train.cpt import run_cpt

    ext = tmp_path / "ext"
    tok = real_tokenizer.__class__.from_pretrained(tiny_gemma3_dir)
    tok.add_tokens(["고혈압", "진료에서"])
    tok.save_pretrained(ext)
    out = tmp_path / "cpt"
    cfg = CPTConfig(data=str(corpus[0]), val=str(corpus[1]), model=str(tiny_gemma3_dir), output=str(out),
                    max_length=32, cache_dir=str(tmp_path / "cache"), tokenizer_path=str(ext),
                    train=_options(max_steps=3, eval_steps=2, lr=5e-3, dtype="float32", load_best_at_end=False))

    from transformers import TrainerCallback

    class Sigterm(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 1:
                os.kill(os.getpid(), signal.SIGTERM)

    info = run_cpt(cfg, callbacks=[Sigterm()], **QUIET)
    assert info["stop_reason"] == "interrupted" and not (out / "model.safetensors").exists()
    info = run_cpt(dataclasses.replace(cfg, resume=True), **QUIET)
    assert info["stop_reason"] == "completed" and info["global_step"] == 3 and info["resumed_from"]
    assert info["method"] == "full" and info["trainable_percent"] == 100.0 and info["tokenizer"]["new_tokens"] == 2
    assert is_full_model_dir(out) and (out / "tokenizer.json").is_file()

    ppl_json = tmp_path / "ppl.json"
    result = runner.invoke(app, ["eval", "ppl", "--model", str(out), "--data", str(corpus[1]), "--max-length", "32",
                                 "--device", "cpu", "--dtype", "float32", "--output", str(ppl_json)])
    assert result.exit_code == 0, result.output
    ppl = json.loads(ppl_json.read_text())
    assert ppl["perplexity"] == pytest.approx(info["last_eval"]["eval_perplexity"], rel=1e-5)

    result = runner.invoke(app, ["chat", "--model", str(out), "--prompt", "안녕하세요", "--max-new-tokens", "3",
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["export", "--model", str(out), "--merge", "--out", str(tmp_path / "merged")])
    assert result.exit_code == 2 and "already a full model" in result.output
    from kormed.export.gguf import find_converter

    try:
        find_converter()
    except Exception:  # noqa: BLE001 - the converter is installed once with --fetch-converter (a download)
        return
    result = runner.invoke(app, ["export", "--model", str(out), "--gguf", "--out", str(tmp_path / "gguf")])
    assert result.exit_code == 0, result.output
    assert list((tmp_path / "gguf").glob("*.gguf"))


@pytest.mark.parametrize("args, message", [
    (["--quantize", "4bit"], "--quantize 4bit (QLoRA)"),
    (["--adapter", "{adapter}"], "--adapter continues a LoRA adapter"),
])
def test_full_method_refuses_qlora_and_an_adapter(tmp_path, corpus, args, message):
    args = [a.replace("{adapter}", str(tmp_path)) for a in args]
    result = runner.invoke(app, ["train", "cpt", "--method", "full", "--data", str(corpus[0]), "--val",
                                 str(corpus[1]), "--output", str(tmp_path / "out"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_sft_full_method_refuses_from_adapter(tmp_path):
    result = runner.invoke(app, ["train", "sft", "--method", "full", "--from-adapter", str(tmp_path),
                                 "--output", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "--from-adapter continues a LoRA adapter" in result.output


@pytest.mark.heavy  # two SFT steps, a --from-step rerun and a one-round loop on the tiny model: about two minutes
def test_sft_and_loop_full_method_hand_on_model_directories(tmp_path, tiny_gemma3_dir):
    """`kormed train sft --method full`: each step saves a full model directory, --from-step starts from the previous
    step's directory (and reproduces the uninterrupted step); `kormed train loop --method full` copies the best
    round's model directory to best/."""
    import yaml
    from safetensors.torch import load_file
    from test_sft_pipeline import TRAIN_FAST, _data_args, seeds_steps

    from kormed.sample_data import sample_paths

    cfg = tmp_path / "sft.yaml"
    steps = seeds_steps({1: {"max_steps": 1}, 2: {"max_steps": 1}})[:2]
    cfg.write_text(yaml.safe_dump({"sft": {"val_max": 2, "max_length": 96, "train": TRAIN_FAST, "steps": steps}}))
    out = tmp_path / "sft"
    args = ["train", "sft", "--config", str(cfg), *_data_args(tmp_path), "--model", str(tiny_gemma3_dir),
            "--output", str(out), "--device", "cpu", "--method", "full"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    for step in ("step1", "step2"):
        assert is_full_model_dir(out / step) and not (out / step / "adapter_config.json").exists()
        assert json.loads((out / step / "training_info.json").read_text())["method"] == "full"
    resumed = tmp_path / "resumed"
    import shutil

    shutil.copytree(out, resumed)
    shutil.rmtree(resumed / "step2")
    result = runner.invoke(app, [a if a != str(out) else str(resumed) for a in args] + ["--from-step", "2"])
    assert result.exit_code == 0, result.output
    a, b = load_file(out / "step2" / "model.safetensors"), load_file(resumed / "step2" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] - b[k]).abs().max().item() < 1e-5 for k in a)

    p = sample_paths()
    loop_cfg = tmp_path / "loop.yaml"
    loop_cfg.write_text(yaml.safe_dump({"loop": {"val_max": 2, "max_length": 96, "train": TRAIN_FAST,
                                                 "eval_max_new_tokens": 4, "eval_batch_size": 4}}))
    loop = tmp_path / "loop"
    result = runner.invoke(app, ["train", "loop", "--config", str(loop_cfg), "--mcq", str(p["mcq_train"]), "--dict",
                                 str(p["medical_dict"]), "--eval-data", str(p["mcq_test"]), "--eval-limit", "4",
                                 "--max-rounds", "1", "--max-steps-per-round", "1", "--target", "0.99", "--model",
                                 str(out / "step2"), "--output", str(loop), "--device", "cpu", "--method", "full"])
    assert result.exit_code == 0, result.output
    assert is_full_model_dir(loop / "best") and (loop / "best" / "model.safetensors").is_file()
    assert (loop / "best" / "best.json").is_file()


def test_a_model_directory_given_as_adapter_says_to_pass_it_as_model(tiny_gemma3_dir, tmp_path):
    """A full fine-tune's output (a model directory) given to --adapter: the error says to pass it as --model."""
    data = tmp_path / "val.jsonl"
    data.write_text(json.dumps({"text": TEXTS[0]}, ensure_ascii=False) + "\n", encoding="utf-8")
    result = runner.invoke(app, ["eval", "ppl", "--adapter", str(tiny_gemma3_dir), "--data", str(data)])
    assert result.exit_code == 2, result.output
    assert "it is a full model directory" in result.output and "pass it as --model" in result.output
