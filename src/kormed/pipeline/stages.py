"""The real stages as the runner drives them: each entry wires run-directory paths into the stage's own config and
calls the stage's own API (`kormed.prepare.corpus.run_prepare`, `kormed.tokenizer.extend.extend_tokenizer`,
`kormed.train.cpt.run_cpt`, `kormed.train.sft.run_sft`, `kormed.train.loop.run_loop`, `kormed.eval.*`).
Nothing here re-implements a stage. (The stages' modules load torch only when they run.)

Run directory (R = the pipeline's run_dir, made absolute):

    R/corpus/raw_text_mixed.jsonl (+ .val.jsonl, .stats.json)     prepare
    R/tokenizer/ (tokenizer.json, tokenizer_report.json)           tokenizer
    R/cpt/ (adapter, tokenizer/, training_info.json)               cpt      <- corpus, tokenizer
    R/sft/step1../ (adapter, training_info.json)                   sft      <- cpt adapter, sample/seed data
    R/loop/round01.../, best/, loop_table.json                     loop     <- sft's last step adapter
    R/eval/kormedmcqa_<target>.json, ppl_<target>.json             eval     <- base model and every adapter
                                        (one load of the base, adapters swapped: kormed.eval.session)

Which stage reads which is `kormed.pipeline.registry`; each stage's typed result (`kormed.pipeline.results`) is
read from the files above and written beside them as kormed_result.json.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kormed.config import merge, section_class
from kormed.errors import KormedError
from kormed.eval.kormedmcqa import format_table
from kormed.models import ADAPTER_FILES
from kormed.pipeline import results
from kormed.pipeline.registry import TRAINING_STAGES, previous_adapter, sft_step_names, stage_info
from kormed.pipeline.spec import RunContext, StageInterrupted, StageSpec
from kormed.prepare.config import ALL_SOURCES
from kormed.prepare.corpus import MissingSourceError, run_prepare
from kormed.prepare.publish import check_prepared_set
from kormed.sample_data import RELATIVE_PATHS, sample_data_root
from kormed.stop_reason import StopReason
from kormed.tokenizer.extend import extend_tokenizer
from kormed.train.cpt import run_cpt
from kormed.train.loop import run_loop
from kormed.train.sft import run_sft

CORPUS_NAME = "raw_text_mixed.jsonl"


def _section_class(stage: str) -> Callable[[], type]:
    """The stage's config dataclass, from its registry section (config.CONFIG_SECTIONS names the class)."""
    return lambda: section_class(stage_info(stage).section)


def _abs(p: str | Path) -> Path:
    return Path(p).expanduser().absolute()


def _root(ctx: RunContext) -> Path:
    return _abs(ctx.run_dir)


def _out(ctx: RunContext, stage: str) -> Path:
    """The stage's own directory in the run directory (absolute)."""
    return _root(ctx) / stage_info(stage).output_dir


def data_root(ctx: RunContext) -> Path | None:
    """The pipeline's data root: `sample` (the bundled sample data), a directory, or none (the prepare default)."""
    value = ctx.pipeline.data_root
    if value is None:
        return None
    if value == "sample":
        return sample_data_root()
    return _abs(value)


def _source(ctx: RunContext, name: str) -> str | None:
    """Path of one raw source (mcq, medical_dict, char_dict, mcq_test, mcq_fewshot) in the seeds' layout."""
    if ctx.enabled("prepare") and name in ("mcq", "medical_dict", "char_dict"):
        cfg = ctx.configs["prepare"]
        if name != "mcq" and cfg.source_path(name).exists():
            return str(cfg.dict_subset_path(name))  # the trained entries: prepare holds the rest out of every stage
        return str(cfg.source_path(name))
    root = data_root(ctx)
    if root is None and ctx.enabled("prepare"):
        root = _abs(ctx.configs["prepare"].root())
    if root is None:
        return None
    rel = RELATIVE_PATHS["mcq_train" if name == "mcq" else name]
    p = root / rel
    return str(p) if p.exists() or name in ("mcq", "medical_dict", "mcq_test") else None


