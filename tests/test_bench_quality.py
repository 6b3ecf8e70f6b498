"""`kormed bench quality`: the Wilson interval, the bench's data splits and configs (fast), the training-text
meter on a tiny model, and (heavy) one CLI run on a tiny random Gemma 3 whose bits per character are recomputed
independently."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kormed.bench import quality as bq
from kormed.errors import KormedError
from kormed.eval.kormedmcqa import wilson_interval

# ------------------------------------------------------------------------------------------------ Wilson interval


@pytest.mark.parametrize(("correct", "total", "low", "high"), [
    (8, 10, 0.4902, 0.9433),   # textbook example (z = 1.96)
    (0, 40, 0.0, 0.0876),      # 3.84 / (40 + 3.84): not the empty interval of the normal approximation
    (40, 40, 0.9124, 1.0),
    (20, 40, 0.3520, 0.6480),
])
def test_wilson_known_values(correct, total, low, high):
    lo, hi = wilson_interval(correct, total)
    assert lo == pytest.approx(low, abs=5e-5) and hi == pytest.approx(high, abs=5e-5)
    assert lo <= correct / total <= hi


def test_wilson_exact_bounds_symmetry_and_width():
    assert wilson_interval(0, 7)[0] == 0.0 and wilson_interval(7, 7)[1] == 1.0
    for c in range(11):
        lo, hi = wilson_interval(c, 10)
        mlo, mhi = wilson_interval(10 - c, 10)
        assert lo == pytest.approx(1 - mhi) and hi == pytest.approx(1 - mlo)
    # more questions, narrower interval; a wider confidence, a wider interval
    assert wilson_interval(80, 100)[1] - wilson_interval(80, 100)[0] < wilson_interval(8, 10)[1] - \
        wilson_interval(8, 10)[0]
    assert wilson_interval(8, 10, 0.99)[0] < wilson_interval(8, 10)[0]


@pytest.mark.parametrize(("correct", "total"), [(0, 0), (5, 4), (-1, 4)])
def test_wilson_rejects_impossible_counts(correct, total):
    with pytest.raises(KormedError):
        wilson_interval(correct, total)


# ------------------------------------------------------------------------------------------------ data


def _texts(path: str) -> list[str]:
    return [json.loads(ln)["text"] for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]


def test_budget_texts_exact_characters_seeded_passes():
    docs = ["가나다라마" * 3, "바사아" * 5, "자차카타" * 2]
    out = bq.budget_texts(docs, 100, seed=1)
    assert sum(map(len, out)) == 100
    assert bq.budget_texts(docs, 100, seed=1) == out
    assert bq.budget_texts(docs, 100, seed=2) != out  # the order depends on the seed
    assert sorted(out[:3]) == sorted(docs)  # every document once per pass before any repeats
    assert sum(map(len, bq.budget_texts(docs, 7, seed=1))) == 7  # cut inside the first document
    with pytest.raises(KormedError):
        bq.budget_texts([], 10, seed=0)


def test_splits_are_disjoint_and_deterministic():
    texts = [f"문서 {i} " * 10 for i in range(40)]
    parts = bq.split_general(texts + texts[:5])  # duplicates count once
    assert sum(map(len, parts.values())) == 40
    assert not (set(parts["train"]) & set(parts["test"])) and not (set(parts["dev"]) & set(parts["test"]))
    assert len(parts["test"]) == 10 and len(parts["dev"]) == 5
    assert bq.split_general(list(reversed(texts))) == parts  # by content, not by input order
    train, test = bq.split_medical([(f"제목{i}", f"본문{i}") for i in range(9)])
    assert len(test) == 3 and len(train) == 6 and not set(train) & set(test)
    assert bq.cap_chars(["ab", "cde", "f"], 4) == ["ab", "cde"] and bq.cap_chars(["abcdef"], 1) == ["abcdef"]


@pytest.fixture(scope="module")
def sample_data(tmp_path_factory):
    work = tmp_path_factory.mktemp("bq-data")
    return work, bq.prepare_data(work, korean_text=None, budget=SAMPLE_BUDGET, log=lambda m: None)


# medical share 0.4 of 150,000 characters: room for every trained dictionary render x5 (~50,000 characters)
SAMPLE_BUDGET = bq.Budget(cpt_chars=150_000, medical_share=0.4, eval_chars=5_000)


def test_prepare_data_never_trains_on_held_out_text(sample_data):
    work, data = sample_data
    p = data["paths"]
    medical_test, general_test = set(_texts(p["medical_test"])), set(_texts(p["general_test"]))
    assert len(medical_test) == 6 and medical_test.isdisjoint(_texts(p["train_text"]))
    assert general_test.isdisjoint(_texts(p["train_text"])) and general_test.isdisjoint(_texts(p["val"]))
    renders = set(data["pools"]["renders"])
    assert all(piece in renders or any(piece in t for t in _texts(p["train_text"])) for piece in _texts(p["cpt_train"]))
    assert sum(map(len, _texts(p["cpt_train"]))) == 150_000 == data["info"]["cpt_train"]["characters"]
    assert any("당뇨" in t or "고혈압" in t or "결핵" in t for t in medical_test)  # medical pages, cleaned
    assert not any("[[" in t or "분류:" in t for t in medical_test)
    # KorMedMCQA: the bundled train, dev and test files, dev and test disjoint from train
    from kormed.records import read_mcq_jsonl
    from kormed.sample_data import sample_paths

    dev, _ = read_mcq_jsonl(p["mcq_dev"])
    train, _ = read_mcq_jsonl(p["mcq_train"])
    test, _ = read_mcq_jsonl(p["mcq_test"])
    assert {q.question for q in dev}.isdisjoint(q.question for q in train)
    assert {q.question for q in test}.isdisjoint(q.question for q in train + dev)
    for name in ("train", "dev", "test"):
        assert Path(p[f"mcq_{name}"]).read_bytes() == sample_paths()[f"mcq_{name}"].read_bytes()
    assert data["info"]["mcq"] == {"train": len(train), "dev": len(dev), "test": len(test)} == {
        "train": 40, "dev": 40, "test": 100}


def test_prepare_data_same_bytes_and_korean_text_directory(sample_data, tmp_path):
    work, data = sample_data
    again = bq.prepare_data(tmp_path / "again", korean_text=None, budget=SAMPLE_BUDGET, log=lambda m: None)
    for name, path in data["paths"].items():
        assert Path(again["paths"][name]).read_bytes() == Path(path).read_bytes(), name
    text_dir = tmp_path / "korean_text"
    text_dir.mkdir()
    for part, n in (("train", 5), ("dev", 2), ("test", 3)):
        (text_dir / f"{part}.jsonl").write_text(
            "".join(json.dumps({"text": f"{part} 한국어 문장 {i}. " * 20}, ensure_ascii=False) + "\n"
                    for i in range(n)), encoding="utf-8")
    got = bq.prepare_data(tmp_path / "kt", korean_text=text_dir, budget=bq.Budget(cpt_chars=3_000),
                          log=lambda m: None)
    assert got["info"]["general_source"] == str(text_dir)
    assert _texts(got["paths"]["general_test"])[0].startswith("test ")
    assert _texts(got["paths"]["val"])[0].startswith("dev ") and len(_texts(got["paths"]["val"])) == 2
    assert {t.split(" ")[0] for t in _texts(got["paths"]["train_text"])[:5]} == {"train"}
    assert set(_texts(got["paths"]["medical_test"])) == set(_texts(data["paths"]["medical_test"]))


def test_prepare_data_with_assembly_bills(sample_data, tmp_path):
    """A scripts/fetch_assembly_bills.py directory: general held-out = its test.jsonl (no software help), medical
    held-out = the medical-law bills, the authored pages reported beside them, the training bills in the training
    text and never a held-out one."""
    work, data = sample_data
    bills = tmp_path / "bills"
    bills.mkdir()
    for name, n in (("train", 4), ("dev", 2), ("test", 3), ("medical_law_train", 3), ("medical_law_test", 2)):
        (bills / f"{name}.jsonl").write_text(
            "".join(json.dumps({"text": f"{name} 의안 {i}.\n제안 이유 {i}. " * 10}, ensure_ascii=False) + "\n"
                    for i in range(n)), encoding="utf-8")
    got = bq.prepare_data(tmp_path / "w", korean_text=bills, budget=bq.Budget(cpt_chars=200_000, medical_share=0.5),
                          log=lambda m: None)
    p = got["paths"]
    assert {t.split(" ")[0] for t in _texts(p["general_test"])} == {"test"}
    assert {t.split(" ")[0] for t in _texts(p["medical_test"])} == {"medical_law_test"}
    assert set(_texts(p["medical_authored_test"])) == set(_texts(data["paths"]["medical_test"]))  # the pages
    train = _texts(p["train_text"])
    assert sum(t.startswith("medical_law_train ") for t in train) == 3
    assert not {*_texts(p["medical_test"]), *_texts(p["medical_authored_test"])} & set(train)
    assert "medical_law_test.jsonl" in got["info"]["medical_source"]
    assert got["info"]["medical_authored_test"]["documents"] == 6
    cpt = _texts(p["cpt_train"])  # general bills, medical-law training bills, pages, renders: never a held-out bill
    assert any(t.startswith("medical_law_train ") for t in cpt) and any(t.startswith("train ") for t in cpt)
    assert not any(t.startswith(("test ", "medical_law_test ", "dev ")) for t in cpt)
    assert sum(map(len, cpt)) == 200_000 and got["info"]["cpt_corpus"]["medical_characters"] == 100_000


def test_cpt_corpus_renders_trained_entries_x5_and_never_a_held_out_one(sample_data):
    """The CPT text holds each trained dictionary entry's sentence (as `kormed prepare` renders it) exactly 5 times
    and no held-out entry's; the trained files SFT, the loop and the tokenizer read hold no held-out entry, and
    the held-out record is a seeded 20 % of the terms."""
    from kormed.eval.knowledge import read_heldout
    from kormed.prepare.render import render_dictionary
    from kormed.records import read_dictionary
    from kormed.sample_data import sample_paths

    work, data = sample_data
    p, info = data["paths"], data["info"]
    cpt = _texts(p["cpt_train"])
    held = read_heldout(p["dict_heldout"])
    for source, key in (("medical_dict", "dict"), ("char_dict", "char_dict")):
        full, _ = read_dictionary(sample_paths()[source])
        trained, _ = read_dictionary(p[key])
        held_terms = {e.term for e in held[source]}
        assert held_terms and not held_terms & {e.term for e in trained}
        assert len(trained) + len(held[source]) == len(full)
        assert len(held_terms) == int(0.2 * len({e.term for e in full}))
        for text in dict.fromkeys(render_dictionary(source, trained)):
            assert cpt.count(text) == 5, text
        for text in render_dictionary(source, held[source]):
            assert not any(text in t for t in cpt), text
    corpus = info["cpt_corpus"]
    assert corpus["medical_characters"] == 60_000 and corpus["dictionary_render_copies_complete"] == 5
    assert corpus["dictionary_render_characters"] == 5 * sum(map(len, data["pools"]["renders"]))
    assert info["dictionaries"]["entries"]["medical_dict"]["held_out"] == len(held["medical_dict"])


def test_cpt_corpus_medical_share():
    pools = {"general": ["일반 문서 " * 20], "medical": ["의료법 개정 " * 20], "renders": ["가는 A를 의미한다."] * 1}
    texts, info = bq.cpt_corpus(pools, chars=1_000, medical_share=0.25, seed=1, copies=5)
    assert sum(map(len, texts)) == 1_000 and info["medical_characters"] == 250
    assert texts.count("가는 A를 의미한다.") == 5
    assert sum(len(t) for t in texts if t.startswith("의료법")) == 250 - 5 * len("가는 A를 의미한다.")
    none, _ = bq.cpt_corpus(pools, chars=1_000, medical_share=0.0, seed=1, copies=5)
    assert all(t.startswith("일반") for t in none)
    small, info = bq.cpt_corpus(pools, chars=100, medical_share=0.25, seed=1, copies=5)
    assert info["dictionary_render_copies_complete"] == 2 and not any(t.startswith("의료법") for t in small)
    with pytest.raises(KormedError, match="medical"):
        bq.cpt_corpus({**pools, "medical": []}, chars=1_000, medical_share=0.5, seed=1, copies=5)


def test_paired_vs_base_and_tables():
    base = {"documents_general": {"nll": [10.0, 20.0], "hangul_nll": [5.0, 10.0], "characters": [10, 20],
                                  "hangul_characters": [5, 10]},
            "margins_cyclic": [0.0, 0.1, -0.2], "margins_chat_loglik": [0.5, 0.5, 0.5]}
    arm = {"documents_general": {"nll": [9.0, 18.0], "hangul_nll": [5.0, 9.0], "characters": [10, 20],
                                 "hangul_characters": [5, 10]},
           "documents_medical": {"nll": [1.0], "hangul_nll": [1.0], "characters": [3], "hangul_characters": [3]},
           "margins_cyclic": [0.2, 0.3, 0.0], "margins_chat_loglik": [0.5, 0.5, 0.5]}
    p = bq.paired_vs_base(arm, base, seed=1)
    assert p["bits_per_char_general"]["difference"] == pytest.approx(-3.0 / math.log(2) / 30)
    assert p["hangul_bits_per_char_general"]["difference"] == pytest.approx(-1.0 / math.log(2) / 15)
    assert "bits_per_char_medical" not in p  # the base has no such documents: nothing to pair
    assert p["margin_cyclic"]["difference"] == pytest.approx(0.2) and p["margin_cyclic"]["ci95"][0] > 0
    assert p["margin_chat_loglik"]["ci95"] == [0.0, 0.0]
    rows = [{"arm": "base", "chain": ["base"], "bits_per_char_general": 2.0, "bits_per_char_medical": 3.0,
             "accuracy": 0.2, "accuracy_ci95": [0.1, 0.3], "correct": 2, "questions": 10, "training_chars": 0,
             "wall_s": 1.0, "accuracy_cyclic": 0.3},
            {"arm": "cpt", "chain": ["cpt"], "bits_per_char_general": 1.9, "bits_per_char_medical": 3.1,
             "accuracy": 0.2, "accuracy_ci95": [0.1, 0.3], "correct": 2, "questions": 10, "training_chars": 5,
             "wall_s": 1.0, "paired_vs_base": p}]
    text = bq.format_table(rows)
    assert "minus base" in text and "+0.2000 [" in text and "0.300" in text
    md = bq.paired_markdown_table(rows).splitlines()
    assert len(md) == 3 and md[2].startswith("| cpt | -0.1443 [")


@pytest.mark.heavy  # a model load and 11 scorings a question: ~24 s on the shared 2-core machine
def test_evaluate_arm_scores_each_text_alone_and_rotations(tmp_path, tiny_gemma3_dir):
    from kormed.eval.kormedmcqa import load_questions
    from kormed.sample_data import sample_paths

    texts = {"general": ["일반 한국어 문장입니다.\n둘째 줄.", "Another text 두 번째"], "medical": ["고혈압 환자"]}
    ev: dict = {"max_length": 16, "batch_size": 4}
    for name, rows in texts.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in rows), encoding="utf-8")
        ev[f"{name}_test"] = str(path)
    mcq = tmp_path / "mcq.jsonl"
    mcq.write_text("".join(sample_paths()["mcq_test"].read_text(encoding="utf-8").splitlines(True)[:1]),
                   encoding="utf-8")
    ev["mcq_test"] = str(mcq)
    task = {"arm": "base", "model": str(tiny_gemma3_dir), "budget": {"device": "cpu", "dtype": "float32"},
            "eval": ev}
    out = bq.evaluate_arm(task, None, log=lambda m: None)
    assert out["heldout_general"]["characters"] == sum(len(t) for t in texts["general"])
    assert out["documents_general"]["characters"] == [len(t) for t in texts["general"]]
    assert out["bits_per_char_general"] == pytest.approx(
        sum(out["documents_general"]["nll"]) / math.log(2) / out["heldout_general"]["characters"])
    assert "bits_per_char_medical_authored" not in out  # no authored set given
    assert out["hangul_bits_per_char_medical"] > 0
    assert len(out["margins_cyclic"]) == len(out["margins_chat_loglik"]) == len(load_questions(mcq)) == 1
    for key in ("accuracy", "accuracy_cyclic", "accuracy_chat_loglik"):
        assert 0.0 <= out[key] <= 1.0


# ------------------------------------------------------------------------------------------------ configs


def test_overrides_parse_and_refuse_wiring(tmp_path):
    got = bq.read_overrides(None, ["cpt.lora.r=8", "cpt.train.lr=1e-4", "tokenizer.max_new_tokens=100",
                                   "cpt_extended.train.lr=3e-4", "sft.padding_free=false"])
    assert got == {"cpt": {"lora": {"r": 8}, "train": {"lr": "1e-4"}}, "tokenizer": {"max_new_tokens": 100},
                   "cpt_extended": {"train": {"lr": "3e-4"}}, "sft": {"padding_free": False}}
    yaml_file = tmp_path / "o.yaml"
    yaml_file.write_text("cpt:\n  lora: {r: 4}\nloop:\n  max_rounds: 3\n", encoding="utf-8")
    assert bq.read_overrides(str(yaml_file), ["cpt.lora.alpha=8"]) == {"cpt": {"lora": {"r": 4, "alpha": 8}},
                                                                       "loop": {"max_rounds": 3}}
    for bad in (["eval.limit=3"], ["cpt.data=/x.jsonl"], ["loop.eval_data=test.jsonl"], ["cpt=3"], ["cpt.lr"]):
        with pytest.raises(KormedError):
            bq.read_overrides(None, bad)


def test_stage_configs_wire_the_chain_and_select_on_dev(sample_data):
    work, data = sample_data
    p = data["paths"]
    budget = bq.Budget(cpt_chars=50_000, sft_steps=3, loop_rounds=2, loop_steps=4, lr=1e-3)
    over = bq.read_overrides(None, ["cpt.lora.r=8", "cpt_extended.train.lr=5e-4", "tokenizer.max_new_tokens=64"])
    cfgs = bq.stage_configs(p, budget, model=None, work=work, overrides=over)
    cpt, ext = cfgs["cpt"], cfgs["cpt_extended"]
    assert cpt.data == ext.data == p["cpt_train"] and cpt.val == p["val"]
    assert cpt.tokenizer_path is None and ext.tokenizer_path == cfgs["tokenizer"].out
    assert cpt.lora.r == ext.lora.r == 8  # `cpt` overrides both CPT arms ...
    assert cpt.train.lr == 1e-3 and ext.train.lr == 5e-4  # ... `cpt_extended` only its own
    assert cpt.train.max_steps is None and cpt.train.epochs == 1.0 and cpt.output != ext.output
    assert cfgs["tokenizer"].max_new_tokens == 64 and cfgs["tokenizer"].corpus == p["train_text"]
    assert cfgs["sft"].max_steps_per_step == 3 and cfgs["sft"].raw == p["train_text"]
    assert cfgs["sft"].raw_val == p["val"] and cfgs["sft"].mcq == p["mcq_train"]
    loop = cfgs["loop"]
    assert loop.max_rounds == 2 and loop.max_steps_per_round == 4 and loop.eval_mode == "loglik"
    # the measured recipe: dictionary rounds in three forms with the training text mixed in, at the loop's own lr
    assert [(r.name, r.mix) for r in loop.rounds] == [("dict", {"dict": 0.6, "raw": 0.4})]
    assert loop.templates.dict_forms == ["meaning", "term", "english"] and loop.raw == p["train_text"]
    assert loop.train.lr == budget.loop_lr == 1e-4 and all(r.lr is None for r in loop.rounds)
    over = bq.read_overrides(None, ["loop.train.lr=5e-5"])  # a variant or --set still reaches the loop's lr
    assert bq.stage_configs(p, budget, model=None, work=work, overrides=over)["loop"].train.lr == 5e-5
    assert loop.dev_data == p["mcq_dev"] and loop.eval_data == p["mcq_test"]
    assert loop.dev_data  # the loop's best round is chosen on dev, never on the test questions
    with pytest.raises(KormedError):
        bq.stage_configs(p, budget, model=None, work=work, overrides={"cpt": {"lora": {"r": 0}}})


def test_arms_to_run_adds_what_an_arm_continues():
    assert bq.arms_to_run(("loop",), bq.Budget()) == ["cpt", "loop"]  # the loop continues CPT by default
    assert bq.arms_to_run(bq.DEFAULT_ARMS, bq.Budget()) == ["base", "cpt", "loop"]
    assert bq.arms_to_run(("loop",), bq.Budget(loop_from="sft")) == ["cpt", "sft", "loop"]  # SFT: unextended CPT
    assert bq.arms_to_run(("loop",), bq.Budget(sft_from="cpt_extended", loop_from="sft")) == [
        "cpt_extended", "sft", "loop"]
    assert bq.arms_to_run(("sft", "base"), bq.Budget(sft_from="cpt")) == ["base", "cpt", "sft"]
    assert bq.arms_to_run(bq.ARMS, bq.Budget()) == list(bq.ARMS)
    with pytest.raises(KormedError):
        bq.arms_to_run(("sft_extended",), bq.Budget())
    with pytest.raises(KormedError):
        bq.Budget(sft_from="base").validate()


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "cpt.data=/tmp/other.jsonl"], "cannot be overridden"),
    (["--set", "eval.limit=3"], "unknown section 'eval'"),
    (["--sft-from", "base"], "sft_from"),
])
def test_cli_refuses_bad_settings_before_any_work(tmp_path, args, message):
    from typer.testing import CliRunner

    from kormed.cli import app

    res = CliRunner().invoke(app, ["bench", "quality", "--work-dir", str(tmp_path / "w"),
                                   "--output", str(tmp_path / "q.json"), *args])
    assert res.exit_code == 2 and message in res.output
    assert not (tmp_path / "w" / "data").exists() and not (tmp_path / "q.json").exists()


def test_tables_show_each_arm():
    row = {"arm": "sft", "chain": ["cpt_extended", "sft"], "bits_per_char_general": 2.91234,
           "bits_per_char_medical": 2.5, "accuracy": 0.25, "accuracy_ci95": [0.1419, 0.4019], "correct": 10,
           "questions": 40, "training_chars": 123456, "wall_s": 61.0}
    md = bq.markdown_table([row]).splitlines()
    assert md[2] == ("| sft | cpt_extended | 2.9123 | 2.5000 | 0.250 (10 / 40) | 0.142-0.402 | - | - | - | 123,456 | "
                     "- | 61 | - |")  # a row written before the knowledge columns
    assert "0.142-0.402" in bq.format_table([row]) and "123,456" in bq.format_table([row])
    variant = {**row, "arm": "sft@lr_low", "chain": ["cpt_extended@lr_low", "sft@lr_low"], "training_tokens": 5000,
               "knowledge_trained": 0.6, "knowledge_trained_ci95": [0.4, 0.77], "knowledge_held_out": 0.2,
               "knowledge_held_out_ci95": [0.08, 0.41], "reused_from": "sft", "accuracy_cyclic": 0.21}
    md = bq.markdown_table([row, variant]).splitlines()
    assert md[3] == ("| sft@lr_low | cpt_extended@lr_low | 2.9123 | 2.5000 | 0.250 (10 / 40) | 0.142-0.402 | 0.210 | "
                     "0.600 (0.400-0.770) | 0.200 (0.080-0.410) | 123,456 | 5,000 | 61 | sft |")
    line = bq.format_table([row, variant]).splitlines()[2].split()
    assert line[0] == "sft@lr_low" and line[-1] == "sft" and "0.600" in line and "0.200" in line


# ------------------------------------------------------------------------------------------------ text meter


def test_text_meter_counts_training_forwards_once(tiny_gemma3_dir, real_tokenizer):
    """Real tokens and decoded characters of training passes only, once per pass also through PEFT's wrapper."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Gemma3ForCausalLM

    model = get_peft_model(Gemma3ForCausalLM.from_pretrained(tiny_gemma3_dir),
                           LoraConfig(r=2, target_modules=["q_proj"]))
    text = "고혈압은 혈압이 높은 상태이다."
    ids = real_tokenizer(text)["input_ids"]  # <bos> + text
    pad = real_tokenizer.pad_token_id
    batch = torch.tensor([ids, [pad] * 3 + ids[:-3]])
    mask = (batch != pad).long()
    meter = bq.TextMeter()
    meter.tokenizer = real_tokenizer
    meter.install()
    try:
        model.train()
        model(input_ids=batch, attention_mask=mask)
        model.eval()
        with torch.no_grad():
            model(input_ids=batch, attention_mask=mask)  # not training: not counted
    finally:
        meter.remove()
    shorter = real_tokenizer.decode(ids[:-3], skip_special_tokens=True)
    assert meter.tokens == 2 * len(ids) - 3
    assert meter.chars == len(text) + len(shorter)
    model.train()
    model(input_ids=batch, attention_mask=mask)  # removed: counts no more
    assert meter.tokens == 2 * len(ids) - 3


