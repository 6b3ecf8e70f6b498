"""The HF Trainer kormed trains with, set up the kormed way, and the call that runs it.

    model, tokenizer, info = prepare_model_for_training(...)                  # kormed.train.engine.model_setup
    trainer = build_trainer(model, tokenizer, train_ds, {"val": val_ds}, CausalCollator(tokenizer), options, out)
    summary = run_training(trainer, resume=cfg.resume)    # handles SIGINT/SIGTERM, NaN, early stop, --resume
    finish_run(trainer, tokenizer, out, info | {...}, summary)        # kormed.train.engine.outputs: adapter, info, plot

Datasets hold `input_ids` (lists of ints, every sequence starting with `<bos>`) and optionally `labels`
(same length, -100 where no loss is wanted: SFT builds answer-only labels this way). `CausalCollator` pads
both; without `labels` every real token is a target (CPT). The loss is the token-weighted mean over the whole
accumulated batch (sum of per-token NLL / number of target tokens, counted across accumulation steps and
processes), so it does not depend on how a batch is split into micro-batches or processes.

Validation (`KormedTrainer.evaluate`) is token-weighted too: for each named eval set it reports
`eval_<name>_loss`, `eval_<name>_perplexity` (= exp(loss)) and `eval_<name>_tokens`; the first set is also
reported as `eval_loss` / `eval_perplexity`, which early stopping and best-checkpoint selection watch by
default (`TrainOptions.early_stopping_metric`). Extra callbacks (e.g. KorMedMCQA accuracy) go in `callbacks`.

Layout of `output_dir`: `checkpoints/` (Trainer checkpoints, for --resume), `runs/` (TensorBoard), and at the
end `adapter_config.json`, `adapter_model.safetensors`, `tokenizer/`, `training_info.json`, `training_curves.png`.
Only the main process writes.
"""

from __future__ import annotations

import contextlib
import math
import pickle
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import Trainer, TrainingArguments
from transformers.integrations import TensorBoardCallback

from kormed.errors import KormedError
from kormed.io import Log, read_json, write_json
from kormed.loss import LossSpec, causal_lm_loss, loss_spec, sequence_nll, token_weighted_loss
from kormed.models import RuntimeSpec, pick_runtime
from kormed.stop_reason import StopReason
from kormed.train.config import TrainOptions
from kormed.train.engine.callbacks import (
    EarlyStopping,
    InterruptCallback,
    NonFiniteLossGuard,
    ResumeLogWindow,
    ThroughputCallback,
)
from kormed.train.engine.checkpoints import LOG_STATE_FILE, ResumePlan, plan_resume, start_from_plan, trainer_data_order
from kormed.train.engine.model_setup import embedding_param_groups, is_embedding_param, use_gradient_checkpointing
from kormed.train.engine.outputs import summarize
from kormed.train.engine.processes import effective_grad_accum
from kormed.train.engine.stopping import StopRecord, non_finite_stop
from kormed.weights import route_safetensors_writes

# HF's linear warm-up runs step k at lr x k / warmup (step 0 at 0): a warm-up this short (e.g. warmup_ratio 0.05 of
# 9 steps, rounded up to 1) only spends the run's first optimizer step at learning rate 0, so it is dropped
MIN_WARMUP_STEPS = 2


