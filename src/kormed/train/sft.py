"""`kormed train sft` and `kormed train loop` as one recipe that reads top to bottom:

1. **Prepare the data** (:func:`read_recipe_sources`): KorMedMCQA questions, medical + symbol dictionaries, raw Korean
   text, each split into train / validation at the record level (:func:`kormed.data.mixture.split_records`).
2. **Prepare the model and encode** (:func:`prepare_recipe`): the starting adapter (`from_adapter`, the previous
   step's adapter on `--from-step N`, or a fresh LoRA), chat examples with answer-only loss
   (:mod:`kormed.data.chat`) and every validation set.
3. **Baseline**: the raw-Korean perplexity of the starting model on the held-out raw set
   (:func:`measure_baseline`; `<output>/baseline.json`), the reference of `F * baseline` conditions.
4. **For each step** (:func:`run_sft_step`, the loop's rounds use the same function): mix its sources
   (`mix_by` examples or learned tokens; the shares are recorded as `mix_report`), train with the shared engine
   (:mod:`kormed.train.engine.trainer`), evaluate every `train.eval_steps` steps each validation set separately
   (`eval_qa_loss`, `eval_dict_loss`, ..., `eval_raw_perplexity`), **check the step's stop conditions** after
   each evaluation, stop when they hold or at max_steps, and **save** the adapter and `training_info.json`
   (`stop_reason`, the metrics at that point, every condition check) in `<output>/step{N}/`. The reference of
   'maintained' is the metrics at the start of the step: the previous step's final evaluation when it ran in
   this process (the model is unchanged since), else an evaluation at step 0. The next step continues from it.

:func:`run_sft` is that recipe for the configured steps, in three phases named in its body: **setup** (1-3: the
starting adapter, with `--from-step N` the adapter of step N-1; sources; model; baseline), **train** (4: each
step trained and saved in turn, stopping at the first that does not finish) and **save** (`sft_summary.json`,
earlier rows kept on `--from-step`; the result printed by :func:`show`). :func:`kormed.train.loop.run_loop` is the
same recipe with rounds cycled and a KorMedMCQA score after each.
"""

from __future__ import annotations

import dataclasses
import gc
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import typer
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import TrainerCallback

from kormed.data.chat import (
    ChatTemplates,
    EncodeStats,
    ExampleTooLong,
    encode_chat_example,
    encode_raw_texts,
    render_dict_forms,
    render_mcq,
)
from kormed.data.mixture import mix_with_report, normalise_weights, split_records
from kormed.data.padding_free import CountingCollator, PaddingFreeCollator, uses_flash_attention
from kormed.errors import KormedError
from kormed.eval.config import DEFAULT_KNOWLEDGE_SCORING
from kormed.eval.knowledge import knowledge_dictionaries
from kormed.eval.perplexity import evaluate_perplexity, packed_eval_blocks
from kormed.io import Log, check_output_path, read_json, read_texts, write_json
from kormed.models import pick_runtime
from kormed.records import MCQ, DictEntry, read_dictionary, read_mcq_jsonl
from kormed.run_files import SFT_SUMMARY, SFTStepRecord, SFTStepRow, SFTSummary, TrainingInfo, step_dir_name
from kormed.stop_reason import StopReason
from kormed.train.engine.callbacks import TrainerAware
from kormed.train.engine.model_setup import prepare_full_model, prepare_model_for_training
from kormed.train.engine.outputs import finish_run, summarize
from kormed.train.engine.trainer import CausalCollator, build_trainer, run_training
from kormed.train.sft_config import RecipeOptions, SFTConfig, SFTStepConfig
from kormed.train.stop_conditions import DEV_KNOWLEDGE, StopTracker, Tolerances

BASELINE_FILE = "baseline.json"
SUMMARY_FILE = SFT_SUMMARY
# A step (or round) that ended on its own: the recipe goes on to the next one.
STEP_FINISHED = (StopReason.CONDITIONS_MET, StopReason.MAX_STEPS)


# --------------------------------------------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Sources:
    """Records of every source, already split into train / validation."""

    mcq_train: list[MCQ] = field(default_factory=list)
    mcq_val: list[MCQ] = field(default_factory=list)
    dict_train: list[tuple[DictEntry, bool]] = field(default_factory=list)  # (entry, is_symbol)
    dict_val: list[tuple[DictEntry, bool]] = field(default_factory=list)
    raw_train: list[str] = field(default_factory=list)
    raw_val: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