# ------------------------------------------------------------------------------------------------ end to end


CPT_CHARS = 600


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory, tiny_gemma3_dir):
    from typer.testing import CliRunner

    from kormed.cli import app

    root = tmp_path_factory.mktemp("bq-run")
    out, work = root / "quality.json", root / "work"
    res = CliRunner().invoke(app, [
        "bench", "quality", "--model", str(tiny_gemma3_dir), "--korean-text", str(root / "absent"),
        "--arms", ",".join(bq.ARMS), "--loop-from", "sft",
        "--cpt-chars", str(CPT_CHARS), "--sft-steps", "1", "--loop-rounds", "1", "--loop-steps", "1",
        "--batch-size", "2", "--max-length", "64", "--eval-max-length", "64", "--eval-chars", "800",
        "--dtype", "float32", "--set", "tokenizer.max_new_tokens=40", "--set", "tokenizer.max_dict_tokens=10",
        "--set", "tokenizer.min_frequency=2", "--knowledge-per-group", "1", "--variant", "lr_low:loop.train.lr=5e-5",
        "--output", str(out), "--work-dir", str(work)])
    assert res.exit_code == 0, res.output
    assert "bits/char general" in res.output
    return json.loads(out.read_text(encoding="utf-8")), work


@pytest.mark.heavy
def test_rows_have_every_field(bench_run):
    from kormed.eval.kormedmcqa import load_questions
    from kormed.sample_data import sample_paths

    rows, _ = bench_run
    n_test = len(load_questions(sample_paths()["mcq_test"]))  # the bundled test split, all of it (100 today)
    variant = [f"{a}@lr_low" for a in bq.ARMS[1:]]  # the variant's chain: only its loop trains again
    assert [r["arm"] for r in rows] == [*bq.ARMS, *variant]
    by = {r["arm"]: r for r in rows}
    assert [by[a]["reused_from"] for a in variant] == ["cpt", "cpt_extended", "sft", None]
    assert by["loop@lr_low"]["settings"]["loop"]["train"]["lr"] == 5e-5 != by["loop"]["settings"]["loop"]["train"]["lr"]
    assert by["loop@lr_low"]["training_chars"] == by["sft"]["training_chars"] + by["loop@lr_low"]["own_training_chars"]
    for r in rows:
        assert r["knowledge_per_group"] == 1 and r["knowledge"]["all/trained"]["total"] == 5
        assert 0.0 <= r["knowledge_trained"] <= 1.0 and 0.0 <= r["knowledge_held_out"] <= 1.0
        if r["arm"] != "base":
            assert "knowledge_margin_trained" in r["paired_vs_base"]
    rows = rows[:len(bq.ARMS)]
    for r in rows:
        for key in ("bits_per_char_general", "bits_per_char_medical", "accuracy", "accuracy_ci95",
                    "training_chars", "seed", "wall_s", "budget"):
            assert key in r, key
        lo, hi = r["accuracy_ci95"]
        assert 0.0 <= lo <= r["accuracy"] <= hi <= 1.0
        assert r["accuracy"] == r["correct"] / r["questions"] and r["questions"] == n_test  # every test question
        assert math.isfinite(r["bits_per_char_general"]) and r["bits_per_char_general"] > 0
    assert by["base"]["training_chars"] == 0
    assert by["cpt"]["own_training_chars"] == CPT_CHARS  # one epoch over exactly the budget
    assert by["cpt_extended"]["own_training_chars"] == CPT_CHARS  # the same text, whatever the tokenizer
    sft_from = bq.Budget().sft_from  # SFT continues the unextended CPT by default (--sft-from)
    assert by["sft"]["chain"] == [sft_from, "sft"] and by["loop"]["chain"] == [sft_from, "sft", "loop"]
    assert by["sft"]["own_training_chars"] > 0
    assert by["loop"]["training_chars"] == CPT_CHARS + by["sft"]["own_training_chars"] + \
        by["loop"]["own_training_chars"]
    assert by["loop"]["training"]["selected_on"].startswith("dev (")


