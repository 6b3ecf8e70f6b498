"""KorMedMCQA accuracy in three modes: `generate` (the lm-evaluation-harness protocol), `loglik`, `chat`.

`generate` reproduces the harness task `kormedmcqa`, version 3.0, so that our numbers sit beside published
ones: the prompt `{question.strip()}\\nA. {A}\\n...E. {E}\\n정답：` (FULL-WIDTH colon, U+FF1A), few-shot examples
taken first-n and written `...정답： {letter}\\n\\n` directly before the question, greedy decoding cut at the
stop sequences `Q:`, `</s>`, `<|im_end|>`, `.`, blank line, and the extraction cascade of
:mod:`kormed.eval.extract`; the score is exact match of the letter. The harness generates up to 1024 tokens;
our default limit is smaller (see `EvalConfig.max_new_tokens`) which changes nothing once a stop sequence hit.

`loglik` scores the five continuations (` A`...` E`, or the option texts) after the same prompt and picks the
most likely one. Continuation tokens are those the tokenizer produces for `prompt + continuation` after the
prompt's own tokens (so ` B` is the single token `▁B`, not `B`), as the harness does for multiple choice.

`chat` renders the question as the Gemma chat turn the SFT stages train on (:mod:`kormed.data.chat`),
generates until `<end_of_turn>`, and parses the answer with the same cascade.

`chat-loglik` scores the five letters in the format SFT trains: the chat prompt, the model turn opened with
`정답:` (the answer template's cue), then ` A`...` E` (so `정답: B` is exactly the start of a trained answer).

`permutations="cyclic"` (loglik modes) scores each question 5 times, its options rotated so that every option
appears once under every letter, and averages each option's log-probability over the 5: a model's preference for
a letter (a 0-shot base model picks E for almost everything) then adds the same amount to every option and no
longer decides the answer. Every loglik record also carries `margin`: the (averaged) log-probability of the right
option minus the mean of the wrong ones, a continuous score that two models can be compared on question by
question (:mod:`kormed.eval.paired`).

Every prompt starts with `<bos>` exactly once; generation is batched with left padding.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from statistics import NormalDist
from typing import Any

import typer

from kormed.data.chat import DEFAULT_MCQ_ANSWER_TEMPLATE, chat_prompt, mcq_user_prompt
from kormed.errors import KormedError
from kormed.eval.config import eval_inputs
from kormed.eval.extract import apply_stop_sequences, extract_answer
from kormed.eval.mcq_records import HARNESS_VERSION
from kormed.eval.mcq_records import base_record as _base_record
from kormed.eval.mcq_records import device_of as _device_of
from kormed.eval.mcq_records import summarise as _summarise
from kormed.io import check_output_path, write_json
from kormed.records import LETTERS, MCQ, read_mcq_jsonl

# torch, transformers and the kormed modules that load them are imported inside the functions that use them:
# this module is imported by `kormed --help` or by a torch-free command, which must not pay for them.

HARNESS_STOP_SEQUENCES: tuple[str, ...] = ("Q:", "</s>", "<|im_end|>", ".", "\n\n")
HARNESS_MAX_GEN_TOKS = 1024
FULLWIDTH_COLON = "\uff1a"
ANSWER_CUE = f"정답{FULLWIDTH_COLON}"
MODES = ("generate", "loglik", "chat", "chat-loglik", "cloze")
LOGLIK_MODES = ("loglik", "chat-loglik", "cloze")
PERMUTATIONS = ("none", "cyclic")


# --------------------------------------------------------------------------------------------- prompts
def harness_question_text(mcq: MCQ) -> str:
    """The harness `doc_to_text`: question (stripped), options A-E one a line, then `정답：`."""
    options = "".join(f"\n{letter}. {text}" for letter, text in zip(LETTERS, mcq.options, strict=True))
    return f"{mcq.question.strip()}{options}\n{ANSWER_CUE}"


def harness_fewshot_text(mcq: MCQ) -> str:
    """The harness `fewshot_config.doc_to_text`: the question text, a space, the answer letter, a blank line."""
    return f"{harness_question_text(mcq)} {mcq.answer_letter}\n\n"


def select_fewshot(mcq: MCQ, fewshot: Sequence[MCQ], num_fewshot: int) -> list[MCQ]:
    """First `num_fewshot` examples: from the question's own subset when the pool has any, else the whole pool
    (the harness's `first_n` sampler over the per-subset `fewshot` split)."""
    if num_fewshot <= 0:
        return []
    same = [f for f in fewshot if f.subset and f.subset == mcq.subset]
    pool = same or list(fewshot)
    if len(pool) < num_fewshot:
        where = f"subset '{mcq.subset}'" if same else "the few-shot file"
        raise KormedError(
            f"--num-fewshot {num_fewshot} asks for more examples than {where} has ({len(pool)})", field="num_fewshot"
        )
    return pool[:num_fewshot]


def generate_prompt(mcq: MCQ, fewshot: Sequence[MCQ] = (), num_fewshot: int = 0, *, bos: str = "<bos>") -> str:
    """The full `generate`/`loglik` prompt: `<bos>`, the few-shot examples, the question text."""
    shots = "".join(harness_fewshot_text(f) for f in select_fewshot(mcq, fewshot, num_fewshot))
    return f"{bos}{shots}{harness_question_text(mcq)}"


def chat_mode_prompt(mcq: MCQ, *, template: str | None = None, bos: str = "<bos>") -> str:
    """The `chat` prompt: `<bos>` + the Gemma user turn of the SFT MCQ format + the model-turn header."""

    user = mcq_user_prompt(mcq) if template is None else mcq_user_prompt(mcq, template)
    return f"{bos}{chat_prompt(user)}"


def chat_answer_cue(answer_template: str = DEFAULT_MCQ_ANSWER_TEMPLATE) -> str:
    """What a trained MCQ answer says before its letter: `정답:` for `정답: {letter}. {answer_text}`."""
    head = answer_template.split("{letter}", 1)[0].rstrip()
    if not head or "{" in head:
        raise KormedError(f"the MCQ answer template must start with a fixed cue before {{letter}}: {answer_template!r}",
                          field="sft.templates.mcq_answer")
    return head


def chat_loglik_prompt(mcq: MCQ, *, template: str | None = None, bos: str = "<bos>") -> str:
    """The `chat-loglik` context: the `chat` prompt and the trained answer's cue (`정답:`); a letter follows."""
    return chat_mode_prompt(mcq, template=template, bos=bos) + chat_answer_cue()


def cloze_prompt(mcq: MCQ, *, bos: str = "<bos>") -> str:
    """The `cloze` context: the question alone (no options listed), then `정답：`; each option's text follows.

    The harness's cloze formulation (scored as its `acc_norm`: log-likelihood per UTF-8 byte). A model too small to
    answer by letter (the letter prior: the base 270M picks E or D on 98 of 100 questions) can still show, here,
    whether it prefers the right text: OLMES (Gu et al. 2024) reports small models near chance in the letter
    format and above it in this one."""
    return f"{bos}{mcq.question.strip()}\n{ANSWER_CUE}"


def rotated(mcq: MCQ, shift: int) -> MCQ:
    """`mcq` with its options rotated by `shift`: letter j shows option (j + shift) mod 5; the answer follows."""
    n = len(LETTERS)
    options = tuple(mcq.options[(j + shift) % n] for j in range(n))
    return dataclasses.replace(mcq, options=options, answer=(mcq.answer - 1 - shift) % n + 1)  # type: ignore[arg-type]


def loglik_continuations(mcq: MCQ, target: str = "letter") -> list[str]:
    """The five scored continuations: ` A`...` E` (as in the few-shot answers), or ` <option text>`."""
    if target == "letter":
        return [f" {letter}" for letter in LETTERS]
    if target == "text":
        return [f" {text.strip()}" for text in mcq.options]
    raise KormedError(f"loglik_target must be 'letter' or 'text', got {target!r}", field="loglik_target")


# --------------------------------------------------------------------------------------------- model plumbing
def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: Any) -> tuple[Any, Any]:
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(list(r), dtype=torch.long)
            mask[i, width - len(r) :] = 1
    return ids.to(device), mask.to(device)


