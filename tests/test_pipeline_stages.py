"""The real stages' wiring: the bundled pipelines parse against the stages' real config classes, and each stage's
outputs become the next stage's inputs inside the run directory. (Running the stages is their owners' tests;
`kormed demo` runs them all.)"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from kormed.config import CONFIG_SECTIONS, section_class
from kormed.errors import KormedError
from kormed.pipeline import registry, report, run
from kormed.pipeline.commands import demo_pipeline_path
from kormed.pipeline.registry import STAGE_ORDER
from kormed.pipeline.run import load_pipeline, pipeline_from_mapping, resolve_configs
from kormed.pipeline.spec import Pipeline, RunContext
from kormed.pipeline.stages import default_specs, eval_targets, final_adapter

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples" / "pipelines").glob("*.yaml"))


def _resolve(pipeline):
    return resolve_configs(pipeline, default_specs(), log=lambda m: None)


@pytest.mark.parametrize("path", [demo_pipeline_path(), *EXAMPLES], ids=lambda p: Path(p).name)
def test_bundled_pipelines_build_every_stage_config(path):
    pipeline = load_pipeline(path)
    ctx = _resolve(pipeline)
    assert list(ctx.configs) == pipeline.stages


def test_demo_leaves_the_extension_out():
    """At the demo's CPT budget the extension costs quality (docs/commands/tokenizer-extend.md): the demo runs CPT
    on the base tokenizer."""
    pipeline = load_pipeline(demo_pipeline_path())
    assert "tokenizer" not in pipeline.stages and {"prepare", "cpt", "sft", "loop", "eval"} <= set(pipeline.stages)
    assert _resolve(pipeline).configs["cpt"].tokenizer_path is None


def test_demo_wiring_connects_every_stage(tmp_path):
    """The demo's file with every stage listed (the tokenizer stage added back)."""
    from kormed.config import read_yaml
    from kormed.pipeline.run import pipeline_from_mapping

    data = read_yaml(demo_pipeline_path())
    data["stages"] = list(STAGE_ORDER)
    pipeline = pipeline_from_mapping(data, source=demo_pipeline_path(), run_dir=tmp_path / "demo",
                                     report_to=["tensorboard", "wandb"])
    ctx = _resolve(pipeline)
    r = (tmp_path / "demo").absolute()
    from kormed.sample_data import sample_paths

    sample = sample_paths()
    prep, tok, cpt, sft, loop, ev = (ctx.configs[s] for s in STAGE_ORDER)
    assert Path(prep.data_root) == sample["mcq_train"].parents[3]
    corpus = r / "corpus" / "raw_text_mixed.jsonl"
    val = r / "corpus" / "raw_text_mixed.val.jsonl"
    assert prep.out_path() == corpus and prep.val_path() == val
    assert Path(tok.corpus) == corpus and Path(tok.out) == r / "tokenizer"
    # the dictionaries' trained entries, as prepare writes them (its held-out entries reach no stage)
    trained_dict, trained_char = (r / "corpus" / f"raw_text_mixed.{n}.json" for n in ("medical_dict", "char_dict"))
    assert Path(tok.dict) == trained_dict == prep.dict_subset_path("medical_dict")
    # the extension is sized to what CPT trains on: its max_steps x batch x accumulation x block length
    assert tok.max_new_tokens is None
    assert tok.budget_tokens == cpt.train.max_steps * cpt.train.batch_size * cpt.train.grad_accum * cpt.max_length
    assert tok.budget_tokens == 24 * 2 * 1 * 128
    assert (Path(cpt.data), Path(cpt.val)) == (corpus, val)
    assert Path(cpt.tokenizer_path) == r / "tokenizer" and Path(cpt.output) == r / "cpt"
    assert Path(sft.from_adapter) == r / "cpt" and Path(sft.output) == r / "sft"
    assert (Path(sft.mcq), Path(sft.dict), Path(sft.char_dict)) == (sample["mcq_train"], trained_dict, trained_char)
    assert Path(loop.dict) == trained_dict
    assert Path(loop.dict_heldout) == prep.heldout_path()  # the loop reports its control's knowledge
    assert (Path(sft.raw), Path(sft.raw_val)) == (corpus, val)
    assert Path(loop.from_adapter) == r / "sft" / "step4" and Path(loop.output) == r / "loop"
    assert Path(loop.eval_data) == sample["mcq_test"]
    assert Path(ev.data) == sample["mcq_test"]
    assert (ev.max_length, ev.eod_token) == (cpt.max_length, cpt.eod_token)
    # the file's own values are kept on top of the wiring, and --report-to reaches every trainer
    assert cpt.train.max_steps == data["cpt"]["train"]["max_steps"] == 24
    assert cpt.train.report_to == ["tensorboard", "wandb"]
    assert sft.train.report_to == loop.train.report_to == ["tensorboard", "wandb"]
    assert sft.max_steps_per_step == 2 and ev.mode == "loglik"
    assert eval_targets(ctx) == {"base": None, "cpt": str(r / "cpt"), "sft": str(r / "sft" / "step4"),
                                 "loop": str(r / "loop" / "best")}


