"""How `kormed train cpt` prints its result (the command itself is a row of kormed.cli.COMMANDS)."""

from __future__ import annotations

import sys
from typing import Any

import typer

from kormed.stop_reason import StopReason


def show(info: dict[str, Any], cfg: Any) -> None:
    """Steps, tokens and validation perplexity before -> after; exit 130 (and how to resume) when interrupted."""
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
        f"val ppl {before:.3f} -> {after:.3f}; "
        f"{'model' if info.get('method') == 'full' else 'adapter'} in {info['output']}"
    )