def _stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: set[int] = set()
    for source in (getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, list | tuple):
            ids.update(int(x) for x in source)
    eot = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    if isinstance(eot, int) and eot != tokenizer.unk_token_id:
        ids.add(eot)
    return sorted(ids)


def _pad_id(tokenizer: Any) -> int:
    return int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)


def generate_texts(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    stop_sequences: Sequence[str] = (),
    batch_size: int = 8,
    progress: bool = True,
    desc: str = "generate",
) -> list[str]:
    """Greedy continuations of `prompts` (which carry their own `<bos>`), batched with left padding.

    Generation of a row ends at an end-of-sequence token (`<eos>`, `<end_of_turn>`) or at one of
    `stop_sequences` (transformers' `stop_strings`); the returned text is decoded without special tokens and
    cut before the first stop sequence, as the harness does.
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import GenerationConfig

    device = _device_of(model)
    encoded = [_ids(tokenizer, p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    gen_config = GenerationConfig(
        do_sample=False,
        max_new_tokens=int(max_new_tokens),
        eos_token_id=_stop_token_ids(model, tokenizer),
        pad_token_id=_pad_id(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        stop_strings=list(stop_sequences) or None,
        use_cache=True,
    )
    outputs: list[str] = [""] * len(prompts)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    with torch.no_grad():
        for batch in tqdm(batches, desc=desc, unit="batch", disable=not progress):
            ids, mask = _left_pad([encoded[i] for i in batch], _pad_id(tokenizer), device)
            extra = {"tokenizer": tokenizer} if stop_sequences else {}
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen_config, **extra)
            new = out[:, ids.shape[1] :]
            for row, i in enumerate(batch):
                text = tokenizer.decode(new[row], skip_special_tokens=True)
                outputs[i] = apply_stop_sequences(text, tuple(stop_sequences))
    return outputs


def loglik_scores(
    model: Any,
    tokenizer: Any,
    requests: Sequence[tuple[str, str]],
    *,
    batch_size: int = 8,
    progress: bool = True,
    desc: str = "loglik",
) -> list[float]:
    """Sum of log-probabilities of each `continuation` after its `context` (the context carries its `<bos>`).

    As in the harness, the continuation's tokens are `tok(context + continuation)` minus `tok(context)`.
    Requests whose model input is identical (e.g. five one-token letters after one prompt) share a forward
    pass. Inputs are left-padded with matching position ids and only the needed last logits are computed.
    """
    import torch
    from tqdm.auto import tqdm

    device = _device_of(model)
    ctx_cache: dict[str, list[int]] = {}
    inputs: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
    for r, (context, continuation) in enumerate(requests):
        ctx = ctx_cache.get(context)
        if ctx is None:
            ctx = ctx_cache[context] = _ids(tokenizer, context)
        whole = _ids(tokenizer, context + continuation)
        if whole[: len(ctx)] != ctx:
            # The continuation merged with the context's last token: score from the first differing token.
            common = next(i for i, (a, b) in enumerate(zip(ctx, whole, strict=False)) if a != b)
            ctx_used, cont = whole[:common], whole[common:]
        else:
            ctx_used, cont = ctx, whole[len(ctx) :]
        if not cont or not ctx_used:
            raise KormedError(f"empty continuation or context when scoring {continuation!r}")
        key = tuple(ctx_used + cont[:-1])
        inputs.setdefault(key, []).append((r, cont))
    keys = sorted(inputs, key=lambda k: -len(k))
    scores = [0.0] * len(requests)
    batches = [keys[i : i + batch_size] for i in range(0, len(keys), batch_size)]
    with torch.no_grad():
        for batch in tqdm(batches, desc=desc, unit="batch", disable=not progress):
            ids, mask = _left_pad(batch, _pad_id(tokenizer), device)
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
            keep = max(len(cont) for key in batch for _, cont in inputs[key])
            logits = model(
                input_ids=ids, attention_mask=mask, position_ids=position_ids, logits_to_keep=keep, use_cache=False
            ).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            for row, key in enumerate(batch):
                for r, cont in inputs[key]:
                    # The last len(cont) kept positions predict the continuation's tokens.
                    lp = logprobs[row, logprobs.shape[1] - len(cont) :]
                    target = torch.tensor(cont, device=lp.device).unsqueeze(-1)
                    scores[r] = float(lp.gather(-1, target).sum().item())
    return scores


# --------------------------------------------------------------------------------------------- evaluation
def wilson_interval(correct: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of an accuracy `correct / total` (the usual choice for a proportion from few
    questions: unlike the normal approximation it stays inside [0, 1] and is not empty at 0 or at `total`)."""

    if total < 1:
        raise KormedError("an interval needs at least one question", field="total")
    if not 0 <= correct <= total:
        raise KormedError(f"correct must be between 0 and total ({total}), got {correct}", field="correct")
    if not 0.0 < confidence < 1.0:
        raise KormedError(f"confidence must be between 0 and 1, got {confidence}", field="confidence")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = correct / total
    scale = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / scale
    half = z / scale * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    low = 0.0 if correct == 0 else max(0.0, centre - half)  # exact bounds at 0 and at total (no rounding residue)
    high = 1.0 if correct == total else min(1.0, centre + half)
    return low, high


