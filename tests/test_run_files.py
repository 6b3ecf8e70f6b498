"""The files one stage writes and another reads: the SFT summary's one typed schema (written, read back equal,
versioned) and the `step{n}` directory names from one function."""

from __future__ import annotations

import json
from pathlib import Path

from kormed.io import write_json
from kormed.pipeline.registry import sft_step_names
from kormed.pipeline.results import sft_result
from kormed.run_files import SFT_SUMMARY, SFT_SUMMARY_VERSION, STEP_DIR, SFTStepRow, SFTSummary, step_dir_name


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
