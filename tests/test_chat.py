"""Chat format and answer-only loss masks, checked with the real Gemma 3 tokenizer."""

from __future__ import annotations

import pytest

from kormed.data.chat import (
    IGNORE_INDEX,
    ChatTemplates,
    EncodeStats,
    ExampleTooLong,
    chat_prompt,
    encode_chat_example,
    encode_raw_text,
    encode_raw_texts,
    mcq_user_prompt,
    render_chat_text,
    render_dict_entry,
    render_dict_forms,
    render_mcq,
)
from kormed.errors import KormedError
from kormed.records import MCQ, DictEntry

MCQ_ITEM = MCQ(
    question="항문압 측정 검사에서 항문 압력이 증가하는 경우는?",
    options=("직장질루(rectovaginal fistula)", "항문열창(anal fissure)", "대변실금(fecal incontinence)",
             "대변메막힘(fecal impaction)", "직장탈출증(rectal prolapse)"),
    answer=2,
    cot="항문열창은 통증으로 괄약근 긴장이 증가한다.",
)


def _learned(tok, enc) -> str:
    return tok.decode([i for i, lab in zip(enc["input_ids"], enc["labels"], strict=True) if lab != IGNORE_INDEX])


def test_seed_example_renders_exactly():
    user, answer = render_dict_entry(DictEntry("고혈압", "Hypertension. 혈압이 정상 범위보다 높은 상태"))
    assert render_chat_text(user, answer) == (
        "<start_of_turn>user\nMeaning of word 고혈압:<end_of_turn>\n<start_of_turn>model\n"
        "Hypertension. 혈압이 정상 범위보다 높은 상태<end_of_turn>\n"
    )
    assert chat_prompt("x") == "<start_of_turn>user\nx<end_of_turn>\n<start_of_turn>model\n"


def test_mcq_renderers():
    user, answer = render_mcq(MCQ_ITEM)
    assert user.startswith(MCQ_ITEM.question + "\nA. 직장질루(rectovaginal fistula)\nB. 항문열창")
    assert "E. 직장탈출증(rectal prolapse)" in user and user == mcq_user_prompt(MCQ_ITEM)
    assert answer == "정답: B. 항문열창(anal fissure)"
    _, cot_answer = render_mcq(MCQ_ITEM, reasoning=True)
    assert cot_answer == MCQ_ITEM.cot + "\n정답: B. 항문열창(anal fissure)"
    no_cot = MCQ(**{**MCQ_ITEM.__dict__, "cot": "  "})
    assert render_mcq(no_cot, reasoning=True)[1] == answer
    _, sym = render_dict_entry(DictEntry("↑", "increased"), symbol=True)
    assert sym == "increased"
    assert render_dict_entry(DictEntry("↑", "increased"), symbol=True)[0] == "Meaning of medical symbol ↑:"


def test_templates_configurable_and_validated():
    t = ChatTemplates(mcq_answer="Answer {letter}", dict_prompt="뜻: {term}")
    assert render_mcq(MCQ_ITEM, t)[1] == "Answer B"
    assert render_dict_entry(DictEntry("약", "medicine"), t)[0] == "뜻: 약"
    with pytest.raises(KormedError, match="templates.mcq_answer"):
        ChatTemplates(mcq_answer="{nope}").validate()


def test_dictionary_surface_forms():
    entry = DictEntry("고혈압", "Hypertension. 혈압이 정상 범위보다 높은 상태")
    assert render_dict_forms(entry) == [render_dict_entry(entry)]  # the default: the seeds' one form
    t = ChatTemplates(dict_forms=["meaning", "term", "english"])
    assert render_dict_forms(entry, t) == [
        ("Meaning of word 고혈압:", "Hypertension. 혈압이 정상 범위보다 높은 상태"),
        ("Term meaning: 혈압이 정상 범위보다 높은 상태", "고혈압"),
        ("Korean term for Hypertension:", "고혈압"),
    ]
    # no Korean part: the English definition is the meaning, and there is no separate English name to ask
    assert render_dict_forms(DictEntry("약", "medicine"), t) == [("Meaning of word 약:", "medicine"),
                                                               ("Term meaning: medicine", "약")]
    assert render_dict_forms(DictEntry("↑", "increased."), t, symbol=True) == [
        ("Meaning of medical symbol ↑:", "increased."), ("Term meaning: increased", "↑")]
    for bad, message in ((["meaning", "cloze"], "unknown form 'cloze'"), ([], "at least one form"),
                         (["term", "term"], "listed twice")):
        with pytest.raises(KormedError, match=message):
            ChatTemplates(dict_forms=bad).validate()