def evaluate_kormedmcqa(
    model: Any,
    tokenizer: Any,
    questions: Sequence[MCQ],
    *,
    mode: str = "loglik",
    fewshot: Sequence[MCQ] = (),
    num_fewshot: int = 0,
    batch_size: int = 8,
    max_new_tokens: int = 32,
    loglik_target: str = "letter",
    chat_template: str | None = None,
    permutations: str = "none",
    progress: bool = True,
    compute_dtype: str | None = None,
) -> dict[str, Any]:
    """Score `questions` with `model` in `mode` (generate | loglik | chat). The model is put in eval mode and
    restored afterwards; nothing is written. `compute_dtype`: "bfloat16" = bf16 autocast; "float32" or None (a
    library call) = the model's own dtype. `kormed eval kormedmcqa` passes the runtime's (`--dtype`,
    :mod:`kormed.precision`).

    Returns {"accuracy", "correct", "total", "unparseable", "per_subset", "per_year", "mode", "num_fewshot",
    "harness_version", "questions": [{prompt, output, extracted, answer, correct, subset, year, source, ...}]}.
    """
    if mode not in MODES:
        raise KormedError(f"mode must be one of {', '.join(MODES)}, got {mode!r}", field="mode")
    if permutations not in PERMUTATIONS:
        raise KormedError(f"permutations must be one of {', '.join(PERMUTATIONS)}, got {permutations!r}",
                          field="permutations")
    if permutations != "none" and mode not in LOGLIK_MODES:
        raise KormedError(f"permutations apply to the loglik modes ({', '.join(LOGLIK_MODES)}), not {mode}",
                          field="permutations")
    if mode == "cloze":
        if permutations != "none":
            raise KormedError("cloze prompts list no options, so there is nothing to rotate", field="permutations",
                              hint="use permutations none with mode cloze")
        loglik_target = "text"  # cloze scores the option texts: there are no letters to score
    if not questions:
        raise KormedError("no questions to evaluate")
    if batch_size < 1:
        raise KormedError("batch_size must be at least 1", field="batch_size")
    bos = tokenizer.bos_token
    if not bos:
        raise KormedError("the tokenizer has no <bos> token; Gemma needs one")
    from kormed.precision import autocast

    was_training = model.training
    model.eval()
    try:
        with autocast(_device_of(model), compute_dtype or "float32"):
            records = _run_mode(
                model, tokenizer, list(questions), mode=mode, fewshot=fewshot, num_fewshot=num_fewshot,
                batch_size=batch_size, max_new_tokens=max_new_tokens, loglik_target=loglik_target,
                chat_template=chat_template, permutations=permutations, progress=progress, bos=bos,
            )
    finally:
        if was_training:
            model.train()
    correct = sum(r["correct"] for r in records)
    margins = [r["margin"] for r in records if "margin" in r]
    return {
        "accuracy": correct / len(records),
        "mean_margin": sum(margins) / len(margins) if margins else None,
        "correct": correct,
        "total": len(records),
        "unparseable": sum(1 for r in records if not r["extracted"]),
        "per_subset": _summarise(records, "subset"),
        "per_year": _summarise(records, "year"),
        **recorded_settings(mode, permutations=permutations, num_fewshot=num_fewshot, loglik_target=loglik_target,
                            max_new_tokens=max_new_tokens),
        "questions": records,
    }


