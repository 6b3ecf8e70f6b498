"""The `generate` prompt strings and the answer extraction follow the lm-evaluation-harness kormedmcqa v3.0
protocol. Expected strings are written out by hand from the protocol (not produced by importing the harness)."""

from __future__ import annotations

import pytest

from kormed.errors import KormedError
from kormed.eval.extract import apply_stop_sequences, extract_answer
from kormed.eval.kormedmcqa import (
    HARNESS_STOP_SEQUENCES,
    HARNESS_VERSION,
    chat_mode_prompt,
    generate_prompt,
    harness_fewshot_text,
    harness_question_text,
    loglik_continuations,
    select_fewshot,
)
from kormed.records import MCQ


def mcq(question: str, options: tuple[str, ...], answer: int, subset: str = "doctor", year: int = 2022) -> MCQ:
    return MCQ(question=question, options=options, answer=answer, exam_type=subset, year=year)  # type: ignore[arg-type]


TEST_Q = mcq(
    "  45세 남자가 복통으로 왔다. 가장 적절한 검사는?\n", ("복부 CT", "흉부 X선", "심전도", "뇌 MRI", "혈액 배양"), 1
)
SHOT_1 = mcq("항문열창의 1차 치료는?", ("수술", "좌욕과 식이섬유", "항생제", "방사선", "관찰"), 2)
SHOT_2 = mcq(" 비타민 C 결핍 질환은? ", ("구루병", "각기병", "괴혈병", "야맹증", "펠라그라"), 3)
SHOT_NURSE = mcq("간호 질문", ("가", "나", "다", "라", "마"), 5, subset="nurse")


def test_zero_shot_prompt_char_by_char():
    expected = (
        "<bos>45세 남자가 복통으로 왔다. 가장 적절한 검사는?\n"
        "A. 복부 CT\n"
        "B. 흉부 X선\n"
        "C. 심전도\n"
        "D. 뇌 MRI\n"
        "E. 혈액 배양\n"
        "정답\uff1a"
    )
    assert generate_prompt(TEST_Q) == expected
    assert generate_prompt(TEST_Q).endswith("정답：")  # FULL-WIDTH colon U+FF1A, not ASCII ':'
    assert ":" not in harness_question_text(TEST_Q)
    assert generate_prompt(TEST_Q).count("<bos>") == 1


def test_two_shot_prompt_char_by_char():
    expected = (
        "<bos>"
        "항문열창의 1차 치료는?\nA. 수술\nB. 좌욕과 식이섬유\nC. 항생제\nD. 방사선\nE. 관찰\n정답： B\n\n"
        "비타민 C 결핍 질환은?\nA. 구루병\nB. 각기병\nC. 괴혈병\nD. 야맹증\nE. 펠라그라\n정답： C\n\n"
        "45세 남자가 복통으로 왔다. 가장 적절한 검사는?\n"
        "A. 복부 CT\nB. 흉부 X선\nC. 심전도\nD. 뇌 MRI\nE. 혈액 배양\n정답："
    )
    pool = [SHOT_1, SHOT_2, mcq("세 번째", ("a", "b", "c", "d", "e"), 4)]
    assert generate_prompt(TEST_Q, pool, 2) == expected
    assert harness_fewshot_text(SHOT_1).endswith("정답： B\n\n")


def test_fewshot_first_n_of_own_subset_else_whole_file():
    pool = [SHOT_NURSE, SHOT_1, SHOT_2]
    assert select_fewshot(TEST_Q, pool, 2) == [SHOT_1, SHOT_2]  # doctor question: doctor shots, in file order
    other = mcq("x", ("a", "b", "c", "d", "e"), 1, subset="dentist")
    assert select_fewshot(other, pool, 2) == [SHOT_NURSE, SHOT_1]  # no dentist shots: first-n of the file
    assert select_fewshot(TEST_Q, pool, 0) == []
    with pytest.raises(KormedError, match="num-fewshot 3"):
        select_fewshot(TEST_Q, pool, 3)


