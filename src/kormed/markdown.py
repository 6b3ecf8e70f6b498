"""Text from data (names, paths, reasons, a dictionary's terms) written into Markdown as literal text: the one
escaping of report.md and of the model cards, so a string never turns into markup, a link or a broken table."""

from __future__ import annotations

import re

# Characters that Markdown (CommonMark / GFM tables) may read as markup inside a line.
_MD_INLINE = re.compile(r"([\\`*\[\]<>|&~!])")
_MD_UNDERSCORE = re.compile(r"(?<!\w)_|_(?!\w)")  # an intraword _ never makes emphasis: left readable
_MD_LINE_START = re.compile(r"^(\s*)([#>+=-]|\d+[.)])")


def md_escape(text: str, *, line_start: bool = False) -> str:
    """Text from the data as literal Markdown: its markup characters backslash-escaped, line breaks made spaces;
    `line_start` also escapes what would begin a heading, quote or list at the start of a line."""
    out = _MD_INLINE.sub(r"\\\1", " ".join(str(text).splitlines()))
    out = _MD_UNDERSCORE.sub(r"\\_", out)
    if line_start:
        out = _MD_LINE_START.sub(lambda m: m.group(1) + "\\" + m.group(2) if len(m.group(2)) == 1
                                 else m.group(1) + m.group(2)[:-1] + "\\" + m.group(2)[-1], out)
    return out


def md_code(text: str) -> str:
    """Text from the data as a Markdown code span: fenced by more backticks than it holds (CommonMark)."""
    text = " ".join(str(text).splitlines())
    run = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * (run + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"

