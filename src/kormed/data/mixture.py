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
* What a weight is a share of (`mix_by`, interleave only):
  - `examples`: the share of drawn examples.
  - `tokens`: the share of LEARNED tokens (labels other than -100, not counting position 0, which is never a
    prediction target). The loss is a mean over learned tokens, so this is each source's share of the training
    signal: a source whose examples carry many targets (raw text: up to max_length) is drawn less often than
    one with short answers (`정답: B. ...`). Sampling probability of source k: weight_k / mean_learned_k,
    normalised (:func:`sampling_probabilities`).
* `mix_report`: the per-source share of examples and of learned tokens of a mixed set, recorded either way.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np

from kormed.errors import KormedError

# torch, transformers and the kormed modules that load them are imported inside the functions that use them:
# this module is imported by `kormed --help` or by a torch-free command, which must not pay for them.

if TYPE_CHECKING:
    from datasets import Dataset

# `datasets` (and pyarrow) are imported inside the functions that mix: the config classes import this module for
# `normalise_weights`, and `kormed --help` / `kormed config show` should not pay the 2-3 s import of `datasets`.

T = TypeVar("T")

STOPPING_STRATEGIES = ("all_exhausted", "first_exhausted")
MIX_BY = ("examples", "tokens")
IGNORE_INDEX = -100
SOURCE_COLUMN = "mix_source"  # added while mixing to report the shares, removed from the returned set
LEARNED_COLUMN = "mix_learned"


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


def learned_token_counts(ds: Dataset) -> np.ndarray:
    """Learned tokens of each example of a set with a `labels` column: labels other than -100, position 0 not
    counted (after the causal shift it is never a prediction target)."""
    import pyarrow.compute as pc

    labels = ds.with_format("arrow")[:]["labels"].combine_chunks()
    flat = pc.not_equal(pc.list_flatten(labels), IGNORE_INDEX).to_numpy(zero_copy_only=False)
    rows = pc.list_parent_indices(labels).to_numpy()
    counts = np.bincount(rows, weights=flat, minlength=len(labels)).astype(np.int64)
    first = pc.fill_null(pc.not_equal(pc.list_element(labels, 0), IGNORE_INDEX), False).to_numpy(
        zero_copy_only=False)
    return counts - first.astype(np.int64)


def sampling_probabilities(sets: dict[str, Dataset], weights: dict[str, float], mix_by: str) -> dict[str, float]:
    """The interleave probability of each source: its normalised weight (`examples`), or weight / mean learned
    tokens per example, normalised (`tokens`), so that each source's expected share of learned tokens is its
    weight."""
    if mix_by not in MIX_BY:
        raise KormedError(f"must be one of {', '.join(MIX_BY)}, got {mix_by!r}", field="mix_by")
    probs = normalise_weights(weights)
    if mix_by == "examples":
        return probs
    scaled = {}
    for name, w in probs.items():
        mean = float(learned_token_counts(sets[name]).mean())
        if mean <= 0:
            raise KormedError(f"source '{name}' has no learned tokens to balance", field=f"mix.{name}")
        scaled[name] = w / mean
    total = sum(scaled.values())
    return {k: v / total for k, v in scaled.items()}


def _check_sets(sets: dict[str, Dataset], probs: dict[str, float], stopping_strategy: str) -> None:
    missing = [k for k in probs if k not in sets]
    if missing:
        raise KormedError(f"the mix names source '{missing[0]}', which has no data (known: {', '.join(sets)})",
                          field=f"mix.{missing[0]}")
    empty = [k for k in probs if len(sets[k]) == 0]
    if empty:
        raise KormedError(f"source '{empty[0]}' has no training examples", field=f"mix.{empty[0]}")
    if stopping_strategy not in STOPPING_STRATEGIES:
        raise KormedError(f"must be one of {', '.join(STOPPING_STRATEGIES)}", field="stopping_strategy")


def mix_datasets(
    sets: dict[str, Dataset],
    weights: dict[str, float],
    *,
    mode: Literal["interleave", "concatenate"] = "interleave",
    mix_by: Literal["examples", "tokens"] = "examples",
    seed: int = 42,
    stopping_strategy: str = "all_exhausted",
) -> Dataset:
    """Mix HF `datasets.Dataset`s (same columns) by `weights` (see the module docstring for the modes and
    `mix_by`; `tokens` needs a `labels` column)."""
    from datasets import concatenate_datasets, interleave_datasets

    names = list(normalise_weights(weights))
    _check_sets(sets, normalise_weights(weights), stopping_strategy)
    if mode not in ("interleave", "concatenate"):
        raise KormedError(f"mix mode must be interleave or concatenate, got {mode!r}", field="mode")
    if mode == "concatenate":
        return concatenate_datasets([sets[k] for k in names]).shuffle(seed=seed)
    probs = sampling_probabilities(sets, weights, mix_by)
    shuffled = [sets[k].shuffle(seed=seed) for k in names]
    if len(shuffled) == 1:
        return shuffled[0]
    return interleave_datasets(
        shuffled, probabilities=[probs[k] for k in names], seed=seed, stopping_strategy=stopping_strategy
    )


def mix_report(mixed: Dataset, names: Sequence[str]) -> dict[str, Any]:
    """Per-source share of examples and of learned tokens of a set mixed from sets tagged by
    :func:`mix_with_report` (both sum to 1 over the sources)."""
    table = mixed.with_format("arrow")[:]
    source = table[SOURCE_COLUMN].to_numpy()
    learned = table[LEARNED_COLUMN].to_numpy()
    n_examples, n_tokens = len(source), int(learned.sum())
    out: dict[str, Any] = {"examples": n_examples, "learned_tokens": n_tokens, "sources": {}}
    for i, name in enumerate(names):
        mask = source == i
        out["sources"][name] = {
            "examples": int(mask.sum()),
            "learned_tokens": int(learned[mask].sum()),
            "example_share": round(float(mask.sum()) / n_examples, 6) if n_examples else 0.0,
            "learned_token_share": round(float(learned[mask].sum()) / n_tokens, 6) if n_tokens else 0.0,
        }
    return out


def mix_with_report(
    sets: dict[str, Dataset],
    weights: dict[str, float],
    *,
    mode: Literal["interleave", "concatenate"] = "interleave",
    mix_by: Literal["examples", "tokens"] = "examples",
    seed: int = 42,
    stopping_strategy: str = "all_exhausted",
) -> tuple[Dataset, dict[str, Any]]:
    """:func:`mix_datasets` of sets with `labels`, and its :func:`mix_report` (plus the sampling probabilities);
    the returned set has the columns of the inputs only."""
    names = list(normalise_weights(weights))
    _check_sets(sets, normalise_weights(weights), stopping_strategy)
    tagged = {k: sets[k].add_column(SOURCE_COLUMN, [i] * len(sets[k]))
              .add_column(LEARNED_COLUMN, learned_token_counts(sets[k]).tolist()) for i, k in enumerate(names)}
    mixed = mix_datasets(tagged, weights, mode=mode, mix_by=mix_by, seed=seed, stopping_strategy=stopping_strategy)
    report = {"mix_by": mix_by if mode == "interleave" else None, "mode": mode,
              "weights": normalise_weights(weights),
              "sampling_probabilities": sampling_probabilities(sets, weights, mix_by) if mode == "interleave"
              else None,
              **mix_report(mixed, names)}
    return mixed.remove_columns([SOURCE_COLUMN, LEARNED_COLUMN]), report
