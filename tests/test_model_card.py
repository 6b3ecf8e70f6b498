"""Model cards: every field of a demo-like run directory's card comes from that run's own files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from kormed.export.model_card import adapter_card, write_run_cards


def _w(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")


def _adapter(d: Path, info: dict) -> None:
    _w(d / "adapter_config.json", {"base_model_name_or_path": "/root/.cache/kormed/models/gemma3-270m-v1",
                                   "r": 8, "peft_type": "LORA"})
    (d / "adapter_model.safetensors").write_bytes(b"x")
    _w(d / "training_info.json", info)


def demo_like_run(rd: Path, model: str | None = None) -> Path:
    """The files `kormed run` writes (formats of prepare, tokenizer extend, cpt, sft, loop, eval)."""
    _w(rd / "state.json", {"version": 1, "name": "demo", "stages": {s: {"status": "done"} for s in
                                                                     ("prepare", "tokenizer", "cpt", "sft", "loop",
                                                                      "eval")}})
    (rd / "resolved_config.yaml").write_text(yaml.safe_dump({"name": "demo", "eval": {
        "data": "/x/data/01_raw/02_kor_med_test/test.jsonl", "mode": "generate"}}), encoding="utf-8")
    _w(rd / "corpus" / "raw_text_mixed.stats.json", {"lines": 1234, "val_docs": 40, "table": [
        {"source": "Korean Plain", "base": 900, "multiplier": 1, "final": 900, "ratio": 0.73, "characters": 90000},
        {"source": "KorMedMCQA", "base": 50, "multiplier": 5, "final": 250, "ratio": 0.2, "characters": 30000},
        {"source": "Medical dictionary", "base": 17, "multiplier": 5, "final": 84, "ratio": 0.07,
         "characters": 4000}]})
    _w(rd / "tokenizer" / "tokenizer_report.json", {"method": "bpe", "base_vocab_size": 262144,
                                                    "vocab_size": 262400, "new_tokens": 256,
                                                    "heldout": {"base_tokens_per_1000": 610.0,
                                                                "new_tokens_per_1000": 452.0}})
    lora = {"r": 8, "alpha": 16}
    _adapter(rd / "cpt", {"stage": "cpt", "model": model or "embedded", "lora": lora,
                          "config": {"train": {"lr": 2e-4}}, "global_step": 12, "tokens_seen": 24576,
                          "effective_batch_size": 32, "stop_reason": "max_steps", "stop_detail": ""})
    for n in range(1, 5):
        _w(rd / "sft" / f"step{n}" / "training_info.json", {
            "stage": "sft", "step": f"step{n}", "lora": lora, "train_options": {"lr": 1e-4}, "global_step": 3 + n,
            "tokens_seen": 1000 * n, "stop_reason": "conditions_met" if n < 4 else "max_steps",
            "stop_detail": f"step{n} detail"})
    _adapter(rd / "sft" / "step4", json.loads((rd / "sft" / "step4" / "training_info.json").read_text()))
    _adapter(rd / "loop" / "best", {})
    (rd / "loop" / "best" / "training_info.json").unlink()
    _w(rd / "loop" / "round01" / "training_info.json", {"stage": "sft", "global_step": 2, "stop_reason":
                                                        "max_steps", "lora": lora})
    _w(rd / "loop" / "loop_table.json", {"rounds": [{"round": 1, "kind": "dict", "dev_accuracy": 0.25}],
                                         "stop_reason": "max_rounds"})
    for target, acc in (("base", 0.2), ("cpt", 0.22), ("sft", 0.3), ("loop", 0.32)):
        _w(rd / "eval" / f"kormedmcqa_{target}.json", {
            "accuracy": acc, "correct": int(acc * 50), "total": 50, "mode": "generate", "num_fewshot": 0,
            "max_new_tokens": 32, "harness_version": "3.0", "per_subset": {}})
        _w(rd / "eval" / f"ppl_{target}.json", {"perplexity": 30.0 - 5 * acc, "loss": 3.3, "tokens": 5000})
    return rd


def test_demo_like_run_card_fields_come_from_the_run(tmp_path):
    rd = demo_like_run(tmp_path / "demo")
    written = write_run_cards([rd / "cpt", rd / "sft" / "step4", rd / "loop" / "best"])
    assert [p.relative_to(rd).as_posix() for p in written] == ["cpt/README.md", "sft/step4/README.md",
                                                               "loop/best/README.md"]
    card = (rd / "loop" / "best" / "README.md").read_text(encoding="utf-8")
    head = card.split("---")[1]
    meta = yaml.safe_load(head)
    assert meta["license"] == "gemma" and meta["base_model"] == "google/gemma-3-270m"
    assert meta["library_name"] == "peft" and "ko" in meta["language"]
    assert "https://ai.google.dev/gemma/terms" in card
    # tokenizer extension from tokenizer_report.json
    assert "new_tokens 256" in card and "vocab_size 262400" in card
    # training data by source with counts, from the prepare stats
    assert "| KorMedMCQA | 50 | 5 | 250 | 0.2 | 30000 |" in card
    assert "raw_text_mixed.stats.json" in card
    # each stage's settings and stop reason, in order
    for name, reason in (("cpt", "max_steps"), ("sft/step1", "conditions_met"), ("sft/step4", "max_steps"),
                         ("loop/round01", "max_steps")):
        assert any(line.startswith(f"| {name} |") and reason in line for line in card.splitlines()), name
    assert card.index("| cpt |") < card.index("| sft/step1 |") < card.index("| loop/round01 |")
    # evaluation table with split and protocol
    assert "`test.jsonl`" in card and "lm-evaluation-harness kormedmcqa v3.0" in card and "0-shot" in card
    assert "| loop | 0.32 | 50 | generate | 28.4 |" in card
    assert card.index("| base |") < card.index("| cpt | 0.22") < card.index("| sft | 0.3") < card.index("| loop |")
    assert "Not for clinical use" in card
    # the CPT adapter's card lists only the stage that produced it
    cpt_card = (rd / "cpt" / "README.md").read_text(encoding="utf-8")
    assert "| cpt | 12 |" in cpt_card and "| sft/step1 |" not in cpt_card


def test_medgemma_card_links_the_hai_def_terms(tmp_path):
    rd = demo_like_run(tmp_path / "mg", model="google/medgemma-4b-it")
    card = adapter_card(rd / "cpt")
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["license"] == "other" and meta["license_name"] == "health-ai-developer-foundations"
    assert meta["license_link"] == "https://developers.google.com/health-ai-developer-foundations/terms"
    assert "Health AI Developer Foundations terms of use" in card and meta["base_model"] == "google/medgemma-4b-it"


def test_standalone_adapter_card_says_what_is_not_recorded(tmp_path):
    _adapter(tmp_path / "a", {"model": "embedded", "global_step": 2, "stop_reason": "completed", "lora": {"r": 4}})
    card = adapter_card(tmp_path / "a")
    assert "| a | 2 |" in card and "completed" in card
    assert "Training data: not recorded" in card and "Not recorded (no `kormed run` eval results" in card


def test_run_pipeline_writes_the_card_when_a_stage_finishes(tmp_path):
    """The runner's hook: after a training stage finishes, its final adapter has a card; a later eval stage's
    results land in it, and the card never changes a later stage's input hash (README.md is not an input)."""
    import dataclasses

    from kormed.pipeline.run import StageSpec, pipeline_from_mapping, run_pipeline

    @dataclasses.dataclass
    class Cfg:
        output: str = ""

    rd = tmp_path / "run"

    def cpt_run(cfg, ctx):
        _adapter(Path(cfg.output), {"stage": "cpt", "model": "embedded", "global_step": 3, "stop_reason": "max_steps",
                                    "lora": {"r": 4}})
        return {"ok": True}

    def eval_run(cfg, ctx):
        _w(Path(cfg.output), {"accuracy": 0.4, "total": 10, "mode": "chat", "per_subset": {}})
        return {"ok": True}

    specs = {
        "cpt": StageSpec(name="cpt", config_cls=lambda: Cfg, wire=lambda ctx: {"output": str(ctx.stage_dir("cpt"))},
                         run=cpt_run, inputs=lambda cfg, ctx: [], outputs=lambda cfg, ctx: [Path(cfg.output)]),
        "eval": StageSpec(name="eval", config_cls=lambda: Cfg,
                          wire=lambda ctx: {"output": str(ctx.stage_dir("eval") / "kormedmcqa_cpt.json")},
                          run=eval_run, inputs=lambda cfg, ctx: [], outputs=lambda cfg, ctx: [Path(cfg.output)]),
    }
    pipeline = pipeline_from_mapping({"name": "t", "stages": ["cpt", "eval"]}, run_dir=rd)
    run_pipeline(pipeline, specs=specs, log=lambda m: None, report=False)
    card = (rd / "cpt" / "README.md").read_text(encoding="utf-8")
    assert "| cpt | 3 |" in card and "max_steps" in card
    assert "| cpt | 0.4 | 10 | chat |" in card  # refreshed after the eval stage
    state = json.loads((rd / "state.json").read_text())
    assert all(s["status"] == "done" for s in state["stages"].values())


