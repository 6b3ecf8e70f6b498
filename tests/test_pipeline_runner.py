"""The pipeline runner's own logic, driven by small fake stages: wiring, hashing, skip-on-rerun, --from, resume.

The real stages are tested by their owners; here each fake stage writes a deterministic output derived from its
input files and config, and counts its calls.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from kormed.config import opt
from kormed.errors import KormedError
from kormed.pipeline import results
from kormed.pipeline.run import (
    StageInterrupted,
    StageSpec,
    fingerprint,
    load_pipeline,
    pipeline_from_mapping,
    read_state,
    run_pipeline,
)
from kormed.stop_reason import StopReason


@dataclasses.dataclass
class PrepCfg:
    source: str | None = opt(None, "input text file")
    out: str | None = opt(None, "output corpus file")
    upper: bool = opt(False, "upper-case the text")
    num_proc: int = opt(1, "workers (does not change the result)")


@dataclasses.dataclass
class TrainCfg:
    data: str | None = opt(None, "training text")
    from_adapter: str | None = opt(None, "previous stage's output")
    output: str | None = opt(None, "output dir")
    steps: int = opt(2, "steps")
    resume: bool = opt(False, "continue an interrupted run")
    fail: bool = opt(False, "raise during the run (test knob)")


@dataclasses.dataclass
class EvalCfg:
    adapter: str | None = opt(None, "model to evaluate")
    output: str | None = opt(None, "result file")


class Fakes:
    """Three fake stages: prepare -> cpt -> eval (cpt may be 'not installed')."""

    def __init__(self, source: Path, *, cpt_available: bool = True) -> None:
        self.source = source
        self.calls: list[str] = []
        self.resumed: list[bool] = []
        self.cpt_available = cpt_available

    def specs(self) -> dict[str, StageSpec]:
        def prep_run(cfg: PrepCfg, ctx) -> dict:
            self.calls.append("prepare")
            text = Path(cfg.source).read_text(encoding="utf-8")
            Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
            Path(cfg.out).write_text(text.upper() if cfg.upper else text, encoding="utf-8")
            return {"chars": len(text)}

        def cpt_cls() -> type:
            if not self.cpt_available:
                raise ImportError("No module named 'kormed.train.cpt'")
            return TrainCfg

        def cpt_run(cfg: TrainCfg, ctx) -> dict:
            self.calls.append("cpt")
            self.resumed.append(cfg.resume)
            out = Path(cfg.output)
            out.mkdir(parents=True, exist_ok=True)
            if cfg.fail:
                (out / "partial.txt").write_text("half", encoding="utf-8")
                raise RuntimeError("boom")
            body = Path(cfg.data).read_text(encoding="utf-8")
            (out / "adapter.txt").write_text(f"{body}|steps={cfg.steps}", encoding="utf-8")
            return {"tokens_per_second": 123.0}

        def eval_run(cfg: EvalCfg, ctx) -> dict:
            self.calls.append("eval")
            Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
            target = cfg.adapter or "base"
            Path(cfg.output).write_text(json.dumps({"accuracy": 0.5, "target": target}), encoding="utf-8")
            return {"accuracy": 0.5}

        return {
            "prepare": StageSpec(
                name="prepare",
                config_cls=lambda: PrepCfg,
                wire=lambda ctx: {"source": str(self.source), "out": str(ctx.stage_dir("prepare") / "corpus.txt")},
                run=prep_run,
                inputs=lambda cfg, ctx: [cfg.source],
                outputs=lambda cfg, ctx: [cfg.out],
                volatile=("num_proc",),
            ),
            "cpt": StageSpec(
                name="cpt",
                config_cls=cpt_cls,
                wire=lambda ctx: {
                    "data": ctx.configs["prepare"].out if ctx.enabled("prepare") else None,
                    "output": str(ctx.stage_dir("cpt")),
                },
                run=cpt_run,
                inputs=lambda cfg, ctx: [cfg.data],
                outputs=lambda cfg, ctx: [Path(cfg.output) / "adapter.txt"],
                resume_field="resume",
            ),
            "eval": StageSpec(
                name="eval",
                config_cls=lambda: EvalCfg,
                wire=lambda ctx: {
                    "adapter": ctx.configs["cpt"].output if ctx.enabled("cpt") else None,
                    "output": str(ctx.stage_dir("eval") / "kormedmcqa_final.json"),
                },
                run=eval_run,
                inputs=lambda cfg, ctx: [cfg.adapter],
                outputs=lambda cfg, ctx: [cfg.output],
            ),
        }


@pytest.fixture()
def setup(tmp_path: Path):
    source = tmp_path / "source.txt"
    source.write_text("한국어 의학 텍스트", encoding="utf-8")
    fakes = Fakes(source)
    return tmp_path, source, fakes


def _pipeline(tmp_path: Path, **sections):
    data = {"name": "t", "run_dir": str(tmp_path / "run"), "stages": ["prepare", "cpt", "eval"], **sections}
    return pipeline_from_mapping(data)


def _run(pipe, fakes, **kw):
    return run_pipeline(pipe, specs=fakes.specs(), log=lambda m: None, report=False, **kw)


def test_fresh_run_wires_outputs_into_inputs_and_records_state(setup):
    tmp_path, _source, fakes = setup
    pipe = _pipeline(tmp_path)
    state = _run(pipe, fakes)
    assert fakes.calls == ["prepare", "cpt", "eval"]
    run = tmp_path / "run"
    # cpt read prepare's output, eval got cpt's output directory
    assert (run / "cpt" / "adapter.txt").read_text(encoding="utf-8") == "한국어 의학 텍스트|steps=2"
    assert json.loads((run / "eval" / "kormedmcqa_final.json").read_text())["target"] == str(run / "cpt")
    on_disk = read_state(run)
    assert on_disk["stages"]["cpt"]["status"] == "done"
    for stage in ("prepare", "cpt", "eval"):
        entry = on_disk["stages"][stage]
        assert entry["status"] == "done" and len(entry["hash"]) == 64 and entry["wall_s"] >= 0 <= entry["cpu_s"]
    assert on_disk["stages"]["cpt"]["result"] == {"tokens_per_second": 123.0}
    assert on_disk["stages"]["cpt"]["config"]["data"] == str(run / "corpus" / "corpus.txt")
    assert state["order"] == ["prepare", "cpt", "eval"]
    resolved = (run / "resolved_config.yaml").read_text(encoding="utf-8")
    assert "corpus.txt" in resolved and "steps: 2" in resolved


def test_rerun_skips_everything_that_is_current(setup):
    tmp_path, _source, fakes = setup
    _run(_pipeline(tmp_path), fakes)
    before = read_state(tmp_path / "run")
    _run(_pipeline(tmp_path), fakes)
    assert fakes.calls == ["prepare", "cpt", "eval"]  # nothing ran a second time
    after = read_state(tmp_path / "run")
    assert {s: e["hash"] for s, e in after["stages"].items()} == {s: e["hash"] for s, e in before["stages"].items()}


def test_volatile_option_does_not_trigger_a_rerun(setup):
    tmp_path, _source, fakes = setup
    _run(_pipeline(tmp_path), fakes)
    _run(_pipeline(tmp_path, prepare={"num_proc": 8}), fakes)
    assert fakes.calls == ["prepare", "cpt", "eval"]


def test_config_change_reruns_that_stage_and_the_ones_whose_inputs_changed(setup):
    tmp_path, _source, fakes = setup
    _run(_pipeline(tmp_path), fakes)
    fakes.calls.clear()
    _run(_pipeline(tmp_path, cpt={"steps": 5}), fakes)
    # prepare is current; cpt's config changed; eval's input (cpt's adapter) changed with it
    assert fakes.calls == ["cpt", "eval"]
    assert (tmp_path / "run" / "cpt" / "adapter.txt").read_text(encoding="utf-8").endswith("steps=5")


def test_input_file_change_reruns_but_identical_output_stops_the_cascade(setup):
    tmp_path, source, fakes = setup
    _run(_pipeline(tmp_path), fakes)
    fakes.calls.clear()
    source.write_text("다른 텍스트", encoding="utf-8")
    _run(_pipeline(tmp_path), fakes)
    assert fakes.calls == ["prepare", "cpt", "eval"]
    fakes.calls.clear()
    # touch the source with the same bytes: content hash unchanged -> nothing reruns
    source.write_text("다른 텍스트", encoding="utf-8")
    _run(_pipeline(tmp_path), fakes)
    assert fakes.calls == []


def test_rerun_of_upstream_with_same_bytes_keeps_downstream(setup):
    tmp_path, _source, fakes = setup
    _run(_pipeline(tmp_path), fakes)
    fakes.calls.clear()
    # --from prepare forces prepare; it writes the same bytes, yet --from forces every later stage too
    _run(_pipeline(tmp_path), fakes, from_stage="prepare")
    assert fakes.calls == ["prepare", "cpt", "eval"]
    fakes.calls.clear()
    # deleting prepare's output reruns prepare only: its rewritten output has the same content hash
    (tmp_path / "run" / "corpus" / "corpus.txt").unlink()
    _run(_pipeline(tmp_path), fakes)
    assert fakes.calls == ["prepare"]


def test_from_restarts_at_a_stage(setup):
    tmp_path, _source, fakes = setup
    _run(_pipeline(tmp_path), fakes)
    fakes.calls.clear()
    _run(_pipeline(tmp_path), fakes, from_stage="cpt")
    assert fakes.calls == ["cpt", "eval"]


def test_from_keeps_earlier_stage_even_if_its_config_changed(setup):
    tmp_path, _source, fakes = setup
    _run(_pipeline(tmp_path), fakes)
    fakes.calls.clear()
    logs: list[str] = []
    run_pipeline(_pipeline(tmp_path, prepare={"upper": True}), specs=fakes.specs(), log=logs.append, report=False,
                 from_stage="eval")
    assert fakes.calls == ["eval"]
    assert any("kept as is because of --from" in m for m in logs)


def test_from_refuses_when_an_earlier_stage_never_finished(setup):
    tmp_path, _source, fakes = setup
    with pytest.raises(KormedError, match="stage 'prepare' comes before the restart point"):
        _run(_pipeline(tmp_path), fakes, from_stage="cpt")
    assert fakes.calls == []
    with pytest.raises(KormedError, match="not a stage of this pipeline"):
        _run(_pipeline(tmp_path), fakes, from_stage="loop")


def test_failed_stage_is_recorded_and_resumed_on_rerun(setup):
    tmp_path, _source, fakes = setup
    with pytest.raises(RuntimeError, match="boom"):
        _run(_pipeline(tmp_path, cpt={"fail": True}), fakes)
    state = read_state(tmp_path / "run")
    assert state["stages"]["cpt"]["status"] == "failed"
    assert "boom" in state["stages"]["cpt"]["error"]
    assert "eval" not in state["stages"]
    fakes.calls.clear()
    # same config again: the runner asks the stage to resume and keeps its partial output
    with pytest.raises(RuntimeError):
        _run(_pipeline(tmp_path, cpt={"fail": True}), fakes)
    assert fakes.resumed == [False, True]
    assert (tmp_path / "run" / "cpt" / "partial.txt").exists()
    # a changed config starts the stage afresh: its directory is cleared first
    _run(_pipeline(tmp_path), fakes)
    assert fakes.resumed[-1] is False
    assert not (tmp_path / "run" / "cpt" / "partial.txt").exists()
    assert read_state(tmp_path / "run")["stages"]["eval"]["status"] == "done"


def test_stage_that_cannot_be_imported_is_an_error(tmp_path):
    """A stage whose code fails to import stops the run before anything runs (it used to be skipped as
    'unavailable', and later stages silently started from the base model)."""
    source = tmp_path / "source.txt"
    source.write_text("텍스트", encoding="utf-8")
    fakes = Fakes(source, cpt_available=False)
    with pytest.raises(KormedError, match="stage 'cpt' cannot be loaded") as info:
        run_pipeline(_pipeline(tmp_path), specs=fakes.specs(), log=lambda m: None, report=False)
    assert "kormed.train.cpt" in str(info.value) and info.value.field == "stages"
    assert fakes.calls == []
    assert not (tmp_path / "run" / "state.json").exists()


def test_disabled_stage_and_file_section_override_wiring(setup):
    tmp_path, source, fakes = setup
    corpus = tmp_path / "mine.txt"
    corpus.write_text("내 코퍼스", encoding="utf-8")
    pipe = pipeline_from_mapping({"name": "t", "run_dir": str(tmp_path / "run"),
                                  "stages": {"prepare": False, "tokenizer": False, "sft": False, "loop": False},
                                  "cpt": {"data": str(corpus)}})
    assert pipe.stages == ["cpt", "eval"]
    _run(pipe, fakes)
    assert fakes.calls == ["cpt", "eval"]
    assert (tmp_path / "run" / "cpt" / "adapter.txt").read_text(encoding="utf-8").startswith("내 코퍼스")


def test_bad_option_in_a_later_section_fails_before_anything_runs(setup):
    tmp_path, _source, fakes = setup
    with pytest.raises(KormedError, match=r"eval\.nonsense"):
        _run(_pipeline(tmp_path, eval={"nonsense": 1}), fakes)
    assert fakes.calls == []


def test_pipeline_file_parsing(tmp_path):
    p = tmp_path / "my-run.yaml"
    p.write_text("stages: [prepare, cpt]\ncpt:\n  steps: 3\nreport_to: tensorboard,wandb\n", encoding="utf-8")
    pipe = load_pipeline(p)
    assert pipe.name == "my-run" and pipe.run_dir == Path("runs/my-run")
    assert pipe.stages == ["prepare", "cpt"] and pipe.sections["cpt"] == {"steps": 3}
    assert pipe.report_to == ["tensorboard", "wandb"]
    assert load_pipeline(p, run_dir=tmp_path / "x", report_to=["wandb"]).run_dir == tmp_path / "x"
    assert load_pipeline(p, report_to=["wandb"]).report_to == ["wandb"]
    default = pipeline_from_mapping({"name": "d"})
    assert default.stages == ["prepare", "tokenizer", "cpt", "sft", "loop", "eval"]

    bad = {
        "stages: [cpt, prepare]\n": "data flow order",
        "stages: [prepare, train]\n": "unknown stage",
        "stages: {loop: maybe}\n": "expected true/false",
        "epochs: 3\n": "unknown key 'epochs'",
        "cpt: [1, 2]\n": "must be a mapping",
        "name: a/b\n": "plain run name",
        "stages: [prepare\n": "malformed YAML",
    }
    for text, message in bad.items():
        p.write_text(text, encoding="utf-8")
        with pytest.raises(KormedError, match=message) as info:
            load_pipeline(p)
        assert str(p) in str(info.value)


def test_fingerprint_covers_content_and_names(tmp_path):
    d = tmp_path / "adapter"
    d.mkdir()
    (d / "a.safetensors").write_bytes(b"1234")
    first = fingerprint(d)
    (d / "checkpoint-10").mkdir()
    (d / "checkpoint-10" / "x.bin").write_bytes(b"ignored")
    (d / "runs").mkdir()
    (d / "runs" / "events.out.tfevents.1").write_bytes(b"log")
    assert fingerprint(d) == first  # checkpoints and logs are not part of a stage's result
    (d / "a.safetensors").write_bytes(b"1235")
    assert fingerprint(d) != first
    (d / "a.safetensors").write_bytes(b"1234")
    (d / "b.json").write_bytes(b"{}")
    assert fingerprint(d) != first
    assert fingerprint(tmp_path / "nope") == "missing"
    assert fingerprint(d / "b.json") == fingerprint(d / "b.json")


def test_launcher_runs_the_stage_command_with_its_resolved_config(setup):
    """`launcher:` (e.g. accelerate launch) runs a training stage as `<launcher> -m kormed.cli <command> --config
    RUN/configs/<stage>.yaml`; here the launcher is a small Python script standing in for accelerate."""
    import sys

    tmp_path, _source, fakes = setup
    fake_launcher = tmp_path / "fake_launch.py"
    fake_launcher.write_text(
        "import json, sys, yaml, pathlib\n"
        "args = sys.argv[1:]\n"
        "cfg = yaml.safe_load(open(args[args.index('--config') + 1]))['cpt']\n"
        "out = pathlib.Path(cfg['output']); out.mkdir(parents=True, exist_ok=True)\n"
        "(out / 'adapter.txt').write_text(open(cfg['data']).read() + '|launched ' + ' '.join(args[:4]))\n"
        "(out / 'training_info.json').write_text(json.dumps({'stop_reason': 'max_steps', 'rows': list(range(40))}))\n"
        "sys.exit(3 if cfg['fail'] else 0)\n",
        encoding="utf-8",
    )
    specs = fakes.specs()
    specs["cpt"] = dataclasses.replace(specs["cpt"], command=("train", "cpt"),
                                       result=lambda cfg, ctx: results.train_result(cfg.output, "cpt"))
    pipe = _pipeline(tmp_path)
    pipe.launcher = f"{sys.executable} {fake_launcher}"
    run_pipeline(pipe, specs=specs, log=lambda m: None, report=False)
    run = tmp_path / "run"
    assert "cpt" not in fakes.calls  # the in-process function was not used
    assert (run / "cpt" / "adapter.txt").read_text(encoding="utf-8").endswith("|launched -m kormed.cli train cpt")
    assert (run / "configs" / "cpt.yaml").is_file()
    # its result is read back from the files it wrote (typed, the long list left out of state.json)
    entry = read_state(run)["stages"]["cpt"]["result"]
    assert entry["stop_reason"] == "max_steps" and entry["name"] == "cpt" and "rows" not in entry
    assert results.read_result(run / "cpt", "cpt").stop_reason is StopReason.MAX_STEPS
    pipe = _pipeline(tmp_path, cpt={"fail": True})
    pipe.launcher = f"{sys.executable} {fake_launcher}"
    with pytest.raises(KormedError, match="exit code 3"):
        run_pipeline(pipe, specs=specs, log=lambda m: None, report=False)
    pipe.launcher = "no-such-launcher-xyz --flag"
    with pytest.raises(KormedError, match="launcher not found"):
        run_pipeline(pipe, specs=specs, log=lambda m: None, report=False)


def test_tensorboard_gathered_and_report_written_at_the_end(setup):
    from torch.utils.tensorboard import SummaryWriter

    from kormed.pipeline.rundir import read_scalars

    tmp_path, _source, fakes = setup
    specs = fakes.specs()
    inner = specs["cpt"].run

    def cpt_with_logs(cfg, ctx):
        result = inner(cfg, ctx)
        writer = SummaryWriter(log_dir=str(Path(cfg.output) / "runs" / "Nov24"))
        for step in (1, 2, 3):
            writer.add_scalar("train/loss", 3.0 / step, step)
        writer.close()
        # the stop record every real trainer run writes: the report lists a run by it
        (Path(cfg.output) / "training_info.json").write_text('{"stop_reason": "completed", "global_step": 3}',
                                                              encoding="utf-8")
        return result

    specs["cpt"] = dataclasses.replace(specs["cpt"], run=cpt_with_logs)
    run_pipeline(_pipeline(tmp_path), specs=specs, log=lambda m: None, report=True)
    run = tmp_path / "run"
    # the trainer's events are gathered into the run's TensorBoard directory, plus the runner's stage summaries
    assert [s for s, _ in read_scalars(run / "tensorboard" / "cpt" / "runs")["train/loss"]] == [1, 2, 3]
    assert list((run / "tensorboard" / "prepare" / "kormed_summary").glob("events.out.tfevents.*"))
    html = (run / "report.html").read_text(encoding="utf-8")
    assert "curves_cpt.png" in html and (run / "report.md").is_file()


def _fake_cpt_result(cfg: TrainCfg, ctx) -> results.TrainResult:
    return results.TrainResult(name="cpt", adapter=cfg.output, stop_reason=StopReason.COMPLETED, stop_step=cfg.steps,
                               global_step=cfg.steps, tokens_seen=None, wall_time_s=None)


# state.json as the runner wrote it before stage results existed (run in a directory holding source.txt, with
# run_dir "run": the paths, and so the hashes, are relative and the same on every machine)
OLD_STATE = {
    "version": 1, "name": "old", "pipeline": None, "order": ["prepare", "cpt", "eval"],
    "created": "2026-12-03T05:06:12+00:00", "updated": "2026-12-03T05:06:14+00:00",
    "stages": {
        "prepare": {"status": "done", "output_dir": "corpus", "wall_s": 0.001, "cpu_s": 0.0,
                    "hash": "bf06f5e55279d87b43c0b60adaf249f76c037f45f396b43f3b7e814460d3270d",
                    "finished": "2026-12-03T05:06:12+00:00", "result": {"chars": 10}},
        "cpt": {"status": "done", "output_dir": "cpt", "wall_s": 0.0, "cpu_s": 0.0,
                "hash": "ae77f910339689525e8a984f2aa348e3575b3550cbb8b8ee22d0c3ff816f300b",
                "finished": "2026-12-03T05:06:14+00:00", "result": {"tokens_per_second": 123.0}},
        "eval": {"status": "done", "output_dir": "eval", "wall_s": 0.0, "cpu_s": 0.0,
                 "hash": "df465846e4262107ccdc89d625914add75d756e2052c1f946cab9598e69613dc",
                 "finished": "2026-12-03T05:06:14+00:00", "result": {"accuracy": 0.5}},
    },
}


def test_run_dir_made_before_stage_results_is_still_finished(tmp_path, monkeypatch):
    """A run directory written by the runner before kormed_result.json existed is recognised as finished (same
    hashes): nothing reruns, and the result file of a stage that has one is written from its files."""
    monkeypatch.chdir(tmp_path)
    Path("source.txt").write_text("한국어 의학 텍스트", encoding="utf-8")
    run = Path("run")
    for rel, text in (("corpus/corpus.txt", "한국어 의학 텍스트"), ("cpt/adapter.txt", "한국어 의학 텍스트|steps=2"),
                      ("eval/kormedmcqa_final.json", '{"accuracy": 0.5, "target": "run/cpt"}'),
                      ("state.json", json.dumps(OLD_STATE, ensure_ascii=False))):
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_text(text, encoding="utf-8")
    fakes = Fakes(Path("source.txt"))
    specs = fakes.specs()
    specs["cpt"] = dataclasses.replace(specs["cpt"], result=_fake_cpt_result)
    pipe = pipeline_from_mapping({"name": "old", "run_dir": "run", "stages": ["prepare", "cpt", "eval"]})
    run_pipeline(pipe, specs=specs, log=lambda m: None, report=False)
    assert fakes.calls == []
    assert results.read_result(run / "cpt", "cpt") == _fake_cpt_result(TrainCfg(output="run/cpt"), None)
    # the result file is not part of cpt's output hash: eval (whose input is the cpt directory) stays current
    run_pipeline(pipe, specs=specs, log=lambda m: None, report=False)
    assert fakes.calls == []
    assert read_state(run)["stages"]["eval"]["hash"] == OLD_STATE["stages"]["eval"]["hash"]


def test_runner_writes_and_checks_the_typed_result(setup):
    tmp_path, _source, fakes = setup
    specs = fakes.specs()
    specs["cpt"] = dataclasses.replace(specs["cpt"], result=_fake_cpt_result)
    run_pipeline(_pipeline(tmp_path), specs=specs, log=lambda m: None, report=False)
    run = tmp_path / "run"
    written = results.read_result(run / "cpt", "cpt")
    assert written.stop_reason is StopReason.COMPLETED and written.stop_step == 2
    assert read_state(run)["stages"]["cpt"]["result"]["stop_reason"] == "completed"

    # a stage whose result says it was interrupted is recorded as such (resumable), and the run stops there
    def interrupted(result):
        raise StageInterrupted("stopped early")

    specs["cpt"] = dataclasses.replace(specs["cpt"], check=interrupted)
    fakes.calls.clear()
    with pytest.raises(StageInterrupted):
        run_pipeline(_pipeline(tmp_path, cpt={"steps": 3}), specs=specs, log=lambda m: None, report=False)
    assert fakes.calls == ["cpt"] and read_state(run)["stages"]["cpt"]["status"] == "interrupted"