def recorded_settings(mode: str, *, permutations: str = "none", num_fewshot: int = 0, loglik_target: str = "letter",
                      max_new_tokens: int = 32) -> dict[str, Any]:
    """The scoring settings a result records (each only where the mode uses it): with the prompts, what decides
    its numbers (:mod:`kormed.eval.reuse` compares them before reusing a recorded result)."""
    return {
        "mode": mode,
        "permutations": permutations if mode in LOGLIK_MODES else None,
        "num_fewshot": num_fewshot if mode not in ("chat", "chat-loglik") else 0,
        "loglik_target": loglik_target if mode in LOGLIK_MODES else None,
        "max_new_tokens": max_new_tokens if mode not in LOGLIK_MODES else None,
        "harness_version": HARNESS_VERSION if mode == "generate" else None,
    }


def prompt_for(mcq: MCQ, *, mode: str, fewshot: Sequence[MCQ] = (), num_fewshot: int = 0,
               chat_template: str | None = None, bos: str = "<bos>") -> str:
    """The prompt a question is scored after in `mode` (as each record's `prompt`)."""
    if mode == "chat-loglik":
        return chat_loglik_prompt(mcq, template=chat_template, bos=bos)
    if mode == "cloze":
        return cloze_prompt(mcq, bos=bos)
    if mode == "chat":
        return chat_mode_prompt(mcq, template=chat_template, bos=bos)
    return generate_prompt(mcq, fewshot, num_fewshot, bos=bos)