def _corpus(ctx: RunContext) -> tuple[str | None, str | None]:
    """(training corpus, held-out validation text) written by prepare, when prepare is part of the run."""
    if not ctx.enabled("prepare"):
        return None, None
    cfg = ctx.configs["prepare"]
    return str(cfg.out_path()), str(cfg.val_path())


def _train_options(ctx: RunContext) -> dict[str, Any]:
    opts: dict[str, Any] = {"report_to": list(ctx.pipeline.report_to)}
    if ctx.pipeline.device:
        opts["device"] = ctx.pipeline.device
    return {"train": opts}


def _adapter_inputs(d: str | Path | None) -> list[Path]:
    if not d:
        return []
    d = Path(d)
    out = [d / f for f in ADAPTER_FILES]
    if (d / "tokenizer").is_dir():
        out.append(d / "tokenizer")
    return out


# --------------------------------------------------------------------------------------------------- prepare


def _prepare_wire(ctx: RunContext) -> dict[str, Any]:
    root = data_root(ctx)
    return {
        "data_root": str(root) if root is not None else None,
        "out": str(_out(ctx, "prepare") / CORPUS_NAME),
    }


def _prepare_run(cfg: Any, ctx: RunContext) -> dict[str, Any]:
    try:
        result = run_prepare(cfg, log=ctx.log)
    except MissingSourceError as exc:  # its hint names `kormed prepare`'s flags, which `kormed run` does not take
        file = ctx.pipeline.source or "the pipeline file"
        where = (f"{file} sets no data_root, so the sources are looked for under {cfg.root().absolute()}: add "
                 "`data_root: DIR` (the seeds' layout; `data_root: sample` = the bundled sample data) to it, or set"
                 if ctx.pipeline.data_root is None else f"set in {file}")
        raise KormedError(exc.message, path=exc.path, field=f"prepare.{exc.source}.path",
                          hint=f"{where} `prepare: {{{exc.source}: {{path: ...}}}}`, or "
                               f"`prepare: {{{exc.source}: {{optional: true}}}}` to skip it") from None
    return result


def _prepare_inputs(cfg: Any, ctx: RunContext) -> list[Path]:
    return [cfg.source_path(name) for name in ALL_SOURCES]


def _prepare_outputs(cfg: Any, ctx: RunContext) -> list[Path]:
    dicts = [cfg.dict_subset_path(n) for n in ("medical_dict", "char_dict") if cfg.source_path(n).exists()]
    return [cfg.out_path(), cfg.val_path(), cfg.stats_path(), *dicts, cfg.heldout_path()]


def _prepare_verify(cfg: Any, ctx: RunContext) -> str | None:
    """Why the corpus, validation file and stats on disk are not one prepare run's set (None when they are)."""
    try:
        check_prepared_set(cfg.out_path(), cfg.val_path())
    except KormedError as exc:
        return f"{exc.path}: {exc.message}"
    return None


def _prepare_dirs(cfg: Any, ctx: RunContext) -> list[Path]:
    return [cfg.out_path().parent]


# --------------------------------------------------------------------------------------------------- tokenizer


def _cpt_budget_tokens(ctx: RunContext) -> int | None:
    """Tokens the cpt section trains on when it stops at max_steps (one process), to size a null
    `tokenizer.max_new_tokens`; None when it runs epochs over the corpus (the extension then reads the corpus)."""
    cls = _section_class("cpt")()
    source = str(ctx.pipeline.source) if ctx.pipeline.source else None
    cpt = merge(cls(), ctx.pipeline.sections.get("cpt") or {}, path=source, prefix="cpt.")
    train = cpt.train
    return train.max_steps * train.batch_size * train.grad_accum * cpt.max_length if train.max_steps else None


def _tokenizer_wire(ctx: RunContext) -> dict[str, Any]:
    corpus, _ = _corpus(ctx)
    return {"model": ctx.pipeline.model, "corpus": corpus, "dict": _source(ctx, "medical_dict"),
            "out": str(_out(ctx, "tokenizer")), "budget_tokens": _cpt_budget_tokens(ctx)}