@pytest.mark.parametrize("kind", ["dict", "mcq", "cot"])
def test_unmasked_tokens_are_exactly_the_answer_and_end_of_turn(real_tokenizer, kind):
    tok = real_tokenizer
    if kind == "dict":
        user, answer = render_dict_entry(DictEntry("고혈압", "Hypertension. 혈압이 정상 범위보다 높은 상태"))
    else:
        user, answer = render_mcq(MCQ_ITEM, reasoning=kind == "cot")
    enc = encode_chat_example(tok, user, answer, 512)
    assert _learned(tok, enc) == answer + "<end_of_turn>"
    ids = enc["input_ids"]
    # <bos> exactly once, first; the trailing newline is present but not learned.
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert tok.decode(ids[-2:]) == "<end_of_turn>\n" and enc["labels"][-1] == IGNORE_INDEX
    assert enc["labels"][-2] == tok.convert_tokens_to_ids("<end_of_turn>")
    # The whole sequence decodes to the seed format, and the prompt is what the evaluator tokenizes.
    assert tok.decode(ids) == "<bos>" + render_chat_text(user, answer)
    n_prompt = enc["labels"].index(next(lab for lab in enc["labels"] if lab != IGNORE_INDEX))
    assert ids[:n_prompt] == tok("<bos>" + chat_prompt(user), add_special_tokens=False)["input_ids"]
    assert len(ids) == len(enc["labels"]) == len(enc["attention_mask"])


def test_prerendered_prompt_is_not_wrapped_twice(real_tokenizer):
    a = encode_chat_example(real_tokenizer, "Meaning of word 약:", "medicine", 64)
    b = encode_chat_example(real_tokenizer, chat_prompt("Meaning of word 약:"), "medicine", 64)
    assert a == b


def test_over_long_truncates_user_text_from_the_left_then_skips(real_tokenizer):
    tok = real_tokenizer
    stats = EncodeStats()
    user, answer = render_mcq(MCQ_ITEM)
    full = encode_chat_example(tok, user, answer, 512)
    enc = encode_chat_example(tok, user, answer, len(full["input_ids"]) - 5, stats=stats)
    assert len(enc["input_ids"]) == len(full["input_ids"]) - 5
    assert _learned(tok, enc) == answer + "<end_of_turn>"
    # the end of the user text (the instruction) survives, its start is cut
    assert "고르세요.<end_of_turn>" in tok.decode(enc["input_ids"])
    assert MCQ_ITEM.question[:6] not in tok.decode(enc["input_ids"])
    assert stats.truncated == 1 and stats.truncated_tokens == 5
    with pytest.raises(ExampleTooLong):
        encode_chat_example(tok, user, answer * 10, 64, stats=stats)
    assert stats.skipped == 1 and stats.encoded == 1 and stats.examples


def test_raw_text_is_fully_learned_and_split_without_loss(real_tokenizer):
    tok = real_tokenizer
    text = "당뇨병은 혈당 조절 장애로 인한 대사 질환이다. " * 20
    stats = EncodeStats()
    parts = encode_raw_text(tok, text, 32, stats=stats)
    assert len(parts) > 1 and stats.raw_chunks == 1
    assert all(p["input_ids"][0] == tok.bos_token_id and len(p["input_ids"]) <= 32 for p in parts)
    assert all(p["labels"] == p["input_ids"] for p in parts)
    body = [i for p in parts for i in p["input_ids"][1:]]
    assert tok.decode(body) == text + "<end_of_turn>"
    # the batched form gives the same examples, text after text
    short = "짧은 문장."
    assert encode_raw_texts(tok, [text, short], 32, batch_size=1) == parts + encode_raw_text(tok, short, 32)
