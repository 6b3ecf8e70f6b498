"""Compute precision: bf16 where the hardware multiplies bf16 natively, with fp32 trainable weights.

`--dtype` (`train.dtype`, `eval.dtype`) is `auto`, `float32` or `bfloat16`:

- CUDA: `auto` and `bfloat16` load the weights in bf16 and train with bf16 autocast (never fp16: Gemma 3
  overflows it); `float32` loads and computes in fp32.
- CPU: `bfloat16` does what CUDA does where the CPU has native bf16 matrix instructions (x86 AMX-BF16 or
  AVX512-BF16, Arm's BF16 extension): the frozen base weights load in bf16 and the matmuls run under
  `torch.autocast("cpu", dtype=torch.bfloat16)`. On a CPU without them torch multiplies bf16 in a scalar
  reference GEMM (a 4B forward at ~0.2 tokens/s on 2 AVX2 cores), which no one wants; there `bfloat16` means
  bf16 *storage* with fp32 *compute* (load dtype bfloat16, compute dtype float32, :func:`enable_fp32_compute`):
  the weights stay bf16 in memory and each matmul upcasts its one weight (and input) for the call.
  `float32` loads and computes in fp32. `auto` picks bf16 exactly where the CPU multiplies bf16 natively
  (about 3x faster than fp32 there), else fp32.

On either device the weights the optimizer updates (LoRA, a trained embedding copy or new rows) are kept in fp32
(`kormed.train.engine.model_setup.upcast_trainable_copies`): autocast runs their matmuls in bf16 while Adam updates fp32
masters. Loading the frozen base in bf16 rather than fp32 changes no trained value (the matmuls were bf16 under
autocast already) and halves its memory (measured by `kormed bench train`: benchmarks/README.md).

The detection reads the CPU feature flags (/proc/cpuinfo) rather than timing a probe: a flag check is exact,
instant and does not depend on how busy the machine is.
"""

from __future__ import annotations

import contextlib
import threading
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
    native = cpu_has_native_bf16()
    if requested == "auto":
        requested = "bfloat16" if native else "float32"
    if requested == "bfloat16" and not native:
        return "bfloat16", "float32"  # bf16 storage, fp32 matmuls (enable_fp32_compute)
    return requested, requested


def is_fp32_compute(load_dtype: str, compute_dtype: str) -> bool:
    """Whether a runtime keeps bf16 weights but multiplies in fp32 (a CPU without native bf16)."""
    return load_dtype == "bfloat16" and compute_dtype == "float32"


def autocast(device: Any, compute_dtype: str | None = None) -> Any:
    """`torch.autocast` to bf16 on `device` (a str or torch.device) when `compute_dtype` is bfloat16, else a no-op
    context. `compute_dtype` None: what `--dtype auto` picks on that device (evaluation helpers use this)."""
    device = str(device)
    if compute_dtype is None:
        compute_dtype = resolve_dtypes(device, "auto")[1]
    if compute_dtype != "bfloat16":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16)


# --- bf16 storage, fp32 compute -----------------------------------------------------------------------------
# Hand-written because neither torch nor transformers offers it: torch.autocast only casts *down* (to bf16/fp16),
# and transformers' dtype= loads and computes in one dtype. A TorchFunctionMode sees every torch call a model
# makes - its own layers, PEFT's wrappers that call F.linear/F.embedding on a merged weight, Gemma 3's
# multimodal projector (a bare torch.matmul) - so one rule covers them all without per-module patches.

F = torch.nn.functional
# calls whose bf16 tensor arguments are upcast to fp32 (matrix products and normalisations over a bf16 weight)
_UPCAST_FUNCS = frozenset({
    F.conv1d, F.conv2d, F.conv3d, F.layer_norm, F.group_norm, F.scaled_dot_product_attention,
    F.multi_head_attention_forward,  # SigLIP's pooling head (nn.MultiheadAttention)
    torch.matmul, torch.mm, torch.bmm, torch.addmm, torch.baddbmm, torch.einsum,
    torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.mm, torch.Tensor.bmm,
})


