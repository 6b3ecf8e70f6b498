"""Scores already recorded by the loop, reused by the eval stage where they are exactly what it would score.

A score is described by what decides its numbers (:func:`mcq_settings`, :func:`knowledge_settings`): the scoring
settings the result records (mode, permutations, loglik target, shots, generation budget; or the knowledge split,
seed and per-group sample), every item as it was put to the model (each question's prompt and right answer; each
knowledge question's form, term, entry group, wording, options and answer) and the runtime it ran under (device,
compute dtype). The eval stage builds the description of what it is about to score, without a model, and compares
it with the one of a result the loop recorded for the same adapter weights: equal, the recorded result is used
(labelled `reuse.reused_from`); different, the target is scored again and `reuse.why_not` says what differed.

What the loop records today is read as it is written (:class:`kormed.run_files.LoopTable` names the round and its
directory; `<round>/kormedmcqa_test.json` holds the per-question records; `<round>/training_info.json` the runtime).
A knowledge result the loop may record beside it (any `<round>/knowledge*.json` holding per-question records) is
matched by the same rule, so nothing here names a file the loop does not write yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kormed.errors import KormedError
from kormed.io import read_json
from kormed.run_files import LOOP_TABLE, TRAINING_INFO, LoopTable

LOOP_MCQ_FILE = "kormedmcqa_test.json"  # the loop's test score of a round (train/loop.py)
LOOP_KNOWLEDGE_GLOB = "knowledge*.json"
_MCQ_KEYS = ("mode", "permutations", "num_fewshot", "loglik_target", "max_new_tokens", "harness_version")
_KNOWLEDGE_KEYS = ("split", "seed", "scoring", "permutations", "per_group")


def mcq_settings(result: dict[str, Any]) -> dict[str, Any]:
    """What decides a KorMedMCQA result's numbers, from the result itself (its settings and records)."""
    return {"kind": "kormedmcqa", **{k: result.get(k) for k in _MCQ_KEYS},
            "items": [[r.get("prompt"), r.get("answer")] for r in result.get("questions") or []]}


def knowledge_settings(result: dict[str, Any]) -> dict[str, Any]:
    """What decides a knowledge result's numbers, from the result itself (its settings and records)."""
    return {"kind": "knowledge", **{k: result.get(k) for k in _KNOWLEDGE_KEYS},
            "items": [[r.get("form"), r.get("term"), r.get("group"), r.get("question"), list(r.get("options") or []),
                       r.get("answer")] for r in result.get("questions") or []]}


def planned_knowledge(questions: list[dict[str, Any]], *, split: str, seed: int, per_group: int | None,
                      scoring: str) -> dict[str, Any]:
    """:func:`knowledge_settings` of the questions :func:`kormed.eval.knowledge.plan_questions` built, scored by
    `scoring` (:data:`kormed.eval.config.KNOWLEDGE_SCORINGS`)."""
    from kormed.eval.knowledge import scoring_settings

    return knowledge_settings({
        "split": split, "seed": seed, "scoring": scoring, "permutations": scoring_settings(scoring)[1],
        "per_group": per_group,
        "questions": [{"form": q["form"], "term": q["term"], "group": q["group"], "question": q["mcq"].question,
                       "options": list(q["mcq"].options), "answer": q["mcq"].answer_letter} for q in questions]})


def runtime_settings(runtime: Any) -> dict[str, Any]:
    """The part of a runtime that changes the numbers: where and in which precision the matmuls ran."""
    get = runtime.get if isinstance(runtime, dict) else lambda k: getattr(runtime, k, None)
    return {"device": get("device"), "compute_dtype": get("compute_dtype")}


def differences(recorded: dict[str, Any], planned: dict[str, Any]) -> list[str]:
    """What differs between two settings (empty: the same score), in words."""
    out = []
    for key in sorted(set(recorded) | set(planned)):
        a, b = recorded.get(key), planned.get(key)
        if a == b:
            continue
        if key == "items":
            a, b = a or [], b or []
            out.append(f"{len(a)} recorded items, {len(b)} to score" if len(a) != len(b)
                       else f"{sum(x != y for x, y in zip(a, b, strict=True))} of {len(a)} items differ")
        else:
            out.append(f"{key}: {a!r} recorded, {b!r} here")
    return out