def load_sources(
    *, mcq: str | None, dictionary: str | None, char_dict: str | None, raw: str | None, raw_val: str | None,
    val_fraction: float, val_max: int, raw_max_texts: int, raw_val_max_texts: int, seed: int, log: Log = print,
) -> Sources:
    """Read and split every given source (a missing optional source stays empty)."""
    src = Sources()
    if mcq is not None:
        questions, _ = read_mcq_jsonl(mcq)
        src.mcq_train, src.mcq_val = split_records(questions, fraction=val_fraction, max_size=val_max, seed=seed)
        src.info["mcq"] = {"path": str(mcq), "records": len(questions), "with_cot": sum(bool(q.cot.strip())
                                                                                         for q in questions)}
    entries: list[tuple[DictEntry, bool]] = []
    for path, symbol in ((dictionary, False), (char_dict, True)):
        if path is None:
            continue
        items, _ = read_dictionary(path)
        tr, va = split_records([(e, symbol) for e in items], fraction=val_fraction, max_size=val_max, seed=seed)
        src.dict_train += tr
        src.dict_val += va
        entries += tr + va
        src.info["char_dict" if symbol else "dict"] = {"path": str(path), "records": len(items)}
    if raw is not None:
        texts = read_texts(raw, limit=raw_max_texts + (0 if raw_val else raw_val_max_texts), what="raw text file")
        if raw_val is not None:
            src.raw_train = texts
            src.raw_val = read_texts(raw_val, limit=raw_val_max_texts, what="raw validation file")
        else:
            src.raw_train, src.raw_val = split_records(texts, fraction=max(val_fraction, 1e-9),
                                                       max_size=raw_val_max_texts, seed=seed)
        src.raw_train = src.raw_train[:raw_max_texts]
        src.info["raw"] = {"path": str(raw), "train_texts": len(src.raw_train),
                           "val_path": str(raw_val) if raw_val else "held out from raw",
                           "val_texts": len(src.raw_val)}
    log(f"[kormed] data: {len(src.mcq_train)}+{len(src.mcq_val)} questions, {len(src.dict_train)}+"
        f"{len(src.dict_val)} dictionary entries, {len(src.raw_train)}+{len(src.raw_val)} raw texts (train+val)")
    return src


# --------------------------------------------------------------------------------------------------------------
# encoding
# --------------------------------------------------------------------------------------------------------------


@dataclass
class EncodedData:
    """Tokenized training sources and validation sets (HF Datasets with input_ids/labels)."""

    train: dict[str, Any]
    eval: dict[str, Any]
    raw_blocks: list[list[int]]
    stats: dict[str, Any]


def _to_dataset(rows: list[dict[str, list[int]]]) -> Any:
    return Dataset.from_dict({"input_ids": [r["input_ids"] for r in rows], "labels": [r["labels"] for r in rows]})


def _encode_pairs(tokenizer: Any, pairs: Sequence[tuple[str, str]], max_length: int, desc: str,
                  stats: EncodeStats) -> list[dict[str, list[int]]]:
    rows = []
    for user, answer in tqdm(pairs, desc=f"encode {desc}", unit="ex", leave=False, disable=len(pairs) < 2000):
        try:
            rows.append(encode_chat_example(tokenizer, user, answer, max_length, stats=stats))
        except ExampleTooLong:
            continue  # counted in stats (reported in training_info.json)
    return rows