def _tokenizer_run(cfg: Any, ctx: RunContext) -> dict[str, Any]:
    return extend_tokenizer(cfg, log=ctx.log)


# --------------------------------------------------------------------------------------------------- cpt


def _cpt_wire(ctx: RunContext) -> dict[str, Any]:
    data, val = _corpus(ctx)
    return {
        "data": data,
        "val": val,
        "model": ctx.pipeline.model,
        "tokenizer_path": str(_out(ctx, "tokenizer")) if ctx.enabled("tokenizer") else None,
        "output": str(_out(ctx, "cpt")),
        "kormedmcqa_data": _source(ctx, "mcq_test"),  # used only when cpt.kormedmcqa_every > 0
        **_train_options(ctx),
    }


def _tokenizer_options(cfg: Any, ctx: RunContext) -> Any:
    """The `tokenizer` section's CPT-side options (train_new_rows_only, embedding_lr), when CPT uses its output."""
    return ctx.configs.get("tokenizer") if cfg.tokenizer_path else None


def _cpt_run(cfg: Any, ctx: RunContext) -> Any:
    return run_cpt(cfg, tokenizer_options=_tokenizer_options(cfg, ctx), log=ctx.log)


def _cpt_check(result: results.TrainResult) -> None:
    if result.stop_reason == StopReason.INTERRUPTED:
        raise StageInterrupted("stage 'cpt' was interrupted (a checkpoint was saved)",
                               hint="rerun the same command to resume it")


def _cpt_extra(cfg: Any, ctx: RunContext) -> Any:
    tok = _tokenizer_options(cfg, ctx)
    return {"train_new_rows_only": tok.train_new_rows_only, "embedding_lr": tok.embedding_lr} if tok else None


def _cpt_inputs(cfg: Any, ctx: RunContext) -> list[Any]:
    mcq = cfg.kormedmcqa_data if cfg.kormedmcqa_every else None
    return [cfg.data, cfg.val, cfg.tokenizer_path, *_adapter_inputs(cfg.adapter), mcq]


# --------------------------------------------------------------------------------------------------- sft


def _previous_adapter(ctx: RunContext, stage: str) -> str | None:
    """The final adapter of the nearest training stage among `stage`'s registry inputs that is part of this run."""
    adapter = previous_adapter(stage, ctx.enabled, ctx.configs)
    return str(adapter) if adapter is not None else None


def final_adapter(stage: str, cfg: Any) -> str:
    """Where a training stage leaves its final adapter (the registry's final artefact)."""
    return str(stage_info(stage).final_adapter(cfg))


def _chat_data(ctx: RunContext) -> dict[str, Any]:
    """The data inputs SFT and the loop share: questions, dictionaries, and the prepared raw text + its val set."""
    raw, val = _corpus(ctx)
    return {
        "mcq": _source(ctx, "mcq"),
        "dict": _source(ctx, "medical_dict"),
        "char_dict": _source(ctx, "char_dict"),
        "raw": raw,
        "raw_val": val,
    }


def _sft_wire(ctx: RunContext) -> dict[str, Any]:
    return {
        **_chat_data(ctx),
        "model": ctx.pipeline.model,
        "from_adapter": _previous_adapter(ctx, "sft"),
        "output": str(_out(ctx, "sft")),
        **_train_options(ctx),
    }


def _sft_run(cfg: Any, ctx: RunContext) -> Any:
    return run_sft(cfg, log=ctx.log)


def _sft_check(result: results.SFTResult) -> None:
    if not result.finished:
        last = result.steps[-1] if result.steps else None
        where = f"in {last.name} ({last.stop_reason.value})" if last else "before its first step finished"
        raise StageInterrupted(f"stage 'sft' stopped {where}", hint="rerun the same command to continue from that step")


def _data_inputs(cfg: Any) -> list[Any]:
    return [cfg.mcq, cfg.dict, cfg.char_dict, cfg.raw, cfg.raw_val, *_adapter_inputs(cfg.from_adapter)]


