"""The files one stage writes and another reads: the typed schemas of the SFT summary, the loop table and
training_info.json (written, read back equal, versioned) and the `step{n}` directory names from one function."""

from __future__ import annotations

import json
from pathlib import Path

from kormed.io import write_json
from kormed.pipeline.registry import sft_step_names
from kormed.pipeline.results import sft_result, train_result
from kormed.run_files import (
    SFT_SUMMARY,
    SFT_SUMMARY_VERSION,
    STEP_DIR,
    TRAINING_INFO,
    TRAINING_INFO_VERSION,
    SFTStepRecord,
    SFTStepRow,
    SFTSummary,
    TrainingInfo,
    TrainingSummary,
    step_dir_name,
)


def _summary(out: Path) -> SFTSummary:
    rows = [SFTStepRow(step=n, name=f"s{n}", description="d", stop_reason="conditions_met", global_step=2 * n,
                       metrics_at_stop={"eval_qa_loss": 1.5}, adapter=str(out / step_dir_name(n))) for n in (1, 2)]
    return SFTSummary(baseline={"raw_perplexity": 3.25}, steps=rows, finished=True, final_adapter=rows[-1].adapter)


def test_the_sft_summary_is_written_and_read_back_through_one_type(tmp_path: Path) -> None:
    summary = _summary(tmp_path)
    write_json(tmp_path / SFT_SUMMARY, summary.to_json())
    assert json.loads((tmp_path / SFT_SUMMARY).read_text())["version"] == SFT_SUMMARY_VERSION
    assert SFTSummary.read(tmp_path / SFT_SUMMARY) == summary
    result = sft_result(tmp_path)  # the runner's, the report's and the model cards' reader
    assert (result.final_adapter, result.finished, result.baseline_raw_perplexity) == (
        str(tmp_path / "step2"), True, 3.25)


def test_a_summary_written_before_the_version_field_reads_as_version_0(tmp_path: Path) -> None:
    data = _summary(tmp_path).to_json()
    del data["version"]
    write_json(tmp_path / SFT_SUMMARY, data)
    assert SFTSummary.read(tmp_path / SFT_SUMMARY).version == 0


def test_step_directories_are_named_by_one_function() -> None:
    class Cfg:
        output = "out"
        steps = [object()] * 3

    assert sft_step_names(Cfg()) == ["step1", "step2", "step3"] == [step_dir_name(n) for n in (1, 2, 3)]
    assert STEP_DIR.match(step_dir_name(12)).group(1) == "12" and not STEP_DIR.match("step1_x")


def test_the_loop_table_is_written_and_read_back_through_one_type(tmp_path: Path) -> None:
    from kormed.pipeline.results import loop_result
    from kormed.run_files import LOOP_TABLE, LOOP_TABLE_VERSION, LoopTable, LoopTableRow

    rows = [LoopTableRow(round=0, kind="start", adapter=str(tmp_path / "round00_start"), dev_accuracy=0.25,
                         dev_correct=1, dev_total=4),
            LoopTableRow(round=1, kind="dict", adapter=str(tmp_path / "round01_dict"), dev_accuracy=0.5,
                         dev_correct=2, dev_total=4, test_accuracy=0.4, global_step=3, stop_reason="max_steps",
                         metrics={"eval_qa_loss": 1.0})]
    table = LoopTable(target=0.9, eval_mode="loglik", selected_on="dev", reported_on="test", rounds=rows,
                      stop_reason="max_rounds", best_round=1, best_dev_accuracy=0.5, best_test_accuracy=0.4,
                      best_adapter=str(tmp_path / "best"))
    write_json(tmp_path / LOOP_TABLE, table.to_json())
    data = json.loads((tmp_path / LOOP_TABLE).read_text())
    assert data["version"] == LOOP_TABLE_VERSION
    assert LoopTable.read(tmp_path / LOOP_TABLE) == table
    result = loop_result(tmp_path)  # the runner's, the report's and the model cards' reader
    assert [r.dev_accuracy for r in result.rounds] == [0.25, 0.5] and result.best_round == 1
    assert result.rounds[1].stop_reason == "max_steps" and result.stop_reason == "max_rounds"
    del data["version"]
    write_json(tmp_path / LOOP_TABLE, data)
    assert LoopTable.read(tmp_path / LOOP_TABLE).version == 0


