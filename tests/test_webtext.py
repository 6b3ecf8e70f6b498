"""clean_wiki_text: Wikipedia / C4 markup leftovers and navigation boilerplate."""

from __future__ import annotations

import pytest

from kormed.prepare.webtext import clean_wiki_text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # refs dropped with their content, named and self-closing
        (
            '고혈압은 흔하다.<ref name="a">대한고혈압학회, 2020</ref> 치료한다.<ref name="a"/>',
            "고혈압은 흔하다. 치료한다.",
        ),
        ("본문<REF>출처 [http://x.org 링크]</REF>끝<references />", "본문끝"),
        # other tags stripped, content kept; br becomes a newline; comments, script and style dropped
        ("<b>굵게</b> <span style='x'>글</span><br/>다음<!-- 숨김 -->줄", "굵게 글\n다음줄"),
        ("<script>var a = 1;</script><style>.a{}</style>본문", "본문"),
        ("3 < 5 이고 7 > 2 이다", "3 < 5 이고 7 > 2 이다"),
        # entities decoded
        ("A &amp; B &lt;태그&gt; &nbsp;끝&#8203;", "A & B <태그> 끝"),
        # templates, nested, dropped; unbalanced braces are text
        ("{{위키데이터|{{중첩|a=b}}|c=d}}혈압이 높다. {{인용}}", "혈압이 높다."),
        ("수식 {{ 닫히지 않음", "수식 {{ 닫히지 않음"),
        # wiki tables dropped
        ('앞\n{| class="wikitable"\n|-\n| a || b\n|}\n뒤', "앞\n뒤"),
        # links and files
        ("[[고혈압|혈압 상승]]과 [[저혈압]], [[심장#구조]]", "혈압 상승과 저혈압, 심장"),
        ("[[파일:Heart.png|섬네일|[[심장]]의 그림]]심장은 근육이다. [[분류:순환계]]", "심장은 근육이다."),
        ("[https://who.int 세계보건기구] 자료 [https://x.org]", "세계보건기구 자료"),
        # bold/italic markers and headings
        ("'''고혈압'''은 ''흔한'' 질환\n== 원인 ==\n유전", "고혈압은 흔한 질환\n원인\n유전"),
        # navigation lines and menus
        (
            "홈 > 건강 > 질환\n로그인\n본문이다.\n소개 | 진료과 | 오시는 길 | 예약\n"
            "Copyright 2024 병원. All rights reserved.",
            "본문이다.",
        ),
        ("맨 위로\n무단전재 및 재배포 금지\n이전 글: 감기\n본문", "본문"),
        ("개요 [편집]\n내용", "개요 [편집]\n내용"),
        ("편집\n내용", "내용"),
        # a sentence with separators is not a menu
        ("혈압 | 맥박 | 체온 은 활력 징후이다.", "혈압 | 맥박 | 체온 은 활력 징후이다."),
        # trailing reference sections are cut
        ("본문이다.\n\n같이 보기\n 저혈압\n외부 링크\n http://x", "본문이다."),
        ("각주\n첫 줄이 각주여도 본문은 남는다", "각주\n첫 줄이 각주여도 본문은 남는다"),
        ("짧은 앞\n출처\n" + "본문이 길게 이어진다. " * 5, "짧은 앞\n출처\n" + ("본문이 길게 이어진다. " * 5).strip()),
        ("__TOC__\n본문 __NOTOC__", "본문"),
        # whitespace and invisible characters
        ("  가   나 \t다\n\n\n\n라\u200b마\udef0 ", "가 나 다\n\n라마"),
        ("", ""),
    ],
)
def test_clean_wiki_text(text: str, expected: str) -> None:
    assert clean_wiki_text(text) == expected


def test_deterministic_and_idempotent() -> None:
    doc = "'''고혈압'''<ref>x</ref> {{a|{{b}}}} [[c|d]] 홈\n\n\n본문 &amp; 끝"
    once = clean_wiki_text(doc)
    assert once == clean_wiki_text(doc)
    assert clean_wiki_text(once) == once


# Sized so that quadratic behaviour would take minutes (the suite's time budget catches that; no timed asserts).
_PATHOLOGICAL = [
    ("templates", "{{" * 20000 + "x", "{{" * 20000 + "x"),  # unbalanced: text
    ("files", "[[파일:" * 5000, "[[파일:" * 5000),  # unclosed: text
    ("refs", "<ref>" * 10000 + "x", "x"),
    ("tables", "{|\n" * 5000 + "x", "\n".join(["{|"] * 5000 + ["x"])),
    ("links", "[[a|" * 10000 + "x", "[[a|" * 10000 + "x"),
    ("menus", "a | b | " * 10000 + "\n본문이다.", "본문이다."),
]


@pytest.mark.parametrize(
    ("doc", "expected"), [(d, e) for _, d, e in _PATHOLOGICAL], ids=[i for i, _, _ in _PATHOLOGICAL]
)
def test_pathological_input(doc: str, expected: str) -> None:
    assert clean_wiki_text(doc) == expected
