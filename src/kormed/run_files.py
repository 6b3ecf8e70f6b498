"""The files one stage writes and another reads, each spelled once: their names, the `step{n}` directory names,
and the typed, versioned schemas of the SFT summary (its step rows) and the loop table (its round rows), written by
their recipe and read back by the recipe itself (`--from-step`) and by the pipeline's results (runner, report,
model cards) through the same type; and training_info.json, one trainer run's record (TrainingInfo: the engine's
summary, an SFT step's own record, the model and the recipe's record), written by
kormed.train.engine.outputs.finish_run and read by the recipes, the pipeline's results and the model cards.

This module imports nothing heavy, so every layer may read it.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
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


# loop_table.json written before the version field existed reads as version 0; version 2 adds dictionary knowledge
# (per round: dev forms of the trained entries; test forms of trained and held-out entries where reported)
LOOP_TABLE_VERSION = 2


@dataclass(kw_only=True)
class LoopTableRow:
    """One round of the loop table: its adapter, dev exam accuracy and dev knowledge (selection), test accuracy
    and test-form knowledge (trained and held-out entries) when measured (reported, never used to choose), and
    where its SFT step stopped (round 0, the starting adapter, has no step). A version-1 table has no knowledge."""

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
    dev_knowledge_accuracy: float | None = None  # trained entries, dev forms (selection)
    dev_knowledge_correct: int | None = None
    dev_knowledge_total: int | None = None
    test_knowledge_accuracy: float | None = None  # trained entries, test forms (reported)
    test_knowledge_correct: int | None = None
    test_knowledge_total: int | None = None
    heldout_knowledge_accuracy: float | None = None  # held-out entries (prepare.dict_holdout), test forms (reported)
    heldout_knowledge_correct: int | None = None
    heldout_knowledge_total: int | None = None
    global_step: int | None = None
    stop_reason: str | None = None  # a kormed.stop_reason.StopReason value
    metrics: dict[str, float] | None = None


@dataclass(kw_only=True)
class LoopTable:
    """loop_table.json: the targets, what rounds are selected on (`select_on`, always dev) and what is reported,
    the knowledge questions' settings (`knowledge`: per split its forms, seed, per_group and the dictionary files
    with their content keys), one row per round, and the round chosen on dev (rewritten after every round;
    `stop_reason` is None while the loop runs)."""

    target: float | None = None
    select_on: str | None = None  # knowledge | exam | both (version 1: exam)
    knowledge_target: float | None = None
    stop_after_no_improvement: int | None = None
    knowledge: dict[str, Any] | None = None
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
    best_dev_knowledge: float | None = None
    best_test_knowledge: float | None = None
    best_heldout_knowledge: float | None = None
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


TRAINING_INFO_VERSION = 1  # training_info.json written before the version field existed reads as version 0


@dataclass(kw_only=True)
class TrainingSummary:
    """How one trainer run went and why it stopped: the engine's summary (train.engine.outputs.summarize). An SFT
    step replaces stop_reason and stop_detail with its stop conditions' verdict (the engine's is in SFTStepRecord)."""

    stop_reason: str  # a kormed.stop_reason.StopReason value
    stop_step: int | None = None
    stop_detail: str | None = None
    global_step: int | None = None
    max_steps: int | None = None
    epochs: float | None = None
    tokens_seen: int | None = None
    wall_time_s: float | None = None
    resumed_from: str | None = None
    best_metric: float | None = None
    best_step: int | None = None
    best_checkpoint: str | None = None
    first_eval: dict[str, Any] | None = None  # eval_* metrics with their step and epoch
    best_eval: dict[str, Any] | None = None
    last_eval: dict[str, Any] | None = None
    eval_history: list[dict[str, Any]] = field(default_factory=list)
    kormedmcqa_history: list[dict[str, Any]] = field(default_factory=list)
    train_loss_last: float | None = None
    train_loss_first: float | None = None
    gradient_accumulation_steps: int | None = None
    world_size: int | None = None
    effective_batch_size: int | None = None


@dataclass(kw_only=True)
class SFTStepRecord:
    """What one SFT step (or loop round) trained on, and how its stop conditions decided (sft.run_sft_step)."""

    step: str | None = None  # its name in the logs: step1, round02
    step_name: str | None = None
    description: str | None = None
    mix: dict[str, float] | None = None  # normalised weights per source
    mix_mode: str | None = None
    mix_by: str | None = None
    mix_report: dict[str, Any] | None = None
    stopping_strategy: str | None = None
    train_examples: int | None = None
    stop_conditions: list[str] = field(default_factory=list)
    stable_evals: int | None = None
    stable_metrics: list[str] = field(default_factory=list)
    tolerances: dict[str, Any] | None = None
    baseline_raw_perplexity: float | None = None
    start_metrics: dict[str, float] | None = None
    start_metrics_source: str | None = None
    train_options: dict[str, Any] | None = None
    # the stop record
    engine_stop_reason: str | None = None  # the engine's own reason (None: the stop conditions ended the step)
    conditions_met: bool | None = None
    metrics_at_stop: dict[str, float] | None = None
    conditions_at_stop: list[dict[str, Any]] = field(default_factory=list)
    stop_checks: list[dict[str, Any]] = field(default_factory=list)
    batches: dict[str, Any] | None = None


# the model as prepared (train.engine.model_setup; written whole, a full fine-tune's `lora: null` included), then
# the stage's config and data and where and how it ran (written when set)
_MODEL_RECORD = ("model", "model_path", "method", "tokenizer", "lora")
_INFO_SECTIONS = (*_MODEL_RECORD, "config", "data", "runtime", "loss", "library_versions")


@dataclass(kw_only=True)
class TrainingInfo:
    """training_info.json: one trainer run (CPT, an SFT step, a loop round), or a saved adapter that no trainer
    run made (the loop's round00_start: no summary). Written flat, one JSON object with the keys its readers have
    always read (the sections' fields side by side with the recipe's record), and its version."""

    stage: str | None = None  # "cpt", "sft" (an SFT step or a loop round), "loop" (the loop's starting adapter)
    summary: TrainingSummary | None = None  # None: a saved adapter, not a trainer run
    sft: SFTStepRecord | None = None  # an SFT step's or loop round's own record
    model: str | None = None
    model_path: str | None = None
    method: str | None = None  # "lora" or "full"
    tokenizer: dict[str, Any] | None = None
    lora: dict[str, Any] | None = None
    config: dict[str, Any] | None = None  # CPT: its whole config
    data: dict[str, Any] | None = None
    runtime: dict[str, Any] | None = None
    loss: dict[str, Any] | None = None
    library_versions: dict[str, str] | None = None
    record: dict[str, Any] = field(default_factory=dict)  # the rest the recipe recorded (sources, counts, round...)
    version: int = TRAINING_INFO_VERSION

    @property
    def train_options(self) -> dict[str, Any]:
        """The training options the run used: an SFT step's own, else the stage config's `train` section."""
        if self.sft is not None and self.sft.train_options:
            return self.sft.train_options
        return dict((self.config or {}).get("train") or {})

    def to_json(self) -> dict[str, Any]:
        out = dict(self.record)
        whole = self.method is not None  # a model record
        out.update({k: getattr(self, k) for k in _INFO_SECTIONS
                    if getattr(self, k) is not None or (whole and k in _MODEL_RECORD)})
        if self.sft is not None:
            out.update(dataclasses.asdict(self.sft))
        if self.summary is not None:
            out.update(dataclasses.asdict(self.summary))
        if self.stage is not None:
            out["stage"] = self.stage
        out["version"] = self.version
        return out

    @classmethod
    def from_json(cls, data: Any, path: str | Path = TRAINING_INFO) -> TrainingInfo:
        """Check and type a parsed training_info.json; anything malformed is a KormedError naming `path` and the
        field."""
        if not isinstance(data, dict):
            raise KormedError("not a kormed training info (not a JSON object)", path=path)
        rest = dict(data)
        summary = _typed(TrainingSummary, rest, path) if "stop_reason" in rest else None
        sft_keys = {f.name for f in dataclasses.fields(SFTStepRecord)}
        sft = _typed(SFTStepRecord, rest, path) if sft_keys & set(rest) else None
        sections = {k: rest.pop(k) for k in (*_INFO_SECTIONS, "stage", "version") if k in rest}
        info = cls(summary=summary, sft=sft, record=rest, **{"version": 0, **sections})
        _check_types(info, path, skip=("summary", "sft", "record"))
        return info

    @classmethod
    def read(cls, path: str | Path) -> TrainingInfo:
        """Read and check one training_info.json (a file written before the version field reads as version 0)."""
        return cls.from_json(read_json(path, what="training info"), path)


def _typed(cls: Any, data: dict[str, Any], path: str | Path) -> Any:
    """Pop `cls`'s fields out of `data` and build it, each value checked against its annotation."""
    names = [f.name for f in dataclasses.fields(cls)]
    obj = cls(**{k: data.pop(k) for k in names if k in data})
    _check_types(obj, path)
    return obj


def _accepts(hint: Any, value: Any) -> bool:
    """Whether a JSON value fits a field annotation (None, bool, int, float, str, dict, list, unions of them)."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(h, value) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin in (dict, list):
        return isinstance(value, origin)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _check_types(obj: Any, path: str | Path, skip: tuple[str, ...] = ()) -> None:
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name not in skip and not _accepts(hints[f.name], value):
            raise KormedError(f"not a kormed training info (expected {hints[f.name]}, found {value!r:.60})",
                              path=path, field=f.name)