def encode_sources(
    tokenizer: Any, src: Sources, *, max_length: int, templates: ChatTemplates, needed: set[str], eod_token: str,
    log: Log = print,
) -> EncodedData:
    """Encode the training sources in `needed` (qa, qa_cot, dict, raw) and every available validation set."""
    stats: dict[str, EncodeStats] = {}
    train: dict[str, Any] = {}
    evals: dict[str, Any] = {}

    def pairs(kind: str, mcqs: Sequence[MCQ] = (), entries: Sequence[tuple[DictEntry, bool]] = ()) -> list:
        if kind in ("qa", "qa_cot"):
            return [render_mcq(q, templates, reasoning=kind == "qa_cot") for q in mcqs]
        return [pair for e, sym in entries for pair in render_dict_forms(e, templates, symbol=sym)]

    for kind in ("qa", "qa_cot", "dict"):
        has_train = bool(src.dict_train if kind == "dict" else src.mcq_train)
        if kind in needed:
            if not has_train:
                flag = "--dict" if kind == "dict" else "--mcq"
                raise KormedError(f"a step mixes source '{kind}' but no data was given for it", hint=f"pass {flag}")
            st = stats.setdefault(f"train_{kind}", EncodeStats())
            rows = _encode_pairs(tokenizer, pairs(kind, src.mcq_train, src.dict_train), max_length, kind, st)
            if not rows:
                raise KormedError(f"every '{kind}' example is longer than max_length {max_length}",
                                  field="max_length")
            train[kind] = _to_dataset(rows)
    if "raw" in needed:
        if not src.raw_train:
            raise KormedError("a step mixes source 'raw' but no raw text was given", hint="pass --raw")
        st = stats.setdefault("train_raw", EncodeStats())
        rows = encode_raw_texts(tokenizer, src.raw_train, max_length, stats=st)
        train["raw"] = _to_dataset(rows)
    # Validation sets: qa first (the engine also reports the first set as eval_loss).
    val_cot = any(q.cot.strip() for q in src.mcq_val)
    for kind, present in (("qa", bool(src.mcq_val)), ("qa_cot", val_cot), ("dict", bool(src.dict_val))):
        if not present:
            continue
        st = stats.setdefault(f"val_{kind}", EncodeStats())
        rows = _encode_pairs(tokenizer, pairs(kind, src.mcq_val, src.dict_val), max_length, kind, st)
        if rows:
            evals[kind] = _to_dataset(rows)
    raw_blocks: list[list[int]] = []
    if src.raw_val:
        raw_blocks = packed_eval_blocks(tokenizer, src.raw_val, max_length=max_length, eod_token=eod_token)
        evals["raw"] = Dataset.from_dict({"input_ids": raw_blocks})
    sizes = {f"train_{k}": len(v) for k, v in train.items()} | {f"val_{k}": len(v) for k, v in evals.items()}
    log("[kormed] encoded: " + ", ".join(f"{k} {v}" for k, v in sizes.items()))
    for name, st in stats.items():
        if st.truncated or st.skipped:
            log(f"[kormed] {name}: {st.truncated} examples had their prompt truncated from the left, "
                f"{st.skipped} skipped (answer longer than max_length {max_length})")
    return EncodedData(train, evals, raw_blocks, {"sizes": sizes, "encoding": {k: v.to_dict()
                                                                                for k, v in stats.items()}})


# --------------------------------------------------------------------------------------------------------------
# batches: padding-free or padded, and their token counts
# --------------------------------------------------------------------------------------------------------------


def make_collators(tokenizer: Any, model: Any, *, padding_free: bool) -> tuple[Any, Any]:
    """(training collator, validation collator). Training: padding-free rows (:mod:`kormed.data.padding_free`)
    or padded rows (`CausalCollator`), counted either way; validation is always padded (the per-example
    losses are the same, and padded rows keep `gather_for_metrics`' per-example trimming exact under DDP)."""
    padded = CausalCollator(tokenizer)
    inner = PaddingFreeCollator(flash_attn_kwargs=uses_flash_attention(model)) if padding_free else padded
    return CountingCollator(inner), padded


class BatchStatsCallback(TrainerCallback):
    """Counts each trained micro-batch (`CountingCollator.consume`), adds `real_tokens_per_batch` and
    `padding_fraction` (over the logging interval) to each training log line, and times the optimizer steps
    (forward, backward, optimizer; validation and collation excluded)."""

    def __init__(self, collator: Any) -> None:
        self.collator = collator
        self.stats = collator.stats
        self.train_seconds = 0.0
        self._t: float | None = None
        self._mark = (0, 0, 0)  # batches, real tokens, batch tokens at the last log line

    def on_step_begin(self, args, state, control, **kwargs):
        self._t = time.perf_counter()
        return control

    def on_substep_end(self, args, state, control, **kwargs):
        self.collator.consume(1)  # a micro-batch of gradient accumulation before the last
        return control

    def on_step_end(self, args, state, control, **kwargs):
        self.collator.consume(1)  # the last micro-batch of the optimizer step
        if self._t is not None:
            self.train_seconds += time.perf_counter() - self._t
            self._t = None
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        st = self.stats
        batches, real, slots = (st.batches - self._mark[0], st.real_tokens - self._mark[1],
                                st.batch_tokens - self._mark[2])
        if logs is None or "loss" not in logs or not batches:
            return control
        self._mark = (st.batches, st.real_tokens, st.batch_tokens)
        extra = {"real_tokens_per_batch": round(real / batches, 2),
                 "padding_fraction": round(1.0 - real / slots, 6) if slots else 0.0}
        logs.update(extra)
        if state.log_history and state.log_history[-1].get("loss") == logs["loss"]:
            state.log_history[-1].update(extra)
        return control


