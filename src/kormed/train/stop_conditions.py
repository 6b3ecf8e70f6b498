"""Stop conditions of the staged SFT steps: pure logic over the sequence of evaluation metrics.

A condition is a short text, as written in the `sft.stepN.stop` config lists:

* `eval_qa_loss < 0.3` -- also `<=`, `>`, `>=`; the right side is a number, or `F * baseline` (the raw-Korean
  perplexity measured before step 1, stored in `<output>/baseline.json`).
* `eval_raw_ppl maintained` -- the metric is *maintained*: value <= (1 + maintain_tolerance) x reference, where
  the reference is the same metric measured at the START of the step (i.e. with the previous step's adapter,
  before any training of this step). Default maintain_tolerance 0.02, i.e. at most 2 % worse than where the
  step started. Lower (better) always satisfies it.
* `eval_dev_knowledge >= 0.9` -- dictionary knowledge of the trained entries (dev forms of
  :mod:`kormed.eval.knowledge`, a seeded sample of `knowledge_per_group` questions per form), an accuracy computed
  at an evaluation only when a condition names it (about a minute each with the defaults on 2 CPU cores); compared
  with a number only (higher is better).
* `eval_raw_ppl ~ 1.1 * baseline` -- *approximately* F x baseline, read as "no worse than about F x baseline":
  value <= F x baseline x (1 + approx_tolerance) (default 0.02). A lower perplexity also satisfies it: being
  better than the target is never a reason to keep training.

Stability (`stable_evals` K, `stable_metrics`): the step stops only when every condition has held at each of the
last K consecutive evaluations AND, for each stable metric, its relative range over those K evaluations,
(max - min) / min, is <= stable_tolerance (default 0.05). K = 1 means "stop at the first evaluation where all
conditions hold". A metric that is missing or not finite never satisfies a condition.

`StopTracker.update` is called after every evaluation; it returns a `StopDecision` with every condition's value,
threshold and verdict (logged by the caller). When training ends without the conditions being met, the caller
reports `max_steps` (the per-step guard) as the stop reason via `StopTracker.final_reason`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from kormed.errors import KormedError
from kormed.eval.knowledge import DEV_KNOWLEDGE  # named where it is computed
from kormed.stop_reason import StopReason

_COMPARE = re.compile(
    r"^\s*(?P<metric>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op><=|>=|<|>|~|≈)\s*(?P<value>[0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)"
    r"\s*(?:(?P<times>[*x×])\s*(?P<ref>baseline))?\s*$"
)
_MAINTAINED = re.compile(r"^\s*(?P<metric>[A-Za-z_][A-Za-z0-9_]*)\s+maintained\s*$")
# Dictionary knowledge of the trained entries, dev forms (kormed.eval.knowledge), an accuracy: computed at an
# evaluation only when a condition names it. Higher is better, so only <, <=, >, >= compare it.
HIGHER_IS_BETTER = (DEV_KNOWLEDGE,)


@dataclass(frozen=True)
class Tolerances:
    """How "maintained", "≈" and "stable" are measured (documented in the module docstring)."""

    maintain: float = 0.02
    approx: float = 0.02
    stable: float = 0.05


@dataclass(frozen=True)
class Condition:
    """One parsed stop condition."""

    text: str
    metric: str
    op: str  # "<", "<=", ">", ">=", "~", "maintained"
    value: float | None = None
    relative_to_baseline: bool = False

    def threshold(self, *, baseline: float | None, reference: float | None, tol: Tolerances) -> float | None:
        """The number the metric is compared with (None when its baseline/reference is unknown)."""
        if self.op == "maintained":
            return None if reference is None else reference * (1.0 + tol.maintain)
        assert self.value is not None
        base = self.value
        if self.relative_to_baseline:
            if baseline is None:
                return None
            base = self.value * baseline
        if self.op == "~":
            return base * (1.0 + tol.approx)
        return base

    def holds(self, value: float | None, threshold: float | None) -> bool:
        if value is None or threshold is None or not math.isfinite(value):
            return False
        if self.op in ("<",):
            return value < threshold
        if self.op in ("<=", "~", "maintained"):
            return value <= threshold
        if self.op == ">":
            return value > threshold
        return value >= threshold


def parse_condition(text: str, *, field_name: str | None = None) -> Condition:
    """Parse `metric OP number [* baseline]`, `metric ~ F * baseline` or `metric maintained`."""
    m = _MAINTAINED.match(text)
    if m and m["metric"] in HIGHER_IS_BETTER:
        raise KormedError(f"{m['metric']} is higher-is-better: 'maintained' reads lower as better",
                          field=field_name, hint=f"write '{m['metric']} >= 0.9'")
    if m:
        return Condition(text=text.strip(), metric=m["metric"], op="maintained")
    m = _COMPARE.match(text)
    if not m:
        raise KormedError(
            f"cannot read stop condition {text!r}",
            field=field_name,
            hint="write 'eval_qa_loss < 0.3', 'eval_raw_ppl < 1.03 * baseline', 'eval_raw_ppl ~ 1.1 * baseline' "
            "or 'eval_raw_ppl maintained'",
        )
    op = "~" if m["op"] in ("~", "≈") else m["op"]
    if m["metric"] in HIGHER_IS_BETTER and (op == "~" or m["ref"] is not None):
        raise KormedError(f"{m['metric']} is an accuracy: compare it with a number ('<', '<=', '>', '>=')",
                          field=field_name, hint=f"write '{m['metric']} >= 0.9'")
    return Condition(text=text.strip(), metric=m["metric"], op=op, value=float(m["value"]),
                     relative_to_baseline=m["ref"] is not None)


@dataclass
class ConditionResult:
    condition: str
    metric: str
    value: float | None
    threshold: float | None
    holds: bool


@dataclass
class StopDecision:
    """The verdict after one evaluation."""

    evaluation: int  # 1-based index of the evaluation within the step
    global_step: int
    results: list[ConditionResult]
    all_hold: bool
    consecutive: int  # evaluations in a row (ending with this one) at which all conditions held
    stable_range: dict[str, float] = field(default_factory=dict)  # relative range over the last K evaluations
    stable: bool = True
    should_stop: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        parts = []
        for r in self.results:
            value = "n/a" if r.value is None else f"{r.value:.4g}"
            thr = "n/a" if r.threshold is None else f"{r.threshold:.4g}"
            parts.append(f"[{'ok' if r.holds else '--'}] {r.condition} (value {value}, threshold {thr})")
        if self.stable_range:
            ranges = ", ".join(f"{k} {v:.3%}" for k, v in self.stable_range.items())
            parts.append(f"stability: {self.consecutive} in a row, range {ranges}")
        return f"eval {self.evaluation} @ step {self.global_step}: " + "; ".join(parts) + (
            " -> STOP" if self.should_stop else "")


class StopTracker:
    """Evaluates a step's stop conditions after each evaluation (pure: no training objects)."""

    def __init__(
        self,
        conditions: list[str] | list[Condition],
        *,
        baseline: float | None = None,
        reference: Mapping[str, float] | None = None,
        stable_evals: int = 1,
        stable_metrics: list[str] | tuple[str, ...] = (),
        tolerances: Tolerances | None = None,
    ) -> None:
        if stable_evals < 1:
            raise KormedError("stable_evals must be at least 1", field="stable_evals")
        self.conditions = [c if isinstance(c, Condition) else parse_condition(c) for c in conditions]
        if not self.conditions:
            raise KormedError("a step needs at least one stop condition (max_steps alone is only a guard)",
                              field="stop")
        self.baseline = baseline
        self.reference = dict(reference or {})
        self.stable_evals = stable_evals
        self.stable_metrics = list(stable_metrics)
        self.tol = tolerances or Tolerances()
        self.history: list[StopDecision] = []
        self._metric_history: list[dict[str, float]] = []

    @property
    def metrics_needed(self) -> list[str]:
        """Every metric the conditions and the stability check read."""
        names = [c.metric for c in self.conditions] + self.stable_metrics
        return list(dict.fromkeys(names))

    def update(self, metrics: Mapping[str, Any], global_step: int) -> StopDecision:
        """Record one evaluation's metrics and decide whether the step should stop."""
        values = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        self._metric_history.append(values)
        results = []
        for c in self.conditions:
            thr = c.threshold(baseline=self.baseline, reference=self.reference.get(c.metric), tol=self.tol)
            value = values.get(c.metric)
            results.append(ConditionResult(c.text, c.metric, value, thr, c.holds(value, thr)))
        all_hold = all(r.holds for r in results)
        prev = self.history[-1].consecutive if self.history else 0
        consecutive = prev + 1 if all_hold else 0
        decision = StopDecision(len(self.history) + 1, global_step, results, all_hold, consecutive)
        if self.stable_evals > 1 or self.stable_metrics:
            window = self._metric_history[-self.stable_evals:]
            stable = len(window) >= self.stable_evals
            for name in self.stable_metrics:
                series = [w.get(name) for w in window]
                if any(v is None or not math.isfinite(v) for v in series) or not series:
                    decision.stable_range[name] = float("inf")
                    stable = False
                    continue
                lo, hi = min(series), max(series)  # type: ignore[type-var]
                rng = (hi - lo) / lo if lo > 0 else (0.0 if hi == lo else float("inf"))
                decision.stable_range[name] = rng
                stable = stable and rng <= self.tol.stable
            decision.stable = stable
        decision.should_stop = consecutive >= self.stable_evals and decision.stable
        self.history.append(decision)
        return decision

    @property
    def met(self) -> bool:
        return bool(self.history) and self.history[-1].should_stop

    def final_reason(self, global_step: int, max_steps: int, other: str | None = None) -> str:
        """The step's stop reason: conditions met, else `other` (e.g. nan / interrupted) if given, else the
        max_steps guard when the budget was used up."""
        if self.met:
            return StopReason.CONDITIONS_MET
        if other:
            return other
        if global_step >= max_steps:
            return StopReason.MAX_STEPS
        return StopReason.ENDED