@dataclass
class LoopRecord:
    """The loop's record of the round an eval target's adapter is a copy of."""

    table: Path  # loop_table.json
    round: int
    round_dir: Path
    runtime: dict[str, Any] | None

    def label(self, file: Path) -> str:
        return f"{self.table.name} (round {self.round}: {self.round_dir.name}/{file.name})"


def _weights(d: Path) -> list[tuple[str, str]]:
    from kormed.eval.session import model_file_key

    return sorted((p.name, model_file_key(p)) for p in d.glob("*.safetensors"))


def beside_loop_table(adapter: str | Path) -> bool:
    """Whether `adapter` sits in a loop's output directory (a round or best/): its scores may be the loop's."""
    return (Path(adapter).parent / LOOP_TABLE).is_file()


def loop_record(adapter: str | Path) -> tuple[LoopRecord | None, str]:
    """(the loop's record of the round `adapter` was copied from, or None; why not). `adapter` is `loop/best` or a
    round directory; the round counts only when its weights are the adapter's, byte for byte."""
    a = Path(adapter)
    table_file = a.parent / LOOP_TABLE
    if not table_file.is_file():
        return None, f"no {LOOP_TABLE} beside {a}"
    try:
        table = LoopTable.read(table_file)
    except KormedError as exc:
        return None, f"{LOOP_TABLE} unreadable ({exc.message})"
    # the table names round directories by absolute path at the time of the run: found again by name beside it
    rows = {Path(r.adapter).name: r for r in table.rounds if r.adapter}
    if a.name in rows:
        row = rows[a.name]
    else:
        row = next((r for r in table.rounds if r.round == table.best_round and r.adapter), None)
        if row is None:
            return None, f"{LOOP_TABLE} names no best round"
    round_dir = a.parent / Path(str(row.adapter)).name
    weights = _weights(round_dir) if round_dir.is_dir() else []
    if not weights or weights != _weights(a):
        return None, f"the weights of {a.name} are not those of {round_dir.name}"
    info = read_json(round_dir / TRAINING_INFO, what="training info") if (round_dir / TRAINING_INFO).is_file() else {}
    runtime = info.get("runtime") if isinstance(info, dict) and isinstance(info.get("runtime"), dict) else None
    return LoopRecord(table_file, row.round, round_dir, runtime), ""


def find_reusable(record: LoopRecord, kind: str, planned: dict[str, Any],
                  runtime: dict[str, Any]) -> tuple[dict[str, Any] | None, str, str]:
    """(the loop's recorded result of `kind` equal to `planned` under `runtime`, or None; where from; why not)."""
    files = ([record.round_dir / LOOP_MCQ_FILE] if kind == "kormedmcqa"
             else sorted(record.round_dir.glob(LOOP_KNOWLEDGE_GLOB)))
    files = [f for f in files if f.is_file()]
    if not files:
        return None, "", f"the loop recorded no {kind} score for round {record.round}"
    if record.runtime is None or runtime_settings(record.runtime) != runtime:
        return None, "", (f"runtime differs: {runtime_settings(record.runtime or {})} in the loop, {runtime} here")
    why: list[str] = []
    for f in files:
        try:
            recorded = read_json(f, what=f"loop {kind} result")
        except KormedError as exc:
            why.append(f"{f.name} unreadable ({exc.message})")
            continue
        if not isinstance(recorded, dict):
            why.append(f"{f.name} is not a result")
            continue
        settings = mcq_settings(recorded) if kind == "kormedmcqa" else knowledge_settings(recorded)
        diff = differences(settings, planned)
        if not diff:
            return recorded, record.label(f), ""
        why.append(f"{f.name}: " + "; ".join(diff))
    return None, "", "; ".join(why)
