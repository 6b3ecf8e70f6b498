"""The shared training engine: model + LoRA preparation, an HF `Trainer` with kormed's guards, and outputs.

Every training stage (CPT, SFT, the SFT loop) uses the same four calls:

    from kormed.train.config import LoraOptions, TrainOptions
    from kormed.train import engine

    runtime = pick_runtime(options.device)
    model, tokenizer, info = engine.prepare_model_for_training(model_name, adapter=None, lora=lora,
                                                               runtime=runtime, tokenizer_path=None)
    trainer = engine.build_trainer(model, tokenizer, train_ds, {"val": val_ds}, engine.CausalCollator(tokenizer),
                                   options, output_dir)
    summary = engine.run_training(trainer, resume=cfg.resume)      # handles SIGINT/SIGTERM, NaN, early stop
    engine.finish_run(trainer, tokenizer, output_dir, info | {...}, summary)  # adapter + info + plot (rank 0)

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

import dataclasses
import json
import math
import os
import platform
import re
import shutil
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from kormed.errors import KormedError
from kormed.io import atomic_write, temp_dir, write_json
from kormed.models import (
    ADAPTER_META_FILE,
    RuntimeSpec,
    adapter_meta,
    is_multimodal,
    load_model,
    load_model_and_tokenizer,
    load_tokenizer,
    pick_runtime,
    resolve_model,
    write_adapter_meta,
)
from kormed.tokenizer.embeddings import resize_and_init_embeddings
from kormed.train.config import LoraOptions, TrainOptions

Log = Callable[[str], Any]

STOP_COMPLETED = "completed"  # max_steps or the epochs ran out
STOP_EARLY = "early_stopping"  # no improvement for `patience` validations
STOP_TARGET = "target_perplexity"  # validation perplexity fell below the target
STOP_INTERRUPTED = "interrupted"  # SIGINT / SIGTERM: a checkpoint was saved, --resume continues
STOP_NON_FINITE = "non_finite_loss"  # NaN/inf loss: stopped before the bad update, last good checkpoint kept


# --------------------------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------------------------


def is_main_process() -> bool:
    """True on the process that writes outputs (rank 0), also before/without torch.distributed."""
    from accelerate import PartialState

    if PartialState._shared_state:  # initialised (by the Trainer or the stage runner): ask it
        return PartialState().is_main_process
    # Not initialised yet: do not create it here, its first construction fixes the backend (cpu=True -> gloo)
    return int(os.environ.get("RANK", "0")) == 0


def world_size() -> int:
    """Number of training processes (`accelerate launch` / torchrun set WORLD_SIZE)."""
    return max(1, int(os.environ.get("WORLD_SIZE", "1")))


def format_count(n: int) -> str:
    """1_590_000_000 -> '1.59B', 2_949_120 -> '2.95M'."""
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide training numerics (recorded in training_info.json)."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("kormed", "torch", "transformers", "peft", "accelerate", "datasets", "trl", "tokenizers"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def effective_grad_accum(options: TrainOptions, n_processes: int | None = None) -> int:
    """Per-process accumulation so that batch_size x accumulation x processes stays batch_size x grad_accum."""
    n = n_processes or world_size()
    if not options.scale_accum or n == 1:
        return options.grad_accum
    if options.grad_accum % n:
        warnings.warn(
            f"grad_accum {options.grad_accum} is not divisible by {n} processes; the effective batch changes",
            stacklevel=2,
        )
    return max(1, round(options.grad_accum / n))


# --------------------------------------------------------------------------------------------------------------
# model preparation
# --------------------------------------------------------------------------------------------------------------


def lora_target_regex(model: Any, modules: Sequence[str]) -> str:
    """A PEFT target_modules regex (full match) selecting `modules` in the language model only."""
    names = "|".join(re.escape(m) for m in modules)
    if is_multimodal(model.config):
        return rf".*language_model.*\.({names})"
    return rf".*\.({names})"


def embeddings_tied(model: Any) -> bool:
    """Whether the output projection shares its weight with the input embeddings (Gemma: yes)."""
    out = model.get_output_embeddings()
    return out is not None and out.weight is model.get_input_embeddings().weight


def grow_embeddings(model: Any, base_tokenizer: Any, tokenizer: Any, log: Log = print) -> list[int]:
    """Resize the embeddings to an extended tokenizer (mean-of-pieces rows, padded to a multiple of 64,
    :func:`kormed.tokenizer.embeddings.resize_and_init_embeddings`); return the ids of the new tokens."""
    base_n, new_n = len(base_tokenizer), len(tokenizer)
    if new_n < base_n:
        raise KormedError(f"the tokenizer has fewer tokens ({new_n}) than the model's base tokenizer ({base_n})")
    rows = model.get_input_embeddings().weight.shape[0]
    new_ids = list(resize_and_init_embeddings(model, base_tokenizer, tokenizer, pad_to_multiple_of=64))
    grown = model.get_input_embeddings().weight.shape[0]
    if grown != rows or new_ids:
        log(f"[kormed] embeddings resized: {rows} -> {grown} rows ({len(new_ids)} new tokens)")
    return new_ids


def use_gradient_checkpointing(options: TrainOptions, device: str) -> bool:
    """`train.gradient_checkpointing`, with null (auto) resolved: on for CUDA, off on CPU."""
    if options.gradient_checkpointing is not None:
        return bool(options.gradient_checkpointing)
    return str(device).startswith("cuda")


def upcast_trainable_copies(model: Any) -> int:
    """Keep every trainable parameter in fp32 on a bf16/fp16 base; returns how many were cast.

    PEFT makes LoRA weights fp32 already, but a `modules_to_save` embedding copy and `trainable_token_indices`
    rows keep the base dtype, and Adam steps of lr/4 are below bf16's spacing: in bf16 those rows barely move.
    Mixed precision (autocast) then runs the matmuls in bf16 while the optimizer updates fp32 master weights.
    """
    import torch

    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype in (torch.bfloat16, torch.float16):
            param.data = param.data.float()
            cast += 1
    return cast


def count_parameters(model: Any) -> dict[str, Any]:
    """Trainable and total parameters (PEFT's count) and the seeds' display form '1.59B (26.78%)'."""
    trainable, total = model.get_nb_trainable_parameters()
    pct = 100.0 * trainable / total if total else 0.0
    return {
        "trainable_params": int(trainable),
        "total_params": int(total),
        "trainable_percent": round(pct, 4),
        "trainable": f"{format_count(int(trainable))} ({pct:.2f}%)",
    }


def prepare_model_for_training(
    model_name: str | None,
    adapter: str | Path | None = None,
    lora: LoraOptions | None = None,
    runtime: RuntimeSpec | None = None,
    tokenizer_path: str | Path | None = None,
    log: Log = print,
    seed: int | None = None,
    tokenizer: Any = None,
    quantize: str = "none",
) -> tuple[Any, Any, dict[str, Any]]:
    """Load the base model and text tokenizer, and wrap the model in a trainable PEFT LoRA adapter.

    - `adapter`: continue training an existing kormed adapter (its config wins over `lora`; its tokenizer/
      is used and the embeddings are resized to it).
    - `tokenizer_path`: an extended tokenizer; the embeddings grow to it (see :func:`grow_embeddings`).
    - LoRA (rsLoRA by default) goes on the language model's linear layers only (never a vision tower).
    - `lora.train_embeddings`: with Gemma's tied embed_tokens/lm_head, ONE tied trainable copy is trained
      (PEFT `modules_to_save` + `ensure_weight_tying`), or only the new rows (`embedding_rows='new'`,
      PEFT `trainable_token_indices`), so a saved adapter reloads and merges to the same model.

    `tokenizer`: the base model's tokenizer when the caller already loaded it (loading the 262K-token Gemma
    tokenizer takes seconds). `seed` seeds the LoRA initialisation (same seed -> same initial adapter on every
    process and every rerun). `quantize` "4bit": QLoRA on an NF4 base (:mod:`kormed.quantization`); an adapter
    trained on a 4-bit base is continued on one whatever `quantize` says (its kormed_adapter.json records it).

    Returns (peft_model, tokenizer, info) where info records model, tokenizer, LoRA settings, runtime and the
    trainable-parameter count (printed like the seeds: "trainable params: 1.59B (26.78%)").
    """
    from peft import LoraConfig, get_peft_model

    from kormed.quantization import model_label

    lora = lora or LoraOptions()
    runtime = runtime or pick_runtime("auto")
    new_ids: list[int] = []
    if adapter is not None:
        if tokenizer_path is not None:
            raise KormedError(
                "--tokenizer-path cannot be combined with continuing an adapter (the adapter has its tokenizer/)"
            )
        model, tokenizer, runtime = load_model_and_tokenizer(
            model_name, adapter=adapter, runtime=runtime, trainable_adapter=True, log=log,
            quantize="4bit" if quantize == "4bit" else None,  # None: as the adapter was trained
        )
        model_path = str(model.base_model.model.config.name_or_path or model_name)
        log(f"[kormed] continuing adapter {adapter} (its LoRA settings are kept)")
    else:
        model_path = resolve_model(model_name, log=log)
        base_tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model_path)
        tokenizer = load_tokenizer(str(tokenizer_path)) if tokenizer_path is not None else base_tokenizer
        base = load_model(model_path, runtime, quantize=quantize)
        if tokenizer_path is not None:
            new_ids = grow_embeddings(base, base_tokenizer, tokenizer, log=log)
        if quantize == "4bit":
            from kormed.quantization import prepare_for_kbit_training

            base = prepare_for_kbit_training(base)
            log("[kormed] QLoRA: language-model linear layers in 4-bit NF4 (bf16 compute)")
        tied = embeddings_tied(base)
        kwargs: dict[str, Any] = {}
        if lora.train_embeddings:
            if lora.embedding_rows == "new":
                if not new_ids:
                    raise KormedError(
                        "lora.embedding_rows 'new' needs an extended tokenizer (--tokenizer-path) with new tokens",
                        field="lora.embedding_rows",
                    )
                kwargs["trainable_token_indices"] = {"embed_tokens": new_ids}
            else:
                kwargs["modules_to_save"] = ["embed_tokens"] if tied else ["embed_tokens", "lm_head"]
            if tied:
                kwargs["ensure_weight_tying"] = True
        config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            use_rslora=lora.use_rslora,
            target_modules=lora_target_regex(base, lora.target_modules),
            task_type="CAUSAL_LM",
            bias="none",
            **kwargs,
        )
        if seed is not None:
            from transformers import set_seed

            set_seed(seed)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ensure_weight_tying.*")
            model = get_peft_model(base, config)
    upcast_trainable_copies(model)
    counts = count_parameters(model)
    log(f"[kormed] trainable params: {counts['trainable']} of {format_count(counts['total_params'])}")
    info = {
        "model": model_name or "embedded",
        "model_path": model_path,
        "multimodal": is_multimodal(model.base_model.model.config),
        "adapter_init": str(adapter) if adapter is not None else None,
        "tokenizer": {
            "path": str(tokenizer_path) if tokenizer_path is not None else model_path,
            "vocab_size": len(tokenizer),
            "new_tokens": len(new_ids),
        },
        "lora": dataclasses.asdict(lora),
        "embeddings_tied": embeddings_tied(model.base_model.model),
        "quantization": model_label(model),
        "runtime": dataclasses.asdict(runtime),
        **counts,
    }
    return model, tokenizer, info


# --------------------------------------------------------------------------------------------------------------
# data collation and loss
# --------------------------------------------------------------------------------------------------------------


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
        import torch

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


def token_weighted_loss(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
    """Sum of per-token NLL over the micro-batch divided by the number of target tokens of the WHOLE
    accumulated batch (`num_items_in_batch`, from the Trainer). Summed over micro-batches this is exactly the
    token mean of the full batch, independent of gradient accumulation (the Gemma 3 GA-scaling pitfall).

    This is the `loss_impl: full` path (from the model's logits); the others compute the same quantity without
    full-vocabulary logits in `KormedTrainer.compute_loss` (:mod:`kormed.train.loss`)."""
    from kormed.train.loss import shifted_nll

    logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
    nll, count = shifted_nll(logits, labels)
    denom = num_items_in_batch if num_items_in_batch is not None else count.sum()
    if hasattr(denom, "to"):
        denom = denom.to(nll.device)
    return nll.sum() / denom


# --------------------------------------------------------------------------------------------------------------
# trainer and callbacks
# --------------------------------------------------------------------------------------------------------------


def _embedding_param(name: str) -> bool:
    return "embed_tokens" in name or "lm_head" in name or "trainable_tokens" in name


def _trainer_base() -> type:
    from transformers import Trainer

    return Trainer


class StopRecord:
    """Why a run stopped (first reason wins), shared by the callbacks and the trainer."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.step: int | None = None
        self.detail: str = ""

    def set(self, reason: str, step: int, detail: str = "") -> None:
        # a non-finite stop also replaces an interrupt of the same step: its checkpoint is then not saved
        if self.reason is None or (reason == STOP_NON_FINITE and self.reason == STOP_INTERRUPTED):
            self.reason, self.step, self.detail = reason, step, detail

    def as_dict(self) -> dict[str, Any]:
        return {"stop_reason": self.reason or STOP_COMPLETED, "stop_step": self.step, "stop_detail": self.detail}


def non_finite_stop(stop: StopRecord, control: Any, step: int, what: str, ckpt_dir: str | Path) -> None:
    """Record a non-finite stop at `step` naming the last good checkpoint, say it once, and stop without saving."""
    first = stop.reason != STOP_NON_FINITE
    if first:
        last = latest_good_checkpoint(ckpt_dir)[0]
        stop.set(STOP_NON_FINITE, step, f"non-finite (NaN/inf) {what} at step {step}; last good checkpoint: "
                 f"{last or 'none'}")
    if first and stop.reason == STOP_NON_FINITE and is_main_process():
        print(f"\n[kormed] {stop.detail}. Stopping; lower the learning rate or check the data.", flush=True)
    control.should_save = False
    control.should_evaluate = False
    control.should_training_stop = True


def _make_trainer_class() -> type:
    import torch

    from kormed.train import loss as kloss

    Trainer = _trainer_base()

    class KormedTrainer(Trainer):
        """HF Trainer + embedding LR group, non-finite loss detection and token-weighted validation."""

        def __init__(self, *args: Any, embedding_lr: float | None = None, stop_record: StopRecord | None = None,
                     eval_collator: Any = None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.embedding_lr = embedding_lr
            self.eval_collator = eval_collator
            self.stop_record = stop_record or StopRecord()
            self._nonfinite: Any = None
            # Our loss always shifts labels: count targets over labels[..., 1:] whatever the model class says.
            if hasattr(self, "_loss_shifts_labels"):
                self._loss_shifts_labels = True

        # separate learning rate for trained embeddings ------------------------------------------------
        def create_optimizer(self, model: Any = None) -> Any:
            opt_model = self.model if model is None else model
            if self.optimizer is not None:
                return self.optimizer
            named = [(n, p) for n, p in opt_model.named_parameters() if p.requires_grad]
            emb = [p for n, p in named if _embedding_param(n)]
            if not emb:
                return super().create_optimizer(model)
            decay_names = set(self.get_decay_parameter_names(opt_model))
            groups = [
                {"params": [p for n, p in named if not _embedding_param(n) and n in decay_names],
                 "weight_decay": self.args.weight_decay},
                {"params": [p for n, p in named if not _embedding_param(n) and n not in decay_names],
                 "weight_decay": 0.0},
                {"params": emb, "weight_decay": 0.0, "lr": self.embedding_lr or self.args.learning_rate * 0.25},
            ]
            groups = [g for g in groups if g["params"]]
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
            return self.optimizer

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
                write_json(folder / LOG_STATE_FILE.format(self.args.process_index), {
                    "tr_loss": float(window.item()), "last_logged_step": int(self._globalstep_last_logged),
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
                saved = json.loads(f.read_text(encoding="utf-8"))
                value, last = float(saved["tr_loss"]), int(saved["last_logged_step"])
            except (OSError, ValueError, KeyError, TypeError):
                return  # the window restarts, as without the file: the weights are unaffected
            if last <= self.state.global_step and getattr(self, "_tr_loss", None) is not None:
                self._tr_loss.fill_(value)
                self._globalstep_last_logged = last

        def any_process(self, value: bool) -> bool:
            """OR of a boolean over processes (collective when distributed)."""
            if self.args.world_size <= 1:
                return value
            t = torch.tensor([1.0 if value else 0.0], device=self.args.device)
            return bool(self.accelerator.reduce(t, reduction="sum").item() > 0)

        # the loss: token-weighted, without full-vocabulary logits (kormed.train.loss) ----------------------
        loss_spec: Any = None  # a kormed.train.loss.LossSpec, set by build_trainer from train.loss_impl

        def kormed_loss_spec(self) -> Any:
            if self.loss_spec is None:
                self.loss_spec = kloss.loss_spec("auto", str(self.args.device))
            return self.loss_spec

        def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            spec = self.kormed_loss_spec()
            if spec.impl == "full" or return_outputs:  # the model's logits + token_weighted_loss
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)
            if self.args.n_gpu > 1:
                raise KormedError("loss_impl chunked/liger does not run under nn.DataParallel (several GPUs, one "
                                  "process)", field="train.loss_impl",
                                  hint="launch with `accelerate launch` (DDP), or use loss_impl full")
            batch = dict(inputs)
            labels = batch.pop("labels")
            loss = kloss.causal_lm_loss(model, batch, labels, spec=spec, num_items_in_batch=num_items_in_batch)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                # as Trainer.compute_loss does: num_items_in_batch counts every process's tokens, DDP averages
                loss = loss * self.accelerator.num_processes
            return loss

        def autocast_smart_context_manager(self, cache_enabled: bool | None = True) -> Any:
            # The Trainer leaves autocast to accelerate, which wraps only model.forward; kormed's loss projects
            # the hidden states to the vocabulary AFTER forward (kormed.train.loss), so the whole loss (and
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
            from tqdm.auto import tqdm

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
                            nll, n = kloss.sequence_nll(model, batch, labels, spec=self.kormed_loss_spec())
                        # gather_for_metrics drops the samples duplicated to even out the last batch
                        nll, n = self.accelerator.gather_for_metrics((nll.double(), n))
                        total += nll.sum()
                        count += n.sum()
            finally:
                if was_training:
                    model.train()
            tokens = int(count.item())
            return (float(total.item()) / tokens if tokens else float("nan")), tokens

    return KormedTrainer


_TRAINER_CLASS: type | None = None


def trainer_class() -> type:
    """The KormedTrainer class (built lazily so importing this module does not import transformers)."""
    global _TRAINER_CLASS
    if _TRAINER_CLASS is None:
        _TRAINER_CLASS = _make_trainer_class()
    return _TRAINER_CLASS


def _callbacks_module() -> Any:
    from kormed.train import callbacks

    return callbacks


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
    from transformers import TrainingArguments
    from transformers.integrations import TensorBoardCallback

    cb = _callbacks_module()
    runtime = runtime or pick_runtime(options.device, options.dtype)
    output_dir = Path(output_dir)
    has_eval = bool(eval_datasets)
    save_steps = options.save_steps or options.eval_steps
    load_best = options.load_best_at_end and has_eval and save_steps % options.eval_steps == 0
    report_to = [r for r in options.report_to if r != "tensorboard"] or "none"
    grad_accum = effective_grad_accum(options)
    # transformers >= 5.x renamed gradient_checkpointing to activation_checkpointing (old name deprecated)
    ckpt_name = ("activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
                 else "gradient_checkpointing")
    recompute = use_gradient_checkpointing(options, runtime.device)
    checkpointing = {ckpt_name: recompute, f"{ckpt_name}_kwargs": {"use_reentrant": False} if recompute else None}
    args = TrainingArguments(
        **checkpointing,
        output_dir=str(output_dir / "checkpoints"),
        per_device_train_batch_size=options.batch_size,
        per_device_eval_batch_size=options.eval_batch_size or 2 * options.batch_size,
        gradient_accumulation_steps=grad_accum,
        learning_rate=options.lr,
        warmup_steps=options.warmup_ratio,
        lr_scheduler_type=options.scheduler,
        weight_decay=options.weight_decay,
        max_grad_norm=options.max_grad_norm,
        num_train_epochs=options.epochs,
        max_steps=options.max_steps or -1,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=options.eval_steps,
        eval_on_start=options.eval_on_start and has_eval,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=options.save_total_limit,
        load_best_model_at_end=load_best,
        metric_for_best_model=options.early_stopping_metric if has_eval else None,
        greater_is_better=False if has_eval else None,
        logging_steps=options.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,
        seed=options.seed,
        data_seed=options.seed,
        bf16=runtime.compute_dtype == "bfloat16",  # bf16 autocast (on CPU over fp32 master weights)
        fp16=False,  # never: Gemma 3 activations overflow float16
        use_cpu=runtime.device == "cpu",
        report_to=report_to,
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,
        dataloader_num_workers=options.num_workers,
        optim=options.optim,
        disable_tqdm=False,
        ddp_find_unused_parameters=False,
        average_tokens_across_devices=True,
    )
    stop = StopRecord()
    extra = [
        cb.NonFiniteLossGuard(stop),
        cb.InterruptCallback(stop),
        cb.EarlyStopping(
            stop,
            metric=options.early_stopping_metric,
            patience=options.early_stopping_patience,
            min_delta=options.early_stopping_min_delta,
            target_perplexity=options.target_perplexity,
        ),
        cb.ThroughputCallback(),
        cb.ResumeLogWindow(),
    ]
    if "tensorboard" in options.report_to:
        tb = TensorBoardCallback()
        tb.logging_dir = str(output_dir / "runs")
        extra.append(tb)
    if recompute and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
    trainer = trainer_class()(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_datasets or None,
        data_collator=collator,
        processing_class=tokenizer,
        compute_loss_func=token_weighted_loss,
        callbacks=[*extra, *callbacks],
        embedding_lr=embedding_lr,
        stop_record=stop,
        eval_collator=eval_collator,
    )
    for c in trainer.callback_handler.callbacks:
        if hasattr(c, "attach"):
            c.attach(trainer)  # e.g. KorMedMCQACallback logs through trainer.log (same TensorBoard run)
        elif hasattr(c, "trainer"):
            c.trainer = trainer
    trainer.kormed_runtime = runtime
    from kormed.train.loss import loss_spec

    trainer.loss_spec = loss_spec(options.loss_impl, runtime.device, options.loss_chunk_size)
    return trainer


# --------------------------------------------------------------------------------------------------------------
# checkpoints: which one --resume continues, and what the data order depends on
# --------------------------------------------------------------------------------------------------------------

_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
DATA_ORDER_FILE = "kormed_data_order.json"  # in <output>/checkpoints/: the settings the data order depends on
LOG_STATE_FILE = "kormed_log_state_{}.json"  # in a checkpoint, per process: the open loss-logging window
# What a setting is called where the user sets it (for the one-line refusal of a resume that changes it).
_DATA_ORDER_LABELS = {
    "data_sha256": "training data (--data, file contents)",
    "max_length": "--max-length",
    "max_samples": "--max-samples",
    "eod_token": "eod_token",
    "packing_version": "packing version (kormed upgrade)",
    "seed": "--seed",
    "batch_size": "--batch-size",
    "grad_accum": "gradient accumulation per process (--grad-accum)",
    "processes": "number of training processes",
    "train_examples": "number of training examples",
}


def _checkpoint_dirs(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every `checkpoint-N` directory, oldest first."""
    try:
        entries = list(ckpt_dir.iterdir())
    except OSError:
        return []
    found = [(int(m.group(1)), p) for p in entries if (m := _CHECKPOINT_RE.match(p.name)) and p.is_dir()]
    return sorted(found)


def _safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file is not whole (header unreadable, or shorter/longer than its header says)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return "empty"
            n = int.from_bytes(head, "little")
            if n > size - 8:
                return "truncated header"
            header = json.loads(fh.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return "unreadable header"
    return None if size == 8 + n + end else f"{size} bytes, its header says {8 + n + end}"


def _zip_problem(path: Path) -> str | None:
    """Why a torch.save file (a zip archive; never unpickled here) is not whole."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            zf.infolist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return "truncated or not a torch file"
    return None


def non_finite_eval(metrics: dict[str, Any] | None) -> str | None:
    """The first validation loss in `metrics` that is NaN/inf (a set with 0 target tokens does not count)."""
    metrics = metrics or {}
    losses = [k for k, v in metrics.items() if k.startswith("eval") and k.endswith("_loss")
              and isinstance(v, int | float) and not isinstance(v, bool)]
    per_set = [k for k in losses if f"{k[:-5]}_tokens" in metrics]
    for k in per_set or losses:
        if not math.isfinite(metrics[k]) and metrics.get(f"{k[:-5]}_tokens", 1) > 0:
            return k
    return None


def _non_finite_weights(path: Path) -> str | None:
    """The first tensor of a .safetensors file with a NaN/inf value, or None."""
    import torch
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        for name in fh.keys():  # noqa: SIM118 - safe_open has keys(), no __iter__
            t = fh.get_tensor(name)
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                return name
    return None


def checkpoint_problem(path: str | Path, *, check_finite: bool = True) -> str | None:
    """Why `path` (a Trainer `checkpoint-N/`) cannot be resumed from, or None when it is complete and good.

    Complete: the Trainer writes the weights, optimizer, scheduler and RNG states (the first two inside
    DeepSpeed's `global_stepN/` under DeepSpeed), then `trainer_state.json` LAST; so trainer_state.json must
    parse and name step N, each of those must be present, every
    `.safetensors` file must be as long as its header says and every torch file (`.pt`/`.pth`/`.bin`) must be a
    whole zip archive (a kill -9 during a save leaves one of these wrong). Good (`check_finite`): the
    validation losses logged at step N and every weight in its `.safetensors` files are finite.
    """
    p = Path(path)
    m = _CHECKPOINT_RE.match(p.name)
    state_file = p / "trainer_state.json"
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
        step = int(state["global_step"])
    except FileNotFoundError:
        return "incomplete: no trainer_state.json"
    except (OSError, ValueError, KeyError, TypeError):
        return "incomplete: trainer_state.json unreadable"
    if m is not None and step != int(m.group(1)):
        return f"trainer_state.json says step {step}"
    try:
        names = sorted(e.name for e in p.iterdir())
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    # DeepSpeed keeps the optimizer and scheduler states in its own `global_stepN/` directory (and may have no
    # `scheduler.pt` at all when the scheduler is its own), next to a `latest` file naming that directory
    deepspeed = any(n.startswith("global_step") for n in names) and "latest" in names
    required = {
        "weights": lambda n: n.endswith(".safetensors") or n.startswith(("pytorch_model", "model")),
        "optimizer state": lambda n: n.startswith("optimizer") or deepspeed,
        "scheduler state": lambda n: n.startswith("scheduler") or deepspeed,
        "RNG state": lambda n: n.startswith("rng_state"),
    }
    for what, wanted in required.items():
        if not any(wanted(n) for n in names):
            return f"incomplete: no {what}"
    for name in names:
        f = p / name
        if not f.is_file():
            continue
        problem = (_safetensors_problem(f) if name.endswith(".safetensors")
                   else _zip_problem(f) if name.endswith((".pt", ".pth", ".bin")) else None)
        if problem:
            return f"incomplete: {name} {problem}"
    if not check_finite:
        return None
    for entry in state.get("log_history") or []:
        if entry.get("step") == step and (key := non_finite_eval(entry)):
            return f"not finite: {key} {entry[key]}"
    for name in names:
        if name.endswith(".safetensors"):
            try:
                bad = _non_finite_weights(p / name)
            except Exception as exc:  # noqa: BLE001 - any failure to read the weights makes it unusable
                return f"incomplete: {name} unreadable ({type(exc).__name__})"
            if bad:
                return f"not finite: weight {bad} in {name}"
    return None


def latest_good_checkpoint(ckpt_dir: str | Path) -> tuple[str | None, list[tuple[str, str]]]:
    """The newest checkpoint under `ckpt_dir` that is complete and good (:func:`checkpoint_problem`), and the
    newer ones passed over as (path, why)."""
    skipped: list[tuple[str, str]] = []
    for _, path in reversed(_checkpoint_dirs(Path(ckpt_dir))):
        problem = checkpoint_problem(path)
        if problem is None:
            return str(path), skipped
        skipped.append((str(path), problem))
    return None, skipped


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The newest complete, good Trainer checkpoint under output_dir/checkpoints, or None."""
    return latest_good_checkpoint(Path(output_dir) / "checkpoints")[0]


def trainer_data_order(trainer: Any) -> dict[str, Any]:
    """The Trainer-side settings the order of training batches depends on."""
    args = trainer.args
    ds = trainer.train_dataset
    return {
        "seed": args.data_seed if args.data_seed is not None else args.seed,
        "batch_size": args.per_device_train_batch_size,
        "grad_accum": args.gradient_accumulation_steps,
        "processes": args.world_size,
        "train_examples": len(ds) if hasattr(ds, "__len__") else None,
    }


def _show(key: str, value: Any) -> str:
    return f"{value[:12]}..." if key.endswith("sha256") and isinstance(value, str) else repr(value)


def check_data_order(output_dir: str | Path, current: dict[str, Any], log: Log = print) -> bool:
    """Refuse (KormedError naming the setting) when `current` differs from the settings recorded when the run in
    `output_dir` started; settings absent from either side are not compared. False when nothing is recorded."""
    record = Path(output_dir) / "checkpoints" / DATA_ORDER_FILE
    try:
        recorded = json.loads(record.read_text(encoding="utf-8"))["settings"]
    except FileNotFoundError:
        log(f"[kormed] --resume: no record of the data-order settings in {record.parent} (an older kormed); "
            "they cannot be checked")
        return False
    except (OSError, ValueError, KeyError, TypeError):
        raise KormedError("unreadable record of the run's data-order settings", path=record,
                          hint="delete it to resume without the check") from None
    for key, now in current.items():
        if key in recorded and recorded[key] != now:
            label = _DATA_ORDER_LABELS.get(key, key)
            raise KormedError(
                f"--resume with a different {label}: {_show(key, recorded[key])} when the checkpoints were written, "
                f"{_show(key, now)} now; the data order would not continue",
                path=record.parent, field=key,
                hint="resume with the run's original settings, or start a new run with another --output",
            )
    return True


@dataclasses.dataclass
class ResumePlan:
    """What :func:`plan_resume` decided: the checkpoint to continue (None: from the beginning) and the newer
    checkpoints passed over as (path, why)."""

    resume_from: str | None
    skipped: list[tuple[str, str]]


def plan_resume(output_dir: str | Path, *, resume: bool, data_order: dict[str, Any] | None = None,
                log: Log = print) -> ResumePlan:
    """Decide where training in `output_dir` starts; cheap, so callers run it before loading the model.

    Without `resume`, any `checkpoint-N/` of an earlier run is refused. With it: the newest complete, good
    checkpoint (one line for each newer one skipped), after checking `data_order` against the recorded settings.
    """
    ckpt_dir = Path(output_dir) / "checkpoints"
    existing = _checkpoint_dirs(ckpt_dir)
    if not resume:
        if existing:
            raise KormedError(
                "the output directory has checkpoints of an earlier run",
                path=existing[-1][1],
                hint="pass --resume to continue it, or choose another --output",
            )
        return ResumePlan(None, [])
    chosen, skipped = latest_good_checkpoint(ckpt_dir)
    for path, why in skipped:
        log(f"[kormed] --resume: skipping {Path(path).name} ({why}); it will be removed")
    if chosen is None:
        log(f"[kormed] --resume: no complete checkpoint in {ckpt_dir}, starting from the beginning")
    else:
        check_data_order(output_dir, data_order or {}, log=lambda m: None)
    return ResumePlan(chosen, skipped)


def _record_data_order(output_dir: Path, settings: dict[str, Any]) -> None:
    if is_main_process():
        write_json(output_dir / "checkpoints" / DATA_ORDER_FILE, {"settings": settings})


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
    resume_from = plan.resume_from
    if resume_from is not None:
        if not check_data_order(out, order, log=log):
            _record_data_order(out, order)
        trainer.args.eval_on_start = False  # the "before" validation is already in the restored history
        log(f"[kormed] resuming from {resume_from}")
    else:
        _record_data_order(out, order)
    if is_main_process():
        for path, _ in plan.skipped:  # newer than the resume point: incomplete or not finite
            shutil.rmtree(path, ignore_errors=True)
    start = time.time()
    trainer.train(resume_from_checkpoint=resume_from)
    wall = time.time() - start
    return summarize(trainer, wall_time=wall, resumed_from=resume_from)


def summarize(trainer: Any, *, wall_time: float, resumed_from: str | None = None) -> dict[str, Any]:
    """The run summary recorded in training_info.json (see :func:`run_training`)."""
    state = trainer.state
    evals = [
        {k: v for k, v in e.items() if k.startswith("eval_") or k in ("step", "epoch")}
        for e in state.log_history
        if "eval_loss" in e
    ]
    train_losses = [e["loss"] for e in state.log_history if "loss" in e]
    best_eval = None
    if state.best_global_step is not None:
        best_eval = next((e for e in evals if e.get("step") == state.best_global_step), None)
    elif evals:
        best_eval = min(evals, key=lambda e: e["eval_loss"])
    return {
        **trainer.stop_record.as_dict(),
        "global_step": state.global_step,
        "max_steps": state.max_steps,
        "epochs": state.epoch,
        "tokens_seen": int(state.num_input_tokens_seen),
        "wall_time_s": round(wall_time, 3),
        "resumed_from": resumed_from,
        "best_metric": state.best_metric,
        "best_step": getattr(state, "best_global_step", None),
        "best_checkpoint": state.best_model_checkpoint,
        "first_eval": evals[0] if evals else None,
        "best_eval": best_eval,
        "last_eval": evals[-1] if evals else None,
        "eval_history": evals,
        "kormedmcqa_history": [
            {"step": e.get("step"), "accuracy": e["eval_kormedmcqa_accuracy"]}
            for e in state.log_history
            if "eval_kormedmcqa_accuracy" in e
        ],
        "train_loss_last": train_losses[-1] if train_losses else None,
        "train_loss_first": train_losses[0] if train_losses else None,
        "gradient_accumulation_steps": trainer.args.gradient_accumulation_steps,
        "world_size": trainer.args.world_size,
        "effective_batch_size": trainer.args.per_device_train_batch_size
        * trainer.args.gradient_accumulation_steps
        * trainer.args.world_size,
    }


# --------------------------------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------------------------------


def _replace_into(src: Path, dst: Path) -> None:
    """Move `src` (file or directory) over `dst` with renames (atomic per entry on one filesystem)."""
    if dst.is_dir() and not dst.is_symlink():
        trash = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, trash)
        os.replace(src, dst)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(src, dst)


def save_adapter(
    model: Any, tokenizer: Any, output_dir: str | Path, info: dict[str, Any] | None = None, *,
    state_dict: dict[str, Any] | None = None,
) -> Path | None:
    """Write the seeds' layout into `output_dir`: adapter_config.json, adapter_model.safetensors, tokenizer/,
    training_info.json. Files are staged in a temporary directory and renamed into place; only the main
    process writes (returns None elsewhere). Pass `state_dict` when it had to be gathered (FSDP)."""
    if not is_main_process():
        return None
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with temp_dir(out, "save") as stage:  # kormed's temp naming: a killed run's leftover is removed next time
        # save_embedding_layers=False: the adapter stores only what was trained (LoRA, trained embedding rows or
        # a trained embedding copy); untrained resized rows are rebuilt bit-identically at load time from
        # kormed_adapter.json (see kormed.models.load_model_and_tokenizer), for every model class alike.
        model.save_pretrained(stage, safe_serialization=True, state_dict=state_dict, save_embedding_layers=False)
        tokenizer.save_pretrained(stage / "tokenizer")
        write_adapter_meta(stage, adapter_meta(model))
        for name in ("adapter_config.json", "adapter_model.safetensors", ADAPTER_META_FILE, "tokenizer"):
            if (stage / name).exists():
                _replace_into(stage / name, out / name)
        # README.md written by PEFT is not part of the layout; leave it in the stage to be removed
    if info is not None:
        write_json(out / "training_info.json", info)
    return out


def plot_training_curves(log_history: list[dict[str, Any]], path: str | Path, title: str = "") -> Path | None:
    """Loss (train and validation) and validation perplexity against the optimizer step, as a PNG."""
    if not is_main_process():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    evals = [(e["step"], e["eval_loss"], e.get("eval_perplexity")) for e in log_history if "eval_loss" in e]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    if train:
        ax1.plot([s for s, _ in train], [v for _, v in train], label="train loss", color="tab:blue")
    if evals:
        ax1.plot([s for s, _, _ in evals], [v for _, v, _ in evals], "o-", label="validation loss", color="tab:red")
        ax2.plot([s for s, _, _ in evals], [p for _, _, p in evals], "o-", color="tab:red")
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss (nats/token)")
    ax1.legend()
    ax1.grid(alpha=0.3)
    ax2.set_xlabel("step")
    ax2.set_ylabel("validation perplexity")
    if evals and all(p and p > 0 and math.isfinite(p) for _, _, p in evals):
        ax2.set_yscale("log")
    ax2.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_write(path, "wb", encoding=None) as fh:
        fig.savefig(fh, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return Path(path)


def gather_state_dict(trainer: Any) -> dict[str, Any] | None:
    """Full (unsharded) state dict under FSDP (a collective: call on every process); None otherwise."""
    if getattr(trainer, "is_fsdp_enabled", False):
        return trainer.accelerator.get_state_dict(trainer.model)
    return None


def finish_run(
    trainer: Any, tokenizer: Any, output_dir: str | Path, info: dict[str, Any], summary: dict[str, Any],
    *, save: bool = True,
) -> dict[str, Any]:
    """Write the final adapter (when `save`), training_info.json (info + summary) and training_curves.png.

    Call on every process (FSDP gathers the weights collectively); only the main process writes.
    Returns the full training info dict.
    """
    full = {**info, **summary}
    runtime = getattr(trainer, "kormed_runtime", None)
    if runtime is not None:
        full["runtime"] = dataclasses.asdict(runtime)
    spec = getattr(trainer, "loss_spec", None)
    if spec is not None:
        full["loss"] = dataclasses.asdict(spec)  # {"impl": "chunked", "chunk_size": 256}
    full["library_versions"] = library_versions()
    full = json.loads(json.dumps(full, default=str))  # plain JSON types only
    if save and hasattr(trainer, "trainable_finite") and not trainer.trainable_finite():
        # e.g. the last optimizer step of a run with an absurd learning rate: never publish NaN/inf weights
        save = False
        step = trainer.state.global_step
        last = latest_good_checkpoint(trainer.args.output_dir)[0]
        full.update(stop_reason=STOP_NON_FINITE, stop_step=step,
                    stop_detail=f"non-finite (NaN/inf) trainable weights after step {step}, no adapter saved; "
                    f"last good checkpoint: {last or 'none'}")
        if is_main_process():
            print(f"\n[kormed] {full['stop_detail']}. Lower the learning rate or check the data.", flush=True)
    state_dict = gather_state_dict(trainer) if save else None
    out = Path(output_dir)
    if save:
        save_adapter(trainer.model, tokenizer, out, full, state_dict=state_dict)
    elif is_main_process():
        write_json(out / "training_info.json", full)
    plot_training_curves(trainer.state.log_history, out / "training_curves.png", title=str(info.get("stage", "")))
    if trainer.args.world_size > 1:
        trainer.accelerator.wait_for_everyone()
    return full


# --------------------------------------------------------------------------------------------------------------
# signal handling (used by InterruptCallback)
# --------------------------------------------------------------------------------------------------------------


class SignalFlag:
    """Install SIGINT/SIGTERM handlers that set a flag (a second Ctrl-C aborts at once); restore on uninstall."""

    def __init__(self) -> None:
        self.raised: int | None = None
        self._old: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.raised is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.raised = signum
        if is_main_process():
            print(f"\n[kormed] {signal.Signals(signum).name}: saving a checkpoint after this step, then stopping "
                  "(Ctrl-C again aborts without saving)", flush=True)

    def uninstall(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old.clear()