def batch_report(collator: Any, stats_cb: BatchStatsCallback, trainer: Any) -> dict[str, Any]:
    """The `batches` record of training_info.json: padding-free or not, token counts, padding fraction, and real
    (non-padding) tokens per second of training compute (all processes' real tokens, from the Trainer's count)."""
    real_all = int(trainer.state.num_input_tokens_seen)
    seconds = stats_cb.train_seconds
    keys = ("step", "loss", "real_tokens_per_batch", "padding_fraction", "tokens_per_second")
    train_log = [{k: e[k] for k in keys if k in e} for e in trainer.state.log_history if "loss" in e]
    return {
        "padding_free": collator.padding_free,
        **collator.stats.to_dict(),
        "real_tokens_all_processes": real_all,
        "train_compute_s": round(seconds, 3),
        "real_tokens_per_s": round(real_all / seconds, 2) if seconds > 0 else None,
        "train_log": train_log,
    }


# --------------------------------------------------------------------------------------------------------------
# the stop-condition callback
# --------------------------------------------------------------------------------------------------------------


class StopConditionCallback(TrainerAware):
    """After each evaluation: the step-0 evaluation becomes the step's start reference; every later one is
    checked against the stop conditions (logged), and training stops when they hold."""

    def __init__(self, tracker: StopTracker, log: Log = print) -> None:
        self.tracker = tracker
        self.log = log
        self.start_metrics: dict[str, float] | None = None
        self.last_eval_step: int | None = None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        metrics = dict(metrics or {})
        self.last_eval_step = state.global_step
        if state.global_step == 0 and self.start_metrics is None:
            self.start_metrics = {k: v for k, v in metrics.items() if k.startswith("eval_")}
            self.tracker.reference = dict(self.start_metrics)
            shown = {k: round(v, 4) for k, v in self.start_metrics.items()
                     if k.endswith(("_loss", "_perplexity")) and k not in ("eval_loss", "eval_perplexity")}
            self.log(f"[kormed] start of step: {shown}")
            return control
        decision = self.tracker.update(metrics, state.global_step)
        self.log(f"[kormed] {decision.summary()}")
        if self.trainer is not None:  # also to TensorBoard / the log history, beside the metrics
            self.trainer.log({"stop_conditions_held": float(sum(r.holds for r in decision.results)),
                              "stop_conditions_total": float(len(decision.results)),
                              "stop_consecutive_evals": float(decision.consecutive)})
        if decision.should_stop:
            if self.trainer is not None:
                self.trainer.stop_record.set(StopReason.CONDITIONS_MET, state.global_step, "stop conditions met: "
                                             + "; ".join(c.text for c in self.tracker.conditions))
            control.should_training_stop = True
        return control


# --------------------------------------------------------------------------------------------------------------
# one step (or loop round): mix, train, check the conditions, save
# --------------------------------------------------------------------------------------------------------------


@dataclass
class StepContext:
    """What every step (and every loop round) shares."""

    model: Any
    tokenizer: Any
    runtime: Any
    data: EncodedData
    train_options: Any
    baseline: float | None
    tolerances: Tolerances
    seed: int
    stopping_strategy: str
    info: dict[str, Any]  # model/runtime info recorded in each training_info.json
    log: Log = print
    # Training micro-batches flattened into one row without padding (validation stays padded).
    padding_free: bool = True
    # The final evaluation of the previous step/round run in this process: the model has not changed since, so
    # it IS the next step's start (used as the 'maintained' reference instead of evaluating again).
    last_metrics: dict[str, float] | None = None
    # The trained dictionaries (medical, symbol) and the sample of their dev-form knowledge questions: what
    # `eval_dev_knowledge` scores when a stop condition names it (None: no dictionary given)
    knowledge: dict[str, list[DictEntry]] | None = None
    knowledge_seed: int = 0
    knowledge_per_group: int | None = None
    knowledge_scoring: str = DEFAULT_KNOWLEDGE_SCORING


def _knowledge_callbacks(ctx: StepContext, tracker: StopTracker) -> list[Any]:
    """The dictionary-knowledge callback when a condition reads `eval_dev_knowledge` (scored only then)."""
    from kormed.eval.callback import KnowledgeCallback

    if DEV_KNOWLEDGE not in tracker.metrics_needed or ctx.knowledge is None:
        return []
    return [KnowledgeCallback(ctx.knowledge, tokenizer=ctx.tokenizer, seed=ctx.knowledge_seed,
                              per_group=ctx.knowledge_per_group, scoring=ctx.knowledge_scoring,
                              batch_size=ctx.train_options.eval_batch_size or ctx.train_options.batch_size,
                              compute_dtype=ctx.runtime.compute_dtype)]


