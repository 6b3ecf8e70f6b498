"""`kormed eval kormedmcqa` and `kormed eval ppl` (thin wrappers; torch is imported only inside the commands)."""

from __future__ import annotations

from typing import Any

import typer


def _config(config: str | None, overrides: dict[str, Any]) -> Any:
    from kormed.config import load_config

    return load_config("eval", config, overrides)


def register(app: typer.Typer, subapps: dict[str, typer.Typer]) -> None:
    ev = subapps["eval"]

    @ev.command("kormedmcqa")
    def kormedmcqa(
        config: str = typer.Option(None, "--config", help="YAML file; its `eval` section sets defaults."),
        model: str = typer.Option(None, "--model", help="Base or merged model (hub id or dir); default: embedded."),
        adapter: str = typer.Option(None, "--adapter", help="kormed adapter directory to load on the base."),
        data: str = typer.Option(None, "--data", help="Test JSONL in the KorMedMCQA schema."),
        fewshot_file: str = typer.Option(None, "--fewshot-file", help="Few-shot JSONL (the `fewshot` split)."),
        num_fewshot: int = typer.Option(None, "--num-fewshot", help="Few-shot examples per question (default 0)."),
        mode: str = typer.Option(None, "--mode", help="generate (harness v3.0) | loglik | chat."),
        loglik_target: str = typer.Option(None, "--loglik-target", help="loglik: score the letter or the text."),
        output: str = typer.Option(None, "--output", help="Write the result JSON here (atomically)."),
        limit: int = typer.Option(None, "--limit", help="Only the first N questions."),
        subset: str = typer.Option(None, "--subset", help="Subset name for records without exam_type/subject."),
        device: str = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N."),
        dtype: str = typer.Option(None, "--dtype", help="auto | float32 | bfloat16 (auto: bf16 where native)."),
        batch_size: int = typer.Option(None, "--batch-size", help="Questions per batch."),
        max_new_tokens: int = typer.Option(None, "--max-new-tokens", help="Generation limit (harness: 1024)."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    ) -> None:
        """KorMedMCQA accuracy: overall, per subset, per year, unparseable answers; a table and a JSON file."""
        from kormed.eval.kormedmcqa import format_table, run_kormedmcqa

        cfg = _config(config, dict(
            model=model, adapter=adapter, data=data, fewshot_file=fewshot_file, num_fewshot=num_fewshot,
            mode=mode, loglik_target=loglik_target, output=output, limit=limit, subset=subset, device=device,
            dtype=dtype,
            batch_size=batch_size, max_new_tokens=max_new_tokens,
        ))
        result = run_kormedmcqa(cfg, progress=not quiet, log=lambda m: typer.echo(m, err=True))
        typer.echo(format_table(result))
        if cfg.output:
            typer.echo(f"wrote {cfg.output}")

    @ev.command("ppl")
    def ppl(
        config: str = typer.Option(None, "--config", help="YAML file; its `eval` section sets defaults."),
        model: str = typer.Option(None, "--model", help="Base or merged model (hub id or dir); default: embedded."),
        adapter: str = typer.Option(None, "--adapter", help="kormed adapter directory to load on the base."),
        data: str = typer.Option(None, "--data", help="JSONL of raw text, one {\"text\": ...} per line."),
        max_length: int = typer.Option(None, "--max-length", help="Block length in tokens (as cpt.max_length)."),
        eod_token: str = typer.Option(None, "--eod-token", help="End-of-document token (as in CPT)."),
        text_field: str = typer.Option(None, "--text-field", help="JSONL field holding the text."),
        limit: int = typer.Option(None, "--limit", help="Only the first N texts."),
        device: str = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N."),
        dtype: str = typer.Option(None, "--dtype", help="auto | float32 | bfloat16 (auto: bf16 where native)."),
        batch_size: int = typer.Option(None, "--batch-size", help="Blocks per forward pass."),
        output: str = typer.Option(None, "--output", help="Write the result JSON here (atomically)."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    ) -> None:
        """Token-weighted loss and perplexity on held-out raw text, over blocks packed exactly as CPT packs them."""
        from kormed.eval.perplexity import run_perplexity

        cfg = _config(config, dict(
            model=model, adapter=adapter, data=data, max_length=max_length, eod_token=eod_token,
            text_field=text_field, limit=limit, device=device, dtype=dtype, batch_size=batch_size,
            output=output,
        ))
        result = run_perplexity(cfg, progress=not quiet, log=lambda m: typer.echo(m, err=True))
        typer.echo(
            f"perplexity {result['perplexity']:.4f}  loss {result['loss']:.4f}  "
            f"({result['tokens']} predicted tokens, {result['blocks']} blocks of <= {result['max_length']}, "
            f"{result['documents']} texts)"
        )
        if cfg.output:
            typer.echo(f"wrote {cfg.output}")
