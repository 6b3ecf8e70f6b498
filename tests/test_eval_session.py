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


def _run(tmp_path: Path, model_dir: Path, targets: list[str], **eval_options: Any) -> tuple[Any, list[str], Path]:
    """A run (prepare, cpt, sft, loop, eval) whose eval stage scores `targets`: (context, its log lines, held-out
    text)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "test.jsonl").write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in QUESTIONS), "utf-8")
    pipeline = pipeline_from_mapping({
        "name": "x", "run_dir": str(tmp_path / "run"), "model": str(model_dir),
        "stages": ["prepare", "cpt", "sft", "loop", "eval"], "eval_targets": targets,
        "eval": {"data": str(data / "test.jsonl"), "mode": "loglik", "permutations": "cyclic", "device": "cpu",
                 "max_length": 32, "batch_size": 4, **eval_options},
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


# ------------------------------------------------------------------------------------ knowledge and loop reuse
MEDICAL = [("고혈압", "Hypertension. 혈압이 정상 범위보다 높은 상태"), ("당뇨병", "Diabetes. 혈당이 높은 대사 질환"),
           ("빈혈", "Anemia. 혈액의 산소 운반 능력이 떨어진 상태"), ("폐렴", "Pneumonia. 폐에 생긴 염증"),
           ("황달", "Jaundice. 피부와 눈이 노랗게 변하는 상태"), ("부종", "Edema. 조직에 체액이 고여 붓는 상태")]
SYMBOLS = [("↑", "increased"), ("↓", "decreased"), ("±", "plus-minus sign"), ("→", "leads to"), ("←", "caused by"),
           ("%", "percent")]


def _dictionaries(tmp_path: Path) -> dict[str, str]:
    """The files prepare writes: the trained entries of each dictionary and the held-out record (one of each)."""
    files = {"dict": tmp_path / "c.medical_dict.json", "char_dict": tmp_path / "c.char_dict.json",
             "heldout": tmp_path / "c.dict_heldout.json"}
    rows = lambda pairs: [{"term": t, "definition": d} for t, d in pairs]  # noqa: E731
    files["dict"].write_text(json.dumps(rows(MEDICAL[1:]), ensure_ascii=False), "utf-8")
    files["char_dict"].write_text(json.dumps(rows(SYMBOLS[1:]), ensure_ascii=False), "utf-8")
    files["heldout"].write_text(json.dumps({"medical_dict": rows(MEDICAL[:1]), "char_dict": rows(SYMBOLS[:1]),
                                            "fraction": 0.2, "seed": 42}, ensure_ascii=False), "utf-8")
    return {k: str(v) for k, v in files.items()}


def _with_knowledge(ctx: Any, files: dict[str, str], **more: Any) -> Any:
    return dataclasses.replace(ctx.configs["eval"], **files, knowledge_split="test", knowledge_per_group=2, **more)


def test_eval_stage_scores_knowledge_for_each_model_by_entry_group(tmp_path, tiny_gemma3_dir, monkeypatch):
    """Knowledge on the same load as MCQ and perplexity, trained and held-out entries apart (the held-out ones from
    prepare's record), each target's file that of its own `kormed eval knowledge` run; the base's is cached."""
    from kormed.eval.knowledge import run_knowledge
    from kormed.pipeline.results import eval_result

    monkeypatch.setenv("KORMED_CACHE", str(tmp_path / "cache"))
    ctx, logs, _ = _run(tmp_path, tiny_gemma3_dir, ["base", "cpt"])
    _lora(tiny_gemma3_dir, Path(eval_targets(ctx)["cpt"]), 1, ["q_proj", "v_proj"])
    cfg = _with_knowledge(ctx, _dictionaries(tmp_path))
    summary = _eval_run(cfg, ctx)
    assert "[eval] 2 model(s) scored with 1 model load(s)" in logs
    eval_dir = Path(ctx.run_dir).absolute() / "eval"
    for name in eval_targets(ctx):
        data = json.loads((eval_dir / f"knowledge_{name}.json").read_text("utf-8"))
        assert data["split"] == "test" and set(summary[name]["knowledge"]) == {"all/trained", "all/held_out"}
        held = {(q["term"], q["form"].split(":")[0]) for q in data["questions"] if q["group"] == "held_out"}
        assert {t for t, _ in held} == {"고혈압", "↑"}  # exactly prepare's held-out entries, both dictionaries
        assert all(q["group"] == "trained" for q in data["questions"] if q["term"] not in ("고혈압", "↑"))
    separate = tmp_path / "separate" / "knowledge_cpt.json"  # the swapped adapter's file, as its own run writes it
    run_knowledge(dataclasses.replace(cfg, adapter=eval_targets(ctx)["cpt"], output=str(separate)), progress=False,
                  log=lambda m: None)
    assert (eval_dir / "knowledge_cpt.json").read_bytes() == separate.read_bytes()
    result = eval_result(eval_dir)
    paired = result.targets["cpt"].knowledge_vs_base["all/held_out"]
    assert paired["items"] == result.targets["base"].knowledge["all/held_out"]["total"] and len(paired["ci95"]) == 2
    first = (eval_dir / "knowledge_base.json").read_bytes()
    logs.clear()
    _eval_run(cfg, ctx)  # the base's knowledge comes from the cache with the rest
    assert any("base: results reused from" in m for m in logs)
    assert (eval_dir / "knowledge_base.json").read_bytes() == first
    from kormed.eval.session import BaseCache
    from kormed.models import pick_runtime

    def key(c: Any, dictionary: str | None) -> str:
        return BaseCache(c, str(tiny_gemma3_dir), [c.data, dictionary], pick_runtime("cpu", "auto")).key

    assert key(cfg, cfg.dict) != key(dataclasses.replace(cfg, knowledge_per_group=1), cfg.dict)  # settings: a new key
    # a second run directory with its own copy of the same data: the same key, and the reused files name the copy
    copies = {}
    for field in ("dict", "char_dict", "heldout"):
        copies[field] = str(tmp_path / "second_run" / Path(getattr(cfg, field)).name)
        Path(copies[field]).parent.mkdir(exist_ok=True)
        Path(copies[field]).write_bytes(Path(getattr(cfg, field)).read_bytes())
    second = dataclasses.replace(cfg, **copies)
    assert key(second, second.dict) == key(cfg, cfg.dict)
    logs.clear()
    _eval_run(second, ctx)
    assert any("base: results reused from" in m for m in logs)
    again = json.loads((eval_dir / "knowledge_base.json").read_text("utf-8"))
    assert [again[f] for f in copies] == list(copies.values())
    assert again["summary"] == json.loads(first)["summary"]
    before = key(cfg, cfg.dict)
    Path(cfg.dict).write_text(Path(cfg.dict).read_text("utf-8").replace("혈당", "혈압"), "utf-8")
    assert key(cfg, cfg.dict) != before  # so is the dictionary's content


def test_eval_stage_is_wired_to_prepare_dictionaries_on_test_forms(tmp_path):
    from kormed.pipeline.stages import STAGE_KNOWLEDGE_PER_GROUP

    pipeline = pipeline_from_mapping({"name": "x", "run_dir": str(tmp_path / "run"), "data_root": "sample",
                                      "stages": ["prepare", "sft", "eval"]})
    ctx = resolve_configs(pipeline, default_specs(), log=lambda m: None)
    cfg, prep = ctx.configs["eval"], ctx.configs["prepare"]
    assert cfg.dict == str(prep.dict_subset_path("medical_dict")) == ctx.configs["sft"].dict
    assert cfg.char_dict == str(prep.dict_subset_path("char_dict"))
    assert cfg.heldout == str(prep.heldout_path())
    assert (cfg.knowledge_split, cfg.knowledge_per_group) == ("test", STAGE_KNOWLEDGE_PER_GROUP)


def _loop_run(tmp_path: Path, model_dir: Path, files: dict[str, str]) -> tuple[Any, Any, list[str], Path]:
    """A run whose eval stage scores the loop's best adapter, with a loop directory as `kormed train loop` leaves it:
    round01_dict/ (adapter, training_info.json with its runtime, kormedmcqa_test.json scored on it in place with
    the eval stage's settings, a knowledge result likewise), best/ a copy, loop_table.json naming round 1."""
    import shutil

    from kormed.eval.knowledge import read_inputs, score_loaded
    from kormed.eval.kormedmcqa import load_questions
    from kormed.io import write_json
    from kormed.models import load_model_and_tokenizer, pick_runtime
    from kormed.run_files import LoopTable, LoopTableRow

    ctx, logs, _ = _run(tmp_path, model_dir, ["loop"], **files, knowledge_split="test", knowledge_per_group=2)
    cfg = ctx.configs["eval"]
    best = Path(eval_targets(ctx)["loop"])
    round_dir = best.parent / "round01_dict"
    _lora(model_dir, round_dir, 5, ["q_proj", "o_proj"])
    shutil.copytree(round_dir, best)
    runtime = pick_runtime("cpu", "auto")
    write_json(round_dir / "training_info.json", {"stage": "sft", "round": 1, "runtime": {
        "device": runtime.device, "dtype": runtime.dtype, "compute_dtype": runtime.compute_dtype}})
    net, tok, runtime = load_model_and_tokenizer(str(model_dir), adapter=str(round_dir), runtime=runtime,
                                                 log=lambda m: None)
    from kormed.eval.kormedmcqa import evaluate_kormedmcqa

    test = evaluate_kormedmcqa(net, tok, load_questions(cfg.data), mode="loglik", permutations="cyclic",
                               batch_size=2, progress=False)
    write_json(round_dir / "kormedmcqa_test.json", {**test, "split": "test", "used_for_selection": False})
    if files:
        known = score_loaded(dataclasses.replace(cfg, output=None), net, tok, runtime, *read_inputs(cfg),
                             progress=False)
        write_json(round_dir / "knowledge_test.json", known)
    table = LoopTable(target=0.9, eval_mode="loglik", rounds=[LoopTableRow(
        round=1, kind="dict", adapter=str(round_dir), dev_accuracy=0.5, test_accuracy=test["accuracy"])],
        best_round=1, best_adapter=str(best), stop_reason="max_rounds")
    write_json(best.parent / "loop_table.json", table.to_json())
    return ctx, cfg, logs, round_dir


def test_a_loop_round_score_is_reused_when_it_is_what_would_be_scored(tmp_path, tiny_gemma3_dir, monkeypatch):
    import kormed.eval.kormedmcqa as kormedmcqa

    monkeypatch.setenv("KORMED_CACHE", str(tmp_path / "cache"))
    ctx, cfg, logs, round_dir = _loop_run(tmp_path, tiny_gemma3_dir, _dictionaries(tmp_path))
    scored: list[int] = []  # questions put to the model, per call (MCQ and knowledge both score through it)
    real = kormedmcqa.evaluate_kormedmcqa
    monkeypatch.setattr(kormedmcqa, "evaluate_kormedmcqa", lambda m, t, qs, **kw: scored.append(len(qs)) or
                        real(m, t, qs, **kw))
    _eval_run(cfg, ctx)
    assert scored == []  # neither MCQ nor knowledge scored again
    eval_dir = Path(ctx.run_dir).absolute() / "eval"
    mcq = json.loads((eval_dir / "kormedmcqa_loop.json").read_text("utf-8"))
    recorded = json.loads((round_dir / "kormedmcqa_test.json").read_text("utf-8"))
    assert mcq["reuse"]["reused_from"] == "loop_table.json (round 1: round01_dict/kormedmcqa_test.json)"
    assert mcq["questions"] == recorded["questions"] and "used_for_selection" not in mcq
    known = json.loads((eval_dir / "knowledge_loop.json").read_text("utf-8"))
    assert known["reuse"]["reused_from"].endswith("round01_dict/knowledge_test.json)")
    assert any("kormedmcqa reused from loop_table.json" in m for m in logs)
    assert (eval_dir / "ppl_loop.json").is_file()  # perplexity is not in the loop's record: measured
    from kormed.pipeline.results import eval_result

    assert eval_result(eval_dir).targets["loop"].reuse["kormedmcqa"]["reused_from"].startswith("loop_table.json")

    # other settings than the loop's: scored again, and the file says why
    logs.clear()
    _eval_run(dataclasses.replace(cfg, permutations="none", knowledge_per_group=1), ctx)
    assert len(scored) == 2 and scored[0] == len(QUESTIONS)
    mcq = json.loads((eval_dir / "kormedmcqa_loop.json").read_text("utf-8"))
    assert "permutations: 'cyclic' recorded, 'none' here" in mcq["reuse"]["why_not"]
    known = json.loads((eval_dir / "knowledge_loop.json").read_text("utf-8"))
    assert "per_group: 2 recorded, 1 here" in known["reuse"]["why_not"]
    assert any("kormedmcqa scored again, not reused from the loop" in m for m in logs)


def test_a_loop_score_on_other_weights_is_not_reused(tmp_path, tiny_gemma3_dir, monkeypatch):
    monkeypatch.setenv("KORMED_CACHE", str(tmp_path / "cache"))
    ctx, cfg, logs, round_dir = _loop_run(tmp_path, tiny_gemma3_dir, {})
    _lora(tiny_gemma3_dir, round_dir, 6, ["q_proj", "o_proj"])  # the round's weights are no longer best/'s
    _eval_run(cfg, ctx)
    mcq = json.loads((Path(ctx.run_dir).absolute() / "eval" / "kormedmcqa_loop.json").read_text("utf-8"))
    assert mcq["reuse"]["why_not"] == "the weights of best are not those of round01_dict"
    assert not any("reused from loop_table" in m for m in logs)
