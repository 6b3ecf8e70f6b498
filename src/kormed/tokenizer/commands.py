"""How `kormed tokenizer extend` prints its result (the command itself is a row of kormed.cli.COMMANDS)."""

from __future__ import annotations

from typing import Any

import typer

from kormed.tokenizer.report import format_report


def show(report: dict[str, Any], cfg: Any) -> None:
    """The efficiency report table and where the tokenizer went."""

    typer.echo(format_report(report))
    typer.echo(f"extended tokenizer and tokenizer_report.json written to {cfg.out}")
