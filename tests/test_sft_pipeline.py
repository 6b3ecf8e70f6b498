"""`kormed train sft` and `kormed train loop` end to end on CPU: tiny random Gemma 3 (fast) for the staged logic,
resume and the loop; the real embedded 270M for one short run on the bundled sample data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from kormed.cli import main
from kormed.sample_data import sample_paths
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


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_gemma3_dir):
    """The four steps on the tiny model; steps 2 and 4 have conditions that can hold, 1 and 3 cannot."""
    tmp = tmp_path_factory.mktemp("sft")
    config = {"sft": {
        "val_max": 2, "max_length": 96, "stable_tolerance": 10.0, "maintain_tolerance": 0.5, "train": TRAIN_FAST,
        # no LoRA dropout: a resumed step evaluates at step 0, which draws from the global RNG (the DataLoader's
        # base seed) and would shift the dropout masks relative to the uninterrupted run
        "lora": {"dropout": 0.0},
        "step1": {"max_steps": 1},  # default conditions: qa loss < 0.3 never holds for a random model
        "step2": {"max_steps": 3, "stop": ["eval_qa_loss < 1000", "eval_raw_perplexity maintained"],
                  "mode": "concatenate"},
        "step3": {"max_steps": 1, "stop": ["eval_dict_loss < 0.001", "eval_raw_perplexity maintained"]},
        "step4": {"max_steps": 4, "stop": ["eval_qa_loss < 1000", "eval_raw_perplexity ~ 1.1 * baseline",
                                           "eval_raw_perplexity maintained"],
                  "stable_evals": 2, "stable_metrics": ["eval_qa_loss", "eval_raw_perplexity"]},
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
    # per-set validation losses, each logged
    assert {"eval_qa_loss", "eval_dict_loss", "eval_raw_perplexity"} <= set(infos[3]["metrics_at_stop"])
    val_sets = [k[4:] for k in infos[3]["data"]["sizes"] if k.startswith("val_")]
    assert all(f"eval_{k}_loss" in infos[3]["metrics_at_stop"] for k in val_sets)
    # mixes as configured, each step continuing the previous adapter
    assert infos[3]["mix"] == {"qa_cot": 0.7, "dict": 0.3} and infos[2]["mix_mode"] == "concatenate"
    assert infos[2]["started_from"] == str(out / "step1") and infos[1]["started_from"] is None
    summary = json.loads((out / "sft_summary.json").read_text())
    assert [r["stop_reason"] for r in summary["steps"]] == ["max_steps", "conditions_met", "max_steps",
                                                            "conditions_met"]
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
    cfg.write_text(yaml.safe_dump({"sft": {"step3": {"stop": ["eval_qa_loss << 1"]}}}))
    code, _, err = _cli(["train", "sft", "--config", str(cfg)], capsys)
    assert code == 2 and "sft.step3.stop[0]" in err
    cfg.write_text(yaml.safe_dump({"sft": {"step1": {"stop": ["eval_nope_loss < 1"]}, "train": TRAIN_FAST,
                                           "val_max": 2, "max_length": 64}}))
    code, _, err = _cli(["train", "sft", "--config", str(cfg), *_data_args(tmp_path), "--model",
                         str(tiny_gemma3_dir), "--output", str(tmp_path / "o"), "--device", "cpu"], capsys)
    assert code == 2 and "eval_nope_loss" in err and "not measured" in err


def test_loop_runs_two_rounds_and_keeps_the_best(tmp_path, capsys, tiny_gemma3_dir):
    p = sample_paths()
    cfg = tmp_path / "loop.yaml"
    cfg.write_text(yaml.safe_dump({"loop": {"val_max": 2, "max_length": 96, "train": TRAIN_FAST,
                                            "eval_max_new_tokens": 4, "eval_batch_size": 4}}))
    out = tmp_path / "loop"
    code, stdout, err = _cli(["train", "loop", "--config", str(cfg), "--mcq", str(p["mcq_train"]), "--dict",
                              str(p["medical_dict"]), "--eval-data", str(p["mcq_test"]), "--eval-limit", "4",
                              "--max-rounds", "2", "--max-steps-per-round", "1", "--target", "0.99",
                              "--model", str(tiny_gemma3_dir), "--output", str(out), "--device", "cpu"], capsys)
    assert code == 0, err
    table = json.loads((out / "loop_table.json").read_text())
    assert [(r["round"], r["kind"]) for r in table["rounds"]] == [(0, "start"), (1, "dict"), (2, "mcq")]
    assert table["stop_reason"] in ("max_rounds", "target_reached")
    assert all(r["total"] == 4 for r in table["rounds"])
    assert _info(out, "round01_dict")["mix"] == {"dict": 1.0}
    assert _info(out, "round02_mcq")["mix"] == {"qa_cot": 1.0}
    assert _info(out, "round02_mcq")["adapter_init"] is None and _info(out, "round02_mcq")["started_from"] == str(
        out / "round01_dict")
    best = json.loads((out / "best" / "best.json").read_text())
    assert best["round"] == table["best_round"]
    assert best["accuracy"] == max(r["accuracy"] for r in table["rounds"])
    assert (out / "best" / "adapter_model.safetensors").is_file()
    md = (out / "loop_table.md").read_text()
    assert md.count("\n| ") == 1 + 3 and "Best: round" in md
    assert f"Stop: **{table['stop_reason']}**" in md
    assert (out / "round01_dict" / "kormedmcqa.json").is_file()
    assert "loop done" in stdout


@pytest.mark.slow
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
