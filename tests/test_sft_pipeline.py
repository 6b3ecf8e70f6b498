"""`kormed train sft` and `kormed train loop` end to end on CPU: tiny random Gemma 3 (fast) for the staged logic,
resume and the loop; the real embedded 270M for one short run on the bundled sample data."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import yaml

from kormed.cli import main
from kormed.config import load_config
from kormed.sample_data import sample_paths
from kormed.train.sft_config import SFTConfig
from tests.test_sft_data import write_raw

TRAIN_FAST = {"eval_steps": 1, "batch_size": 2, "grad_accum": 1, "report_to": [], "gradient_checkpointing": False,
              "lr": 1e-3, "logging_steps": 1}


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def _data_args(tmp: Path) -> list[str]:
    p = sample_paths()
    return ["--mcq", str(p["mcq_train"]), "--dict", str(p["medical_dict"]), "--char-dict", str(p["char_dict"]),
            "--raw", write_raw(tmp / "raw.jsonl")]


def _info(out: Path, step: str) -> dict:
    return json.loads((out / step / "training_info.json").read_text(encoding="utf-8"))


def seeds_steps(changes: dict[int, dict]) -> list[dict]:
    """The seeds' four default steps as a config list, with `changes` (step number -> values) applied."""
    steps = [dataclasses.asdict(s) for s in SFTConfig().steps]
    for n, values in changes.items():
        steps[n - 1].update(values)
    return steps


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_gemma3_dir):
    """The four steps on the tiny model; steps 2 and 4 have conditions that can hold, 1 and 3 cannot."""
    tmp = tmp_path_factory.mktemp("sft")
    config = {"sft": {
        "val_max": 2, "max_length": 96, "stable_tolerance": 10.0, "maintain_tolerance": 0.5, "train": TRAIN_FAST,
        # no LoRA dropout: a resumed step evaluates at step 0, which draws from the global RNG (the DataLoader's
        # base seed) and would shift the dropout masks relative to the uninterrupted run
        "lora": {"dropout": 0.0},
        "steps": seeds_steps({
            1: {"max_steps": 1},  # default conditions: qa loss < 0.3 never holds for a random model
            2: {"max_steps": 3, "stop": ["eval_qa_loss < 1000", "eval_raw_perplexity maintained"],
                "mode": "concatenate"},
            3: {"max_steps": 1, "stop": ["eval_dict_loss < 0.001", "eval_raw_perplexity maintained"]},
            4: {"max_steps": 4, "stop": ["eval_qa_loss < 1000", "eval_raw_perplexity ~ 1.1 * baseline",
                                         "eval_raw_perplexity maintained"],
                "stable_evals": 2, "stable_metrics": ["eval_qa_loss", "eval_raw_perplexity"]},
        }),
    }}
    cfg_path = tmp / "sft.yaml"
    cfg_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    out = tmp / "out"
    args = ["train", "sft", "--config", str(cfg_path), *_data_args(tmp), "--model", str(tiny_gemma3_dir),
            "--output", str(out), "--device", "cpu"]
    return tmp, out, args, cfg_path


