"""Command `kormed train cpt` (no torch/transformers imports at module level; `kormed export` is in export_cli)."""

from __future__ import annotations

import sys

import typer

from kormed.config import drop_unset
from kormed.stop_reason import StopReason


def register(app: typer.Typer, subapps: dict[str, typer.Typer]) -> None:
    @subapps["train"].command("cpt")
    def train_cpt(
        config: str = typer.Option(None, "--config", help="YAML file; its `cpt:` section (and `tokenizer:`) apply."),
        data: str = typer.Option(None, "--data", help="Training text JSONL ({\"text\": ...} per line)."),
        val: str = typer.Option(None, "--val", help="Held-out validation text JSONL."),
        model: str = typer.Option(None, "--model", help="Hub id or local dir; default: embedded Gemma 3 270M."),
        tokenizer_path: str = typer.Option(None, "--tokenizer-path", help="Extended tokenizer directory."),
        adapter: str = typer.Option(None, "--adapter", help="Continue training this adapter directory."),
        output: str = typer.Option(None, "--output", help="Output dir; default model/00_trained/<model-name>/."),
        max_steps: int = typer.Option(None, "--max-steps", help="Stop after N optimizer steps."),
        max_samples: int = typer.Option(None, "--max-samples", help="Use the first N training documents."),
        epochs: float = typer.Option(None, "--epochs", help="Passes over the training data."),
        max_length: int = typer.Option(None, "--max-length", help="Tokens per packed block (default 512)."),
        batch_size: int = typer.Option(None, "--batch-size", help="Sequences per device per micro-batch."),
        grad_accum: int = typer.Option(None, "--grad-accum", help="Gradient accumulation (single process)."),
        lr: float = typer.Option(None, "--lr", help="Peak learning rate."),
        eval_steps: int = typer.Option(None, "--eval-steps", help="Validate every N optimizer steps."),
        seed: int = typer.Option(None, "--seed", help="Seed of data order, dropout and init."),
        train_embeddings: bool = typer.Option(
            None, "--train-embeddings/--no-train-embeddings", help="Also train the (tied) token embeddings."
        ),
        resume: bool = typer.Option(
            None, "--resume", help="Continue from the newest complete checkpoint in <output> (same data order)."
        ),
        device: str = typer.Option(None, "--device", help="auto, cpu or cuda."),
        dtype: str = typer.Option(None, "--dtype", help="auto | float32 | bfloat16 (auto: bf16 on CUDA and on CPUs "
                                  "with native bf16)."),
        quantize: str = typer.Option(None, "--quantize", help="none or 4bit (QLoRA: NF4 base, needs bitsandbytes)."),
    ) -> None:
        """Continued pretraining with LoRA on packed raw text (validation perplexity, early stopping)."""
        from kormed.config import load_config
        from kormed.train.cpt import run_cpt

        overrides = drop_unset({
            "data": data, "val": val, "model": model, "tokenizer_path": tokenizer_path, "adapter": adapter,
            "output": output, "max_samples": max_samples, "max_length": max_length, "resume": resume,
            "lora": {"train_embeddings": train_embeddings},
            "train": {"max_steps": max_steps, "epochs": epochs, "batch_size": batch_size, "grad_accum": grad_accum,
                      "lr": lr, "eval_steps": eval_steps, "seed": seed, "device": device,
                      "dtype": dtype, "quantize": quantize},
        })
        cfg = load_config("cpt", config, overrides)
        tok_opts = None
        if config is not None:
            try:
                tok_opts = load_config("tokenizer", config)
            except (ImportError, AttributeError):
                tok_opts = None
        info = run_cpt(cfg, tokenizer_options=tok_opts, log=lambda m: typer.echo(m, err=True))
        if info.get("stop_reason") == StopReason.INTERRUPTED:
            typer.echo(
                f"kormed: interrupted at step {info.get('stop_step')}; checkpoint saved under "
                f"{info['output']}/checkpoints. Continue with the same command plus --resume.", err=True,
            )
            sys.exit(130)
        nan = float("nan")
        before = (info.get("first_eval") or {}).get("eval_perplexity", nan)
        after = (info.get("best_eval") or {}).get("eval_perplexity", nan)
        typer.echo(
            f"cpt done ({info['stop_reason']}): {info['global_step']} steps, {info['tokens_seen']} tokens, "
            f"val ppl {before:.3f} -> {after:.3f}; adapter in {info['output']}"
        )
