"""The efficiency report of an extended tokenizer: tokens per 1,000 characters before and after."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kormed.io import read_json

_HANGUL = re.compile(r"[\uac00-\ud7a3]")
REPORT_FILE = "tokenizer_report.json"  # written next to tokenizer.json by `kormed tokenizer extend`


def reported_new_tokens(tokenizer_dir: str | Path) -> int | None:
    """How many entries `kormed tokenizer extend` added to the tokenizer in `tokenizer_dir`; None without its
    report (a tokenizer from elsewhere)."""
    path = Path(tokenizer_dir) / REPORT_FILE
    if not path.is_file():
        return None
    return int(read_json(path, what="tokenizer report").get("new_tokens", 0))


def _count(tokenizer: Any, texts: Sequence[str], first_new_id: int | None = None) -> tuple[int, int, int]:
    """(tokens, tokens with id >= first_new_id, characters those new tokens cover) without special tokens."""
    tokens = new = new_chars = 0
    batch = 256
    for start in range(0, len(texts), batch):
        for enc in tokenizer.encode_batch(list(texts[start : start + batch]), add_special_tokens=False):
            tokens += len(enc.ids)
            if first_new_id is not None:
                for tid, (s, e) in zip(enc.ids, enc.offsets, strict=True):
                    if tid >= first_new_id:
                        new += 1
                        new_chars += e - s
    return tokens, new, new_chars


def text_efficiency(base_tok: Any, new_tok: Any, texts: Sequence[str], first_new_id: int) -> dict[str, Any]:
    """Token counts of `texts` under both tokenizers, per 1,000 characters and per 1,000 Hangul syllables."""
    chars = sum(len(t) for t in texts)
    hangul = sum(len(_HANGUL.findall(t)) for t in texts)
    before, _, _ = _count(base_tok, texts)
    after, new, new_chars = _count(new_tok, texts, first_new_id)
    per = 1000.0 / chars if chars else 0.0
    per_h = 1000.0 / hangul if hangul else 0.0
    return {
        "documents": len(texts),
        "characters": chars,
        "hangul_characters": hangul,
        "tokens_before": before,
        "tokens_after": after,
        "tokens_per_1000_chars_before": round(before * per, 2),
        "tokens_per_1000_chars_after": round(after * per, 2),
        "tokens_per_1000_hangul_before": round(before * per_h, 2),
        "tokens_per_1000_hangul_after": round(after * per_h, 2),
        "reduction_percent": round(100.0 * (before - after) / before, 2) if before else 0.0,
        "new_token_share_of_tokens": round(new / after, 4) if after else 0.0,
        "new_token_share_of_chars": round(new_chars / chars, 4) if chars else 0.0,
    }


def format_report(report: dict[str, Any]) -> str:
    """A short human-readable summary of the report dict written by `kormed tokenizer extend`."""
    lines = [
        f"method {report['method']}: {report['new_tokens']} new tokens (ids {report['first_new_id']}.."
        f"{report['first_new_id'] + max(report['new_tokens'] - 1, 0)}), {report['new_merges']} new merges, "
        f"vocabulary {report['base_vocab_size']} -> {report['vocab_size']}",
        f"dictionary: {report['dictionary']['words_single_token']}/{report['dictionary']['words_targeted']} Korean "
        f"term words are single tokens (bare and ▁ forms); {report['dictionary']['entries']} entries spent",
    ]
    for key, label in (("heldout", "held-out Korean text"), ("medical", "medical text (dictionary)")):
        r = report.get(key)
        if not r:
            continue
        lines.append(
            f"{label}: {r['characters']:,} chars, tokens/1000 chars {r['tokens_per_1000_chars_before']} -> "
            f"{r['tokens_per_1000_chars_after']} ({r['reduction_percent']}% fewer); new tokens are "
            f"{100 * r['new_token_share_of_tokens']:.1f}% of its tokens and cover "
            f"{100 * r['new_token_share_of_chars']:.1f}% of its characters"
        )
    sizing = report.get("sizing") or {}
    if "budget_characters" in sizing:
        lines.append(f"size: {sizing['max_new_tokens']} entries for a CPT budget of {sizing['budget_characters']:,} "
                     f"characters ({sizing['rule']})" + ("; CPT will keep the base tokenizer"
                                                         if not sizing["max_new_tokens"] else ""))
    if report.get("round_trip_failures"):
        lines.append(f"WARNING: round-trip failures: {report['round_trip_failures']}")
    return "\n".join(lines)