def test_four_steps_with_stop_conditions_and_guard(tiny_run, capsys):
    tmp, out, args, _ = tiny_run
    code, stdout, err = _cli(args, capsys)
    assert code == 0, err
    baseline = json.loads((out / "baseline.json").read_text())
    infos = {n: _info(out, f"step{n}") for n in (1, 2, 3, 4)}
    for n, info in infos.items():
        assert (out / f"step{n}" / "adapter_model.safetensors").is_file()
        assert not (out / f"step{n}" / "checkpoints").exists()
        assert info["stop_reason"] in ("conditions_met", "max_steps")
        # every evaluation after the start is checked and logged with its values
        assert len(info["stop_checks"]) == len([e for e in info["eval_history"] if e["step"] > 0])
        assert all(r["value"] is not None for c in info["stop_checks"] for r in c["results"])
    # the guard: conditions that cannot hold end at max_steps, reported as such
    assert infos[1]["stop_reason"] == "max_steps" and infos[1]["global_step"] == 1
    assert "max_steps 1 reached" in infos[1]["stop_detail"]
    assert infos[3]["stop_reason"] == "max_steps" and infos[3]["conditions_at_stop"][0]["holds"] is False
    # conditions that hold stop the step at the first evaluation (step 2) / after 2 stable evaluations (step 4)
    assert infos[2]["stop_reason"] == "conditions_met" and infos[2]["global_step"] == 1
    assert infos[4]["stop_reason"] == "conditions_met" and infos[4]["global_step"] == 2
    assert [c["consecutive"] for c in infos[4]["stop_checks"]] == [1, 2]
    # 'maintained' is measured against the step's own start; the baseline is the raw ppl before step 1
    ref = infos[2]["start_metrics"]["eval_raw_perplexity"]
    assert infos[2]["conditions_at_stop"][1]["threshold"] == pytest.approx(ref * 1.5)
    # in one process, step 2's start is step 1's final evaluation (the model is unchanged in between)
    assert infos[2]["start_metrics"] == {k: v for k, v in infos[1]["metrics_at_stop"].items() if k[:5] == "eval_"}
    assert infos[2]["start_metrics_source"] == "final evaluation of the previous step"
    assert infos[1]["start_metrics"] is None  # no 'maintained' condition: no start reference needed
    assert infos[4]["conditions_at_stop"][1]["threshold"] == pytest.approx(baseline["raw_perplexity"] * 1.1 * 1.02)
    # no condition names eval_dev_knowledge: dictionary knowledge is never scored
    assert not any("eval_dev_knowledge" in e for info in infos.values() for e in info["eval_history"])
    # per-set validation losses, each logged
    assert {"eval_qa_loss", "eval_dict_loss", "eval_raw_perplexity"} <= set(infos[3]["metrics_at_stop"])
    val_sets = [k[4:] for k in infos[3]["data"]["sizes"] if k.startswith("val_")]
    assert all(f"eval_{k}_loss" in infos[3]["metrics_at_stop"] for k in val_sets)
    # mixes as configured, each step continuing the previous adapter
    assert infos[3]["mix"] == {"qa_cot": 0.7, "dict": 0.3} and infos[2]["mix_mode"] == "concatenate"
    # the seeds' shares are shares of learned tokens (mix_by tokens); the report records both shares
    assert infos[3]["mix_by"] == "tokens" and infos[3]["step_name"] == "qa_dict"
    for n in (1, 3, 4):
        shares = infos[n]["mix_report"]["sources"]
        assert sum(v["learned_token_share"] for v in shares.values()) == pytest.approx(1.0, abs=1e-5)
        assert sum(v["example_share"] for v in shares.values()) == pytest.approx(1.0, abs=1e-5)
    raw_share = infos[4]["mix_report"]["sources"]["raw"]
    assert raw_share["learned_token_share"] == pytest.approx(0.4, abs=0.1)
    assert raw_share["example_share"] < raw_share["learned_token_share"]  # raw examples carry many targets
    assert infos[2]["started_from"] == str(out / "step1") and infos[1]["started_from"] is None
    summary = json.loads((out / "sft_summary.json").read_text())
    assert [r["stop_reason"] for r in summary["steps"]] == ["max_steps", "conditions_met", "max_steps",
                                                            "conditions_met"]
    assert [r["name"] for r in summary["steps"]] == ["qa_examples", "qa_more_data", "qa_dict", "qa_dict_raw"]
    assert "step4: conditions_met" in stdout


