"""Decontamination: documents that share a long word span with an evaluation question are dropped, and counted.

Text is compared as words: NFKC-normalised and case-folded, every run of letters and digits is a word, and
punctuation and whitespace only separate words, so a copy with other spacing, punctuation or case still matches.
Each evaluation question gives two word sequences: the question, and the question followed by its correct
option. A sequence of at least `n` words adds all its n-grams; a shorter one of at least `min_words` words adds
itself whole (a document must then contain the whole sequence); a shorter one is left out and counted, so a
document is never dropped for sharing fewer than `min_words` words. A training MCQ whose question and correct
option equal an evaluation question's (any length) is contamination too.

Matching is one pass over a document: its words become ids in the evaluation vocabulary (0 for any other word),
the `min_words`-word windows made only of known words are hashed with numpy and looked up in a sorted table of
the spans' first `min_words` words, and each hit is confirmed by comparing the words of the spans that start
there, so a hash collision can never drop a document.
No maintained library does word-n-gram overlap against a fixed question set (datasets' dedup tools are
near-duplicate detectors between documents), hence this short module.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np

from kormed.io import Log, optional_file
from kormed.prepare.clean import FilterSpec, clean_batch
from kormed.records import MCQ, read_mcq_jsonl

_WORD = re.compile(r"[^\W_]+")  # letters and digits of any script (Hangul included)
_SEPARATOR = re.compile(r"[\W_]")
_CHUNK_CHARS = 1 << 20  # words are read a chunk at a time: a 50 MB document never becomes one list of strings
_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier of the polynomial window hash (arithmetic mod 2**64)


def normalise(text: str) -> str:
    """The form compared: NFKC (full-width and compatibility forms unified), case-folded."""
    return unicodedata.normalize("NFKC", text).casefold()


def words(text: str) -> list[str]:
    """The words of `text` as compared (normalised; punctuation and whitespace dropped)."""
    return _WORD.findall(normalise(text))


def _chunks(text: str) -> Iterator[str]:
    """`text` in pieces of about _CHUNK_CHARS, each cut at a non-word character (no word is split)."""
    start = 0
    while start < len(text):
        end = start + _CHUNK_CHARS
        if end < len(text):
            sep = _SEPARATOR.search(text, end)
            end = sep.start() + 1 if sep else len(text)
        yield text[start:end]
        start = end


def _window_hashes(ids: np.ndarray, length: int, starts: np.ndarray) -> np.ndarray:
    h = np.zeros(len(starts), dtype=np.uint64)
    for k in range(length):
        h = h * _BASE + ids[starts + k]
    return h


@dataclass
class EvalSet:
    """One evaluation file as loaded: its name in logs and stats, and what it gave the index."""

    name: str
    path: str
    questions: int = 0
    too_short: int = 0  # questions under min_words words, even with their answer: never matched by span
    skipped: dict[str, Any] = field(default_factory=dict)


class EvalIndex:
    """The word spans of the evaluation questions, and the lookup of a document against them."""

    def __init__(self, n: int, min_words: int) -> None:
        if not 1 <= min_words <= n:
            raise ValueError(f"need 1 <= min_words <= n, got {min_words}, {n}")
        self.n = n
        self.min_words = min_words
        self.sets: list[EvalSet] = []
        self._vocab: dict[str, int] = {}
        self._spans: dict[tuple[int, ...], int] = {}  # span (word ids, min_words..n long) -> eval-set bit mask
        self._lengths: list[int] = []  # the span lengths present, longest first
        self._pairs: dict[tuple[str, ...], int] = {}  # question + answer words -> mask (training MCQ duplicates)
        self._prefixes: np.ndarray | None = None  # sorted hashes of every span's first min_words words (lazy)

    # -- building ---------------------------------------------------------------------------------------------
    def add_set(self, name: str, path: str, questions: list[MCQ], skipped: dict[str, Any] | None = None) -> None:
        """Add one evaluation file's questions (the question, and the question followed by its correct option)."""
        bit = 1 << len(self.sets)
        entry = EvalSet(name, path, len(questions), skipped=skipped or {})
        self.sets.append(entry)
        for q in questions:
            q_words, a_words = words(q.question), words(q.answer_text)
            pair = (*q_words, "\0", *a_words)
            self._pairs[pair] = self._pairs.get(pair, 0) | bit
            used = [self._add_sequence(seq, bit) for seq in (q_words, q_words + a_words)]
            entry.too_short += not any(used)
        self._lengths = sorted({len(span) for span in self._spans}, reverse=True)
        self._prefixes = None

    def add_documents(self, named: list[tuple[str, str]]) -> None:
        """Add whole documents, each as its own set named `name` (so `match_all` says which documents a text
        shares a span with): held-out text checked against training text, as the bills fetch script does."""
        for name, text in named:
            bit = 1 << len(self.sets)
            self.sets.append(EvalSet(name, name, 1))
            if not self._add_sequence(words(text), bit):
                self.sets[-1].too_short = 1
        self._lengths = sorted({len(span) for span in self._spans}, reverse=True)
        self._prefixes = None

    def _add_sequence(self, seq: list[str], bit: int) -> bool:
        if len(seq) < self.min_words:
            return False
        ids = tuple(self._vocab.setdefault(w, len(self._vocab) + 1) for w in seq)
        length = min(len(ids), self.n)
        for i in range(len(ids) - length + 1):
            span = ids[i : i + length]
            self._spans[span] = self._spans.get(span, 0) | bit
        return True

    def _prefix_table(self) -> np.ndarray:
        if self._prefixes is None:
            k = self.min_words
            heads = np.array([span[:k] for span in self._spans], dtype=np.uint64).reshape(-1, k)
            self._prefixes = np.unique(_window_hashes(heads.reshape(-1), k, np.arange(len(heads)) * k))
        return self._prefixes

    # -- matching ---------------------------------------------------------------------------------------------
    def match(self, text: str) -> int:
        """The bit mask of the evaluation sets `text` shares a span with (0: clean). One pass over the text: every
        span begins with min_words words, so only the windows of that length are hashed and looked up, and the
        few hits are checked against the spans of each length starting there."""
        return next(self._hits(text), 0)

    def match_all(self, text: str) -> int:
        """The union of the masks of every span of `text` found (`match` stops at the first)."""
        mask = 0
        for hit in self._hits(text):
            mask |= hit
        return mask

    def _hits(self, text: str) -> Iterator[int]:
        """The masks of the spans of `text` found, by position (the longest span at each start)."""
        if not self._spans:
            return
        get = self._vocab.get
        parts = []
        for chunk in _chunks(normalise(text)):
            found = _WORD.findall(chunk)
            parts.append(np.fromiter(map(get, found, repeat(0)), dtype=np.uint64, count=len(found)))
        ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
        k = self.min_words
        windows = len(ids) - k + 1
        if windows <= 0:
            return
        unknown = np.concatenate(([0], np.cumsum(ids == 0)))
        starts = np.flatnonzero(unknown[k:] == unknown[:windows])  # windows made only of evaluation words
        if not len(starts):
            return
        hashes = _window_hashes(ids, k, starts)
        table = self._prefix_table()
        where = np.minimum(np.searchsorted(table, hashes), len(table) - 1)
        for s in starts[table[where] == hashes].tolist():
            for length in self._lengths:
                mask = self._spans.get(tuple(ids[s : s + length].tolist())) if s + length <= len(ids) else None
                if mask:  # the words themselves equal: a hash collision never matches
                    yield mask
                    break

    def match_mcq(self, question: MCQ) -> int:
        """The mask of the evaluation sets holding this question with this correct option (a duplicate)."""
        return self._pairs.get((*words(question.question), "\0", *words(question.answer_text)), 0)

    def names(self, mask: int) -> list[str]:
        return [s.name for i, s in enumerate(self.sets) if mask >> i & 1]