def _run_mode(
    model: Any, tokenizer: Any, questions: list[MCQ], *, mode: str, fewshot: Sequence[MCQ], num_fewshot: int,
    batch_size: int, max_new_tokens: int, loglik_target: str, chat_template: str | None, permutations: str,
    progress: bool, bos: str,
) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    if mode in LOGLIK_MODES:
        return _run_loglik(model, tokenizer, questions, mode=mode, fewshot=fewshot, num_fewshot=num_fewshot,
                           batch_size=batch_size, loglik_target=loglik_target, chat_template=chat_template,
                           permutations=permutations, progress=progress, bos=bos)
    prompts = [prompt_for(q, mode=mode, fewshot=fewshot, num_fewshot=num_fewshot, chat_template=chat_template,
                          bos=bos) for q in questions]
    if mode in ("generate", "chat"):
        stops = HARNESS_STOP_SEQUENCES if mode == "generate" else ()
        outputs = generate_texts(
            model, tokenizer, prompts, max_new_tokens=max_new_tokens, stop_sequences=stops,
            batch_size=batch_size, progress=progress, desc=f"kormedmcqa {mode}",
        )
        for q, prompt, output in zip(questions, prompts, outputs, strict=True):
            extracted = extract_answer(output)
            rec = _base_record(q, prompt)
            rec.update(output=output, extracted=extracted, correct=extracted == q.answer_letter)
            records.append(rec)
        return records
    raise AssertionError(f"unhandled mode {mode}")  # pragma: no cover - modes are checked by the caller