def test_from_step_resumes_with_the_previous_adapter(tiny_run, capsys):
    from safetensors.torch import load_file

    tmp, out, args, _ = tiny_run
    if not (out / "step4" / "training_info.json").is_file():
        pytest.skip("needs the four-step run")
    resumed = tmp / "resumed"
    shutil.copytree(out, resumed)
    shutil.rmtree(resumed / "step4")
    args = [a if a != str(out) else str(resumed) for a in args]
    code, _, err = _cli([*args, "--from-step", "4"], capsys)
    assert code == 0, err
    info = _info(resumed, "step4")
    assert info["started_from"] == str(resumed / "step3") and info["adapter_init"] == str(resumed / "step3")
    assert info["baseline_raw_perplexity"] == _info(out, "step4")["baseline_raw_perplexity"]  # stored, not re-measured
    # a resumed step measures its start at step 0: the saved step-3 adapter reproduces step 3's final metrics
    assert info["start_metrics_source"] == "evaluation at step 0"
    for key in ("eval_qa_loss", "eval_dict_loss", "eval_raw_perplexity"):
        assert info["start_metrics"][key] == pytest.approx(_info(out, "step3")["metrics_at_stop"][key], rel=1e-4)
    # resuming from step 3's saved adapter reproduces the uninterrupted run's step 4
    a = load_file(out / "step4" / "adapter_model.safetensors")
    b = load_file(resumed / "step4" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert all((a[k] - b[k]).abs().max().item() < 1e-5 for k in a)
    summary = json.loads((resumed / "sft_summary.json").read_text())
    assert [r["step"] for r in summary["steps"]] == [1, 2, 3, 4] and summary["finished"]
    # without the previous step's adapter: a clear error
    shutil.rmtree(resumed / "step3")
    code, _, err = _cli([*args, "--from-step", "4"], capsys)
    assert code == 2 and "step3" in err and "adapter of step 3" in err


def test_sft_input_errors_are_one_line(tmp_path, capsys, tiny_gemma3_dir):
    p = sample_paths()
    code, _, err = _cli(["train", "sft", "--mcq", str(p["mcq_train"]), "--dict", str(p["medical_dict"]),
                         "--output", str(tmp_path / "o"), "--model", str(tiny_gemma3_dir)], capsys)
    assert code == 2 and "--raw is required" in err
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({"sft": {"steps": seeds_steps({3: {"stop": ["eval_qa_loss << 1"]}})}}))
    code, _, err = _cli(["train", "sft", "--config", str(cfg)], capsys)
    assert code == 2 and "sft.steps[2].stop[0]" in err
    cfg.write_text(yaml.safe_dump({"sft": {"steps": [{"name": "only", "stop": ["eval_nope_loss < 1"]}],
                                           "train": TRAIN_FAST, "val_max": 2, "max_length": 64}}))
    code, _, err = _cli(["train", "sft", "--config", str(cfg), *_data_args(tmp_path), "--model",
                         str(tiny_gemma3_dir), "--output", str(tmp_path / "o"), "--device", "cpu"], capsys)
    assert code == 2 and "eval_nope_loss" in err and "not measured" in err


def test_steps_written_the_old_way_are_a_clear_error(tmp_path, capsys):
    """`sft.step1`..`step4` (and the loop's dict_round/mcq_round/first_round) name the new list form."""
    cfg = tmp_path / "old.yaml"
    cfg.write_text(yaml.safe_dump({"sft": {"step4": {"stable_evals": 1}}}))
    code, _, err = _cli(["train", "sft", "--config", str(cfg)], capsys)
    assert code == 2 and "sft.step4" in err and "steps are a list now" in err and "steps:" in err
    cfg.write_text(yaml.safe_dump({"loop": {"first_round": "mcq"}}))
    code, _, err = _cli(["train", "loop", "--config", str(cfg)], capsys)
    assert code == 2 and "loop.first_round" in err and "rounds:" in err
    # the list itself: --from-step is bounded by its length, names are unique
    cfg.write_text(yaml.safe_dump({"sft": {"steps": seeds_steps({})[:2], "from_step": 3}}))
    code, _, err = _cli(["train", "sft", "--config", str(cfg)], capsys)
    assert code == 2 and "sft.from_step" in err and "between 1 and 2" in err
    cfg.write_text(yaml.safe_dump({"sft": {"steps": [{"name": "a"}, {"name": "a"}]}}))
    code, _, err = _cli(["train", "sft", "--config", str(cfg)], capsys)
    assert code == 2 and "sft.steps[1].name" in err
    two = load_config("sft", None, {"steps": [{"name": "a", "mix": {"dict": 1}}, {"name": "b"}]})
    assert [s.name for s in two.steps] == ["a", "b"] and two.steps[1].mix == {"qa": 1.0}


