"""What the runner and the stage wiring share: the parsed pipeline file, the run context a stage sees, and the
StageSpec that tells the runner how to drive one stage. Both `pipeline.run` and `pipeline.stages` import this
module; neither imports the other's internals (the runner imports the stage table, never the reverse)."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from kormed.errors import KormedError
from kormed.io import Log
from kormed.pipeline.registry import STAGE_DIRS


def stderr_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class StageInterrupted(KormedError):
    """A stage stopped before finishing (Ctrl-C / SIGTERM inside a trainer): recorded as interrupted, resumable."""


@dataclasses.dataclass
class Pipeline:
    """A parsed pipeline file."""

    name: str
    run_dir: Path
    stages: list[str]
    sections: dict[str, dict[str, Any]]
    model: str | None = None
    device: str | None = None
    data_root: str | None = None
    report_to: list[str] = dataclasses.field(default_factory=lambda: ["tensorboard"])
    eval_targets: list[str] | None = None
    launcher: str | None = None  # e.g. "accelerate launch --config_file ddp.yaml": runs the training stages' commands
    description: str = ""
    source: Path | None = None


@dataclasses.dataclass
class RunContext:
    """What a stage's wiring and run function see: the pipeline, earlier stages' configs and results."""

    pipeline: Pipeline
    configs: dict[str, Any] = dataclasses.field(default_factory=dict)
    results: dict[str, Any] = dataclasses.field(default_factory=dict)
    log: Log = stderr_log

    @property
    def run_dir(self) -> Path:
        return self.pipeline.run_dir

    def stage_dir(self, stage: str) -> Path:
        return self.pipeline.run_dir / STAGE_DIRS[stage]

    def tb_dir(self, stage: str) -> Path:
        return self.pipeline.run_dir / "tensorboard" / stage

    def enabled(self, stage: str) -> bool:
        """True when `stage` is part of this run."""
        return stage in self.configs


@dataclasses.dataclass
class StageSpec:
    """How the runner drives one stage. The functions call the stage's own API; they never re-implement it."""

    name: str
    config_cls: Callable[[], type]  # the stage's config dataclass (an ImportError here fails the run)
    wire: Callable[[RunContext], dict[str, Any]]  # defaults from the run dir and earlier stages (file wins)
    run: Callable[[Any, RunContext], Any]
    inputs: Callable[[Any, RunContext], Iterable[str | Path | None]]  # files/dirs whose content the result depends on
    outputs: Callable[[Any, RunContext], Iterable[str | Path]]  # must exist for a finished stage to be reused
    volatile: tuple[str, ...] = ()  # config fields that never change the result (logging, worker counts)
    resume_field: str | None = None  # bool config field that makes the stage continue an interrupted run
    resume_hook: Callable[[Any, RunContext], Any] | None = None  # or: the config that continues it (None: cannot)
    output_dirs: Callable[[Any, RunContext], Iterable[str | Path]] | None = None  # cleared before a fresh rerun
    command: tuple[str, ...] | None = None  # its `kormed` subcommand (e.g. ("train", "cpt")), for `launcher`
    extra_hash: Callable[[Any, RunContext], Any] | None = None  # other settings the result depends on (JSON-able)
    verify: Callable[[Any, RunContext], str | None] | None = None  # why existing outputs are unusable (None: fine)
    # its typed result (kormed.pipeline.results) read from the files it wrote; written to kormed_result.json
    result: Callable[[Any, RunContext], Any] | None = None
    # raises StageInterrupted when that result says the stage stopped early (a resumable interruption)
    check: Callable[[Any], None] | None = None
