"""NamuMark (the markup of namu.wiki) to plain text for language-model pretraining.

A small hand-written parser, not a regex cascade (why by hand: no maintained Python NamuMark parser exists; the
PyPI `namu-wiki-extractor` is a chain of regexes that breaks on nesting, escapes and `>`). The stages are:

1. pre-pass: surrogates removed, NFC, `\\r\\n` -> `\\n`, `##` comment lines dropped (only at column 0 and only
   outside an open `{{{ }}}`);
2. one escape-aware scan pairs every `{{{` with its `}}}` by depth counting (the "brace map"); an unpaired
   `{{{` is literal text;
3. block structure per logical line (a line that continues while a `{{{ }}}` block is open): headings, tables
   (multi-line rows, attributes, captions), lists, indents, quotes, horizontal rules;
4. inline structure inside a line: escapes, `{{{ }}}` blocks, `[[links]]`, `[* footnotes]`, `[macros]`,
   `<math>`, and the paired text-formatting markers;
5. whitespace normalisation.

Rendering policy (so results are comparable): headings are their text on a line; a table row is one line with
its non-empty cells joined by " | "; footnotes and strikethrough are dropped with their content; folding titles
are dropped; code (`#!syntax`, literal `{{{ }}}`) and `[math(...)]` TeX are kept; `[ruby(x,ruby=y)]` -> `x(y)`;
external links whose text is `#` are dropped; an unknown `[x]` stays literal; `[age]`/`[dday]`/`[date]` are
dropped (never computed against today, so output is deterministic). Links: a label is kept as written, else the
target without its anchor (`link_target_text`; `[[#x]]` -> `#x`); images and categories are dropped unless a `:`
or space comes before the namespace (`is_hidden_link`). `{{{#!html}}}` gives the text a reader sees (`html_to_text`).
"""

from __future__ import annotations

import html
import html.entities
import re
import unicodedata
from collections.abc import Callable

__all__ = [
    "html_to_text",
    "is_hidden_link",
    "is_redirect",
    "link_target_text",
    "namumark_to_text",
    "normalize_whitespace",
    "remove_invisible",
]

MAX_DEPTH = 24  # nesting guard: deeper blocks are emitted as their raw text (thetree caps at 15, namucode at 30)


_SURROGATES = re.compile("[\ud800-\udfff]")
_ZERO_WIDTH = re.compile("[\u200b\u200c\u200d\u200e\u200f\u2060\ufeff\u00ad]")
_BLANK_RUNS = re.compile("\n{3,}")
_REDIRECT = re.compile(r"#(?:redirect|넘겨주기)\b", re.IGNORECASE)

# Each token regex starts with a lookahead of its first characters: it lets `re` skip plain text quickly (~2x).
_BRACE_TOK = re.compile(r"(?=[\\{}])(?:\\.|\{\{\{|\}\}\})", re.S)
# Inline tokens. Group names drive the dispatch in _Parser.inline.
_PLAIN = r"[^\\{\['_~\-^,<\n]"  # characters that can start no inline token
_INLINE_TOK = re.compile(
    r"(?=[\\{\['_~\-^,<])(?:"
    # one-token fast paths for the most common simple forms (same result as the general tokens below)
    rf"(?P<sbold>'''(?P<sbold_t>{_PLAIN}+)'''(?!''))"
    rf"|(?P<sital>''(?P<sital_t>{_PLAIN}+)''(?!'))"
    rf"|(?P<smark>(?P<smark_m>__|~~|--|\^\^|,,)(?P<smark_t>{_PLAIN}+)(?P=smark_m))"
    rf"|(?P<slink>\[\[(?P<slink_t>[^\[\]\\{{|\n]*)(?:\|(?P<slink_d>[^\\{{\['_~\-^,<\n\]|]*))?\]\])"
    r"|(?P<sfn>\[\*[^\[\]\\{\n]*\])"
    # general tokens
    r"|(?P<esc>\\.)|(?P<brace>\{\{\{)|(?P<link>\[\[)|(?P<fn>\[\*)|(?P<macro>\[)|(?P<math><[mM][aA][tT][hH]>)"
    r"|(?P<mark>'''''|'''|''|__|~~|--|\^\^|,,))",
    re.S,
)
_SIMPLE_MARK_GROUPS = {"sbold": "'''", "sital": "''", "smark": "smark_m"}
_LINK_PAIR_TOK = re.compile(r"(?=[\\{}\[\]])(?:\\.|\{\{\{|\}\}\}|\[\[|\]\])", re.S)
_LINK_SPLIT_TOK = re.compile(r"\\.|\{\{\{|\[\[|\]\]|\|", re.S)
_BRACKET_PAIR_TOK = re.compile(r"(?=[\\{}\[\]])(?:\\.|\{\{\{|\}\}\}|\[|\])", re.S)
_UNESCAPE = re.compile(r"\\(.)", re.S)
_LINK_COMPLEX = re.compile(r"\\|\{\{\{|\[\[")
_ANCHOR_TOK = re.compile(r"\\.|#", re.S)  # an escape (skipped) or a `#` that starts an anchor
_SIMPLE_LINK = re.compile(r"\[\[([^\[\]\\{|\n]*)(?:\|([^\[\]\\{|\n]*))?\]\]")
_SIMPLE_FOOTNOTE = re.compile(r"\[\*[^\[\]\\{]*\]")
_FILE_PREFIX = re.compile(r"(?:file|image|이미지):", re.IGNORECASE)

