"""What a finished run leaves in its output directory: the adapter in the seeds' layout, `training_info.json`
(model info + the run summary) and `training_curves.png`. Only the main process writes."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import math
import platform
import shutil
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure  # the object API: no pyplot, no process-wide backend to set
from peft import PeftModel

from kormed.io import atomic_write, read_json, replace_path, temp_dir, write_json
from kormed.models import SAVED_ADAPTER_ENTRIES, adapter_meta, write_adapter_meta
from kormed.run_files import TRAINING_INFO, TRAINING_INFO_VERSION, SFTStepRecord, TrainingInfo, TrainingSummary
from kormed.stop_reason import StopReason
from kormed.train.engine.checkpoints import latest_good_checkpoint
from kormed.train.engine.processes import is_main_process
from kormed.weights import route_safetensors_writes, staged_as


def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide training numerics (recorded in training_info.json)."""
    out = {"python": platform.python_version()}
    for name in ("kormed", "torch", "transformers", "peft", "accelerate", "datasets", "trl", "tokenizers"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def summarize(trainer: Any, *, wall_time: float, resumed_from: str | None = None) -> dict[str, Any]:
    """The run summary recorded in training_info.json (a TrainingSummary, as its JSON; see :func:`run_training`)."""
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
    return dataclasses.asdict(TrainingSummary(
        **trainer.stop_record.as_dict(),
        global_step=state.global_step,
        max_steps=state.max_steps,
        epochs=state.epoch,
        tokens_seen=int(state.num_input_tokens_seen),
        wall_time_s=round(wall_time, 3),
        resumed_from=resumed_from,
        best_metric=state.best_metric,
        best_step=getattr(state, "best_global_step", None),
        best_checkpoint=state.best_model_checkpoint,
        first_eval=evals[0] if evals else None,
        best_eval=best_eval,
        last_eval=evals[-1] if evals else None,
        eval_history=evals,
        kormedmcqa_history=[
            {"step": e.get("step"), "accuracy": e["eval_kormedmcqa_accuracy"]}
            for e in state.log_history
            if "eval_kormedmcqa_accuracy" in e
        ],
        train_loss_last=train_losses[-1] if train_losses else None,
        train_loss_first=train_losses[0] if train_losses else None,
        gradient_accumulation_steps=trainer.args.gradient_accumulation_steps,
        world_size=trainer.args.world_size,
        effective_batch_size=trainer.args.per_device_train_batch_size
        * trainer.args.gradient_accumulation_steps
        * trainer.args.world_size,
    ))


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
    route_safetensors_writes()  # adapter_model.safetensors: umask mode, no partial file on a full disk
    # kormed's temp naming: a killed run's leftover is removed next time; a full disk names the output, not the stage
    with temp_dir(out, "save") as stage, staged_as(stage, out):
        # save_embedding_layers=False: the adapter stores only what was trained (LoRA, trained embedding rows or
        # a trained embedding copy); untrained resized rows are rebuilt bit-identically at load time from
        # kormed_adapter.json (see kormed.models.load_model_and_tokenizer), for every model class alike.
        model.save_pretrained(stage, safe_serialization=True, state_dict=state_dict, save_embedding_layers=False)
        tokenizer.save_pretrained(stage / "tokenizer")
        write_adapter_meta(stage, adapter_meta(model))
        for name in SAVED_ADAPTER_ENTRIES:
            if (stage / name).exists():
                replace_path(stage / name, out / name)
        # README.md written by PEFT is not part of the layout; leave it in the stage to be removed
        if is_full_model_dir(out):  # an earlier full fine-tune in the same output directory
            for name in full_model_entries(out):
                if (out / name).exists() and name not in SAVED_ADAPTER_ENTRIES:
                    _remove(out / name)
    if info is not None:
        write_json(out / TRAINING_INFO, info)
    return out


FULL_MODEL_META = "kormed_model.json"  # written into every full fine-tune's directory: {"method": "full", files}


def is_full_model_dir(path: str | Path) -> bool:
    """Whether `path` holds a full fine-tune kormed wrote (`train.method full`) rather than an adapter."""
    return (Path(path) / FULL_MODEL_META).is_file()


def full_model_entries(path: str | Path) -> list[str]:
    """The files of a full fine-tune's model directory (as :func:`save_full_model` recorded them)."""

    meta = read_json(Path(path) / FULL_MODEL_META, what="full model record")
    return [*meta.get("files", []), FULL_MODEL_META]


def save_full_model(
    model: Any, tokenizer: Any, output_dir: str | Path, info: dict[str, Any] | None = None, *,
    state_dict: dict[str, Any] | None = None,
) -> Path | None:
    """Write a full fine-tune as a model directory `--model` takes: safetensors weights (as trained: fp32 master
    weights, a frozen vision tower in its loaded dtype), config.json, the tokenizer beside them,
    kormed_model.json and training_info.json. Staged, then renamed into place (an earlier adapter's files in
    `output_dir` are removed, so the directory is one thing); only the main process writes."""
    if not is_main_process():
        return None
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    route_safetensors_writes()
    with temp_dir(out, "save") as stage, staged_as(stage, out):
        model.save_pretrained(stage, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(stage)
        files = sorted(p.name for p in stage.iterdir() if p.name != "README.md")
        write_json(stage / FULL_MODEL_META, {"format": 1, "method": "full", "model_class": type(model).__name__,
                                             "embedding_rows": int(model.get_input_embeddings().weight.shape[0]),
                                             "files": files})
        for name in SAVED_ADAPTER_ENTRIES:  # a LoRA run's adapter left in the same output directory
            if (out / name).exists():
                _remove(out / name)
        for name in [*files, FULL_MODEL_META]:
            replace_path(stage / name, out / name)
    if info is not None:
        write_json(out / TRAINING_INFO, info)
    return out


def _remove(path: Path) -> None:

    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


def save_trained(model: Any, tokenizer: Any, output_dir: str | Path, info: dict[str, Any] | None = None, *,
                 state_dict: dict[str, Any] | None = None) -> Path | None:
    """The trained model's output: an adapter for a PEFT model (LoRA), a full model directory otherwise."""

    save = save_adapter if isinstance(model, PeftModel) else save_full_model
    return save(model, tokenizer, output_dir, info, state_dict=state_dict)


def plot_training_curves(log_history: list[dict[str, Any]], path: str | Path, title: str = "") -> Path | None:
    """Loss (train and validation) and validation perplexity against the optimizer step, as a PNG."""
    if not is_main_process():
        return None
    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    evals = [(e["step"], e["eval_loss"], e.get("eval_perplexity")) for e in log_history if "eval_loss" in e]
    fig = Figure(figsize=(10, 4))
    ax1, ax2 = fig.subplots(1, 2)
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
    return Path(path)


def gather_state_dict(trainer: Any) -> dict[str, Any] | None:
    """Full (unsharded) state dict under FSDP (a collective: call on every process); None otherwise."""
    if getattr(trainer, "is_fsdp_enabled", False):
        return trainer.accelerator.get_state_dict(trainer.model)
    return None


def finish_run(
    trainer: Any, tokenizer: Any, output_dir: str | Path, info: dict[str, Any], summary: dict[str, Any],
    *, save: bool = True, sft: SFTStepRecord | None = None,
) -> TrainingInfo:
    """Write the final adapter (when `save`), training_info.json and training_curves.png.

    `info` is the recipe's record (stage, config, data, the model as prepared ...), `summary` the engine's (or an
    SFT step's verdict over it), `sft` an SFT step's own record. Call on every process (FSDP gathers the weights
    collectively); only the main process writes. Returns the training info as written.
    """
    full = TrainingInfo.from_json(json.loads(json.dumps({  # plain JSON types only
        **info, **(dataclasses.asdict(sft) if sft is not None else {}), **summary,
        "runtime": dataclasses.asdict(trainer.runtime),
        "loss": dataclasses.asdict(trainer.loss_spec),  # {"impl": "chunked", "chunk_size": 256}
        "library_versions": library_versions(), "version": TRAINING_INFO_VERSION,
    }, default=str)))
    done = full.summary
    if save and hasattr(trainer, "trainable_finite") and not trainer.trainable_finite():
        # e.g. the last optimizer step of a run with an absurd learning rate: never publish NaN/inf weights
        save = False
        step = trainer.state.global_step
        last = latest_good_checkpoint(trainer.args.output_dir)[0]
        done.stop_reason, done.stop_step = StopReason.NON_FINITE_LOSS.value, step
        done.stop_detail = (f"non-finite (NaN/inf) trainable weights after step {step}, no adapter saved; "
                            f"last good checkpoint: {last or 'none'}")
        if is_main_process():
            print(f"\n[kormed] {done.stop_detail}. Lower the learning rate or check the data.", flush=True)
    state_dict = gather_state_dict(trainer) if save else None
    out = Path(output_dir)
    if save:
        save_trained(trainer.model, tokenizer, out, full.to_json(), state_dict=state_dict)
    elif is_main_process():
        write_json(out / TRAINING_INFO, full.to_json())
    plot_training_curves(trainer.state.log_history, out / "training_curves.png", title=str(info.get("stage", "")))
    if trainer.args.world_size > 1:
        trainer.accelerator.wait_for_everyone()
    return full
