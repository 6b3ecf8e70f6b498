"""Fault suite of training: kill -9 at each phase of a checkpoint save then --resume, non-finite weights and
validation never make a "last good" checkpoint, a resume that changes the data order is refused (before the
model loads), and a resumed run logs the uninterrupted run's loss curve."""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_text_config

from kormed.errors import KormedError
from kormed.models import RuntimeSpec
from kormed.stop_reason import StopReason
from kormed.train.config import CPTConfig, LoraOptions, TrainOptions
from kormed.train.engine.checkpoints import checkpoint_problem, latest_good_checkpoint, non_finite_eval, plan_resume
from kormed.train.engine.model_setup import prepare_model_for_training
from kormed.train.engine.outputs import finish_run
from kormed.train.engine.stopping import StopRecord, non_finite_stop
from kormed.train.engine.trainer import CausalCollator, build_trainer, run_training

CPU = RuntimeSpec("cpu", "float32", "sdpa")
QUIET = lambda m: None  # noqa: E731


@pytest.fixture(scope="module")
def small_model(tmp_path_factory, real_tokenizer) -> Path:
    """A tiny Gemma 3 with a 1024-token vocabulary (fast logits)."""
    from transformers import Gemma3ForCausalLM

    torch.manual_seed(1)
    out = tmp_path_factory.mktemp("small-vocab")
    Gemma3ForCausalLM(tiny_text_config(vocab_size=1024)).save_pretrained(out, safe_serialization=True)
    real_tokenizer.save_pretrained(out)
    return out


def _dataset(n: int = 8, seed: int = 5):
    from datasets import Dataset

    rng = random.Random(seed)
    return Dataset.from_dict({"input_ids": [[2] + [rng.randrange(3, 1000) for _ in range(rng.randrange(6, 20))]
                                            for _ in range(n)]})


def _trainer(model_dir: Path, out: Path, tok, *, callbacks=(), eval_ds=None, **kw):
    torch.manual_seed(0)
    model, tok, _ = prepare_model_for_training(str(model_dir), lora=LoraOptions(dropout=0.1), runtime=CPU,
                                               log=QUIET, tokenizer=tok)
    opts = dict(batch_size=2, grad_accum=1, max_steps=4, eval_steps=1000, logging_steps=2, lr=5e-3,
                warmup_ratio=0.0, gradient_checkpointing=False, report_to=[], eval_on_start=False, seed=0,
                save_steps=1, save_total_limit=10)
    opts.update(kw)
    trainer = build_trainer(model, tok, _dataset(), eval_ds, CausalCollator(tok), TrainOptions(**opts),
                            out, callbacks=callbacks, runtime=CPU)
    return trainer, model


def _weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _losses(trainer) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e}


@pytest.fixture(scope="module")
def uninterrupted(small_model, real_tokenizer, tmp_path_factory):
    """A 4-step run with a checkpoint at every step and the loss logged every 2 steps."""
    out = tmp_path_factory.mktemp("full")
    trainer, model = _trainer(small_model, out, real_tokenizer)
    run_training(trainer, log=QUIET)
    return out, _weights(model), _losses(trainer)


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _later(ckpt: Path, *names: str) -> None:
    for name in names:
        (ckpt / name).unlink()


# kill -9 during the save of checkpoint-4: the Trainer writes the adapter, optimizer, scheduler, RNG state and
# trainer_state.json last; what each phase leaves behind, and the reason --resume gives for skipping it
PHASES = {
    "empty_dir": (lambda c: [shutil.rmtree(c), c.mkdir()], "no trainer_state.json"),
    "weights_only": (lambda c: _later(c, "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"),
                     "no trainer_state.json"),
    "truncated_optimizer": (lambda c: [_later(c, "scheduler.pt", "rng_state.pth", "trainer_state.json"),
                                       _truncate(c / "optimizer.pt")], "no trainer_state.json"),
    "no_trainer_state": (lambda c: _later(c, "trainer_state.json"), "no trainer_state.json"),
    "truncated_trainer_state": (lambda c: _truncate(c / "trainer_state.json"), "trainer_state.json unreadable"),
    "truncated_weights": (lambda c: _truncate(c / "adapter_model.safetensors"), "adapter_model.safetensors"),
    "truncated_rng_state": (lambda c: _truncate(c / "rng_state.pth", 0.9), "rng_state.pth truncated"),
    "no_optimizer": (lambda c: _later(c, "optimizer.pt"), "no optimizer state"),
}


