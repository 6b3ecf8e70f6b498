"""How `kormed train loop` prints its result (the command itself is a row of kormed.cli.COMMANDS)."""

from __future__ import annotations

import sys
from typing import Any

import typer

from kormed.stop_reason import StopReason


def show(result: dict[str, Any], cfg: Any) -> None:
    """One line per round, then the best round; exit 130 when the loop stopped before its target or last round."""
    for row in result["rounds"]:
        test = "" if row["test_accuracy"] is None else f", test {row['test_accuracy']:.2%}"
        typer.echo(f"round {row['round']} ({row['kind']}): dev accuracy {row['dev_accuracy']:.2%} "
                   f"({row['dev_correct']}/{row['dev_total']}){test}")
    best_test = result["best_test_accuracy"]
    typer.echo(f"loop done ({result['stop_reason']}): best round {result['best_round']} selected on "
               f"{result['selected_on']}: {result['best_dev_accuracy']:.2%}; reported on {result['reported_on']}: "
               f"{'-' if best_test is None else f'{best_test:.2%}'}; adapter in {result['best_adapter']}")
    if result["stop_reason"] not in (StopReason.TARGET_REACHED, StopReason.MAX_ROUNDS):
        sys.exit(130)
