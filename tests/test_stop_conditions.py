"""Stop-condition logic of the SFT steps, on scripted metric sequences."""

from __future__ import annotations

import math

import pytest

from kormed.errors import KormedError
from kormed.stop_reason import StopReason
from kormed.train.stop_conditions import (
    StopTracker,
    Tolerances,
    parse_condition,
)


def test_parse_forms():
    c = parse_condition("eval_qa_loss < 0.3")
    assert (c.metric, c.op, c.value, c.relative_to_baseline) == ("eval_qa_loss", "<", 0.3, False)
    c = parse_condition("eval_raw_ppl <= 1.03 * baseline")
    assert (c.op, c.value, c.relative_to_baseline) == ("<=", 1.03, True)
    assert parse_condition("eval_raw_ppl ≈ 1.1 × baseline").op == "~"
    assert parse_condition("eval_raw_ppl maintained").op == "maintained"
    for bad in ("eval_qa_loss", "loss < abc", "eval_qa_loss << 1", "x < 1 * budget"):
        with pytest.raises(KormedError, match="stop condition"):
            parse_condition(bad)


def test_step1_needs_both_qa_loss_and_ppl_bound():
    t = StopTracker(["eval_qa_loss < 0.3", "eval_raw_ppl < 1.03 * baseline"], baseline=10.0)
    d = t.update({"eval_qa_loss": 0.25, "eval_raw_ppl": 10.4}, 10)  # ppl bound is 10.3
    assert not d.should_stop and [r.holds for r in d.results] == [True, False]
    assert d.results[1].threshold == pytest.approx(10.3)
    d = t.update({"eval_qa_loss": 0.31, "eval_raw_ppl": 10.2}, 20)
    assert not d.should_stop and [r.holds for r in d.results] == [False, True]
    d = t.update({"eval_qa_loss": 0.29, "eval_raw_ppl": 10.29}, 30)
    assert d.should_stop and t.final_reason(30, 1000) == StopReason.CONDITIONS_MET
    assert "eval_qa_loss < 0.3" in d.summary() and "STOP" in d.summary()


def test_maintained_is_relative_to_the_step_start():
    t = StopTracker(["eval_qa_loss < 0.2", "eval_raw_ppl maintained"], baseline=10.0,
                    reference={"eval_raw_ppl": 12.0}, tolerances=Tolerances(maintain=0.02))
    d = t.update({"eval_qa_loss": 0.1, "eval_raw_ppl": 12.3}, 5)  # 12.3 > 12.24
    assert not d.should_stop and d.results[1].threshold == pytest.approx(12.24)
    assert t.update({"eval_qa_loss": 0.1, "eval_raw_ppl": 11.0}, 10).should_stop  # better counts


def test_step3_all_three_conditions():
    t = StopTracker(["eval_qa_loss < 0.2", "eval_dict_loss < 0.3", "eval_raw_ppl maintained"],
                    reference={"eval_raw_ppl": 5.0})
    assert not t.update({"eval_qa_loss": 0.1, "eval_dict_loss": 0.35, "eval_raw_ppl": 5.0}, 1).should_stop
    assert not t.update({"eval_qa_loss": 0.1, "eval_dict_loss": 0.25}, 2).should_stop  # ppl missing
    assert not t.update({"eval_qa_loss": math.nan, "eval_dict_loss": 0.25, "eval_raw_ppl": 5}, 3).should_stop
    assert t.update({"eval_qa_loss": 0.1, "eval_dict_loss": 0.25, "eval_raw_ppl": 5.05}, 4).should_stop


def _step4() -> StopTracker:
    return StopTracker(["eval_qa_loss < 0.2", "eval_raw_ppl ~ 1.1 * baseline"], baseline=10.0, stable_evals=5,
                       stable_metrics=["eval_qa_loss", "eval_raw_ppl"], tolerances=Tolerances(approx=0.02,
                                                                                               stable=0.05))


def test_step4_needs_five_consecutive_stable_evaluations():
    t = _step4()
    ok = {"eval_qa_loss": 0.15, "eval_raw_ppl": 11.0}
    for i in range(4):
        d = t.update(ok, i)
        assert d.all_hold and not d.should_stop and d.consecutive == i + 1
    d = t.update(ok, 4)
    assert d.should_stop and d.stable_range == {"eval_qa_loss": 0.0, "eval_raw_ppl": 0.0}


def test_step4_approx_bound_and_a_broken_streak_restarts():
    t = _step4()
    seq = [0.15, 0.15, 0.15, 0.15]
    for i, q in enumerate(seq):
        t.update({"eval_qa_loss": q, "eval_raw_ppl": 11.2}, i)  # 11.2 <= 11.22 (1.1 x 10 x 1.02)
    d = t.update({"eval_qa_loss": 0.15, "eval_raw_ppl": 11.3}, 4)  # above the ≈ bound: streak broken
    assert not d.all_hold and d.consecutive == 0 and not d.should_stop
    for i in range(4):
        assert not t.update({"eval_qa_loss": 0.15, "eval_raw_ppl": 11.0}, 5 + i).should_stop
    assert t.update({"eval_qa_loss": 0.15, "eval_raw_ppl": 11.0}, 9).should_stop


def test_step4_conditions_hold_but_metric_still_moving_is_not_stable():
    t = _step4()
    qa = [0.19, 0.17, 0.15, 0.13, 0.108, 0.105, 0.104, 0.104, 0.103]
    stops = [t.update({"eval_qa_loss": q, "eval_raw_ppl": 10.5}, i).should_stop for i, q in enumerate(qa)]
    # all conditions hold from the first eval, but qa loss ranges > 5 % until the last five are within 5 %
    assert stops == [False] * 8 + [True]
    assert t.history[7].stable_range["eval_qa_loss"] > 0.05
    assert t.history[8].stable_range["eval_qa_loss"] <= 0.05


def test_max_steps_guard_is_the_reason_when_never_met():
    t = StopTracker(["eval_qa_loss < 0.3"])
    for step in (10, 20, 30):
        t.update({"eval_qa_loss": 1.0}, step)
    assert t.final_reason(30, 30) == StopReason.MAX_STEPS
    assert t.final_reason(30, 30, other="interrupted") == "interrupted"
    assert t.metrics_needed == ["eval_qa_loss"]


def test_unknown_baseline_never_holds():
    t = StopTracker(["eval_raw_ppl < 1.03 * baseline"])
    d = t.update({"eval_raw_ppl": 1.0}, 1)
    assert d.results[0].threshold is None and not d.should_stop


def test_dev_knowledge_compares_with_a_number_only():
    """eval_dev_knowledge is an accuracy (higher is better): 'maintained', '~' and '* baseline' would read lower as
    better or compare it with a perplexity, so they are refused when the config is read."""
    assert parse_condition("eval_dev_knowledge >= 0.9").op == ">="
    tracker = StopTracker(["eval_dev_knowledge >= 0.9"])
    assert not tracker.update({"eval_dev_knowledge": 0.85}, 1).should_stop
    assert tracker.update({"eval_dev_knowledge": 0.9}, 2).should_stop
    for text in ("eval_dev_knowledge maintained", "eval_dev_knowledge ~ 0.9", "eval_dev_knowledge > 1.1 * baseline"):
        with pytest.raises(KormedError, match="eval_dev_knowledge") as err:
            parse_condition(text, field_name="sft.steps[0].stop[0]")
        assert err.value.field == "sft.steps[0].stop[0]"