def _run_loglik(
    model: Any, tokenizer: Any, questions: list[MCQ], *, mode: str, fewshot: Sequence[MCQ], num_fewshot: int,
    batch_size: int, loglik_target: str, chat_template: str | None, permutations: str, progress: bool, bos: str,
) -> list[dict[str, Any]]:
    """loglik / chat-loglik: every (question, rotation) prompt's 5 continuations scored in one batched pass; each
    ORIGINAL option's score is its mean over the rotations (one rotation, the identity, without permutations)."""
    n = len(LETTERS)
    shifts = range(n) if permutations == "cyclic" else range(1)

    def prompt_of(q: MCQ) -> str:
        return prompt_for(q, mode=mode, fewshot=fewshot, num_fewshot=num_fewshot, chat_template=chat_template, bos=bos)

    views = [[rotated(q, k) for k in shifts] for q in questions]
    requests = [(prompt_of(v), c) for vs in views for v in vs for c in loglik_continuations(v, loglik_target)]
    raw = loglik_scores(model, tokenizer, requests, batch_size=batch_size, progress=progress,
                        desc=f"kormedmcqa {mode}")
    records: list[dict[str, Any]] = []
    for qi, (q, vs) in enumerate(zip(questions, views, strict=True)):
        per_option: list[list[float]] = [[] for _ in range(n)]
        for vi, (k, v) in enumerate(zip(shifts, vs, strict=True)):
            at = (qi * len(vs) + vi) * n
            conts = loglik_continuations(v, loglik_target)
            for j in range(n):  # letter j shows original option (j + k) mod n
                score = raw[at + j]
                if loglik_target == "text":  # the harness's acc_norm: log-likelihood per UTF-8 byte
                    score /= max(1, len(conts[j].encode("utf-8")))
                per_option[(j + k) % n].append(score)
        option_scores = [sum(x) / len(x) for x in per_option]
        best = max(range(n), key=lambda i: (option_scores[i], -i))  # ties: the earlier letter
        right = q.answer - 1
        wrong = [option_scores[i] for i in range(n) if i != right]
        rec = _base_record(q, prompt_of(q))
        rec.update(
            output=loglik_continuations(q, loglik_target)[best].strip(),
            extracted=LETTERS[best],
            correct=LETTERS[best] == q.answer_letter,
            scores={LETTERS[i]: round(option_scores[i], 6) for i in range(n)},
            margin=option_scores[right] - sum(wrong) / len(wrong),
        )
        records.append(rec)
    return records