def test_loop_runs_two_rounds_and_keeps_the_best(tmp_path, capsys, tiny_gemma3_dir):
    p = sample_paths()
    cfg = tmp_path / "loop.yaml"
    cfg.write_text(yaml.safe_dump({"loop": {"val_max": 2, "max_length": 96, "train": TRAIN_FAST,
                                            "eval_max_new_tokens": 4, "eval_batch_size": 4}}))
    out = tmp_path / "loop"
    trained, record = _dict_subset(tmp_path, held=10)
    code, stdout, err = _cli(["train", "loop", "--config", str(cfg), "--mcq", str(p["mcq_train"]), "--dict",
                              str(trained), "--dict-heldout", str(record), "--knowledge-per-group", "2",
                              "--eval-data", str(p["mcq_test"]), "--eval-limit", "4",
                              "--max-rounds", "2", "--max-steps-per-round", "1", "--target", "0.99",
                              "--model", str(tiny_gemma3_dir), "--output", str(out), "--device", "cpu"], capsys)
    assert code == 0, err
    table = json.loads((out / "loop_table.json").read_text())
    assert [(r["round"], r["kind"]) for r in table["rounds"]] == [(0, "start"), (1, "dict"), (2, "mcq")]
    assert table["stop_reason"] in ("max_rounds", "target_reached", "no_improvement")
    # dictionary knowledge, really scored: the dev forms of the trained entries every round (3 forms x 2), the test
    # forms of trained and held-out entries for the rounds reported
    assert all(r["dev_knowledge_total"] == 6 for r in table["rounds"]) and table["select_on"] == "knowledge"
    best_row = table["rounds"][table["best_round"]]
    assert best_row["test_knowledge_total"] == best_row["heldout_knowledge_total"] == 6
    assert table["best_dev_knowledge"] == best_row["dev_knowledge_accuracy"]
    assert (out / "round01_dict" / "knowledge_dev.json").is_file() and "dev knowledge" in stdout
    # the same settings give the numbers `kormed eval knowledge` gives for that adapter (the eval stage may reuse)
    start = json.loads((out / "round00_start" / "knowledge_test.json").read_text())
    code, _, err = _cli(["eval", "knowledge", "--adapter", str(out / "round00_start"), "--dict", str(trained),
                         "--heldout", str(record), "--knowledge-split", "test", "--knowledge-per-group", "2",
                         "--output", str(tmp_path / "k.json"), "--device", "cpu"], capsys)
    assert code == 0, err
    again = json.loads((tmp_path / "k.json").read_text())
    assert [(q["term"], q["form"], q["extracted"]) for q in again["questions"]] == [
        (q["term"], q["form"], q["extracted"]) for q in start["questions"]]
    assert all(r["test_total"] in (4, None) and r["dev_total"] >= 1 for r in table["rounds"])
    assert _info(out, "round01_dict")["mix"] == {"dict": 1.0}
    assert _info(out, "round02_mcq")["mix"] == {"qa_cot": 1.0}
    assert _info(out, "round02_mcq")["adapter_init"] is None and _info(out, "round02_mcq")["started_from"] == str(
        out / "round01_dict")
    best = json.loads((out / "best" / "best.json").read_text())
    assert best["round"] == table["best_round"]
    assert best["dev_accuracy"] == max(r["dev_accuracy"] for r in table["rounds"])
    assert table["rounds"][table["best_round"]]["test_accuracy"] == table["best_test_accuracy"] is not None
    assert table["reported_on"].startswith(f"test ({p['mcq_test']}, 4 q)")
    assert best["selected_on"] == table["selected_on"] and table["selected_on"].startswith(("dev ", "train_holdout "))
    assert (out / "best" / "adapter_model.safetensors").is_file()
    md = (out / "loop_table.md").read_text()
    assert md.count("\n| ") == 1 + 3 and "Best on dev: round" in md and "| dev knowledge |" in md
    assert f"Stop: **{table['stop_reason']}**" in md
    assert (out / "round01_dict" / "kormedmcqa_dev.json").is_file()
    assert f"Selected on: **{table['selected_on']}**" in md
    assert "loop done" in stdout


def _loop_config(tmp: Path, model_dir: Path, eval_data: Path, **values) -> object:
    return load_config("loop", None, {
        "val_max": 2, "max_length": 96, "train": {**TRAIN_FAST, "device": "cpu"}, "eval_max_new_tokens": 4,
        "mcq": str(sample_paths()["mcq_train"]), "dict": str(sample_paths()["medical_dict"]),
        "eval_data": str(eval_data), "model": str(model_dir), "output": str(tmp / "loop"), **values})


