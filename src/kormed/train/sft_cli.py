"""Commands `kormed train sft` and `kormed train loop` (no torch/transformers imports at module level)."""

from __future__ import annotations

import sys

import typer

from kormed.config import drop_unset


def _echo(message: str) -> None:
    typer.echo(message, err=True)


def register(app: typer.Typer, subapps: dict[str, typer.Typer]) -> None:
    train = subapps["train"]

    @train.command("sft")
    def train_sft(
        config: str = typer.Option(None, "--config", help="YAML file; its `sft:` section applies."),
        mcq: str = typer.Option(None, "--mcq", help="KorMedMCQA training questions (JSONL)."),
        dictionary: str = typer.Option(None, "--dict", help="Medical dictionary JSON ([{term, definition}])."),
        char_dict: str = typer.Option(None, "--char-dict", help="Symbol dictionary JSON (optional)."),
        raw: str = typer.Option(None, "--raw", help="Raw Korean text JSONL ({\"text\": ...} per line)."),
        raw_val: str = typer.Option(None, "--raw-val", help="Held-out raw text JSONL (default: held out of --raw)."),
        from_adapter: str = typer.Option(None, "--from-adapter", help="Start step 1 from this adapter (e.g. CPT)."),
        model: str = typer.Option(None, "--model", help="Hub id or local dir; default: embedded Gemma 3 270M."),
        output: str = typer.Option(None, "--output", help="Output directory (baseline.json, step1/ ... stepN/)."),
        max_steps_per_step: int = typer.Option(None, "--max-steps-per-step", help="Override every step's budget."),
        max_length: int = typer.Option(None, "--max-length", help="Tokens per example (default 512)."),
        device: str = typer.Option(None, "--device", help="auto, cpu or cuda."),
        dtype: str = typer.Option(None, "--dtype", help="auto | float32 | bfloat16 (auto: bf16 on CUDA and on CPUs "
                                  "with native bf16)."),
        padding_free: bool = typer.Option(
            None, "--padding-free/--no-padding-free", help="Training batches without padding (default on)."),
        from_step: int = typer.Option(None, "--from-step", help="Resume at step N from <output>/step{N-1}/."),
        eval_steps: int = typer.Option(None, "--eval-steps", help="Evaluate (and check stop conditions) every N."),
        batch_size: int = typer.Option(None, "--batch-size", help="Sequences per device per micro-batch."),
        grad_accum: int = typer.Option(None, "--grad-accum", help="Gradient accumulation steps."),
        lr: float = typer.Option(None, "--lr", help="Peak learning rate (a step's own lr wins)."),
        seed: int = typer.Option(None, "--seed", help="Seed of splits, mixes, data order and dropout."),
        quantize: str = typer.Option(None, "--quantize", help="none or 4bit (QLoRA: NF4 base, needs bitsandbytes)."),
    ) -> None:
        """Staged chat-format SFT (sft.steps, default the seeds' 4): answer-only loss, ratio mixes, stop conditions."""
        from kormed.config import load_config
        from kormed.train.sft import run_sft

        overrides = drop_unset({
            "mcq": mcq, "dict": dictionary, "char_dict": char_dict, "raw": raw, "raw_val": raw_val,
            "from_adapter": from_adapter, "model": model, "output": output,
            "max_steps_per_step": max_steps_per_step, "max_length": max_length, "from_step": from_step,
            "padding_free": padding_free,
            "train": {"device": device, "dtype": dtype, "eval_steps": eval_steps, "batch_size": batch_size,
                      "grad_accum": grad_accum, "lr": lr, "seed": seed, "quantize": quantize},
        })
        cfg = load_config("sft", config, overrides)
        summary = run_sft(cfg, log=_echo)
        base = summary["baseline"]["raw_perplexity"]
        for row in summary["steps"]:
            m = row.get("metrics_at_stop") or {}
            qa = m.get("eval_qa_loss", float("nan"))
            ppl = m.get("eval_raw_perplexity", float("nan"))
            typer.echo(f"step{row['step']}: {row['stop_reason']} at step {row['global_step']}, qa loss {qa:.4f}, "
                       f"raw ppl {ppl:.4f} ({ppl / base:.3f} x baseline {base:.4f})")
        if not summary["finished"]:
            last = summary["steps"][-1]["step"]
            _echo(f"kormed: step{last} did not finish; continue with the same command plus --from-step {last}")
            sys.exit(130)
        typer.echo(f"sft done; final adapter in {summary['final_adapter']}")

    @train.command("loop")
    def train_loop(
        config: str = typer.Option(None, "--config", help="YAML file; its `loop:` section applies."),
        mcq: str = typer.Option(None, "--mcq", help="KorMedMCQA training questions (JSONL)."),
        dictionary: str = typer.Option(None, "--dict", help="Medical dictionary JSON ([{term, definition}])."),
        char_dict: str = typer.Option(None, "--char-dict", help="Symbol dictionary JSON (optional)."),
        raw: str = typer.Option(None, "--raw", help="Raw Korean text JSONL (optional; reported as perplexity)."),
        raw_val: str = typer.Option(None, "--raw-val", help="Held-out raw text JSONL."),
        eval_data: str = typer.Option(None, "--eval-data", help="KorMedMCQA test questions (reported only)."),
        dev_data: str = typer.Option(None, "--dev-data", help="KorMedMCQA dev questions the best round is chosen on."),
        target: float = typer.Option(None, "--target", help="Stop at this accuracy (0-1, default 0.9)."),
        max_rounds: int = typer.Option(None, "--max-rounds", help="At most N rounds (default 6)."),
        eval_limit: int = typer.Option(None, "--eval-limit", help="Score only the first N questions."),
        eval_mode: str = typer.Option(None, "--eval-mode", help="chat (default), generate or loglik."),
        from_adapter: str = typer.Option(None, "--from-adapter", help="Start from this adapter (e.g. SFT step4)."),
        model: str = typer.Option(None, "--model", help="Hub id or local dir; default: embedded Gemma 3 270M."),
        output: str = typer.Option(None, "--output", help="Output directory (rounds, best/, loop_table.*)."),
        max_steps_per_round: int = typer.Option(None, "--max-steps-per-round", help="Override the round budgets."),
        max_length: int = typer.Option(None, "--max-length", help="Tokens per example (default 512)."),
        device: str = typer.Option(None, "--device", help="auto, cpu or cuda."),
        dtype: str = typer.Option(None, "--dtype", help="auto | float32 | bfloat16 (auto: bf16 on CUDA and on CPUs "
                                  "with native bf16)."),
        padding_free: bool = typer.Option(
            None, "--padding-free/--no-padding-free", help="Training batches without padding (default on)."),
        eval_steps: int = typer.Option(None, "--eval-steps", help="Evaluate (and check stop conditions) every N."),
        lr: float = typer.Option(None, "--lr", help="Peak learning rate (a round's own lr wins)."),
        seed: int = typer.Option(None, "--seed", help="Seed of splits, data order and dropout."),
        quantize: str = typer.Option(None, "--quantize", help="none or 4bit (QLoRA: NF4 base, needs bitsandbytes)."),
    ) -> None:
        """Alternate dictionary and MCQ-with-reasoning SFT rounds until the KorMedMCQA target accuracy."""
        from kormed.config import load_config
        from kormed.train.loop import run_loop

        overrides = drop_unset({
            "mcq": mcq, "dict": dictionary, "char_dict": char_dict, "raw": raw, "raw_val": raw_val,
            "eval_data": eval_data, "dev_data": dev_data, "target": target, "max_rounds": max_rounds,
            "eval_limit": eval_limit,
            "eval_mode": eval_mode, "from_adapter": from_adapter, "model": model, "output": output,
            "max_steps_per_round": max_steps_per_round, "max_length": max_length, "padding_free": padding_free,
            "train": {"device": device, "dtype": dtype, "eval_steps": eval_steps, "lr": lr, "seed": seed,
                      "quantize": quantize},
        })
        cfg = load_config("loop", config, overrides)
        result = run_loop(cfg, log=_echo)
        for row in result["rounds"]:
            test = "" if row["test_accuracy"] is None else f", test {row['test_accuracy']:.2%}"
            typer.echo(f"round {row['round']} ({row['kind']}): dev accuracy {row['dev_accuracy']:.2%} "
                       f"({row['dev_correct']}/{row['dev_total']}){test}")
        best_test = result["best_test_accuracy"]
        typer.echo(f"loop done ({result['stop_reason']}): best round {result['best_round']} selected on "
                   f"{result['selected_on']}: {result['best_dev_accuracy']:.2%}; reported on {result['reported_on']}: "
                   f"{'–' if best_test is None else f'{best_test:.2%}'}; adapter in {result['best_adapter']}")
        if result["stop_reason"] not in ("target_reached", "max_rounds"):
            sys.exit(130)
