"""Compute precision: bf16 where the hardware multiplies bf16 natively, with fp32 trainable weights.

`--dtype` (`train.dtype`, `eval.dtype`) is `auto`, `float32` or `bfloat16`:

- CUDA: `auto` and `bfloat16` load the weights in bf16 and train with bf16 autocast (never fp16: Gemma 3
  overflows it); `float32` loads and computes in fp32.
- CPU: `bfloat16` does what CUDA does: the frozen base weights load in bf16 and the matmuls run under
  `torch.autocast("cpu", dtype=torch.bfloat16)`; `float32` loads and computes in fp32. `auto` picks bf16
  exactly where the CPU has native bf16 matrix instructions (x86 AMX-BF16 or AVX512-BF16, Arm's BF16
  extension), which multiply bf16 about 3x faster than fp32 on such a CPU; without them bf16 is emulated and
  slower, so `auto` stays fp32.

On either device the weights the optimizer updates (LoRA, a trained embedding copy or new rows) are kept in fp32
(`kormed.train.model_setup.upcast_trainable_copies`): autocast runs their matmuls in bf16 while Adam updates fp32
masters. Loading the frozen base in bf16 rather than fp32 changes no trained value (the matmuls were bf16 under
autocast already) and halves its memory (measured by `kormed bench train`: benchmarks/README.md).

The detection reads the CPU feature flags (/proc/cpuinfo) rather than timing a probe: a flag check is exact,
instant and does not depend on how busy the machine is.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch

from kormed.errors import KormedError

DTYPES = ("auto", "float32", "bfloat16")
# /proc/cpuinfo feature flags meaning native bf16 matrix arithmetic (x86 `flags`, aarch64 `Features`)
X86_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
ARM_BF16_FLAGS = frozenset({"bf16"})


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The feature flags of the CPU (union over cores) from /proc/cpuinfo text; empty where it is unreadable."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return set()
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return flags


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU multiplies bf16 matrices natively (AMX-BF16 / AVX512-BF16 on x86, BF16 on Arm)."""
    flags = cpu_flags(cpuinfo)
    return bool(flags & X86_BF16_FLAGS) or bool(flags & ARM_BF16_FLAGS)


def resolve_dtypes(device: str, requested: str = "auto") -> tuple[str, str]:
    """(load dtype, compute dtype) of a run on `device` for `--dtype requested` (see the module docstring)."""
    if requested not in DTYPES:
        raise KormedError(f"unknown dtype '{requested}' (use {', '.join(DTYPES)})", field="dtype")
    if str(device).startswith("cuda"):
        return ("float32", "float32") if requested == "float32" else ("bfloat16", "bfloat16")
    if requested == "auto":
        requested = "bfloat16" if cpu_has_native_bf16() else "float32"
    return requested, requested


def autocast(device: Any, compute_dtype: str | None = None) -> Any:
    """`torch.autocast` to bf16 on `device` (a str or torch.device) when `compute_dtype` is bfloat16, else a no-op
    context. `compute_dtype` None: what `--dtype auto` picks on that device (evaluation helpers use this)."""
    device = str(device)
    if compute_dtype is None:
        compute_dtype = resolve_dtypes(device, "auto")[1]
    if compute_dtype != "bfloat16":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16)
