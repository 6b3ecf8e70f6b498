"""The TrainerCallbacks every kormed training run has: non-finite loss guard, interrupt-and-checkpoint, early
stopping, tokens/s, resumed loss-logging window. They share a :class:`kormed.train.engine.stopping.StopRecord` that says
why a run stopped."""

from __future__ import annotations

import math
import time
from typing import Any

from transformers import TrainerCallback

from kormed.stop_reason import StopReason
from kormed.train.engine.checkpoints import non_finite_eval
from kormed.train.engine.stopping import SignalFlag, StopRecord, non_finite_stop


class TrainerAware(TrainerCallback):
    """A callback that needs its trainer: :func:`kormed.train.engine.trainer.build_trainer` hands it over once,
    through `attach`, the one way in for every callback (kormed's, a recipe's, KorMedMCQACallback)."""

    trainer: Any = None

    def attach(self, trainer: Any) -> None:
        self.trainer = trainer


class NonFiniteLossGuard(TrainerAware):
    """Stop at the first NaN/inf loss BEFORE the optimizer applies it (gradients are dropped), or at a NaN/inf
    validation loss (that step's checkpoint is not saved); the trainer also refuses to save a checkpoint with
    non-finite weights. The stop names the last GOOD checkpoint: complete, with finite validation losses and
    weights (:func:`kormed.train.engine.checkpoints.checkpoint_problem`)."""

    def __init__(self, stop: StopRecord) -> None:
        self.stop = stop

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if self.trainer is None or not self.trainer.pop_nonfinite():
            return control
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)  # AdamW skips parameters without a gradient
        non_finite_stop(self.stop, control, state.global_step + 1, "loss", args.output_dir)
        return control

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        key = non_finite_eval(metrics)
        if key is not None:
            non_finite_stop(self.stop, control, state.global_step, f"validation loss ({key})", args.output_dir)
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if self.stop.reason == StopReason.NON_FINITE_LOSS:
            control.should_save = False
            control.should_evaluate = False
            control.should_training_stop = True
        return control


class ResumeLogWindow(TrainerAware):
    """On resume, continue the loss-logging window of the checkpoint (KormedTrainer.restore_log_window)."""

    def on_train_begin(self, args, state, control, **kwargs):
        if self.trainer is not None and hasattr(self.trainer, "restore_log_window"):
            self.trainer.restore_log_window()
        return control


class InterruptCallback(TrainerAware):
    """On SIGINT/SIGTERM: finish the current optimizer step, save a checkpoint, stop (resume with --resume)."""

    def __init__(self, stop: StopRecord) -> None:
        self.stop = stop
        self.flag = SignalFlag()

    def on_train_begin(self, args, state, control, **kwargs):
        self.flag.install()
        return control

    def on_step_end(self, args, state, control, **kwargs):
        raised = self.flag.raised is not None
        if self.trainer is not None:
            raised = self.trainer.any_process(raised)  # all processes stop at the same step
        if raised and self.stop.reason != StopReason.NON_FINITE_LOSS:
            self.stop.set(StopReason.INTERRUPTED, state.global_step, f"interrupted at step {state.global_step}")
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self.flag.uninstall()
        return control


class EarlyStopping(TrainerCallback):
    """Stop when `metric` has not decreased by more than `min_delta` for `patience` validations, or as soon as
    the matching perplexity falls below `target_perplexity`. Written here rather than HF's EarlyStoppingCallback
    because that one has no target perplexity and does not report why it stopped. On resume its state is
    rebuilt from the restored `state.log_history` (HF's callback-state restore would re-create the object and
    lose the shared StopRecord)."""

    def __init__(self, stop: StopRecord, *, metric: str = "eval_loss", patience: int | None = 5,
                 min_delta: float = 0.01, target_perplexity: float | None = None) -> None:
        self.stop = stop
        self.metric = metric if metric.startswith("eval_") else f"eval_{metric}"
        self.patience = patience
        self.min_delta = min_delta
        self.target_perplexity = target_perplexity
        self.best: float | None = None
        self.bad_evals = 0

    def _update(self, value: float) -> None:
        if self.best is None or value < self.best - self.min_delta:
            self.best = value
            self.bad_evals = 0
        else:
            self.bad_evals += 1

    def on_train_begin(self, args, state, control, **kwargs):
        self.best, self.bad_evals = None, 0
        for entry in state.log_history:  # non-empty when resuming from a checkpoint
            value = entry.get(self.metric)
            if value is not None and math.isfinite(value):
                self._update(value)
        return control

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        metrics = metrics or {}
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(value):
            return control
        self._update(value)
        ppl_key = self.metric[: -len("_loss")] + "_perplexity" if self.metric.endswith("_loss") else None
        ppl = metrics.get(ppl_key) if ppl_key else None
        if self.target_perplexity is not None and ppl is not None and ppl < self.target_perplexity:
            self.stop.set(StopReason.TARGET_PERPLEXITY, state.global_step,
                          f"validation perplexity {ppl:.4f} < target {self.target_perplexity}")
            control.should_training_stop = True
        elif self.patience is not None and self.bad_evals >= self.patience:
            self.stop.set(StopReason.EARLY_STOPPING, state.global_step,
                          f"{self.metric} did not improve by more than {self.min_delta} for {self.patience} "
                          f"validations (best {self.best:.4f})")
            control.should_training_stop = True
        return control


class ThroughputCallback(TrainerCallback):
    """Add `tokens_per_second` (non-padding tokens over the last logging interval, all processes) and the
    training perplexity exp(loss) to every training log line."""

    def __init__(self) -> None:
        self._t: float | None = None
        self._tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._t = time.time()
        self._tokens = state.num_input_tokens_seen
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs or self._t is None:
            return control
        now = time.time()
        seen = state.num_input_tokens_seen
        extra: dict[str, float] = {}
        if now > self._t and seen > self._tokens:
            extra["tokens_per_second"] = round((seen - self._tokens) / (now - self._t), 2)
        self._t, self._tokens = now, seen
        loss = logs["loss"]
        if isinstance(loss, float) and math.isfinite(loss) and loss < 700:
            extra["perplexity"] = round(math.exp(loss), 4)
        logs.update(extra)  # seen by the loggers that run after this callback (TensorBoard, progress)
        if state.log_history and state.log_history[-1].get("loss") == loss:
            state.log_history[-1].update(extra)
        return control