def test_loop_selects_on_dev_and_reports_test(tmp_path, tiny_gemma3_dir):
    """Real rounds on the tiny model, KorMedMCQA scores injected through the scorer seam: the test-best round
    (2) differs from the dev-best round (1); the loop keeps round 1 and reports round 1's test accuracy."""
    from kormed.train.loop import run_loop

    data = tmp_path / "kmmcqa"
    data.mkdir()
    shutil.copy(sample_paths()["mcq_test"], data / "test.jsonl")
    dev_lines = Path(sample_paths()["mcq_train"]).read_text(encoding="utf-8").splitlines()[:5]
    (data / "dev.jsonl").write_text("\n".join(dev_lines) + "\n", encoding="utf-8")  # the seeds' layout
    dev_scores, test_scores = iter([0.2, 0.6, 0.4]), iter([0.3, 0.1, 0.9])
    seen: list[tuple[str, int]] = []

    def score(questions, split):
        seen.append((split, len(questions)))
        acc = next(dev_scores if split == "dev" else test_scores)
        return {"accuracy": acc, "correct": round(acc * len(questions)), "total": len(questions), "unparseable": 0}

    def knowledge(dictionaries, split, held_out):  # the same every round: exam accuracy decides
        return {"summary": {"all/trained": {"accuracy": 0.5, "correct": 1, "total": 2}}}

    cfg = _loop_config(tmp_path, tiny_gemma3_dir, data / "test.jsonl", max_rounds=2, max_steps_per_round=1,
                       target=0.99, test_every_round=True, select_on="exam")
    table = run_loop(cfg, log=lambda m: None, score=score, score_knowledge=knowledge)
    out = tmp_path / "loop"
    assert [r["test_accuracy"] for r in table["rounds"]] == [0.3, 0.1, 0.9]  # every round, only reported
    assert table["best_round"] == 1 and table["best_dev_accuracy"] == 0.6 and table["best_test_accuracy"] == 0.1
    assert json.loads((out / "best" / "best.json").read_text())["round"] == 1
    assert table["selected_on"] == f"dev ({data / 'dev.jsonl'}, 5 q)" and table["selection"]["split"] == "dev"
    n_test = len((data / "test.jsonl").read_text(encoding="utf-8").splitlines())
    assert table["reported_on"] == f"test ({data / 'test.jsonl'}, {n_test} q)"
    assert seen[:2] == [("dev", 5), ("test", n_test)]
    info = _info(out, "round02_mcq")
    assert info["selected_on"] == table["selected_on"] and info["reported_on"] == table["reported_on"]
    assert "Selected on: **dev" in (out / "loop_table.md").read_text()
    # the target is judged on dev: 0.6 on dev ends the loop at round 1, whatever the test set says
    dev_scores, test_scores = iter([0.2, 0.6]), iter([0.95, 0.1])
    shutil.rmtree(out)
    table = run_loop(dataclasses.replace(cfg, target=0.5), log=lambda m: None, score=score,
                     score_knowledge=knowledge)
    assert table["stop_reason"] == "target_reached" and [r["round"] for r in table["rounds"]] == [0, 1]
    assert [r["test_accuracy"] for r in table["rounds"]] == [0.95, 0.1]


def _dict_subset(tmp: Path, held: int) -> tuple[Path, Path]:
    """The bundled medical dictionary split as `kormed prepare` splits it: the trained subset and the held-out
    record (its last `held` entries)."""
    entries = json.loads(Path(sample_paths()["medical_dict"]).read_text(encoding="utf-8"))
    trained, record = tmp / "medical_dict.trained.json", tmp / "corpus.dict_heldout.json"
    trained.write_text(json.dumps(entries[:-held], ensure_ascii=False), encoding="utf-8")
    record.write_text(json.dumps({"fraction": 0.2, "seed": 0, "medical_dict": entries[-held:], "char_dict": []},
                                 ensure_ascii=False), encoding="utf-8")
    return trained, record