def known_metrics(eval_sets: Sequence[str]) -> set[str]:
    out = {"eval_loss", "eval_perplexity"}
    for name in eval_sets:
        out |= {f"eval_{name}_loss", f"eval_{name}_perplexity"}
    return out


def _check_measurable(ctx: StepContext, tracker: StopTracker, name: str) -> None:
    available = known_metrics(list(ctx.data.eval)) | ({DEV_KNOWLEDGE} if ctx.knowledge else set())
    unknown = [m for m in tracker.metrics_needed if m not in available]
    if unknown:
        raise KormedError(
            f"{name}: stop condition metric '{unknown[0]}' is not measured (measured: {', '.join(sorted(available))})",
            hint="a metric of a validation set exists only when its data was given (e.g. --raw for "
            f"eval_raw_perplexity, --dict or --char-dict for {DEV_KNOWLEDGE})",
        )
    if any(c.relative_to_baseline for c in tracker.conditions) and ctx.baseline is None:
        raise KormedError(f"{name}: a stop condition uses the baseline perplexity, which needs --raw")


def _log_mix(ctx: StepContext, name: str, report: dict[str, Any]) -> None:
    shares = ", ".join(f"{k} {v['example_share']:.1%} of examples / {v['learned_token_share']:.1%} of learned "
                       f"tokens" for k, v in report["sources"].items())
    by = f"by {report['mix_by']}" if report["mix_by"] else "concatenated"
    ctx.log(f"[kormed] {name}: mix {by}: {shares}")


def _step_record(ctx: StepContext, step: SFTStepConfig, name: str, options: Any, train_ds: Any,
                 mix: dict[str, Any]) -> SFTStepRecord:
    """What the step trains on, as training_info.json records it (its stop record is filled in after training)."""
    return SFTStepRecord(
        step=name, step_name=step.name, description=step.description, mix=normalise_weights(step.mix),
        mix_mode=step.mode, mix_by=step.mix_by, mix_report=mix, stopping_strategy=ctx.stopping_strategy,
        train_examples=len(train_ds), stop_conditions=list(step.stop), stable_evals=step.stable_evals,
        stable_metrics=list(step.stable_metrics), tolerances=dataclasses.asdict(ctx.tolerances),
        baseline_raw_perplexity=ctx.baseline, train_options=dataclasses.asdict(options))


def _stop_verdict(record: SFTStepRecord, summary: dict[str, Any], tracker: StopTracker, engine_reason: Any,
                  global_step: int, budget: int) -> dict[str, Any]:
    """Fill in the step's stop record; return the engine's summary with the stop conditions' verdict."""
    other = engine_reason if engine_reason not in (None, StopReason.CONDITIONS_MET) else None
    reason = tracker.final_reason(global_step, budget, other=other)
    last = tracker.history[-1] if tracker.history else None
    record.engine_stop_reason = engine_reason
    record.conditions_met = tracker.met
    record.metrics_at_stop = summary.get("last_eval")
    record.conditions_at_stop = [dataclasses.asdict(r) for r in last.results] if last else []
    record.stop_checks = [d.to_dict() for d in tracker.history]
    detail = (summary.get("stop_detail") or "") if reason != StopReason.MAX_STEPS else \
        f"max_steps {budget} reached before the stop conditions held"
    return {**summary, "stop_reason": reason, "stop_detail": detail}


def _start_reference(ctx: StepContext, tracker: StopTracker, callback: StopConditionCallback,
                     options: Any) -> tuple[Any, str | None]:
    """'maintained' needs the metrics at the start of the step: the previous step's final evaluation when it ran in
    this process (same model, same validation sets), else an evaluation at step 0. Returns the options and where
    the reference comes from (None: no condition needs one)."""
    if not any(c.op == "maintained" for c in tracker.conditions):
        return options, None
    if ctx.last_metrics is not None:
        callback.start_metrics = dict(ctx.last_metrics)
        tracker.reference = dict(ctx.last_metrics)
        return options, "final evaluation of the previous step"
    return dataclasses.replace(options, eval_on_start=True), "evaluation at step 0"


def _log_batches(ctx: StepContext, name: str, batches: dict[str, Any]) -> None:
    pad = batches["padding_fraction"]
    ctx.log(f"[kormed] {name}: {'padding-free' if batches['padding_free'] else 'padded'} batches, "
            f"{batches['real_tokens']} real tokens in {batches['micro_batches']} micro-batches"
            + (f", padding {pad:.1%}" if pad is not None else "")
            + (f", {batches['real_tokens_per_s']:.0f} real tokens/s" if batches["real_tokens_per_s"] else ""))