def _sft_resume(cfg: Any, ctx: RunContext) -> Any:
    """Continue an interrupted SFT at the first step that did not finish (stop conditions met or max_steps)."""
    out = Path(cfg.output)
    names = sft_step_names(cfg)
    done = 0
    for n, name in enumerate(names, start=1):
        step_dir = out / name
        info_file = step_dir / results.TRAINING_INFO
        finished = info_file.is_file() and all((step_dir / f).exists() for f in ADAPTER_FILES)
        if finished and results.train_result(step_dir).stop_reason in (StopReason.CONDITIONS_MET,
                                                                        StopReason.MAX_STEPS):
            done = n
        else:
            break
    if done == 0 or done == len(names):
        return None
    return dataclasses.replace(cfg, from_step=done + 1)


# --------------------------------------------------------------------------------------------------- loop


def _loop_wire(ctx: RunContext) -> dict[str, Any]:
    return {
        **_chat_data(ctx),
        "eval_data": _source(ctx, "mcq_test"),
        "dict_heldout": str(ctx.configs["prepare"].heldout_path()) if ctx.enabled("prepare") else None,
        "model": ctx.pipeline.model,
        "from_adapter": _previous_adapter(ctx, "loop"),
        "output": str(_out(ctx, "loop")),
        **_train_options(ctx),
    }


def _loop_run(cfg: Any, ctx: RunContext) -> Any:
    return run_loop(cfg, log=ctx.log)


# --------------------------------------------------------------------------------------------------- eval


def eval_targets(ctx: RunContext) -> dict[str, str | None]:
    """Model name -> adapter directory (None = the base model) evaluated by the eval stage.

    Default: the base model and the final adapter of every training stage in the run. `eval_targets` in the
    pipeline file picks some: base, cpt, sft (= its last step), sft/stepN, loop (= best), loop/roundNN."""
    wanted = ctx.pipeline.eval_targets
    if wanted is None:
        wanted = ["base", *[s for s in TRAINING_STAGES if ctx.enabled(s)]]
    out: dict[str, str | None] = {}
    for t in wanted:
        stage, _, sub = t.partition("/")
        if stage == "base" and not sub:
            out["base"] = None
            continue
        if stage not in TRAINING_STAGES or (stage == "cpt" and sub):
            raise KormedError(f"unknown eval target {t!r} (base, cpt, sft, sft/stepN, loop, loop/roundNN)",
                              path=ctx.pipeline.source, field="eval_targets")
        if not ctx.enabled(stage):
            raise KormedError(f"eval target {t!r}: stage '{stage}' is not part of this run",
                              path=ctx.pipeline.source, field="eval_targets")
        if sub and not re.fullmatch(r"(step\d+|round\d+(_\w+)?|best)", sub):
            raise KormedError(f"unknown eval target {t!r}", path=ctx.pipeline.source, field="eval_targets")
        adapter = str(Path(ctx.configs[stage].output) / sub) if sub else final_adapter(stage, ctx.configs[stage])
        out[t.replace("/", "-")] = adapter
    return out


def _ppl_data(ctx: RunContext) -> str | None:
    _, val = _corpus(ctx)
    return val


# Questions per knowledge form and entry group the eval stage scores by default (`eval.knowledge_per_group`): the
# bundled dictionaries give 10 groups (5 forms x trained / held out), so 4 a group is 40 questions, each scored
# under 5 rotations: 11,735 prompt tokens, about 1.2x the 100 bundled KorMedMCQA questions (9,874) per model.
# Set it in the pipeline file (null = all 811 questions, ~8 minutes a model on 2 CPU cores) for narrower intervals.
STAGE_KNOWLEDGE_PER_GROUP = 4