class Decontaminator:
    """Checks documents of each source against an `EvalIndex` and counts what it drops (documents, characters
    before multipliers, and which evaluation sets matched)."""

    def __init__(self, index: EvalIndex) -> None:
        self.index = index
        self.documents: Counter[str] = Counter()
        self.characters: Counter[str] = Counter()
        self.by_set: Counter[str] = Counter()

    def contaminated(self, source: str, text: str, question: MCQ | None = None) -> bool:
        """Whether `text` (of `source`; `question` for a training MCQ) is contaminated; counted if it is."""
        mask = (self.index.match_mcq(question) if question is not None else 0) or self.index.match(text)
        return self.count(source, text, mask)

    def count(self, source: str, text: str, mask: int) -> bool:
        """Count `text` of `source` as contaminated if `mask` (of `EvalIndex.match`) is not 0; whether it is."""
        if not mask:
            return False
        self.documents[source] += 1
        self.characters[source] += len(text)
        for name in self.index.names(mask):
            self.by_set[name] += 1
        return True

    def stats(self, missing: list[str]) -> dict[str, Any]:
        """The `decontamination` section of the stats file."""
        return {
            "enabled": True,
            "ngram": self.index.n,
            "min_words": self.index.min_words,
            "eval_sets": [{**s.__dict__, "matched_documents": self.by_set[s.name]} for s in self.index.sets],
            "missing_eval_sets": missing,
            "documents": sum(self.documents.values()),
            "characters": sum(self.characters.values()),
            "by_source": {
                name: {"documents": self.documents[name], "characters": self.characters[name]}
                for name in self.documents
            },
        }

    def summary(self) -> str:
        """One log line: how many documents were dropped, by source and by the evaluation set matched."""
        if not self.documents:
            return "decontamination: no document matched an evaluation question"
        total = sum(self.documents.values())
        sources = ", ".join(f"{n} {c:,}" for n, c in self.documents.items())
        sets = ", ".join(f"{n} {c:,}" for n, c in self.by_set.items())
        return (
            f"decontamination: dropped {total:,} document(s) ({sum(self.characters.values()):,} characters) "
            f"matching an evaluation question ({sources}); matched {sets}"
        )


