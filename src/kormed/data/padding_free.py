"""Padding-free SFT batches: a micro-batch of chat examples flattened into ONE row, no padding, no cross-example
attention.

:class:`PaddingFreeCollator` is transformers' :class:`~transformers.DataCollatorWithFlattening`: the `batch_size`
examples of a micro-batch are concatenated into a `[1, total_tokens]` row, `position_ids` restart at 0 for each
example, and the first label of every example is set to -100, so no token predicts the next example's first token
(kormed's own labels -- prompt masked, answer learned -- are kept for the rest). No `attention_mask` is sent:
transformers' masking utilities (`masking_utils.find_packed_sequence_indices`) then read the example boundaries
from the position ids and build a block-diagonal causal mask for SDPA / eager, and the flash-attention paths use
the same boundaries as varlen sequences. Gemma 3's sliding-window layers are masked on the per-example positions
(`remap_positions_for_packed_sequence`) AND the same-example mask, so each example sees exactly what it would see
alone. Per-example losses are therefore those of unpacked batches (tests/test_sft_packing.py).

Why kormed wraps the library collator instead of using it bare (both would otherwise be silent errors):

* `use_cache=False` goes with every batch. `Gemma3ForCausalLM` builds a `DynamicCache` whenever its config says
  `use_cache: true` (the default) and gradient checkpointing is off, and transformers only looks for packed
  sequences when there is no cache: the examples of a row would attend to each other.
* It counts real and padded tokens (:class:`BatchStats`) so that training reports its padding fraction and real
  tokens per second for padded and padding-free batches alike (:class:`CountingCollator` wraps either).

Batching decision: a micro-batch is still `batch_size` examples (the Trainer's sampler, epochs, `max_steps`
and the data order are unchanged), only flattened; the row length varies with the examples, and it is at most
`batch_size x max_length` tokens, the size of the largest padded batch. Training with padding-free on or off
sees the same examples in the same micro-batches, so the two give the same loss curve. The loss stays
token-weighted over the accumulated batch: the Trainer counts `labels[..., 1:] != -100` over every micro-batch
(`num_items_in_batch`), which is the same count for the flattened row (its example-start labels are -100) as for
the padded rows (where position 0 of each row is dropped by the shift).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

# torch, transformers and the kormed modules that load them are imported inside the functions that use them:
# this module is imported by `kormed --help` or by a torch-free command, which must not pay for them.


@dataclass
class BatchStats:
    """Running token counts of the micro-batches a collator built (in this process)."""

    batches: int = 0
    examples: int = 0
    real_tokens: int = 0  # tokens of the examples
    batch_tokens: int = 0  # positions the model computed: real tokens + padding
    target_tokens: int = 0  # tokens with a loss (labels[..., 1:] != -100)
    per_batch_real: list[int] = field(default_factory=list, repr=False)

    def add(self, *, examples: int, real: int, slots: int, targets: int) -> None:
        self.batches += 1
        self.examples += examples
        self.real_tokens += real
        self.batch_tokens += slots
        self.target_tokens += targets
        self.per_batch_real.append(real)

    @property
    def padding_fraction(self) -> float | None:
        """Share of the computed positions that were padding (0 for padding-free batches)."""
        return 1.0 - self.real_tokens / self.batch_tokens if self.batch_tokens else None

    def to_dict(self) -> dict[str, Any]:
        per = self.per_batch_real
        return {
            "micro_batches": self.batches,
            "examples": self.examples,
            "real_tokens": self.real_tokens,
            "batch_tokens": self.batch_tokens,
            "target_tokens": self.target_tokens,
            "padding_fraction": None if self.padding_fraction is None else round(self.padding_fraction, 6),
            "real_tokens_per_batch": {"mean": round(self.real_tokens / self.batches, 2), "min": min(per),
                                      "max": max(per)} if per else None,
        }


def uses_flash_attention(model: Any) -> bool:
    """Whether `model` (a PEFT wrapper or a bare model) attends with a flash-attention kernel."""
    config = getattr(model, "config", None)
    impl = str(getattr(config, "_attn_implementation", "") or "")
    return "flash" in impl


class PaddingFreeCollator:
    """`DataCollatorWithFlattening` (position ids restarting per example, -100 at every example start) plus
    `use_cache=False` (see the module docstring for why). `flash_attn_kwargs` also sends the `cu_seq_lens_*` /
    `max_length_*` boundaries, which flash-attention kernels use directly (no recomputation from position ids)."""

    padding_free = True

    def __init__(self, *, flash_attn_kwargs: bool = False) -> None:
        from transformers import DataCollatorWithFlattening

        self.inner = DataCollatorWithFlattening(return_position_ids=True, separator_id=-100,
                                                return_flash_attn_kwargs=flash_attn_kwargs)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        # Only the token columns: other columns (e.g. a stored attention_mask) have no meaning in a flat row.
        batch = self.inner([{k: f[k] for k in ("input_ids", "labels") if k in f} for f in features])
        batch["use_cache"] = False
        return batch


class CountingCollator:
    """Wrap a collator (padded or padding-free) and count the tokens of the batches it builds.

    A built batch waits in `pending` until :meth:`consume` moves it into `stats`: the data loader collates ahead
    of training (accelerate prefetches the next batch), so the trainer's callback consumes one entry per trained
    micro-batch and `stats` holds exactly the batches that were trained on. Counts are kept in the process that
    collates: with `train.num_workers > 0` the worker processes count and the main process sees nothing (the
    stats then stay empty and are reported as such)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.padding_free = bool(getattr(inner, "padding_free", False))
        self.stats = BatchStats()
        self.pending: deque[dict[str, int]] = deque()

    def consume(self, n: int = 1) -> None:
        """Count the next `n` built batches (in build order) as trained."""
        for _ in range(min(n, len(self.pending))):
            self.stats.add(**self.pending.popleft())

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner(features)
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        real = int(mask.sum()) if mask is not None else int(ids.numel())
        labels = batch.get("labels")
        targets = int(labels[..., 1:].ne(-100).sum()) if labels is not None else 0
        self.pending.append({"examples": len(features), "real": real, "slots": int(ids.numel()), "targets": targets})
        return batch
