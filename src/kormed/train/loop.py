"""`kormed train loop`: the SFT recipe (:mod:`kormed.train.sft`) with its steps cycled as rounds (default: the
seeds' dictionary SFT train_01, then MCQ-with-reasoning SFT train_02) until the dev target is reached, the dev
metric stops improving, or the rounds run out.

Each round is one SFT step (:func:`kormed.train.sft.run_sft_step`: its own mix, stop conditions and max_steps),
continuing the same adapter. After each round:

* **Selection on dev**: two dev measurements, both on data no round trains on as a question:
  - *dictionary knowledge* (:mod:`kormed.eval.knowledge`): the DEV forms of the trained entries (the entries of
    the loop's own `dict` / `char_dict`), a seeded sample of `knowledge_per_group` questions per form;
  - *exam accuracy*: KorMedMCQA's dev split when given (`dev_data`, default `dev.jsonl` beside `eval_data`, the
    seeds' layout), else `dev_holdout` training questions held out of every round's training (seeded).
  `select_on` says which one chooses the best round and decides the target stop (knowledge: ties to the higher
  exam accuracy, then the earlier round; exam: ties to the higher knowledge, then the earlier round; both: their
  mean, ties to the earlier round); `stop_after_no_improvement` rounds without a strictly better dev metric end
  the loop.
* **Report on test**: the test questions (`eval_data`), the TEST forms of the trained entries and of the entries
  `kormed prepare` held out of every stage (`dict_heldout`, the control) are scored for each round that becomes
  the best on dev -- only after that round's selection is decided -- or for every round with `test_every_round`;
  they are recorded as "reported, not used for selection" and never read by the selection.

The round's adapter is kept in `round{NN}_{name}/`, the best one is copied to `best/`. Round 0 (with
`eval_before`) is the starting adapter, saved in `round00_start/`, so `best/` is never worse than the start on
dev. `loop_table.json` / `loop_table.md` (rewritten after every round) carry the per-round knowledge curve and name
what is selected on and what is reported.

:func:`run_loop` has the SFT recipe's phases: **setup** (sources, the selection split, the knowledge questions'
dictionaries, the model from `from_adapter`), **train** (each round: an SFT step, then selection on dev and report
on test) and **save** (the round's adapter, `best/`, and the loop table after every round, so an interrupted loop
leaves a consistent table).
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
from kormed.eval.knowledge import (
    SCORING_DESCRIPTIONS,
    build_questions,
    evaluate_knowledge,
    knowledge_dictionaries,
    scoring_settings,
)
from kormed.eval.kormedmcqa import evaluate_kormedmcqa
from kormed.io import (
    atomic_write,
    check_output_path,
    file_sha256,
    make_temp_dir,
    optional_file,
    replace_path,
    write_json,
)
from kormed.models import SAVED_ADAPTER_ENTRIES
from kormed.records import MCQ, DictEntry, read_mcq_jsonl
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
# (dictionaries, split "dev" | "test", held-out terms per dictionary) -> an evaluate_knowledge-style result (its
# `summary` has `all/trained` and, with held-out entries, `all/held_out`: accuracy, correct, total)
KnowledgeScorer = Callable[[dict[str, list[DictEntry]], str, dict[str, set[str]]], dict[str, Any]]
NOT_USED = "reported, not used for selection"


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


@dataclass
class KnowledgeSets:
    """The dictionary-knowledge questions' entries: `dev` = the loop's own dictionaries (the trained entries, dev
    forms: selection); `test` = the same plus prepare's held-out entries (`held_out`, the control; test forms:
    reported); `settings` = how they are built, recorded in the loop table."""

    dev: dict[str, list[DictEntry]]
    test: dict[str, list[DictEntry]]
    held_out: dict[str, set[str]]
    settings: dict[str, Any]


def knowledge_sets(cfg: LoopConfig) -> KnowledgeSets:
    """Read the loop's dictionaries and `dict_heldout` as `kormed eval knowledge` does (same pools, so the same
    seed and per_group give the same questions); refuse a held-out record whose entries the loop would train on."""
    dev, _ = knowledge_dictionaries(cfg.dict, cfg.char_dict)
    if not any(build_questions(entries, kind, "dev")[0] for kind, entries in dev.items() if entries):
        raise KormedError("no dictionary knowledge question can be built (each form needs 5 entries with distinct "
                          "options)", path=cfg.dict, field="loop.dict")
    test, held = knowledge_dictionaries(cfg.dict, cfg.char_dict, cfg.dict_heldout)
    for kind, flag, path in (("medical", "--dict", cfg.dict), ("symbol", "--char-dict", cfg.char_dict)):
        trained = held.get(kind, set()) & {e.term for e in dev[kind]}
        if trained:
            raise KormedError(f"{len(trained)} held-out entries (e.g. {sorted(trained)[0]!r}) are in {flag}: the "
                              "loop would train on its control", path=path, field="loop.dict_heldout",
                              hint="pass the trained subset `kormed prepare` wrote beside the held-out record")
    files = {name: {"path": str(path), "sha256": file_sha256(path)}
             for name, path in (("dict", cfg.dict), ("char_dict", cfg.char_dict)) if path}
    common = {"seed": cfg.knowledge_seed, "per_group": cfg.knowledge_per_group, "scoring": cfg.knowledge_scoring,
              "permutations": scoring_settings(cfg.knowledge_scoring)[1],
              "dictionaries": files}
    heldout = {"path": str(cfg.dict_heldout), "sha256": file_sha256(cfg.dict_heldout)} if cfg.dict_heldout else None
    settings = {
        "dev": {"split": "dev", "entries": ["trained"], **common, "used_for_selection": True},
        "test": {"split": "test", "entries": ["trained", "held_out"] if heldout else ["trained"], **common,
                 "heldout": heldout, "used_for_selection": False, "note": NOT_USED},
    }
    return KnowledgeSets(dev=dev, test=test, held_out=held, settings=settings)


def knowledge_scorer(cfg: LoopConfig, ctx: StepContext) -> KnowledgeScorer:
    """Dictionary knowledge of the model being trained (scored in place, `knowledge_scoring`)."""

    def score(dictionaries: dict[str, list[DictEntry]], split: str, held_out: dict[str, set[str]]) -> dict[str, Any]:
        return evaluate_knowledge(ctx.model, ctx.tokenizer, dictionaries, split=split, seed=cfg.knowledge_seed,
                                  held_out=held_out, batch_size=cfg.eval_batch_size,
                                  per_group=cfg.knowledge_per_group, progress=False, scoring=cfg.knowledge_scoring,
                                  compute_dtype=ctx.runtime.compute_dtype)

    return score


def selection_key(select_on: str, exam: float, knowledge: float) -> tuple[float, ...]:
    """What rounds are compared on, all dev (higher is better, compared as tuples: a tie falls to the next entry,
    a full tie keeps the earlier round)."""
    if select_on == "knowledge":
        return (knowledge, exam)
    if select_on == "exam":
        return (exam, knowledge)
    return ((knowledge + exam) / 2,)


def dev_target_reached(cfg: LoopConfig, exam: float, knowledge: float) -> bool:
    """The target of `select_on`, judged on dev: knowledge_target, target (exam), or both."""
    if cfg.select_on == "knowledge":
        return knowledge >= cfg.knowledge_target
    if cfg.select_on == "exam":
        return exam >= cfg.target
    return knowledge >= cfg.knowledge_target and exam >= cfg.target


def _group(result: dict[str, Any] | None, group: str) -> dict[str, Any]:
    """accuracy/correct/total of one entry group over all forms (empty when not scored)."""
    return ((result or {}).get("summary") or {}).get(f"all/{group}") or {}


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


def _known(acc: float | None, correct: int | None, total: int | None) -> str:
    return "–" if acc is None else f"{acc:.2%} ({correct}/{total})"


def _targets(result: dict[str, Any]) -> str:
    exam = f"dev exam accuracy {result['target']:.0%} ({result['eval_mode']} mode)"
    knowledge = f"dev knowledge {result['knowledge_target']:.0%} (trained entries, dev forms)"
    return {"knowledge": knowledge, "exam": exam}.get(result["select_on"], f"{knowledge} and {exam}")


def table_markdown(result: dict[str, Any]) -> str:
    """The round-by-round table as Markdown: the knowledge curve (dev each round; test forms and held-out entries
    where reported) beside the exam accuracy."""
    test_k = (result.get("knowledge") or {}).get("test") or {}
    scoring = test_k.get("scoring") or "letter"  # tables written before cloze scoring: letter
    heldout = (test_k.get("heldout") or {}).get("path")
    lines = [
        f"# kormed train loop: target {_targets(result)}",
        "",
        f"Selection metric (dev): **{result['select_on']}** (`select_on`). Selected on: **{result['selected_on']}** "
        "(exam) and the dev forms of the trained dictionary entries (knowledge). Reported, not used for selection: "
        f"**{result['reported_on']}**, and the test forms of the trained entries"
        + (f" and of the held-out entries ({heldout})" if heldout else "") + ".",
        "",
        f"Knowledge questions: seed {test_k.get('seed')}, at most {test_k.get('per_group') or 'all'} per form and "
        f"entry group, scored as {scoring} ({SCORING_DESCRIPTIONS[scoring]}).",
        "",
        "| round | kind | steps | stop reason | eval_qa_loss | eval_dict_loss | raw ppl | dev knowledge "
        "| dev accuracy | dev correct | test knowledge | held-out knowledge | test accuracy |",
        "|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rounds"]:
        m = r.get("metrics") or {}
        lines.append(
            f"| {r['round']} | {r['kind']} | {_fmt(r.get('global_step'))} | {r.get('stop_reason') or '–'} | "
            f"{_fmt(m.get('eval_qa_loss'))} | {_fmt(m.get('eval_dict_loss'))} | "
            f"{_fmt(m.get('eval_raw_perplexity'))} | "
            f"{_known(r['dev_knowledge_accuracy'], r['dev_knowledge_correct'], r['dev_knowledge_total'])} | "
            f"{_pct(r['dev_accuracy'])} | {r['dev_correct']}/{r['dev_total']} | "
            f"{_known(r['test_knowledge_accuracy'], r['test_knowledge_correct'], r['test_knowledge_total'])} | "
            f"{_known(r['heldout_knowledge_accuracy'], r['heldout_knowledge_correct'], r['heldout_knowledge_total'])}"
            f" | {_pct(r['test_accuracy'])} |"
        )
    lines += [
        "",
        f"Stop: **{result['stop_reason']}**. Best on dev: round {result['best_round']} "
        f"(dev knowledge {_pct(result['best_dev_knowledge'])}, dev accuracy {_pct(result['best_dev_accuracy'])}; "
        f"reported: test knowledge {_pct(result['best_test_knowledge'])}, held-out knowledge "
        f"{_pct(result['best_heldout_knowledge'])}, test accuracy {_pct(result['best_test_accuracy'])}), "
        f"adapter in `{result['best_adapter']}`.",
        "",
    ]
    return "\n".join(lines)


def run_loop(cfg: LoopConfig, *, log: Log = print, score: Scorer | None = None,
             score_knowledge: KnowledgeScorer | None = None) -> dict[str, Any]:
    """Run the rounds (the recipe of :mod:`kormed.train.sft`, rounds cycled); return the table (also written to
    loop_table.json / loop_table.md). `score` and `score_knowledge` replace the KorMedMCQA and the dictionary
    knowledge scorers (seams for tests)."""
    out = check_output_path(require(cfg.output, "--output"), "dir", "--output",
                            inputs=[*recipe_inputs(cfg), ("--eval-data", cfg.eval_data), ("--dev-data", cfg.dev_data),
                                    ("--dict-heldout", cfg.dict_heldout)])
    require(cfg.mcq, "--mcq")
    require(cfg.dict, "--dict")
    eval_path = require(cfg.eval_data, "--eval-data")
    test_questions = _limited(read_mcq_jsonl(eval_path)[0], cfg.eval_limit)
    knowledge = knowledge_sets(cfg)  # bad dictionaries or held-out record are refused before any model loads

    src = read_recipe_sources(cfg, log=log)
    selection = selection_split(cfg, src, log=log)
    log(f"[kormed] loop: rounds are selected on dev {cfg.select_on} (dictionary knowledge: the trained entries' "
        f"dev forms, <= {cfg.knowledge_per_group or 'all'} questions per form); test forms and held-out entries "
        "are only reported")
    ctx = prepare_recipe(cfg, src, cfg.rounds, start_adapter=cfg.from_adapter, log=log)
    if ctx.data.raw_blocks:
        ctx.baseline = context_baseline(ctx, log=log)["perplexity"]
    score = score or kormedmcqa_scorer(cfg, ctx)
    score_knowledge = score_knowledge or knowledge_scorer(cfg, ctx)

    table = LoopTable(
        target=cfg.target, select_on=cfg.select_on, knowledge_target=cfg.knowledge_target,
        stop_after_no_improvement=cfg.stop_after_no_improvement, knowledge=knowledge.settings,
        eval_mode=cfg.eval_mode,
        selected_on=selection.label, reported_on=f"test ({eval_path}, {len(test_questions)} q)",
        selection={"split": selection.name, "source": selection.source, "questions": len(selection.questions)},
        test={"path": str(eval_path), "questions": len(test_questions), "every_round": cfg.test_every_round},
        baseline_raw_perplexity=ctx.baseline, rounds=[], best_adapter=str(out / "best"),
    )
    split_note = {"selected_on": table.selected_on, "reported_on": table.reported_on, "select_on": cfg.select_on}
    best_key: list[tuple[float, ...]] = []  # the best round's selection key (dev only)
    since_best = 0  # rounds in a row that did not improve it

    def write_table(final: bool) -> None:
        data = table.to_json()
        write_json(out / TABLE_JSON, data)
        with atomic_write(out / TABLE_MD) as fh:
            fh.write(table_markdown(data if final else {**data, "stop_reason": data["stop_reason"] or "running"}))

    def measure(round_no: int, kind: str, round_dir: Path, info: TrainingInfo | None) -> bool:
        """Score dev (selection), decide whether the round is the best; only then score the reported sets (test
        questions, test forms, held-out entries) when it is the best (or every round). True: the dev target."""
        nonlocal since_best
        dev = score(selection.questions, "dev")
        write_json(round_dir / "kormedmcqa_dev.json", {**dev, "split": selection.label})
        dev_known = score_knowledge(knowledge.dev, "dev", {})
        write_json(round_dir / "knowledge_dev.json", {**dev_known, **knowledge.settings["dev"]})
        dev_k = _group(dev_known, "trained")
        key = selection_key(cfg.select_on, float(dev["accuracy"]), float(dev_k["accuracy"]))
        is_best = not best_key or key > best_key[0]
        if is_best:
            best_key[:] = [key]
            since_best = 0
        elif round_no > 0:
            since_best += 1
        # the selection of this round is decided: what follows is reported, never read by it
        reported = is_best or cfg.test_every_round
        test = score(test_questions, "test") if reported else None
        if test is not None:
            write_json(round_dir / "kormedmcqa_test.json", {**test, "split": table.reported_on,
                                                            "used_for_selection": False})
        test_known = score_knowledge(knowledge.test, "test", knowledge.held_out) if reported else None
        if test_known is not None:
            write_json(round_dir / "knowledge_test.json", {**test_known, **knowledge.settings["test"]})
        test_k, held_k = _group(test_known, "trained"), _group(test_known, "held_out")
        table.rounds.append(LoopTableRow(
            round=round_no, kind=kind, adapter=str(round_dir),
            dev_accuracy=dev["accuracy"], dev_correct=dev["correct"], dev_total=dev["total"],
            dev_unparseable=dev.get("unparseable"),
            test_accuracy=test["accuracy"] if test else None, test_correct=test["correct"] if test else None,
            test_total=test["total"] if test else None,
            dev_knowledge_accuracy=dev_k["accuracy"], dev_knowledge_correct=dev_k["correct"],
            dev_knowledge_total=dev_k["total"],
            test_knowledge_accuracy=test_k.get("accuracy"), test_knowledge_correct=test_k.get("correct"),
            test_knowledge_total=test_k.get("total"),
            heldout_knowledge_accuracy=held_k.get("accuracy"), heldout_knowledge_correct=held_k.get("correct"),
            heldout_knowledge_total=held_k.get("total"),
            global_step=info.summary.global_step if info else None,
            stop_reason=info.summary.stop_reason if info else None,
            metrics=info.sft.metrics_at_stop if info else None,
        ))
        log(f"[kormed] round {round_no} ({kind}): dev knowledge {dev_k['accuracy']:.2%} ({dev_k['correct']}/"
            f"{dev_k['total']}), dev accuracy {dev['accuracy']:.2%} ({dev['correct']}/{dev['total']})"
            + (" (best so far)" if is_best else "")
            + (f"; {NOT_USED}: test knowledge {_pct(test_k.get('accuracy'))}, held-out knowledge "
               f"{_pct(held_k.get('accuracy'))}, test accuracy {test['accuracy']:.2%}" if test else ""))
        if is_best:
            table.best_round, table.best_dev_accuracy = round_no, dev["accuracy"]
            table.best_dev_knowledge = dev_k["accuracy"]
            table.best_test_accuracy = test["accuracy"] if test else None
            table.best_test_knowledge, table.best_heldout_knowledge = test_k.get("accuracy"), held_k.get("accuracy")
            _copy_adapter(round_dir, out / "best", {
                "round": round_no, "kind": kind, "dev_accuracy": dev["accuracy"], "dev_knowledge": dev_k["accuracy"],
                "test_accuracy": table.best_test_accuracy, "test_knowledge": table.best_test_knowledge,
                "heldout_knowledge": table.best_heldout_knowledge, "source": str(round_dir), **split_note})
        write_table(final=False)
        return dev_target_reached(cfg, float(dev["accuracy"]), float(dev_k["accuracy"]))

    out.mkdir(parents=True, exist_ok=True)
    if cfg.eval_before:
        start_dir = out / "round00_start"
        start = TrainingInfo.from_json({**ctx.info, "stage": "loop", "round": 0, "version": TRAINING_INFO_VERSION})
        save_trained(ctx.model, ctx.tokenizer, start_dir, start.to_json())
        if measure(0, "start", start_dir, None):
            table.stop_reason = StopReason.TARGET_REACHED
    if table.stop_reason is None:
        for i in range(1, cfg.max_rounds + 1):
            step = cfg.rounds[(i - 1) % len(cfg.rounds)]
            round_dir = out / f"round{i:02d}_{step.name}"
            info = run_sft_step(ctx, step, name=f"round{i:02d}", out_dir=round_dir, max_steps=cfg.max_steps_per_round,
                                extra_info={"stage_detail": "loop", "round": i, "round_kind": step.name,
                                            **split_note})
            ctx.info["started_from"] = str(round_dir)
            reached = measure(i, step.name, round_dir, info)
            if info.summary.stop_reason not in STEP_FINISHED:
                table.stop_reason = info.summary.stop_reason
                break
            if reached:
                table.stop_reason = StopReason.TARGET_REACHED
                break
            if cfg.stop_after_no_improvement is not None and since_best >= cfg.stop_after_no_improvement:
                log(f"[kormed] loop: {since_best} round(s) without a better dev {cfg.select_on}: stopping "
                    f"(stop_after_no_improvement {cfg.stop_after_no_improvement})")
                table.stop_reason = StopReason.NO_IMPROVEMENT
                break
        table.stop_reason = table.stop_reason or StopReason.MAX_ROUNDS
    if table.best_round is None:  # pragma: no cover - every path scores at least once
        raise KormedError("no round was scored")
    write_table(final=True)
    log(f"[kormed] loop: {table.stop_reason}; best round {table.best_round} on dev {cfg.select_on} (knowledge "
        f"{_pct(table.best_dev_knowledge)}, accuracy {table.best_dev_accuracy:.2%} on {selection.name}; "
        f"{NOT_USED}: test knowledge {_pct(table.best_test_knowledge)}, held-out "
        f"{_pct(table.best_heldout_knowledge)}, test accuracy {_pct(table.best_test_accuracy)}) in {out / 'best'}")
    return table.to_json()


# How `kormed train loop` prints its result (the command is a row of kormed.cli.COMMANDS).
def show(result: dict[str, Any], cfg: Any) -> None:
    """One line per round, then the best round; exit 130 when the loop stopped before its target or last round
    (an interrupted round; no improvement and max_rounds are normal ends)."""
    for row in result["rounds"]:
        test = "" if row["test_accuracy"] is None else f", test {row['test_accuracy']:.2%}"
        known = row.get("dev_knowledge_accuracy")
        typer.echo(f"round {row['round']} ({row['kind']}): dev knowledge {_pct(known)}, dev accuracy "
                   f"{row['dev_accuracy']:.2%} ({row['dev_correct']}/{row['dev_total']}){test}")
    best_test = result["best_test_accuracy"]
    typer.echo(f"loop done ({result['stop_reason']}): best round {result['best_round']} selected on dev "
               f"{result['select_on']} (knowledge {_pct(result['best_dev_knowledge'])}; accuracy on "
               f"{result['selected_on']}: {result['best_dev_accuracy']:.2%}); {NOT_USED}: test knowledge "
               f"{_pct(result['best_test_knowledge'])}, held-out knowledge {_pct(result['best_heldout_knowledge'])}, "
               f"{result['reported_on']}: {'-' if best_test is None else f'{best_test:.2%}'}; adapter in "
               f"{result['best_adapter']}")
    if result["stop_reason"] not in (StopReason.TARGET_REACHED, StopReason.MAX_ROUNDS, StopReason.NO_IMPROVEMENT):
        sys.exit(130)