_HEADING_OPEN = re.compile(r"(={1,6})(#?)(?= )")
_HR = re.compile(r"-{4,9}[ \t]*\Z")
_LIST = re.compile(r"( +)(?:\*|[1aAiI]\.(?:#\d+)?(?![0-9]))[ \t]*")
_QUOTE = re.compile(r">+[ \t]?")
_SIZE = re.compile(r"[+-][1-5][ \n]")
_COLOR_ONE = r"#(?:[0-9a-fA-F]{6}|[0-9a-fA-F]{3}|[A-Za-z]+)"
_COLOR = re.compile(rf"{_COLOR_ONE}(?:,{_COLOR_ONE})?[ \n]")
_BLOCK_STARTS = frozenset("=->#*1aAiI")  # first characters that may make a line a block construct
_MACRO_HEAD = re.compile(r"\[([A-Za-z가-힣]+)([(\]])")
# CSS colour names: `<tan>` / `<red,#000>` at the start of a table cell is a background colour.
_CSS_COLOR_NAMES = (
    "aliceblue antiquewhite aqua aquamarine azure beige bisque black blanchedalmond blue blueviolet brown "
    "burlywood cadetblue chartreuse chocolate coral cornflowerblue cornsilk crimson cyan darkblue darkcyan "
    "darkgoldenrod darkgray darkgreen darkgrey darkkhaki darkmagenta darkolivegreen darkorange darkorchid darkred "
    "darksalmon darkseagreen darkslateblue darkslategray darkslategrey darkturquoise darkviolet deeppink "
    "deepskyblue dimgray dimgrey dodgerblue firebrick floralwhite forestgreen fuchsia gainsboro ghostwhite gold "
    "goldenrod gray green greenyellow grey honeydew hotpink indianred indigo ivory khaki lavender lavenderblush "
    "lawngreen lemonchiffon lightblue lightcoral lightcyan lightgoldenrodyellow lightgray lightgreen lightgrey "
    "lightpink lightsalmon lightseagreen lightskyblue lightslategray lightslategrey lightsteelblue lightyellow "
    "lime limegreen linen magenta maroon mediumaquamarine mediumblue mediumorchid mediumpurple mediumseagreen "
    "mediumslateblue mediumspringgreen mediumturquoise mediumvioletred midnightblue mintcream mistyrose moccasin "
    "navajowhite navy oldlace olive olivedrab orange orangered orchid palegoldenrod palegreen paleturquoise "
    "palevioletred papayawhip peachpuff peru pink plum powderblue purple rebeccapurple red rosybrown royalblue "
    "saddlebrown salmon sandybrown seagreen seashell sienna silver skyblue slateblue slategray slategrey snow "
    "springgreen steelblue tan teal thistle tomato transparent turquoise violet wheat white whitesmoke yellow "
    "yellowgreen"
)
_CSS_COLORS = frozenset(_CSS_COLOR_NAMES.split())
_CELL_ATTR = re.compile(
    r"[ \t]*<(?:[-^v|]{1,2}\d+|[(:)]|#[0-9A-Za-z]+(?:,#[0-9A-Za-z]+)?|[A-Za-z][A-Za-z ]*=[^<>\n]*"
    r"|nopad|keepall|rowkeepall|colkeepall|thead|sortable)>",
    re.IGNORECASE,
)
_INLINE_DISPLAY = re.compile(r"display\s*:\s*inline(-block|-flex|-table)?\b", re.IGNORECASE)
_CELL_COLOR = re.compile(r"[ \t]*<([A-Za-z]+)(?:,(?:#[0-9A-Za-z]+|[A-Za-z]+))?>")
_HTML_HIDDEN = re.compile(r"<!--|<(script|style)\b", re.IGNORECASE)  # opens content a reader never sees
_HTML_HIDDEN_END = {
    None: re.compile(r"-->"),
    "script": re.compile(r"</script\b[^<>]*>", re.IGNORECASE),
    "style": re.compile(r"</style\b[^<>]*>", re.IGNORECASE),
}
_HTML_SPACE = re.compile(r"[ \t\n\r\f]+")  # HTML's whitespace: a run renders as one space
# a tag: its quoted attribute values may hold `>` (`<a title="a>b">`); `3 < 5` is text
_TAG = r"""(?:"[^"<]*"|'[^'<]*'|[^'"<>])*>"""
_HTML_BREAK = re.compile(
    rf"<(?:br|hr)\b{_TAG}|</?(?:p|div|li|ul|ol|tr|table|blockquote|h[1-6])\b{_TAG}", re.IGNORECASE
)  # line breaks, and the edges of block elements
_HTML_CELL_END = re.compile(rf"</t[dh]\b{_TAG}", re.IGNORECASE)
_HTML_TAG = re.compile(rf"</?[A-Za-z]{_TAG}|</?[A-Za-z][^<>]*>|<![^<>]*>")
_HTML_ENTITY = re.compile(r"&(?:#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[A-Za-z][A-Za-z0-9]*;?)")
_NEWLINE_SPACE = re.compile(r" *\n[ \n]*")
_EXTERNAL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")

