"""Ratio mixes measured over many samples, and record-level validation splits."""

from __future__ import annotations

from collections import Counter

import pytest

from kormed.data.mixture import (
    learned_token_counts,
    mix_datasets,
    mix_with_report,
    normalise_weights,
    split_records,
)
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


def _labelled(n: int, prompt: int, targets: tuple[int, int], seed: int, full_loss: bool = False):
    """n examples of `prompt` masked tokens then a random number (in `targets`) of learned tokens; with
    `full_loss` every position is learned (raw text: the label at position 0 is never a target)."""
    import random

    from datasets import Dataset

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        k = rng.randint(*targets)
        rows.append(list(range(prompt + k)) if full_loss else [-100] * prompt + [7] * k)
    return Dataset.from_dict({"input_ids": rows, "labels": rows})


def test_learned_token_counts_skip_masks_and_position_zero():
    from datasets import Dataset

    ds = Dataset.from_dict({"labels": [[-100, -100, 5, 6], [1, 2, 3], [-100], [4]]}).shuffle(seed=3)
    expected = {4: 2, 3: 2, 1: 0}  # (length -> learned) is unambiguous except the two 1-long rows (both 0)
    assert [int(c) for c in learned_token_counts(ds)] == [expected[len(r)] for r in ds["labels"]]


def test_token_mix_balances_learned_tokens_and_example_mix_does_not():
    # QA-like answers (3-8 targets after a 40-token prompt) against raw-like text (150-400 targets each)
    sets = {"qa": _labelled(400, 40, (3, 8), seed=1), "raw": _labelled(300, 0, (150, 400), seed=2, full_loss=True)}
    weights = {"qa": 0.6, "raw": 0.4}
    _, by_tokens = mix_with_report(sets, weights, mix_by="tokens", seed=4)
    _, by_examples = mix_with_report(sets, weights, mix_by="examples", seed=4)
    for report in (by_tokens, by_examples):
        shares = report["sources"]
        assert sum(v["learned_token_share"] for v in shares.values()) == pytest.approx(1.0, abs=1e-5)
        assert sum(v["example_share"] for v in shares.values()) == pytest.approx(1.0, abs=1e-5)
        assert report["examples"] == sum(v["examples"] for v in shares.values())
    for name, w in weights.items():
        assert abs(by_tokens["sources"][name]["learned_token_share"] - w) < 0.05, by_tokens
        assert abs(by_examples["sources"][name]["example_share"] - w) < 0.05, by_examples
    # by examples, raw text takes almost all of the training signal
    assert by_examples["sources"]["raw"]["learned_token_share"] > 0.9
    # by tokens, QA examples are drawn far more often than their weight
    assert by_tokens["sources"]["qa"]["example_share"] > 0.95
    assert by_tokens["mix_by"] == "tokens" and sum(by_tokens["sampling_probabilities"].values()) == pytest.approx(1)


def test_mix_with_report_returns_the_input_columns_and_is_seeded():
    sets = {"qa": _labelled(50, 4, (1, 3), seed=1), "raw": _labelled(30, 0, (20, 40), seed=2, full_loss=True)}
    a, report = mix_with_report(sets, {"qa": 1, "raw": 1}, mix_by="tokens", seed=9)
    b, _ = mix_with_report(sets, {"qa": 1, "raw": 1}, mix_by="tokens", seed=9)
    assert a.column_names == ["input_ids", "labels"] and a["labels"] == b["labels"]
    cat, cat_report = mix_with_report(sets, {"qa": 1, "raw": 1}, mode="concatenate")
    assert len(cat) == 80 and cat_report["sources"]["qa"]["examples"] == 50 and cat_report["mix_by"] is None
    with pytest.raises(KormedError, match="mix_by"):
        mix_datasets(sets, {"qa": 1, "raw": 1}, mix_by="bytes")