def test_run_cards_follow_the_registry_final_adapter_of_a_three_step_sft(tmp_path):
    """The runner asks the stage registry where each training stage leaves its final adapter: an SFT of three steps
    gets its card in sft/step3 (a hard-coded sft/step4 left it without one)."""
    import dataclasses

    from kormed.pipeline.run import _write_model_cards
    from kormed.pipeline.spec import Pipeline, RunContext
    from kormed.train.config import CPTConfig
    from kormed.train.sft_config import SFTConfig

    rd = demo_like_run(tmp_path / "run")
    shutil.rmtree(rd / "sft" / "step4")
    info = json.loads((rd / "sft" / "step3" / "training_info.json").read_text())
    _adapter(rd / "sft" / "step3", info)
    sft = SFTConfig(output=str(rd / "sft"))
    sft = dataclasses.replace(sft, steps=sft.steps[:3])
    ctx = RunContext(pipeline=Pipeline(name="t", run_dir=rd, stages=["cpt", "sft"], sections={}),
                     configs={"cpt": CPTConfig(output=str(rd / "cpt")), "sft": sft}, log=lambda m: None)
    _write_model_cards(ctx)
    assert (rd / "sft" / "step3" / "README.md").is_file() and (rd / "cpt" / "README.md").is_file()
    assert not (rd / "loop" / "best" / "README.md").exists()  # loop is not part of this run


