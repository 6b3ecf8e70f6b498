"""Which process this is and how many train together (`accelerate launch` / torchrun), and the per-process
gradient accumulation that keeps the effective batch the same however many processes there are."""

from __future__ import annotations

import os
import warnings

from accelerate import PartialState

from kormed.train.config import TrainOptions


def is_main_process() -> bool:
    """True on the process that writes outputs (rank 0), also before/without torch.distributed."""
    if PartialState._shared_state:  # initialised (by the Trainer or the stage runner): ask it
        return PartialState().is_main_process
    # Not initialised yet: do not create it here, its first construction fixes the backend (cpu=True -> gloo)
    return int(os.environ.get("RANK", "0")) == 0


def world_size() -> int:
    """Number of training processes (`accelerate launch` / torchrun set WORLD_SIZE)."""
    return max(1, int(os.environ.get("WORLD_SIZE", "1")))


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