def test_the_loop_table_carries_the_knowledge_curve_and_reads_version_1(tmp_path: Path) -> None:
    """Version 2: per round dev knowledge (selection) and the reported test-form knowledge of trained and held-out
    entries, with the settings used; a version-1 table (no knowledge) still reads."""
    from kormed.run_files import LOOP_TABLE, LOOP_TABLE_VERSION, LoopTable, LoopTableRow

    assert LOOP_TABLE_VERSION == 2
    rows = [LoopTableRow(round=0, kind="start", dev_accuracy=0.2, dev_knowledge_accuracy=0.25,
                         dev_knowledge_correct=25, dev_knowledge_total=100, test_knowledge_accuracy=0.3,
                         test_knowledge_correct=30, test_knowledge_total=100, heldout_knowledge_accuracy=0.2,
                         heldout_knowledge_correct=20, heldout_knowledge_total=100),
            LoopTableRow(round=1, kind="dict", dev_accuracy=0.2, dev_knowledge_accuracy=0.5)]
    settings = {"dev": {"split": "dev", "seed": 0, "per_group": 20, "used_for_selection": True,
                        "dictionaries": {"dict": {"path": "d.json", "sha256": "ab"}}},
                "test": {"split": "test", "seed": 0, "per_group": 20, "used_for_selection": False,
                         "heldout": {"path": "h.json", "sha256": "cd"}}}
    table = LoopTable(select_on="knowledge", knowledge_target=0.9, stop_after_no_improvement=2, knowledge=settings,
                      rounds=rows, best_round=1, best_dev_knowledge=0.5, best_test_knowledge=0.4,
                      best_heldout_knowledge=0.2, stop_reason="no_improvement")
    write_json(tmp_path / LOOP_TABLE, table.to_json())
    back = LoopTable.read(tmp_path / LOOP_TABLE)
    assert back == table and back.rounds[0].heldout_knowledge_total == 100 and back.knowledge == settings
    v1 = {"version": 1, "target": 0.9, "eval_mode": "chat", "selected_on": "dev", "reported_on": "test",
          "rounds": [{"round": 0, "kind": "start", "dev_accuracy": 0.2, "test_accuracy": 0.1}],
          "stop_reason": "max_rounds", "best_round": 0, "best_dev_accuracy": 0.2}
    write_json(tmp_path / LOOP_TABLE, v1)
    old = LoopTable.read(tmp_path / LOOP_TABLE)
    assert old.version == 1 and old.rounds[0].dev_knowledge_accuracy is None and old.select_on is None
    assert old.best_dev_accuracy == 0.2 and old.knowledge is None


# ------------------------------------------------------------------------------------------- training_info.json

# one SFT step's training_info.json as kormed wrote it before the version field (keys as the engine and
# run_sft_step spelled them inline): the typed reader must read it, and write the same keys back
_OLD_STEP_INFO = {
    "stage": "sft", "step": "step1", "step_name": "qa", "description": "qa first", "step_number": 1,
    "model": "embedded", "model_path": "/models/tiny", "method": "lora", "multimodal": False,
    "adapter_init": None, "tokenizer": {"path": "/models/tiny", "vocab_size": 512, "new_tokens": 0},
    "lora": {"r": 8, "alpha": 16}, "embeddings_tied": True, "quantization": "none", "trainable_params": 1024,
    "sources": {"mcq": {"records": 10}}, "started_from": None, "data": {"qa": {"train": 8}},
    "mix": {"qa": 1.0}, "mix_mode": "interleave", "mix_by": None, "mix_report": {"sources": {}, "mix_by": None},
    "stopping_strategy": "all_exhausted", "train_examples": 8, "stop_conditions": ["eval_qa_loss < 0.3"],
    "stable_evals": 1, "stable_metrics": [], "tolerances": {"loss": 0.0}, "baseline_raw_perplexity": 9.5,
    "start_metrics": None, "start_metrics_source": None, "max_steps": 4,
    "train_options": {"lr": 0.001, "batch_size": 2},
    "stop_reason": "conditions_met", "stop_step": 3, "stop_detail": "", "global_step": 3, "epochs": 0.5,
    "tokens_seen": 480, "wall_time_s": 1.25, "resumed_from": None, "best_metric": None, "best_step": None,
    "best_checkpoint": None, "first_eval": None,
    "best_eval": None, "last_eval": {"step": 3, "epoch": 0.5, "eval_qa_loss": 0.25},
    "eval_history": [{"step": 3, "epoch": 0.5, "eval_qa_loss": 0.25}], "kormedmcqa_history": [],
    "train_loss_last": 0.5, "train_loss_first": 1.5, "gradient_accumulation_steps": 1, "world_size": 1,
    "effective_batch_size": 2, "engine_stop_reason": "conditions_met", "conditions_met": True,
    "metrics_at_stop": {"step": 3, "epoch": 0.5, "eval_qa_loss": 0.25},
    "conditions_at_stop": [{"condition": "eval_qa_loss < 0.3", "metric": "eval_qa_loss", "value": 0.25,
                            "threshold": 0.3, "holds": True}],
    "stop_checks": [], "batches": {"padding_free": True, "real_tokens": 480},
    "runtime": {"device": "cpu", "dtype": "float32"}, "loss": {"impl": "chunked", "chunk_size": 256},
    "library_versions": {"python": "3.11"},
}