# Macros that render to nothing in plain text. Names are matched case-insensitively.
_DROP_MACROS = frozenset(
    {"목차", "tableofcontents", "각주", "footnote", "clearfix", "date", "datetime", "age", "dday", "pagecount"}
    | {"include", "youtube", "kakaotv", "nicovideo", "vimeo", "navertv", "anchor"}
)
_DROP_MARKS = {"~~", "--"}  # strikethrough: dropped with its content (policy)


def remove_invisible(text: str) -> str:
    """Remove unpaired surrogates and zero-width characters."""
    return _ZERO_WIDTH.sub("", _SURROGATES.sub("", text))


def normalize_whitespace(text: str) -> str:
    """Collapse runs of whitespace within each line to one space, strip every line, collapse blank-line runs to one,
    strip the ends."""
    text = "\n".join([" ".join(line.split()) for line in text.split("\n")])
    if "\n\n\n" in text:
        text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip("\n")


def is_redirect(markup: str) -> bool:
    """True when the document's first line is `#redirect X` / `#넘겨주기 X` (any case)."""
    head = markup.lstrip("\ufeff \t\r\n")[:64]
    return _REDIRECT.match(head) is not None


def is_hidden_link(target: str) -> bool:
    """True for a link that renders no text: an image (`[[파일:x.png]]`) or a category (`[[분류:X]]`). Only when the
    namespace opens the raw target: a leading `:` or space (`[[:분류:X]]`, `[[ 파일:x.png]]`) makes it a plain link
    to that page, which keeps its text."""
    return target.startswith(("파일:", "분류:")) or _FILE_PREFIX.match(target) is not None


def link_target_text(target: str) -> str:
    """The text namu.wiki shows for a link without a label, from its raw target: surrounding spaces and one leading
    `:` go, the anchor (from the last unescaped `#`) goes, escapes are resolved. `[[문서#s-2]]` -> `문서`,
    `[[S#ARP#]]` -> `S#ARP`, `[[#1 to Infinity#s-2]]` -> `#1 to Infinity`. A link to an anchor of the same page
    (`[[#개요]]`) shows its target as written, `#개요` (as namu.wiki renders it; the wjdgustn/thetree and
    ShapeLayer/namumark parsers agree)."""
    target = target.strip()
    if target.startswith(":"):
        target = target[1:].lstrip()
    anchor = -1
    if "#" in target:
        for m in _ANCHOR_TOK.finditer(target):
            if m.group() == "#":
                anchor = m.start()
    if anchor >= 0:
        page = target[:anchor].rstrip()
        if page:
            target = page
    return _UNESCAPE.sub(r"\1", target) if "\\" in target else target


def _decode_entity(m: re.Match[str]) -> str:
    """One character reference. Numeric ones and the legacy names (`&nbsp`, `&amp`) decode with or without `;`, as
    in browsers (`html.unescape`); any other known name written in full without its `;` (`&zwj`) decodes too."""
    ref = m.group()
    if not ref.endswith(";") and ref[1] != "#":
        char = html.entities.html5.get(ref[1:] + ";")
        if char is not None:
            return char
    return html.unescape(ref)


def _drop_hidden_html(text: str) -> str:
    """Drop comments and script/style elements; one left open hides the rest, as in a browser. One forward scan
    (a lazy `<!--.*?-->` regex is quadratic on a run of unclosed openers)."""
    parts: list[str] = []
    pos = 0
    while True:
        m = _HTML_HIDDEN.search(text, pos)
        if m is None:
            parts.append(text[pos:])
            break
        parts.append(text[pos : m.start()])
        name = m.group(1)
        end = _HTML_HIDDEN_END[name.lower() if name else None].search(text, m.end())
        if end is None:
            break
        pos = end.end()
    return "".join(parts)


def html_to_text(fragment: str) -> str:
    """The text a reader sees for an HTML fragment (a `{{{#!html ...}}}` body): script, style and comments dropped;
    whitespace runs collapsed to one space (as HTML renders them); `<br>`, `<hr>` and the edges of block elements
    (`<p>`, `<div>`, `<li>`, ...) become line breaks, the ends of table cells a space, and every other tag nothing;
    entities decoded; zero-width characters removed. A non-breaking space (`&nbsp;`) is a visible space and stays
    one."""
    text = _drop_hidden_html(fragment) if "<" in fragment else fragment
    text = _HTML_SPACE.sub(" ", text).strip(" ")
    if "<" in text:
        text = _HTML_BREAK.sub("\n", text)
        text = _HTML_CELL_END.sub(" ", text)
        text = _HTML_TAG.sub("", text)
    if "&" in text:
        text = _HTML_ENTITY.sub(_decode_entity, text)
    text = _ZERO_WIDTH.sub("", text)
    return _NEWLINE_SPACE.sub("\n", text) if "\n" in text else text


