"""Cleaning of Korean Wikipedia and C4 text: markup leftovers and navigation boilerplate.

Both sources arrive as (mostly) plain text; what is left to remove is:
* HTML: `<!-- comments -->`, `<ref>...</ref>` and `<ref .../>` (content dropped: citations), `<script>`/`<style>`
  (content dropped), any other tag (tag dropped, content kept; `<br>` becomes a newline), entities decoded;
* MediaWiki: `{{templates}}` (nested, dropped), `{| tables |}` (dropped), `[[link|text]]` -> text, `[[File:..]]` /
  `[[분류:..]]` dropped, `[http://u text]` -> text, `'''bold'''`/`''italic''` markers, `== headings ==` -> text;
* navigation boilerplate lines (menus, breadcrumbs, share/login/copyright lines, stub notices), and everything from
  a trailing "각주 / 같이 보기 / 외부 링크 / 참고 문헌" section on (reference lists, not prose; a heading counts as
  trailing after the first 30% of the text), MediaWiki magic words (`__TOC__`);
* unpaired surrogates and zero-width characters; whitespace normalised as for NamuMark.
"""

from __future__ import annotations

import html
import re
import unicodedata

from kormed.prepare.namumark import normalize_whitespace, remove_invisible

__all__ = ["clean_wiki_text"]

_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)
_REF = re.compile(r"<ref\b[^<>]*?/>|<ref\b[^<>]*>.*?</ref\s*>", re.S | re.I)
_REFERENCES = re.compile(r"<references\b[^<>]*?/>|<references\b[^<>]*>.*?</references\s*>", re.S | re.I)
_DROP_ELEMENTS = re.compile(r"<(script|style|noscript|gallery|timeline)\b[^<>]*>.*?</\1\s*>", re.S | re.I)
_BR = re.compile(r"<br\s*/?>|</?(?:p|div|li|tr|table|h[1-6]|ul|ol|blockquote)\b[^<>]*>", re.I)
_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9:-]*(?:\s[^<>]*)?/?>")
_TEMPLATE_TOK = re.compile(r"\{\{|\}\}")
_WIKI_TABLE_TOK = re.compile(r"^[ \t]*\{\||^[ \t]*\|\}", re.M)
_FILE_LINK_HEAD = re.compile(r"\[\[\s*(?:파일|그림|file|image|분류|category)\s*:", re.I)
_LINK = re.compile(r"\[\[([^\[\]|\n]*)(?:\|([^\[\]\n]*))?\]\]")
_EXT_LINK = re.compile(r"\[(?:https?|ftp)://[^\s\]]+(?:\s+([^\]\n]*))?\]")
_BOLD_ITALIC = re.compile(r"'{2,5}")
_MAGIC_WORD = re.compile(r"__(?:NOTOC|TOC|FORCETOC|NOEDITSECTION|NEWSECTIONLINK|NOINDEX|INDEX|STATICREDIRECT)__")
_HEADING = re.compile(r"^[ \t]*(={1,6})[ \t]*(.+?)[ \t]*\1[ \t]*$", re.M)

# Lines that are navigation or site chrome, compared after stripping spaces and a trailing "[편집]".
_NAV_LINES = frozenset(
    {
        "편집",
        "원본 편집",
        "둘러보기 메뉴",
        "위키백과, 우리 모두의 백과사전.",
        "본문 바로가기",
        "본문으로 이동",
        "주메뉴 바로가기",
        "메뉴",
        "전체메뉴",
        "로그인",
        "로그아웃",
        "회원가입",
        "검색",
        "홈",
        "home",
        "top",
        "맨 위로",
        "맨위로",
        "위로",
        "목록",
        "이전 글",
        "다음 글",
        "이전글",
        "다음글",
        "공유하기",
        "공유",
        "스크랩",
        "댓글",
        "좋아요",
        "구독",
        "구독하기",
        "인쇄",
        "더보기",
        "skip to content",
        "skip to main content",
        "all rights reserved.",
        "all rights reserved",
        "무단 전재 및 재배포 금지",
        "무단전재 및 재배포 금지",
    }
)
_NAV_PATTERNS = re.compile(
    r"^(?:copyright\b|ⓒ|©|\(c\)\s*\d{4}|.*무단\s*전재.*금지|.*all rights reserved"
    r"|이 문서는 .*토막글입니다|.*에 관한 이 문서는 토막글입니다|원본 주소\s*[:\"]|분류\s*:"
    r"|(?:이전|다음)\s*(?:글|기사)\s*[:▶▷>]"
    r"|.*(?:카카오톡|페이스북|트위터|네이버 ?블로그|밴드)\s*(?:공유|보내기).*)",
    re.I,
)
_TAIL_SECTIONS = frozenset(
    {"각주", "같이 보기", "외부 링크", "참고 문헌", "참고 자료", "출처", "references", "see also", "external links"}
)
_MENU_SEP = re.compile(r"\s+[|·•]\s+|\s+>\s+|\s+›\s+")


