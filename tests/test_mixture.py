"""Ratio mixes measured over many samples, and record-level validation splits."""

from __future__ import annotations

from collections import Counter

import pytest

from kormed.data.mixture import mix_datasets, normalise_weights, split_records
from kormed.errors import KormedError


def _sets(sizes: dict[str, int]):
    from datasets import Dataset

    return {k: Dataset.from_dict({"source": [k] * n, "i": list(range(n))}) for k, n in sizes.items()}


@pytest.mark.parametrize(
    "weights",
    [{"qa": 0.7, "dict": 0.3}, {"qa": 0.4, "dict": 0.2, "raw": 0.4}],
)
def test_interleave_matches_ratios_over_many_samples(weights):
    # Unequal sizes, none matching the ratio, so the ratio must come from the sampling, not the sizes.
    sets = _sets({"qa": 900, "dict": 3000, "raw": 5000})
    mixed = mix_datasets(sets, weights, seed=3)
    n = 4000
    counts = Counter(mixed.select(range(n))["source"])
    for name, w in weights.items():
        assert abs(counts[name] / n - w) < 0.03, (name, counts)
    assert set(counts) == set(weights)
    # all_exhausted: every example of every source is drawn at least once
    full = Counter(zip(mixed["source"], mixed["i"], strict=True))
    for name in weights:
        assert sum(1 for (s, _) in full if s == name) == len(sets[name])


def test_interleave_is_seeded():
    sets = _sets({"qa": 50, "dict": 80})
    a = mix_datasets(sets, {"qa": 1, "dict": 1}, seed=1)["i"]
    b = mix_datasets(sets, {"qa": 1, "dict": 1}, seed=1)["i"]
    c = mix_datasets(sets, {"qa": 1, "dict": 1}, seed=2)["i"]
    assert a == b and a != c


def test_first_exhausted_and_concatenate():
    sets = _sets({"qa": 100, "dict": 400})
    under = mix_datasets(sets, {"qa": 0.5, "dict": 0.5}, stopping_strategy="first_exhausted")
    assert Counter(under["source"])["qa"] == 100 and len(under) < 500
    cat = mix_datasets(sets, {"qa": 1, "dict": 1}, mode="concatenate")
    assert Counter(cat["source"]) == {"qa": 100, "dict": 400}
    assert cat["i"][:100] != list(range(100))  # shuffled


def test_bad_mixes_are_clear_errors():
    sets = _sets({"qa": 10})
    with pytest.raises(KormedError, match="mix.raw"):
        mix_datasets(sets, {"qa": 1, "raw": 1})
    with pytest.raises(KormedError, match="mix.qa"):
        normalise_weights({"qa": -1})
    with pytest.raises(KormedError, match="positive weight"):
        normalise_weights({"qa": 0})
    assert normalise_weights({"a": 3, "b": 1, "c": 0}) == {"a": 0.75, "b": 0.25}


def test_split_records_is_deterministic_and_disjoint():
    items = list(range(1000))
    train, val = split_records(items, fraction=0.05, max_size=30, seed=7)
    assert len(val) == 30 and len(train) == 970 and not set(train) & set(val)
    assert split_records(items, fraction=0.05, max_size=30, seed=7) == (train, val)
    assert split_records(list(range(10)), fraction=0.05)[1] != []  # at least one
    assert split_records([1], fraction=0.5) == ([1], [])
    assert split_records(items, fraction=0.0) == (items, [])
