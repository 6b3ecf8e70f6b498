"""The real stages' wiring: the bundled pipelines parse against the stages' real config classes, and each stage's
outputs become the next stage's inputs inside the run directory. (Running the stages is their owners' tests;
`kormed demo` runs them all.)"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from kormed.config import section_class
from kormed.errors import KormedError
from kormed.pipeline.commands import demo_pipeline_path
from kormed.pipeline.run import STAGE_ORDER, load_pipeline, pipeline_from_mapping, resolve_configs
from kormed.pipeline.stages import default_specs, eval_targets

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples" / "pipelines").glob("*.yaml"))


def _specs_on_config_classes():
    """The real specs, but 'available' as soon as the config class exists (the wiring does not need the trainer)."""
    specs = default_specs()
    out = {}
    for name, spec in specs.items():
        try:
            section_class(name)
        except (ImportError, AttributeError):
            continue
        out[name] = dataclasses.replace(spec, config_cls=lambda n=name: section_class(n))
    return out


def _resolve(pipeline):
    specs = _specs_on_config_classes()
    missing = [s for s in STAGE_ORDER if s not in specs]
    if missing:
        pytest.skip(f"config classes not available yet: {missing}")
    ctx, unavailable = resolve_configs(pipeline, specs, log=lambda m: None)
    assert unavailable == {}
    return ctx


@pytest.mark.parametrize("path", [demo_pipeline_path(), *EXAMPLES], ids=lambda p: Path(p).name)
def test_bundled_pipelines_build_every_stage_config(path):
    pipeline = load_pipeline(path)
    ctx = _resolve(pipeline)
    assert list(ctx.configs) == pipeline.stages


def test_demo_wiring_connects_every_stage(tmp_path):
    pipeline = load_pipeline(demo_pipeline_path(), run_dir=tmp_path / "demo", report_to=["tensorboard", "wandb"])
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
    assert Path(tok.dict) == sample["medical_dict"]
    assert (Path(cpt.data), Path(cpt.val)) == (corpus, val)
    assert Path(cpt.tokenizer_path) == r / "tokenizer" and Path(cpt.output) == r / "cpt"
    assert Path(sft.from_adapter) == r / "cpt" and Path(sft.output) == r / "sft"
    assert (Path(sft.mcq), Path(sft.dict), Path(sft.char_dict)) == (
        sample["mcq_train"], sample["medical_dict"], sample["char_dict"])
    assert (Path(sft.raw), Path(sft.raw_val)) == (corpus, val)
    assert Path(loop.from_adapter) == r / "sft" / "step4" and Path(loop.output) == r / "loop"
    assert Path(loop.eval_data) == sample["mcq_test"]
    assert Path(ev.data) == sample["mcq_test"]
    assert (ev.max_length, ev.eod_token) == (cpt.max_length, cpt.eod_token)
    # the file's own values are kept on top of the wiring, and --report-to reaches every trainer
    assert cpt.train.max_steps == 6 and cpt.train.report_to == ["tensorboard", "wandb"]
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
