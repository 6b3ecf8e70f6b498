"""Ratio mixes of the SFT data sets, and per-set validation splits.

* Validation: every source is split at the RECORD level before rendering (`split_records`), so a question held out
  for validation is held out of every rendering of it (plain answer and with reasoning alike). Each set keeps its
  own validation split, evaluated separately (`eval_qa_loss`, `eval_dict_loss`, ...).
* Mixing (`mix_datasets`):
  - `interleave` (a real ratio mix): `datasets.interleave_datasets` with the normalised weights as sampling
    probabilities and a seed; every source is shuffled (same seed) first. Stopping strategy `all_exhausted`
    (default): sampling goes on until every example of every source has been drawn at least once, the smaller
    sources being re-drawn (oversampled) to keep the ratio -- so the expected share of each source is its weight
    and nothing is left out. `first_exhausted` stops as soon as one source runs out (undersampling: no example
    is repeated, but the larger sources are cut). Training length is set by `max_steps`; the Trainer starts
    the mix over when it is used up.
  - `concatenate` ("all the data"): the sources are concatenated and shuffled; each example appears once per
    pass, so the share of a source is its size.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Literal, TypeVar

from kormed.errors import KormedError

T = TypeVar("T")

STOPPING_STRATEGIES = ("all_exhausted", "first_exhausted")


def split_records(
    items: Sequence[T], *, fraction: float, max_size: int | None = None, min_size: int = 1, seed: int = 42
) -> tuple[list[T], list[T]]:
    """Deterministic (train, validation) split: `fraction` of the items, clamped to [min_size, max_size], at least
    one item always left for training. A source of a single item goes entirely to training."""
    if not 0.0 <= fraction < 1.0:
        raise KormedError(f"validation fraction must be in [0, 1), got {fraction}", field="val_fraction")
    n = len(items)
    n_val = round(n * fraction)
    n_val = max(n_val, min_size) if fraction > 0 else 0
    if max_size is not None:
        n_val = min(n_val, max_size)
    n_val = min(n_val, n - 1) if n > 1 else 0
    order = list(range(n))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:n_val])
    train = [x for i, x in enumerate(items) if i not in val_idx]
    val = [x for i, x in enumerate(items) if i in val_idx]
    return train, val


def normalise_weights(weights: dict[str, float]) -> dict[str, float]:
    """Weights as probabilities (sum 1); zero-weight sources are dropped; negatives are an error."""
    bad = {k: w for k, w in weights.items() if w < 0}
    if bad:
        name = next(iter(bad))
        raise KormedError(f"mix weight must be >= 0, got {bad[name]}", field=f"mix.{name}")
    kept = {k: float(w) for k, w in weights.items() if w > 0}
    total = sum(kept.values())
    if not kept or total <= 0:
        raise KormedError("the mix needs at least one source with a positive weight", field="mix")
    return {k: w / total for k, w in kept.items()}


def mix_datasets(
    sets: dict[str, Any],
    weights: dict[str, float],
    *,
    mode: Literal["interleave", "concatenate"] = "interleave",
    seed: int = 42,
    stopping_strategy: str = "all_exhausted",
) -> Any:
    """Mix HF `datasets.Dataset`s (same columns) by `weights` (see the module docstring for the two modes)."""
    from datasets import concatenate_datasets, interleave_datasets

    probs = normalise_weights(weights)
    missing = [k for k in probs if k not in sets]
    if missing:
        raise KormedError(f"the mix names source '{missing[0]}', which has no data (known: {', '.join(sets)})",
                          field=f"mix.{missing[0]}")
    empty = [k for k in probs if len(sets[k]) == 0]
    if empty:
        raise KormedError(f"source '{empty[0]}' has no training examples", field=f"mix.{empty[0]}")
    if stopping_strategy not in STOPPING_STRATEGIES:
        raise KormedError(f"must be one of {', '.join(STOPPING_STRATEGIES)}", field="stopping_strategy")
    names = list(probs)
    if mode == "concatenate":
        return concatenate_datasets([sets[k] for k in names]).shuffle(seed=seed)
    if mode != "interleave":
        raise KormedError(f"mix mode must be interleave or concatenate, got {mode!r}", field="mode")
    shuffled = [sets[k].shuffle(seed=seed) for k in names]
    if len(shuffled) == 1:
        return shuffled[0]
    return interleave_datasets(
        shuffled, probabilities=[probs[k] for k in names], seed=seed, stopping_strategy=stopping_strategy
    )
