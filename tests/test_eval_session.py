"""The eval stage's one load per base build: adapters swapped with PEFT's API give the files of separate
`kormed eval` runs, an extended-tokenizer adapter gets its own load, and the base's results are cached by key."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from kormed.pipeline.run import pipeline_from_mapping, resolve_configs
from kormed.pipeline.stages import _eval_run, default_specs, eval_targets

QUESTIONS = [
    {"question": f"질문 {i}: 다음 중 옳은 것은?", "A": "가", "B": "나", "C": "다", "D": "라", "E": "마",
     "answer": i % 5 + 1, "exam_type": "doctor", "year": 2020 + i % 2}
    for i in range(4)
]
TEXTS = ["고혈압 환자의 혈압을 측정하였다.\n두 번째 줄입니다.", "당뇨병은 만성 질환이다.", "감기 증상으로 내원하였다."]


def _lora(base_dir: Path, out: Path, seed: int, targets: list[str], tokenizer_dir: Path | None = None) -> Path:
    """A LoRA adapter with random (non-zero) B matrices; with `tokenizer_dir`, trained on an extended tokenizer
    (embeddings resized as kormed does, its tokenizer and kormed_adapter.json saved beside it)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from kormed.embeddings import resize_and_init_embeddings
    from kormed.models import adapter_meta, load_tokenizer, write_adapter_meta

    torch.manual_seed(seed)
    net = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if tokenizer_dir is not None:
        resize_and_init_embeddings(net, load_tokenizer(str(base_dir)), load_tokenizer(str(tokenizer_dir)))
    peft = get_peft_model(net, LoraConfig(r=4, target_modules=targets, init_lora_weights=False))
    peft.save_pretrained(out, save_embedding_layers=False)  # the LoRA weights: rows are rebuilt at load
    if tokenizer_dir is not None:
        load_tokenizer(str(tokenizer_dir)).save_pretrained(out / "tokenizer")
        write_adapter_meta(out, adapter_meta(peft))
    return out


def _run(tmp_path: Path, model_dir: Path, targets: list[str]) -> tuple[Any, list[str], Path]:
    """A run (prepare, cpt, sft, eval) whose eval stage scores `targets`: (context, its log lines, held-out text)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "test.jsonl").write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in QUESTIONS), "utf-8")
    pipeline = pipeline_from_mapping({
        "name": "x", "run_dir": str(tmp_path / "run"), "model": str(model_dir),
        "stages": ["prepare", "cpt", "sft", "eval"], "eval_targets": targets,
        "eval": {"data": str(data / "test.jsonl"), "mode": "loglik", "permutations": "cyclic", "device": "cpu",
                 "max_length": 32, "batch_size": 4},
    })
    logs: list[str] = []
    ctx = resolve_configs(pipeline, default_specs(), log=lambda m: None)
    ctx.log = logs.append
    val = Path(ctx.configs["prepare"].val_path())
    val.parent.mkdir(parents=True, exist_ok=True)
    val.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in TEXTS), "utf-8")
    return ctx, logs, val


def _same_files_as_separate_runs(ctx: Any, val: Path, tmp_path: Path) -> None:
    """Each target's eval files are byte for byte those of its own `kormed eval kormedmcqa` / `eval ppl` run."""
    from kormed.eval.kormedmcqa import run_kormedmcqa
    from kormed.eval.perplexity import run_perplexity

    cfg = ctx.configs["eval"]
    eval_dir = Path(ctx.run_dir).absolute() / "eval"
    separate = tmp_path / "separate"
    for name, adapter in eval_targets(ctx).items():
        one = dataclasses.replace(cfg, adapter=adapter, output=str(separate / f"kormedmcqa_{name}.json"))
        run_kormedmcqa(one, progress=False, log=lambda m: None)
        run_perplexity(dataclasses.replace(one, data=str(val), output=str(separate / f"ppl_{name}.json")),
                       progress=False, log=lambda m: None)
        for kind in ("kormedmcqa", "ppl"):
            assert (eval_dir / f"{kind}_{name}.json").read_bytes() == (separate / f"{kind}_{name}.json").read_bytes()
    margins = {json.loads((eval_dir / f"kormedmcqa_{n}.json").read_text("utf-8"))["mean_margin"]
               for n in eval_targets(ctx)}
    assert len(margins) == len(eval_targets(ctx))  # different models were scored, not one again and again


def test_swapped_adapters_give_the_files_of_separate_loads(tmp_path, tiny_gemma3_dir, monkeypatch):
    monkeypatch.setenv("KORMED_CACHE", str(tmp_path / "cache"))
    ctx, logs, val = _run(tmp_path, tiny_gemma3_dir, ["cpt", "base", "sft/step2"])
    targets = eval_targets(ctx)
    _lora(tiny_gemma3_dir, Path(targets["cpt"]), 1, ["q_proj", "v_proj"])
    _lora(tiny_gemma3_dir, Path(targets["sft-step2"]), 3, ["o_proj", "down_proj"])
    import kormed.models

    loads: list[object] = []
    real_load = kormed.models.load_model_and_tokenizer
    monkeypatch.setattr(kormed.models, "load_model_and_tokenizer",
                        lambda model, **kw: loads.append(kw.get("adapter")) or real_load(model, **kw))
    summary = _eval_run(ctx.configs["eval"], ctx)
    assert list(summary) == ["cpt", "base", "sft-step2"]  # the pipeline's order, whatever order they ran in
    assert loads == [None]  # the base loaded once, both adapters swapped onto it
    assert "[eval] 3 model(s) scored with 1 model load(s)" in logs
    monkeypatch.undo()
    _same_files_as_separate_runs(ctx, val, tmp_path)


