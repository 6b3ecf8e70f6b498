"""Typed stage results: what each stage produced, written by the runner as `<stage dir>/kormed_result.json` and
read by the runner and `kormed report` (no key guessing: one dataclass per stage, one schema version).

Each result is built from the files the stage documents (prepare's `*.stats.json`, `tokenizer_report.json`,
`training_info.json`, `sft_summary.json`, `loop_table.json`, eval's `kormedmcqa_<target>.json` /
`ppl_<target>.json`), each read by its one real schema, so the same builders also serve run directories made
before these result files existed.
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
from kormed.io import read_json, write_json
from kormed.run_files import LOOP_TABLE, SFT_SUMMARY, TRAINING_INFO, LoopTable, SFTSummary, TrainingInfo
from kormed.run_files import STEP_DIR as _STEP_DIR
from kormed.stop_reason import StopReason
from kormed.tokenizer.report import REPORT_FILE

RESULT_FILE = "kormed_result.json"
RESULT_SCHEMA = 1
TOKENIZER_REPORT = REPORT_FILE
STATS_SUFFIX = ".stats.json"
_ROUND_DIR = re.compile(r"^round(\d+)(_\w+)?$")


def _reason(value: Any, path: Path) -> StopReason:
    try:
        return StopReason(value)
    except ValueError:
        known = ", ".join(r.value for r in StopReason)
        raise KormedError(f"unknown stop_reason {value!r} (known: {known})", path=path, field="stop_reason") from None


_NOT_QUALITY = ("_runtime", "_per_second", "_tokens")  # how long an evaluation took and on how much, not how well


def _metrics(entry: Any) -> dict[str, float]:
    """The eval_* quality numbers (losses, perplexities, accuracies) of one evaluation record of
    training_info.json (`last_eval`, `best_eval`)."""
    if not isinstance(entry, dict):
        return {}
    return {k: float(v) for k, v in entry.items()
            if k.startswith("eval_") and not k.endswith(_NOT_QUALITY) and isinstance(v, int | float)
            and not isinstance(v, bool)}


# --------------------------------------------------------------------------------------------------- prepare


@dataclass
class PrepareResult:
    """prepare: the mixed corpus, its validation split and the distribution table of the stats file."""

    stats_file: str
    table: list[dict[str, Any]]  # the seeds' rows: source, base, multiplier, final, ratio, ratio_text, characters
    drops: dict[str, dict[str, int]] = field(default_factory=dict)  # source -> filter reason -> records dropped
    corpus: str | None = None
    val: str | None = None
    documents: int | None = None
    val_documents: int | None = None
    # decontamination against the evaluation questions: enabled, ngram, documents dropped, the eval sets matched
    decontamination: dict[str, Any] = field(default_factory=dict)


def prepare_result(stats_file: str | Path) -> PrepareResult:
    """Read prepare's stats file (written next to the corpus as `<corpus>.stats.json`; its `table` is required,
    the rest is read when present)."""
    path = Path(stats_file)
    stats = read_json(path, what="prepare stats")
    try:
        return PrepareResult(stats_file=str(path), table=list(stats["table"]),
                             drops={k: dict(v) for k, v in (stats.get("drops") or {}).items()},
                             corpus=stats.get("out"), val=stats.get("val"), documents=stats.get("lines"),
                             val_documents=stats.get("val_docs"),
                             decontamination=dict(stats.get("decontamination") or {}))
    except (KeyError, TypeError, AttributeError) as exc:
        raise KormedError(f"not a kormed prepare stats file ({exc})", path=path) from None


# --------------------------------------------------------------------------------------------------- tokenizer


@dataclass
class TextEfficiency:
    """Tokens per 1,000 characters of one text set under the base and the extended tokenizer."""

    tokens_per_1000_chars_before: float
    tokens_per_1000_chars_after: float
    new_token_share_of_chars: float


@dataclass
class TokenizerResult:
    """tokenizer extend: the extended tokenizer directory and how many tokens it saves."""

    tokenizer_dir: str
    method: str
    new_tokens: int
    base_vocab_size: int
    vocab_size: int
    texts: dict[str, TextEfficiency]  # "heldout", "medical"


def tokenizer_result(tokenizer_dir: str | Path) -> TokenizerResult:
    """Read `tokenizer_report.json` of an extended tokenizer directory."""
    path = Path(tokenizer_dir) / TOKENIZER_REPORT
    report = read_json(path, what="tokenizer report")
    try:
        texts = {name: TextEfficiency(**{f.name: report[name][f.name] for f in dataclasses.fields(TextEfficiency)})
                 for name in ("heldout", "medical") if isinstance(report.get(name), dict)}
        return TokenizerResult(tokenizer_dir=str(tokenizer_dir), method=report["method"],
                               new_tokens=report["new_tokens"], base_vocab_size=report["base_vocab_size"],
                               vocab_size=report["vocab_size"], texts=texts)
    except (KeyError, TypeError, AttributeError) as exc:
        raise KormedError(f"not a kormed tokenizer report (missing {exc})", path=path) from None


# --------------------------------------------------------------------------------------------------- training


@dataclass
class Threshold:
    """One stop condition's absolute threshold on a logged metric (drawn on the report's curves)."""

    metric: str
    value: float
    label: str


@dataclass
class TrainResult:
    """One trainer run (CPT, one SFT step, one loop round), from its `training_info.json`."""

    name: str  # "cpt", "step1", "round01_dict"
    adapter: str  # its directory
    stop_reason: StopReason
    stop_step: int | None
    global_step: int | None
    tokens_seen: int | None
    wall_time_s: float | None
    final_metrics: dict[str, float] = field(default_factory=dict)  # the last evaluation
    best_metrics: dict[str, float] = field(default_factory=dict)  # the evaluation at the best checkpoint
    thresholds: list[Threshold] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.stop_reason.finished


def _thresholds(info: TrainingInfo) -> list[Threshold]:
    """SFT/loop: the conditions as evaluated at the stop (baseline resolved); CPT: its target perplexity."""
    at_stop = info.sft.conditions_at_stop if info.sft is not None else []
    out = [Threshold(c["metric"], float(c["threshold"]), c["condition"])
           for c in at_stop if c.get("threshold") is not None]
    target = ((info.config or {}).get("train") or {}).get("target_perplexity")
    if target:
        out.append(Threshold("eval/perplexity", float(target), f"target ppl < {target:g}"))
    return out


def train_result(unit_dir: str | Path, name: str | None = None) -> TrainResult:
    """Read one trainer run's `training_info.json` (engine summary + the SFT step's stop record)."""
    path = Path(unit_dir) / TRAINING_INFO
    info = TrainingInfo.read(path)
    run = info.summary
    if run is None:
        raise KormedError("not a kormed training_info.json (no stop_reason)", path=path)
    try:
        return TrainResult(
            name=name or Path(unit_dir).name, adapter=str(unit_dir), stop_reason=_reason(run.stop_reason, path),
            stop_step=run.stop_step, global_step=run.global_step, tokens_seen=run.tokens_seen,
            wall_time_s=run.wall_time_s, final_metrics=_metrics(run.last_eval), best_metrics=_metrics(run.best_eval),
            thresholds=_thresholds(info))
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise KormedError(f"not a kormed training_info.json ({exc})", path=path) from None


def _units(stage_dir: Path, pattern: re.Pattern[str]) -> list[TrainResult]:
    """The finished-or-stopped trainer runs in numbered subdirectories (step1.., round01_dict..), in order. A
    directory whose training_info.json has no stop record is a saved adapter, not a trainer run (the loop's
    round00_start: the model before the first round) and is left out."""
    found = []
    if stage_dir.is_dir():
        for d in stage_dir.iterdir():
            m = pattern.match(d.name)
            info_file = d / TRAINING_INFO
            if m and info_file.is_file() and TrainingInfo.read(info_file).summary is not None:
                found.append((int(m.group(1)), d.name, train_result(d)))
    return [r for _, _, r in sorted(found, key=lambda t: (t[0], t[1]))]


@dataclass
class SFTResult:
    """sft: one TrainResult per step that ran, in order."""

    steps: list[TrainResult]
    finished: bool  # every step ended by its conditions or its step budget
    final_adapter: str | None
    baseline_raw_perplexity: float | None


def sft_result(output: str | Path) -> SFTResult:
    """Read the SFT output directory: `sft_summary.json` (when written) and each `stepN/training_info.json`."""
    out = Path(output)
    steps = _units(out, _STEP_DIR)
    summary = SFTSummary.read(out / SFT_SUMMARY) if (out / SFT_SUMMARY).is_file() else None
    baseline = None
    if summary is not None:
        finished, final = summary.finished, summary.final_adapter
        baseline = summary.baseline.get("raw_perplexity")
    else:  # a run that stopped before writing its summary
        finished = False
        final = steps[-1].adapter if steps else None
    return SFTResult(steps=steps, finished=finished and all(s.finished for s in steps), final_adapter=final,
                     baseline_raw_perplexity=baseline)


# --------------------------------------------------------------------------------------------------- loop


@dataclass
class LoopRound:
    """One row of the loop table: accuracy after a round (round 0: before the first) on the selection (dev) split,
    and on the test split when it was measured (the best-so-far rounds, or every round with test_every_round);
    dictionary knowledge (trained entries: dev forms, test forms; held-out entries: test forms) and the raw-text
    perplexity where the round measured them (absent in older runs)."""

    round: int
    kind: str
    dev_accuracy: float
    dev_correct: int | None = None
    dev_total: int | None = None
    test_accuracy: float | None = None
    test_correct: int | None = None
    test_total: int | None = None
    adapter: str | None = None
    global_step: int | None = None
    stop_reason: StopReason | None = None
    dev_knowledge: float | None = None
    test_knowledge: float | None = None
    heldout_knowledge: float | None = None
    raw_perplexity: float | None = None


@dataclass
class LoopResult:
    """loop: dev accuracy after every round, the round chosen on dev (copied to best/), its test accuracy, the
    splits used for selection and for reporting, and the trainer runs."""

    rounds: list[LoopRound]
    trained: list[TrainResult]
    stop_reason: StopReason | None = None  # None while it runs
    best_round: int | None = None
    best_dev_accuracy: float | None = None
    best_test_accuracy: float | None = None
    best_adapter: str | None = None
    selected_on: str | None = None
    reported_on: str | None = None
    select_on: str | None = None  # knowledge | exam | both (absent in older runs: exam)
    best_dev_knowledge: float | None = None
    baseline_raw_perplexity: float | None = None


def loop_result(output: str | Path) -> LoopResult:
    """Read the loop output directory: `loop_table.json` (its rounds' round, kind and dev_accuracy are required)
    and each `roundNN_kind/training_info.json`."""
    out = Path(output)
    path = out / LOOP_TABLE
    table = LoopTable.read(path)  # the type the loop writes
    rounds = [LoopRound(round=r.round, kind=r.kind, dev_accuracy=r.dev_accuracy, dev_correct=r.dev_correct,
                        dev_total=r.dev_total, test_accuracy=r.test_accuracy, test_correct=r.test_correct,
                        test_total=r.test_total, adapter=r.adapter, global_step=r.global_step,
                        stop_reason=_reason(r.stop_reason, path) if r.stop_reason else None,
                        dev_knowledge=r.dev_knowledge_accuracy, test_knowledge=r.test_knowledge_accuracy,
                        heldout_knowledge=r.heldout_knowledge_accuracy,
                        raw_perplexity=(r.metrics or {}).get("eval_raw_perplexity"))
              for r in table.rounds]
    return LoopResult(rounds=rounds, trained=_units(out, _ROUND_DIR),
                      stop_reason=_reason(table.stop_reason, path) if table.stop_reason else None,
                      best_round=table.best_round, best_dev_accuracy=table.best_dev_accuracy,
                      best_test_accuracy=table.best_test_accuracy, best_adapter=table.best_adapter,
                      selected_on=table.selected_on, reported_on=table.reported_on, select_on=table.select_on,
                      best_dev_knowledge=table.best_dev_knowledge,
                      baseline_raw_perplexity=table.baseline_raw_perplexity)


# --------------------------------------------------------------------------------------------------- eval


@dataclass
class EvalTarget:
    """One evaluated model: KorMedMCQA accuracy and, when measured, held-out perplexity."""

    accuracy: float | None = None
    correct: int | None = None
    total: int | None = None
    unparseable: int | None = None
    mode: str | None = None
    per_subset: dict[str, float] = field(default_factory=dict)
    mean_margin: float | None = None  # loglik modes: log P right - mean log P wrong (absent in older runs)
    permutations: str | None = None
    perplexity: float | None = None
    loss: float | None = None  # mean loss in nats per token
    tokens: int | None = None
    ppl_data: str | None = None  # the text file the perplexity was measured on
    bits_per_char: float | None = None  # each text alone, no end-of-text target (absent in older runs)
    hangul_bits_per_char: float | None = None
    # dictionary knowledge (eval/knowledge_<target>.json): "form/group" and "all/group" -> accuracy, correct, total,
    # ci95, mean_margin; the forms' split; per "all/group", the mean margin minus the base's on the same questions
    knowledge: dict[str, dict[str, Any]] = field(default_factory=dict)
    knowledge_split: str | None = None
    knowledge_vs_base: dict[str, dict[str, Any]] = field(default_factory=dict)
    # kind (kormedmcqa, knowledge) -> {"reused_from": ...} or {"why_not": ...}: a loop round's own scores
    reuse: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass
class EvalResult:
    """eval: target name (base, cpt, sft, loop, sft-step2, ...) -> its numbers."""

    targets: dict[str, EvalTarget]


def eval_result(eval_dir: str | Path) -> EvalResult:
    """Read eval's `kormedmcqa_<target>.json` and `ppl_<target>.json` files."""
    d = Path(eval_dir)
    targets: dict[str, EvalTarget] = {}
    for p in sorted(d.glob("kormedmcqa_*.json")):
        r = read_json(p, what="KorMedMCQA result")
        try:
            name = p.stem.removeprefix("kormedmcqa_")
            targets[name] = dataclasses.replace(
                targets.get(name, EvalTarget()), accuracy=r["accuracy"], correct=r["correct"], total=r["total"],
                unparseable=r["unparseable"], mode=r["mode"],
                per_subset={k: v["accuracy"] for k, v in r["per_subset"].items()},
                mean_margin=r.get("mean_margin"), permutations=r.get("permutations"))
            if isinstance(r.get("reuse"), dict):
                targets[name].reuse["kormedmcqa"] = {str(k): str(v) for k, v in r["reuse"].items()}
        except (KeyError, TypeError) as exc:
            raise KormedError(f"not a kormed KorMedMCQA result (missing {exc})", path=p) from None
    _knowledge(d, targets)
    for p in sorted(d.glob("ppl_*.json")):
        r = read_json(p, what="perplexity result")
        try:
            name = p.stem.removeprefix("ppl_")
            targets[name] = dataclasses.replace(targets.get(name, EvalTarget()), perplexity=r["perplexity"],
                                                loss=r["loss"], tokens=r["tokens"], ppl_data=r.get("data"),
                                                bits_per_char=r.get("bits_per_char"),
                                                hangul_bits_per_char=r.get("hangul_bits_per_char"))
        except (KeyError, TypeError) as exc:
            raise KormedError(f"not a kormed perplexity result (missing {exc})", path=p) from None
    return EvalResult(targets=targets)


def _knowledge(d: Path, targets: dict[str, EvalTarget]) -> None:
    """Each target's knowledge summary from eval/knowledge_<target>.json, and its paired difference from the base
    (mean margin over the questions both scored, seeded bootstrap interval: kormed.eval.paired)."""
    from kormed.eval.paired import mean_difference

    margins: dict[str, dict[str, dict[tuple[str, str, str], float]]] = {}
    for p in sorted(d.glob("knowledge_*.json")):
        r = read_json(p, what="knowledge result")
        name = p.stem.removeprefix("knowledge_")
        try:
            target = targets.setdefault(name, EvalTarget())
            target.knowledge = {str(k): dict(v) for k, v in r["summary"].items()}
            target.knowledge_split = str(r["split"])
            if isinstance(r.get("reuse"), dict):
                target.reuse["knowledge"] = {str(k): str(v) for k, v in r["reuse"].items()}
            by_group: dict[str, dict[tuple[str, str, str], float]] = {}
            for q in r["questions"]:
                by_group.setdefault(str(q["group"]), {})[(q["form"], q["term"], q["question"])] = float(q["margin"])
            margins[name] = by_group
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise KormedError(f"not a kormed knowledge result (missing or bad {exc})", path=p) from None
    base = margins.get("base")
    if base is None:
        return
    for name, by_group in margins.items():
        if name == "base":
            continue
        for group, items in sorted(by_group.items()):
            shared = [k for k in items if k in base.get(group, {})]
            if shared:
                diff = mean_difference([items[k] for k in shared], [base[group][k] for k in shared])
                targets[name].knowledge_vs_base[f"all/{group}"] = diff


# --------------------------------------------------------------------------------------------------- the file

StageResult = PrepareResult | TokenizerResult | TrainResult | SFTResult | LoopResult | EvalResult
RESULT_TYPES: dict[str, type] = {"prepare": PrepareResult, "tokenizer": TokenizerResult, "cpt": TrainResult,
                                 "sft": SFTResult, "loop": LoopResult, "eval": EvalResult}


def to_json(result: Any) -> Any:
    """A result as JSON-able data (StopReason values as their strings)."""
    return dataclasses.asdict(result, dict_factory=lambda items: {k: (v.value if isinstance(v, StopReason) else v)
                                                                   for k, v in items})


def _build(cls: Any, data: Any, path: Path, where: str) -> Any:
    """`cls` (a result dataclass, a StopReason, a list/dict/optional of them) from parsed JSON, checked."""
    origin = typing.get_origin(cls)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(cls)
        if data is None and type(None) in options:
            return None
        return _build(next(o for o in options if o is not type(None)), data, path, where)
    if origin is list:
        if not isinstance(data, list):
            raise KormedError("expected a list", path=path, field=where)
        return [_build(typing.get_args(cls)[0], v, path, f"{where}[{i}]") for i, v in enumerate(data)]
    if origin is dict:
        if not isinstance(data, dict):
            raise KormedError("expected a mapping", path=path, field=where)
        return {k: _build(typing.get_args(cls)[1], v, path, f"{where}.{k}") for k, v in data.items()}
    if cls is StopReason:
        return _reason(data, path)
    if dataclasses.is_dataclass(cls):
        if not isinstance(data, dict):
            raise KormedError("expected a mapping", path=path, field=where)
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise KormedError(f"unknown key '{unknown[0]}'", path=path, field=where)
        try:
            return cls(**{k: _build(hints[k], v, path, f"{where}.{k}".lstrip(".")) for k, v in data.items()})
        except TypeError as exc:
            raise KormedError(f"incomplete result ({exc})", path=path, field=where) from None
    return data


def write_result(stage_dir: str | Path, stage: str, result: Any) -> Path:
    """Write `<stage_dir>/kormed_result.json` atomically: schema version, stage name and the result."""
    if not isinstance(result, RESULT_TYPES[stage]):
        raise TypeError(f"stage {stage!r} returns {RESULT_TYPES[stage].__name__}, not {type(result).__name__}")
    path = Path(stage_dir) / RESULT_FILE
    write_json(path, {"schema": RESULT_SCHEMA, "stage": stage, "result": to_json(result)})
    return path


def read_result(stage_dir: str | Path, stage: str) -> Any | None:
    """The stage's typed result from `<stage_dir>/kormed_result.json`; None when the file does not exist."""
    path = Path(stage_dir) / RESULT_FILE
    if not path.is_file():
        return None
    doc = read_json(path, what="stage result")
    if not isinstance(doc, dict) or doc.get("schema") != RESULT_SCHEMA or doc.get("stage") != stage:
        found = (doc.get("schema"), doc.get("stage")) if isinstance(doc, dict) else None
        raise KormedError(f"expected a '{stage}' result of schema {RESULT_SCHEMA}, found {found}", path=path,
                          hint="delete it: `kormed run` writes it again from the stage's own files")
    return _build(RESULT_TYPES[stage], doc.get("result"), path, "result")


def stage_result_from_files(stage: str, stage_dir: str | Path) -> Any | None:
    """The typed result rebuilt from the stage's own files in its run-directory folder (None when they are absent:
    the stage has not produced its result files). Used for run directories made before kormed_result.json."""
    d = Path(stage_dir)
    if stage == "prepare":
        stats = sorted(d.glob(f"*{STATS_SUFFIX}")) if d.is_dir() else []
        return prepare_result(stats[0]) if stats else None
    if stage == "tokenizer":
        return tokenizer_result(d) if (d / TOKENIZER_REPORT).is_file() else None
    if stage == "cpt":
        return train_result(d, "cpt") if (d / TRAINING_INFO).is_file() else None
    if stage == "sft":
        return sft_result(d) if d.is_dir() else None
    if stage == "loop":
        return loop_result(d) if (d / LOOP_TABLE).is_file() else None
    if stage == "eval":
        return eval_result(d) if d.is_dir() else None
    raise KormedError(f"unknown stage {stage!r}")