def test_stop_sequences_are_the_harness_ones():
    assert HARNESS_STOP_SEQUENCES == ("Q:", "</s>", "<|im_end|>", ".", "\n\n")
    assert HARNESS_VERSION == "kormedmcqa 3.0"
    assert apply_stop_sequences(" B. 좌욕이 1차 치료이다", HARNESS_STOP_SEQUENCES) == " B"
    assert apply_stop_sequences(" C\n\nQ: 다음", HARNESS_STOP_SEQUENCES) == " C"
    assert apply_stop_sequences("답 D</s>잡음", HARNESS_STOP_SEQUENCES) == "답 D"
    assert apply_stop_sequences("E<|im_end|>", HARNESS_STOP_SEQUENCES) == "E"
    assert apply_stop_sequences("가나 Q: 다", HARNESS_STOP_SEQUENCES) == "가나 "
    assert apply_stop_sequences("정답은 A\n설명", HARNESS_STOP_SEQUENCES) == "정답은 A\n설명"  # one newline is kept


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # pattern 1: 정답 + ASCII colon/whitespace + letter; last match wins
        ("정답: B", "B"),
        ("정답 c", "C"),
        ("정답:A 라고 생각했지만 정답: D", "D"),
        ("정답B", "B"),
        # quirk 1: the full-width colon is not in [:\s], so 정답：B falls to a later pattern (here bare letter)
        ("정답：B", "B"),
        ("정답：B 그리고 A", "A"),  # ... and the bare-letter pattern takes the LAST standalone letter
        # pattern 2: 정답은 X 입니다 (reached only when pattern 1 fails: 정답은 breaks [:\s]*)
        ("정답은 C 입니다. 왜냐하면 A는 틀렸다", "C"),
        ("정답은D입니다", "D"),
        # pattern 3: letter followed by a period, last one
        ("A. 아니고 E. 입니다", "E"),
        ("B.", "B"),
        # quirk 2: "E. coli" is read as answer E by pattern 3, and pattern 3 beats a later bare letter
        ("원인균은 E. coli 이고 답은 B", "E"),
        # pattern 4: standalone letter, last one, case-insensitive, upper-cased
        ("B", "B"),
        (" d", "D"),
        ("아마 A 또는 C", "C"),
        ("vitamin D", "D"),
        # quirk 3: a letter glued to Hangul or to other letters is not standalone
        ("답B", ""),
        ("ABC", ""),
        # the SFT chat answer formats (kormed.data.chat): plain, and reasoning followed by the answer line
        ("정답: B. 항문열창(anal fissure)", "B"),
        ("A는 금기이고 C. 는 2차 치료이다.\n정답: D. 좌욕", "D"),
        # nothing
        ("", ""),
        ("모르겠습니다", ""),
        ("F", ""),
    ],
)
def test_extraction_cascade(text, expected):
    assert extract_answer(text) == expected


def test_first_matching_pattern_wins_over_later_positions():
    # pattern 1 matches (early) although a bare letter and an "X." come later
    assert extract_answer("정답: A\n참고로 B. 는 틀리고 C") == "A"
    # pattern 2 beats pattern 3 and 4
    assert extract_answer("E. coli 때문에 정답은 B 입니다 D") == "B"


def test_generation_then_extraction_like_the_harness():
    # "B. 설명" is cut at the '.' stop, leaving " B" for the bare-letter pattern
    out = apply_stop_sequences(" B. 좌욕과 식이섬유가 1차 치료이다.", HARNESS_STOP_SEQUENCES)
    assert out == " B" and extract_answer(out) == "B"


def test_loglik_continuations_and_chat_prompt():
    assert loglik_continuations(TEST_Q) == [" A", " B", " C", " D", " E"]
    assert loglik_continuations(TEST_Q, "text")[1] == " 흉부 X선"
    with pytest.raises(KormedError):
        loglik_continuations(TEST_Q, "bogus")
    chat = chat_mode_prompt(TEST_Q)
    assert chat.startswith("<bos><start_of_turn>user\n45세 남자가")
    assert chat.endswith("<end_of_turn>\n<start_of_turn>model\n")
    assert chat.count("<bos>") == 1 and "A. 복부 CT\n" in chat