def _crashed_copy(full: Path, dest: Path, phase: str) -> Path:
    shutil.copytree(full, dest)
    PHASES[phase][0](dest / "checkpoints" / "checkpoint-4")
    return dest


def test_every_kill_phase_is_skipped_with_one_line(uninterrupted, tmp_path):
    full = uninterrupted[0]
    assert checkpoint_problem(full / "checkpoints" / "checkpoint-4") is None
    for phase, (_, why) in PHASES.items():
        out = _crashed_copy(full, tmp_path / phase, phase)
        lines: list[str] = []
        plan = plan_resume(out, resume=True, log=lines.append)
        assert plan.resume_from.endswith("checkpoint-3"), phase
        assert len(lines) == 1 and "skipping checkpoint-4" in lines[0] and why in lines[0], (phase, lines)
        with pytest.raises(KormedError, match="--resume"):  # without --resume: refused, whatever their state
            plan_resume(out, resume=False, log=QUIET)


def test_deepspeed_layout_is_complete(uninterrupted, tmp_path):
    """DeepSpeed keeps optimizer and scheduler states in `global_stepN/` (+ a `latest` file): such a checkpoint is
    complete, not "no optimizer state" (which would have --resume delete every checkpoint); without them it is not."""
    import shutil

    ckpt = tmp_path / "checkpoint-4"
    shutil.copytree(uninterrupted[0] / "checkpoints" / "checkpoint-4", ckpt)
    (ckpt / "global_step4").mkdir()
    for f in list(ckpt.iterdir()):
        if f.name.startswith(("optimizer", "scheduler")):
            f.rename(ckpt / "global_step4" / f.name)
    assert checkpoint_problem(ckpt) == "incomplete: no optimizer state"  # no `latest`: not DeepSpeed's
    (ckpt / "latest").write_text("global_step4")
    assert checkpoint_problem(ckpt) is None


@pytest.mark.parametrize("phase", ["empty_dir", "no_trainer_state"])
def test_resume_after_kill_matches_uninterrupted_run(uninterrupted, small_model, real_tokenizer, tmp_path, phase):
    full, weights, losses = uninterrupted
    out = _crashed_copy(full, tmp_path / "crashed", phase)
    trainer, model = _trainer(small_model, out, real_tokenizer)
    lines: list[str] = []
    summary = run_training(trainer, resume=True, log=lines.append)
    assert summary["resumed_from"].endswith("checkpoint-3") and summary["global_step"] == 4
    assert any("skipping checkpoint-4" in line for line in lines)
    for name, value in weights.items():
        assert torch.equal(_weights(model)[name], value), name  # the same bytes
    # the loss logged at step 4 averages steps 3 and 4 as in the uninterrupted run (the window of the
    # checkpoint continues; restarting it would log step 4's loss alone)
    assert _losses(trainer)[4] == losses[4]
    assert checkpoint_problem(out / "checkpoints" / "checkpoint-4") is None  # saved again, complete


def test_resume_refuses_a_changed_data_order(uninterrupted, small_model, real_tokenizer, tmp_path):
    out = _crashed_copy(uninterrupted[0], tmp_path / "crashed", "empty_dir")
    for change, label in (({"seed": 1}, "--seed"), ({"batch_size": 4}, "--batch-size")):
        trainer, _ = _trainer(small_model, out, real_tokenizer, **change)
        with pytest.raises(KormedError, match=label) as exc:
            run_training(trainer, resume=True, log=QUIET)
        assert "\n" not in exc.value.message
    assert (out / "checkpoints" / "checkpoint-4").is_dir()  # nothing was touched by a refused resume