def test_loop_never_selects_on_a_test_split(tmp_path, tiny_gemma3_dir):
    """Real rounds on the tiny model, scores injected: dev knowledge favours round 1, while the test forms, the
    held-out entries and the test questions favour round 2 (and the dev exam split ties). The loop keeps round 1,
    whatever the test numbers are, and scores a test split only after the round's selection is decided."""
    from kormed.train.loop import run_loop

    trained, record = _dict_subset(tmp_path, held=10)
    held_terms = {e["term"] for e in json.loads(record.read_text())["medical_dict"]}
    calls: list[tuple[str, str]] = []
    dev_known = [0.3, 0.7, 0.5]
    test_known: dict[str, list[float]] = {}  # the reported numbers favour round 2

    def score(questions, split):
        calls.append(("exam", split))
        n = calls.count(("exam", split)) - 1
        acc = 0.4 if split == "dev" else test_known["exam"][n]
        return {"accuracy": acc, "correct": round(acc * len(questions)), "total": len(questions), "unparseable": 0}

    def knowledge(dictionaries, split, held_out):
        calls.append(("knowledge", split))
        n = calls.count(("knowledge", split)) - 1
        terms = {e.term for e in dictionaries["medical"]}
        if split == "dev":  # the trained entries only: the held-out control is not even in the pool
            assert held_out == {} and not terms & held_terms
            return {"summary": {"all/trained": {"accuracy": dev_known[n], "correct": n, "total": 60}}}
        assert held_out["medical"] == held_terms and held_terms <= terms
        return {"summary": {"all/trained": {"accuracy": test_known["trained"][n], "correct": n, "total": 60},
                            "all/held_out": {"accuracy": test_known["held_out"][n], "correct": n, "total": 30}}}

    test_known.update(trained=[0.9, 0.2, 0.95], held_out=[0.5, 0.1, 0.6], exam=[0.2, 0.1, 0.9])
    cfg = _loop_config(tmp_path, tiny_gemma3_dir, Path(sample_paths()["mcq_test"]), dict=str(trained),
                       dict_heldout=str(record), dev_data=str(sample_paths()["mcq_dev"]), max_rounds=3,
                       stop_after_no_improvement=1, max_steps_per_round=1, test_every_round=True, eval_limit=3)
    table = run_loop(cfg, log=lambda m: None, score=score, score_knowledge=knowledge)
    rows = table["rounds"]
    assert [r["round"] for r in rows] == [0, 1, 2]  # round 2 does not beat round 1 on dev: stop
    assert table["stop_reason"] == "no_improvement" and table["stop_after_no_improvement"] == 1
    assert [r["dev_knowledge_accuracy"] for r in rows] == dev_known
    assert [r["test_knowledge_accuracy"] for r in rows] == [0.9, 0.2, 0.95]  # recorded, only reported
    assert [r["heldout_knowledge_accuracy"] for r in rows] == [0.5, 0.1, 0.6]
    assert table["best_round"] == 1 and table["best_dev_knowledge"] == 0.7
    assert (table["best_test_knowledge"], table["best_heldout_knowledge"], table["best_test_accuracy"]) == (
        0.2, 0.1, 0.1)  # the chosen round's own reported numbers, however poor
    dev, test = [("exam", "dev"), ("knowledge", "dev")], [("exam", "test"), ("knowledge", "test")]
    assert calls == (dev + test) * 3  # each round: its dev scores, then (selection decided) its reported ones
    best = json.loads((tmp_path / "loop" / "best" / "best.json").read_text())
    assert best["round"] == 1 and best["select_on"] == "knowledge"
    assert table["knowledge"]["dev"]["used_for_selection"] is True
    assert table["knowledge"]["test"]["used_for_selection"] is False
    assert table["knowledge"]["test"]["heldout"]["path"] == str(record)
    saved = json.loads((tmp_path / "loop" / "round02_mcq" / "knowledge_test.json").read_text())
    assert saved["used_for_selection"] is False and saved["note"] == "reported, not used for selection"
    md = (tmp_path / "loop" / "loop_table.md").read_text()
    assert "Reported, not used for selection" in md and "| held-out knowledge |" in md


