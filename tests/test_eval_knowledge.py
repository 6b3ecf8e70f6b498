"""`kormed eval knowledge`: questions built from the dictionaries (forms, distractors, dev/test wordings, seeded),
scored under the 5 option rotations, reported per form for trained and held-out entries."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from kormed.errors import KormedError
from kormed.eval.knowledge import WORDING, build_questions, evaluate_knowledge, format_table, sample_per_group
from kormed.records import DictEntry

MEDICAL = [DictEntry(t, d) for t, d in [
    ("고혈압", "Hypertension. 혈압이 정상 범위보다 높은 상태"), ("당뇨병", "Diabetes mellitus. 혈당이 높은 대사 질환"),
    ("빈혈", "Anemia. 혈액의 산소 운반 능력이 떨어진 상태"), ("폐렴", "Pneumonia. 폐에 생긴 염증"),
    ("황달", "Jaundice. 피부와 눈이 노랗게 변하는 상태"), ("부종", "Edema. 조직에 체액이 고여 붓는 상태"),
    ("약", "medicine"), ("뼈", "bone"),
]]
SYMBOLS = [DictEntry(t, d) for t, d in [("↑", "increased"), ("↓", "decreased"), ("±", "plus-minus sign"),
                                        ("→", "leads to"), ("←", "caused by"), ("%", "percent")]]


def test_questions_forms_options_and_splits():
    dev, skipped = build_questions(MEDICAL, "medical", "dev", seed=1, held_out={"빈혈"})
    assert skipped == 0
    forms = {q["form"] for q in dev}
    assert forms == {"medical:term_to_definition", "medical:definition_to_term", "medical:english_to_korean"}
    assert sum(q["form"] == "medical:english_to_korean" for q in dev) == 6  # '약', '뼈' have no Korean definition
    for q in dev:
        mcq = q["mcq"]
        assert len(set(mcq.options)) == 5  # distinct options
        assert q["group"] == ("held_out" if q["term"] == "빈혈" else "trained")
    right = {q["term"]: q["mcq"].answer_text for q in dev if q["form"] == "medical:term_to_definition"}
    assert right["고혈압"] == "혈압이 정상 범위보다 높은 상태" and right["약"] == "medicine"
    e2k = next(q for q in dev if q["form"] == "medical:english_to_korean" and q["term"] == "폐렴")
    assert "Pneumonia" in e2k["mcq"].question and e2k["mcq"].answer_text == "폐렴"
    assert set(e2k["mcq"].options) <= {e.term for e in MEDICAL}  # distractors are other entries' terms
    again, _ = build_questions(MEDICAL, "medical", "dev", seed=1, held_out={"빈혈"})
    assert [(q["mcq"].options, q["mcq"].answer) for q in again] == [(q["mcq"].options, q["mcq"].answer) for q in dev]
    other, _ = build_questions(MEDICAL, "medical", "dev", seed=2)
    assert [q["mcq"].options for q in other] != [q["mcq"].options for q in dev]
    test, _ = build_questions(MEDICAL, "medical", "test", seed=1)
    assert not {q["mcq"].question for q in test} & {q["mcq"].question for q in dev}  # disjoint wordings
    for kind in WORDING:
        assert not set(WORDING[kind]["dev"].values()) & set(WORDING[kind]["test"].values())
    few, skipped = build_questions(MEDICAL[:4], "medical", "dev")
    assert few == [] and skipped == 4 + 4 + 4  # 3 other options: no question, each counted


def test_sample_per_group_keeps_every_form_and_group_seeded():
    questions, _ = build_questions(MEDICAL, "medical", "dev", seed=1, held_out={"빈혈", "폐렴"})
    picked = sample_per_group(questions, 2, seed=3)
    counts: dict[tuple[str, str], int] = {}
    for q in picked:
        counts[q["form"], q["group"]] = counts.get((q["form"], q["group"]), 0) + 1
    groups = {(q["form"], q["group"]) for q in questions}
    assert set(counts) == groups and all(n == 2 for n in counts.values())  # every form and group, 2 each
    assert picked == sample_per_group(questions, 2, seed=3)  # seeded
    assert [q["term"] for q in picked] != [q["term"] for q in sample_per_group(questions, 2, seed=4)]
    assert [q for q in questions if q in picked] == picked  # the questions' own order
    assert sample_per_group(questions, None, seed=3) == questions


class StandInLM:
    """What the scorers ask of a model besides its forward: parameters (for the device), eval/train."""

    training = False

    def parameters(self):
        import torch

        yield torch.zeros(1)

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self


class KnowsTrainedLM(StandInLM):
    """A stand-in LM with a strong letter prior ('▁E' +5) that also knows the right option (+3 on its letter) of
    the questions in `known` (question text -> right option text)."""

    def __init__(self, tokenizer, known):
        import torch

        self.tok, self.known = tokenizer, known
        self.base = torch.zeros(len(tokenizer))
        self.base[tokenizer.convert_tokens_to_ids("▁E")] = 5.0
        self.ids = {k: tokenizer.convert_tokens_to_ids(f"▁{k}") for k in "ABCDE"}

    def __call__(self, input_ids, attention_mask, position_ids, logits_to_keep, use_cache=False):
        import torch

        rows = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist(), strict=True):
            lines = self.tok.decode([t for t, m in zip(ids, mask, strict=True) if m],
                                    skip_special_tokens=True).split("\n")
            logits = self.base.clone()
            right = self.known.get(lines[0])
            for line in lines[1:]:
                if right is not None and line[:3] == f"{line[:1]}. " and line[3:] == right:
                    logits[self.ids[line[0]]] += 3.0
            rows.append(logits.expand(logits_to_keep, logits.shape[0]))
        return SimpleNamespace(logits=torch.stack(rows))


def test_trained_and_held_out_reported_apart(real_tokenizer):
    held = {"medical": {"빈혈", "폐렴"}, "symbol": {"±"}}
    questions = [q for kind, entries in (("medical", MEDICAL), ("symbol", SYMBOLS))
                 for q in build_questions(entries, kind, "dev", held_out=held[kind])[0]]
    known = {q["mcq"].question: q["mcq"].answer_text for q in questions if q["group"] == "trained"}
    fake = KnowsTrainedLM(real_tokenizer, known)
    res = evaluate_knowledge(fake, real_tokenizer, {"medical": MEDICAL, "symbol": SYMBOLS}, split="dev",
                             held_out=held, progress=False, scoring="letter")
    summary = res["summary"]
    assert summary["all/trained"]["accuracy"] == 1.0  # known: right despite the letter prior
    held_rows = [r for r in res["questions"] if r["group"] == "held_out"]
    assert summary["all/held_out"]["total"] == len(held_rows) == 3 + 3 + 2  # 2 medical x 3 forms, 1 symbol x 2
    # unknown: every option averages the same prior over the rotations, a tie, decided for A; never the prior's E
    assert all(r["extracted"] == "A" for r in held_rows)
    assert all(r["margin"] == pytest.approx(0.0, abs=1e-4) for r in held_rows)
    lo, hi = summary["medical:term_to_definition/trained"]["ci95"]
    assert summary["medical:term_to_definition/trained"]["total"] == 6 and 0.5 < lo < hi == 1.0
    assert "medical:english_to_korean/held_out" in format_table(res)


def test_cli_writes_the_result(tmp_path, tiny_gemma3_dir):
    from typer.testing import CliRunner

    from kormed.cli import app

    symbols = tmp_path / "char.json"
    symbols.write_text(json.dumps([{"term": e.term, "definition": e.definition} for e in SYMBOLS[1:]],
                                  ensure_ascii=False), encoding="utf-8")
    heldout = tmp_path / "corpus.dict_heldout.json"
    heldout.write_text(json.dumps({"medical_dict": [], "char_dict": [{"term": "↑", "definition": "increased"}]},
                                  ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "knowledge.json"
    res = CliRunner().invoke(app, ["eval", "knowledge", "--model", str(tiny_gemma3_dir), "--char-dict", str(symbols),
                                   "--heldout", str(heldout), "--knowledge-split", "test", "--dtype", "float32",
                                   "--output", str(out)])
    assert res.exit_code == 0, res.output
    assert "symbol:term_to_definition/held_out" in res.output
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["split"] == "test" and data["summary"]["all/held_out"]["total"] == 2  # '↑' joined the pool
    assert data["questions_total"] == 6 + 6


class KnowsTrainedClozeLM(StandInLM):
    """A stand-in LM for cloze scoring: +30 (probability ~1) on each token of the RIGHT option's text after the
    questions in `known` (question text -> right option text), uniform otherwise. Records every input it is shown."""

    def __init__(self, tokenizer, known):
        import torch

        self.tok = tokenizer
        self.vocab = len(tokenizer)
        self.seen: list[str] = []
        # the model input of the right option's request (context + continuation minus its last token) -> targets
        self.boost: dict[tuple[int, ...], list[int]] = {}
        for question, answer in known.items():
            prompt = f"{tokenizer.bos_token}{question}\n정답："
            ctx = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            whole = tokenizer(f"{prompt} {answer}", add_special_tokens=False)["input_ids"]
            self.boost[tuple(whole[:-1])] = whole[len(ctx):]
        self.zeros = torch.zeros(self.vocab)

    def __call__(self, input_ids, attention_mask, position_ids, logits_to_keep, use_cache=False):
        import torch

        rows = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist(), strict=True):
            real = [t for t, m in zip(ids, mask, strict=True) if m]
            self.seen.append(self.tok.decode(real, skip_special_tokens=True))
            logits = self.zeros.expand(logits_to_keep, self.vocab).clone()
            targets = self.boost.get(tuple(real))
            if targets is not None:  # the last len(targets) kept positions predict the right option's tokens
                for i, t in enumerate(targets):
                    logits[logits_to_keep - len(targets) + i, t] += 30.0
            rows.append(logits)
        return SimpleNamespace(logits=torch.stack(rows))


def test_cloze_scoring_shows_no_options_and_scores_the_option_texts(real_tokenizer):
    held = {"medical": {"빈혈", "폐렴"}, "symbol": {"±"}}
    dictionaries = {"medical": MEDICAL, "symbol": SYMBOLS}
    questions = [q for kind, entries in dictionaries.items()
                 for q in build_questions(entries, kind, "test", held_out=held[kind])[0]]
    known = {q["mcq"].question: q["mcq"].answer_text for q in questions if q["group"] == "trained"}
    fake = KnowsTrainedClozeLM(real_tokenizer, known)
    res = evaluate_knowledge(fake, real_tokenizer, dictionaries, split="test", held_out=held, progress=False)
    assert res["scoring"] == "cloze" and res["permutations"] == "none"  # the default
    assert res["summary"]["all/trained"]["accuracy"] == 1.0
    assert all(r["margin"] > 0 for r in res["questions"] if r["group"] == "trained")
    # no option is listed in a cloze prompt; each option's text is scored after the question: at most 5 inputs a
    # question (one-token options share the question's forward)
    assert not any("\nA. " in s or "\nE. " in s for s in fake.seen)
    assert all(s.split("\n정답：")[0] in known or s.split("\n정답：")[0] in {q["mcq"].question for q in questions}
               for s in fake.seen)
    assert 3 * res["questions_total"] < len(fake.seen) <= 5 * res["questions_total"]
    # the letter scoring of the same questions does not see what the cloze model knows: it knows no letters
    letter = evaluate_knowledge(fake, real_tokenizer, dictionaries, split="test", held_out=held, progress=False,
                                scoring="letter")
    assert letter["scoring"] == "letter" and letter["permutations"] == "cyclic"
    assert letter["summary"]["all/trained"]["accuracy"] < 0.5
    assert "cloze" in format_table(res)
    with pytest.raises(KormedError, match="knowledge scoring"):
        evaluate_knowledge(fake, real_tokenizer, dictionaries, split="test", progress=False, scoring="letters")


def test_cloze_mode_has_nothing_to_rotate(real_tokenizer):
    from kormed.eval.kormedmcqa import evaluate_kormedmcqa

    qs = [q["mcq"] for q in build_questions(MEDICAL, "medical", "dev")[0]][:2]
    fake = KnowsTrainedClozeLM(real_tokenizer, {})
    res = evaluate_kormedmcqa(fake, real_tokenizer, qs, mode="cloze", progress=False)
    assert res["mode"] == "cloze" and res["loglik_target"] == "text" and res["permutations"] == "none"
    assert res["questions"][0]["prompt"].endswith("\n정답：") and "A. " not in res["questions"][0]["prompt"]
    with pytest.raises(KormedError, match="nothing to rotate"):
        evaluate_kormedmcqa(fake, real_tokenizer, qs, mode="cloze", permutations="cyclic", progress=False)