def test_disabled_stages_fall_back(tmp_path):
    corpus = tmp_path / "c.jsonl"
    pipeline = pipeline_from_mapping({
        "name": "x", "run_dir": str(tmp_path / "run"), "data_root": "sample",
        "stages": ["cpt", "sft", "eval"], "cpt": {"data": str(corpus)},
        "eval_targets": ["base", "sft/step2", "cpt"],
    })
    ctx = _resolve(pipeline)
    cpt, sft = ctx.configs["cpt"], ctx.configs["sft"]
    assert cpt.data == str(corpus) and cpt.tokenizer_path is None and cpt.val is None
    assert Path(sft.from_adapter) == (tmp_path / "run" / "cpt").absolute()
    assert sft.raw is None  # no prepare in this run: the file must say where raw text is (the stage checks it)
    assert eval_targets(ctx) == {"base": None, "sft-step2": str((tmp_path / "run" / "sft" / "step2").absolute()),
                                 "cpt": str((tmp_path / "run" / "cpt").absolute())}
    pipeline.eval_targets = ["loop"]
    with pytest.raises(KormedError, match="stage 'loop' is not part of this run"):
        eval_targets(ctx)
    pipeline.eval_targets = ["cpt/step1"]
    with pytest.raises(KormedError, match="unknown eval target"):
        eval_targets(ctx)


def test_unknown_option_in_the_pipeline_names_file_and_key(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("name: p\ncpt:\n  train:\n    max_stepz: 3\n", encoding="utf-8")
    with pytest.raises(KormedError, match=r"cpt\.train\.max_stepz") as info:
        _resolve(load_pipeline(p))
    assert str(p) in str(info.value)


def test_the_registry_is_the_one_list_of_stages():
    """Order, directories, titles, training stages and config sections all come from registry.STAGES."""
    names = [s.name for s in registry.STAGES]
    assert list(STAGE_ORDER) == names == list(default_specs())
    assert run.STAGE_ORDER is registry.STAGE_ORDER
    assert report.STAGE_TITLES is registry.STAGE_TITLES and report.TRAINING_STAGES is registry.TRAINING_STAGES
    assert registry.TRAINING_STAGES == ("cpt", "sft", "loop")
    ctx = RunContext(pipeline=Pipeline(name="x", run_dir=Path("r"), stages=names, sections={}))
    for info in registry.STAGES:
        assert info.section in CONFIG_SECTIONS  # config.py maps the section to its dataclass
        assert default_specs()[info.name].config_cls() is section_class(info.section)
        assert ctx.stage_dir(info.name) == Path("r") / info.output_dir
        assert set(info.inputs) <= set(names[: names.index(info.name)])  # earlier stages only
    # no other pipeline or export module spells out its own list of stage names or a fixed SFT step
    src = Path(registry.__file__).parent
    for path in [*src.glob("*.py"), *(src.parent / "export").glob("*.py")]:
        if path.name != "registry.py":
            text = path.read_text(encoding="utf-8")
            assert '"cpt", "sft", "loop"' not in text and "step4" not in text, path.name
    with pytest.raises(KormedError, match="unknown stage 'train'"):
        registry.stage_info("train")


def test_every_table_keyed_by_stage_follows_the_registry():
    """The one stage record: the tables that other modules key by stage (config sections, commands, stage wiring,
    result types) have exactly the registry's stages, so a stage added to or renamed in registry.STAGES without
    them fails here, not in a run."""
    from kormed import cli
    from kormed.pipeline.results import RESULT_TYPES

    assert list(RESULT_TYPES) == list(STAGE_ORDER) == list(default_specs())
    stage_sections = {info.section for info in registry.STAGES}
    assert stage_sections <= set(CONFIG_SECTIONS)
    assert set(CONFIG_SECTIONS) - stage_sections == {"chat"}  # the one command section outside the pipeline
    command_sections = {command.section for command in cli.COMMANDS.values()}
    assert command_sections == set(CONFIG_SECTIONS)  # every section is one command's flags, no command is orphaned


def test_sft_final_adapter_follows_the_configured_steps():
    @dataclasses.dataclass
    class ThreeSteps:
        output: str = "out"

        def steps(self):
            return [(1, "a"), (2, "b"), (3, "c")]

    @dataclasses.dataclass
    class StepList:  # steps as a plain list field
        output: str = "out"
        steps: list = dataclasses.field(default_factory=lambda: ["a", "b"])

    assert final_adapter("sft", ThreeSteps()) == str(Path("out") / "step3")
    assert registry.sft_step_names(StepList()) == ["step1", "step2"]
    assert final_adapter("loop", ThreeSteps()) == str(Path("out") / "best")
    assert final_adapter("cpt", ThreeSteps()) == "out"
    with pytest.raises(KormedError, match="leaves no adapter"):
        final_adapter("eval", ThreeSteps())


def test_previous_adapter_follows_the_registry_inputs(tmp_path):
    pipeline = pipeline_from_mapping({"name": "x", "run_dir": str(tmp_path / "run"), "data_root": "sample",
                                      "stages": ["cpt", "loop"]})
    ctx = _resolve(pipeline)
    # sft is not part of the run: the loop starts from the nearest training stage among its inputs, cpt
    assert Path(ctx.configs["loop"].from_adapter) == (tmp_path / "run" / "cpt").absolute()
    assert ctx.configs["loop"].dict_heldout is None  # no prepare in the run: no held-out record
    none = _resolve(pipeline_from_mapping({"name": "y", "run_dir": str(tmp_path / "r2"), "data_root": "sample",
                                           "stages": ["sft"]}))
    assert none.configs["sft"].from_adapter is None


@pytest.mark.parametrize("stage", ["cpt", "sft", "loop"])
def test_full_method_is_refused_by_the_pipeline_before_anything_runs(tmp_path, stage):
    """The stages of a run hand each other LoRA adapters: `train.method: full` in a section is one clear line."""
    pipeline = pipeline_from_mapping({"name": "x", "run_dir": str(tmp_path / "run"), "data_root": "sample",
                                      "stages": ["cpt", "sft", "loop"], stage: {"train": {"method": "full"}}})
    with pytest.raises(KormedError, match="method full is not supported by `kormed run`") as err:
        _resolve(pipeline)
    assert err.value.field == f"{stage}.train.method"