def _rewrite_safetensors(path: Path, poison) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    name = sorted(tensors)[0]
    tensors[name] = poison(tensors[name])
    save_file(tensors, str(path), metadata={"format": "pt"})


def test_non_finite_checkpoints_on_disk_are_not_good(uninterrupted, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(uninterrupted[0], out)
    ckpts = out / "checkpoints"
    _rewrite_safetensors(ckpts / "checkpoint-4" / "adapter_model.safetensors", lambda t: t * float("nan"))
    _rewrite_safetensors(ckpts / "checkpoint-3" / "adapter_model.safetensors", lambda t: t + float("inf"))
    state_file = ckpts / "checkpoint-2" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["log_history"].append({"step": 2, "eval_loss": float("nan"), "eval_val_loss": float("nan"),
                                 "eval_val_tokens": 40})
    state_file.write_text(json.dumps(state))
    good, skipped = latest_good_checkpoint(ckpts)
    assert good.endswith("checkpoint-1")
    assert [(Path(p).name, why.split(":")[0]) for p, why in skipped] == [
        ("checkpoint-4", "not finite"), ("checkpoint-3", "not finite"), ("checkpoint-2", "not finite")]
    assert "eval_val_loss" in skipped[2][1]
    # a validation set without target tokens has a NaN loss that is no sign of bad weights
    assert non_finite_eval({"eval_loss": float("nan"), "eval_val_loss": float("nan"),
                            "eval_val_tokens": 0}) is None
    # the guard's message names the last good checkpoint
    from transformers import TrainerControl

    stop, control = StopRecord(), TrainerControl()
    non_finite_stop(stop, control, 5, "loss", ckpts)
    assert stop.reason == StopReason.NON_FINITE_LOSS and stop.detail.endswith("checkpoint-1")
    assert control.should_training_stop and not control.should_save


class _At:
    """Runs `fn(trainer, state)` at on_step_end of step `step`."""

    def __init__(self, step, fn) -> None:
        self.step, self.fn, self.trainer = step, fn, None

    def __getattr__(self, name):
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            self.fn(self.trainer, state)


def test_nan_weights_are_never_checkpointed(small_model, real_tokenizer, tmp_path):
    """What `--lr inf` does after step 1 (weights NaN while the loss of that step was finite)."""

    def poison(trainer, state):
        with torch.no_grad():
            next(p for n, p in trainer.model.named_parameters() if "lora_B" in n).fill_(float("nan"))

    cb = _At(2, poison)
    trainer, _ = _trainer(small_model, tmp_path, real_tokenizer, callbacks=[cb])
    cb.trainer = trainer
    summary = run_training(trainer, log=QUIET)
    assert summary["stop_reason"] == StopReason.NON_FINITE_LOSS and summary["stop_step"] == 2
    assert "trainable weights" in summary["stop_detail"] and summary["stop_detail"].endswith("checkpoint-1")
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("checkpoint-*")) == ["checkpoint-1"]
    # the final adapter is not published either (SFT saves its step's adapter after any stop)
    full = finish_run(trainer, real_tokenizer, tmp_path / "adapter", {"stage": "test"},
                      {**summary, "stop_reason": "max_steps"})
    assert full.summary.stop_reason == StopReason.NON_FINITE_LOSS and "no adapter saved" in full.summary.stop_detail
    assert not (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    assert json.loads((tmp_path / "adapter" / "training_info.json").read_text())["stop_reason"] == "non_finite_loss"


def test_nan_validation_stops_without_a_checkpoint(small_model, real_tokenizer, tmp_path):
    flag = {"on": False}

    def hook(module, args, output):  # validation forwards from step 2 on give NaN final hidden states
        return output * float("nan") if flag["on"] and not module.training else output

    cb = _At(2, lambda trainer, state: flag.update(on=True))
    ds = _dataset(4, seed=9)
    trainer, model = _trainer(small_model, tmp_path, real_tokenizer, callbacks=[cb], eval_ds={"val": ds},
                              eval_steps=1)
    model.base_model.model.model.norm.register_forward_hook(hook)
    summary = run_training(trainer, log=QUIET)
    assert summary["stop_reason"] == StopReason.NON_FINITE_LOSS and summary["stop_step"] == 2
    assert "validation loss" in summary["stop_detail"] and summary["stop_detail"].endswith("checkpoint-1")
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("checkpoint-*")) == ["checkpoint-1"]