def load_index(
    paths: list[Path], *, n: int, min_words: int, skip_bad: bool, log: Log
) -> tuple[EvalIndex, list[str]]:
    """The index of the evaluation files that exist, and the paths of those that do not (reported, skipped).
    Each set is named by its file name (its path when two share a name)."""
    index = EvalIndex(n, min_words)
    missing: list[str] = []
    for path in paths:
        if optional_file(path, "evaluation set", field="prepare.decontam_eval_sets") is None:
            missing.append(str(path))
            continue
        questions, report = read_mcq_jsonl(path, skip_bad=skip_bad)
        taken = [s.name for s in index.sets]
        name = path.name if path.name not in taken else str(path)
        index.add_set(name, str(path), questions, report.to_dict() if report.total else None)
        if report.total:
            log(f"decontamination: skipped {report.total} bad record(s) of {path}: {dict(report.reasons)}")
    if index.sets:
        used = ", ".join(f"{s.name} {s.questions:,}" for s in index.sets)
        line = f"decontamination: questions from {used} (spans of {n} words"
        short = sum(s.too_short for s in index.sets)
        line += f"; {short:,} under {min_words} words even with the answer: only exact MCQ repeats)" if short else ")"
    else:
        line = "decontamination: no evaluation set found, nothing to check against"
    if missing:
        line += f"; not found, skipped: {', '.join(missing)}"
    log(line)
    return index, missing


# The index a cleaning worker process checks its kept documents against: set once per worker by `init_worker`
# (Pool initializer), so it is not pickled with every batch.
_worker_index: EvalIndex | None = None


def init_worker(index: EvalIndex | None) -> None:
    global _worker_index
    _worker_index = index


def match_cleaned(
    index: EvalIndex | None, results: list[tuple[str | None, str | None]]
) -> list[tuple[str | None, str | None, int]]:
    """`clean_batch` results with each kept document's `EvalIndex.match` mask added (0: clean, or no index)."""
    if index is None:
        return [(text, reason, 0) for text, reason in results]
    return [(text, reason, index.match(text) if text is not None else 0) for text, reason in results]


def clean_and_match(task: tuple[FilterSpec, list[Any], list[Any] | None]) -> list[tuple[str | None, str | None, int]]:
    """The worker-process entry point: clean a batch, then match what is kept (the matching runs in parallel
    with the cleaning, not in the process that writes the corpus)."""
    return match_cleaned(_worker_index, clean_batch(task))