def test_training_info_is_written_and_read_back_through_one_type(tmp_path: Path) -> None:
    info = TrainingInfo(
        stage="sft", model="embedded", method="lora", lora={"r": 4}, data={"qa": {"train": 3}},
        runtime={"device": "cpu"}, record={"sources": {"mcq": {"records": 3}}, "round": 2},
        summary=TrainingSummary(stop_reason="max_steps", stop_step=5, global_step=5, tokens_seen=100,
                                last_eval={"step": 5, "eval_qa_loss": 0.75, "eval_runtime": 0.1}),
        sft=SFTStepRecord(step="round02", step_name="dict", train_options={"lr": 0.002},
                          conditions_at_stop=[{"condition": "eval_qa_loss < 0.5", "metric": "eval_qa_loss",
                                               "value": 0.75, "threshold": 0.5, "holds": False}],
                          metrics_at_stop={"eval_qa_loss": 0.75}))
    write_json(tmp_path / TRAINING_INFO, info.to_json())
    data = json.loads((tmp_path / TRAINING_INFO).read_text())
    # one flat object, as its readers always read it: no nesting added by the types
    assert data["version"] == TRAINING_INFO_VERSION and data["stop_reason"] == "max_steps"
    assert data["round"] == 2 and data["step_name"] == "dict" and data["lora"] == {"r": 4}
    back = TrainingInfo.read(tmp_path / TRAINING_INFO)
    assert back == info and back.train_options == {"lr": 0.002}
    result = train_result(tmp_path)  # the runner's, the report's and the model cards' reader
    assert (result.global_step, result.final_metrics, [t.value for t in result.thresholds]) == (
        5, {"eval_qa_loss": 0.75}, [0.5])


def test_training_info_written_before_the_version_field_reads_as_version_0(tmp_path: Path) -> None:
    write_json(tmp_path / TRAINING_INFO, _OLD_STEP_INFO)
    info = TrainingInfo.read(tmp_path / TRAINING_INFO)
    assert info.version == 0 and info.summary.stop_reason == "conditions_met" and info.summary.global_step == 3
    assert info.sft.metrics_at_stop["eval_qa_loss"] == 0.25 and info.record["step_number"] == 1
    assert info.train_options["lr"] == 0.001 and info.tokenizer["vocab_size"] == 512
    # written back, its keys and values are those it was read from (its version added)
    again = info.to_json()
    assert again.pop("version") == 0 and again == _OLD_STEP_INFO
    full = {**_OLD_STEP_INFO, "method": "full", "lora": None}  # a full fine-tune's step
    assert TrainingInfo.from_json(full).to_json() == {**full, "version": 0}
    # the loop's starting adapter: a saved model with no trainer run
    start = TrainingInfo.from_json({"stage": "loop", "round": 0, "model": "embedded"})
    assert start.summary is None and start.sft is None and start.version == 0
