"""`kormed train loop`: alternate dictionary SFT (train_01) and MCQ-with-reasoning SFT (train_02) rounds until the
KorMedMCQA accuracy reaches the target or the rounds run out.

Each round is one SFT step (:func:`kormed.train.sft.run_sft_step`: its own mix, stop conditions and max_steps),
continuing the same adapter. After each round the accuracy is measured (chat mode by default, through
:func:`kormed.eval.kormedmcqa.evaluate_kormedmcqa`), the round's adapter is kept in `round{NN}_{kind}/`, and the
best one so far (strictly higher accuracy; the earlier round wins a tie) is copied to `best/`. Round 0 (with
`eval_before`) is the starting adapter, saved in `round00_start/`, so `best/` is never worse than the start.
The round-by-round table is written as `loop_table.json` and `loop_table.md` after every round.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from kormed.errors import KormedError
from kormed.eval.kormedmcqa import evaluate_kormedmcqa
from kormed.io import atomic_write, check_output_path, make_temp_dir, write_json
from kormed.models import ADAPTER_META_FILE, pick_runtime
from kormed.records import read_mcq_jsonl
from kormed.stop_reason import StopReason
from kormed.train.model_setup import prepare_model_for_training
from kormed.train.outputs import save_adapter
from kormed.train.sft import (
    StepContext,
    _require,
    encode_sources,
    load_sources,
    measure_baseline,
    run_sft_step,
)
from kormed.train.sft_config import LoopConfig
from kormed.train.stop_conditions import Tolerances

TABLE_JSON = "loop_table.json"
TABLE_MD = "loop_table.md"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", ADAPTER_META_FILE, "tokenizer")



def round_kinds(first: str, n: int) -> list[str]:
    """['dict', 'mcq', 'dict', ...] (or starting with 'mcq') for rounds 1..n."""
    other = "mcq" if first == "dict" else "dict"
    return [first if i % 2 == 0 else other for i in range(n)]


def _copy_adapter(src: Path, dst: Path, note: dict[str, Any]) -> None:
    """Replace `dst` with a copy of the adapter files of `src` (staged beside it, then renamed)."""
    stage = make_temp_dir(dst.parent, dst.name)  # umask-normal mode, kormed temp name (cleaned after a kill)
    for name in ADAPTER_FILES:
        if (src / name).is_dir():
            shutil.copytree(src / name, stage / name)
        elif (src / name).is_file():
            shutil.copy2(src / name, stage / name)
    write_json(stage / "best.json", note)
    if dst.exists():
        trash = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, trash)
        os.replace(stage, dst)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(stage, dst)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def table_markdown(result: dict[str, Any]) -> str:
    """The round-by-round table as Markdown."""
    lines = [
        f"# kormed train loop: target accuracy {result['target']:.0%} ({result['eval_mode']} mode, "
        f"{result['eval_questions']} questions)",
        "",
        "| round | kind | steps | stop reason | eval_qa_loss | eval_dict_loss | raw ppl | accuracy | correct |",
        "|---:|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["rounds"]:
        m = r.get("metrics") or {}
        lines.append(
            f"| {r['round']} | {r['kind']} | {_fmt(r.get('global_step'))} | {r.get('stop_reason') or '–'} | "
            f"{_fmt(m.get('eval_qa_loss'))} | {_fmt(m.get('eval_dict_loss'))} | "
            f"{_fmt(m.get('eval_raw_perplexity'))} | {r['accuracy']:.2%} | {r['correct']}/{r['total']} |"
        )
    lines += [
        "",
        f"Stop: **{result['stop_reason']}**. Best: round {result['best_round']} "
        f"({result['best_accuracy']:.2%}), adapter in `{result['best_adapter']}`.",
        "",
    ]
    return "\n".join(lines)


def run_loop(cfg: LoopConfig, *, log: Any = print) -> dict[str, Any]:
    """Run the rounds; return the table (also written to loop_table.json / loop_table.md)."""
    out = check_output_path(_require(cfg.output, "--output"), "dir", "--output")
    _require(cfg.mcq, "--mcq")
    _require(cfg.dict, "--dict")
    eval_path = _require(cfg.eval_data, "--eval-data")
    questions, _ = read_mcq_jsonl(eval_path)
    if cfg.eval_limit is not None:
        questions = questions[: cfg.eval_limit]
    runtime = pick_runtime(cfg.train.device, cfg.train.dtype)
    torch.manual_seed(cfg.train.seed)
    src = load_sources(mcq=cfg.mcq, dictionary=cfg.dict, char_dict=cfg.char_dict, raw=cfg.raw, raw_val=cfg.raw_val,
                       val_fraction=cfg.val_fraction, val_max=cfg.val_max, raw_max_texts=cfg.raw_max_texts,
                       raw_val_max_texts=cfg.raw_val_max_texts, seed=cfg.train.seed, log=log)
    model, tokenizer, model_info = prepare_model_for_training(
        cfg.model, adapter=cfg.from_adapter, lora=cfg.lora, runtime=runtime, log=log, quantize=cfg.train.quantize)
    needed = {k for s in (cfg.dict_round, cfg.mcq_round) for k, w in s.mix.items() if w > 0}
    data = encode_sources(tokenizer, src, max_length=cfg.max_length, templates=cfg.templates, needed=needed,
                          eod_token=cfg.eod_token, log=log)
    eval_bs = cfg.train.eval_batch_size or 2 * cfg.train.batch_size
    baseline = None
    if data.raw_blocks:
        baseline = measure_baseline(model, data, batch_size=eval_bs, log=log,
                                    compute_dtype=runtime.compute_dtype)["perplexity"]
    ctx = StepContext(model=model, tokenizer=tokenizer, runtime=runtime, data=data, train_options=cfg.train,
                      baseline=baseline, seed=cfg.train.seed, stopping_strategy=cfg.stopping_strategy,
                      padding_free=cfg.padding_free,
                      tolerances=Tolerances(cfg.maintain_tolerance, cfg.approx_tolerance, cfg.stable_tolerance),
                      info={**model_info, "sources": src.info, "started_from": cfg.from_adapter}, log=log)
    result: dict[str, Any] = {
        "target": cfg.target, "eval_mode": cfg.eval_mode, "eval_data": str(eval_path),
        "eval_questions": len(questions), "baseline_raw_perplexity": baseline, "rounds": [],
        "stop_reason": None, "best_round": None, "best_accuracy": None, "best_adapter": str(out / "best"),
    }

    def score(round_no: int, kind: str, round_dir: Path, info: dict[str, Any] | None) -> float:
        res = evaluate_kormedmcqa(model, tokenizer, questions, mode=cfg.eval_mode, batch_size=cfg.eval_batch_size,
                                  max_new_tokens=cfg.eval_max_new_tokens, chat_template=cfg.templates.mcq_prompt,
                                  compute_dtype=runtime.compute_dtype)
        write_json(round_dir / "kormedmcqa.json", res)
        row = {
            "round": round_no, "kind": kind, "adapter": str(round_dir),
            "accuracy": res["accuracy"], "correct": res["correct"], "total": res["total"],
            "unparseable": res["unparseable"],
            "global_step": info.get("global_step") if info else None,
            "stop_reason": info.get("stop_reason") if info else None,
            "metrics": info.get("metrics_at_stop") if info else None,
        }
        result["rounds"].append(row)
        log(f"[kormed] round {round_no} ({kind}): KorMedMCQA accuracy {res['accuracy']:.2%} "
            f"({res['correct']}/{res['total']}, {res['unparseable']} unparseable)")
        if result["best_accuracy"] is None or res["accuracy"] > result["best_accuracy"]:
            result["best_round"], result["best_accuracy"] = round_no, res["accuracy"]
            _copy_adapter(round_dir, out / "best", {"round": round_no, "kind": kind, "accuracy": res["accuracy"],
                                                    "source": str(round_dir)})
        write_json(out / TABLE_JSON, result)
        with atomic_write(out / TABLE_MD) as fh:
            fh.write(table_markdown({**result, "stop_reason": result["stop_reason"] or "running"}))
        return float(res["accuracy"])

    out.mkdir(parents=True, exist_ok=True)
    if cfg.eval_before:
        start_dir = out / "round00_start"
        save_adapter(model, tokenizer, start_dir, {**ctx.info, "stage": "loop", "round": 0})
        if score(0, "start", start_dir, None) >= cfg.target:
            result["stop_reason"] = StopReason.TARGET_REACHED
    if result["stop_reason"] is None:
        for i, kind in enumerate(round_kinds(cfg.first_round, cfg.max_rounds), start=1):
            step = cfg.dict_round if kind == "dict" else cfg.mcq_round
            round_dir = out / f"round{i:02d}_{kind}"
            info = run_sft_step(ctx, step, name=f"round{i:02d}", out_dir=round_dir,
                                max_steps=cfg.max_steps_per_round,
                                extra_info={"stage_detail": "loop", "round": i, "round_kind": kind})
            ctx.info["started_from"] = str(round_dir)
            accuracy = score(i, kind, round_dir, info)
            if info["stop_reason"] not in (StopReason.CONDITIONS_MET, StopReason.MAX_STEPS):
                result["stop_reason"] = info["stop_reason"]
                break
            if accuracy >= cfg.target:
                result["stop_reason"] = StopReason.TARGET_REACHED
                break
        result["stop_reason"] = result["stop_reason"] or StopReason.MAX_ROUNDS
    if result["best_round"] is None:  # pragma: no cover - every path scores at least once
        raise KormedError("no round was scored")
    write_json(out / TABLE_JSON, result)
    with atomic_write(out / TABLE_MD) as fh:
        fh.write(table_markdown(result))
    log(f"[kormed] loop: {result['stop_reason']}; best round {result['best_round']} "
        f"({result['best_accuracy']:.2%}) in {out / 'best'}")
    return result
