"""Periodic KorMedMCQA accuracy during training, as a transformers `TrainerCallback`.

Every `every_n_evals` evaluations the callback scores a fixed random sample of questions (the same sample
each time, so the numbers are comparable across steps) and

* adds `eval_kormedmcqa_accuracy` (and `eval_kormedmcqa_unparseable`) to the evaluation's metrics dict, so
  `metric_for_best_model="eval_kormedmcqa_accuracy"` and stop conditions that read the metrics see it;
* when attached to its trainer (`callback.attach(trainer)`, which kormed's build_trainer does for its callbacks),
  logs it with `trainer.log`, i.e. into the same TensorBoard run (shown as `eval/kormedmcqa_accuracy`) and
  into `trainer.state.log_history`. Without a trainer it appends the record to `state.log_history` itself.

Only the main process evaluates (fine for single-device and DDP training; under FSDP/ZeRO-3 the sharded model
cannot be run on one rank, so do not use this callback there).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from transformers import TrainerCallback

from kormed.eval.config import DEFAULT_KNOWLEDGE_SCORING
from kormed.eval.kormedmcqa import evaluate_kormedmcqa
from kormed.records import MCQ

METRIC = "eval_kormedmcqa_accuracy"


class KorMedMCQACallback(TrainerCallback):
    """Score a sampled subset of KorMedMCQA questions every N evaluations and log the accuracy."""

    def __init__(
        self,
        questions: Sequence[MCQ],
        *,
        every_n_evals: int = 1,
        sample: int | None = 100,
        seed: int = 0,
        mode: str = "loglik",
        tokenizer: Any = None,
        batch_size: int = 8,
        max_new_tokens: int = 32,
        fewshot: Sequence[MCQ] = (),
        num_fewshot: int = 0,
        chat_template: str | None = None,
        progress: bool = False,
        compute_dtype: str | None = None,
    ) -> None:
        if every_n_evals < 1:
            raise ValueError("every_n_evals must be at least 1")
        if not questions:
            raise ValueError("no questions to evaluate")
        qs = list(questions)
        if sample is not None and sample < len(qs):
            # A fixed sample (kept in file order) so that successive evaluations are comparable.
            picked = sorted(random.Random(seed).sample(range(len(qs)), sample))
            qs = [qs[i] for i in picked]
        self.questions = qs
        self.every_n_evals = every_n_evals
        self.mode = mode
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.fewshot = list(fewshot)
        self.num_fewshot = num_fewshot
        self.chat_template = chat_template
        self.progress = progress
        # the run's precision (bf16 autocast over a bf16 base with fp32 trained copies): without autocast an
        # fp32 embedding copy would feed fp32 activations into the bf16 layers
        self.compute_dtype = compute_dtype
        self.trainer: Any = None
        self.evaluations = 0
        self.history: list[dict[str, Any]] = []

    def attach(self, trainer: Any) -> KorMedMCQACallback:
        """Log through `trainer.log` (same TensorBoard run, same log history)."""
        self.trainer = trainer
        return self

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None,
                    **kwargs: Any) -> None:
        self.evaluations += 1
        if self.evaluations % self.every_n_evals != 0 or not state.is_world_process_zero:
            return
        model = kwargs.get("model")
        if self.trainer is not None and hasattr(self.trainer, "accelerator"):
            model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        tokenizer = self.tokenizer or kwargs.get("processing_class") or getattr(self.trainer, "processing_class", None)
        if model is None or tokenizer is None:
            raise ValueError("KorMedMCQACallback needs the model and a tokenizer (pass tokenizer=...)")
        result = evaluate_kormedmcqa(
            model, tokenizer, self.questions, mode=self.mode, fewshot=self.fewshot, num_fewshot=self.num_fewshot,
            batch_size=self.batch_size, max_new_tokens=self.max_new_tokens, chat_template=self.chat_template,
            progress=self.progress, compute_dtype=self.compute_dtype,
        )
        logs = {METRIC: result["accuracy"], "eval_kormedmcqa_unparseable": float(result["unparseable"])}
        self.history.append({"step": state.global_step, "accuracy": result["accuracy"], "total": result["total"],
                             "mode": self.mode})
        if metrics is not None:
            metrics.update(logs)
        if self.trainer is not None:
            self.trainer.log(dict(logs))
        else:
            state.log_history.append({**logs, "step": state.global_step})


class KnowledgeCallback(TrainerCallback):
    """Dictionary knowledge (:func:`kormed.eval.knowledge.evaluate_knowledge`, the dev forms of the trained entries)
    at every evaluation: adds `eval_dev_knowledge` to the evaluation's metrics (so stop conditions read it) and logs
    it through the trainer (TensorBoard `eval/dev_knowledge`, the log history). Only the main process scores."""

    def __init__(self, dictionaries: dict[str, Any], *, tokenizer: Any = None, seed: int = 0,
                 per_group: int | None = None, batch_size: int = 8, compute_dtype: str | None = None,
                 scoring: str = DEFAULT_KNOWLEDGE_SCORING) -> None:
        self.dictionaries, self.tokenizer, self.scoring = dictionaries, tokenizer, scoring
        self.seed, self.per_group, self.batch_size, self.compute_dtype = seed, per_group, batch_size, compute_dtype
        self.trainer: Any = None
        self.history: list[dict[str, Any]] = []

    def attach(self, trainer: Any) -> KnowledgeCallback:
        self.trainer = trainer
        return self

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None,
                    **kwargs: Any) -> None:
        from kormed.eval.knowledge import DEV_KNOWLEDGE, evaluate_knowledge

        if not state.is_world_process_zero:
            return
        model = kwargs.get("model")
        if self.trainer is not None and hasattr(self.trainer, "accelerator"):
            model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        tokenizer = self.tokenizer or kwargs.get("processing_class") or getattr(self.trainer, "processing_class",
                                                                                None)
        result = evaluate_knowledge(model, tokenizer, self.dictionaries, split="dev", seed=self.seed,
                                    per_group=self.per_group, batch_size=self.batch_size, progress=False,
                                    compute_dtype=self.compute_dtype, scoring=self.scoring)
        trained = result["summary"]["all/trained"]
        self.history.append({"step": state.global_step, "accuracy": trained["accuracy"], "total": trained["total"]})
        logs = {DEV_KNOWLEDGE: trained["accuracy"]}
        if metrics is not None:
            metrics.update(logs)
        # the evaluation's own record was logged before the callbacks ran: add the metric to it, so the run's
        # eval_history and metrics_at_stop (training_info.json, the loop table) carry it beside the losses
        for entry in reversed(state.log_history):
            if "eval_loss" in entry and entry.get("step") == state.global_step:
                entry.update(logs)
                break
        if self.trainer is not None:
            self.trainer.log(dict(logs))
        else:
            state.log_history.append({**logs, "step": state.global_step})