class CausalCollator:
    """Right-pad `input_ids` (and `labels`, if present) to the longest sequence in the batch.

    Written by hand rather than DataCollatorForLanguageModeling because that one masks every token equal to
    pad_token_id, which silently drops real <eos> targets when pad == eos; here only the padding is masked.
    """

    def __init__(self, tokenizer: Any = None, pad_id: int | None = None, pad_to_multiple_of: int | None = None):
        pid = pad_id if pad_id is not None else getattr(tokenizer, "pad_token_id", None)
        self.pad_id = int(pid if pid is not None else 0)
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        width = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        n = len(features)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        labels = torch.full((n, width), -100, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for row, f in enumerate(features):
            seq = torch.as_tensor(f["input_ids"], dtype=torch.long)
            k = len(seq)
            ids[row, :k] = seq
            mask[row, :k] = 1
            lab = f.get("labels")
            labels[row, :k] = seq if lab is None else torch.as_tensor(lab, dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@contextlib.contextmanager
def _plain_tensors(checkpoint: str | None, files: str) -> Iterator[None]:
    """A checkpoint's torch state files load with weights_only=True (plain tensors and containers only): one that
    holds anything else is refused in one line. torch's own message suggests weights_only=False, i.e. running
    whatever the file holds, which kormed never does and never advises."""
    try:
        yield
    except pickle.UnpicklingError:
        raise KormedError(
            f"{files} holds more than plain tensors (a pickled object); kormed loads a checkpoint's state files with "
            "weights_only=True only and never runs code from them", path=checkpoint,
            hint="resume from another checkpoint (remove this one), or start the run again") from None


class KormedTrainer(Trainer):
    """HF Trainer + embedding LR group, non-finite loss detection and token-weighted validation."""

    def __init__(self, *args: Any, runtime: RuntimeSpec, loss_spec: LossSpec, embedding_lr: float | None = None,
                 stop_record: StopRecord | None = None, eval_collator: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.runtime = runtime  # device, storage and compute dtypes: recorded in training_info.json, used by callbacks
        self.loss_spec = loss_spec  # how the loss is computed (kormed.loss): the same in training and validation
        self.embedding_lr = embedding_lr
        self.eval_collator = eval_collator
        self.stop_record = stop_record or StopRecord()
        self._nonfinite: Any = None
        self.note: Log | None = None  # run_training's log: says when a too-short warm-up is dropped
        # Our loss always shifts labels: count targets over labels[..., 1:] whatever the model class says.
        if hasattr(self, "_loss_shifts_labels"):
            self._loss_shifts_labels = True

    # separate learning rate for trained embeddings ------------------------------------------------
    def create_optimizer(self, model: Any = None) -> Any:
        opt_model = self.model if model is None else model
        if self.optimizer is not None:
            return self.optimizer
        if not any(p.requires_grad and is_embedding_param(n) for n, p in opt_model.named_parameters()):
            return super().create_optimizer(model)
        groups = embedding_param_groups(opt_model, self.args.learning_rate, self.embedding_lr,
                                        self.args.weight_decay, self.get_decay_parameter_names(opt_model))
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    # no warm-up shorter than MIN_WARMUP_STEPS ---------------------------------------------------------
    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        warmup = self.args.get_warmup_steps(num_training_steps)
        if self.lr_scheduler is None and 0 < warmup < MIN_WARMUP_STEPS:
            self.args.warmup_steps = 0  # this run's own arguments (training_arguments builds them per run)
            if self.note is not None and self.is_world_process_zero():
                self.note(f"[kormed] warm-up of {warmup} optimizer step of {num_training_steps} dropped: it would "
                          f"only run the first step at learning rate 0 (a warm-up needs at least "
                          f"{MIN_WARMUP_STEPS} steps)")
        return super().create_scheduler(num_training_steps, optimizer)

    # non-finite loss detection (no host sync here; the guard callback syncs once per step) ------------
    def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> Any:
        loss = super().training_step(model, inputs, num_items_in_batch)
        bad = ~torch.isfinite(loss.detach())
        self._nonfinite = bad if self._nonfinite is None else (self._nonfinite | bad)
        return loss

    def pop_nonfinite(self) -> bool:
        """Whether any process saw a non-finite micro-batch loss since the last call (collective)."""
        flag = self._nonfinite
        self._nonfinite = None
        t = torch.zeros((), device=self.args.device) if flag is None else flag.float().to(self.args.device)
        if self.args.world_size > 1:
            t = self.accelerator.reduce(t.reshape(1), reduction="sum")
        return bool(t.sum().item() > 0)

    # checkpoints: never one with non-finite weights; the open loss-logging window goes with it ---------
    def train(self, resume_from_checkpoint: Any = None, *args: Any, **kwargs: Any) -> Any:
        self.kormed_resumed_from = resume_from_checkpoint if isinstance(resume_from_checkpoint, str) else None
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _run_epoch(self, *args: Any, **kwargs: Any) -> Any:
        # Resumed from the checkpoint of the last step (a kill during the final adapter save): nothing is left to
        # train. The Trainer checks max_steps (and kormed's stop conditions) only after a step, so it would train
        # one step more than the uninterrupted run and log a different curve.
        if getattr(self, "kormed_finished", False) or 0 < self.state.max_steps <= self.state.global_step:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    def _load_rng_state(self, checkpoint: str | None) -> None:
        with _plain_tensors(checkpoint, "rng_state*.pth"):
            super()._load_rng_state(checkpoint)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        with _plain_tensors(checkpoint, "optimizer.pt, scheduler.pt"):
            super()._load_optimizer_and_scheduler(checkpoint)

    def trainable_finite(self) -> bool:
        """Whether every trainable weight is finite on every process (collective when distributed)."""
        params = [p.detach() for p in self.model.parameters() if p.requires_grad]
        ok = bool(torch.stack([torch.isfinite(p).all() for p in params]).all().item()) if params else True
        return not self.any_process(not ok)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        step = self.state.global_step
        if not self.trainable_finite():
            non_finite_stop(self.stop_record, self.control, step, "trainable weights", self.args.output_dir)
            return
        window = getattr(self, "_tr_loss", None)
        if window is not None:
            folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{step}"
            # written before the Trainer's files: trainer_state.json (written last) still marks completeness
            # a run that stops at this step on its own (early stopping, a target) says so: resumed from here after
            # a kill during the final save, it trains no further
            stop = self.stop_record
            final = {"stop": stop.as_dict()} if stop.reason is not None and stop.reason.finished else {}
            write_json(folder / LOG_STATE_FILE.format(self.args.process_index), {
                "tr_loss": float(window.item()), "last_logged_step": int(self._globalstep_last_logged), **final,
            })
        super()._save_checkpoint(model, trial)

    def restore_log_window(self) -> None:
        """On resume, continue the loss-averaging window the checkpoint was saved in (so the logged loss is
        the uninterrupted run's: the sum since the last log and that log's step were saved with it)."""
        ckpt = getattr(self, "kormed_resumed_from", None)
        f = Path(ckpt) / LOG_STATE_FILE.format(self.args.process_index) if ckpt else None
        if f is None or not f.is_file():
            return
        try:
            saved = read_json(f)
            value, last = float(saved["tr_loss"]), int(saved["last_logged_step"])
        except (OSError, ValueError, KeyError, TypeError, KormedError):
            return  # the window restarts, as without the file: the weights are unaffected
        if last <= self.state.global_step and getattr(self, "_tr_loss", None) is not None:
            self._tr_loss.fill_(value)
            self._globalstep_last_logged = last
        stop = saved.get("stop")
        if isinstance(stop, dict) and stop.get("stop_step") == self.state.global_step:
            with contextlib.suppress(ValueError, TypeError):
                self.stop_record.set(StopReason(stop["stop_reason"]), self.state.global_step,
                                     str(stop.get("stop_detail") or ""))
                self.kormed_finished = True

    def any_process(self, value: bool) -> bool:
        """OR of a boolean over processes (collective when distributed)."""
        if self.args.world_size <= 1:
            return value
        t = torch.tensor([1.0 if value else 0.0], device=self.args.device)
        return bool(self.accelerator.reduce(t, reduction="sum").item() > 0)

    # the loss: token-weighted, without full-vocabulary logits (kormed.loss) ----------------------
    def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        spec = self.loss_spec
        if spec.impl == "full" or return_outputs:  # the model's logits + token_weighted_loss
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        if self.args.n_gpu > 1:
            raise KormedError("loss_impl chunked/liger does not run under nn.DataParallel (several GPUs, one "
                              "process)", field="train.loss_impl",
                              hint="launch with `accelerate launch` (DDP), or use loss_impl full")
        batch = dict(inputs)
        labels = batch.pop("labels")
        loss = causal_lm_loss(model, batch, labels, spec=spec, num_items_in_batch=num_items_in_batch)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # as Trainer.compute_loss does: num_items_in_batch counts every process's tokens, DDP averages
            loss = loss * self.accelerator.num_processes
        return loss

    def autocast_smart_context_manager(self, cache_enabled: bool | None = True) -> Any:
        # The Trainer leaves autocast to accelerate, which wraps only model.forward; kormed's loss projects
        # the hidden states to the vocabulary AFTER forward (kormed.loss), so the whole loss (and
        # validation) runs under accelerate's autocast too: on bf16 runs that projection is the largest matmul.
        return self.accelerator.autocast()

    # token-weighted validation ----------------------------------------------------------------------
    def get_eval_dataloader(self, eval_dataset: Any = None) -> Any:
        # Validation may collate differently from training (SFT: padded rows while training rows are
        # padding-free; per-example losses are the same, and gather_for_metrics trims padded rows per example).
        if self.eval_collator is None:
            return super().get_eval_dataloader(eval_dataset)
        train_collator, self.data_collator = self.data_collator, self.eval_collator
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = train_collator

    def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None,
                 metric_key_prefix: str = "eval") -> dict[str, float]:
        sets = eval_dataset if eval_dataset is not None else self.eval_dataset
        if sets is None:
            return {}
        if not isinstance(sets, dict):
            sets = {"": sets}
        start = time.time()
        metrics: dict[str, float] = {}
        for i, (name, ds) in enumerate(sets.items()):
            loss, tokens = self._token_weighted_eval(ds, name or "val")
            ppl = math.exp(loss) if loss < 700 else float("inf")
            key = f"{metric_key_prefix}_{name}" if name else metric_key_prefix
            metrics[f"{key}_loss"] = loss
            metrics[f"{key}_perplexity"] = ppl
            metrics[f"{key}_tokens"] = tokens
            if i == 0 and name:
                metrics[f"{metric_key_prefix}_loss"] = loss
                metrics[f"{metric_key_prefix}_perplexity"] = ppl
        elapsed = time.time() - start
        metrics[f"{metric_key_prefix}_runtime"] = round(elapsed, 4)
        total_tokens = sum(v for k, v in metrics.items() if k.endswith("_tokens"))
        metrics[f"{metric_key_prefix}_tokens_per_second"] = round(total_tokens / max(elapsed, 1e-9), 3)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _token_weighted_eval(self, dataset: Any, name: str) -> tuple[float, int]:
        dataloader = self.get_eval_dataloader(dataset)
        model = self.model_wrapped if self.model_wrapped is not None else self.model
        was_training = model.training
        model.eval()
        total = torch.zeros((), dtype=torch.float64, device=self.args.device)
        count = torch.zeros((), dtype=torch.int64, device=self.args.device)
        try:
            with torch.no_grad():
                for batch in tqdm(dataloader, desc=f"validate {name}", leave=False,
                                  disable=self.args.disable_tqdm or not self.is_world_process_zero()):
                    batch = self._prepare_inputs(batch)
                    labels = batch.pop("labels")
                    with self.compute_loss_context_manager():
                        # per-sequence sums without full-vocabulary logits (unless loss_impl is full)
                        nll, n = sequence_nll(model, batch, labels, spec=self.loss_spec)
                    # gather_for_metrics drops the samples duplicated to even out the last batch
                    nll, n = self.accelerator.gather_for_metrics((nll.double(), n))
                    total += nll.sum()
                    count += n.sum()
        finally:
            if was_training:
                model.train()
        tokens = int(count.item())
        return (float(total.item()) / tokens if tokens else float("nan")), tokens


def training_arguments(options: TrainOptions, runtime: RuntimeSpec, output_dir: Path, *,
                       has_eval: bool) -> TrainingArguments:
    """kormed's TrainOptions as the HF TrainingArguments of one run (checkpoints under `output_dir/checkpoints`).

    Every setting the Trainer reads comes from here; the ones whose value is not a plain copy say why.
    """
    save_steps = options.save_steps or options.eval_steps
    # the best checkpoint can be restored only when checkpoints fall on evaluation steps
    load_best = (options.load_best_at_end and options.save_checkpoints and has_eval
                 and save_steps % options.eval_steps == 0)
    # TensorBoard is kormed's own callback (build_trainer: logs under output_dir/runs), never the Trainer's
    report_to = [r for r in options.report_to if r != "tensorboard"] or "none"
    grad_accum = effective_grad_accum(options)
    # transformers >= 5.x renamed gradient_checkpointing to activation_checkpointing (old name deprecated)
    ckpt_name = ("activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
                 else "gradient_checkpointing")
    recompute = use_gradient_checkpointing(options, runtime.device)
    checkpointing = {ckpt_name: recompute, f"{ckpt_name}_kwargs": {"use_reentrant": False} if recompute else None}
    return TrainingArguments(
        **checkpointing,
        output_dir=str(output_dir / "checkpoints"),
        per_device_train_batch_size=options.batch_size,
        per_device_eval_batch_size=options.eval_batch_size or 2 * options.batch_size,
        gradient_accumulation_steps=grad_accum,
        learning_rate=options.lr,
        # not a slip: transformers 5 deprecates warmup_ratio, and warmup_steps takes a float in [0, 1) as the
        # fraction of the total steps (TrainingArguments.get_warmup_steps; transformers#41326); warmup_ratio < 1
        warmup_steps=options.warmup_ratio,
        lr_scheduler_type=options.scheduler,
        weight_decay=options.weight_decay,
        max_grad_norm=options.max_grad_norm,
        num_train_epochs=options.epochs,
        max_steps=options.max_steps or -1,  # 0 = "no limit" in kormed, -1 in transformers
        eval_strategy="steps" if has_eval else "no",
        eval_steps=options.eval_steps,
        eval_on_start=options.eval_on_start and has_eval,
        save_strategy="steps" if options.save_checkpoints else "no",
        save_steps=save_steps,
        save_total_limit=options.save_total_limit,
        load_best_model_at_end=load_best,
        metric_for_best_model=options.early_stopping_metric if has_eval else None,
        greater_is_better=False if has_eval else None,  # the metrics are losses / perplexities
        logging_steps=options.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # a NaN loss is logged as NaN (the guard stops on it), not hidden
        seed=options.seed,
        data_seed=options.seed,
        bf16=runtime.compute_dtype == "bfloat16",  # bf16 autocast (on CPU over fp32 master weights)
        fp16=False,  # never: Gemma 3 activations overflow float16
        use_cpu=runtime.device == "cpu",
        report_to=report_to,
        include_num_input_tokens_seen="non_padding",  # tokens_seen counts real tokens, not padding
        remove_unused_columns=False,  # kormed's collators read their own columns
        dataloader_num_workers=options.num_workers,
        optim=options.optim,
        disable_tqdm=False,
        ddp_find_unused_parameters=False,  # LoRA: every trained parameter takes part in every step
        average_tokens_across_devices=True,  # the loss is a mean over every process's target tokens
        # a stream (CPT --streaming) is read by every process, each keeping its own batches (accelerate's
        # IterableDatasetShard), rather than read on the main process and sent to the others (dispatch_batches)
        accelerator_config={"dispatch_batches": False},
    )


def build_trainer(
    model: Any,
    tokenizer: Any,
    train_dataset: Any,
    eval_datasets: dict[str, Any] | None,
    collator: Any,
    options: TrainOptions,
    output_dir: str | Path,
    callbacks: Iterable[Any] = (),
    *,
    embedding_lr: float | None = None,
    runtime: RuntimeSpec | None = None,
    eval_collator: Any = None,
) -> Any:
    """An HF Trainer (KormedTrainer) set up the kormed way (`eval_collator`: validation batches, default `collator`).

    bf16 autocast where `runtime.compute_dtype` says (default `pick_runtime(options.device, options.dtype)`),
    gradient checkpointing,
    warmup + decay, a loss independent of gradient accumulation, token-weighted validation every
    `options.eval_steps`, a separate learning rate for trained embeddings (`embedding_lr`, default lr / 4),
    TensorBoard under `output_dir/runs`, checkpoints under `output_dir/checkpoints`, and the guard callbacks:
    non-finite loss stop, SIGINT/SIGTERM checkpoint-and-stop, early stopping (patience, min_delta, target
    perplexity), tokens/s logging. `trainer.stop_record` says why the run stopped.
    """
    runtime = runtime or pick_runtime(options.device, options.dtype)
    route_safetensors_writes()  # checkpoints' safetensors files: umask mode, no partial file on a full disk
    output_dir = Path(output_dir)
    has_eval = bool(eval_datasets)
    args = training_arguments(options, runtime, output_dir, has_eval=has_eval)
    recompute = use_gradient_checkpointing(options, runtime.device)
    stop = StopRecord()
    extra = [
        NonFiniteLossGuard(stop),
        InterruptCallback(stop),
        EarlyStopping(
            stop,
            metric=options.early_stopping_metric,
            patience=options.early_stopping_patience,
            min_delta=options.early_stopping_min_delta,
            target_perplexity=options.target_perplexity,
        ),
        ThroughputCallback(),
        ResumeLogWindow(),
    ]
    if "tensorboard" in options.report_to:
        tb = TensorBoardCallback()
        tb.logging_dir = str(output_dir / "runs")
        extra.append(tb)
    if recompute and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
    trainer = KormedTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_datasets or None,
        data_collator=collator,
        processing_class=tokenizer,
        compute_loss_func=token_weighted_loss,
        callbacks=[*extra, *callbacks],
        runtime=runtime,
        loss_spec=loss_spec(options.loss_impl, runtime.device, options.loss_chunk_size),
        embedding_lr=embedding_lr,
        stop_record=stop,
        eval_collator=eval_collator,
    )
    for c in trainer.callback_handler.callbacks:  # the one way a callback gets its trainer (TrainerAware)
        if hasattr(c, "attach"):
            c.attach(trainer)  # e.g. KorMedMCQACallback logs through trainer.log (same TensorBoard run)
    return trainer


def run_training(trainer: Any, *, resume: bool = False, log: Log = print, data_order: dict[str, Any] | None = None,
                 plan: ResumePlan | None = None) -> dict[str, Any]:
    """Train (resuming from the newest complete checkpoint when `resume`), and summarise the run.

    Returns stop_reason/stop_step/stop_detail, global_step, tokens_seen, wall_time_s, resumed_from,
    best_metric/best_step/best_checkpoint, first_eval/best_eval/last_eval (metric dicts), eval_history and
    train_loss_last. Refuses to mix with stale checkpoints of an earlier run unless `resume`.

    `data_order`: the caller's settings the data order depends on (data digest, max_length, ...); with the
    Trainer's own (seed, batch size, accumulation, processes, examples) they are recorded when a run starts
    and a resume that changes one is refused. `plan`: :func:`plan_resume`'s answer when the caller asked
    before loading the model.
    """
    out = Path(trainer.args.output_dir).parent
    if plan is None:
        plan = plan_resume(out, resume=resume, data_order=data_order, log=log)
    order = {**(data_order or {}), **trainer_data_order(trainer)}
    resume_from = start_from_plan(out, plan, order, log=log)
    if resume_from is not None:
        trainer.args.eval_on_start = False  # the "before" validation is already in the restored history
    trainer.note = log
    start = time.time()
    trainer.train(resume_from_checkpoint=resume_from)
    wall = time.time() - start
    return summarize(trainer, wall_time=wall, resumed_from=resume_from)
