"""How `kormed eval kormedmcqa` and `kormed eval ppl` print their results (the commands are rows of
kormed.cli.COMMANDS)."""

from __future__ import annotations

from typing import Any

import typer

from kormed.eval.kormedmcqa import format_table


def show_kormedmcqa(result: dict[str, Any], cfg: Any) -> None:
    """The accuracy table (overall, per subset, per year) and the result file."""

    typer.echo(format_table(result))
    if cfg.output:
        typer.echo(f"wrote {cfg.output}")


def show_perplexity(result: dict[str, Any], cfg: Any) -> None:
    """Perplexity, loss and what they were measured on."""
    typer.echo(
        f"perplexity {result['perplexity']:.4f}  loss {result['loss']:.4f}  "
        f"({result['tokens']} predicted tokens, {result['blocks']} blocks of <= {result['max_length']}, "
        f"{result['documents']} texts)"
    )
    if result.get("bits_per_char") is not None:
        typer.echo(f"bits per character {result['bits_per_char']:.4f}  Hangul bits per Hangul character "
                   f"{result['hangul_bits_per_char']:.4f}  (each text alone, no end-of-text target; "
                   f"{result['characters']:,} characters)")
    if cfg.output:
        typer.echo(f"wrote {cfg.output}")


def show_knowledge(result: dict[str, Any], cfg: Any) -> None:
    """The per-form accuracy table (trained vs held-out entries) and the result file."""
    from kormed.eval.knowledge import format_table as knowledge_table

    typer.echo(knowledge_table(result))
    if cfg.output:
        typer.echo(f"wrote {cfg.output}")
