"""The one registry of pipeline stages: every list of stage names (order, run-directory layout, config sections,
report titles, which stages train, where each leaves its final artefact) derives from `STAGES`.

This module imports nothing heavy and nothing else of `kormed.pipeline`, so the runner, the stage wiring, the
report and the model cards can all read it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kormed.errors import KormedError
from kormed.run_files import step_dir_name


def sft_step_names(cfg: Any) -> list[str]:
    """The directory names of the SFT steps a config runs (step1, step2, ...), in order: however many it holds."""
    steps = cfg.steps() if callable(getattr(cfg, "steps", None)) else cfg.steps
    return [step_dir_name(i) for i in range(1, len(steps) + 1)]


def _output(cfg: Any) -> Path:
    return Path(cfg.output)


def _sft_final(cfg: Any) -> Path:
    return Path(cfg.output) / sft_step_names(cfg)[-1]


def _loop_final(cfg: Any) -> Path:
    return Path(cfg.output) / "best"


@dataclass(frozen=True)
class StageInfo:
    """What a stage is, independent of how it runs: its name, where its options and outputs live, what it reads."""

    name: str
    section: str  # its section of the YAML config (`config.CONFIG_SECTIONS` maps it to a dataclass)
    output_dir: str  # its directory inside the run directory
    title: str  # its heading in `kormed report`
    inputs: tuple[str, ...]  # earlier stages whose artefacts it reads (their outputs are its inputs when enabled)
    trains: bool = False  # a training stage: leaves a LoRA adapter
    final_artefact: Callable[[Any], Path] | None = None  # where its final adapter is, from its config

    def final_adapter(self, cfg: Any) -> Path:
        """The directory of this training stage's final adapter (CPT: its output; SFT: the last step; loop: best/)."""
        if self.final_artefact is None:
            raise KormedError(f"stage '{self.name}' leaves no adapter")
        return self.final_artefact(cfg)


STAGES: tuple[StageInfo, ...] = (
    StageInfo("prepare", section="prepare", output_dir="corpus", title="prepare (corpus)", inputs=()),
    StageInfo("tokenizer", section="tokenizer", output_dir="tokenizer", title="tokenizer extend",
              inputs=("prepare",)),
    StageInfo("cpt", section="cpt", output_dir="cpt", title="CPT", inputs=("prepare", "tokenizer"), trains=True,
              final_artefact=_output),
    StageInfo("sft", section="sft", output_dir="sft", title="SFT steps", inputs=("prepare", "cpt"), trains=True,
              final_artefact=_sft_final),
    StageInfo("loop", section="loop", output_dir="loop", title="dictionary <-> exam loop",
              inputs=("prepare", "cpt", "sft"), trains=True, final_artefact=_loop_final),
    StageInfo("eval", section="eval", output_dir="eval", title="evaluation",
              inputs=("prepare", "cpt", "sft", "loop")),
)

STAGE_ORDER: tuple[str, ...] = tuple(s.name for s in STAGES)
STAGE_DIRS: dict[str, str] = {s.name: s.output_dir for s in STAGES}
STAGE_SECTIONS: dict[str, str] = {s.name: s.section for s in STAGES}
STAGE_TITLES: dict[str, str] = {s.name: s.title for s in STAGES}
TRAINING_STAGES: tuple[str, ...] = tuple(s.name for s in STAGES if s.trains)
_BY_NAME = {s.name: s for s in STAGES}


def stage_info(name: str) -> StageInfo:
    """The registry entry of one stage (a KormedError naming the known stages for anything else)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KormedError(f"unknown stage {name!r} (known: {', '.join(STAGE_ORDER)})") from None


def previous_adapter(stage: str, enabled: Callable[[str], bool], configs: dict[str, Any]) -> Path | None:
    """The final adapter a stage starts from: that of the nearest training stage among its inputs that is part of
    the run (None: start from the base model / a fresh LoRA)."""
    for name in reversed(stage_info(stage).inputs):
        info = _BY_NAME[name]
        if info.trains and enabled(name):
            return info.final_adapter(configs[name])
    return None
