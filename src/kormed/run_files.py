"""The files one stage writes and another reads, each spelled once: their names, the `step{n}` directory names,
and the typed schema of the SFT summary (its step rows), written by the SFT recipe and read back by the recipe
itself (`--from-step`) and by the pipeline's results (runner, report, model cards) through the same type.

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