@pytest.mark.heavy
def test_extended_arm_is_measured_per_character(bench_run):
    rows, _ = bench_run
    by = {r["arm"]: r for r in rows}
    base, ext = by["cpt"], by["cpt_extended"]
    assert ext["vocab_size"] > base["vocab_size"] == 262144
    for name in ("general", "medical"):
        assert ext[f"heldout_{name}"]["characters"] == base[f"heldout_{name}"]["characters"]
        assert ext[f"heldout_{name}"]["tokens"] < base[f"heldout_{name}"]["tokens"]  # the new tokens are used
        assert ext[f"bits_per_char_{name}"] == pytest.approx(
            ext[f"heldout_{name}"]["nll_nats"] / math.log(2) / ext[f"heldout_{name}"]["characters"])


@pytest.mark.heavy
def test_bits_per_char_recomputed_independently(bench_run, tiny_gemma3_dir):
    """Total NLL of the extended CPT arm's adapter over the held-out general text, with a plain full-logits forward
    over each text alone ([bos] + its tokens in windows of 64, no end-of-text target), / ln 2 / characters."""
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer, Gemma3ForCausalLM

    rows, work = bench_run
    row = next(r for r in rows if r["arm"] == "cpt_extended")
    from kormed.models import load_model_and_tokenizer, pick_runtime

    adapter = work / "arms" / "cpt_extended" / "adapter"
    tok = AutoTokenizer.from_pretrained(adapter / "tokenizer")
    model, _, _ = load_model_and_tokenizer(str(tiny_gemma3_dir), adapter=adapter, log=lambda m: None,
                                           runtime=pick_runtime("cpu", "float32"))
    assert isinstance(model, PeftModel) and isinstance(model.get_base_model(), Gemma3ForCausalLM)
    texts = _texts(str(work / "data" / "general_test.jsonl"))
    body = 64 - 1
    nll = 0.0
    model.eval()
    with torch.no_grad():
        for t in texts:
            stream = tok(t, add_special_tokens=False)["input_ids"]
            for i in range(0, len(stream), body):
                ids = torch.tensor([[tok.bos_token_id, *stream[i:i + body]]])
                logits = model(input_ids=ids).logits.float()
                nll += torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum").item()
    expected = nll / math.log(2) / sum(len(t) for t in texts)
    assert row["bits_per_char_general"] == pytest.approx(expected, rel=1e-4)