def _knowledge_wire(ctx: RunContext) -> dict[str, Any]:
    """The dictionaries the training stages read (prepare's trained entries, with its held-out record), scored on
    the test forms; nothing when the run has no dictionary."""
    if ctx.enabled("prepare"):
        cfg = ctx.configs["prepare"]
        dicts = {n: str(cfg.dict_subset_path(n)) if cfg.source_path(n).exists() else None
                 for n in ("medical_dict", "char_dict")}
        heldout: str | None = str(cfg.heldout_path())
    else:
        dicts = {n: p if (p := _source(ctx, n)) and Path(p).is_file() else None for n in ("medical_dict", "char_dict")}
        heldout = None
    if not any(dicts.values()):
        return {}
    return {"dict": dicts["medical_dict"], "char_dict": dicts["char_dict"], "heldout": heldout,
            "knowledge_split": "test", "knowledge_per_group": STAGE_KNOWLEDGE_PER_GROUP}


def _eval_wire(ctx: RunContext) -> dict[str, Any]:
    values: dict[str, Any] = {"model": ctx.pipeline.model, "data": _source(ctx, "mcq_test"), **_knowledge_wire(ctx)}
    if ctx.enabled("cpt"):  # perplexity over blocks built exactly as CPT built its validation blocks
        values["max_length"] = ctx.configs["cpt"].max_length
        values["eod_token"] = ctx.configs["cpt"].eod_token
    if ctx.pipeline.device:
        values["device"] = ctx.pipeline.device
    fewshot = _source(ctx, "mcq_fewshot")
    if fewshot:
        values["fewshot_file"] = fewshot
    return values


def _knowledge_line(name: str, result: dict[str, Any]) -> str:
    """One log line: accuracy and interval of trained and held-out entries over every form."""
    parts = []
    for group in ("trained", "held_out"):
        s = result["summary"].get(f"all/{group}")
        if s:
            lo, hi = s["ci95"]
            parts.append(f"{group.replace('_', '-')} {s['accuracy']:.1%} ({s['correct']}/{s['total']}, "
                         f"95% CI {lo:.3f}-{hi:.3f})")
    return f"[eval] {name}: dictionary knowledge ({result['split']} forms) " + ", ".join(parts)


def _loop_reuse(record: Any, kinds: dict[str, dict[str, Any]], runtime: dict[str, Any],
                log: Callable[[str], None], name: str) -> dict[str, tuple[dict[str, Any] | None, dict[str, str]]]:
    """kind -> (the loop's recorded result to reuse, with the runtime it ran under, or None; the note the target's
    file records) for a target that is a loop round's adapter. `kinds`: kind -> the settings to be scored."""
    from kormed.eval import reuse

    out: dict[str, tuple[dict[str, Any] | None, dict[str, str]]] = {}
    for kind, planned in kinds.items():
        found, source, why = reuse.find_reusable(record, kind, planned, runtime)
        if found is not None:
            log(f"[eval] {name}: {kind} reused from {source} (the same items, settings and runtime)")
            out[kind] = ({**found, "runtime": record.runtime}, {"reused_from": source})
        else:
            log(f"[eval] {name}: {kind} scored again, not reused from the loop: {why}")
            out[kind] = (None, {"why_not": why})
    return out


