"""The shared training engine: loss independent of accumulation, NaN guard, early stopping, interrupt + resume,
tied embeddings through save / reload / merge, new-token rows, and the multimodal checkpoint path."""

from __future__ import annotations

import json
import math
import os
import random
import signal
from pathlib import Path

import pytest
import torch
from conftest import tiny_multimodal_config, tiny_text_config

from kormed.models import RuntimeSpec, load_model_and_tokenizer
from kormed.stop_reason import StopReason
from kormed.train.config import LoraOptions, TrainOptions
from kormed.train.engine.checkpoints import latest_good_checkpoint
from kormed.train.engine.model_setup import prepare_model_for_training
from kormed.train.engine.outputs import finish_run
from kormed.train.engine.processes import effective_grad_accum
from kormed.train.engine.stopping import StopRecord
from kormed.train.engine.trainer import CausalCollator, build_trainer, run_training, training_arguments

CPU = RuntimeSpec("cpu", "float32", "sdpa")
TOK = None  # the real tokenizer, shared by every test (loading it takes seconds)


@pytest.fixture(autouse=True)
def _shared_tokenizer(real_tokenizer):
    global TOK
    TOK = real_tokenizer


@pytest.fixture(scope="module")
def small_vocab_dir(tmp_path_factory, real_tokenizer) -> Path:
    """A tiny Gemma 3 with a 1024-token vocabulary (fast logits); fine for engine tests that never reload it."""
    from transformers import Gemma3ForCausalLM

    torch.manual_seed(1)
    out = tmp_path_factory.mktemp("small-vocab")
    Gemma3ForCausalLM(tiny_text_config(vocab_size=1024)).save_pretrained(out, safe_serialization=True)
    real_tokenizer.save_pretrained(out)
    return out


def _blocks(n: int, seed: int = 0, vocab: int = 1000, lo: int = 6, hi: int = 30) -> list[list[int]]:
    rng = random.Random(seed)
    return [[2] + [rng.randrange(3, vocab) for _ in range(rng.randrange(lo, hi))] for _ in range(n)]


def _dataset(blocks):
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": blocks})


def _opts(**kw) -> TrainOptions:
    base = dict(batch_size=2, grad_accum=1, max_steps=2, eval_steps=1000, logging_steps=1, lr=1e-2,
                warmup_ratio=0.0, gradient_checkpointing=False, report_to=[], eval_on_start=False, seed=0)
    base.update(kw)
    return TrainOptions(**base)


def _lora_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_training_arguments_take_the_warmup_ratio_as_a_fraction_of_the_steps(tmp_path):
    # transformers 5: warmup_steps below 1 is a ratio of the total steps (warmup_ratio is deprecated)
    args = training_arguments(_opts(warmup_ratio=0.1, max_steps=50), CPU, tmp_path, has_eval=False)
    assert args.get_warmup_steps(50) == 5 and args.get_warmup_steps(200) == 20
    assert args.output_dir == str(tmp_path / "checkpoints") and args.eval_strategy == "no"
    assert training_arguments(_opts(max_steps=0), CPU, tmp_path, has_eval=True).max_steps == -1  # 0: no limit


def test_a_warm_up_under_two_steps_is_dropped_so_the_first_step_learns(small_vocab_dir, tmp_path):
    """warmup_ratio 0.05 of a 1-step run rounds up to 1 warm-up step, which would run that step at learning rate 0
    (the LoRA weights would not move); it is dropped and the log says so. A warm-up of 2 steps or more stays."""
    torch.manual_seed(0)
    model, tok, _ = prepare_model_for_training(str(small_vocab_dir), lora=LoraOptions(dropout=0.0), runtime=CPU,
                                               log=lambda m: None, tokenizer=TOK)
    before = _lora_state(model)
    trainer = build_trainer(model, tok, _dataset(_blocks(4)), None, CausalCollator(tok),
                            _opts(max_steps=1, warmup_ratio=0.05, optim="sgd", lr=0.5), tmp_path / "short",
                            runtime=CPU)
    lines: list[str] = []
    run_training(trainer, log=lines.append)
    after = _lora_state(model)
    assert any(not torch.equal(after[n], before[n]) for n in before if "lora_B" in n)  # the one step learned
    assert any("warm-up of 1 optimizer step of 1 dropped" in line for line in lines)
    kept = build_trainer(model, tok, _dataset(_blocks(4)), None, CausalCollator(tok),
                         _opts(max_steps=40, warmup_ratio=0.05), tmp_path / "long", runtime=CPU)
    kept.create_optimizer()
    kept.create_scheduler(num_training_steps=40)
    assert kept.args.get_warmup_steps(40) == 2 and kept.lr_scheduler.get_last_lr()[0] == 0.0  # a real warm-up