def test_run_worker_returns_the_result_and_names_the_log_on_failure(tmp_path):
    """The one subprocess runner of both benches: a task's result comes back; a failing process is a KormedError
    naming its log file, with the log's last lines."""
    from kormed.bench.worker import run_worker

    result, wall = run_worker("json.tool", {"a": [1, 2]}, tmp_path, "echo")  # json.tool copies task -> result
    assert result == {"a": [1, 2]} and wall >= 0
    with pytest.raises(KormedError, match=r"broken failed \(exit code 1\); last lines of .*broken\.log"):
        run_worker("kormed.no_such_module", {}, tmp_path, "broken")
    assert "No module named" in (tmp_path / "broken.log").read_text(encoding="utf-8")


def test_a_terminated_bench_leaves_no_worker_running(tmp_path):
    """SIGTERM to the bench (a `kill`, a scheduler's time limit) ends its worker too: before, the arm process went
    on training, orphaned, into the work directory."""
    import os
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / "sleeper.py").write_text(
        "import os, sys, time\nopen(sys.argv[1] + '.pid', 'w').write(str(os.getpid()))\ntime.sleep(120)\n")
    parent = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; from kormed.bench.worker import run_worker; "
         "run_worker('sleeper', {}, Path(sys.argv[1]), 'arm')", str(tmp_path / "work")],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])})
    pid_file = tmp_path / "work" / "arm.task.json.pid"
    deadline = time.monotonic() + 60
    while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    child = int(pid_file.read_text())
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=30) != 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the worker outlived the bench")


