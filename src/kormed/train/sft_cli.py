"""How `kormed train sft` prints its result (the command itself is a row of kormed.cli.COMMANDS)."""

from __future__ import annotations

import sys
from typing import Any

import typer


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
