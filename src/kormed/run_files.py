"""The files one stage writes and another reads, each spelled once: their names, the `step{n}` directory names,
and the typed, versioned schemas of the SFT summary (its step rows) and the loop table (its round rows), written by
their recipe and read back by the recipe itself (`--from-step`) and by the pipeline's results (runner, report,
model cards) through the same type. (training_info.json is written by kormed.train.engine.outputs.finish_run.)

This module imports nothing heavy, so every layer may read it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kormed.errors import KormedError
from kormed.io import read_json

TRAINING_INFO = "training_info.json"  # one trainer run: engine summary, config, model, data (train/engine/outputs)
SFT_SUMMARY = "sft_summary.json"  # the SFT recipe: baseline and one row per step (SFTSummary)
LOOP_TABLE = "loop_table.json"  # the loop: one row per round and the chosen one (train/loop)
SFT_SUMMARY_VERSION = 1  # sft_summary.json written before the version field existed reads as version 0
STEP_DIR = re.compile(r"^step(\d+)$")


def step_dir_name(n: int) -> str:
    """The directory (and name) of SFT step `n` (1-based): step1, step2, ..."""
    return f"step{n}"


@dataclass
class SFTStepRow:
    """One SFT step as the summary records it: why and where it stopped, its metrics then, its adapter."""

    step: int  # 1-based; its directory is step_dir_name(step)
    name: str
    description: str
    stop_reason: str  # a kormed.stop_reason.StopReason value
    global_step: int
    metrics_at_stop: dict[str, float] | None
    adapter: str


@dataclass
class SFTSummary:
    """sft_summary.json: the baseline raw-text perplexity, the rows of the steps run so far, whether every step
    finished, and the final adapter (the last row's)."""

    baseline: dict[str, Any]
    steps: list[SFTStepRow]
    finished: bool
    final_adapter: str | None
    version: int = SFT_SUMMARY_VERSION

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def read(cls, path: str | Path) -> SFTSummary:
        """Read and check a summary; a missing or mistyped field is a KormedError naming the file and field."""
        data = read_json(path, what="SFT summary")
        if not isinstance(data, dict):
            raise KormedError("not a kormed SFT summary (not a JSON object)", path=path)
        try:
            rows = [SFTStepRow(**{f.name: row[f.name] for f in dataclasses.fields(SFTStepRow)})
                    for row in data["steps"]]
            return cls(baseline=dict(data["baseline"]), steps=rows, finished=bool(data["finished"]),
                       final_adapter=data["final_adapter"], version=int(data.get("version", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise KormedError(f"not a kormed SFT summary (missing or bad field: {exc})", path=path) from None


LOOP_TABLE_VERSION = 1  # loop_table.json written before the version field existed reads as version 0


@dataclass(kw_only=True)
class LoopTableRow:
    """One round of the loop table: its adapter, dev accuracy (selection) and test accuracy when measured, and
    where its SFT step stopped (round 0, the starting adapter, has no step)."""

    round: int
    kind: str
    adapter: str | None = None
    dev_accuracy: float
    dev_correct: int | None = None
    dev_total: int | None = None
    dev_unparseable: int | None = None
    test_accuracy: float | None = None
    test_correct: int | None = None
    test_total: int | None = None
    global_step: int | None = None
    stop_reason: str | None = None  # a kormed.stop_reason.StopReason value
    metrics: dict[str, float] | None = None


@dataclass(kw_only=True)
class LoopTable:
    """loop_table.json: the target, the split selected on and the one reported on, one row per round, and the
    round chosen on dev (rewritten after every round; `stop_reason` is None while the loop runs)."""

    target: float | None = None
    eval_mode: str | None = None
    selected_on: str | None = None
    reported_on: str | None = None
    selection: dict[str, Any] | None = None
    test: dict[str, Any] | None = None
    baseline_raw_perplexity: float | None = None
    rounds: list[LoopTableRow]
    stop_reason: str | None = None
    best_round: int | None = None
    best_dev_accuracy: float | None = None
    best_test_accuracy: float | None = None
    best_adapter: str | None = None
    version: int = LOOP_TABLE_VERSION

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def read(cls, path: str | Path) -> LoopTable:
        """Read and check a loop table (each round's round, kind and dev_accuracy are required); a missing or
        mistyped field is a KormedError naming the file."""
        data = read_json(path, what="loop table")
        try:
            names = {f.name for f in dataclasses.fields(LoopTableRow)}
            rows = [LoopTableRow(**{k: v for k, v in row.items() if k in names}) for row in data["rounds"]]
            fields = {f.name for f in dataclasses.fields(cls)} - {"rounds", "version"}
            return cls(rounds=rows, version=int(data.get("version", 0)),
                       **{k: v for k, v in data.items() if k in fields})
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise KormedError(f"not a kormed loop table (missing or bad field: {exc})", path=path) from None