def run_sft_step(
    ctx: StepContext, step: SFTStepConfig, *, name: str, out_dir: str | Path, max_steps: int | None = None,
    extra_info: dict[str, Any] | None = None,
) -> TrainingInfo:
    """Train one step/round on `ctx.model` in place and save it to `out_dir`; return its training info."""
    out = Path(out_dir)
    budget = max_steps or step.max_steps
    tracker = StopTracker(step.stop, baseline=ctx.baseline, stable_evals=step.stable_evals,
                          stable_metrics=step.stable_metrics, tolerances=ctx.tolerances)
    _check_measurable(ctx, tracker, name)
    train_ds, mix = mix_with_report(ctx.data.train, step.mix, mode=step.mode, mix_by=step.mix_by, seed=ctx.seed,
                                    stopping_strategy=ctx.stopping_strategy)
    stale = out / "checkpoints"
    if stale.is_dir():
        ctx.log(f"[kormed] {name}: removing checkpoints of an earlier, unfinished run in {stale}")
        shutil.rmtree(stale)
    options = dataclasses.replace(
        ctx.train_options, max_steps=budget, lr=step.lr or ctx.train_options.lr,
        early_stopping_patience=None, target_perplexity=None, load_best_at_end=False,
        save_checkpoints=False, seed=ctx.seed, eval_on_start=False,
    )
    callback = StopConditionCallback(tracker, log=ctx.log)
    options, start_source = _start_reference(ctx, tracker, callback, options)
    ctx.log(f"[kormed] {name}: {step.name}: {step.description} mix {normalise_weights(step.mix)} ({step.mode}), "
            f"{len(train_ds)} examples, max {budget} steps; stop when: {' AND '.join(step.stop)}"
            + (f", stable for {step.stable_evals} evaluations" if step.stable_evals > 1 else ""))
    _log_mix(ctx, name, mix)
    record = _step_record(ctx, step, name, options, train_ds, mix)
    collator, eval_collator = make_collators(ctx.tokenizer, ctx.model, padding_free=ctx.padding_free)
    stats_cb = BatchStatsCallback(collator)
    trainer = build_trainer(ctx.model, ctx.tokenizer, train_ds, ctx.data.eval, collator, options, out,
                                   callbacks=[*_knowledge_callbacks(ctx, tracker), callback, stats_cb],
                                   runtime=ctx.runtime, eval_collator=eval_collator,
                                   embedding_lr=options.lr if options.method == "full" else None)
    summary = run_training(trainer, log=ctx.log)
    record.batches = batch_report(collator, stats_cb, trainer)
    engine_reason = trainer.stop_record.reason
    global_step = trainer.state.global_step
    if not tracker.met and engine_reason is None and callback.last_eval_step != global_step:
        trainer.evaluate()  # a last check at the final step, so the recorded metrics are those of the adapter
        summary = summarize(trainer, wall_time=summary["wall_time_s"])
    record.start_metrics, record.start_metrics_source = callback.start_metrics, start_source
    summary = _stop_verdict(record, summary, tracker, engine_reason, global_step, budget)
    full = finish_run(trainer, ctx.tokenizer, out, {**ctx.info, **(extra_info or {}), "stage": "sft",
                                                     "data": ctx.data.stats}, summary, sft=record)
    last_eval = summary.get("last_eval") or {}
    ctx.last_metrics = ({k: v for k, v in last_eval.items() if k.startswith("eval_")}
                        if last_eval.get("step") == global_step else None)
    if (out / "checkpoints").is_dir() and summary["stop_reason"] in STEP_FINISHED:
        shutil.rmtree(out / "checkpoints")  # the adapter is saved; checkpoints only serve an interrupted run
    _log_batches(ctx, name, record.batches)
    ctx.log(f"[kormed] {name}: stop_reason {summary['stop_reason']} at step {global_step}; adapter in {out}")
    del trainer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # give the finished step's optimizer memory back before the next step builds its own
    return full


# --------------------------------------------------------------------------------------------------------------
# the recipe: prepare data -> model -> baseline -> for each step: train, check conditions, save
# --------------------------------------------------------------------------------------------------------------


def require(value: str | None, flag: str) -> str:
    """`value`, or a clear error naming the flag that is missing."""
    if value is None:
        raise KormedError(f"{flag} is required", hint=f"pass {flag} FILE or set it in the config file")
    return value