def test_loop_knowledge_target_judged_on_dev(tmp_path, tiny_gemma3_dir):
    """The starting adapter already at the dev knowledge target ends the loop before any round trains, while
    its dev exam accuracy is far below `target`; select_on exam ignores the knowledge target. By default the test
    splits are scored only for a round that became the best on dev, after its dev scores."""
    from kormed.train.loop import run_loop

    calls: list[tuple[str, str]] = []

    def score(questions, split):
        calls.append(("exam", split))
        return {"accuracy": 0.1, "correct": 0, "total": len(questions), "unparseable": 0}

    def knowledge(dictionaries, split, held_out):
        calls.append(("knowledge", split))
        return {"summary": {"all/trained": {"accuracy": 0.95 if split == "dev" else 0.1, "correct": 1,
                                            "total": 1}}}

    cfg = _loop_config(tmp_path, tiny_gemma3_dir, Path(sample_paths()["mcq_test"]), max_rounds=1,
                       max_steps_per_round=1, eval_limit=2, dev_data=str(sample_paths()["mcq_dev"]))
    table = run_loop(cfg, log=lambda m: None, score=score, score_knowledge=knowledge)
    assert table["stop_reason"] == "target_reached" and [r["round"] for r in table["rounds"]] == [0]
    shutil.rmtree(tmp_path / "loop")
    table = run_loop(dataclasses.replace(cfg, select_on="exam"), log=lambda m: None, score=score,
                     score_knowledge=knowledge)
    assert table["stop_reason"] == "max_rounds" and [r["round"] for r in table["rounds"]] == [0, 1]
    dev, test = [("exam", "dev"), ("knowledge", "dev")], [("exam", "test"), ("knowledge", "test")]
    assert calls[-6:] == dev + test + dev  # round 1 ties round 0 on dev: not the best, not reported
    assert [r["test_knowledge_accuracy"] for r in table["rounds"]] == [0.1, None] and table["best_round"] == 0


def test_selection_key_and_dev_targets():
    """Which dev numbers choose a round and end the loop, per select_on (ties as documented)."""
    from kormed.train.loop import dev_target_reached, selection_key
    from kormed.train.sft_config import LoopConfig

    assert selection_key("knowledge", 0.2, 0.6) > selection_key("knowledge", 0.9, 0.5)
    assert selection_key("knowledge", 0.3, 0.6) > selection_key("knowledge", 0.2, 0.6)  # tie: the exam decides
    assert selection_key("exam", 0.3, 0.1) > selection_key("exam", 0.2, 0.9)
    assert selection_key("exam", 0.3, 0.2) > selection_key("exam", 0.3, 0.1)  # tie: knowledge decides
    assert selection_key("both", 0.4, 0.6) == selection_key("both", 0.6, 0.4)  # a full tie: the earlier round
    assert not selection_key("knowledge", 0.3, 0.6) > selection_key("knowledge", 0.3, 0.6)
    cfg = LoopConfig(target=0.5, knowledge_target=0.8)
    assert dev_target_reached(cfg, exam=0.1, knowledge=0.8) and not dev_target_reached(cfg, exam=0.9, knowledge=0.7)
    cfg.select_on = "exam"
    assert dev_target_reached(cfg, exam=0.5, knowledge=0.0) and not dev_target_reached(cfg, exam=0.4, knowledge=1.0)
    cfg.select_on = "both"
    assert dev_target_reached(cfg, exam=0.5, knowledge=0.8)
    assert not dev_target_reached(cfg, exam=0.5, knowledge=0.7) and not dev_target_reached(cfg, exam=0.4,
                                                                                          knowledge=0.9)


def test_loop_without_dev_holds_out_training_questions(tmp_path):
    """No dev split: the selection questions are held out of the training questions (seeded), and disjoint."""
    from kormed.train.loop import selection_split
    from kormed.train.sft import load_sources
    from kormed.train.sft_config import LoopConfig

    data = tmp_path / "nodev"
    data.mkdir()
    shutil.copy(sample_paths()["mcq_test"], data / "test.jsonl")
    p = sample_paths()
    cfg = LoopConfig(mcq=str(p["mcq_train"]), dict=str(p["medical_dict"]), eval_data=str(data / "test.jsonl"),
                     dev_holdout=8, val_max=2)

    def split():
        src = load_sources(mcq=cfg.mcq, dictionary=cfg.dict, char_dict=None, raw=None, raw_val=None,
                           val_fraction=cfg.val_fraction, val_max=cfg.val_max, raw_max_texts=10, raw_val_max_texts=1,
                           seed=cfg.train.seed, log=lambda m: None)
        before = list(src.mcq_train)
        return before, src, selection_split(cfg, src, log=lambda m: None)

    before, src, sel = split()
    held = {q.source for q in sel.questions}
    assert sel.name == "train_holdout" and len(held) == 8 and sel.label.endswith("8 q)")
    assert not held & {q.source for q in src.mcq_train}  # the rounds never train on them
    assert not held & {q.source for q in src.mcq_val}
    assert held | {q.source for q in src.mcq_train} == {q.source for q in before}
    assert src.info["mcq"]["selection_holdout"] == 8
    assert {q.source for q in split()[2].questions} == held  # seeded: the same questions every run
    cfg.dev_holdout = 1000  # at most half of the training questions
    assert len(split()[2].questions) == len(before) // 2


