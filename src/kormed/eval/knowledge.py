"""`kormed eval knowledge`: does the model know the user's dictionary? Multiple choice built from the medical and
symbol dictionaries, in forms no training stage uses.

Forms (each question: the right entry and 4 distractors drawn from other entries of the same dictionary, seeded;
options with the same text as another are never drawn):

- `term_to_definition`: a term, its definition among 5 (medical: the Korean part of the definition, or the English
  name when the definition has no Korean; symbols: the English description);
- `definition_to_term`: a definition, its term among 5;
- `english_to_korean`: the English name of a medical term (`Hypertension. ...`), the Korean term among 5.

CPT reads dictionary sentences (`고혈압(Hypertension)은 ...을 의미한다.`) and SFT/the loop generate a definition
after `Meaning of word 고혈압:`; none of them sees a choice among options, so a score here is knowledge carried
over, not a trained format. Questions are scored by letter log-likelihood under the 5 cyclic option rotations
(:mod:`kormed.eval.kormedmcqa`, the letter prior removed) and reported as accuracy with a Wilson interval per form.

Two disjoint sets of forms: `dev` and `test` word each question differently and draw other distractors (dev for
selection, test reported once). With `--heldout FILE` (the dictionary entries `kormed prepare` held out of every
training stage, `prepare.dict_holdout`), questions on trained and held-out entries are reported separately: the
held-out ones are the control.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from kormed.errors import KormedError
from kormed.eval.config import DEFAULT_KNOWLEDGE_SCORING, KNOWLEDGE_SCORINGS, eval_inputs
from kormed.io import check_output_path, read_json, write_json
from kormed.prepare.render import split_definition
from kormed.records import LETTERS, MCQ, DictEntry, read_dictionary

# The metric name of dictionary knowledge (trained entries, dev forms) in SFT/loop stop conditions and eval logs.
DEV_KNOWLEDGE = "eval_dev_knowledge"
FORMS = ("term_to_definition", "definition_to_term", "english_to_korean")
SPLITS = ("dev", "test")
# Question wording per split and form: the two splits never share one.
WORDING: dict[str, dict[str, dict[str, str]]] = {
    "medical": {
        "dev": {"term_to_definition": "다음 의학 용어의 뜻으로 옳은 것은? {term}",
                "definition_to_term": "다음 뜻을 가진 의학 용어는? {definition}",
                "english_to_korean": "다음 영어 의학 용어에 해당하는 한국어 용어는? {english}"},
        "test": {"term_to_definition": "용어 '{term}'의 뜻을 고르시오.",
                 "definition_to_term": "다음 설명에 해당하는 용어를 고르시오: {definition}",
                 "english_to_korean": "영어 용어 '{english}'에 해당하는 우리말 용어를 고르시오."},
    },
    "symbol": {
        "dev": {"term_to_definition": "다음 의학 기호의 뜻으로 옳은 것은? {term}",
                "definition_to_term": "다음 뜻을 나타내는 의학 기호는? {definition}"},
        "test": {"term_to_definition": "의학 기호 '{term}'의 의미를 고르시오.",
                 "definition_to_term": "다음 의미에 해당하는 기호를 고르시오: {definition}"},
    },
}
DISTRACTORS = len(LETTERS) - 1
# How each scoring reads in a table (the loop table and `kormed eval knowledge`'s)
SCORING_DESCRIPTIONS = {"letter": "letters under 5 cyclic option rotations, chance 20 %",
                        "cloze": "the question alone, each option's text per byte; compare with the held-out entries"}


def _fields(entry: DictEntry, kind: str) -> dict[str, str]:
    """term, definition (as shown in options) and English name of an entry."""
    if kind == "symbol":
        return {"term": entry.term, "definition": entry.definition.strip().rstrip("."), "english": ""}
    english, korean = split_definition(entry.definition)
    return {"term": entry.term, "definition": korean or english, "english": english if korean else ""}


def build_questions(entries: list[DictEntry], kind: str, split: str, *, seed: int = 0,
                    held_out: set[str] | frozenset[str] = frozenset()) -> tuple[list[dict[str, Any]], int]:
    """(questions, skipped) of one dictionary (`kind` medical | symbol) in one split: each question a dict with
    `mcq`, `form`, `term`, `group` (trained | held_out; `held_out` names the held-out terms, none: all trained).
    A question whose form has fewer than 4 distinct other options is skipped and counted."""
    if split not in SPLITS:
        raise KormedError(f"split must be one of {', '.join(SPLITS)}, got {split!r}", field="knowledge_split")
    wording = WORDING[kind][split]
    fields = [_fields(e, kind) for e in entries]
    questions: list[dict[str, Any]] = []
    skipped = 0
    for form, template in wording.items():
        shown, asked = {"term_to_definition": ("definition", "term"), "definition_to_term": ("term", "definition"),
                        "english_to_korean": ("term", "english")}[form]
        for i, f in enumerate(fields):
            if not f[asked] or not f[shown]:
                continue
            rand = random.Random(f"kormed-knowledge:{seed}:{split}:{kind}:{form}:{f['term']}")
            others = sorted({g[shown] for j, g in enumerate(fields) if j != i and g[shown] and g[shown] != f[shown]})
            if len(others) < DISTRACTORS:
                skipped += 1
                continue
            options = rand.sample(others, DISTRACTORS)
            answer = rand.randrange(len(LETTERS))
            options.insert(answer, f[shown])
            mcq = MCQ(question=template.format(**f), options=tuple(options), answer=answer + 1,  # type: ignore[arg-type]
                      subject=f"{kind}:{form}", source=f"{kind}:{f['term']}")
            questions.append({"mcq": mcq, "form": f"{kind}:{form}", "term": f["term"],
                              "group": "held_out" if f["term"] in held_out else "trained"})
    return questions, skipped


def sample_per_group(questions: list[dict[str, Any]], per_group: int | None, seed: int) -> list[dict[str, Any]]:
    """At most `per_group` questions of each (form, group), a seeded choice by term (None: all), in their order.

    A full dictionary gives ~5 questions an entry, each scored under 5 rotations: a sample keeps a per-round
    check (the loop) or an eval stage within minutes while every form and group stays measured."""
    if per_group is None:
        return questions
    by_group: dict[tuple[str, str], list[int]] = {}
    for i, q in enumerate(questions):
        by_group.setdefault((q["form"], q["group"]), []).append(i)
    keep: set[int] = set()
    for (form, group), idx in by_group.items():
        rand = random.Random(f"kormed-knowledge-sample:{seed}:{form}:{group}")
        keep.update(idx if len(idx) <= per_group else rand.sample(idx, per_group))
    return [q for i, q in enumerate(questions) if i in keep]


def read_heldout(path: str | Path) -> dict[str, list[DictEntry]]:
    """The held-out record of `kormed prepare` (`{"medical_dict": [...], "char_dict": [...], ...}`)."""
    data = read_json(Path(path), what="held-out dictionary record")
    if not isinstance(data, dict):
        raise KormedError("expected a JSON object with medical_dict and char_dict lists", path=path)
    out: dict[str, list[DictEntry]] = {}
    for name in ("medical_dict", "char_dict"):
        rows = data.get(name, [])
        if not isinstance(rows, list) or not all(isinstance(r, dict) and isinstance(r.get("term"), str)
                                                 and isinstance(r.get("definition"), str) for r in rows):
            raise KormedError("expected a list of {term, definition} objects", path=path, field=name)
        out[name] = [DictEntry(r["term"].strip(), r["definition"].strip(), source=f"{path}:{name}") for r in rows]
    return out


def knowledge_dictionaries(dict_path: str | None, char_dict: str | None, heldout: str | None = None
                           ) -> tuple[dict[str, list[DictEntry]], dict[str, set[str]]]:
    """(dictionaries, held-out terms) as `kormed eval knowledge` scores them: the entries of the medical and symbol
    dictionaries (`medical`, `symbol`), plus, with `heldout` (prepare's record), its entries added to the pool of
    a dictionary that is given and named as held out (every other entry is a trained one)."""
    dictionaries = {"medical": read_dictionary(dict_path)[0] if dict_path else [],
                    "symbol": read_dictionary(char_dict)[0] if char_dict else []}
    held: dict[str, set[str]] = {}
    if heldout:
        record = read_heldout(heldout)
        for kind, name in (("medical", "medical_dict"), ("symbol", "char_dict")):
            held[kind] = {e.term for e in record[name]}
            known = {e.term for e in dictionaries[kind]}
            # the trained subset prepare wrote does not hold the held-out entries: add them (same question pool)
            dictionaries[kind] += [e for e in record[name] if e.term not in known] if dictionaries[kind] else []
    return dictionaries, held


def summarise(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Accuracy, Wilson 95 % interval and mean margin per form and group (and per group over all forms)."""
    from kormed.eval.kormedmcqa import wilson_interval

    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(f"{r['form']}/{r['group']}", []).append(r)
        groups.setdefault(f"all/{r['group']}", []).append(r)
    out = {}
    for name, rows in sorted(groups.items()):
        correct = sum(r["correct"] for r in rows)
        low, high = wilson_interval(correct, len(rows))
        out[name] = {"accuracy": correct / len(rows), "correct": correct, "total": len(rows),
                     "ci95": [low, high], "mean_margin": sum(r["margin"] for r in rows) / len(rows)}
    return out


def plan_questions(dictionaries: dict[str, list[DictEntry]], *, split: str, seed: int = 0,
                   held_out: dict[str, set[str]] | None = None,
                   per_group: int | None = None) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """(questions, skipped per dictionary): what :func:`evaluate_knowledge` scores, built without a model."""
    questions: list[dict[str, Any]] = []
    skipped: dict[str, int] = {}
    for kind, entries in dictionaries.items():
        if entries:
            qs, skipped[kind] = build_questions(entries, kind, split, seed=seed,
                                                held_out=(held_out or {}).get(kind, set()))
            questions += qs
    if not questions:
        raise KormedError("no knowledge question could be built (each form needs 5 entries with distinct options)")
    return sample_per_group(questions, per_group, seed), skipped


def scoring_settings(scoring: str) -> tuple[str, str]:
    """(kormedmcqa mode, permutations) of a knowledge `scoring`."""
    if scoring not in KNOWLEDGE_SCORINGS:
        raise KormedError(f"knowledge scoring must be one of {', '.join(KNOWLEDGE_SCORINGS)}, got {scoring!r}",
                          field="knowledge_scoring")
    return KNOWLEDGE_SCORINGS[scoring]


def evaluate_knowledge(model: Any, tokenizer: Any, dictionaries: dict[str, list[DictEntry]], *, split: str,
                       seed: int = 0, held_out: dict[str, set[str]] | None = None, batch_size: int = 8,
                       per_group: int | None = None, progress: bool = True,
                       compute_dtype: str | None = None, scoring: str = DEFAULT_KNOWLEDGE_SCORING) -> dict[str, Any]:
    """Score the questions of `dictionaries` (`medical`, `symbol`: entries, trained and held-out together);
    `per_group`: at most this many questions per form and entry group (:func:`sample_per_group`); `scoring`:
    letter | cloze (:data:`kormed.eval.config.KNOWLEDGE_SCORINGS`)."""
    from kormed.eval.kormedmcqa import evaluate_kormedmcqa

    mode, permutations = scoring_settings(scoring)
    questions, skipped = plan_questions(dictionaries, split=split, seed=seed, held_out=held_out, per_group=per_group)
    res = evaluate_kormedmcqa(model, tokenizer, [q["mcq"] for q in questions], mode=mode,
                              permutations=permutations, batch_size=batch_size, progress=progress,
                              compute_dtype=compute_dtype)
    records = [{"form": q["form"], "term": q["term"], "group": q["group"], "question": q["mcq"].question,
                "options": list(q["mcq"].options), "answer": q["mcq"].answer_letter, "extracted": r["extracted"],
                "correct": r["correct"], "margin": r["margin"]}
               for q, r in zip(questions, res["questions"], strict=True)]
    return {"split": split, "seed": seed, "scoring": scoring, "permutations": permutations, "per_group": per_group,
            "questions_total": len(records),
            "skipped": skipped, "summary": summarise(records), "questions": records}


def format_table(result: dict[str, Any]) -> str:
    """One line per form and group: accuracy, interval, count, mean margin."""
    scoring = result.get("scoring", "letter")
    lines = [f"dictionary knowledge ({result['split']} forms, {scoring}: {SCORING_DESCRIPTIONS[scoring]})",
             f"  {'form / entries':<40} {'accuracy':>8} {'95% CI':>13} {'n':>5} {'margin':>8}"]
    for name, s in result["summary"].items():
        lo, hi = s["ci95"]
        lines.append(f"  {name:<40} {s['accuracy'] * 100:7.1f}% {f'{lo:.3f}-{hi:.3f}':>13} {s['total']:>5} "
                     f"{s['mean_margin']:>8.3f}")
    return "\n".join(lines)


def read_inputs(cfg: Any) -> tuple[dict[str, list[DictEntry]], dict[str, set[str]]]:
    """(dictionaries, held-out terms) of `cfg` (`dict`, `char_dict`, `heldout`), read and checked before any model
    loads: the held-out entries join the question pool (the trained subset prepare wrote does not hold them)."""
    if not cfg.dict and not cfg.char_dict:
        raise KormedError("no dictionary given", field="dict", hint="pass --dict medical_dict.json")
    dictionaries, held = knowledge_dictionaries(cfg.dict, cfg.char_dict, cfg.heldout)
    return dictionaries, held


def run_knowledge(cfg: Any, *, progress: bool = True, log: Any = print) -> dict[str, Any]:
    """`kormed eval knowledge`: load the model (+ adapter) and the dictionaries, score, write `cfg.output`."""
    from kormed.models import load_model_and_tokenizer, pick_runtime

    if cfg.output:
        check_output_path(cfg.output, "file", "--output", inputs=eval_inputs(cfg))  # before any work
    dictionaries, held = read_inputs(cfg)
    runtime = pick_runtime(cfg.device, cfg.dtype)
    model, tokenizer, runtime = load_model_and_tokenizer(cfg.model, adapter=cfg.adapter, runtime=runtime, log=log)
    return score_loaded(cfg, model, tokenizer, runtime, dictionaries, held, progress=progress)


def score_loaded(cfg: Any, model: Any, tokenizer: Any, runtime: Any, dictionaries: dict[str, list[DictEntry]],
                 held: dict[str, set[str]], *, progress: bool = True) -> dict[str, Any]:
    """Score with an already loaded model (the eval stage swaps adapters on one load) and write `cfg.output` when
    set: the numbers and bytes of :func:`run_knowledge`."""
    result = evaluate_knowledge(model, tokenizer, dictionaries, split=cfg.knowledge_split, seed=cfg.knowledge_seed,
                                held_out=held, batch_size=cfg.batch_size, per_group=cfg.knowledge_per_group,
                                progress=progress, scoring=cfg.knowledge_scoring,
                                compute_dtype=runtime.compute_dtype)
    result.update(model=cfg.model or "embedded:gemma3-270m", adapter=cfg.adapter, dict=cfg.dict,
                  char_dict=cfg.char_dict, heldout=cfg.heldout)
    if cfg.output:
        write_json(cfg.output, result)
    return result


def show(result: dict[str, Any], cfg: Any) -> None:
    """The per-form accuracy table (trained vs held-out entries) and the result file."""
    import typer

    typer.echo(format_table(result))
    if cfg.output:
        typer.echo(f"wrote {cfg.output}")