# --- CPT: the refusals come before the model loads ------------------------------------------------------------


@pytest.fixture(scope="module")
def cpt_run(tiny_gemma3_dir, tmp_path_factory):
    """A finished 2-step CPT run (a checkpoint at step 2) and its config."""
    from kormed.train.cpt import run_cpt

    root = tmp_path_factory.mktemp("cpt")
    texts = [f"한의학 문장 {i}: 기혈이 허하면 보법을 쓴다. 맥이 {i}번 뛴다." for i in range(16)]
    data, val = root / "train.jsonl", root / "val.jsonl"
    for path, part in ((data, texts[:12]), (val, texts[12:])):
        path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in part), encoding="utf-8")
    opts = dict(batch_size=2, grad_accum=1, max_steps=2, eval_steps=2, logging_steps=1, lr=5e-3, warmup_ratio=0.0,
                gradient_checkpointing=False, report_to=[], device="cpu", seed=0, eval_on_start=False)
    cfg = CPTConfig(data=str(data), val=str(val), model=str(tiny_gemma3_dir), output=str(root / "out"),
                    max_length=32, cache_dir=str(root / "cache"), lora=LoraOptions(dropout=0.0),
                    train=TrainOptions(**opts))
    run_cpt(cfg, log=QUIET)
    return cfg


def test_cpt_refusals_come_before_the_model_loads(cpt_run, tmp_path, monkeypatch):
    from kormed.train import cpt
    from kormed.train.cpt import run_cpt

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr(cpt, "prepare_model_for_training", no_model)
    with pytest.raises(KormedError, match="pass --resume"):
        run_cpt(cpt_run, log=QUIET)
    changed = Path(cpt_run.data).read_text(encoding="utf-8").replace("문장 3", "문장 three")
    other = tmp_path / "train.jsonl"
    other.write_text(changed, encoding="utf-8")
    resume = dataclasses.replace(cpt_run, resume=True)
    cases = [
        (dataclasses.replace(resume, data=str(other)), "training data"),
        (dataclasses.replace(resume, max_length=64), "--max-length"),
        (dataclasses.replace(resume, max_samples=10), "--max-samples"),
        (dataclasses.replace(resume, train=dataclasses.replace(resume.train, seed=7)), "--seed"),
    ]
    for cfg, label in cases:
        with pytest.raises(KormedError, match=label):
            run_cpt(cfg, log=QUIET)
    with pytest.raises(AssertionError, match="model was loaded"):  # the same settings pass the check
        run_cpt(resume, log=QUIET)


# --- issue 26 / 28: checkpoints written atomically, a resume that fits the run, state files of plain tensors ----


class TestCheckpointWrites:
    """A Trainer checkpoint's safetensors file goes through kormed's atomic writer (was SafetensorError and a partial
    file on a full disk; mode 0600)."""

    def test_full_disk_while_checkpointing(self, small_model, real_tokenizer, tmp_path, monkeypatch):
        import os

        import safetensors.torch
        from safetensors import SafetensorError

        from kormed.io import current_umask

        def full(tensors, filename, metadata=None):
            Path(filename).write_bytes(b"\0" * 100)  # what the library leaves before it fails
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

        cb = _At(2, lambda trainer, state: monkeypatch.setattr(safetensors.torch, "serialize_file", full))
        trainer, _ = _trainer(small_model, tmp_path, real_tokenizer, callbacks=[cb])
        cb.trainer = trainer
        with pytest.raises(KormedError) as exc:
            run_training(trainer, log=QUIET)
        ckpts = tmp_path / "checkpoints"
        assert "disk is full" in exc.value.message
        assert exc.value.path == str(ckpts / "checkpoint-2" / "adapter_model.safetensors")
        assert sorted(p.name for p in (ckpts / "checkpoint-2").iterdir() if p.name.startswith(".")) == []
        assert not (ckpts / "checkpoint-2" / "adapter_model.safetensors").exists()
        assert latest_good_checkpoint(ckpts)[0].endswith("checkpoint-1")
        mode = os.stat(ckpts / "checkpoint-1" / "adapter_model.safetensors").st_mode & 0o777
        assert mode == 0o666 & ~current_umask()  # the umask's mode, not the library's 0600