def test_the_trainer_gets_its_runtime_and_loss_at_construction_and_hands_itself_to_callbacks(small_vocab_dir, tmp_path):
    from transformers import TrainerCallback

    from kormed.train.engine.callbacks import TrainerAware

    class Own(TrainerAware):
        pass

    class Plain(TrainerCallback):  # no attach: never given the trainer
        pass

    model, tok, _ = prepare_model_for_training(str(small_vocab_dir), lora=LoraOptions(), runtime=CPU,
                                               log=lambda m: None, tokenizer=TOK)
    own, plain = Own(), Plain()
    trainer = build_trainer(model, tok, _dataset(_blocks(4)), None, CausalCollator(tok),
                            _opts(loss_impl="chunked", loss_chunk_size=64), tmp_path, callbacks=[own, plain],
                            runtime=CPU)
    assert trainer.runtime is CPU
    assert (trainer.loss_spec.impl, trainer.loss_spec.chunk_size) == ("chunked", 64)
    assert own.trainer is trainer and not hasattr(plain, "trainer")
    attached = [c for c in trainer.callback_handler.callbacks if isinstance(c, TrainerAware)]
    assert len(attached) >= 4 and all(c.trainer is trainer for c in attached)  # the engine's own guards too
    with pytest.raises(TypeError, match="runtime"):
        type(trainer)(model=model, args=trainer.args, loss_spec=trainer.loss_spec)


