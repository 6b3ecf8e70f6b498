"""`kormed tokenizer extend`: the Korean-medical extended tokenizer and its efficiency report."""

from __future__ import annotations

from typing import Any

import typer


def register(app: typer.Typer, subapps: dict[str, typer.Typer]) -> None:
    """Add `kormed tokenizer extend` to the `tokenizer` sub-app."""

    @subapps["tokenizer"].command("extend")
    def extend(
        config: str = typer.Option(None, "--config", help="YAML file; its `tokenizer` section sets the defaults."),
        model: str = typer.Option(None, "--model", help="Base model (hub id / dir); default: embedded Gemma 3 270M."),
        corpus: str = typer.Option(None, "--corpus", help="Prepared corpus JSONL ({\"text\": ...} per line)."),
        dict_path: str = typer.Option(None, "--dict", help="Medical dictionary JSON ([{term, definition}])."),
        out: str = typer.Option(None, "--out", help="Output directory for the extended tokenizer and its report."),
        max_new_tokens: int = typer.Option(None, "--max-new-tokens", help="Most new vocabulary entries."),
        max_dict_tokens: int = typer.Option(None, "--max-dict-tokens", help="Most entries spent on dictionary terms."),
        min_frequency: int = typer.Option(None, "--min-frequency", help="Least corpus count of a new merge."),
        method: str = typer.Option(None, "--method", help="bpe (vocab + merges, default) or added_tokens."),
        seed: int = typer.Option(None, "--seed", help="Seed of the held-out split."),
    ) -> None:
        """Extend the base tokenizer with Korean medical terms and frequent Korean words; print the report."""
        from kormed.config import load_config
        from kormed.tokenizer.extend import extend_tokenizer
        from kormed.tokenizer.report import format_report

        overrides: dict[str, Any] = {
            "model": model,
            "corpus": corpus,
            "dict": dict_path,
            "out": out,
            "max_new_tokens": max_new_tokens,
            "max_dict_tokens": max_dict_tokens,
            "min_frequency": min_frequency,
            "method": method,
            "seed": seed,
        }
        cfg = load_config("tokenizer", config, overrides)
        report = extend_tokenizer(cfg, log=lambda m: typer.echo(m, err=True))
        typer.echo(format_report(report))
        typer.echo(f"extended tokenizer and tokenizer_report.json written to {cfg.out}")
