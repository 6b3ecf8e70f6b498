"""Converters of `kormed prepare`: the seeds' exact text forms and the Korean particle rule."""

from __future__ import annotations

import pytest

from kormed.prepare.render import (
    josa,
    korean_part,
    render_mcq,
    render_medical,
    render_symbol,
    split_definition,
    split_gloss,
    with_josa,
)
from kormed.records import MCQ, DictEntry

SEED_MCQ = MCQ(
    question="항문압 측정 검사에서 항문 압력이 증가하는 경우는?",
    options=(
        "직장질루(rectovaginal fistula)",
        "항문열창(anal fissure)",
        "대변실금(fecal incontinence)",
        "대변메막힘(fecal impaction)",
        "직장탈출증(rectal prolapse)",
    ),
    answer=2,
)


# -- MCQ ------------------------------------------------------------------------------------------------------
def test_mcq_seed_001_form_exactly() -> None:
    expected = (
        "항문압 측정 검사에서 항문 압력이 증가하는 경우는?\n"
        "선택지: 직장질루, 항문열창, 대변실금, 대변메막힘, 직장탈출증\n"
        "정답: 항문열창\n"
        "\n"
        "항문열창(anal fissure)은 의학적으로 중요한 개념이다."
    )
    assert render_mcq(SEED_MCQ) == expected
    assert render_mcq(SEED_MCQ, "korean_only") == expected


def test_mcq_seed_000_form_exactly() -> None:
    # The JSON line printed in seed 000, decoded.
    expected = (
        "항문압 측정 검사에서 항문 압력이 증가하는 경우는?\n선택지: 직장질루(rectovaginal fistula), "
        "항문열창(anal fissure), 대변실금(fecal incontinence), 대변메막힘(fecal impaction), "
        "직장탈출증(rectal prolapse)\n정답: 항문열창\n\n항문열창(anal fissure)은 의학적으로 중요한 개념이다."
    )
    assert render_mcq(SEED_MCQ, "with_english") == expected


def test_mcq_answer_positions_and_vowel_final_answer() -> None:
    options = ("코(nose)", "귀(ear)", "눈(eye)", "혀(tongue)", "입(mouth)")
    first = render_mcq(MCQ("냄새를 맡는 기관은?", options, 1))
    assert first.endswith("\n정답: 코\n\n코(nose)는 의학적으로 중요한 개념이다.")
    last = render_mcq(MCQ("음식을 먹는 기관은?", options, 5))
    assert last.endswith("\n정답: 입\n\n입(mouth)은 의학적으로 중요한 개념이다.")
    assert "선택지: 코, 귀, 눈, 혀, 입\n" in first


def test_mcq_options_without_or_with_korean_gloss_are_kept_whole() -> None:
    options = ("정상", "A형(혈액형)", "비타민 B12", "3.5 mg/dL", "제2형 당뇨병(type 2 diabetes)")
    text = render_mcq(MCQ("고르시오.", options, 3))
    assert "선택지: 정상, A형(혈액형), 비타민 B12, 3.5 mg/dL, 제2형 당뇨병\n" in text
    assert text.endswith("정답: 비타민 B12\n\n비타민 B12는 의학적으로 중요한 개념이다.")


def test_mcq_sentence_answer_drops_its_period_before_the_particle() -> None:
    options = (
        "식후에 복용한다.",
        "아침 공복에 복용한다.",
        "취침 전에 복용한다.",
        "필요할 때만 복용한다.",
        "우유와 함께 복용한다.",
    )
    text = render_mcq(MCQ("갑상샘호르몬제의 복용법은?", options, 2))
    assert text.endswith("정답: 아침 공복에 복용한다.\n\n아침 공복에 복용한다는 의학적으로 중요한 개념이다.")


def test_mcq_unknown_style_rejected() -> None:
    with pytest.raises(ValueError):
        render_mcq(SEED_MCQ, "both")  # type: ignore[arg-type]


def test_split_gloss() -> None:
    assert split_gloss("직장질루(rectovaginal fistula)") == ("직장질루", "rectovaginal fistula")
    assert split_gloss("  항문열창 (anal fissure) ") == ("항문열창", "anal fissure")
    assert split_gloss("근육(muscle (skeletal))") == ("근육", "muscle (skeletal)")  # nested, depth-counted
    assert split_gloss("(anal fissure)") == ("(anal fissure)", "")  # no Korean part: kept whole
    assert split_gloss("비타민(vitamin) 결핍") == ("비타민(vitamin) 결핍", "")
    assert korean_part("A형(혈액형)") == "A형(혈액형)"
    assert korean_part("열(") == "열("  # unbalanced: kept


# -- dictionaries ---------------------------------------------------------------------------------------------
def test_medical_dict_seed_forms_exactly() -> None:
    hyper = DictEntry("고혈압", "Hypertension. 혈압이 정상 범위보다 높은 상태")
    assert render_medical(hyper) == "고혈압(Hypertension)은 혈압이 정상 범위보다 높은 상태를 의미한다."
    assert render_medical(DictEntry("약", "medicine")) == "약은 medicine을 의미하는 의학 용어이다."
    dm = DictEntry("당뇨병", "Diabetes Mellitus. 인슐린 분비나 작용의 이상")
    assert render_medical(dm) == "당뇨병(Diabetes Mellitus)은 인슐린 분비나 작용의 이상을 의미한다."


