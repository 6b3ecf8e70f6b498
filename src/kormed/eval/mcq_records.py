"""What both KorMedMCQA backends (kormed's own modes and lm-eval's task) record per question and per group: kept
below both (`kormed.eval.kormedmcqa` dispatches to `kormed.eval.harness`, which fills the same records)."""

from __future__ import annotations

from typing import Any

from kormed.records import MCQ

HARNESS_VERSION = "kormedmcqa 3.0"  # the lm-evaluation-harness task version kormed's generate mode reproduces


def device_of(model: Any) -> Any:
    return next(model.parameters()).device


def year_key(mcq: MCQ) -> str:
    return str(mcq.year) if mcq.year is not None else "unknown"


def summarise(records: list[dict[str, Any]], key: str) -> dict[str, dict[str, float | int]]:
    groups: dict[str, list[bool]] = {}
    for rec in records:
        groups.setdefault(rec[key], []).append(rec["correct"])
    return {
        name: {"accuracy": sum(v) / len(v), "correct": sum(v), "total": len(v)} for name, v in sorted(groups.items())
    }


def base_record(mcq: MCQ, prompt: str) -> dict[str, Any]:
    return {"prompt": prompt, "answer": mcq.answer_letter, "subset": mcq.subset or "unknown",
            "year": year_key(mcq), "source": mcq.source}