# --------------------------------------------------------------------------------------------- files and tables
def load_questions(
    path: str | Path, *, subset: str | None = None, limit: int | None = None
) -> list[MCQ]:
    """Read and validate a KorMedMCQA JSONL; records with neither `exam_type` nor `subject` get `subset`
    (default: the file name stem, e.g. `doctor` for doctor.jsonl). Errors name the file, line and field."""

    p = Path(path)
    questions, _ = read_mcq_jsonl(p, default_subset=subset or p.stem)
    return questions[:limit] if limit else questions


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table: overall, per subset, per year, unparseable."""
    lines = [f"KorMedMCQA ({result['mode']}" + (f", {result['harness_version']}" if result.get("harness_version")
                                                else "")
             + (f", run by lm-eval {result['lm_eval_version']}" if result.get("lm_eval_version") else "")
             + f", {result.get('num_fewshot', 0)}-shot)"]
    width = max([len("overall")] + [len(k) for k in result["per_subset"]] + [len(k) for k in result["per_year"]])
    header = f"  {'':<{width}}  {'accuracy':>8}  {'correct':>7}  {'total':>6}"
    lines.append(header)

    def row(name: str, acc: float, correct: int, total: int) -> str:
        return f"  {name:<{width}}  {acc * 100:7.2f}%  {correct:>7}  {total:>6}"

    lines.append(row("overall", result["accuracy"], result["correct"], result["total"]))
    for title, key in (("subset", "per_subset"), ("year", "per_year")):
        lines.append(f"  -- by {title}")
        for name, s in result[key].items():
            lines.append(row(name, s["accuracy"], s["correct"], s["total"]))
    lines.append(f"  unparseable answers: {result['unparseable']}")
    if result.get("mean_margin") is not None:
        lines.append(f"  mean margin (log P right - mean log P wrong, {result.get('permutations') or 'none'} "
                     f"permutations): {result['mean_margin']:.4f}")
    return "\n".join(lines)


def read_inputs(cfg: Any) -> tuple[list[MCQ], list[MCQ]]:
    """Check `cfg` and read its questions and few-shot examples (before any model loads): (questions, fewshot)."""
    if cfg.backend == "lm-eval":
        from kormed.eval.harness import require_lm_eval

        if cfg.mode != "generate":
            raise KormedError(f"--backend lm-eval runs the harness's generate task; --mode {cfg.mode} is kormed's own",
                              field="mode")
        if cfg.permutations != "none":
            raise KormedError("--backend lm-eval runs the harness's task as published; --permutations is kormed's own",
                              field="permutations")
        require_lm_eval()  # one line saying how to install it, before any work
    if not cfg.data:
        raise KormedError("no test file given", field="data", hint="pass --data test.jsonl")
    questions = load_questions(cfg.data, subset=cfg.subset, limit=cfg.limit)
    fewshot: list[MCQ] = []
    if cfg.num_fewshot > 0:
        if cfg.mode in ("chat", "chat-loglik"):
            raise KormedError(f"few-shot examples are not used in {cfg.mode} mode", field="num_fewshot")
        if not cfg.fewshot_file:
            raise KormedError(f"--num-fewshot {cfg.num_fewshot} needs --fewshot-file", field="fewshot_file")
        fewshot = load_questions(cfg.fewshot_file, subset=cfg.subset)
    return questions, fewshot


def run_kormedmcqa(cfg: Any, *, progress: bool = True, log: Any = print) -> dict[str, Any]:
    """`kormed eval kormedmcqa`: load the model (+ adapter), the questions and few-shot file, evaluate,
    write `cfg.output` atomically when set, and return the result."""
    from kormed.models import load_model_and_tokenizer, pick_runtime

    if cfg.output:
        check_output_path(cfg.output, "file", "--output", inputs=eval_inputs(cfg))  # before any work
    questions, fewshot = read_inputs(cfg)
    runtime = pick_runtime(cfg.device, cfg.dtype)
    model, tokenizer, runtime = load_model_and_tokenizer(cfg.model, adapter=cfg.adapter, runtime=runtime, log=log)
    return score_loaded(cfg, model, tokenizer, runtime, questions, fewshot, progress=progress)


def score_loaded(cfg: Any, model: Any, tokenizer: Any, runtime: Any, questions: list[MCQ], fewshot: list[MCQ], *,
                 progress: bool = True) -> dict[str, Any]:
    """Score `questions` with an already loaded model (the eval stage swaps adapters on one load), record what ran
    and write `cfg.output` when set: the numbers and bytes of :func:`run_kormedmcqa`."""
    if cfg.backend == "lm-eval":
        from kormed.eval.harness import run_lm_eval

        result = run_lm_eval(
            model, tokenizer, questions, fewshot=fewshot, num_fewshot=cfg.num_fewshot, batch_size=cfg.batch_size,
            max_new_tokens=cfg.max_new_tokens, progress=progress, compute_dtype=runtime.compute_dtype,
        )
    else:
        result = evaluate_kormedmcqa(
            model, tokenizer, questions, mode=cfg.mode, fewshot=fewshot, num_fewshot=cfg.num_fewshot,
            batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens, loglik_target=cfg.loglik_target,
            chat_template=cfg.chat_mcq_prompt, permutations=cfg.permutations, progress=progress,
            compute_dtype=runtime.compute_dtype,
        )
        result["backend"] = "kormed"
    result.update(
        model=cfg.model or "embedded:gemma3-270m",
        adapter=cfg.adapter,
        data=str(cfg.data),
        fewshot_file=cfg.fewshot_file if cfg.num_fewshot else None,
        runtime={"device": runtime.device, "dtype": runtime.dtype, "compute_dtype": runtime.compute_dtype,
                 "attn_implementation": runtime.attn_implementation},
    )
    if cfg.output:
        write_json(cfg.output, result)
    return result


# How `kormed eval kormedmcqa` prints its result (the command is a row of kormed.cli.COMMANDS).
def show(result: dict[str, Any], cfg: Any) -> None:
    """The accuracy table (overall, per subset, per year) and the result file."""

    typer.echo(format_table(result))
    if cfg.output:
        typer.echo(f"wrote {cfg.output}")
