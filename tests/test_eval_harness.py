"""`kormed eval kormedmcqa --backend lm-eval`: lm-evaluation-harness's own `kormedmcqa` task, run by lm-eval on the
bundled questions, gives per question the answers of kormed's `generate` mode (which copies its protocol).

lm-eval is an optional extra (`kormed[harness]`, not in `dev`: it would downgrade python-dateutil), so these tests
skip where it is absent; the refusal without it is tested in tests/test_faults_loading.py."""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import pytest

import kormed
from kormed.eval.config import EvalConfig
from kormed.eval.kormedmcqa import evaluate_kormedmcqa, format_table, load_questions, run_kormedmcqa

pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'kormed[harness]')")

BUNDLED = Path(kormed.__file__).parent / "sample_data" / "data" / "01_raw" / "02_kor_med_test"


def answering_model(model_dir: Path, tokenizer):
    """The tiny random model with the (tied) embedding rows of ' A'...' E' and '.' scaled up: its greedy continuations
    are letters and periods, so the stop sequences, the extraction cascade and exact match all decide answers."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32").eval()
    rows = [tokenizer.convert_tokens_to_ids(t) for t in ("▁A", "▁B", "▁C", "▁D", "▁E", ".")]
    with torch.no_grad():
        model.get_input_embeddings().weight[rows] *= 30.0
    return model


@pytest.fixture(scope="module")
def answering_model_dir(tmp_path_factory, tiny_gemma3_dir, real_tokenizer) -> Path:
    out = tmp_path_factory.mktemp("answering-tiny")
    answering_model(tiny_gemma3_dir, real_tokenizer).save_pretrained(out, safe_serialization=True)
    real_tokenizer.save_pretrained(out)
    return out


def assert_same_answers(ours: dict, harness: dict) -> None:
    assert [q["answer"] for q in harness["questions"]] == [q["answer"] for q in ours["questions"]]
    for mine, theirs in zip(ours["questions"], harness["questions"], strict=True):
        assert (theirs["output"], theirs["extracted"], theirs["correct"]) == (
            mine["output"], mine["extracted"], mine["correct"]), mine["source"]
    assert (harness["accuracy"], harness["per_subset"], harness["unparseable"]) == (
        ours["accuracy"], ours["per_subset"], ours["unparseable"])
    table = harness["lm_eval"]["results"]
    assert table["kormedmcqa"]["exact_match"] == pytest.approx(ours["accuracy"])
    for subset, row in ours["per_subset"].items():
        assert table[f"kormedmcqa_{subset}"]["exact_match"] == pytest.approx(row["accuracy"])


def test_harness_answers_equal_generate_mode_on_bundled_questions(tiny_gemma3_dir, real_tokenizer, tmp_path,
                                                                  monkeypatch):
    """Two questions of each exam, 0-shot: the same continuation, letter and score per question, and lm-eval's own
    exact_match (per task and for the kormedmcqa group) equal to kormed's accuracy. The user's datasets cache is
    left as it was (the run's copy of the questions is cached in its temporary directory)."""
    import datasets.config

    from kormed.eval.harness import run_lm_eval

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")

    everything = load_questions(BUNDLED / "test.jsonl")
    questions = [q for subset in ("doctor", "nurse", "pharm", "dentist")
                 for q in [q for q in everything if q.subset == subset][:2]]
    model = answering_model(tiny_gemma3_dir, real_tokenizer)
    ours = evaluate_kormedmcqa(model, real_tokenizer, questions, mode="generate", max_new_tokens=4, progress=False)
    harness = run_lm_eval(model, real_tokenizer, questions, max_new_tokens=4, progress=False)
    assert sum(bool(q["extracted"]) for q in ours["questions"]) >= 2  # the answers are letters, not all ""
    assert_same_answers(ours, harness)
    assert harness["lm_eval_version"] == version("lm_eval") and harness["harness_version"] == "kormedmcqa 3.0"
    assert harness["lm_eval"]["versions"] == {f"kormedmcqa_{s}": 3.0 for s in ("doctor", "nurse", "pharm", "dentist")}
    assert not (tmp_path / "datasets-cache").exists()


@pytest.mark.heavy
@pytest.mark.parametrize("num_fewshot", [0, 1])
def test_every_bundled_question_through_the_command(num_fewshot, answering_model_dir, tmp_path):
    """All 100 bundled test questions (and 1-shot from the bundled few-shot file) through `run_kormedmcqa`: the
    lm-eval backend's JSON has kormed's keys, the backend and the lm-eval version, and the same answers."""
    common = dict(model=str(answering_model_dir), data=str(BUNDLED / "test.jsonl"), max_new_tokens=4, device="cpu",
                  num_fewshot=num_fewshot, fewshot_file=str(BUNDLED / "fewshot.jsonl") if num_fewshot else None)
    ours = run_kormedmcqa(EvalConfig(**common), progress=False, log=lambda m: None)
    out = tmp_path / "harness.json"
    run_kormedmcqa(EvalConfig(**common, backend="lm-eval", output=str(out)), progress=False, log=lambda m: None)
    harness = json.loads(out.read_text(encoding="utf-8"))
    assert harness["total"] == 100 and harness["backend"] == "lm-eval" and ours["backend"] == "kormed"
    assert harness["lm_eval"]["n-shot"] == {f"kormedmcqa_{s}": num_fewshot
                                            for s in ("doctor", "nurse", "pharm", "dentist")}
    assert sum(bool(q["extracted"]) for q in harness["questions"]) >= 20
    assert_same_answers(ours, harness)
    assert f"run by lm-eval {version('lm_eval')}" in format_table(harness)


@pytest.mark.heavy
def test_adapter_through_both_backends_and_rerun_bytes(answering_model_dir, tmp_path):
    """A LoRA adapter loaded by kormed and handed to lm-eval as a PeftModel: the same answers as kormed's generate
    mode, and a rerun writes the same bytes."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(answering_model_dir, dtype="float32")
    lora = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)  # nonzero: it changes answers
    get_peft_model(base, lora).save_pretrained(tmp_path / "adapter")
    common = dict(model=str(answering_model_dir), adapter=str(tmp_path / "adapter"), data=str(BUNDLED / "test.jsonl"),
                  limit=12, max_new_tokens=4, device="cpu")
    ours = run_kormedmcqa(EvalConfig(**common), progress=False, log=lambda m: None)
    out = tmp_path / "harness.json"
    harness = run_kormedmcqa(EvalConfig(**common, backend="lm-eval", output=str(out)), progress=False,
                             log=lambda m: None)
    assert harness["adapter"] == str(tmp_path / "adapter")
    assert_same_answers(ours, harness)
    first = out.read_bytes()
    run_kormedmcqa(EvalConfig(**common, backend="lm-eval", output=str(out)), progress=False, log=lambda m: None)
    assert out.read_bytes() == first
