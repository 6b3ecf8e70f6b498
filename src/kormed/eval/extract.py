"""The answer-extraction cascade of the lm-evaluation-harness task `kormedmcqa` (version 3.0).

The patterns are tried in order; the first one that matches anywhere in the generated text wins, and its
LAST match is the answer (so a final "정답: C" beats a letter mentioned earlier). Matching ignores case and
the letter is returned upper-cased; when nothing matches the result is "" (scored wrong, counted unparseable).

Quirks kept on purpose, because published numbers were produced with them:

1. Pattern 1 accepts only an ASCII colon or whitespace after 정답, although the prompt itself ends in a
   FULL-WIDTH colon (U+FF1A): `정답：B` does not match it and falls through to the bare-letter pattern.
2. The bare-letter pattern takes any standalone A-E, so "E. coli" or "vitamin D" in free text can be read as
   the answer (case-insensitively: a standalone "a" counts as A).
3. `\\b` is Unicode-aware: a letter glued to Hangul ("답B") has no word boundary before it.
"""

from __future__ import annotations

import re

# Order matters: see the module docstring.
EXTRACTION_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"정답[:\s]*([ABCDE])", re.IGNORECASE),
    re.compile(r"정답은\s*([ABCDE])\s*입니다", re.IGNORECASE),
    re.compile(r"\b([ABCDE])\.", re.IGNORECASE),
    re.compile(r"\b([ABCDE])\b", re.IGNORECASE),
)


def extract_answer(text: str) -> str:
    """The answer letter (A-E) the harness v3.0 cascade reads from `text`, or "" when none is found."""
    for pattern in EXTRACTION_PATTERNS:
        matches = pattern.findall(text)
        if matches:
            return matches[-1].upper()
    return ""


def apply_stop_sequences(text: str, stops: tuple[str, ...] | list[str]) -> str:
    """Cut `text` before the first occurrence of any stop sequence, as the harness does with `until`."""
    for stop in stops:
        if stop:
            text = text.split(stop)[0]
    return text