def test_collator_masks_only_padding(real_tokenizer):
    collate = CausalCollator(pad_id=1)  # pad == <eos>: a real <eos> must stay a target
    batch = collate([{"input_ids": [2, 5, 1]}, {"input_ids": [2, 7, 8, 1, 9]}])
    assert batch["input_ids"].tolist() == [[2, 5, 1, 1, 1], [2, 7, 8, 1, 9]]
    assert batch["labels"].tolist() == [[2, 5, 1, -100, -100], [2, 7, 8, 1, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    sft = collate([{"input_ids": [2, 5, 6], "labels": [-100, -100, 6]}])
    assert sft["labels"].tolist() == [[-100, -100, 6]]


def test_effective_grad_accum_keeps_batch():
    opts = TrainOptions()
    assert effective_grad_accum(opts, 1) == 16
    assert effective_grad_accum(opts, 2) == 8
    assert effective_grad_accum(opts, 8) == 2
    assert effective_grad_accum(TrainOptions(scale_accum=False), 4) == 16


def test_accumulation_1_vs_4_same_loss_and_update(small_vocab_dir, tmp_path):
    """Same 8 sequences of different lengths: batch 8 x GA 1 vs batch 2 x GA 4 log the same loss (the
    token-weighted mean, not GA times it) and make the same SGD update."""
    from kormed.eval.perplexity import evaluate_perplexity

    blocks = _blocks(8, seed=3)
    results = []
    for bs, ga in ((8, 1), (2, 4)):
        torch.manual_seed(0)
        model, tok, _ = prepare_model_for_training(
            str(small_vocab_dir), lora=LoraOptions(dropout=0.0), runtime=CPU, log=lambda m: None, tokenizer=TOK
        )
        if not results:
            # LoRA B starts at zero, so the first loss is the base model's token-weighted NLL on these blocks
            expected = evaluate_perplexity(model, blocks, batch_size=3, progress=False)["loss"]
        opts = _opts(batch_size=bs, grad_accum=ga, max_steps=1, optim="sgd", lr=0.5, max_grad_norm=1e9)
        trainer = build_trainer(model, tok, _dataset(blocks), None, CausalCollator(tok), opts,
                                tmp_path / f"bs{bs}", runtime=CPU)
        run_training(trainer, log=lambda m: None)
        log = next(e for e in trainer.state.log_history if "loss" in e)
        results.append((log["loss"], log["grad_norm"], _lora_state(model)))
    (loss1, gn1, w1), (loss4, gn4, w4) = results
    assert loss1 == pytest.approx(expected, rel=1e-5)
    assert loss4 == pytest.approx(loss1, rel=1e-5)
    assert gn4 == pytest.approx(gn1, rel=1e-4)
    moved = False
    for name in w1:
        torch.testing.assert_close(w4[name], w1[name], rtol=1e-4, atol=1e-6)
        moved |= bool(w1[name].abs().sum() > 0) and "lora_B" in name
    assert moved, "the SGD step did not change the LoRA weights"


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(small_vocab_dir, tmp_path):
    model, tok, _ = prepare_model_for_training(str(small_vocab_dir), runtime=CPU, log=lambda m: None,
                                                       tokenizer=TOK)
    calls = {"n": 0}

    def poison(module, args, output):  # the 3rd training forward (step 3) gives NaN final hidden states
        if module.training:
            calls["n"] += 1
            if calls["n"] == 3:
                return output * float("nan")
        return output

    # the final norm, not the logits: kormed's loss projects the hidden states itself (kormed.loss)
    model.base_model.model.model.norm.register_forward_hook(poison)
    opts = _opts(max_steps=5, save_steps=2, save_total_limit=5)
    trainer = build_trainer(model, tok, _dataset(_blocks(16)), None, CausalCollator(tok), opts,
                            tmp_path, runtime=CPU)
    summary = run_training(trainer, log=lambda m: None)
    assert summary["stop_reason"] == StopReason.NON_FINITE_LOSS
    assert summary["stop_step"] == 3
    assert "checkpoint-2" in summary["stop_detail"]
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir())
    assert ckpts == ["checkpoint-2"]
    # the bad update was never applied: weights in memory are finite
    assert all(torch.isfinite(p).all() for p in _lora_state(model).values())


def test_early_stopping_logic():
    from transformers import TrainerControl, TrainerState

    from kormed.train.engine.callbacks import EarlyStopping

    def run(values, **kw):
        stop = StopRecord()
        cb = EarlyStopping(stop, **kw)
        state, control = TrainerState(), TrainerControl()
        for i, v in enumerate(values):
            state.global_step = i + 1
            cb.on_evaluate(None, state, control, metrics={"eval_loss": v, "eval_perplexity": math.exp(v)})
            if control.should_training_stop:
                return stop, i
        return stop, None

    # improvements smaller than min_delta count as no improvement
    stop, at = run([3.0, 2.5, 2.495, 2.49, 2.6, 1.0], patience=3, min_delta=0.01)
    assert (stop.reason, at) == (StopReason.EARLY_STOPPING, 4)
    stop, at = run([3.0, 2.5, 2.4, 2.3], patience=2, min_delta=0.01)
    assert at is None and stop.reason is None
    stop, at = run([3.0, 1.5, 1.0], patience=5, min_delta=0.01, target_perplexity=3.0)  # exp(1.0) < 3
    assert (stop.reason, at) == (StopReason.TARGET_PERPLEXITY, 2)
    # patience None: never stops for lack of improvement (SFT steps stop on their own conditions)
    stop, at = run([3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0], patience=None, min_delta=0.01)
    assert at is None and stop.reason is None


def test_no_periodic_checkpoints_when_switched_off(small_vocab_dir, tmp_path):
    """save_checkpoints false: the run validates but writes no checkpoint directory (and selects no best one)."""
    model, tok, _ = prepare_model_for_training(str(small_vocab_dir), runtime=CPU, log=lambda m: None,
                                               tokenizer=TOK)
    ds = _dataset(_blocks(8))
    opts = _opts(max_steps=4, eval_steps=1, save_steps=1, save_checkpoints=False, load_best_at_end=True)
    trainer = build_trainer(model, tok, ds, {"val": ds.select(range(4))}, CausalCollator(tok), opts,
                            tmp_path, runtime=CPU)
    assert trainer.args.save_strategy == "no" and not trainer.args.load_best_model_at_end
    summary = run_training(trainer, log=lambda m: None)
    assert summary["global_step"] == 4
    ckpts = tmp_path / "checkpoints"
    assert not ckpts.exists() or not any(p.name.startswith("checkpoint-") for p in ckpts.iterdir())


def test_early_stopping_in_a_run(small_vocab_dir, tmp_path):
    model, tok, _ = prepare_model_for_training(str(small_vocab_dir), runtime=CPU, log=lambda m: None,
                                                       tokenizer=TOK)
    ds = _dataset(_blocks(8))
    opts = _opts(lr=1e-12, max_steps=10, eval_steps=1, eval_on_start=True, early_stopping_patience=2)
    trainer = build_trainer(model, tok, ds, {"val": ds.select(range(4))}, CausalCollator(tok), opts,
                            tmp_path, runtime=CPU)
    summary = run_training(trainer, log=lambda m: None)
    assert summary["stop_reason"] == StopReason.EARLY_STOPPING
    assert summary["global_step"] == 2  # evals at 0 (best), 1, 2 without improvement
    assert summary["first_eval"]["eval_val_tokens"] == sum(len(b) - 1 for b in ds.select(range(4))["input_ids"])


class _SigtermAt:
    """Sends SIGTERM to this very process when step `step` begins (what a scheduler or Ctrl-C does)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def __getattr__(self, name):  # TrainerCallback protocol: every other event is a no-op
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step - 1:
            os.kill(os.getpid(), signal.SIGTERM)


def test_interrupt_saves_checkpoint_and_resume_matches_uninterrupted(small_vocab_dir, tmp_path):
    blocks = _blocks(6, seed=5)  # 6 steps x batch 2 = 2 epochs: resume must keep the data order across epochs

    def make(out, callbacks=()):
        torch.manual_seed(0)
        model, tok, _ = prepare_model_for_training(
            str(small_vocab_dir), lora=LoraOptions(dropout=0.1), runtime=CPU, log=lambda m: None, tokenizer=TOK
        )
        opts = _opts(max_steps=6, save_steps=100, lr=5e-3, warmup_ratio=0.2)
        return build_trainer(model, tok, _dataset(blocks), None, CausalCollator(tok), opts, out,
                             callbacks=callbacks, runtime=CPU), model

    full, full_model = make(tmp_path / "full")
    run_training(full, log=lambda m: None)

    out = tmp_path / "cut"
    cut, _ = make(out, callbacks=[_SigtermAt(3)])
    previous = signal.getsignal(signal.SIGTERM)
    summary = run_training(cut, log=lambda m: None)
    assert signal.getsignal(signal.SIGTERM) == previous  # handler restored
    assert summary["stop_reason"] == StopReason.INTERRUPTED and summary["stop_step"] == 3
    assert latest_good_checkpoint(out / "checkpoints")[0].endswith("checkpoint-3")
    with pytest.raises(Exception, match="--resume"):
        run_training(make(out)[0], log=lambda m: None)  # stale checkpoints without --resume

    resumed, resumed_model = make(out)
    summary = run_training(resumed, resume=True, log=lambda m: None)
    assert summary["global_step"] == 6 and summary["stop_reason"] == StopReason.COMPLETED
    assert summary["resumed_from"].endswith("checkpoint-3")
    a, b = _lora_state(full_model), _lora_state(resumed_model)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-7)


def _logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits


def test_tied_embeddings_train_save_reload_merge(tiny_gemma3_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from kormed.export.merge import export_merged

    torch.manual_seed(0)
    lora = LoraOptions(dropout=0.0, train_embeddings=True)
    model, tok, info = prepare_model_for_training(str(tiny_gemma3_dir), lora=lora, runtime=CPU,
                                                  log=lambda m: None, tokenizer=TOK)
    assert info["embeddings_tied"]
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight  # ONE trained matrix
    blocks = _blocks(4, vocab=400)
    opts = _opts(max_steps=2, lr=5e-2)
    trainer = build_trainer(model, tok, _dataset(blocks), None, CausalCollator(tok), opts,
                            tmp_path / "run", runtime=CPU, embedding_lr=1e-2)
    lrs = sorted(g["lr"] for g in trainer.create_optimizer().param_groups)
    assert lrs[0] == pytest.approx(1e-2) and lrs[-1] == pytest.approx(5e-2)
    summary = run_training(trainer, log=lambda m: None)
    finish_run(trainer, tok, tmp_path / "run", info, summary)
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer/tokenizer.json",
                 "training_info.json", "training_curves.png"):
        assert (tmp_path / "run" / name).exists(), name

    ids = blocks[0]
    ref = _logits(model, ids)
    reloaded, _, _ = load_model_and_tokenizer(str(tiny_gemma3_dir), adapter=tmp_path / "run", runtime=CPU,
                                              log=lambda m: None)
    torch.testing.assert_close(_logits(reloaded, ids), ref)

    export_merged(tmp_path / "run", tmp_path / "merged", model=str(tiny_gemma3_dir), log=lambda m: None)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    base = AutoModelForCausalLM.from_pretrained(tiny_gemma3_dir)
    assert merged.get_input_embeddings().weight is merged.get_output_embeddings().weight
    assert not torch.equal(merged.get_input_embeddings().weight, base.get_input_embeddings().weight)  # trained
    torch.testing.assert_close(_logits(merged, ids), ref, rtol=1e-4, atol=1e-4)
    prompt = torch.tensor([ids[:6]])
    model.eval()
    same = model.generate(input_ids=prompt, max_new_tokens=8, do_sample=False)
    assert merged.generate(input_ids=prompt, max_new_tokens=8, do_sample=False).tolist() == same.tolist()


def test_new_token_rows_only(tiny_gemma3_dir, tmp_path, real_tokenizer):
    """An extended tokenizer: the embeddings grow (multiple of 64), only the new rows train, tie kept."""
    from transformers import AutoModelForCausalLM

    from kormed.export.merge import export_merged

    ext = tmp_path / "ext-tok"
    tok = real_tokenizer.__class__.from_pretrained(tiny_gemma3_dir)
    tok.add_tokens(["고혈압약", "당뇨병성", "심근경색증"])
    tok.save_pretrained(ext)
    torch.manual_seed(0)
    lora = LoraOptions(dropout=0.0, train_embeddings=True, embedding_rows="new")
    model, tok, info = prepare_model_for_training(str(tiny_gemma3_dir), lora=lora, runtime=CPU,
                                                  tokenizer_path=ext, log=lambda m: None, tokenizer=TOK)
    assert info["tokenizer"]["new_tokens"] == 3
    assert model.get_input_embeddings().weight.shape[0] % 64 == 0
    new_ids = tok.convert_tokens_to_ids(["고혈압약", "당뇨병성", "심근경색증"])
    blocks = [[2, new_ids[0], 100, new_ids[1], 200, new_ids[2], 300, 1] for _ in range(4)]
    trainer = build_trainer(model, tok, _dataset(blocks), None, CausalCollator(tok),
                            _opts(max_steps=2, lr=5e-2), tmp_path / "run", runtime=CPU)
    summary = run_training(trainer, log=lambda m: None)
    finish_run(trainer, tok, tmp_path / "run", info, summary)
    ref = _logits(model, blocks[0])
    reloaded, rtok, _ = load_model_and_tokenizer(str(tiny_gemma3_dir), adapter=tmp_path / "run", runtime=CPU,
                                                 log=lambda m: None)
    assert len(rtok) == len(tok)
    torch.testing.assert_close(_logits(reloaded, blocks[0]), ref)
    export_merged(tmp_path / "run", tmp_path / "merged", log=lambda m: None)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    base = AutoModelForCausalLM.from_pretrained(tiny_gemma3_dir)
    torch.testing.assert_close(_logits(merged, blocks[0]), ref, rtol=1e-4, atol=1e-4)
    w, w0 = merged.get_input_embeddings().weight, base.get_input_embeddings().weight
    assert torch.equal(w[: w0.shape[0]], w0)  # base rows untouched
    assert merged.get_output_embeddings().weight is w


def test_multimodal_checkpoint_trains_language_model_only(tmp_path, real_tokenizer):
    """MedGemma-4B shape: Gemma3ForConditionalGeneration with a vision tower, trained with the text tokenizer."""
    from transformers import Gemma3ForConditionalGeneration

    from kormed.export.merge import export_merged

    cfg = tiny_multimodal_config()
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny-mm"
    Gemma3ForConditionalGeneration(cfg).save_pretrained(ckpt, safe_serialization=True)
    real_tokenizer.save_pretrained(ckpt)

    model, tok, info = prepare_model_for_training(str(ckpt), lora=LoraOptions(dropout=0.0), runtime=CPU,
                                                  log=lambda m: None, tokenizer=TOK)
    assert info["multimodal"]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("language_model" in n and "lora_" in n for n in trainable)
    blocks = _blocks(4, vocab=400)
    trainer = build_trainer(model, tok, _dataset(blocks), {"val": _dataset(blocks[:2])},
                            CausalCollator(tok), _opts(max_steps=2, lr=5e-2), tmp_path / "run",
                            runtime=CPU)
    summary = run_training(trainer, log=lambda m: None)
    finish_run(trainer, tok, tmp_path / "run", info, summary)
    cfg_json = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert cfg_json["base_model_name_or_path"] == str(ckpt)
    ref = _logits(model, blocks[0])
    reloaded, _, _ = load_model_and_tokenizer(None, adapter=tmp_path / "run", runtime=CPU, log=lambda m: None)
    assert type(reloaded.base_model.model).__name__ == "Gemma3ForConditionalGeneration"
    torch.testing.assert_close(_logits(reloaded, blocks[0]), ref)
    report = export_merged(tmp_path / "run", tmp_path / "merged", log=lambda m: None)
    assert report["class"] == "Gemma3ForConditionalGeneration"
    merged = Gemma3ForConditionalGeneration.from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(_logits(merged, blocks[0]), ref, rtol=1e-4, atol=1e-4)
