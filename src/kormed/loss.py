"""Next-token loss without full-vocabulary logits (training, validation and `kormed eval ppl`).

With Gemma's 262,144-token vocabulary the logits are the largest tensor of a training step (2 x 512 tokens
in fp32: 1 GB, plus its gradient). Here the model runs up to its final hidden states only, the hidden states
are kept only where the shifted label is learned (SFT: the answers), and those rows are projected to the
vocabulary by one of:

- `liger`: Liger-Kernel's fused linear cross-entropy (CUDA, `pip install kormed[gpu]`);
- `chunked`: kormed's token-chunked fused loss (:class:`ChunkedLinearCrossEntropy`): the learned rows are
  projected `chunk_size` tokens at a time (a [chunk_size, vocab] slice lives only while its chunk is processed),
  and the gradient with respect to the hidden states (and the projection weight, when it is trained) is computed
  in the same pass and kept, so the backward pass is a scaling, not a recomputation. Runs on every device;
- `full`: the model's own logits (the reference the others are tested against).

`auto` is liger on CUDA when liger-kernel is installed, else chunked. Every implementation computes the same
quantity as before: the sum of per-token NLL of the micro-batch, divided by the number of target tokens of the
whole accumulated batch (`num_items_in_batch`), so gradient accumulation and DDP stay exact.

How the hidden states are obtained: the model is called as usual (so DDP, PEFT, gradient checkpointing,
`position_ids` of padding-free rows and the multimodal class's own masking all apply), with a forward pre-hook
on its output projection (`get_output_embeddings()`, i.e. the module PEFT may have wrapped) that records the
projection's input and hands the projection an empty slice: the model's "logits" come back with 0 positions.
The projection weight is then read from that same module: PEFT's wrappers return the weight being trained
(the `modules_to_save` copy, or the base rows with the `trainable_token_indices` rows merged in).
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel
from peft.tuners.tuners_utils import BaseTunerLayer

from kormed.errors import KormedError

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover - a torch build without torch.distributed: no sharded weights either
    DTensor = ()

LOSS_IMPLS = ("auto", "liger", "chunked", "full")
IGNORE_INDEX = -100
DEFAULT_CHUNK_SIZE = 256  # tokens per chunk: 256 x 262,144 logits = 256 MB in fp32


@dataclass(frozen=True)
class LossSpec:
    """A resolved loss implementation (`liger`, `chunked` or `full`) and the number of tokens of a chunk."""

    impl: str = "chunked"
    chunk_size: int = DEFAULT_CHUNK_SIZE


def liger_available() -> bool:
    """Whether liger-kernel is importable (without importing it: it needs Triton)."""
    return importlib.util.find_spec("liger_kernel") is not None


def resolve_loss_impl(requested: str, device: str) -> str:
    """`auto` -> liger on CUDA with liger-kernel installed, else chunked; an impossible choice is a KormedError."""
    if requested not in LOSS_IMPLS:
        raise KormedError(f"unknown loss implementation {requested!r} (choose from {', '.join(LOSS_IMPLS)})",
                          field="train.loss_impl")
    cuda = str(device).startswith("cuda")
    if requested == "auto":
        return "liger" if cuda and liger_available() else "chunked"
    if requested == "liger":
        if not cuda:
            raise KormedError(f"the Liger fused loss needs a CUDA device, this run uses {device}",
                              field="train.loss_impl", hint="use loss_impl chunked (or auto)")
        if not liger_available():
            raise KormedError("the Liger fused loss needs liger-kernel, which is not installed",
                              field="train.loss_impl", hint="pip install 'kormed[gpu]', or use loss_impl chunked")
    return requested


def loss_spec(requested: str, device: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> LossSpec:
    """The LossSpec a run with `train.loss_impl` = `requested` on `device` uses."""
    if chunk_size < 1:
        raise KormedError("must be at least 1", field="train.loss_chunk_size")
    return LossSpec(resolve_loss_impl(requested, device), int(chunk_size))


# --------------------------------------------------------------------------------------------------------------
# the output projection and the final hidden states
# --------------------------------------------------------------------------------------------------------------


def _unwrap(model: Any) -> Any:
    return extract_model_from_parallel(model)


def output_head(model: Any) -> tuple[Any, float | None]:
    """The output projection module (as PEFT wraps it) and the final-logit softcap the model class applies."""
    inner = _unwrap(model)
    head = inner.get_output_embeddings()
    if head is None:
        raise KormedError(f"{type(inner).__name__} has no output projection (get_output_embeddings() is None)",
                          field="train.loss_impl", hint="use loss_impl full")
    if isinstance(head, BaseTunerLayer):
        raise KormedError("the output projection (lm_head) carries a LoRA adapter, which a loss that reads its "
                          "weight would leave untrained", field="train.loss_impl",
                          hint="use loss_impl full, or keep lm_head out of lora.target_modules")
    base = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    # Gemma3ForCausalLM caps its logits with its (text) config's final_logit_softcapping; the multimodal
    # Gemma3ForConditionalGeneration applies none (its top-level config has no such field): mirror the class.
    softcap = getattr(base.config, "final_logit_softcapping", None)
    return head, (float(softcap) if softcap else None)


def head_weight(head: Any) -> tuple[Any, Any]:
    """(weight, bias) of the output projection: PEFT's wrappers return the trained weight (see module doc)."""
    weight = head.weight
    bias = getattr(head, "bias", None)
    if isinstance(weight, DTensor):  # FSDP2 shards parameters; the projection needs the whole matrix (as TRL does)
        weight = weight.full_tensor()
        bias = bias.full_tensor() if isinstance(bias, DTensor) else bias
    return weight, bias