def _curve(trainer) -> list[dict]:
    """The logged entries of every step (the closing summary's train_loss averages only what this process trained,
    which the Trainer does for any resume, so it is left out) and the step the closing summary names."""
    history = trainer.state.log_history
    return [e for e in history if "train_loss" not in e] + [{"end": e["step"]} for e in history if "train_loss" in e]


@pytest.fixture(scope="module")
def stopped_at_max_steps(small_model, real_tokenizer, tmp_path_factory):
    """A run that ends at --max-steps 2 in the middle of its first epoch (4 batches), killed during the final
    adapter save: its checkpoints are complete, the adapter is not written."""
    out = tmp_path_factory.mktemp("max-steps")
    trainer, model = _trainer(small_model, out, real_tokenizer, max_steps=2, logging_steps=1)
    summary = run_training(trainer, log=QUIET)
    assert summary["global_step"] == 2
    return out, _weights(model), _curve(trainer)


class TestResumeEndsWhereTheRunEnds:
    """Issue 28: kill -9 during the final adapter save, then --resume: the resumed run trains no step past
    --max-steps (it trained a 3rd step here), so its curve and weights are the uninterrupted run's."""

    def test_resume_after_the_last_checkpoint(self, stopped_at_max_steps, small_model, real_tokenizer, tmp_path):
        full, weights, history = stopped_at_max_steps
        out = tmp_path / "crashed"
        shutil.copytree(full, out)
        trainer, model = _trainer(small_model, out, real_tokenizer, max_steps=2, logging_steps=1)
        summary = run_training(trainer, resume=True, log=QUIET)
        assert summary["resumed_from"].endswith("checkpoint-2")
        assert summary["global_step"] == 2 and trainer.state.global_step == 2
        assert _curve(trainer) == history  # the same logged curve (every logged step, nothing after step 2)
        for name, value in weights.items():
            assert torch.equal(_weights(model)[name], value), name
        assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
        full_info = finish_run(trainer, real_tokenizer, out / "adapter", {"stage": "test"}, summary)
        assert full_info.summary.global_step == 2 and (out / "adapter" / "adapter_model.safetensors").is_file()


    def test_resume_after_a_stop_condition(self, small_model, real_tokenizer, tmp_path):
        """The same for a run that a stop condition ended before --max-steps (here at step 2 of 4)."""

        def stop(trainer, state):
            trainer.stop_record.set(StopReason.EARLY_STOPPING, state.global_step, "no improvement")
            trainer.control.should_training_stop = True

        runs = {}
        for name in ("full", "resumed"):
            cb = _At(2, stop) if name == "full" else _At(99, stop)
            if name == "resumed":
                shutil.copytree(tmp_path / "full", tmp_path / name)
            trainer, model = _trainer(small_model, tmp_path / name, real_tokenizer, callbacks=[cb], logging_steps=1)
            cb.trainer = trainer
            summary = run_training(trainer, resume=name == "resumed", log=QUIET)
            runs[name] = (summary, _curve(trainer), _weights(model))
        (full, curve, weights), (resumed, resumed_curve, resumed_weights) = runs["full"], runs["resumed"]
        assert resumed["resumed_from"].endswith("checkpoint-2") and resumed["global_step"] == 2
        assert (resumed["stop_reason"], resumed["stop_step"]) == (full["stop_reason"], 2) == ("early_stopping", 2)
        assert resumed_curve == curve
        assert all(torch.equal(resumed_weights[n], v) for n, v in weights.items())


