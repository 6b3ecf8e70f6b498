"""What a `kormed run` directory holds, read one way for the runner's report and the model cards.

`collect` reads the run's state, each stage's typed result (:mod:`kormed.pipeline.results`), the training runs of
each training stage with their `training_info.json` and (unless `curves=False`) their logged curves, and the
files the model cards quote (prepare statistics, tokenizer report, eval results). It sits below the report
(:mod:`kormed.pipeline.report`) and the model cards (:mod:`kormed.export.model_card`), which both read it, so a
model card needs neither the report nor tensorboard.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kormed.errors import KormedError
from kormed.io import read_json
from kormed.pipeline import results
from kormed.pipeline.registry import STAGE_DIRS, TRAINING_STAGES
from kormed.pipeline.results import EvalResult, LoopResult, PrepareResult, TokenizerResult, TrainResult
from kormed.run_files import TRAINING_INFO, TrainingInfo

_EVENT_GLOB = "events.out.tfevents.*"


def load_json(path: Path) -> Any | None:
    """A JSON file's content, or None when it is absent or unreadable (the report never fails on one file)."""
    try:
        return read_json(path)
    except (OSError, KormedError):
        return None


def read_scalars(root: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in the TensorBoard event files under `root` (recursively), merged by tag and step."""
    series: dict[str, dict[int, float]] = {}
    dirs = sorted({p.parent for p in root.rglob(_EVENT_GLOB)}) if root.is_dir() else []
    if dirs:  # imported here: the model cards read a run directory without its curves, and without tensorboard
        from tensorboard.backend.event_processing import event_accumulator
    for d in dirs:
        acc = event_accumulator.EventAccumulator(str(d), size_guidance={event_accumulator.SCALARS: 0})
        try:
            acc.Reload()
        except Exception:  # noqa: BLE001 - a truncated event file (killed run) must not break the report
            continue
        for tag in acc.Tags().get("scalars", []):
            if tag.startswith("kormed/"):  # the runner's per-stage summary scalars, not a curve
                continue
            for ev in acc.Scalars(tag):
                series.setdefault(tag, {})[int(ev.step)] = float(ev.value)
    return {tag: sorted(points.items()) for tag, points in sorted(series.items())}


def scalars_from_log_history(log_history: Iterable[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """The same series from a Trainer's trainer_state.json `log_history` (loss -> train/loss, eval_x -> eval/x)."""
    series: dict[str, dict[int, float]] = {}
    for entry in log_history:
        step = entry.get("step")
        if not isinstance(step, int | float):
            continue
        for key, value in entry.items():
            if key in ("step", "epoch") or not isinstance(value, int | float) or isinstance(value, bool):
                continue
            tag = f"eval/{key[5:]}" if key.startswith("eval_") else f"train/{key}"
            series.setdefault(tag, {})[int(step)] = float(value)
    return {tag: sorted(points.items()) for tag, points in sorted(series.items())}


def _find_trainer_state(unit_dir: Path) -> Path | None:
    direct = unit_dir / "trainer_state.json"
    if direct.is_file():
        return direct
    candidates = []
    for p in unit_dir.rglob("trainer_state.json"):
        m = re.search(r"checkpoint-(\d+)", str(p))
        candidates.append((int(m.group(1)) if m else -1, p))
    return max(candidates)[1] if candidates else None


@dataclass
class TrainingUnit:
    """One trainer run (CPT, one SFT step or one loop round): its typed result and its curves."""

    stage: str
    name: str  # "cpt", "sft/step1", "loop/round02_mcq"
    result: TrainResult
    info: TrainingInfo | None = None  # its training_info.json (for the model cards)
    scalars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    source: str = ""  # where the curves came from


def _curves(run_dir: Path, stage: str, name: str, unit_dir: Path) -> tuple[dict[str, list[tuple[int, float]]], str]:
    """A trainer run's logged series: the run's TensorBoard copy, else its own TensorBoard logs, else the Trainer's
    trainer_state.json; with where they came from."""
    rel = Path(name).relative_to(stage) if "/" in name else Path()
    tb_root = run_dir / "tensorboard" / stage / rel
    scalars = read_scalars(tb_root) if tb_root.is_dir() else {}
    if scalars:
        return scalars, f"tensorboard/{stage}/{rel}".rstrip("/.")
    scalars = read_scalars(unit_dir)
    if scalars:
        return scalars, f"{name}/runs"
    ts = _find_trainer_state(unit_dir)
    if ts is not None:
        history = (load_json(ts) or {}).get("log_history") or []
        return scalars_from_log_history(history), str(ts.relative_to(run_dir))
    return {}, ""


def _training_info(unit_dir: Path) -> TrainingInfo | None:
    """A trainer run's training_info.json, or None when it is absent or unreadable (the report never fails on one
    file; its typed result, read from the same file, already says why)."""
    try:
        return TrainingInfo.read(unit_dir / TRAINING_INFO)
    except (OSError, KormedError):
        return None


def training_units(run_dir: Path, stage: str, stage_dir: Path, result: Any, *,
                   curves: bool = True) -> list[TrainingUnit]:
    """The trainer runs of a training stage's typed result, in order, with their curves (unless `curves=False`)."""
    if isinstance(result, TrainResult):
        runs = [("cpt", stage_dir, result)]
    elif isinstance(result, results.SFTResult):
        runs = [(f"sft/{r.name}", stage_dir / r.name, r) for r in result.steps]
    elif isinstance(result, LoopResult):
        runs = [(f"loop/{r.name}", stage_dir / r.name, r) for r in result.trained]
    else:
        return []
    units = []
    for name, unit_dir, r in runs:
        scalars, source = _curves(run_dir, stage, name, unit_dir) if curves else ({}, "")
        units.append(TrainingUnit(stage=stage, name=name, result=r, info=_training_info(unit_dir),
                                  scalars=scalars, source=source))
    return units


@dataclass
class ReportData:
    run_dir: Path
    state: dict[str, Any]
    results: dict[str, Any]  # stage -> its typed result (None: not run)
    unreadable: dict[str, str]  # stage -> why its result could not be read
    training: dict[str, list[TrainingUnit]]
    # the stages' own files as written, for the model cards (kormed.export.model_card)
    stats: dict[str, Any] | None = None
    stats_path: str | None = None
    tokenizer: dict[str, Any] | None = None
    mcq: dict[str, dict[str, Any]] = field(default_factory=dict)  # target -> kormedmcqa_<target>.json
    ppl: dict[str, dict[str, Any]] = field(default_factory=dict)  # target -> ppl_<target>.json
    knowledge: dict[str, dict[str, Any]] = field(default_factory=dict)  # target -> knowledge_<target>.json

    @property
    def prepare(self) -> PrepareResult | None:
        return self.results.get("prepare")

    @property
    def tokenizer_result(self) -> TokenizerResult | None:
        return self.results.get("tokenizer")

    @property
    def loop(self) -> LoopResult | None:
        return self.results.get("loop")

    @property
    def eval(self) -> EvalResult | None:
        return self.results.get("eval")


def stage_dir(run_dir: Path, state: dict[str, Any], stage: str) -> Path:
    entry = (state.get("stages") or {}).get(stage) or {}
    return run_dir / str(entry.get("output_dir") or STAGE_DIRS[stage])


def stage_result(stage: str, stage_dir: Path) -> Any | None:
    """The stage's typed result: its kormed_result.json, else rebuilt from its own files (older run directories,
    or a stage still running); None when it has produced nothing yet."""
    found = results.read_result(stage_dir, stage)
    return found if found is not None else results.stage_result_from_files(stage, stage_dir)


def _raw_files(data: ReportData) -> None:
    """The stages' files as written (by their one name each), which the model cards quote."""
    prep = data.prepare
    if prep is not None:
        stats = load_json(Path(prep.stats_file))
        if isinstance(stats, dict):
            data.stats = stats
            path = Path(prep.stats_file)
            data.stats_path = str(path.relative_to(data.run_dir)) if path.is_relative_to(data.run_dir) else str(path)
    tok = load_json(stage_dir(data.run_dir, data.state, "tokenizer") / results.TOKENIZER_REPORT)
    data.tokenizer = tok if isinstance(tok, dict) else None
    eval_dir = stage_dir(data.run_dir, data.state, "eval")
    for prefix, into in (("kormedmcqa_", data.mcq), ("ppl_", data.ppl), ("knowledge_", data.knowledge)):
        for p in sorted(eval_dir.glob(f"{prefix}*.json")) if eval_dir.is_dir() else []:
            loaded = load_json(p)
            if isinstance(loaded, dict):
                into[p.stem.removeprefix(prefix)] = loaded


def collect(run_dir: str | Path, *, curves: bool = True) -> ReportData:
    """Read everything the report shows from a run directory (`curves=False`: without the logged series, as the
    model cards read it)."""
    rd = Path(run_dir)
    if not rd.is_dir():
        raise KormedError("run directory does not exist", path=rd)
    state = load_json(rd / "state.json")
    state = state if isinstance(state, dict) else {"stages": {}}
    if not isinstance(state.get("stages"), dict):
        state["stages"] = {}
    found: dict[str, Any] = {}
    unreadable: dict[str, str] = {}
    for stage in STAGE_DIRS:
        try:
            found[stage] = stage_result(stage, stage_dir(rd, state, stage))
        except KormedError as exc:  # one broken file: that section says so, the rest of the report is written
            found[stage] = None
            unreadable[stage] = str(exc)
    training = {s: training_units(rd, s, stage_dir(rd, state, s), found[s], curves=curves) for s in TRAINING_STAGES}
    data = ReportData(rd, state, found, unreadable, training)
    _raw_files(data)
    return data


def rows_of_stats(stats: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-source distribution rows of prepare's stats file (its `table`)."""
    rows = stats.get("table")
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


TARGET_ORDER = ("base", *TRAINING_STAGES)


def target_key(name: str) -> tuple[int, str]:
    """Sort key of an eval target: base, then the training stages in order, then the rest by name."""
    head = name.split("_")[0].split("-")[0]
    return (TARGET_ORDER.index(head) if head in TARGET_ORDER else len(TARGET_ORDER), name)