@contextlib.contextmanager
def _skip_projection(head: Any) -> Iterator[list[Any]]:
    """While active, calls of `head` record their input and project an empty slice of it instead."""
    captured: list[Any] = []

    def hook(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        captured.append(args[0])
        return (args[0][..., :0, :], *args[1:])

    handle = head.register_forward_pre_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def final_hidden_states(model: Any, inputs: dict[str, Any], head: Any = None) -> Any:
    """The hidden states the model would project to logits, [batch, seq, hidden], without projecting them.

    `inputs`: the model inputs without `labels` (input_ids, attention_mask or position_ids, ...)."""
    head = head if head is not None else output_head(model)[0]
    with _skip_projection(head) as captured:
        model(**{**inputs, "use_cache": False})
    if len(captured) != 1:
        raise RuntimeError(f"expected one call of the output projection, saw {len(captured)}")
    return captured[0]


# --------------------------------------------------------------------------------------------------------------
# per-token NLL
# --------------------------------------------------------------------------------------------------------------


def shifted_nll(logits: Any, labels: Any) -> tuple[Any, Any]:
    """Per-sequence sum of next-token NLL and count of target tokens from full logits (label -100 ignored)."""
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:].to(shift_logits.device)
    nll = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(shift_labels.shape)
    valid = shift_labels.ne(IGNORE_INDEX)
    return (nll * valid).sum(dim=1), valid.sum(dim=1)


def _targets(hidden: Any, labels: Any) -> tuple[Any, Any, Any]:
    """(hidden rows that predict a learned label [N, H], those labels [N], mask [batch, seq-1])."""
    shift = labels[:, 1:].to(hidden.device)
    mask = shift.ne(IGNORE_INDEX)
    return hidden[:, :-1][mask], shift[mask], mask


def _matmul_dtype(hidden: Any) -> Any:
    """The dtype the projection runs in: the caller's autocast dtype, else the hidden states' own."""
    device_type = hidden.device.type
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype


# rows of a bf16 projection upcast at a time where the matmuls run in fp32 over bf16 storage
# (kormed.precision.enable_fp32_compute): 32K x 2,560 fp32 = 335 MB, not the whole 2.7 GB head of MedGemma-4B
UPCAST_ROWS = 32768


def _cast_weight(weight: Any, dtype: Any) -> Any:
    """`weight` in `dtype` once for all chunks, unless that would upcast a narrower weight (bf16 storage, fp32
    compute): then it stays as it is and :func:`_project` / :func:`_back_project` upcast it slice by slice."""
    if weight.dtype.itemsize < dtype.itemsize:
        return weight
    return weight.to(dtype)


def _project(h: Any, w: Any, b: Any) -> Any:
    """`F.linear(h, w, b)`, upcasting a narrower `w` UPCAST_ROWS output rows at a time."""
    if w.dtype == h.dtype:
        return F.linear(h, w, b)
    out = torch.cat([F.linear(h, w[i:i + UPCAST_ROWS].to(h.dtype)) for i in range(0, w.shape[0], UPCAST_ROWS)], -1)
    return out + b if b is not None else out


def _back_project(grad: Any, w: Any) -> Any:
    """`grad @ w`, upcasting a narrower `w` UPCAST_ROWS rows at a time."""
    if w.dtype == grad.dtype:
        return grad @ w
    out = grad[:, :UPCAST_ROWS] @ w[:UPCAST_ROWS].to(grad.dtype)
    for i in range(UPCAST_ROWS, w.shape[0], UPCAST_ROWS):
        out += grad[:, i:i + UPCAST_ROWS] @ w[i:i + UPCAST_ROWS].to(grad.dtype)
    return out