class _Pickled:
    """An object torch.save pickles by reference (not plain tensors); unpickled, it would write a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


class TestCheckpointStateFiles:
    """Issue 28: a checkpoint's rng_state.pth (or optimizer.pt) that is not plain tensors is refused in one line that
    names the checkpoint and never suggests weights_only=False (torch's message does); nothing is unpickled."""

    @pytest.mark.parametrize("name", ["rng_state.pth", "optimizer.pt"])
    def test_not_plain_tensors(self, name, uninterrupted, small_model, real_tokenizer, tmp_path):
        out = _crashed_copy(uninterrupted[0], tmp_path / "crashed", "empty_dir")  # resumes from checkpoint-3
        ckpt = out / "checkpoints" / "checkpoint-3"
        marker = tmp_path / "unpickled"
        torch.save({"python": _Pickled(marker), "state": _Pickled(marker)}, ckpt / name)
        assert checkpoint_problem(ckpt) is None  # a whole torch file: only loading it tells
        trainer, _ = _trainer(small_model, out, real_tokenizer)
        with pytest.raises(KormedError) as exc:
            run_training(trainer, resume=True, log=QUIET)
        text = str(exc.value)
        assert exc.value.path == str(ckpt) and name.split(".")[0] in exc.value.message
        assert "weights_only=False" not in text and "to `False`" not in text and "False" not in text
        assert "\n" not in exc.value.message
        assert not marker.exists()


class TestResumeRefusesAChangedModel:
    """--resume refuses a changed model shape (LoRA rank/alpha/targets, base model, tokenizer) in one line before the
    model loads, as it refuses changed data (a changed LoRA rank was a RuntimeError from load_state_dict)."""

    def test_changed_model_shape(self, cpt_run, tiny_gemma3_dir, tmp_path, monkeypatch):
        from kormed.train import cpt
        from kormed.train.cpt import run_cpt

        def no_model(*a, **k):
            raise AssertionError("the model was loaded before the refusal")

        monkeypatch.setattr(cpt, "prepare_model_for_training", no_model)
        other_model = tmp_path / "other-model"
        shutil.copytree(tiny_gemma3_dir, other_model)
        other_tok = tmp_path / "other-tokenizer"
        other_tok.mkdir()
        for f in tiny_gemma3_dir.iterdir():
            if f.name.startswith(("tokenizer", "special_tokens")):
                shutil.copy(f, other_tok / f.name)
        (other_tok / "tokenizer.json").write_text(json.dumps(json.loads(
            (other_tok / "tokenizer.json").read_text(encoding="utf-8")), ensure_ascii=False), encoding="utf-8")
        resume = dataclasses.replace(cpt_run, resume=True)
        lora = resume.lora
        cases = [
            (dataclasses.replace(resume, lora=dataclasses.replace(lora, r=8)), "LoRA rank"),
            (dataclasses.replace(resume, lora=dataclasses.replace(lora, alpha=64)), "LoRA alpha"),
            (dataclasses.replace(resume, lora=dataclasses.replace(lora, target_modules=["q_proj", "v_proj"])),
             "LoRA target modules"),
            (dataclasses.replace(resume, lora=dataclasses.replace(lora, use_rslora=False)), "rsLoRA"),
            (dataclasses.replace(resume, model=str(other_model)), "base model"),
            (dataclasses.replace(resume, tokenizer_path=str(other_tok)), "tokenizer"),
        ]
        for cfg, label in cases:
            with pytest.raises(KormedError, match=label) as exc:
                run_cpt(cfg, log=QUIET)
            assert "weights would not fit the model" in exc.value.message and "\n" not in exc.value.message
        with pytest.raises(AssertionError, match="model was loaded"):  # the same settings pass the check
            run_cpt(resume, log=QUIET)
