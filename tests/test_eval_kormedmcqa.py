"""KorMedMCQA evaluator behaviour on models: loglik scoring, BOS, left padding, subsets, bad input, adapters."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from kormed.errors import KormedError
from kormed.eval.config import EvalConfig
from kormed.eval.kormedmcqa import (
    evaluate_kormedmcqa,
    format_table,
    generate_prompt,
    generate_texts,
    load_questions,
    loglik_scores,
    run_kormedmcqa,
)
from kormed.records import MCQ


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def row(i: int, answer: int = 1, **extra) -> dict:
    rec = {"question": f"질문 {i}번: 다음 중 옳은 것은?" + " 추가 설명" * (i % 3), "A": "가나", "B": "다라",
           "C": "마바", "D": "사아", "E": "자차", "answer": answer}
    rec.update(extra)
    return rec


ROWS = [
    row(0, 1, exam_type="doctor", year=2022), row(1, 2, exam_type="doctor", year=2023),
    row(2, 3, exam_type="nurse", year=2023), row(3, 4, exam_type="pharm", year=2024),
    row(4, 5, exam_type="dentist", year=2024), row(5, 2, exam_type="nurse"),
]


@pytest.fixture(scope="module")
def tiny(tiny_gemma3_dir, real_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_gemma3_dir, dtype="float32").eval()
    return model, real_tokenizer


class LetterBiasedLM:
    """A stand-in causal LM whose next-token distribution is fixed: it strongly prefers the token 'C' (no
    space), then '▁B'. A correct loglik scorer of ' A'...' E' must pick B: 'C' is not the continuation token."""

    training = False

    def __init__(self, tokenizer):
        import torch

        self.vocab = len(tokenizer)
        self.bias = torch.zeros(self.vocab)
        self.bias[tokenizer.convert_tokens_to_ids("C")] = 9.0
        self.bias[tokenizer.convert_tokens_to_ids("▁B")] = 5.0
        self.bias[tokenizer.convert_tokens_to_ids("▁D")] = 4.0
        self.seen: list[list[int]] = []

    def parameters(self):
        import torch

        yield torch.zeros(1)

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def __call__(self, input_ids, attention_mask, position_ids, logits_to_keep, use_cache=False):
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist(), strict=True):
            self.seen.append([t for t, m in zip(ids, mask, strict=True) if m])
        logits = self.bias.expand(input_ids.shape[0], logits_to_keep, self.vocab)
        return SimpleNamespace(logits=logits)


def mcqs(rows=ROWS) -> list[MCQ]:
    from kormed.records import parse_mcq

    return [parse_mcq(r, Path("t.jsonl"), i + 1) for i, r in enumerate(rows)]


def test_loglik_scores_the_tokens_after_the_prompt(real_tokenizer):
    import math

    fake = LetterBiasedLM(real_tokenizer)
    result = evaluate_kormedmcqa(fake, real_tokenizer, mcqs(), mode="loglik", batch_size=4, progress=False)
    assert [q["extracted"] for q in result["questions"]] == ["B"] * len(ROWS)
    # One forward per question: the five one-token continuations share the prompt; each input starts with
    # exactly one <bos>, and what the model saw is the prompt's own tokens.
    assert len(fake.seen) == len(ROWS)
    for seen in fake.seen:
        assert seen[0] == real_tokenizer.bos_token_id and seen.count(real_tokenizer.bos_token_id) == 1
    prompts = {tuple(real_tokenizer(q["prompt"], add_special_tokens=False)["input_ids"]) for q in result["questions"]}
    assert {tuple(s) for s in fake.seen} == prompts
    # Hand computation: log-softmax of the fixed logits at '▁B'.
    scores = result["questions"][0]["scores"]
    z = math.log(len(real_tokenizer) - 3 + math.exp(9) + math.exp(5) + math.exp(4))
    assert scores["B"] == pytest.approx(5 - z, abs=1e-3) and scores["D"] == pytest.approx(4 - z, abs=1e-3)
    assert scores["A"] == pytest.approx(-z, abs=1e-3)
    assert result["accuracy"] == pytest.approx(2 / 6)  # rows 1 and 5 have answer B


def test_loglik_matches_hand_computed_logprobs_batched(tiny):
    import torch

    model, tok = tiny
    qs = mcqs()
    requests = [(generate_prompt(q), f" {q.options[k]}") for q in qs[:3] for k in range(5)]
    requests += [(generate_prompt(qs[3]), " B")]
    got = loglik_scores(model, tok, requests, batch_size=4, progress=False)
    for (context, cont), score in zip(requests, got, strict=True):
        ctx = tok(context, add_special_tokens=False)["input_ids"]
        whole = tok(context + cont, add_special_tokens=False)["input_ids"]
        assert whole[: len(ctx)] == ctx
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([whole])).logits[0].double(), -1)
        hand = sum(float(logp[t - 1, whole[t]]) for t in range(len(ctx), len(whole)))
        assert score == pytest.approx(hand, abs=2e-3)
    text_result = evaluate_kormedmcqa(model, tok, qs[:2], mode="loglik", loglik_target="text", progress=False)
    assert all(len(q["scores"]) == 5 for q in text_result["questions"])


def test_left_padded_generation_equals_unbatched(tiny):
    model, tok = tiny
    qs = mcqs()
    prompts = [generate_prompt(q) for q in qs]
    assert len({len(tok(p)["input_ids"]) for p in prompts}) > 1  # really different lengths
    batched = generate_texts(model, tok, prompts, max_new_tokens=6, batch_size=4, progress=False)
    single = generate_texts(model, tok, prompts, max_new_tokens=6, batch_size=1, progress=False)
    assert batched == single
    # ... and loglik scores do not depend on the batch either
    a = evaluate_kormedmcqa(model, tok, qs, mode="loglik", batch_size=6, progress=False)
    b = evaluate_kormedmcqa(model, tok, qs, mode="loglik", batch_size=1, progress=False)
    for qa, qb in zip(a["questions"], b["questions"], strict=True):
        assert qa["scores"] == pytest.approx(qb["scores"], abs=1e-4)


def test_generation_input_starts_with_one_bos(tiny):
    model, tok = tiny
    seen: list[list[int]] = []

    def hook(_module, _args, kwargs):
        if kwargs.get("input_ids") is not None and not seen:
            ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
            for r, m in zip(ids.tolist(), mask.tolist(), strict=True):
                seen.append([t for t, k in zip(r, m, strict=True) if k])

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for mode in ("generate", "chat"):
            seen.clear()
            res = evaluate_kormedmcqa(model, tok, mcqs()[:3], mode=mode, max_new_tokens=2, progress=False)
            assert len(seen) == 3
            for ids, rec in zip(sorted(seen, key=len), sorted(res["questions"], key=lambda q: len(q["prompt"])),
                                strict=True):
                assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
                assert rec["prompt"].count("<bos>") == 1
    finally:
        handle.remove()


def test_counts_add_up_and_table(tiny):
    model, tok = tiny
    res = evaluate_kormedmcqa(model, tok, mcqs(), mode="generate", max_new_tokens=3, progress=False)
    assert res["total"] == len(ROWS) == len(res["questions"])
    assert sum(s["total"] for s in res["per_subset"].values()) == res["total"]
    assert sum(s["correct"] for s in res["per_subset"].values()) == res["correct"]
    assert sum(s["total"] for s in res["per_year"].values()) == res["total"]
    assert set(res["per_subset"]) == {"doctor", "nurse", "pharm", "dentist"}
    assert res["per_year"]["unknown"]["total"] == 1 and res["per_subset"]["nurse"]["total"] == 2
    assert res["correct"] == sum(q["correct"] for q in res["questions"])
    assert res["unparseable"] == sum(1 for q in res["questions"] if q["extracted"] == "")
    assert res["harness_version"] == "kormedmcqa 3.0"
    for q in res["questions"]:
        assert set(q) >= {"prompt", "output", "extracted", "answer", "correct"}
        assert q["correct"] == (q["extracted"] == q["answer"])
    table = format_table(res)
    assert "overall" in table and "dentist" in table and "unparseable answers" in table


def test_public_schema_subset_from_subject_option_or_file_name(tmp_path):
    public = [{k: v for k, v in r.items() if k != "exam_type"} for r in ROWS[:2]]
    f = write_jsonl(tmp_path / "pharm.jsonl", public)
    assert {q.subset for q in load_questions(f)} == {"pharm"}  # the file name stem
    assert {q.subset for q in load_questions(f, subset="nurse")} == {"nurse"}  # --subset
    with_subject = write_jsonl(tmp_path / "x.jsonl", [dict(r, subject="dentist") for r in public])
    assert {q.subset for q in load_questions(with_subject, subset="nurse")} == {"dentist"}
    assert len(load_questions(f, limit=1)) == 1


@pytest.mark.parametrize(
    ("record", "field", "message"),
    [
        ({k: v for k, v in ROWS[0].items() if k != "C"}, "C", "missing"),
        (dict(ROWS[0], answer=6), "answer", "1-5"),
        (dict(ROWS[0], answer="x"), "answer", "integer"),
        (dict(ROWS[0], question=""), "question", "empty"),
    ],
)
def test_bad_question_names_file_line_field(tmp_path, record, field, message):
    f = write_jsonl(tmp_path / "test.jsonl", [ROWS[1], record])
    cfg = EvalConfig(data=str(f), model=str(tmp_path / "unused"))
    with pytest.raises(KormedError) as err:
        run_kormedmcqa(cfg, progress=False)
    assert err.value.path == str(f) and err.value.line == 2 and err.value.field == field
    assert message in str(err.value)


def test_bad_files_and_models(tmp_path, tiny_gemma3_dir):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(KormedError, match="no usable questions") as err:
        run_kormedmcqa(EvalConfig(data=str(empty)), progress=False)
    assert err.value.path == str(empty)
    with pytest.raises(KormedError, match="does not exist"):
        run_kormedmcqa(EvalConfig(data=str(tmp_path / "missing.jsonl")), progress=False)
    good = write_jsonl(tmp_path / "test.jsonl", ROWS[:2])
    not_a_model = tmp_path / "not_a_model"
    not_a_model.mkdir()
    (not_a_model / "notes.txt").write_text("hello")
    with pytest.raises(KormedError, match="not a model directory") as err:
        run_kormedmcqa(EvalConfig(data=str(good), model=str(not_a_model), device="cpu"), progress=False)
    assert err.value.path == str(not_a_model)
    broken = tmp_path / "broken_model"
    broken.mkdir()
    (broken / "config.json").write_text("{ not json")
    with pytest.raises(KormedError) as err:
        run_kormedmcqa(EvalConfig(data=str(good), model=str(broken), device="cpu"), progress=False)
    assert err.value.path == str(broken / "config.json")
    with pytest.raises(KormedError, match="num-fewshot 2 needs --fewshot-file"):
        run_kormedmcqa(EvalConfig(data=str(good), num_fewshot=2), progress=False)
    with pytest.raises(KormedError, match="must be one of"):
        from kormed.config import load_config

        load_config("eval", None, {"mode": "guess"})


def test_base_plus_adapter_and_output_file(tmp_path, tiny_gemma3_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_gemma3_dir, dtype="float32")
    peft_model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    data = write_jsonl(tmp_path / "test.jsonl", ROWS[:3])
    fewshot = write_jsonl(tmp_path / "fewshot.jsonl", [dict(r, exam_type="other") for r in ROWS[3:]])
    out = tmp_path / "res" / "eval.json"
    cfg = EvalConfig(model=str(tiny_gemma3_dir), adapter=str(adapter), data=str(data), mode="generate",
                     fewshot_file=str(fewshot), num_fewshot=2, max_new_tokens=2, device="cpu", output=str(out))
    result = run_kormedmcqa(cfg, progress=False, log=lambda m: None)
    saved = json.loads(out.read_text(encoding="utf-8"))
    assert saved["accuracy"] == result["accuracy"] and 0.0 <= saved["accuracy"] <= 1.0
    assert saved["adapter"] == str(adapter) and saved["runtime"]["device"] == "cpu"
    assert saved["num_fewshot"] == 2 and saved["questions"][0]["prompt"].count("정답：") == 3
    first = out.read_bytes()
    run_kormedmcqa(cfg, progress=False, log=lambda m: None)
    assert out.read_bytes() == first  # reruns give the same bytes


MARK = "표지"


class MarkedOptionLM:
    """A stand-in LM with a strong constant preference for '▁E' (+5) and a smaller one (+2) for the letter whose
    option line in the prompt holds MARK: a letter-prior model that also 'knows' the marked answer."""

    training = False

    def __init__(self, tokenizer):
        import torch

        self.tok = tokenizer
        self.vocab = len(tokenizer)
        self.base = torch.zeros(self.vocab)
        self.base[tokenizer.convert_tokens_to_ids("▁E")] = 5.0
        self.letter_ids = {k: tokenizer.convert_tokens_to_ids(f"▁{k}") for k in "ABCDE"}
        self.seen: list[str] = []

    def parameters(self):
        import torch

        yield torch.zeros(1)

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def __call__(self, input_ids, attention_mask, position_ids, logits_to_keep, use_cache=False):
        import torch

        rows = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist(), strict=True):
            text = self.tok.decode([t for t, m in zip(ids, mask, strict=True) if m])
            self.seen.append(text)
            logits = self.base.clone()
            for line in text.split("\n"):
                if line[:2] in {f"{k}." for k in "ABCDE"} and MARK in line:
                    logits[self.letter_ids[line[0]]] += 2.0
            rows.append(logits.expand(logits_to_keep, self.vocab))
        return SimpleNamespace(logits=torch.stack(rows))


def marked_mcqs() -> list[MCQ]:
    rows = []
    for i in range(5):
        rec = row(i, answer=i + 1)
        rec["ABCDE"[i]] += MARK
        rows.append(rec)
    return mcqs(rows)


def test_cyclic_permutations_remove_the_letter_prior(real_tokenizer):
    from kormed.eval.kormedmcqa import rotated

    qs = marked_mcqs()  # answers A..E, one each; the right option carries MARK
    plain = evaluate_kormedmcqa(MarkedOptionLM(real_tokenizer), real_tokenizer, qs, mode="loglik", progress=False)
    assert [r["extracted"] for r in plain["questions"]] == ["E"] * 5  # the letter prior decides: 1 of 5
    assert plain["correct"] == 1 and plain["permutations"] == "none"
    fake = MarkedOptionLM(real_tokenizer)
    cyc = evaluate_kormedmcqa(fake, real_tokenizer, qs, mode="loglik", permutations="cyclic", progress=False)
    assert cyc["correct"] == 5 and cyc["permutations"] == "cyclic"
    assert len(fake.seen) == 25  # 5 rotations a question, one forward each
    for r in cyc["questions"]:
        assert r["margin"] == pytest.approx(2.0, abs=1e-3)  # the content bonus, the letter prior cancelled
    assert cyc["mean_margin"] == pytest.approx(2.0, abs=1e-3)
    # Without permutations the margin mixes in the prior: E's question 5 + 2 above, A's 2 - 5/4 (E is wrong).
    assert plain["questions"][4]["margin"] == pytest.approx(7.0, abs=1e-3)
    assert plain["questions"][0]["margin"] == pytest.approx(0.75, abs=1e-3)
    q = qs[1]  # answer B
    views = [rotated(q, k) for k in range(5)]
    assert sorted(v.answer_letter for v in views) == list("ABCDE")
    assert all(v.answer_text == q.answer_text for v in views)
    assert [v.options[0] for v in views] == list(q.options)


def test_chat_loglik_scores_the_trained_answer_format(real_tokenizer):
    from kormed.data.chat import encode_chat_example, mcq_answer, mcq_user_prompt

    qs = marked_mcqs()
    fake = MarkedOptionLM(real_tokenizer)
    res = evaluate_kormedmcqa(fake, real_tokenizer, qs, mode="chat-loglik", permutations="cyclic", progress=False)
    assert res["correct"] == 5 and res["mode"] == "chat-loglik" and res["num_fewshot"] == 0
    assert all(s.endswith("<start_of_turn>model\n정답:") for s in fake.seen)
    # The scored tokens (prompt + ' B') are exactly the first tokens of the SFT training example of the question.
    q = qs[1]
    trained = encode_chat_example(real_tokenizer, mcq_user_prompt(q), mcq_answer(q), 512)["input_ids"]
    prompt = res["questions"][1]["prompt"]
    scored = real_tokenizer(prompt + " B", add_special_tokens=False)["input_ids"]
    assert trained[: len(scored)] == scored
    with pytest.raises(KormedError, match="permutations"):
        evaluate_kormedmcqa(fake, real_tokenizer, qs, mode="generate", permutations="cyclic", progress=False)
