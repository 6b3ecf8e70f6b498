"""Gemma chat format for the SFT stages: prompt renderers and answer-only-loss encoding.

One training example is::

    <bos><start_of_turn>user
    {user text}<end_of_turn>
    <start_of_turn>model
    {answer}<end_of_turn>
    (newline)

exactly as in the seeds, preceded by `<bos>` (Gemma degrades badly without it).

Loss mask (answer-only loss): every token up to and including the `model\\n` header is masked (-100); the answer
tokens and the closing `<end_of_turn>` are learned, so the model learns to stop. The trailing newline after
`<end_of_turn>` is part of the sequence (it is the format) but is NOT learned: generation stops at
`<end_of_turn>`, so that token is never generated and learning it would only spend loss on a constant.

Token boundary: the prompt (`<bos>` + `chat_prompt(user)`), the answer, and the closing `<end_of_turn>\\n` are
tokenized separately and their ids concatenated. This is exactly what the model sees at inference (the evaluator
tokenizes `chat_prompt(...)` and generates from there), so no token straddles the prompt/answer boundary.

Over-long examples (more than `max_length` tokens): the user text is truncated *from the left* (its start is
dropped, keeping the chat header, the end of the user text -- for an MCQ the options and the answer instruction --
and the whole answer). If even an empty user text leaves no room for the whole answer plus `<end_of_turn>`,
:class:`ExampleTooLong` is raised and the caller skips the example and counts it (see :class:`EncodeStats`).

Default templates (all configurable through :class:`ChatTemplates`, i.e. the `sft.templates` config section):

* medical dictionary: user `Meaning of word {term}:` -> model `{definition}`
  (e.g. `Meaning of word 고혈압:` -> `Hypertension. 혈압이 정상 범위보다 높은 상태`).
* symbol dictionary: user `Meaning of medical symbol {term}:` -> model `{definition}`.
* MCQ: user = the question, the five options `A. ...` to `E. ...` one a line, then the instruction
  `정답을 A, B, C, D, E 중에서 하나 고르세요.`; model = `정답: {letter}. {answer text}`
  (e.g. `정답: B. 항문열창(anal fissure)`).
* MCQ with reasoning: model = `{cot}` then a newline then the same `정답: {letter}. {answer text}` line; when the
  record has no `cot` it is the plain MCQ answer.

The answer line of an MCQ therefore always starts with `정답: ` followed by the letter; an evaluator parsing
generated text should take the LAST `정답: X` in the output (the reasoning may mention letters).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kormed.config import opt
from kormed.data.packing import pack_documents
from kormed.errors import KormedError
from kormed.records import LETTERS, MCQ, DictEntry, split_definition, strip_final_period

# torch, transformers and the kormed modules that load them are imported inside the functions that use them:
# this module is imported by `kormed --help` or by a torch-free command, which must not pay for them.

START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"
IGNORE_INDEX = -100

DEFAULT_MCQ_TEMPLATE = "{question}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\nE. {E}\n정답을 A, B, C, D, E 중에서 하나 고르세요."
DEFAULT_MCQ_ANSWER_TEMPLATE = "정답: {letter}. {answer_text}"
DEFAULT_MCQ_COT_TEMPLATE = "{cot}\n{answer}"
DEFAULT_DICT_PROMPT = "Meaning of word {term}:"
DEFAULT_SYMBOL_PROMPT = "Meaning of medical symbol {term}:"
DEFAULT_DICT_ANSWER = "{definition}"
# The surface forms a dictionary entry is trained in (`templates.dict_forms`). `meaning` is the seeds' form, written
# by the three templates above; the others ask for the same fact another way (knowledge-extraction research: a fact
# seen in one form is memorised but not retrieved in another). None is a choice among options, so none is a form
# `kormed eval knowledge` asks in. Fields: {term}, {definition} (as written), {korean} (its Korean part, or the whole
# definition when it has none), {english} (the English name of a definition that also has Korean).
DICT_FORMS: dict[str, tuple[str, str]] = {
    "meaning": ("", ""),  # dict_prompt / symbol_prompt -> dict_answer
    "term": ("Term meaning: {korean}", "{term}"),
    "english": ("Korean term for {english}:", "{term}"),
}


@dataclass
class ChatTemplates:
    """Prompt/answer templates of the chat-format SFT data (Python `str.format` fields named in each help)."""

    dict_prompt: str = opt(DEFAULT_DICT_PROMPT, "User turn for a medical-dictionary entry. Fields: {term}.")
    symbol_prompt: str = opt(DEFAULT_SYMBOL_PROMPT, "User turn for a symbol-dictionary entry. Fields: {term}.")
    dict_answer: str = opt(DEFAULT_DICT_ANSWER, "Model turn for a dictionary entry. Fields: {term}, {definition}.")
    dict_forms: list[str] = opt(
        ["meaning"],
        "Surface forms each dictionary entry is trained in, one example per form (an entry without the form's\n"
        "field, e.g. `english` for a definition with no Korean part, skips it): meaning = the two templates\n"
        "above; term = `Term meaning: <Korean definition>` -> term; english = `Korean term for <English name>:`\n"
        "-> term. None is a multiple-choice form, so `kormed eval knowledge` asks in forms no stage trains on.",
    )
    mcq_prompt: str = opt(
        DEFAULT_MCQ_TEMPLATE,
        "User turn for a KorMedMCQA question (also used by `kormed eval kormedmcqa --mode chat`).\n"
        "Fields: {question}, {A}..{E}, {options} (the five 'X. text' lines).",
    )
    mcq_answer: str = opt(
        DEFAULT_MCQ_ANSWER_TEMPLATE,
        "Model turn for an MCQ (keep it starting with '정답: {letter}': the evaluator parses that).\n"
        "Fields: {letter}, {answer_text}, {index} (1-5).",
    )
    mcq_cot_answer: str = opt(
        DEFAULT_MCQ_COT_TEMPLATE,
        "Model turn for an MCQ with reasoning, used when the record has a non-empty 'cot'.\n"
        "Fields: {cot}, {answer} (the rendered mcq_answer), {letter}, {answer_text}.",
    )

    def validate(self) -> None:
        if not self.dict_forms:
            raise KormedError("at least one form is needed", field="templates.dict_forms")
        for form in self.dict_forms:
            if form not in DICT_FORMS:
                raise KormedError(f"unknown form '{form}' (known: {', '.join(DICT_FORMS)})",
                                  field="templates.dict_forms")
        if len(set(self.dict_forms)) != len(self.dict_forms):
            raise KormedError("a form is listed twice", field="templates.dict_forms")
        probe_mcq = {"question": "q", "options": "o", "letter": "A", "answer_text": "a", "index": 1, "cot": "c",
                     "answer": "x", **{k: k for k in LETTERS}}
        for name, fields in (
            ("dict_prompt", {"term": "t", "definition": "d"}),
            ("symbol_prompt", {"term": "t", "definition": "d"}),
            ("dict_answer", {"term": "t", "definition": "d"}),
            ("mcq_prompt", probe_mcq),
            ("mcq_answer", probe_mcq),
            ("mcq_cot_answer", probe_mcq),
        ):
            try:
                getattr(self, name).format(**fields)
            except (KeyError, IndexError, ValueError) as exc:
                raise KormedError(f"bad template: {exc!r}", field=f"templates.{name}") from None


def chat_prompt(user_text: str) -> str:
    """The user turn plus the model-turn header, ready for generation (no `<bos>`: add it when tokenizing)."""
    return f"{START_OF_TURN}user\n{user_text}{END_OF_TURN}\n{START_OF_TURN}model\n"


def mcq_options_text(mcq: MCQ) -> str:
    return "\n".join(f"{letter}. {text}" for letter, text in zip(LETTERS, mcq.options, strict=True))


def mcq_user_prompt(mcq: MCQ, template: str = DEFAULT_MCQ_TEMPLATE) -> str:
    """The user text of a KorMedMCQA question: question, options A-E one a line, the answer instruction."""
    fields = dict(zip(LETTERS, mcq.options, strict=True))
    return template.format(question=mcq.question.strip(), options=mcq_options_text(mcq), **fields)


def mcq_answer(mcq: MCQ, template: str = DEFAULT_MCQ_ANSWER_TEMPLATE) -> str:
    """The answer turn of an MCQ without reasoning, e.g. `정답: B. 항문열창(anal fissure)`."""
    return template.format(letter=mcq.answer_letter, answer_text=mcq.answer_text.strip(), index=mcq.answer)


def render_mcq(mcq: MCQ, templates: ChatTemplates | None = None, *, reasoning: bool = False) -> tuple[str, str]:
    """(user text, answer text) of an MCQ; with `reasoning` the `cot` (when non-empty) comes before the answer."""
    t = templates or ChatTemplates()
    user = mcq_user_prompt(mcq, t.mcq_prompt)
    answer = mcq_answer(mcq, t.mcq_answer)
    if reasoning and mcq.cot.strip():
        answer = t.mcq_cot_answer.format(
            cot=mcq.cot.strip(), answer=answer, letter=mcq.answer_letter, answer_text=mcq.answer_text.strip()
        )
    return user, answer


def render_dict_entry(entry: DictEntry, templates: ChatTemplates | None = None, *, symbol: bool = False) -> tuple[
    str, str
]:
    """(user text, answer text) of a dictionary entry (medical terms, or medical symbols with `symbol=True`)."""
    t = templates or ChatTemplates()
    prompt = t.symbol_prompt if symbol else t.dict_prompt
    return (prompt.format(term=entry.term, definition=entry.definition),
            t.dict_answer.format(term=entry.term, definition=entry.definition))


def render_dict_forms(entry: DictEntry, templates: ChatTemplates | None = None, *,
                      symbol: bool = False) -> list[tuple[str, str]]:
    """(user text, answer text) of the entry in each of `templates.dict_forms` that it has the fields for."""
    t = templates or ChatTemplates()
    english, korean = ("", "") if symbol else split_definition(entry.definition)
    fields = {"term": entry.term, "definition": entry.definition, "korean": korean or strip_final_period(
        entry.definition), "english": english if korean else ""}
    out = []
    for form in t.dict_forms:
        if form == "meaning":
            out.append(render_dict_entry(entry, t, symbol=symbol))
        elif form != "english" or fields["english"]:
            user, answer = DICT_FORMS[form]
            out.append((user.format(**fields), answer.format(**fields)))
    return out


def render_chat_text(user_text: str, answer_text: str) -> str:
    """The whole example as text (without `<bos>`), for inspection and docs."""
    return f"{chat_prompt(user_text)}{answer_text}{END_OF_TURN}\n"


class ExampleTooLong(ValueError):
    """The answer (plus the chat frame) does not fit in `max_length` tokens even with an empty user text."""


@dataclass
class EncodeStats:
    """Counts of what encoding did to over-long examples (reported in training_info.json, never silent)."""

    encoded: int = 0
    truncated: int = 0  # user text shortened from the left
    truncated_tokens: int = 0
    skipped: int = 0  # the answer alone did not fit
    raw_chunks: int = 0  # raw texts split into several examples
    examples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"encoded": self.encoded, "truncated": self.truncated, "truncated_tokens": self.truncated_tokens,
                "skipped": self.skipped, "raw_chunks": self.raw_chunks, "skipped_examples": self.examples}


def _special_id(tokenizer: Any, token: str) -> int:
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or tid == tokenizer.unk_token_id:
        from kormed.errors import KormedError

        raise KormedError(f"the tokenizer has no {token} token; the chat format needs Gemma's turn markers")
    return int(tid)


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_chat_example(
    tokenizer: Any, prompt_text: str, answer_text: str, max_length: int, *, stats: EncodeStats | None = None
) -> dict[str, list[int]]:
    """Token ids, labels (prompt masked to -100) and attention mask of one chat example.

    `prompt_text` is the user text (it is wrapped with :func:`chat_prompt`); a text that already starts with
    `<start_of_turn>` is taken as an already rendered prompt. Learned tokens: the answer and its closing
    `<end_of_turn>`; the trailing newline is present but masked. Over-long: see the module docstring.
    """
    if max_length < 8:
        raise ValueError("max_length must be at least 8 tokens for a chat example")
    bos = tokenizer.bos_token_id
    if bos is None:
        from kormed.errors import KormedError

        raise KormedError("the tokenizer has no <bos> token; Gemma needs one")
    eot = _special_id(tokenizer, END_OF_TURN)
    if prompt_text.startswith(START_OF_TURN):
        head_ids = _ids(tokenizer, prompt_text)
        user_ids: list[int] = []
        foot_ids: list[int] = []
    else:
        head_ids = _ids(tokenizer, f"{START_OF_TURN}user\n")
        user_ids = _ids(tokenizer, prompt_text)
        foot_ids = _ids(tokenizer, f"{END_OF_TURN}\n{START_OF_TURN}model\n")
    answer_ids = _ids(tokenizer, answer_text)
    newline_ids = _ids(tokenizer, "\n")
    fixed = 1 + len(head_ids) + len(foot_ids) + len(answer_ids) + 1 + len(newline_ids)
    room = max_length - fixed
    if room < (1 if user_ids else 0):
        if stats is not None:
            stats.skipped += 1
            if len(stats.examples) < 5:
                stats.examples.append(f"{answer_text[:60]!r}: {fixed} tokens without the user text > {max_length}")
        raise ExampleTooLong(f"answer needs {fixed} tokens with the chat frame; max_length is {max_length}")
    if len(user_ids) > room:
        if stats is not None:
            stats.truncated += 1
            stats.truncated_tokens += len(user_ids) - room
        user_ids = user_ids[len(user_ids) - room :]
    prompt_ids = [int(bos), *head_ids, *user_ids, *foot_ids]
    learned = [*answer_ids, eot]
    input_ids = prompt_ids + learned + newline_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + learned + [IGNORE_INDEX] * len(newline_ids)
    if stats is not None:
        stats.encoded += 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": [1] * len(input_ids)}


def _raw_examples(ids: list[int], max_length: int, bos: int, eot: int, stats: EncodeStats | None) -> list[dict]:

    blocks = pack_documents([ids], max_length=max_length, bos_id=bos, eod_id=eot)
    if stats is not None:
        stats.encoded += 1
        if len(blocks) > 1:
            stats.raw_chunks += 1
    # Every token is learned (the label at position 0, <bos>, is never a prediction target after the shift).
    return [{"input_ids": b, "labels": list(b), "attention_mask": [1] * len(b)} for b in blocks]


def encode_raw_text(
    tokenizer: Any, text: str, max_length: int, *, stats: EncodeStats | None = None
) -> list[dict[str, list[int]]]:
    """Raw Korean text (step 4) as full-loss examples: `<bos>` + text + `<end_of_turn>` (the CPT format), split
    into several `<bos>`-first examples of at most `max_length` tokens when longer (nothing is dropped)."""
    eot = _special_id(tokenizer, END_OF_TURN)
    return _raw_examples(_ids(tokenizer, text), max_length, int(tokenizer.bos_token_id), eot, stats)


def encode_raw_texts(
    tokenizer: Any, texts: list[str], max_length: int, *, stats: EncodeStats | None = None, batch_size: int = 1000
) -> list[dict[str, list[int]]]:
    """:func:`encode_raw_text` for many texts, tokenized in batches (the fast tokenizer's batch path)."""
    from tqdm.auto import tqdm

    eot = _special_id(tokenizer, END_OF_TURN)
    bos = int(tokenizer.bos_token_id)
    out: list[dict[str, list[int]]] = []
    for i in tqdm(range(0, len(texts), batch_size), desc="encode raw", unit="batch", leave=False,
                  disable=len(texts) <= batch_size):
        for ids in tokenizer(texts[i : i + batch_size], add_special_tokens=False)["input_ids"]:
            out.extend(_raw_examples(list(ids), max_length, bos, eot, stats))
    return out