def test_medical_dict_other_forms() -> None:
    # vowel-final term and vowel-final Korean definition; trailing period dropped
    assert render_medical(DictEntry("설사", "Diarrhea. 묽은 변을 자주 보는 상태.")) == (
        "설사(Diarrhea)는 묽은 변을 자주 보는 상태를 의미한다."
    )
    # English-only, vowel-final term, English word ending in a vowel sound (fever -> 피버)
    assert render_medical(DictEntry("코", "nose")) == "코는 nose를 의미하는 의학 용어이다."
    assert render_medical(DictEntry("열", "fever.")) == "열은 fever를 의미하는 의학 용어이다."
    # Korean-only definition
    assert render_medical(DictEntry("두통", "머리가 아픈 증상")) == "두통은 머리가 아픈 증상을 의미한다."
    # the English name may itself contain '. '
    assert split_definition("Dr. Smith sign. 손가락 끝의 변화") == ("Dr. Smith sign", "손가락 끝의 변화")
    assert split_definition("Hypertension. 혈압이 높다. 흔하다.") == ("Hypertension", "혈압이 높다. 흔하다")


def test_char_dict_seed_forms_exactly() -> None:
    up = DictEntry("↑", "increased, elevated, or upward trend")
    assert render_symbol(up) == "의학 기호 ↑는 increased, elevated, or upward trend를 나타낸다."
    pm = DictEntry("±", "plus-minus sign")
    assert render_symbol(pm) == "의학 기호 ±는 plus-minus sign를 나타낸다."
    # The documented rule (char_particles: rule) reads `sign` as 사인 -> 을.
    assert render_symbol(pm, "rule") == "의학 기호 ±는 plus-minus sign을 나타낸다."
    assert render_symbol(up, "rule") == "의학 기호 ↑는 increased, elevated, or upward trend를 나타낸다."
    assert render_symbol(DictEntry("=", "equal to"), "rule") == "의학 기호 =은 equal to를 나타낸다."


# -- particles ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("word", "topic", "subject", "obj"),
    [
        ("코", "는", "가", "를"),  # vowel-final Hangul
        ("약", "은", "이", "을"),  # consonant-final (ㄱ)
        ("혈압", "은", "이", "을"),  # ㅂ
        ("열", "은", "이", "을"),  # ㄹ-final counts as a consonant for these pairs
        ("항문열창(anal fissure)", "은", "이", "을"),  # the gloss is skipped
        ("코(nose)", "는", "가", "를"),
        ("「고혈압」", "은", "이", "을"),  # closing quotes skipped
        ("ㄱ", "은", "이", "을"),  # consonant letter
        ("ㅏ", "는", "가", "를"),  # vowel letter
    ],
)
def test_particles_hangul(word: str, topic: str, subject: str, obj: str) -> None:
    assert josa(word, "은/는") == topic
    assert josa(word, "이/가") == subject
    assert josa(word, "을/를") == obj


@pytest.mark.parametrize(
    ("word", "particle"),
    [
        ("medicine", "을"),  # 메디신: silent e after n
        ("syndrome", "을"),  # 신드롬
        ("cycle", "을"),  # 사이클 (ㄹ)
        ("sign", "을"),  # 사인
        ("swelling", "을"),  # -ng
        ("tablet", "을"),  # 태블릿: t after a single short vowel
        ("clinic", "을"),  # 클리닉
        ("lower back", "을"),  # 백: ck after a short vowel; the last word counts
        ("shoulder", "를"),  # 숄더
        ("fever", "를"),  # 피버: final r is silent
        ("trend", "를"),  # 트렌드
        ("test", "를"),  # 테스트
        ("therapy", "를"),
        ("tube", "를"),  # 튜브
        ("CT", "를"),  # letters: 씨티
        ("MRI", "를"),  # 엠알아이
        ("HDL", "을"),  # 에이치디엘
        ("x", "를"),  # 엑스
        ("N", "을"),  # 엔
    ],
)
def test_particles_latin(word: str, particle: str) -> None:
    assert josa(word, "을/를") == particle


@pytest.mark.parametrize(
    ("word", "particle"),
    [
        ("1", "은"),  # 일
        ("2", "는"),  # 이
        ("3", "은"),  # 삼
        ("4", "는"),
        ("5", "는"),
        ("6", "은"),  # 육
        ("7", "은"),
        ("8", "은"),
        ("9", "는"),
        ("10", "은"),  # 십
        ("100", "은"),  # 백
        ("B12", "는"),  # 십이
        ("COVID-19", "는"),  # 구
        ("3.5", "는"),  # 삼점오
    ],
)
def test_particles_digits(word: str, particle: str) -> None:
    assert josa(word, "은/는") == particle


@pytest.mark.parametrize(
    ("word", "particle"),
    [("↑", "가"), ("±", "가"), ("%", "가"), ("°", "가"), ("→", "가"), ("=", "이"), ("♂", "이"), ("㎎", "이")],
)
def test_particles_symbols(word: str, particle: str) -> None:
    assert josa(word, "이/가") == particle


def test_with_josa_and_unknown_pair() -> None:
    assert with_josa("항문열창(anal fissure)", "은/는") == "항문열창(anal fissure)은"
    with pytest.raises(ValueError):
        josa("코", "와/과")
