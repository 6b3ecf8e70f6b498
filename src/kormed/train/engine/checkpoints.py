"""Trainer checkpoints: which one is complete and good, which one --resume continues, and the record of the
settings the data order depends on (a resume that changes one is refused).

Layout: `<output>/checkpoints/checkpoint-N/` (the Trainer's), `<output>/checkpoints/kormed_data_order.json`, and
per process `kormed_log_state_<rank>.json` inside a checkpoint (the open loss-logging window)."""

from __future__ import annotations

import dataclasses
import math
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from kormed.errors import KormedError
from kormed.io import Log, read_json, write_json
from kormed.train.engine.processes import is_main_process
from kormed.weights import safetensors_problem

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
    "streaming": "--streaming (file order instead of the cache's shuffled order)",
}
# The settings the checkpoints' weights depend on (the model's shape), recorded and checked with the data order.
_MODEL_SHAPE_LABELS = {
    "base_model": "base model (--model)",
    "tokenizer_sha256": "tokenizer (--tokenizer-path, tokenizer.json contents)",
    "adapter_sha256": "starting adapter (--adapter, file contents)",
    "quantize": "--quantize",
    "lora_r": "LoRA rank (--lora.r)",
    "lora_alpha": "LoRA alpha (--lora.alpha)",
    "lora_target_modules": "LoRA target modules (--lora.target-modules)",
    "lora_use_rslora": "rsLoRA setting (--lora.use-rslora)",
    "lora_train_embeddings": "embedding training (--train-embeddings)",
    "lora_embedding_rows": "trained embedding rows (--lora.embedding-rows)",
}


def _checkpoint_dirs(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every `checkpoint-N` directory, oldest first."""
    try:
        entries = list(ckpt_dir.iterdir())
    except OSError:
        return []
    found = [(int(m.group(1)), p) for p in entries if (m := _CHECKPOINT_RE.match(p.name)) and p.is_dir()]
    return sorted(found)


def _zip_problem(path: Path) -> str | None:
    """Why a torch.save file (a zip archive; never unpickled here) is not whole."""
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
        state = read_json(state_file) if state_file.is_file() else None
        if state is None:
            return "incomplete: no trainer_state.json"
        step = int(state["global_step"])
    except (OSError, ValueError, KeyError, TypeError, KormedError):
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
        problem = (safetensors_problem(f) if name.endswith(".safetensors")
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
    `output_dir` started (what the data order and the model's shape depend on); settings absent from either side
    are not compared. False when nothing is recorded."""
    record = Path(output_dir) / "checkpoints" / DATA_ORDER_FILE
    if not record.is_file():
        log(f"[kormed] --resume: no record of the data-order settings in {record.parent} (an older kormed); "
            "they cannot be checked")
        return False
    try:
        recorded = read_json(record, what="data-order record")["settings"]
    except (OSError, ValueError, KeyError, TypeError, KormedError):
        raise KormedError("unreadable record of the run's data-order settings", path=record,
                          hint="delete it to resume without the check") from None
    for key, now in current.items():
        if key in recorded and recorded[key] != now:
            label = _MODEL_SHAPE_LABELS.get(key) or _DATA_ORDER_LABELS.get(key, key)
            why = ("the checkpoints' weights would not fit the model" if key in _MODEL_SHAPE_LABELS
                   else "the data order would not continue")
            raise KormedError(
                f"--resume with a different {label}: {_show(key, recorded[key])} when the checkpoints were written, "
                f"{_show(key, now)} now; {why}",
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


def start_from_plan(output_dir: str | Path, plan: ResumePlan, data_order: dict[str, Any],
                    log: Log = print) -> str | None:
    """Act on `plan` when training starts: check (resuming) or record (starting) the data-order settings, and
    remove the checkpoints passed over. Returns the checkpoint to resume from, or None."""
    out = Path(output_dir)
    if plan.resume_from is not None:
        if not check_data_order(out, data_order, log=log):
            _record_data_order(out, data_order)
        log(f"[kormed] resuming from {plan.resume_from}")
    else:
        _record_data_order(out, data_order)
    if is_main_process():
        for path, _ in plan.skipped:  # newer than the resume point: incomplete or not finite
            shutil.rmtree(path, ignore_errors=True)
    return plan.resume_from