def _up(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.dtype == torch.bfloat16:
        return value.float()
    if isinstance(value, (list, tuple)):
        return type(value)(_up(v) for v in value)
    return value


class _Bf16WeightLinear(torch.autograd.Function):
    """`F.linear` in fp32 over a bf16 weight that saves the bf16 weight (not its fp32 copy) for the backward
    pass, so training holds no fp32 copy of the frozen layers."""

    @staticmethod
    def forward(ctx: Any, x: Any, weight: Any, bias: Any) -> Any:
        need_w = ctx.needs_input_grad[1]
        ctx.save_for_backward(weight, x if need_w else None)
        ctx.has_bias = bias is not None
        return F.linear(x.float(), weight.float(), bias.float() if bias is not None else None)

    @staticmethod
    def backward(ctx: Any, grad: Any) -> Any:
        weight, x = ctx.saved_tensors
        grad_x = grad @ weight.float() if ctx.needs_input_grad[0] else None
        grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = (grad.reshape(-1, grad.shape[-1]).t() @ x.float().reshape(-1, x.shape[-1])).to(weight.dtype)
        grad_b = grad.reshape(-1, grad.shape[-1]).sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


class Fp32Compute(torch.overrides.TorchFunctionMode):
    """Inside it, bf16 weights are multiplied in fp32: `F.linear` upcasts its one weight for the call,
    `F.embedding` gathers bf16 rows and returns them in fp32, matrix products and layer norms upcast their
    bf16 arguments. Nothing is cast in place: the transient memory is one layer's weight."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight, bias = _linear_args(*args, **kwargs)
            if weight.dtype == torch.bfloat16 or x.dtype == torch.bfloat16:
                return _Bf16WeightLinear.apply(x, weight, bias)
            return func(*args, **kwargs)
        if func is F.embedding:
            out = func(*args, **kwargs)
            return out.float() if out.dtype == torch.bfloat16 else out
        if func in _UPCAST_FUNCS:
            return func(*_up(args), **{k: _up(v) for k, v in kwargs.items()})
        return func(*args, **kwargs)


def _linear_args(input: Any, weight: Any, bias: Any = None) -> tuple[Any, Any, Any]:  # noqa: A002 - F.linear's names
    return input, weight, bias


class _ModeDepth(threading.local):
    """Per thread (torch's mode stack is per thread): how many hooked forwards are open, and the mode they share."""

    depth = 0
    mode: Fp32Compute | None = None


_MODE = _ModeDepth()


def _enter(module: Any, args: Any) -> None:
    if _MODE.depth == 0:
        _MODE.mode = Fp32Compute()
        _MODE.mode.__enter__()
    _MODE.depth += 1


def _exit(module: Any, args: Any, output: Any) -> None:
    _MODE.depth -= 1
    if _MODE.depth == 0 and _MODE.mode is not None:
        _MODE.mode.__exit__(None, None, None)
        _MODE.mode = None


def enable_fp32_compute(model: Any) -> Any:
    """Make `model` (weights loaded in bf16) compute in fp32 on every call: each module's forward - the whole
    model's, and each decoder layer's when gradient checkpointing recomputes it in the backward pass - runs
    inside :class:`Fp32Compute`. Only hooks are added (nothing enters the state dict); Gemma 3's scaled
    embedding keeps its exact fp32 scale (its forward rounds the scale to the weight dtype)."""
    if getattr(model, "_kormed_fp32_compute", False):
        return model
    for module in model.modules():
        module.register_forward_pre_hook(_enter)
        module.register_forward_hook(_exit, always_call=True)
        if hasattr(module, "scalar_embed_scale") and isinstance(getattr(module, "embed_scale", None), torch.Tensor):
            module.embed_scale = torch.tensor(float(module.scalar_embed_scale), dtype=torch.float32,
                                              device=module.embed_scale.device)
            module.forward = _scaled_embedding_forward.__get__(module)
    model._kormed_fp32_compute = True
    return model


def _scaled_embedding_forward(self: Any, input_ids: Any) -> Any:
    """Gemma 3's scaled embedding with the scale in fp32 (its own forward casts the scale to bf16 first)."""
    return torch.nn.Embedding.forward(self, input_ids) * self.embed_scale


def _contiguous_head_input(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return (args[0].contiguous(), *args[1:])


def contiguous_head_input(model: Any) -> Any:
    """Give the output layer a contiguous input (a forward pre-hook; nothing enters the state dict).

    transformers slices the positions whose logits are wanted before the head (`hidden_states[:, -k:, :]`,
    `logits_to_keep`: loglik scoring, the first step of generation). Without autograd, torch.matmul cannot fold
    such a strided 3-D input into one matrix product: it broadcasts the head's weight (Gemma 3: 262,144 x 640)
    into a batched product and, in bf16 on a CPU, copies it once per row - 12.3 s instead of 0.05 s for 8 rows
    (torch 2.13, AVX512-BF16, 2026-12-07). Copying the few sliced rows instead costs nothing."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and not getattr(head, "_kormed_contiguous_input", False):
        head.register_forward_pre_hook(_contiguous_head_input)
        head._kormed_contiguous_input = True
    return model