@pytest.mark.slow
@pytest.mark.heavy  # ~1.5 minutes on 2 cores: with the heavy checks, so CI stays within its budget
def test_embedded_model_short_run_on_sample_data(tmp_path, capsys, embedded_model_dir):
    """The real Gemma 3 270M, the bundled sample data, the default steps and conditions, one step each."""
    import math

    from datasets import load_from_disk

    cfg = tmp_path / "sft.yaml"
    cfg.write_text(yaml.safe_dump({"sft": {"val_max": 1, "train": {**TRAIN_FAST, "batch_size": 1, "lr": 2e-4}}}))
    # raw Korean text: the first paragraph of each bundled Korean Wikipedia sample article
    wiki = load_from_disk(str(sample_paths()["wikipedia_korean"]))
    raw = tmp_path / "wiki.jsonl"
    raw.write_text("".join(json.dumps({"text": t.split("\n")[0][:300]}, ensure_ascii=False) + "\n"
                           for t in wiki["text"]), encoding="utf-8")
    args = [*_data_args(tmp_path)[:-1], str(raw)]
    out = tmp_path / "out"
    code, stdout, err = _cli(["train", "sft", "--config", str(cfg), *args, "--output", str(out),
                              "--max-steps-per-step", "1", "--max-length", "64", "--device", "cpu"], capsys)
    assert code == 0, err
    baseline = json.loads((out / "baseline.json").read_text())["raw_perplexity"]
    # the real model knows Korean: a sane perplexity on raw Korean text (a random model is ~262144)
    assert 1.0 < baseline < 1000
    for n in (1, 2, 3, 4):
        info = _info(out, f"step{n}")
        assert info["stop_reason"] in ("conditions_met", "max_steps") and info["global_step"] <= 1
        assert info["stop_conditions"] == {1: ["eval_qa_loss < 0.3", "eval_raw_perplexity < 1.03 * baseline"],
                                           2: ["eval_qa_loss < 0.2", "eval_raw_perplexity maintained"],
                                           3: ["eval_qa_loss < 0.2", "eval_dict_loss < 0.3",
                                               "eval_raw_perplexity maintained"],
                                           4: ["eval_qa_loss < 0.2", "eval_raw_perplexity ~ 1.1 * baseline"]}[n]
        assert all(math.isfinite(v) for k, v in info["metrics_at_stop"].items() if k.endswith("_loss"))
        assert info["data"]["sizes"]["train_raw"] >= 14
    assert _info(out, "step4")["mix"] == {"qa_cot": 0.4, "dict": 0.2, "raw": 0.4}
    assert "sft done" in stdout


def test_sft_stop_condition_on_dev_knowledge(tmp_path, capsys, tiny_gemma3_dir):
    """`eval_dev_knowledge` in a step's conditions: dictionary knowledge (dev forms of the trained entries) is
    scored at each evaluation of that step, read by the conditions and recorded (a step that does not name it never
    scores it: test_four_steps_with_stop_conditions_and_guard)."""
    cfg = tmp_path / "sft.yaml"
    cfg.write_text(yaml.safe_dump({"sft": {
        "val_max": 2, "max_length": 96, "train": TRAIN_FAST, "knowledge_per_group": 1,
        "steps": [{"name": "knows", "mix": {"dict": 1.0}, "stop": ["eval_dev_knowledge >= 0"], "max_steps": 2}]}}))
    out = tmp_path / "out"
    code, _, err = _cli(["train", "sft", "--config", str(cfg), *_data_args(tmp_path), "--model",
                         str(tiny_gemma3_dir), "--output", str(out), "--device", "cpu"], capsys)
    assert code == 0, err
    knows = _info(out, "step1")
    assert knows["stop_reason"] == "conditions_met" and knows["global_step"] == 1  # an accuracy is always >= 0
    value = knows["stop_checks"][0]["results"][0]["value"]
    assert 0 <= value <= 1 and knows["metrics_at_stop"]["eval_dev_knowledge"] == value
    # 1 question per form: 3 medical + 2 symbol forms, so the accuracy is a multiple of 1/5
    assert round(value * 5, 6) == round(value * 5)