def test_card_shows_bits_per_char_and_knowledge_columns(tmp_path):
    from kormed.eval.knowledge import summarise

    rd = demo_like_run(tmp_path / "demo")
    for target, right in (("base", 2), ("loop", 6)):
        records = [{"form": "medical:definition_to_term", "term": f"t{g}{i}", "group": g, "question": f"q{g}{i}",
                    "correct": i < right - (g == "held_out"), "margin": 0.1 * i} for g in ("trained", "held_out")
                   for i in range(10)]
        _w(rd / "eval" / f"knowledge_{target}.json", {"split": "test", "summary": summarise(records),
                                                       "questions": records})
        _w(rd / "eval" / f"ppl_{target}.json", {"perplexity": 25.0, "loss": 3.2, "tokens": 5000,
                                                "bits_per_char": 3.125 if target == "base" else 3.0})
    card = adapter_card(rd / "loop" / "best")
    assert ("| model | KorMedMCQA accuracy | questions | mode | perplexity | bits per character | knowledge, trained "
            "entries (95% CI) | knowledge, held-out entries (95% CI) |") in card
    # loop: 6/10 trained (Wilson 0.313-0.832), 5/10 held out (0.237-0.763)
    assert "| loop | 0.32 | 50 | generate | 25 | 3 | 0.600 (0.313–0.832, n=10) | 0.500 (0.237–0.763, n=10) |" in card
    assert "| cpt | 0.22 | 50 | generate | 28.9 | – | – | – |" in card
    assert "held-out entries were set aside by `kormed prepare`" in card