def _eval_run(cfg: Any, ctx: RunContext) -> dict[str, Any]:
    """Score every target with one load per base build (adapters swapped on it, :class:`AdapterSwap`): MCQ,
    dictionary knowledge and perplexity on the same load; the base's results come from :class:`BaseCache` when
    nothing they depend on changed, and a loop round's from the loop's own record when it scored exactly the same
    (:mod:`kormed.eval.reuse`). Each other target's files and numbers are those of a separate `kormed eval` run."""
    from kormed.eval import knowledge, kormedmcqa, perplexity, reuse
    from kormed.eval.session import AdapterSwap, BaseCache
    from kormed.io import write_json
    from kormed.models import pick_runtime

    out_dir = _out(ctx, "eval")
    targets = eval_targets(ctx)
    ppl_data = _ppl_data(ctx)
    ppl_cfg = dataclasses.replace(cfg, data=ppl_data) if ppl_data else None
    questions, fewshot = kormedmcqa.read_inputs(cfg)  # bad input is refused before any model loads
    documents = perplexity.count_texts(ppl_cfg) if ppl_cfg else 0
    dictionaries, held = knowledge.read_inputs(cfg) if cfg.dict or cfg.char_dict else ({}, {})
    planned_knowledge = None
    if dictionaries:
        planned, _ = knowledge.plan_questions(dictionaries, split=cfg.knowledge_split, seed=cfg.knowledge_seed,
                                              held_out=held, per_group=cfg.knowledge_per_group)
        planned_knowledge = reuse.planned_knowledge(planned, split=cfg.knowledge_split, seed=cfg.knowledge_seed,
                                                    per_group=cfg.knowledge_per_group, scoring=cfg.knowledge_scoring)
    runtime_here = pick_runtime(cfg.device, cfg.dtype)
    swap = AdapterSwap(cfg.model, device=cfg.device, dtype=cfg.dtype, log=ctx.log)
    keys = {name: swap.key_of(adapter) for name, adapter in targets.items()}
    firsts = list(dict.fromkeys(keys.values()))
    # the base first, then the adapters that share its load, then the others grouped by the base build they need
    base_key = swap.key_of(None)
    order = sorted(targets, key=lambda n: (targets[n] is not None, keys[n] != base_key, firsts.index(keys[n])))
    summary: dict[str, Any] = {}
    for name in order:
        adapter = targets[name]
        mcq_cfg = dataclasses.replace(cfg, adapter=adapter, output=str(out_dir / f"kormedmcqa_{name}.json"))
        ppl_one = (dataclasses.replace(ppl_cfg, adapter=adapter, output=str(out_dir / f"ppl_{name}.json"))
                   if ppl_cfg else None)
        know_cfg = (dataclasses.replace(cfg, adapter=adapter, output=str(out_dir / f"knowledge_{name}.json"))
                    if dictionaries else None)
        cache = (BaseCache(cfg, keys[name][0], [cfg.data, cfg.fewshot_file if cfg.num_fewshot else None, ppl_data,
                                                cfg.dict, cfg.char_dict, cfg.heldout],
                           runtime_here) if adapter is None else None)
        cached = cache.read(log=ctx.log) if cache else None
        if (cached is not None and (ppl_one is None) == (cached.get("ppl") is None)
                and (know_cfg is None) == (cached.get("knowledge") is None)):
            ctx.log(f"[eval] {name}: results reused from {cache.path} (same model files, data, options)")
            result, ppl, known = cached["kormedmcqa"], cached.get("ppl"), cached.get("knowledge")
            write_json(mcq_cfg.output, result)
            if ppl_one is not None:
                write_json(ppl_one.output, ppl)
            if know_cfg is not None:
                write_json(know_cfg.output, known)
        else:
            loaded: list[tuple[Any, Any, Any]] = []
            seconds: dict[str, float] = {}

            def model(adapter: str | None = adapter, loaded: list[tuple[Any, Any, Any]] = loaded) -> Any:
                """The target's model, loaded (or swapped in) the first time something must be scored."""
                if not loaded:
                    loaded.append(swap.use(adapter))
                return loaded[0]

            record, why = reuse.loop_record(adapter) if adapter is not None else (None, "")
            plans: dict[str, Any] = {"kormedmcqa": None, "knowledge": planned_knowledge} if record else {}
            if record is not None:
                bos = swap.tokenizer_of(adapter).bos_token
                plans["kormedmcqa"] = reuse.mcq_settings({
                    **kormedmcqa.recorded_settings(cfg.mode, permutations=cfg.permutations,
                                                   num_fewshot=cfg.num_fewshot, loglik_target=cfg.loglik_target,
                                                   max_new_tokens=cfg.max_new_tokens),
                    "questions": [{"prompt": kormedmcqa.prompt_for(q, mode=cfg.mode, fewshot=fewshot,
                                                                   num_fewshot=cfg.num_fewshot,
                                                                   chat_template=cfg.chat_mcq_prompt, bos=bos),
                                   "answer": q.answer_letter} for q in questions]})
                if cfg.backend != "kormed":
                    plans.pop("kormedmcqa")
            reused = _loop_reuse(record, {k: v for k, v in plans.items() if v is not None},
                                 reuse.runtime_settings(runtime_here), ctx.log, name) if record else {}
            if record is None and adapter is not None and reuse.beside_loop_table(adapter):
                ctx.log(f"[eval] {name}: scored, not reused from the loop: {why}")
                reused = {"kormedmcqa": (None, {"why_not": why}), "knowledge": (None, {"why_not": why})}
            found, note = reused.get("kormedmcqa", (None, None))
            if found is not None:
                result = {k: v for k, v in found.items() if k not in ("split", "used_for_selection")}
                result.update(backend="kormed", model=cfg.model or "embedded:gemma3-270m", adapter=adapter,
                              data=str(cfg.data), fewshot_file=cfg.fewshot_file if cfg.num_fewshot else None)
            else:
                ctx.log(f"[eval] {name}: KorMedMCQA ({cfg.mode}) on {cfg.data}")
                net, tokenizer, runtime = model()
                started = time.perf_counter()
                result = kormedmcqa.score_loaded(dataclasses.replace(mcq_cfg, output=None), net, tokenizer, runtime,
                                                 questions, fewshot)
                seconds["KorMedMCQA"] = time.perf_counter() - started
            if note is not None:
                result["reuse"] = note
            write_json(mcq_cfg.output, result)
            ppl = None
            if ppl_one is not None:
                net, tokenizer, runtime = model()
                started = time.perf_counter()
                ppl = perplexity.score_loaded(ppl_one, net, tokenizer, runtime, documents)
                seconds["perplexity"] = time.perf_counter() - started
            known = None
            if know_cfg is not None:
                found, note = reused.get("knowledge", (None, None))
                if found is not None:
                    known = {**found, "model": cfg.model or "embedded:gemma3-270m", "adapter": adapter,
                             "dict": cfg.dict, "char_dict": cfg.char_dict, "heldout": cfg.heldout}
                else:
                    net, tokenizer, runtime = model()
                    started = time.perf_counter()
                    known = knowledge.score_loaded(dataclasses.replace(know_cfg, output=None), net, tokenizer, runtime,
                                                   dictionaries, held, progress=False)
                    seconds["knowledge"] = time.perf_counter() - started
                if note is not None:
                    known["reuse"] = note
                write_json(know_cfg.output, known)
            if cache is not None:
                cache.write({"kormedmcqa": result, "ppl": ppl, "knowledge": known})
                ctx.log(f"[eval] {name}: results cached in {cache.path}")
            if seconds:  # what the stage's time goes to (compute, model loads not included)
                ctx.log(f"[eval] {name}: scored in " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))
        ctx.log(format_table(result))
        entry = {"accuracy": result["accuracy"], "total": result["total"],
                 "per_subset": {k: v["accuracy"] for k, v in result["per_subset"].items()}}
        if ppl is not None:
            ctx.log(f"[eval] {name}: perplexity {ppl['perplexity']:.3f} on {ppl['tokens']:,} tokens")
            entry["perplexity"] = ppl["perplexity"]
        if known is not None:
            ctx.log(_knowledge_line(name, known))
            entry["knowledge"] = {k: v["accuracy"] for k, v in known["summary"].items() if k.startswith("all/")}
        summary[name] = entry
    swap.close()
    ctx.log(f"[eval] {len(targets)} model(s) scored with {swap.loads} model load(s)")
    return {name: summary[name] for name in targets}