@pytest.mark.heavy
def test_an_adapter_with_new_embedding_rows_gets_its_own_load(tmp_path, tiny_gemma3_dir, real_tokenizer,
                                                               monkeypatch):
    """Rows added for an extended tokenizer change the base: that adapter is loaded fresh, after the plain ones
    (one with its own copy of the base's tokenizer), which share the base's load whatever the pipeline's order.
    (Heavy: the 262K tokenizer loads three times.)"""
    monkeypatch.setenv("KORMED_CACHE", str(tmp_path / "cache"))
    ctx, logs, val = _run(tmp_path, tiny_gemma3_dir, ["sft/step1", "cpt", "base", "sft/step2"])
    ext = tmp_path / "ext-tokenizer"
    tok = copy.deepcopy(real_tokenizer)
    tok.add_tokens(["고혈압", "당뇨병"])
    tok.save_pretrained(ext)
    targets = eval_targets(ctx)
    _lora(tiny_gemma3_dir, Path(targets["cpt"]), 1, ["q_proj", "v_proj"])
    # as every adapter kormed saves: its own copy of the (here unextended) tokenizer, which still shares the base
    real_tokenizer.save_pretrained(Path(targets["cpt"]) / "tokenizer")
    _lora(tiny_gemma3_dir, Path(targets["sft-step1"]), 2, ["q_proj", "o_proj"], tokenizer_dir=ext)
    _lora(tiny_gemma3_dir, Path(targets["sft-step2"]), 3, ["o_proj", "down_proj"])
    summary = _eval_run(ctx.configs["eval"], ctx)
    assert list(summary) == ["sft-step1", "cpt", "base", "sft-step2"]
    assert "[eval] 4 model(s) scored with 2 model load(s)" in logs
    _same_files_as_separate_runs(ctx, val, tmp_path)


def test_base_results_are_cached_by_key(tmp_path, tiny_gemma3_dir, monkeypatch):
    monkeypatch.setenv("KORMED_CACHE", str(tmp_path / "cache"))
    ctx, logs, val = _run(tmp_path, tiny_gemma3_dir, ["base"])
    cfg = dataclasses.replace(ctx.configs["eval"])
    _eval_run(cfg, ctx)
    eval_dir = Path(ctx.run_dir).absolute() / "eval"
    first = {p.name: p.read_bytes() for p in eval_dir.glob("*.json")}
    assert any("results cached in" in m for m in logs) and not any("reused" in m for m in logs)
    for p in eval_dir.glob("*.json"):
        p.unlink()
    logs.clear()
    _eval_run(cfg, ctx)  # a rerun: nothing scored, nothing loaded, the same bytes
    assert any("results reused from" in m for m in logs) and "[eval] 1 model(s) scored with 0 model load(s)" in logs
    assert {p.name: p.read_bytes() for p in eval_dir.glob("*.json")} == first
    for change in ("data", "options"):  # a changed input or option is a new key: scored again
        logs.clear()
        if change == "data":
            val.write_text(val.read_text("utf-8") + json.dumps({"text": "폐렴 환자."}, ensure_ascii=False) + "\n",
                           "utf-8")
        else:
            cfg = dataclasses.replace(cfg, permutations="none")
        _eval_run(cfg, ctx)
        assert not any("reused" in m for m in logs) and "[eval] 1 model(s) scored with 1 model load(s)" in logs


@pytest.mark.parametrize("damage", ["truncated", "not a result"])
def test_a_damaged_cache_entry_is_reported_and_scored_again(damage, tmp_path, tiny_gemma3_dir, monkeypatch):
    monkeypatch.setenv("KORMED_CACHE", str(tmp_path / "cache"))
    ctx, logs, _ = _run(tmp_path, tiny_gemma3_dir, ["base"])
    _eval_run(ctx.configs["eval"], ctx)
    eval_dir = Path(ctx.run_dir).absolute() / "eval"
    first = {p.name: p.read_bytes() for p in eval_dir.glob("*.json")}
    (entry,) = (tmp_path / "cache" / "eval-base").glob("*.json")
    entry.write_text('{"kormedmcqa": {"accura' if damage == "truncated" else '{"kormedmcqa": [1, 2]}', "utf-8")
    logs.clear()
    _eval_run(ctx.configs["eval"], ctx)
    assert any(m.startswith("[eval] ignoring") and "scoring the base again" in m for m in logs)
    assert {p.name: p.read_bytes() for p in eval_dir.glob("*.json")} == first
    assert json.loads(entry.read_text("utf-8"))["kormedmcqa"]["total"] == len(QUESTIONS)  # rewritten whole
