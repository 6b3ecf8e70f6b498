"""`kormed train loop`: the SFT recipe (:mod:`kormed.train.sft`) with its steps cycled as rounds (default: the
seeds' dictionary SFT train_01, then MCQ-with-reasoning SFT train_02) until the KorMedMCQA accuracy reaches the
target or the rounds run out.

Each round is one SFT step (:func:`kormed.train.sft.run_sft_step`: its own mix, stop conditions and max_steps),
continuing the same adapter. After each round:

* **Selection on dev**: the accuracy on a validation split chooses the best round (strictly higher; the earlier
  round wins a tie) and decides the target stop. That split is KorMedMCQA's dev split when given (`dev_data`,
  default `dev.jsonl` beside `eval_data`, the seeds' layout), else `dev_holdout` training questions held out of
  every round's training (seeded).
* **Report on test**: `eval_data` (the test set) is scored for each round that becomes the best on dev (so the
  chosen round's test accuracy is always known), or for every round with `test_every_round`; test scores are
  recorded, never used to choose.

The round's adapter is kept in `round{NN}_{name}/`, the best one is copied to `best/`. Round 0 (with
`eval_before`) is the starting adapter, saved in `round00_start/`, so `best/` is never worse than the start on
dev. `loop_table.json` / `loop_table.md` (rewritten after every round) name the split selected on and the one
reported on.

:func:`run_loop` has the SFT recipe's phases: **setup** (sources, the selection split, the model from
`from_adapter`), **train** (each round: an SFT step, then selection on dev and report on test) and **save** (the
round's adapter, `best/`, and the loop table after every round, so an interrupted loop leaves a consistent table).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from kormed.data.mixture import split_records
from kormed.errors import KormedError
from kormed.eval.kormedmcqa import evaluate_kormedmcqa
from kormed.io import atomic_write, check_output_path, make_temp_dir, optional_file, replace_path, write_json
from kormed.models import SAVED_ADAPTER_ENTRIES
from kormed.records import MCQ, read_mcq_jsonl
from kormed.run_files import LOOP_TABLE, TRAINING_INFO_VERSION, LoopTable, LoopTableRow, TrainingInfo
from kormed.stop_reason import StopReason
from kormed.train.engine.outputs import full_model_entries, is_full_model_dir, save_trained
from kormed.train.sft import (
    STEP_FINISHED,
    Log,
    Sources,
    StepContext,
    context_baseline,
    prepare_recipe,
    read_recipe_sources,
    recipe_inputs,
    require,
    run_sft_step,
)
from kormed.train.sft_config import LoopConfig

TABLE_JSON = LOOP_TABLE
TABLE_MD = "loop_table.md"
DEV_FILE = "dev.jsonl"  # KorMedMCQA's dev split, beside train.jsonl / test.jsonl in the seeds' layout

# (questions, split name "dev" | "test") -> an evaluate_kormedmcqa-style result: accuracy, correct, total, ...
Scorer = Callable[[Sequence[MCQ], str], dict[str, Any]]


@dataclass
class SelectionSplit:
    """The questions the loop chooses its best round on (never the test set it reports)."""

    name: str  # "dev" (KorMedMCQA's dev split) or "train_holdout" (training questions held out of training)
    source: str
    questions: list[MCQ]

    @property
    def label(self) -> str:
        return f"{self.name} ({self.source}, {len(self.questions)} q)"


def _limited(questions: list[MCQ], limit: int | None) -> list[MCQ]:
    return questions if limit is None else questions[:limit]


def selection_split(cfg: LoopConfig, src: Sources, *, log: Log = print) -> SelectionSplit:
    """The dev split (`dev_data`, or dev.jsonl beside `eval_data`), else `dev_holdout` questions moved out of
    `src.mcq_train` (seeded), so no round trains on what selects the best round."""
    dev_path = cfg.dev_data
    beside = Path(cfg.eval_data).parent / DEV_FILE if cfg.eval_data is not None else None
    if dev_path is None and beside is not None and optional_file(beside, "the dev split beside --eval-data"):
        dev_path = str(Path(cfg.eval_data).parent / DEV_FILE)
    if dev_path is not None:
        questions, _ = read_mcq_jsonl(dev_path)
        split = SelectionSplit("dev", str(dev_path), _limited(questions, cfg.eval_limit))
    else:
        pool = src.mcq_train
        n = min(cfg.dev_holdout, len(pool) // 2)
        if n < 1:
            raise KormedError("too few training questions to hold out a selection split", field="loop.dev_holdout",
                              hint="pass --dev-data (KorMedMCQA dev questions)")
        src.mcq_train, held = split_records(pool, fraction=n / len(pool), max_size=n, seed=cfg.train.seed)
        src.info.setdefault("mcq", {})["selection_holdout"] = len(held)
        split = SelectionSplit("train_holdout", f"held out of {cfg.mcq}, not trained on",
                               _limited(held, cfg.eval_limit))
    log(f"[kormed] loop: the best round is selected on {split.label}; the test set is only reported")
    return split


def kormedmcqa_scorer(cfg: LoopConfig, ctx: StepContext) -> Scorer:
    """KorMedMCQA accuracy of the model being trained (scored in place, in cfg.eval_mode)."""

    def score(questions: Sequence[MCQ], split: str) -> dict[str, Any]:
        return evaluate_kormedmcqa(ctx.model, ctx.tokenizer, questions, mode=cfg.eval_mode,
                                   batch_size=cfg.eval_batch_size, max_new_tokens=cfg.eval_max_new_tokens,
                                   chat_template=cfg.templates.mcq_prompt, compute_dtype=ctx.runtime.compute_dtype)

    return score


def _copy_adapter(src: Path, dst: Path, note: dict[str, Any]) -> None:
    """Replace `dst` with a copy of the adapter files of `src` (staged beside it, then renamed)."""
    stage = make_temp_dir(dst.parent, dst.name)  # umask-normal mode, kormed temp name (cleaned after a kill)
    for name in full_model_entries(src) if is_full_model_dir(src) else SAVED_ADAPTER_ENTRIES:
        if (src / name).is_dir():
            shutil.copytree(src / name, stage / name)
        elif (src / name).is_file():
            shutil.copy2(src / name, stage / name)
    write_json(stage / "best.json", note)
    replace_path(stage, dst)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.2%}"


def table_markdown(result: dict[str, Any]) -> str:
    """The round-by-round table as Markdown."""
    lines = [
        f"# kormed train loop: target accuracy {result['target']:.0%} on the selection split "
        f"({result['eval_mode']} mode)",
        "",
        f"Selected on: **{result['selected_on']}**. Reported on: **{result['reported_on']}** (test accuracy is "
        "never used to choose a round).",
        "",
        "| round | kind | steps | stop reason | eval_qa_loss | eval_dict_loss | raw ppl | dev accuracy | dev correct "
        "| test accuracy |",
        "|---:|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rounds"]:
        m = r.get("metrics") or {}
        lines.append(
            f"| {r['round']} | {r['kind']} | {_fmt(r.get('global_step'))} | {r.get('stop_reason') or '–'} | "
            f"{_fmt(m.get('eval_qa_loss'))} | {_fmt(m.get('eval_dict_loss'))} | "
            f"{_fmt(m.get('eval_raw_perplexity'))} | {_pct(r['dev_accuracy'])} | {r['dev_correct']}/{r['dev_total']} "
            f"| {_pct(r['test_accuracy'])} |"
        )
    lines += [
        "",
        f"Stop: **{result['stop_reason']}**. Best: round {result['best_round']} "
        f"(dev {_pct(result['best_dev_accuracy'])}, test {_pct(result['best_test_accuracy'])}), "
        f"adapter in `{result['best_adapter']}`.",
        "",
    ]
    return "\n".join(lines)


def run_loop(cfg: LoopConfig, *, log: Log = print, score: Scorer | None = None) -> dict[str, Any]:
    """Run the rounds (the recipe of :mod:`kormed.train.sft`, rounds cycled); return the table (also written to
    loop_table.json / loop_table.md). `score` replaces the KorMedMCQA scorer (a seam for tests)."""
    out = check_output_path(require(cfg.output, "--output"), "dir", "--output",
                            inputs=[*recipe_inputs(cfg), ("--eval-data", cfg.eval_data), ("--dev-data", cfg.dev_data)])
    require(cfg.mcq, "--mcq")
    require(cfg.dict, "--dict")
    eval_path = require(cfg.eval_data, "--eval-data")
    test_questions = _limited(read_mcq_jsonl(eval_path)[0], cfg.eval_limit)

    src = read_recipe_sources(cfg, log=log)
    selection = selection_split(cfg, src, log=log)
    ctx = prepare_recipe(cfg, src, cfg.rounds, start_adapter=cfg.from_adapter, log=log)
    if ctx.data.raw_blocks:
        ctx.baseline = context_baseline(ctx, log=log)["perplexity"]
    score = score or kormedmcqa_scorer(cfg, ctx)

    table = LoopTable(
        target=cfg.target, eval_mode=cfg.eval_mode,
        selected_on=selection.label, reported_on=f"test ({eval_path}, {len(test_questions)} q)",
        selection={"split": selection.name, "source": selection.source, "questions": len(selection.questions)},
        test={"path": str(eval_path), "questions": len(test_questions), "every_round": cfg.test_every_round},
        baseline_raw_perplexity=ctx.baseline, rounds=[], best_adapter=str(out / "best"),
    )
    split_note = {"selected_on": table.selected_on, "reported_on": table.reported_on}

    def write_table(final: bool) -> None:
        data = table.to_json()
        write_json(out / TABLE_JSON, data)
        with atomic_write(out / TABLE_MD) as fh:
            fh.write(table_markdown(data if final else {**data, "stop_reason": data["stop_reason"] or "running"}))

    def measure(round_no: int, kind: str, round_dir: Path, info: TrainingInfo | None) -> float:
        """Dev accuracy (selection, target); test accuracy when the round becomes the best (or every round)."""
        dev = score(selection.questions, "dev")
        write_json(round_dir / "kormedmcqa_dev.json", {**dev, "split": selection.label})
        is_best = table.best_dev_accuracy is None or dev["accuracy"] > table.best_dev_accuracy
        test = score(test_questions, "test") if is_best or cfg.test_every_round else None
        if test is not None:
            write_json(round_dir / "kormedmcqa_test.json", {**test, "split": table.reported_on,
                                                            "used_for_selection": False})
        table.rounds.append(LoopTableRow(
            round=round_no, kind=kind, adapter=str(round_dir),
            dev_accuracy=dev["accuracy"], dev_correct=dev["correct"], dev_total=dev["total"],
            dev_unparseable=dev.get("unparseable"),
            test_accuracy=test["accuracy"] if test else None, test_correct=test["correct"] if test else None,
            test_total=test["total"] if test else None,
            global_step=info.summary.global_step if info else None,
            stop_reason=info.summary.stop_reason if info else None,
            metrics=info.sft.metrics_at_stop if info else None,
        ))
        log(f"[kormed] round {round_no} ({kind}): dev accuracy {dev['accuracy']:.2%} ({dev['correct']}/"
            f"{dev['total']})" + (f"; test {test['accuracy']:.2%} (reported, not used to choose)" if test else ""))
        if is_best:
            table.best_round, table.best_dev_accuracy = round_no, dev["accuracy"]
            table.best_test_accuracy = test["accuracy"] if test else None
            _copy_adapter(round_dir, out / "best", {"round": round_no, "kind": kind, "dev_accuracy": dev["accuracy"],
                                                    "test_accuracy": table.best_test_accuracy,
                                                    "source": str(round_dir), **split_note})
        write_table(final=False)
        return float(dev["accuracy"])

    out.mkdir(parents=True, exist_ok=True)
    if cfg.eval_before:
        start_dir = out / "round00_start"
        start = TrainingInfo.from_json({**ctx.info, "stage": "loop", "round": 0, "version": TRAINING_INFO_VERSION})
        save_trained(ctx.model, ctx.tokenizer, start_dir, start.to_json())
        if measure(0, "start", start_dir, None) >= cfg.target:
            table.stop_reason = StopReason.TARGET_REACHED
    if table.stop_reason is None:
        for i in range(1, cfg.max_rounds + 1):
            step = cfg.rounds[(i - 1) % len(cfg.rounds)]
            round_dir = out / f"round{i:02d}_{step.name}"
            info = run_sft_step(ctx, step, name=f"round{i:02d}", out_dir=round_dir, max_steps=cfg.max_steps_per_round,
                                extra_info={"stage_detail": "loop", "round": i, "round_kind": step.name,
                                            **split_note})
            ctx.info["started_from"] = str(round_dir)
            accuracy = measure(i, step.name, round_dir, info)
            if info.summary.stop_reason not in STEP_FINISHED:
                table.stop_reason = info.summary.stop_reason
                break
            if accuracy >= cfg.target:
                table.stop_reason = StopReason.TARGET_REACHED
                break
        table.stop_reason = table.stop_reason or StopReason.MAX_ROUNDS
    if table.best_round is None:  # pragma: no cover - every path scores at least once
        raise KormedError("no round was scored")
    write_table(final=True)
    log(f"[kormed] loop: {table.stop_reason}; best round {table.best_round} on {selection.name} "
        f"({table.best_dev_accuracy:.2%}; test {_pct(table.best_test_accuracy)}) in {out / 'best'}")
    return table.to_json()


# How `kormed train loop` prints its result (the command is a row of kormed.cli.COMMANDS).
def show(result: dict[str, Any], cfg: Any) -> None:
    """One line per round, then the best round; exit 130 when the loop stopped before its target or last round."""
    for row in result["rounds"]:
        test = "" if row["test_accuracy"] is None else f", test {row['test_accuracy']:.2%}"
        typer.echo(f"round {row['round']} ({row['kind']}): dev accuracy {row['dev_accuracy']:.2%} "
                   f"({row['dev_correct']}/{row['dev_total']}){test}")
    best_test = result["best_test_accuracy"]
    typer.echo(f"loop done ({result['stop_reason']}): best round {result['best_round']} selected on "
               f"{result['selected_on']}: {result['best_dev_accuracy']:.2%}; reported on {result['reported_on']}: "
               f"{'-' if best_test is None else f'{best_test:.2%}'}; adapter in {result['best_adapter']}")
    if result["stop_reason"] not in (StopReason.TARGET_REACHED, StopReason.MAX_ROUNDS):
        sys.exit(130)