def _eval_inputs(cfg: Any, ctx: RunContext) -> list[Any]:
    files: list[Any] = [cfg.data, cfg.fewshot_file if cfg.num_fewshot else None, _ppl_data(ctx), cfg.dict,
                        cfg.char_dict, cfg.heldout]
    for adapter in eval_targets(ctx).values():
        files.extend(_adapter_inputs(adapter))
    return files


def _eval_outputs(cfg: Any, ctx: RunContext) -> list[Path]:
    out_dir = _out(ctx, "eval")
    names = list(eval_targets(ctx))
    files = [out_dir / f"kormedmcqa_{n}.json" for n in names]
    if _ppl_data(ctx):
        files += [out_dir / f"ppl_{n}.json" for n in names]
    if cfg.dict or cfg.char_dict:
        files += [out_dir / f"knowledge_{n}.json" for n in names]
    return files


# --------------------------------------------------------------------------------------------------- common


def default_specs() -> dict[str, StageSpec]:
    """The runner's table of real stages, one per registry entry."""
    train_volatile = ("num_proc", "cache_dir", "resume", "from_step")
    return {
        "prepare": StageSpec(
            name="prepare",
            config_cls=_section_class("prepare"),
            wire=_prepare_wire,
            run=_prepare_run,
            inputs=_prepare_inputs,
            outputs=_prepare_outputs,
            verify=_prepare_verify,
            output_dirs=_prepare_dirs,
            volatile=("num_proc", "batch_size", "skip_bad"),
            result=lambda cfg, ctx: results.prepare_result(cfg.stats_path()),
        ),
        "tokenizer": StageSpec(
            name="tokenizer",
            config_cls=_section_class("tokenizer"),
            wire=_tokenizer_wire,
            run=_tokenizer_run,
            inputs=lambda cfg, ctx: [cfg.corpus, cfg.dict],
            outputs=lambda cfg, ctx: [Path(cfg.out) / "tokenizer.json", Path(cfg.out) / results.TOKENIZER_REPORT],
            output_dirs=lambda cfg, ctx: [cfg.out],
            # train_new_rows_only / embedding_lr are read by CPT, not by the extension itself
            volatile=("train_new_rows_only", "embedding_lr"),
            result=lambda cfg, ctx: results.tokenizer_result(cfg.out),
        ),
        "cpt": StageSpec(
            name="cpt",
            config_cls=_section_class("cpt"),
            wire=_cpt_wire,
            run=_cpt_run,
            inputs=_cpt_inputs,
            outputs=lambda cfg, ctx: [Path(cfg.output) / f for f in (*ADAPTER_FILES, results.TRAINING_INFO)],
            output_dirs=lambda cfg, ctx: [cfg.output],
            volatile=train_volatile,
            resume_field="resume",
            extra_hash=_cpt_extra,
            command=("train", "cpt"),
            result=lambda cfg, ctx: results.train_result(cfg.output, "cpt"),
            check=_cpt_check,
        ),
        "sft": StageSpec(
            name="sft",
            config_cls=_section_class("sft"),
            wire=_sft_wire,
            run=_sft_run,
            inputs=lambda cfg, ctx: _data_inputs(cfg),
            outputs=lambda cfg, ctx: [Path(final_adapter("sft", cfg)) / f
                                      for f in (*ADAPTER_FILES, results.TRAINING_INFO)],
            output_dirs=lambda cfg, ctx: [cfg.output],
            volatile=train_volatile,
            resume_hook=_sft_resume,
            command=("train", "sft"),
            result=lambda cfg, ctx: results.sft_result(cfg.output),
            check=_sft_check,
        ),
        "loop": StageSpec(
            name="loop",
            config_cls=_section_class("loop"),
            wire=_loop_wire,
            run=_loop_run,
            inputs=lambda cfg, ctx: [*_data_inputs(cfg), cfg.eval_data, cfg.dict_heldout],
            outputs=lambda cfg, ctx: [Path(final_adapter("loop", cfg)) / f for f in ADAPTER_FILES],
            output_dirs=lambda cfg, ctx: [cfg.output],
            volatile=train_volatile,
            command=("train", "loop"),
            result=lambda cfg, ctx: results.loop_result(cfg.output),
        ),
        "eval": StageSpec(
            name="eval",
            config_cls=_section_class("eval"),
            wire=_eval_wire,
            run=_eval_run,
            inputs=_eval_inputs,
            outputs=_eval_outputs,
            volatile=("batch_size", "output"),
            result=lambda cfg, ctx: results.eval_result(_out(ctx, "eval")),
        ),
    }
