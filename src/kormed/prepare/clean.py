"""Cleaning and filters for plain-text documents, with every drop counted by reason.

A document goes through: namespace check (Namu Wiki keeps only namespace 0), redirect check (NamuMark), the
source's cleaner (NamuMark parser or the Wikipedia/C4 leftovers cleaner), then the filters: at least
`min_chars` characters and at least `min_hangul_ratio` Hangul among the non-space characters.
`clean_batch` is the unit of work sent to worker processes (module-level, so it pickles).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Every reason a plain document can be dropped, in the order they are checked (stats list them in this order).
DROP_REASONS = (
    "non_main_namespace",
    "redirect",
    "empty",
    "too_short",
    "low_hangul",
    "contaminated",
    "duplicate_of_val",
    "clean_error",
)

_HANGUL = re.compile("[\uac00-\ud7a3\u3131-\u318e\u1100-\u11ff]")
_SPACE = re.compile(r"\s")


@dataclass(frozen=True)
class FilterSpec:
    """What to do with one source's documents (small and picklable: sent with every batch)."""

    cleaner: str = "wiki"  # namumark | wiki | none
    min_chars: int = 100
    min_hangul_ratio: float = 0.1
    main_namespace_only: bool = False


def hangul_ratio(text: str) -> float:
    """Share of Hangul (syllables and jamo) among the non-whitespace characters; 0.0 for blank text."""
    nonspace = len(text) - len(_SPACE.findall(text))
    if nonspace <= 0:
        return 0.0
    return len(_HANGUL.findall(text)) / nonspace


def is_main_namespace(namespace: Any) -> bool:
    """Namespace 0 is the main article space; a missing value counts as main."""
    if namespace is None:
        return True
    return str(namespace).strip() in ("0", "")


def cleaner_function(cleaner: str) -> Callable[[str], str]:
    """The text cleaner of a source: NamuMark parser, Wikipedia/C4 leftovers cleaner, or strip only."""
    if cleaner == "namumark":
        from kormed.prepare.namumark import namumark_to_text

        return namumark_to_text
    if cleaner == "wiki":
        from kormed.prepare.webtext import clean_wiki_text

        return clean_wiki_text
    if cleaner == "none":
        return str.strip
    raise ValueError(f"unknown cleaner {cleaner!r}")


def clean_document(text: Any, namespace: Any, spec: FilterSpec) -> tuple[str | None, str | None]:
    """(cleaned text, None) for a kept document, or (None, reason) for a dropped one.

    A cleaner that raises gives (None, 'clean_error: <message>'); the caller decides to stop or skip.
    """
    if spec.main_namespace_only and not is_main_namespace(namespace):
        return None, "non_main_namespace"
    if not isinstance(text, str) or not text.strip():
        return None, "empty"
    if spec.cleaner == "namumark":
        from kormed.prepare.namumark import is_redirect

        if is_redirect(text):
            return None, "redirect"
    clean = cleaner_function(spec.cleaner)  # outside the try: a missing cleaner is a bug, not a bad document
    try:
        cleaned = clean(text)
    except Exception as exc:  # a cleaner bug on one document must be reported with where it happened
        return None, f"clean_error: {type(exc).__name__}: {exc}"
    cleaned = cleaned.strip()
    if not cleaned:
        return None, "empty"
    if len(cleaned) < spec.min_chars:
        return None, "too_short"
    if hangul_ratio(cleaned) < spec.min_hangul_ratio:
        return None, "low_hangul"
    return cleaned, None


def clean_batch(task: tuple[FilterSpec, list[Any], list[Any] | None]) -> list[tuple[str | None, str | None]]:
    """Clean a batch of documents (the worker-process entry point)."""
    spec, texts, namespaces = task
    if namespaces is None:
        namespaces = [None] * len(texts)
    return [clean_document(t, ns, spec) for t, ns in zip(texts, namespaces, strict=True)]