def _chunk_log_probs(h: Any, w: Any, b: Any, softcap: float | None, acc: Any) -> tuple[Any, Any]:
    """(log-probabilities [rows, vocab] in `acc`, tanh of the capped logits or None) of one chunk's rows."""
    logits = _project(h, w, b)
    capped = torch.tanh(logits.to(acc) / softcap) if softcap is not None else None
    return torch.log_softmax(capped * softcap if capped is not None else logits, -1, dtype=acc), capped


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Sum of next-token NLL of `hidden @ weight.T (+ bias)` (optionally soft-capped), token chunk by token chunk.

    Written here because no maintained library does this on CPU: Liger's fused linear cross-entropy (the same
    idea: gradients computed in the forward pass) is Triton-only, and TRL's `ChunkedLogProbFunction` falls back
    to torch ops that recompute every tile in the backward pass; measured on the 2-core CPU (2,048 tokens x 262,144
    vocabulary, bf16 autocast) this function is several times faster than that fallback. For each chunk: one
    matmul to the logits (autocast dtype), torch's fused `log_softmax` into fp32, the NLL of the targets, and -
    in the same pass - the gradient of the summed NLL with respect to the logits (softmax - one-hot, times the
    soft-cap's derivative), which two more matmuls turn into the gradients of the hidden rows and, when they
    are trained, of the weight / bias. Those are accumulated in fp32; the backward pass only scales them by the
    incoming gradient, so the projection is never recomputed and no [tokens, vocab] tensor outlives its chunk."""

    @staticmethod
    def forward(ctx: Any, hidden: Any, weight: Any, bias: Any, targets: Any, chunk_size: int,
                softcap: float | None) -> Any:
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        device_type = hidden.device.type
        dtype = _matmul_dtype(hidden)
        acc = torch.promote_types(dtype, torch.float32)  # softmax / NLL / gradient sums: fp32 at least
        grad_h = torch.zeros(hidden.shape, dtype=acc, device=hidden.device) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=acc, device=bias.device) if need_b else None
        total = torch.zeros((), dtype=acc, device=hidden.device)
        with torch.no_grad(), torch.autocast(device_type, enabled=False):
            w = _cast_weight(weight, dtype)  # cast once (autocast would cast it again for every chunk)
            b = bias.to(dtype) if bias is not None else None
            for start in range(0, hidden.shape[0], chunk_size):
                rows = slice(start, start + chunk_size)
                h = hidden[rows].to(dtype)
                tgt = targets[rows].unsqueeze(1)
                log_probs, capped = _chunk_log_probs(h, w, b, softcap, acc)
                total += -log_probs.gather(1, tgt).sum()
                if not (need_h or need_w or need_b):
                    continue
                grad = log_probs.exp_()  # softmax, in place
                grad.scatter_add_(1, tgt, grad.new_full(tgt.shape, -1.0))  # - one-hot of the targets
                if capped is not None:
                    grad.mul_(1.0 - capped.square_())  # d(cap * tanh(x / cap)) / dx
                grad = grad.to(dtype)
                if need_h:
                    grad_h[rows] = _back_project(grad, w)
                if need_w:
                    grad_w += grad.t() @ h
                if need_b:
                    grad_b += grad.sum(0)
        ctx.save_for_backward(*(g for g in (grad_h, grad_w, grad_b) if g is not None))
        ctx.needs = (need_h, need_w, need_b)
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return total

    @staticmethod
    def backward(ctx: Any, grad_total: Any) -> Any:
        saved = iter(ctx.saved_tensors)
        out = []
        for need, dtype in zip(ctx.needs, ctx.dtypes, strict=True):
            out.append((next(saved) * grad_total).to(dtype) if need else None)
        return (*out, None, None, None)


def chunked_nll_sum(hidden: Any, weight: Any, bias: Any, targets: Any, *, chunk_size: int,
                    softcap: float | None = None) -> Any:
    """Sum of per-token NLL of `hidden @ weight.T (+ bias)` [scalar], never more than `chunk_size` rows of
    vocabulary-wide logits at a time (training: gradients computed in the same pass)."""
    if not torch.is_grad_enabled():  # no backward will come: skip the gradient matmuls
        return chunked_token_nll(hidden, weight, bias, targets, chunk_size=chunk_size, softcap=softcap).sum()
    return ChunkedLinearCrossEntropy.apply(hidden, weight, bias, targets, int(chunk_size), softcap)


def chunked_token_nll(hidden: Any, weight: Any, bias: Any, targets: Any, *, chunk_size: int,
                      softcap: float | None = None) -> Any:
    """Per-token NLL [N] (fp32) of `hidden @ weight.T (+ bias)`, `chunk_size` tokens at a time, without a graph
    (evaluation)."""
    dtype = _matmul_dtype(hidden)
    out = []
    with torch.no_grad(), torch.autocast(hidden.device.type, enabled=False):
        weight = _cast_weight(weight, dtype)  # cast once, not once per chunk
        bias = bias.to(dtype) if bias is not None else None
        for start in range(0, hidden.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            log_probs, _ = _chunk_log_probs(hidden[rows].to(dtype), weight, bias, softcap, torch.float32)
            out.append(-log_probs.gather(1, targets[rows].unsqueeze(1)).squeeze(1))
    return torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float32)


def liger_nll_sum(hidden: Any, weight: Any, bias: Any, targets: Any, *, softcap: float | None = None) -> Any:
    """Sum of per-token NLL with Liger's fused linear cross-entropy (CUDA)."""
    # liger-kernel is optional (CUDA + Triton): imported only when this implementation runs
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    if weight.dtype != hidden.dtype:  # e.g. an fp32 trainable embedding copy on a bf16 base
        weight = weight.to(hidden.dtype)
    out = liger_fused_linear_cross_entropy(hidden.contiguous(), weight, targets, bias=bias, reduction="sum",
                                           softcap=softcap)
    if isinstance(out, tuple):
        out = out[0]
    return getattr(out, "loss", out)


def causal_lm_loss(model: Any, inputs: dict[str, Any], labels: Any, *, spec: LossSpec,
                   num_items_in_batch: Any = None) -> Any:
    """Sum of next-token NLL over the micro-batch / `num_items_in_batch` (default: its own target count).

    `inputs` are the model inputs without labels; `labels` are unshifted (-100: no loss)."""
    if spec.impl == "full":
        out = model(**inputs)
        logits = out["logits"] if isinstance(out, dict) else out.logits
        nll, count = shifted_nll(logits, labels)
        total, count = nll.sum(), count.sum()
    else:
        head, softcap = output_head(model)
        hidden = final_hidden_states(model, inputs, head)
        rows, targets, mask = _targets(hidden, labels)
        count = mask.sum()
        weight, bias = head_weight(head)
        if rows.shape[0] == 0:  # nothing learned in this micro-batch: a zero that keeps the graph connected
            total = hidden.sum() * 0.0
        elif spec.impl == "liger":
            total = liger_nll_sum(rows, weight, bias, targets, softcap=softcap)
        else:
            total = chunked_nll_sum(rows, weight, bias, targets, chunk_size=spec.chunk_size, softcap=softcap)
    denom = num_items_in_batch if num_items_in_batch is not None else count
    if hasattr(denom, "to"):
        denom = denom.to(total.device)
    return total / denom


def sequence_nll(model: Any, inputs: dict[str, Any], labels: Any, *, spec: LossSpec) -> tuple[Any, Any]:
    """Per-sequence sum of next-token NLL [batch] (fp32) and count of target tokens [batch], for evaluation.

    Liger returns no per-token values, so `liger` evaluates with the chunked kernel (same numbers)."""
    if spec.impl == "full":
        out = model(**inputs)
        return shifted_nll(out["logits"] if isinstance(out, dict) else out.logits, labels)
    per_token, mask = token_nll(model, inputs, labels, spec=spec)
    return per_token.sum(dim=1), mask.sum(dim=1)


def token_nll(model: Any, inputs: dict[str, Any], labels: Any, *, spec: LossSpec) -> tuple[Any, Any]:
    """Next-token NLL [batch, seq-1] (fp32; 0 where not a target) and the target mask [batch, seq-1]: position t
    holds the NLL of token t+1, for evaluations that attribute loss to characters (bits per Hangul character)."""
    if spec.impl == "full":
        out = model(**inputs)
        logits = (out["logits"] if isinstance(out, dict) else out.logits)[:, :-1].float()
        shift = labels[:, 1:].to(logits.device)
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), shift.reshape(-1), ignore_index=IGNORE_INDEX,
                              reduction="none").view(shift.shape)
        return nll, shift.ne(IGNORE_INDEX)
    head, softcap = output_head(model)
    hidden = final_hidden_states(model, inputs, head)
    rows, targets, mask = _targets(hidden, labels)
    weight, bias = head_weight(head)
    nll = chunked_token_nll(rows, weight, bias, targets, chunk_size=spec.chunk_size, softcap=softcap)
    return nll.new_zeros(mask.shape, dtype=nll.dtype).masked_scatter(mask, nll), mask


def token_weighted_loss(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
    """Sum of per-token NLL over the micro-batch divided by the number of target tokens of the WHOLE
    accumulated batch (`num_items_in_batch`, from the Trainer). Summed over micro-batches this is exactly the
    token mean of the full batch, independent of gradient accumulation (the Gemma 3 GA-scaling pitfall).

    This is the `loss_impl: full` path (from the model's logits); the others compute the same quantity without
    full-vocabulary logits in `KormedTrainer.compute_loss` (the functions above)."""
    logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
    nll, count = shifted_nll(logits, labels)
    denom = num_items_in_batch if num_items_in_batch is not None else count.sum()
    if hasattr(denom, "to"):
        denom = denom.to(nll.device)
    return nll.sum() / denom