def recipe_inputs(opts: RecipeOptions) -> list[tuple[str, str | None]]:
    """(flag, path) of what `kormed train sft` and `train loop` read: their output directory must hold none."""
    return [("--mcq", opts.mcq), ("--dict", opts.dict), ("--char-dict", opts.char_dict), ("--raw", opts.raw),
            ("--raw-val", opts.raw_val), ("--model", opts.model), ("--from-adapter", opts.from_adapter)]


def read_recipe_sources(opts: RecipeOptions, *, log: Log = print) -> Sources:
    """Step 1 of the recipe: every given source, split into train / validation (seeded by train.seed)."""
    src = load_sources(mcq=opts.mcq, dictionary=opts.dict, char_dict=opts.char_dict, raw=opts.raw,
                       raw_val=opts.raw_val, val_fraction=opts.val_fraction, val_max=opts.val_max,
                       raw_max_texts=opts.raw_max_texts, raw_val_max_texts=opts.raw_val_max_texts,
                       seed=opts.train.seed, log=log)
    if src.mcq_train and src.info.get("mcq", {}).get("with_cot", 0) == 0:
        log("[kormed] note: no question has a 'cot'; MCQ-with-reasoning examples render as plain answers")
    return src


def prepare_recipe(opts: RecipeOptions, src: Sources, steps: Sequence[SFTStepConfig], *,
                   start_adapter: str | None, log: Log = print) -> StepContext:
    """Step 2 of the recipe: the starting model (adapter or a fresh LoRA) and the encoded sources the steps mix;
    the context every step trains in (its baseline is set by the caller)."""
    runtime = pick_runtime(opts.train.device, opts.train.dtype)
    torch.manual_seed(opts.train.seed)
    if opts.train.method == "full":  # start_adapter: an earlier step's full model directory (--from-step)
        model, tokenizer, model_info = prepare_full_model(start_adapter or opts.model, runtime, log=log)
    else:
        model, tokenizer, model_info = prepare_model_for_training(
            opts.model, adapter=start_adapter, lora=opts.lora, runtime=runtime, log=log,
            quantize=opts.train.quantize)
    needed = {k for s in steps for k, w in s.mix.items() if w > 0}
    data = encode_sources(tokenizer, src, max_length=opts.max_length, templates=opts.templates, needed=needed,
                          eod_token=opts.eod_token, log=log)
    knowledge = (knowledge_dictionaries(opts.dict, opts.char_dict)[0] if opts.dict or opts.char_dict else None)
    return StepContext(model=model, tokenizer=tokenizer, runtime=runtime, data=data, train_options=opts.train,
                       baseline=None, tolerances=opts.tolerances, seed=opts.train.seed,
                       stopping_strategy=opts.stopping_strategy, padding_free=opts.padding_free,
                       info={**model_info, "sources": src.info, "started_from": start_adapter}, log=log,
                       knowledge=knowledge, knowledge_seed=opts.knowledge_seed,
                       knowledge_per_group=opts.knowledge_per_group, knowledge_scoring=opts.knowledge_scoring)


def measure_baseline(model: Any, data: EncodedData, *, batch_size: int, log: Log = print,
                     compute_dtype: str | None = None) -> dict[str, Any]:
    """Raw-Korean perplexity of `model` on the held-out raw blocks (token-weighted, as eval_raw_perplexity;
    `compute_dtype`: the training runtime's, so the baseline is measured in the precision validation uses)."""
    result = evaluate_perplexity(model, data.raw_blocks, batch_size=batch_size, compute_dtype=compute_dtype)
    log(f"[kormed] baseline raw-Korean perplexity {result['perplexity']:.4f} over {result['tokens']} tokens")
    return result


def context_baseline(ctx: StepContext, *, log: Log = print) -> dict[str, Any]:
    """Step 3 of the recipe: the starting model's raw-Korean perplexity (what `F * baseline` refers to)."""
    options = ctx.train_options
    return measure_baseline(ctx.model, ctx.data, batch_size=options.eval_batch_size or 2 * options.batch_size,
                            log=log, compute_dtype=ctx.runtime.compute_dtype)