# ------------------------------------------------------------------------------------------------ variants


def test_variant_items_parse():
    v = bq.parse_variant("forms3:sft.templates.dict_forms=[meaning,term,english],loop.templates.dict_forms=[term]")
    assert v.name == "forms3" and v.budget == {}
    assert v.overrides == {"sft": {"templates": {"dict_forms": ["meaning", "term", "english"]}},
                           "loop": {"templates": {"dict_forms": ["term"]}}}
    v = bq.parse_variant("lr_low:cpt.train.lr=5e-5, loop.train.lr=5e-5,--loop-steps=12")
    assert v.overrides == {"cpt": {"train": {"lr": "5e-5"}}, "loop": {"train": {"lr": "5e-5"}}}
    assert v.budget == {"loop_steps": 12}
    assert bq.parse_variant("med50:--medical-share=0.5").budget == {"medical_share": 0.5}
    assert bq.parse_variant("no_sft:--loop-from=cpt").budget == {"loop_from": "cpt"}


@pytest.mark.parametrize(("items", "message"), [
    (["lr_low"], "expected NAME:SECTION.KEY=VALUE"),
    (["bad name:cpt.lora.r=8"], "expected NAME:SECTION.KEY=VALUE"),
    (["empty:"], "--variant empty: sets nothing"),
    (["ev:eval.limit=3"], "--variant ev: unknown section 'eval'"),
    (["wired:cpt.data=/x.jsonl"], "--variant wired: is set by the bench"),
    (["novalue:cpt.lora.r"], "--variant novalue: expected SECTION.KEY=VALUE"),
    (["seed:--seed=3"], "--variant seed: 'seed' is not a budget a variant may change"),
    (["share:--medical-share=half"], "--variant share: medical_share expects a float"),
    (["steps:--sft-steps=1.5"], "--variant steps: sft_steps expects a int"),
    (["a:--lr=1e-4", "a:--lr=2e-4"], "variant 'a' is given twice"),
])
def test_variant_errors_are_one_line_naming_the_item(items, message):
    with pytest.raises(KormedError) as err:
        bq.read_variants(items)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_variants_yaml_file(tmp_path):
    path = tmp_path / "variants.yaml"
    path.write_text("rank32:\n  cpt: {lora: {r: 32}}\nmed50:\n  budget: {medical-share: 0.5}\n", encoding="utf-8")
    got = bq.read_variants(["lr:--lr=1e-4"], str(path))
    assert [(v.name, v.overrides, v.budget) for v in got] == [
        ("lr", {}, {"lr": 1e-4}), ("rank32", {"cpt": {"lora": {"r": 32}}}, {}), ("med50", {}, {"medical_share": 0.5})]
    path.write_text("bad:\n  eval: {limit: 3}\n", encoding="utf-8")
    with pytest.raises(KormedError, match="variant bad: unknown section 'eval'"):
        bq.read_variants([], str(path))