def _drop_comments(text: str) -> str:
    """Drop `##` comment lines: only at column 0 and only outside an open `{{{ }}}` block."""
    if "##" not in text:
        return text
    out: list[str] = []
    depth = 0
    for line in text.split("\n"):
        if depth == 0 and line.startswith("##"):
            continue
        out.append(line)
        if "{{{" in line or "}}}" in line:
            for m in _BRACE_TOK.finditer(line):
                tok = m.group()
                if tok == "{{{":
                    depth += 1
                elif tok == "}}}" and depth:
                    depth -= 1
    return "\n".join(out)


def _brace_map(text: str) -> dict[int, int]:
    """Pair each `{{{` (start index) with its `}}}` (start index) by escape-aware depth counting."""
    pairs: dict[int, int] = {}
    if "{{{" not in text:
        return pairs
    stack: list[int] = []
    for m in _BRACE_TOK.finditer(text):
        tok = m.group()
        if tok == "{{{":
            stack.append(m.start())
        elif tok == "}}}" and stack:
            pairs[stack.pop()] = m.start()
    return pairs


class _Parser:
    """Renders one pre-processed document. Works on index ranges of `self.s` so the brace map stays valid."""

    def __init__(self, s: str) -> None:
        self.s = s
        self.bmap = _brace_map(s)
        self._noclose: dict[tuple[str, int], int] = {}
        self._bclose: set[int] | None = None
        self._args_close: dict[int, tuple[int, int]] = {}  # hi -> (from, next unescaped `)]` or -1)
        self._math_close: dict[int, tuple[int, int]] = {}  # hi -> (from, next `</math>` or -1)
        self._no_row_end: dict[int, int] = {}
        self._lmap: dict[int, int] | None = None  # `[[` -> `]]`, built on first use
        self._fmap: dict[int, int] | None = None  # `[` -> `]`, built on first use

    # ---------------------------------------------------------------- lines
    def line_end(self, pos: int, hi: int) -> int:
        """End (index of the `\\n`, or hi) of the logical line at pos: newlines inside `{{{ }}}` don't end it."""
        s = self.s
        nl = s.find("\n", pos, hi)
        if nl < 0:
            nl = hi
        if not self.bmap:
            return nl
        q = pos
        while True:
            p = s.find("{{{", q, nl)
            if p < 0:
                return nl
            c = self.bmap.get(p)
            if c is None:
                q = p + 1
                continue
            if c + 3 > hi:  # closes outside this range: treat as literal here
                q = p + 1
                continue
            q = c + 3
            if q > nl:
                nl = s.find("\n", q, hi)
                if nl < 0:
                    nl = hi

    # ---------------------------------------------------------------- blocks
    def blocks(self, lo: int, hi: int, out: list[str], depth: int) -> None:
        """Render the lines in [lo, hi) as block content, appending output lines (may contain `\\n`) to out."""
        s = self.s
        find = s.find
        has_braces = bool(self.bmap)
        line = self.line
        pos = lo
        while pos < hi:
            end = find("\n", pos, hi)
            if end < 0:
                end = hi
            if has_braces and find("{{{", pos, end) >= 0:
                end = self.line_end(pos, hi)
            c = s[pos] if pos < end else ""
            if c == "|" or c == " ":
                p = pos
                while p < end and s[p] == " ":
                    p += 1
                if s.startswith("|", p, end) and (s.startswith("||", p) or self._is_caption(p, end)):
                    after = self.table(p, hi, out, depth)
                    if after > p:
                        pos = after
                        continue
            line(pos, end, out, depth)
            pos = end + 1

    def _is_caption(self, p: int, end: int) -> bool:
        """`|caption|a||b||`: a single bar, caption text, then cells (the row ends with `||`)."""
        s = self.s
        q = s.find("|", p + 1, end)
        return q > p + 1 and s.startswith("||", self._rstrip_end(p, end) - 2)

    def _rstrip_end(self, lo: int, hi: int) -> int:
        """hi moved left over trailing spaces/tabs (without copying the string)."""
        s = self.s
        while hi > lo and s[hi - 1] in " \t":
            hi -= 1
        return hi

    def line(self, lo: int, hi: int, out: list[str], depth: int) -> None:
        """One logical line (no top-level newline): comment, heading, hr, list, quote, indent or paragraph.
        Quote markers and indentation are peeled off in a loop (no recursion, so `> > > ...` cannot overflow)."""
        s = self.s
        if lo < hi and s.startswith("##", lo):
            return
        start = lo
        while True:
            if lo >= hi:
                out.append("")
                return
            c = s[lo]
            if c == "=" and lo == start:  # headings only at the start of a line
                span = _heading_text(s, lo, hi)
                if span is not None:
                    out.append(self.inline(span[0], span[1], depth))
                    return
            elif c == "-":
                if _HR.match(s, lo, hi):
                    return
            elif c == " ":
                m = _LIST.match(s, lo, hi)
                if m:
                    self._para(m.end(), hi, out, depth)
                    return
                while lo < hi and s[lo] == " ":
                    lo += 1
                continue
            elif c == ">":
                lo = _QUOTE.match(s, lo, hi).end()
                if s.startswith("||", lo) and self.table(lo, hi, out, depth) > lo:
                    return  # a table row inside a quote (one row per quoted line)
                continue
            self._para(lo, hi, out, depth)
            return

    def _para(self, lo: int, hi: int, out: list[str], depth: int) -> None:
        """A text line; a line whose markup renders to nothing leaves no (blank) line behind."""
        text = self.inline(lo, hi, depth)
        if text and not text.isspace():
            out.append(text.strip("\n"))

    def table(self, p: int, hi: int, out: list[str], depth: int) -> int:
        """Render table rows starting at p; returns the position after the table."""
        s = self.s
        first = True
        pos = p
        while pos < hi:
            q = pos
            while q < hi and s[q] == " ":
                q += 1
            caption = -1
            if s.startswith("||", q):
                start = q + 2
            elif first and s.startswith("|", q) and self._is_caption(q, self.line_end(q, hi)):
                caption = s.find("|", q + 1, hi)
                start = caption + 1
            else:
                break
            first = False
            # the row runs until a logical line that ends with `||`; a row that never closes is no table row (its
            # line is text, as on namu.wiki) - and the position from which none closes is remembered (linear time)
            end = self.line_end(pos, hi)
            row_end = -1
            if pos < self._no_row_end.get(hi, hi + 1):
                while True:
                    r = self._rstrip_end(pos, end)
                    if r >= start + 2 and s.startswith("||", r - 2):
                        row_end = r - 2
                        break
                    if end >= hi:
                        self._no_row_end[hi] = pos
                        break
                    end = self.line_end(end + 1, hi)
            if row_end < 0:
                return pos
            if caption >= 0:
                out.append(self.inline(q + 1, caption, depth))
            cells = []
            for a, b in self.split_cells(start, row_end):
                if s.startswith("<", a) or s.startswith(" <", a):
                    while True:
                        m = _CELL_ATTR.match(s, a, b) or _CELL_COLOR.match(s, a, b)
                        if not m or (m.re is _CELL_COLOR and m.group(1).lower() not in _CSS_COLORS):
                            break
                        a = m.end()
                if _INLINE_TOK.search(s, a, b) is None:  # plain cell: no markup to parse
                    text = " ".join(s[a:b].split())
                    if not text:
                        continue
                    if text[0] not in _BLOCK_STARTS:
                        cells.append(text)
                        continue
                cell_out: list[str] = []
                if s.find("\n", a, b) < 0:  # one-line cell (the usual case): no block loop needed
                    self.line(a, b, cell_out, depth + 1)
                else:
                    self.blocks(a, b, cell_out, depth + 1)
                text = " ".join(" ".join(cell_out).split())
                if text:
                    cells.append(text)
            if cells:
                out.append(" | ".join(cells))
            pos = end + 1
        return pos

    def split_cells(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """Split [lo, hi) at `||` outside `{{{ }}}` blocks and escapes."""
        s = self.s
        if s.find("\\", lo, hi) < 0 and (not self.bmap or s.find("{{{", lo, hi) < 0):
            cells = []
            a = lo
            for piece in s[lo:hi].split("||"):
                cells.append((a, a + len(piece)))
                a += len(piece) + 2
            return cells
        cells = []
        a = lo
        i = lo
        while True:
            j = s.find("||", i, hi)
            k = s.find("{{{", i, j if j >= 0 else hi)
            e = s.find("\\", i, j if j >= 0 else hi)
            if k >= 0 and (e < 0 or k < e):
                c = self.bmap.get(k)
                i = c + 3 if c is not None and c + 3 <= hi else k + 1
                continue
            if e >= 0:
                i = e + 2
                continue
            if j < 0:
                cells.append((a, hi))
                return cells
            cells.append((a, j))
            a = i = j + 2

    # ---------------------------------------------------------------- inline
    def body(self, lo: int, hi: int, depth: int, block: bool = False, sep: str = "\n") -> str:
        """Content of an unwrapped `{{{ }}}` block. Size/colour blocks (block=False) are inline when on one line;
        otherwise the content is block-rendered and set off by `sep` (a newline; for `#!wiki` boxes styled
        `display: inline` nothing, `inline-block` a space)."""
        if not block and self.s.find("\n", lo, hi) < 0:
            return self.inline(lo, hi, depth)
        out: list[str] = []
        self.blocks(lo, hi, out, depth)
        return sep + "\n".join(out).strip("\n") + sep

    def brace(self, p: int, c: int, depth: int) -> str:
        """Render the `{{{ ... }}}` block whose content is s[p+3:c]."""
        s = self.s
        lo = p + 3
        if depth > MAX_DEPTH:
            return s[lo:c]
        if s.startswith("#!", lo):
            if s[lo + 2 : lo + 6].lower() == "html":  # the body may follow `#!html` directly (`{{{#!html<b>x</b>}}}`)
                return html_to_text(s[lo + 6 : c])
            nl = s.find("\n", lo, c)
            head = s[lo + 2 : nl if nl >= 0 else c]
            kind = head.split(None, 1)[0].lower() if head.strip() else ""
            if kind == "syntax":
                if nl < 0:
                    parts = head.split(None, 2)
                    return parts[2] if len(parts) > 2 else ""
                return "\n" + s[nl + 1 : c].strip("\n") + "\n"
            if kind in ("if", "style"):
                return ""  # template conditionals and CSS carry no article text
            # #!wiki, #!folding (title dropped by policy) and unknown #! blocks: the first line is parameters
            if nl < 0:
                return ""
            m = _INLINE_DISPLAY.search(head) if kind == "wiki" else None
            sep = "\n" if m is None else (" " if m.group(1) else "")
            return self.body(nl + 1, c, depth, block=True, sep=sep)
        m = _SIZE.match(s, lo, c) or _COLOR.match(s, lo, c)
        if m:
            return self.body(m.end(), c, depth)
        text = s[lo:c]  # literal: verbatim, nothing inside parsed
        return "\n" + text.strip("\n") + "\n" if "\n" in text else text

    def find_close(self, marker: str, lo: int, hi: int) -> int:
        """Start of the next `marker` token in [lo, hi), skipping escapes, blocks, links and footnotes; -1 if none."""
        key = (marker, hi)
        failed = self._noclose.get(key)
        if failed is not None and lo >= failed:
            return -1
        s = self.s
        pos = lo
        search = _INLINE_TOK.search
        while True:
            m = search(s, pos, hi)
            if m is None:
                self._noclose[key] = lo if failed is None else min(lo, failed)
                return -1
            kind = m.lastgroup
            st = m.start()
            if kind == "mark":
                if m.group() == marker:
                    return st
                pos = m.end()
            elif kind in _SIMPLE_MARK_GROUPS:  # a one-token form starts with its mark token: treat it as that
                mark = m.group(_SIMPLE_MARK_GROUPS[kind]) if kind == "smark" else _SIMPLE_MARK_GROUPS[kind]
                if mark == marker:
                    return st
                pos = st + len(mark)
            elif kind == "slink" or kind == "sfn":
                pos = m.end()
            elif kind == "brace":
                c = self.bmap.get(st)
                pos = c + 3 if c is not None and c + 3 <= hi else st + 3
            elif kind == "link":
                e = self.link_end(st, hi)
                pos = e + 2 if e >= 0 else st + 1
            elif kind == "fn":
                e = self.bracket_end(st, hi)
                pos = e + 1 if e >= 0 else st + 1
            else:
                pos = m.end() if kind != "macro" else st + 1

    def _pairs(self, tok: re.Pattern[str], opener: str, closer: str) -> dict[int, int]:
        """Pair every `opener` token with its `closer` in one escape-aware pass, by a stack per `{{{ }}}` level
        (brackets inside a block pair only among themselves). Equivalent to depth counting from each opener,
        but linear: a line full of unclosed `[[` costs nothing extra."""
        s = self.s
        bmap = self.bmap
        bclose = self._bclose
        if bclose is None:
            bclose = self._bclose = set(bmap.values())
        pairs: dict[int, int] = {}
        stack: list[int] = []
        saved: list[list[int]] = []
        for m in tok.finditer(s):
            t = m.group()
            if t == opener:
                stack.append(m.start())
            elif t == closer:
                if stack:
                    pairs[stack.pop()] = m.start()
            elif t == "{{{":
                if m.start() in bmap:
                    saved.append(stack)
                    stack = []
            elif t == "}}}" and m.start() in bclose and saved:
                stack = saved.pop()
        return pairs

    def link_end(self, st: int, hi: int) -> int:
        """Index of the `]]` closing the `[[` at st, or -1 if it does not close before hi. Single brackets inside
        count (as on namu.wiki: `[[url|[* note]]]` is one link); failing that, `[[`/`]]` pairs are matched."""
        if self._fmap is None:
            self._fmap = self._pairs(_BRACKET_PAIR_TOK, "[", "]")
        e = self._fmap.get(st + 1)
        if e is not None and e + 2 <= hi and self.s.startswith("]]", e):
            return e
        if self._lmap is None:
            self._lmap = self._pairs(_LINK_PAIR_TOK, "[[", "]]")
        e = self._lmap.get(st)
        return e if e is not None and e + 2 <= hi else -1

    def bracket_end(self, st: int, hi: int) -> int:
        """Index of the `]` closing the `[` at st (single brackets counted), or -1 if it does not close before hi."""
        if self._fmap is None:
            self._fmap = self._pairs(_BRACKET_PAIR_TOK, "[", "]")
        e = self._fmap.get(st)
        return e if e is not None and e + 1 <= hi else -1

    def link(self, st: int, e: int, depth: int) -> str:
        """Render the link `[[ ... ]]` with content s[st+2:e]."""
        s = self.s
        lo = st + 2
        simple = _LINK_COMPLEX.search(s, lo, e) is None  # no escapes, blocks or nested links: plain split
        bar = s.find("|", lo, e) if simple else self._link_bar(lo, e)
        target = s[lo : bar if bar >= 0 else e]
        if is_hidden_link(target):
            return ""
        if bar >= 0 and s[bar + 1 : e].strip():
            if s[bar + 1 : e].strip() == "#" and _EXTERNAL.match(target.strip()):
                return ""  # a citation marker
            if simple and _INLINE_TOK.search(s, bar + 1, e) is None:
                return s[bar + 1 : e]
            return self.inline(bar + 1, e, depth)
        return link_target_text(target)

    def _link_bar(self, lo: int, e: int) -> int:
        """Index of the first top-level unescaped `|` in a link's content, or -1."""
        s = self.s
        pos = lo
        nest = 0
        search = _LINK_SPLIT_TOK.search
        while True:
            m = search(s, pos, e)
            if m is None:
                return -1
            tok = m.group()
            if tok == "|" and nest == 0:
                return m.start()
            if tok == "{{{":
                c = self.bmap.get(m.start())
                pos = c + 3 if c is not None and c + 3 <= e else m.end()
                continue
            if tok == "[[":
                nest += 1
            elif tok == "]]":
                nest -= 1
            pos = m.end()

    def _next_close(self, cache: dict[int, tuple[int, int]], lo: int, hi: int,
                    find: Callable[[str, int, int], int]) -> int:
        """`find(s, lo, hi)`, remembering per `hi` the last answer and where its search began: a later call from
        between the two gets it again without rescanning, so a line of openers whose closer is far away (or
        missing) costs one scan, not one per opener."""
        known = cache.get(hi)
        if known is not None and known[0] <= lo and (known[1] < 0 or lo <= known[1]):
            return known[1]
        q = find(self.s, lo, hi)
        cache[hi] = (lo, q)
        return q

    def macro(self, st: int, hi: int) -> tuple[str, int] | None:
        """Render a known macro at st; returns (text, end) or None when `[` is literal text."""
        s = self.s
        m = _MACRO_HEAD.match(s, st, hi)
        if m is None:
            return None
        name = m.group(1).lower()
        if m.group(2) == "]":
            if name == "br":
                return "\n", m.end()
            if name in _DROP_MACROS:
                return "", m.end()
            return None
        if name not in ("math", "ruby") and name not in _DROP_MACROS:
            return None  # an unknown macro is literal text: no need to look for its end (nor copy its arguments)
        # with arguments: they end at the first unescaped `)]`
        q = self._next_close(self._args_close, m.end(), hi, _next_args_close)
        if q < 0:
            return None
        end = q + 2
        if name in _DROP_MACROS:
            return "", end
        args = s[m.end() : q]
        if name == "math":
            return args, end
        if name == "ruby":
            parts = re.split(r"(?<!\\),", args)
            base = _UNESCAPE.sub(r"\1", parts[0]).strip()
            reading = ""
            for part in parts[1:]:
                k, _, v = part.partition("=")
                if k.strip().lower() == "ruby":
                    reading = _UNESCAPE.sub(r"\1", v).strip()
            return (f"{base}({reading})" if reading else base), end
        return None

    def inline(self, lo: int, hi: int, depth: int) -> str:
        """Render the inline content of s[lo:hi] (no top-level newline) to text."""
        s = self.s
        if depth > MAX_DEPTH:
            return s[lo:hi]
        depth += 1
        parts: list[str] = []
        append = parts.append
        pos = lo
        search = _INLINE_TOK.search
        while pos < hi:
            m = search(s, pos, hi)
            if m is None:
                append(s[pos:hi])
                break
            st = m.start()
            if st > pos:
                append(s[pos:st])
            kind = m.lastgroup
            if kind == "slink":
                target = m.group("slink_t")
                disp = m.group("slink_d")
                if is_hidden_link(target):
                    pass
                elif disp is None or not disp.strip():  # `[[문서|]]` shows the target, like `[[문서]]`
                    append(link_target_text(target))
                elif disp.strip() != "#" or not _EXTERNAL.match(target.strip()):  # `#` on a URL: citation, dropped
                    append(disp)
                pos = m.end()
            elif kind == "sbold":
                append(m.group("sbold_t"))
                pos = m.end()
            elif kind == "sfn":
                pos = m.end()  # footnote dropped with its content (policy)
            elif kind == "sital":
                append(m.group("sital_t"))
                pos = m.end()
            elif kind == "smark":
                if m.group("smark_m") not in _DROP_MARKS:
                    append(m.group("smark_t"))
                pos = m.end()
            elif kind == "mark":  # text-formatting marker
                mark = m.group()
                end = m.end()
                m2 = search(s, end, hi)
                if m2 is not None and m2.group() == mark:  # common case: nothing to parse inside
                    if m2.start() > end:
                        if mark not in _DROP_MARKS:
                            append(s[end : m2.start()])
                        pos = m2.end()
                        continue
                    close = -1
                else:
                    close = self.find_close(mark, end, hi)
                if close < 0 and mark == "'''''":
                    mark, end = "'''", st + 3
                    close = self.find_close(mark, end, hi)
                if close <= end:  # unpaired or empty: literal
                    append(mark)
                    pos = end
                    continue
                if mark not in _DROP_MARKS:
                    append(self.inline(end, close, depth))
                pos = close + len(mark)
            elif kind == "esc":
                append(s[st + 1])
                pos = st + 2
            elif kind == "brace":
                c = self.bmap.get(st)
                if c is None or c + 3 > hi:
                    append("{{{")
                    pos = st + 3
                else:
                    text = self.brace(st, c, depth)
                    if text.startswith("\n") and parts and parts[-1].endswith("\n"):
                        text = text[1:]  # two adjacent blocks: one line break between them, not a blank line
                    append(text)
                    pos = c + 3
            elif kind == "link":
                sm = _SIMPLE_LINK.match(s, st, hi)
                if sm is not None:  # fast path: no escapes, blocks or nesting inside
                    target = sm.group(1)
                    if is_hidden_link(target):
                        pass
                    elif sm.group(2) is None or not sm.group(2).strip():
                        append(link_target_text(target))
                    elif sm.group(2).strip() == "#" and _EXTERNAL.match(target.strip()):
                        pass  # a citation marker
                    elif _INLINE_TOK.search(s, sm.start(2), sm.end(2)) is None:
                        append(sm.group(2))
                    else:
                        append(self.inline(sm.start(2), sm.end(2), depth))
                    pos = sm.end()
                    continue
                e = self.link_end(st, hi)
                if e < 0:
                    append("[")
                    pos = st + 1
                else:
                    append(self.link(st, e, depth))
                    pos = e + 2
            elif kind == "fn":
                sm = _SIMPLE_FOOTNOTE.match(s, st, hi)
                if sm is not None:  # fast path: nothing nested inside; dropped (policy)
                    pos = sm.end()
                    continue
                e = self.bracket_end(st, hi)
                if e < 0:
                    append("[*")
                    pos = st + 2
                else:
                    pos = e + 1  # footnote dropped with its content (policy)
            elif kind == "macro":
                r = self.macro(st, hi)
                if r is None:
                    append("[")
                    pos = st + 1
                else:
                    append(r[0])
                    pos = r[1]
            elif kind == "math":
                q = self._next_close(self._math_close, m.end(), hi, _next_math_close)
                if q < 0:
                    append(m.group())
                    pos = m.end()
                else:
                    append(s[m.end() : q])
                    pos = q + 7
        return "".join(parts)


_MATH_CLOSE = re.compile(r"</math>", re.IGNORECASE)


def _next_math_close(s: str, lo: int, hi: int) -> int:
    """Index of the first `</math>` (any case) in s[lo:hi], or -1."""
    m = _MATH_CLOSE.search(s, lo, hi)
    return m.start() if m else -1


def _next_args_close(s: str, lo: int, hi: int) -> int:
    """Index of the first `)]` in s[lo:hi] not escaped by a backslash before it, or -1."""
    while True:
        q = s.find(")]", lo, hi)
        if q < 0 or s[q - 1] != "\\":
            return q
        lo = q + 1


def _heading_text(s: str, lo: int, hi: int) -> tuple[int, int] | None:
    """The span of a heading's text in the line s[lo:hi] (`== text ==`, `=# folded #=`), or None: what the regex
    `(={1,6})(#?) +(.+?) +\\2\\1[ \\t]*\\Z` matches, found by hand because that regex backtracks in cubic time on a
    line of spaces."""
    m = _HEADING_OPEN.match(s, lo, hi)
    if m is None:
        return None
    close = m.group(2) + m.group(1)
    end = hi
    while end > m.end() and s[end - 1] in " \t":
        end -= 1
    end -= len(close)
    if end < m.end() or not s.startswith(close, end) or s.find("\n", m.end(), end) >= 0:
        return None
    a, b = m.end(), end  # the text with its spaces: at least one before and one after it
    while a < b and s[a] == " ":
        a += 1
    if a == b:  # only spaces: the regex takes one as the text when there are three or more
        return (b - 2, b - 1) if b - m.end() >= 3 else None
    while s[b - 1] == " ":
        b -= 1
    return (a, b) if a > m.end() and b < end else None


def namumark_to_text(markup: str) -> str:
    """Convert one NamuMark document to plain text under the rendering policy above; "" for a redirect."""
    if not markup:
        return ""
    text = _SURROGATES.sub("", markup)
    if is_redirect(text):
        return ""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _drop_comments(text)
    parser = _Parser(text)
    out: list[str] = []
    parser.blocks(0, len(text), out, 0)
    return normalize_whitespace(_ZERO_WIDTH.sub("", "\n".join(out)))
