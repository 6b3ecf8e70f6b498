"""The input records every stage shares: KorMedMCQA questions and dictionary entries, validated on read.

Errors name the file, the line and the field. With `skip_bad=True` a bad record is skipped instead, and
counted with its reason in the returned `SkipReport` so nothing is lost silently.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kormed.errors import KormedError
from kormed.io import iter_jsonl, read_json

LETTERS = ("A", "B", "C", "D", "E")
HANGUL_SYLLABLE = re.compile("[\uac00-\ud7a3]")


@dataclass(frozen=True)
class MCQ:
    """One KorMedMCQA question. `answer` is 1-5 (1 = A). `exam_type` may be absent in the public dataset."""

    question: str
    options: tuple[str, str, str, str, str]
    answer: int
    cot: str = ""
    subject: str = ""
    year: int | None = None
    period: int | None = None
    q_number: int | None = None
    exam_type: str = ""
    source: str = ""  # "file:line"

    @property
    def answer_letter(self) -> str:
        return LETTERS[self.answer - 1]

    @property
    def answer_text(self) -> str:
        return self.options[self.answer - 1]

    @property
    def subset(self) -> str:
        """The exam (doctor / nurse / pharm / dentist): `exam_type` when present, else `subject`."""
        return self.exam_type or self.subject


@dataclass(frozen=True)
class DictEntry:
    """One `{term, definition}` entry of the medical or the symbol dictionary."""

    term: str
    definition: str
    source: str = ""


def strip_final_period(text: str) -> str:
    return text.strip().rstrip(".。").rstrip()


def split_definition(definition: str) -> tuple[str, str]:
    """Split 'Hypertension. 혈압이 정상 범위보다 높은 상태' into ('Hypertension', '혈압이 정상 범위보다 높은 상태').

    The English name is the longest prefix without Hangul that ends at a '. ' after which Hangul follows;
    a definition without such a prefix gives ('', definition) when it contains Hangul, else (definition, '').
    """
    d = definition.strip()
    if not HANGUL_SYLLABLE.search(d):
        return strip_final_period(d), ""
    english, korean = "", d
    for m in re.finditer(r"\.\s+", d):
        left, right = d[: m.start()].strip(), d[m.end() :].strip()
        if HANGUL_SYLLABLE.search(left):
            break
        if re.search("[A-Za-z]", left) and HANGUL_SYLLABLE.search(right):
            english, korean = left, right
    return english, strip_final_period(korean)


@dataclass
class SkipReport:
    """Records skipped because the user asked to skip bad input, counted by reason."""

    path: str = ""
    reasons: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def add(self, error: KormedError) -> None:
        self.reasons[error.message if not error.field else f"{error.field}: {error.message}"] += 1
        if len(self.examples) < 5:
            self.examples.append(str(error))

    @property
    def total(self) -> int:
        return sum(self.reasons.values())

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "skipped": self.total, "reasons": dict(self.reasons), "examples": self.examples}


def _text_field(rec: dict[str, Any], name: str, path: Path, line: int | None, *, required: bool = True) -> str:
    if name not in rec or rec[name] is None:
        if required:
            raise KormedError("missing field", path=path, line=line, field=name)
        return ""
    value = rec[name]
    if not isinstance(value, str):
        raise KormedError(f"expected a string, got {type(value).__name__}", path=path, line=line, field=name)
    if required and not value.strip():
        raise KormedError("empty text", path=path, line=line, field=name)
    return value


def _int_field(rec: dict[str, Any], name: str, path: Path, line: int | None) -> int | None:
    """A JSON integer, or None when absent/null. Only a JSON integer is accepted: a string ("2", "²", "--2")
    or a number with a fraction part (2.0) is an error (a counted skip under --skip-bad), never coerced.
    An empty string counts as absent (the field is optional metadata)."""
    value = rec.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    kind = "a string" if isinstance(value, str) else "true/false" if isinstance(value, bool) else (
        "a number with a fraction part" if isinstance(value, float) else f"a JSON {type(value).__name__}")
    shown = json.dumps(value, ensure_ascii=False) if isinstance(value, str | float | bool) else repr(value)
    raise KormedError(f"expected a JSON integer such as 2, got {kind} ({shown})", path=path, line=line, field=name)


def parse_mcq(rec: dict[str, Any], path: Path, line: int | None) -> MCQ:
    """Validate one KorMedMCQA record (seeds' schema with exam_type, or the public one without)."""
    question = _text_field(rec, "question", path, line)
    options = tuple(_text_field(rec, letter, path, line) for letter in LETTERS)
    if "answer" not in rec:
        raise KormedError("missing field", path=path, line=line, field="answer")
    answer = _int_field(rec, "answer", path, line)
    if answer is None or not 1 <= answer <= 5:
        raise KormedError(f"answer must be 1-5 (1 = A), got {rec['answer']!r}", path=path, line=line, field="answer")
    return MCQ(
        question=question,
        options=options,  # type: ignore[arg-type]
        answer=answer,
        cot=_text_field(rec, "cot", path, line, required=False),
        subject=str(rec.get("subject") or ""),
        year=_int_field(rec, "year", path, line),
        period=_int_field(rec, "period", path, line),
        q_number=_int_field(rec, "q_number", path, line),
        exam_type=str(rec.get("exam_type") or ""),
        source=f"{path}:{line}",
    )


def read_mcq_jsonl(
    path: str | Path, *, skip_bad: bool = False, default_subset: str | None = None
) -> tuple[list[MCQ], SkipReport]:
    """Read a KorMedMCQA JSONL file. `default_subset` names the exam when records carry neither field."""
    p = Path(path)
    report = SkipReport(path=str(p))
    out: list[MCQ] = []
    records = iter_jsonl(p, what="KorMedMCQA file")
    while True:
        try:
            item = next(records)
        except StopIteration:
            break
        except KormedError as exc:
            # A malformed line: skippable, and reading continues with the next line.
            if not skip_bad or exc.line is None:
                raise
            report.add(exc)
            records = iter_jsonl(p, what="KorMedMCQA file", start=exc.line + 1)
            continue
        line, rec = item
        try:
            mcq = parse_mcq(rec, p, line)
        except KormedError as exc:
            if not skip_bad:
                raise
            report.add(exc)
            continue
        if default_subset and not mcq.subset:
            mcq = MCQ(**{**mcq.__dict__, "exam_type": default_subset})
        out.append(mcq)
    if not out:
        raise KormedError("no usable questions in the file", path=p)
    return out, report


def read_dictionary(path: str | Path, *, skip_bad: bool = False) -> tuple[list[DictEntry], SkipReport]:
    """Read a `[{term, definition}]` JSON dictionary (medical terms or medical symbols)."""
    p = Path(path)
    data = read_json(p, what="dictionary file")
    report = SkipReport(path=str(p))
    if not isinstance(data, list):
        raise KormedError("expected a JSON array of {term, definition} objects", path=p)
    out: list[DictEntry] = []
    for index, rec in enumerate(data):
        where = f"[{index}]"
        try:
            if not isinstance(rec, dict):
                raise KormedError(f"expected an object, got {type(rec).__name__}", path=p)
            term = _text_field(rec, "term", p, None)
            definition = _text_field(rec, "definition", p, None)
        except KormedError as exc:
            exc = KormedError(exc.message, path=p, field=f"{where}.{exc.field}" if exc.field else where)
            if not skip_bad:
                raise exc from None
            report.add(exc)
            continue
        out.append(DictEntry(term=term.strip(), definition=definition.strip(), source=f"{p}{where}"))
    if not out:
        raise KormedError("no usable entries in the dictionary", path=p)
    return out, report