def _drop_nested(text: str, tok: re.Pattern[str], opener: str, max_len: int = 200_000) -> str:
    """Remove balanced `opener ... closer` spans (depth counted); an unbalanced opener is left as text."""
    if opener not in text:
        return text
    out: list[str] = []
    depth = 0
    start = 0
    last = 0
    for m in tok.finditer(text):
        if m.group().strip().startswith(opener):
            if depth == 0:
                start = m.start()
            depth += 1
        elif depth:
            depth -= 1
            if depth == 0 and m.end() - start <= max_len:
                out.append(text[last:start])
                last = m.end()
                if text.startswith("\n", last) and (start == 0 or text[start - 1] == "\n"):
                    last += 1  # the span filled whole lines: leave no blank line behind
    out.append(text[last:])
    return "".join(out)


def _link(m: re.Match[str]) -> str:
    target, label = m.group(1), m.group(2)
    text = label if label is not None else target
    return text.lstrip(":").split("#", 1)[0] if label is None else text


def _is_nav_line(line: str) -> bool:
    key = line.strip()
    if key.endswith("[편집]"):
        key = key[: -len("[편집]")].rstrip()
    low = key.lower()
    if low in _NAV_LINES or _NAV_PATTERNS.match(key):
        return True
    # menus and breadcrumbs: "홈 > 뉴스 > 사회", "소개 | 진료과 | 오시는 길 | 예약": >= 3 short items, no sentence
    parts = _MENU_SEP.split(key)
    return len(parts) >= 3 and all(0 < len(p) <= 12 for p in parts) and not key.endswith((".", "다", "요"))


def clean_wiki_text(text: str) -> str:
    """Plain text of one Wikipedia / C4 document: markup leftovers and navigation removed, whitespace normalised."""
    if not text:
        return ""
    text = remove_invisible(text)
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    if "<" in text:
        text = _COMMENT.sub("", text)
        text = _REF.sub("", text)
        text = _REFERENCES.sub("", text)
        text = _DROP_ELEMENTS.sub("", text)
        text = _BR.sub("\n", text)
        text = _TAG.sub("", text)
    if "{{" in text:
        text = _drop_nested(text, _TEMPLATE_TOK, "{{")
    if "{|" in text:
        text = _drop_nested(text, _WIKI_TABLE_TOK, "{|")
    if "[" in text:
        text = _drop_file_links(text)
        text = _LINK.sub(_link, text)
        text = _EXT_LINK.sub(lambda m: m.group(1) or "", text)
    if "''" in text:
        text = _BOLD_ITALIC.sub("", text)
    if "=" in text:
        text = _HEADING.sub(r"\2", text)
    if "&" in text:
        text = html.unescape(text)
        text = remove_invisible(text)
    if "__" in text:
        text = _MAGIC_WORD.sub("", text)
    lines: list[str] = []
    seen = 0
    tail_from = len(text) * 0.3  # a reference-section heading counts only after the first 30% of the text
    for line in text.split("\n"):
        seen += len(line) + 1
        stripped = line.strip()
        if stripped and seen > tail_from and stripped.lower() in _TAIL_SECTIONS and lines:
            break  # reference lists and link farms follow; not prose
        if stripped and _is_nav_line(stripped):
            continue
        lines.append(line)
    return normalize_whitespace("\n".join(lines))


def _drop_file_links(text: str) -> str:
    """Remove `[[File:...]]` / `[[분류:...]]` including nested links in their captions."""
    out: list[str] = []
    pos = 0
    while True:
        m = _FILE_LINK_HEAD.search(text, pos)
        if m is None:
            out.append(text[pos:])
            return "".join(out)
        out.append(text[pos : m.start()])
        depth = 0
        i = m.start()
        end = -1
        limit = min(len(text) - 1, m.start() + 5000)  # a file link is short; bounded work on unclosed ones
        while i < limit:
            pair = text[i : i + 2]
            if pair == "[[":
                depth += 1
                i += 2
            elif pair == "]]":
                depth -= 1
                i += 2
                if depth == 0:
                    end = i
                    break
            else:
                i += 1
        if end < 0:  # unclosed: leave the text as it is
            out.append(text[m.start() : m.end()])
            pos = m.end()
        else:
            pos = end
