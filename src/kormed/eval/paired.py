"""Paired comparisons of two models on the same items (documents, questions), with seeded bootstrap intervals.

Two arms scored on the same held-out items differ by less than either's own interval suggests: the items' own
difficulty is shared. The right interval is the one of the per-item differences, resampled over items (the
percentile bootstrap; numpy's seeded generator, so a rerun gives the same interval). Hand-written because the
statistic is a ratio of sums (bits per character over documents) that scipy.stats.bootstrap does not pair this way
without a closure per call; it is ten lines of numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 0


def _resample(n: int, resamples: int, seed: int) -> np.ndarray:
    """[resamples, n] item indices drawn with replacement."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _interval(stats: np.ndarray, confidence: float) -> list[float]:
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(stats, [tail, 100 - tail])
    return [float(low), float(high)]


def ratio_difference(arm: Sequence[float], base: Sequence[float], denominator: Sequence[float], *,
                     seed: int = DEFAULT_SEED, resamples: int = DEFAULT_RESAMPLES,
                     confidence: float = 0.95) -> dict[str, Any]:
    """(sum(arm) - sum(base)) / sum(denominator) per item set, e.g. the bits/char difference over documents
    (arm and base: each document's NLL in bits; denominator: its characters), with a bootstrap interval over
    items."""
    a, b, d = (np.asarray(x, dtype=np.float64) for x in (arm, base, denominator))
    if not len(a) == len(b) == len(d) or not len(a):
        raise ValueError("paired scores need the same, non-zero number of items")
    idx = _resample(len(a), resamples, seed)
    stats = (a[idx].sum(1) - b[idx].sum(1)) / d[idx].sum(1)
    return {"difference": float((a.sum() - b.sum()) / d.sum()), "ci95": _interval(stats, confidence),
            "items": len(a), "resamples": resamples, "seed": seed}


def mean_difference(arm: Sequence[float], base: Sequence[float], *, seed: int = DEFAULT_SEED,
                    resamples: int = DEFAULT_RESAMPLES, confidence: float = 0.95) -> dict[str, Any]:
    """mean(arm - base) over paired items (questions), with a bootstrap interval over items."""
    return ratio_difference(arm, base, [1.0] * len(arm), seed=seed, resamples=resamples, confidence=confidence)