def _sft_baseline(cfg: SFTConfig, ctx: StepContext, src: Sources, out: Path, *, log: Log) -> dict[str, Any]:
    """Measured before step 1 and stored in baseline.json; a run resumed with --from-step reads it back."""
    path = out / BASELINE_FILE
    if cfg.from_step > 1:
        if not path.is_file():
            raise KormedError("--from-step needs the baseline measured before step 1", path=path)
        baseline = read_json(path, what="baseline file")
        log(f"[kormed] baseline raw-Korean perplexity {baseline['raw_perplexity']:.4f} (from {path})")
        return baseline
    result = context_baseline(ctx, log=log)
    baseline = {"raw_perplexity": result["perplexity"], "raw_loss": result["loss"], "tokens": result["tokens"],
                "blocks": result["blocks"], "raw_val": src.info["raw"]["val_path"],
                "raw_val_texts": len(src.raw_val), "max_length": cfg.max_length,
                "model": cfg.model or "embedded", "from_adapter": cfg.from_adapter}
    write_json(path, baseline)
    return baseline


def run_sft(cfg: SFTConfig, *, log: Log = print) -> dict[str, Any]:
    """Run steps `cfg.from_step`..N (the recipe above); return the summary written to `<output>/sft_summary.json`."""
    # --- setup: inputs, starting adapter, sources, model, baseline ---
    out = check_output_path(require(cfg.output, "--output"), "dir", "--output", inputs=recipe_inputs(cfg))
    require(cfg.mcq, "--mcq")
    require(cfg.dict, "--dict")
    require(cfg.raw, "--raw")
    numbered = list(enumerate(cfg.steps, start=1))[cfg.from_step - 1:]
    start_adapter = cfg.from_adapter
    if cfg.from_step > 1:
        prev = out / step_dir_name(cfg.from_step - 1)
        saved = "config.json" if cfg.train.method == "full" else "adapter_config.json"
        if not (prev / saved).is_file():
            what = "model" if cfg.train.method == "full" else "adapter"
            raise KormedError(f"--from-step {cfg.from_step} needs the {what} of step {cfg.from_step - 1}",
                              path=prev, hint="run the earlier steps first (without --from-step)")
        start_adapter = str(prev)

    src = read_recipe_sources(cfg, log=log)
    ctx = prepare_recipe(cfg, src, [s for _, s in numbered], start_adapter=start_adapter, log=log)
    baseline = _sft_baseline(cfg, ctx, src, out, log=log)
    ctx.baseline = float(baseline["raw_perplexity"])

    summary_path = out / SUMMARY_FILE
    earlier = SFTSummary.read(summary_path).steps if summary_path.is_file() and cfg.from_step > 1 else []
    rows = [r for r in earlier if r.step < cfg.from_step]  # the steps before --from-step, as they ran
    # --- train: each step trained, checked against its stop conditions and saved in step{N}/ ---
    finished = True
    for n, step in numbered:
        step_dir = out / step_dir_name(n)
        info = run_sft_step(ctx, step, name=step_dir.name, out_dir=step_dir, max_steps=cfg.max_steps_per_step,
                            extra_info={"step_number": n})
        ctx.info["started_from"] = str(step_dir)
        done = info.summary
        rows.append(SFTStepRow(step=n, name=step.name, description=step.description,
                               stop_reason=done.stop_reason, global_step=done.global_step,
                               metrics_at_stop=info.sft.metrics_at_stop, adapter=str(step_dir)))
        if done.stop_reason not in STEP_FINISHED:
            log(f"[kormed] step{n} ended with '{done.stop_reason}'; later steps not run "
                f"(continue with --from-step {n})")
            finished = False
            break
    # --- save: the summary of every step so far ---
    summary = SFTSummary(baseline=baseline, steps=rows, finished=finished,
                         final_adapter=rows[-1].adapter if rows else None).to_json()
    write_json(summary_path, summary)
    return summary


# How `kormed train sft` prints its result (the command is a row of kormed.cli.COMMANDS).
def show(summary: dict[str, Any], cfg: Any) -> None:
    """One line per step (stop reason, QA loss, raw perplexity against the baseline); exit 130 if unfinished."""
    base = summary["baseline"]["raw_perplexity"]
    for row in summary["steps"]:
        m = row.get("metrics_at_stop") or {}
        qa = m.get("eval_qa_loss", float("nan"))
        ppl = m.get("eval_raw_perplexity", float("nan"))
        typer.echo(f"step{row['step']}: {row['stop_reason']} at step {row['global_step']}, qa loss {qa:.4f}, "
                   f"raw ppl {ppl:.4f} ({ppl / base:.3f} x baseline {base:.4f})")
    if not summary["finished"]:
        last = summary["steps"][-1]["step"]
        typer.echo(f"kormed: step{last} did not finish; continue with the same command plus --from-step {last}",
                   err=True)
        sys.exit(130)
    typer.echo(f"sft done; final adapter in {summary['final_adapter']}")