@pytest.mark.parametrize(("args", "message"), [
    (["--variant", "x:eval.limit=3"], "--variant x: unknown section 'eval'"),
    (["--variant", "x:--loop-from=base"], "--variant x: must be one of sft, cpt"),
    (["--variant", "x:cpt.lora.r=0"], "--variant x:"),
    # the loop and SFT continue the CPT adapter with its LoRA settings: a rank set there would change nothing
    (["--variant", "x:loop.lora.r=32"], "--variant x: loop.lora: SFT and the loop continue the CPT adapter"),
    (["--set", "sft.lora.r=32"], "sft.lora: SFT and the loop continue the CPT adapter"),
])
def test_cli_refuses_a_bad_variant_before_any_arm(tmp_path, args, message):
    from typer.testing import CliRunner

    from kormed.cli import app

    res = CliRunner().invoke(app, ["bench", "quality", "--work-dir", str(tmp_path / "w"), "--cpt-chars", "2000",
                                   "--output", str(tmp_path / "q.json"), *args])
    assert res.exit_code == 2 and message in res.output, res.output
    assert not (tmp_path / "w" / "tasks").exists() and not (tmp_path / "q.json").exists()


def test_a_variant_reuses_the_arms_its_settings_do_not_change(tmp_path, monkeypatch):
    """Arms keyed by their settings and upstream key: a loop-only variant trains the loop alone, from the main SFT
    adapter; a CPT-data variant (medical share) re-runs its whole chain on its own corpus; the loop without SFT
    runs the loop alone, from the CPT adapter. Counted at the arm-process runner."""
    runs: list[tuple[str, str | None, dict]] = []

    def worker(module, task, directory, name, timeout):
        runs.append((name, task["from_adapter"], task["configs"]))
        return {"adapter": f"/adapters/{name}", "bits_per_char_general": 1.0, "bits_per_char_medical": 1.0,
                "accuracy": 0.2, "accuracy_ci95": [0.0, 1.0], "correct": 1, "questions": 5, "vocab_size": 10,
                "own_training_chars": 0 if task["arm"] == "base" else 100, "own_training_tokens": 40,
                "training": {}, "train_s": 0.0, "eval_s": 0.0, "runtime": {}}, 0.0

    monkeypatch.setattr(bq, "run_worker", worker)
    variants = bq.read_variants(["lr_low:loop.train.lr=5e-5", "med50:--medical-share=0.5", "no_sft:--loop-from=cpt"])
    rows = bq.run_bench(budget=bq.Budget(cpt_chars=20_000, medical_share=0.25, loop_from="sft"),
                        arms=("base", "cpt", "sft", "loop"),
                        korean_text=None, variants=variants, work_dir=tmp_path / "w", log=lambda m: None)
    assert [r[0] for r in runs] == ["base", "cpt", "sft", "loop", "loop@lr_low", "cpt@med50", "sft@med50",
                                    "loop@med50", "loop@no_sft"]
    by = {r["arm"]: r for r in rows}
    assert [r["arm"] for r in rows][4:] == ["cpt@lr_low", "sft@lr_low", "loop@lr_low", "cpt@med50", "sft@med50",
                                            "loop@med50", "cpt@no_sft", "sft@no_sft", "loop@no_sft"]
    assert by["cpt@lr_low"]["reused_from"] == "cpt" and by["sft@lr_low"]["reused_from"] == "sft"
    assert by["loop@lr_low"]["reused_from"] is None and by["loop@lr_low"]["key"] != by["loop"]["key"]
    froms = {name: adapter for name, adapter, _ in runs}
    assert froms["loop@lr_low"] == "/adapters/sft" and froms["loop@no_sft"] == "/adapters/cpt"
    assert by["loop@no_sft"]["chain"] == ["cpt@no_sft", "loop@no_sft"] and by["loop@no_sft"]["training_chars"] == 200
    assert by["loop@lr_low"]["training_chars"] == 300  # cpt + sft (reused) + its own loop
    med50 = next(c for name, _, c in runs if name == "cpt@med50")["cpt"]["data"]
    assert Path(med50).name != "cpt_train.jsonl" and Path(med50).is_file()
    assert by["cpt@med50"]["medical_share"] == 0.5 and by["cpt"]["medical_share"] == 0.25
    assert by["loop@lr_low"]["variant"]["name"] == "lr_low" and by["loop@lr_low"]["budget"]["loop_from"] == "sft"
    assert all("paired_vs_base" in r for r in rows if r["arm"] != "base")


