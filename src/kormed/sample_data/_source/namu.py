# ruff: noqa: E501  (authored NamuMark documents)
"""The sample Namu Wiki dump: main-namespace articles plus the pages a real dump also contains and the cleaner
and filters must handle (templates and categories in other namespaces, redirects, short stubs, a page that is
mostly not Korean). Records are `{namespace, title, text, contributors, id}` as in the seeds.

Namespaces follow the dump's numbering: 0 = 문서 (main), 1 = 틀 (template), 2 = 분류 (category),
6 = 나무위키 (project pages).
"""

from __future__ import annotations

from typing import Any

from kormed.sample_data._source import namu_general, namu_medical

MAIN = 0
TEMPLATE = 1
CATEGORY = 2
PROJECT = 6

# Pages outside the main namespace (a cleaner keeps them, a namespace filter drops them).
OTHER_NAMESPACES: list[tuple[int, str, list[str], str]] = [
    (TEMPLATE, "틀:의학 정보", ["medwriter01"], r"""{{{#!wiki style="border:2px solid #4a86e8; border-radius:4px; padding:6px"
||<tablewidth=100%><-2><bgcolor=#4a86e8><color=#fff><:> '''@질환명@''' ||
|| 영문명 || @영문명@ ||
|| 진료과 || @진료과@ ||
|| 주의 || 이 문서는 의학 정보를 담고 있습니다. 증상이 있으면 의료진과 상담하십시오. ||
}}}
[[분류:의학 틀]]"""),
    (TEMPLATE, "틀:조선의 궁궐", ["궁궐산책"], r"""{{{#!folding [ 조선의 궁궐 펼치기 · 접기 ]
||<tablewidth=100%><bgcolor=#8b0000><color=#fff> 법궁 || [[경복궁]] ||
||<bgcolor=#8b0000><color=#fff> 이궁 || [[창덕궁]] · [[창경궁]] · [[경희궁]] · [[덕수궁]] ||
}}}
[[분류:조선의 궁궐]][[분류:틀]]"""),
    (CATEGORY, "분류:의학", ["medwriter01", "211.36.142.7"], r"""의학과 관련된 문서를 모은 분류입니다. 질환, 약물, 검사, 치료법 문서를 여기에 넣습니다.
 * 하위 분류: [[:분류:감염병]], [[:분류:순환기 질환]], [[:분류:호흡기 질환]], [[:분류:약물]]
[[분류:학문]]"""),
    (PROJECT, "나무위키:편집 지침/의학", ["admin_bot"], r"""[목차]
== 개요 ==
의학 문서를 편집할 때 지켜야 할 지침입니다. 의학 정보는 독자의 건강에 직접 영향을 줄 수 있으므로 '''신뢰할 수 있는 출처'''를 바탕으로 작성해야 합니다.
== 지침 ==
 1. 진단 기준과 치료법은 학회 진료 지침이나 교과서를 근거로 쓴다.
 1. 특정 병원이나 제품을 홍보하지 않는다.
 1. 개인의 투병 경험은 일반화하지 않는다."""),
]

# Redirect documents: dropped by the cleaner (`#redirect`).
REDIRECTS: list[tuple[str, str]] = [
    ("당뇨", "#redirect 당뇨병"),
    ("중풍", "#redirect 뇌졸중"),
]

# Main-namespace pages that the filters must drop: too short once cleaned (< 100 characters), or mostly not
# Hangul (< 10% of the characters).
SHORT_STUBS: list[tuple[str, list[str], str]] = [
    ("가나다라", ["118.41.7.2"], r"""'''가나다라'''는 [[한글]] 자음의 순서를 외울 때 흔히 쓰는 말이다.
[[분류:한글]]"""),
    ("을지로3가역", ["subway_fan"], r"""[목차]
== 개요 ==
[[서울 지하철 2호선]]과 [[서울 지하철 3호선]]의 [[환승역]].
[[분류:서울 지하철의 역]]"""),
    ("단풍 사진", ["photo_kr", "59.6.180.33"], r"""||<tablealign=center> [[파일:단풍1.jpg|width=200]] || [[파일:단풍2.jpg|width=200]] ||
|| [[파일:단풍3.jpg|width=200]] || [[파일:단풍4.png|width=200]] ||
가을 [[단풍]].
[[분류:사진]]"""),
]

NOT_KOREAN: list[tuple[str, list[str], str]] = [
    ("星降る夜のメロディー", ["anisong_fan", "126.33.8.140"], r"""[목차]
== 개요 ==
'''{{{+1 星降る夜のメロディー}}}'''(Hoshi Furu Yoru no Melody)
== 歌詞 ==
{{{#!folding [ 歌詞 ]
星が降る夜に 君の声が聞こえた
遠い街の灯り ひとつずつ消えていく
Hoshi ga furu yoru ni kimi no koe ga kikoeta
Tooi machi no akari hitotsu zutsu kieteiku
忘れないで この空を 忘れないで あの約束を
Wasurenaide kono sora wo, wasurenaide ano yakusoku wo
}}}
== Credits ==
||<tablewidth=100%> Lyrics || Sample Writer ||
|| Music || Sample Composer ||
|| Arrangement || Sample Arranger ||
[[분류:노래]]"""),
    ("Lorem ipsum", ["typo_nerd"], r"""[목차]
== 개요 ==
'''Lorem ipsum''' 문단.
Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat. Duis aute irure dolor in reprehenderit in voluptate velit esse cillum dolore eu fugiat nulla pariatur.
[[분류:타이포그래피]]"""),
]


def records() -> list[dict[str, Any]]:
    """All pages in a fixed order, with dump-style ids (`NNNNNN-R`)."""
    pages: list[tuple[int, str, list[str], str]] = []
    medical = [(MAIN, t, c, x) for t, c, x in namu_medical.ARTICLES]
    general = [(MAIN, t, c, x) for t, c, x in namu_general.ARTICLES]
    # Interleave medical and general articles so that both shards hold both kinds.
    for i in range(max(len(medical), len(general))):
        pages.extend(medical[i : i + 1])
        pages.extend(general[i : i + 1])
    pages[5:5] = [(MAIN, t, ["redirect_bot"], x) for t, x in REDIRECTS[:1]]
    pages[12:12] = OTHER_NAMESPACES[:2]
    pages[20:20] = [(MAIN, t, c, x) for t, c, x in SHORT_STUBS]
    pages[27:27] = [(MAIN, t, c, x) for t, c, x in NOT_KOREAN]
    pages.extend(OTHER_NAMESPACES[2:])
    pages.extend((MAIN, t, ["redirect_bot"], x) for t, x in REDIRECTS[1:])
    out = []
    for n, (namespace, title, contributors, text) in enumerate(pages, start=1):
        out.append(
            {
                "namespace": namespace,
                "title": title,
                "text": text,
                "contributors": list(contributors),
                "id": f"{n * 37:06d}-{1 + n % 3}",
            }
        )
    return out