# ------------------------------------------------------------------------------------------------ knowledge


def test_knowledge_columns_trained_and_held_out(sample_data, tiny_gemma3_dir, real_tokenizer):
    """Each arm's dictionary knowledge on the TEST forms: trained entries and held-out ones (the control), a seeded
    `knowledge_per_group` a form and group; paired with the base question by question."""
    from transformers import Gemma3ForCausalLM

    from kormed.eval.knowledge import read_heldout

    work, data = sample_data
    p = data["paths"]
    model, tok = Gemma3ForCausalLM.from_pretrained(tiny_gemma3_dir).eval(), real_tokenizer
    ev = {"dict": p["dict"], "char_dict": p["char_dict"], "dict_heldout": p["dict_heldout"],
          "knowledge_per_group": 1, "knowledge_seed": 3, "batch_size": 8, "knowledge_scoring": "cloze"}
    out = bq.evaluate_arm_knowledge(model, tok, ev, "float32", "base", log=lambda m: None)
    forms = 5  # medical: term -> definition, definition -> term, English -> Korean; symbols: the first two
    held = {e.term for entries in read_heldout(p["dict_heldout"]).values() if isinstance(entries, list)
            for e in entries}
    for group in ("trained", "held_out"):
        s = out["knowledge"][f"all/{group}"]
        assert s["total"] == forms and out[f"knowledge_{group}"] == s["accuracy"]
        assert out[f"knowledge_{group}_ci95"] == s["ci95"] and len(out[f"knowledge_margins_{group}"]) == forms
        terms = {item.split(":", 2)[2] for item in out[f"knowledge_items_{group}"]}
        assert terms <= held if group == "held_out" else not terms & held
    assert out["knowledge"]["medical:english_to_korean/held_out"]["total"] == 1
    paired = bq.paired_vs_base(out, out, seed=1)
    assert paired["knowledge_margin_trained"]["difference"] == 0.0 and "knowledge_margin_held_out" in paired
    other = {**out, "knowledge_items_trained": list(reversed(out["knowledge_items_trained"]))}
    assert "knowledge_margin_trained" not in bq.paired_vs_base(other, out, seed=1)  # other questions: no pairing
