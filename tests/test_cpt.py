"""`kormed train cpt` and `kormed export`: packing into the dataset, bad input, the seeds' output layout, validation
equal to `kormed eval ppl`, interrupt + --resume, the CLI, 2-process DDP on CPU, and a short real-model run."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kormed.errors import KormedError
from kormed.train.config import CPTConfig, LoraOptions, TrainOptions

MCQ_DIR = Path(__file__).resolve().parents[1] / "src/kormed/sample_data/data/01_raw/02_kor_med_test"


def _korean_texts() -> list[str]:
    texts = []
    for name in ("train.jsonl", "test.jsonl", "fewshot.jsonl"):
        for line in (MCQ_DIR / name).read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            letter = "ABCDE"[r["answer"] - 1]
            texts.append(f"{r['question']} 정답은 {r[letter]}이다. {r.get('cot') or ''}".strip())
    return texts


def _write_jsonl(path: Path, texts: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    texts = _korean_texts()
    root = tmp_path_factory.mktemp("corpus")
    return _write_jsonl(root / "train.jsonl", texts[:80]), _write_jsonl(root / "val.jsonl", texts[-20:])  # fewshot


def _tiny_cfg(model_dir: Path, corpus, out: Path, **train) -> CPTConfig:
    opts = dict(batch_size=2, grad_accum=1, max_steps=3, eval_steps=2, logging_steps=1, lr=5e-3, warmup_ratio=0.0,
                gradient_checkpointing=False, report_to=[], device="cpu", seed=0)
    opts.update(train)
    return CPTConfig(data=str(corpus[0]), val=str(corpus[1]), model=str(model_dir), output=str(out), max_length=32,
                     max_samples=12, max_val_samples=3, cache_dir=str(out.parent / "packed-cache"),
                     lora=LoraOptions(dropout=0.0), train=TrainOptions(**opts))


def test_packed_dataset_bos_eod_nothing_lost(real_tokenizer, corpus, tmp_path):
    from kormed.io import read_texts
    from kormed.train.cpt import build_packed_dataset

    texts = read_texts(corpus[0], limit=20)
    ds, info = build_packed_dataset(corpus[0], real_tokenizer, max_length=64, max_samples=20, cache_dir=tmp_path,
                                    log=lambda m: None)
    blocks = ds["input_ids"]
    assert not info["cache_hit"] and info["documents"] == 20 and info["blocks"] == len(blocks)
    assert all(b[0] == real_tokenizer.bos_token_id for b in blocks)
    assert all(len(b) == 64 for b in blocks[:-1]) and 2 <= len(blocks[-1]) <= 64
    eod = real_tokenizer.convert_tokens_to_ids("<end_of_turn>")
    expected = []
    for t in texts:
        expected += real_tokenizer(t, add_special_tokens=False)["input_ids"] + [eod]
    assert [tok for b in blocks for tok in b[1:]] == expected  # every token, in order, nothing truncated
    assert sum(tok == eod for b in blocks for tok in b) == 20
    assert info["tokens"] == len(expected) + len(blocks)

    again, info2 = build_packed_dataset(corpus[0], real_tokenizer, max_length=64, max_samples=20, cache_dir=tmp_path,
                                        log=lambda m: None)
    assert info2["cache_hit"] and info2["cache_key"] == info["cache_key"] and again["input_ids"] == blocks
    eos, info3 = build_packed_dataset(corpus[0], real_tokenizer, max_length=64, max_samples=20, eod_token="<eos>",
                                      cache_dir=tmp_path, log=lambda m: None)
    assert info3["cache_key"] != info["cache_key"] and not info3["cache_hit"]
    assert sum(tok == real_tokenizer.eos_token_id for b in eos["input_ids"] for tok in b) == 20


def test_bad_training_text_names_file_and_line(real_tokenizer, tmp_path):
    from kormed.io import read_texts
    from kormed.train.cpt import build_packed_dataset

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "좋은 문장"}\n\n{"text": "둘"\n', encoding="utf-8")
    with pytest.raises(KormedError) as exc:
        build_packed_dataset(bad, real_tokenizer, cache_dir=tmp_path / "c", log=lambda m: None)
    assert f"{bad}:3" in str(exc.value)
    bad.write_text('{"text": "하나"}\n{"body": "둘"}\n', encoding="utf-8")
    with pytest.raises(KormedError, match=r"bad.jsonl:2: field 'text'"):
        read_texts(bad)
    bad.write_text('{"text": 5}\n', encoding="utf-8")
    with pytest.raises(KormedError, match="must be a string"):
        read_texts(bad)
    bad.write_text('{"text": "  "}\n', encoding="utf-8")
    with pytest.raises(KormedError, match="no non-empty"):
        read_texts(bad)


def _mixed_corpus(path: Path) -> Path:
    """Korean texts of all lengths (one far longer than a block), blank lines and blank texts between them."""
    texts = _korean_texts()
    lines = []
    for i, t in enumerate(texts[:150]):
        lines.append(json.dumps({"text": t * (1 + i % 4), "id": i}, ensure_ascii=False))
        if i % 17 == 0:
            lines.append(json.dumps({"text": "  "}))  # a blank text: skipped, as read_texts skips it
        if i % 23 == 0:
            lines.append("")
        if i == 40:
            lines.append(json.dumps({"text": " ".join(texts[:30])}, ensure_ascii=False))  # many blocks long
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("max_samples", [None, 77])
def test_parallel_packing_gives_todays_blocks(real_tokenizer, tmp_path, max_samples):
    """The sharded, 2-process path packs exactly the blocks of today's path (read_texts -> tokenize ->
    pack_token_stream), in the same order, on a corpus cut into many shards."""
    from kormed.data.corpus_cache import shard_ranges
    from kormed.data.packing import pack_documents
    from kormed.io import read_texts
    from kormed.train.cpt import build_packed_dataset

    data = _mixed_corpus(tmp_path / "mixed.jsonl")
    assert len(shard_ranges(data, 4096)) > 8
    texts = read_texts(data, limit=max_samples, what="training text")
    eod = real_tokenizer.convert_tokens_to_ids("<end_of_turn>")
    docs = [real_tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    today = pack_documents(docs, max_length=48, bos_id=real_tokenizer.bos_token_id, eod_id=eod)
    logs: list[str] = []
    ds, info = build_packed_dataset(data, real_tokenizer, max_length=48, max_samples=max_samples, num_proc=2,
                                    cache_dir=tmp_path / "cache", log=logs.append, shard_bytes=4096)
    assert ds["input_ids"] == today
    assert info["documents"] == len(texts) and info["blocks"] == len(today)
    assert info["tokens"] == sum(map(len, today)) and info["document_tokens"] == sum(map(len, docs))
    if max_samples is None:
        assert info["blank_skipped"] == 9 and any("skipped 9 blank texts" in m for m in logs)


def test_packed_cache_reused_and_never_stale(real_tokenizer, tmp_path):
    """A second build loads the cache (logged with its size); a changed corpus or tokenizer is a new cache."""
    import copy

    from kormed.train.cpt import build_packed_dataset

    data = _mixed_corpus(tmp_path / "c.jsonl")
    cache = tmp_path / "cache"
    first, info = build_packed_dataset(data, real_tokenizer, max_length=64, cache_dir=cache, log=lambda m: None)
    logs: list[str] = []
    again, info2 = build_packed_dataset(data, real_tokenizer, max_length=64, cache_dir=cache, log=logs.append)
    assert info2["cache_hit"] and again["input_ids"] == first["input_ids"]
    assert any("from cache" in m and "not re-tokenized" in m and "KiB" in m for m in logs)
    with data.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({"text": "새 문서가 하나 더 있다."}, ensure_ascii=False) + "\n")
    changed, info3 = build_packed_dataset(data, real_tokenizer, max_length=64, cache_dir=cache, log=lambda m: None)
    assert not info3["cache_hit"] and info3["documents"] == info["documents"] + 1
    assert changed["input_ids"][-1] != first["input_ids"][-1]
    extended = copy.deepcopy(real_tokenizer)
    extended.add_tokens(["한국의학"])
    _, info4 = build_packed_dataset(data, extended, max_length=64, cache_dir=cache, log=lambda m: None)
    assert not info4["cache_hit"] and info4["cache_key"] not in (info["cache_key"], info3["cache_key"])


def test_run_cpt_layout_validation_interrupt_and_resume(tiny_gemma3_dir, corpus, tmp_path, real_tokenizer):
    from kormed.eval.perplexity import evaluate_perplexity, packed_eval_blocks
    from kormed.io import read_texts
    from kormed.models import RuntimeSpec, load_model_and_tokenizer
    from kormed.train.cpt import run_cpt
    from kormed.train.engine.checkpoints import latest_good_checkpoint

    out = tmp_path / "cpt"
    cfg = _tiny_cfg(tiny_gemma3_dir, corpus, out, max_steps=4)

    from transformers import TrainerCallback

    class Sigterm(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 1:
                os.kill(os.getpid(), signal.SIGTERM)

    info = run_cpt(cfg, callbacks=[Sigterm()], log=lambda m: None)
    assert info["stop_reason"] == "interrupted" and info["stop_step"] == 2
    assert not (out / "adapter_model.safetensors").exists()  # an interrupted run leaves no final adapter
    assert json.loads((out / "training_info.json").read_text())["stop_reason"] == "interrupted"
    assert latest_good_checkpoint(out / "checkpoints")[0].endswith("checkpoint-2")

    logs: list[str] = []
    info = run_cpt(dataclasses.replace(cfg, resume=True), log=logs.append)
    assert info["stop_reason"] == "completed" and info["global_step"] == 4
    assert not any(m.startswith("[kormed] tokenizing") for m in logs)  # --resume reads the packed cache
    assert sum("from cache" in m for m in logs) == 2 and info["data"]["train"]["cache_hit"]
    assert info["resumed_from"].endswith("checkpoint-2")
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer/tokenizer_config.json",
                 "training_info.json", "training_curves.png"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "training_info.json").read_text())
    assert saved["stage"] == "cpt" and saved["data"]["train"]["documents"] == 12
    assert len(saved["data"]["train"]["sha256"]) == 64 and saved["data"]["val"]["documents"] == 3
    from kormed.models import pick_runtime

    assert saved["library_versions"]["transformers"] and saved["runtime"]["dtype"] == pick_runtime("cpu").dtype
    assert saved["trainable"].endswith("%)") and saved["tokens_seen"] > 0 and saved["wall_time_s"] > 0
    assert [e["step"] for e in saved["eval_history"]] == [0, 2, 4]

    # the validation number is the number `kormed eval ppl` computes for the saved adapter on the same file
    model, tok, _ = load_model_and_tokenizer(str(tiny_gemma3_dir), adapter=out,
                                             runtime=RuntimeSpec("cpu", "float32", "sdpa"), log=lambda m: None)
    blocks = packed_eval_blocks(tok, read_texts(corpus[1], limit=3), max_length=32)
    ppl = evaluate_perplexity(model, blocks, batch_size=2, progress=False,
                              compute_dtype=saved["runtime"]["compute_dtype"])
    assert saved["best_eval"]["eval_loss"] == pytest.approx(ppl["loss"], rel=1e-5)
    assert saved["best_eval"]["eval_val_tokens"] == ppl["tokens"]


def test_cli_train_cpt_then_export(tiny_gemma3_dir, corpus, tmp_path):
    from typer.testing import CliRunner

    from kormed.cli import app

    out, merged = tmp_path / "run", tmp_path / "merged"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "cpt:\n  max_samples: 8\n  max_val_samples: 2\n  cache_dir: " + str(tmp_path / "cache") + "\n"
        f"  kormedmcqa_data: {MCQ_DIR / 'test.jsonl'}\n  kormedmcqa_every: 2\n  kormedmcqa_limit: 4\n"
        "  lora: {r: 4, dropout: 0.0}\n  train: {report_to: [tensorboard], gradient_checkpointing: true}\n",
        encoding="utf-8",
    )
    runner = CliRunner()
    args = ["train", "cpt", "--config", str(cfg), "--data", str(corpus[0]), "--val", str(corpus[1]),
            "--model", str(tiny_gemma3_dir), "--output", str(out), "--max-steps", "2", "--batch-size", "2",
            "--grad-accum", "1", "--max-length", "32", "--eval-steps", "2", "--lr", "1e-3", "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "cpt done (completed): 2 steps" in result.output
    info = json.loads((out / "training_info.json").read_text())
    assert info["lora"]["r"] == 4 and info["config"]["train"]["max_steps"] == 2
    assert [h["step"] for h in info["kormedmcqa_history"]] == [0, 2]  # periodic KorMedMCQA accuracy (eval stage)
    assert 0.0 <= info["kormedmcqa_history"][0]["accuracy"] <= 1.0
    assert any((out / "runs").iterdir())  # TensorBoard event files
    result = runner.invoke(app, ["export", "--adapter", str(out), "--out", str(merged)])
    assert result.exit_code == 2 and "--merge" in result.output
    result = runner.invoke(app, ["export", "--adapter", str(out), "--merge", "--out", str(merged)])
    assert result.exit_code == 0, result.output
    assert (merged / "model.safetensors").is_file() and (merged / "tokenizer.json").is_file()
    assert json.loads((merged / "config.json").read_text())["tie_word_embeddings"] is True


def _adapter_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def test_ddp_two_cpu_processes_match_single_process(tiny_gemma3_dir, corpus, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` on CPU (gloo): ranks see different blocks, the effective
    batch is kept (grad_accum halves), the adapter equals the single-process one, and only rank 0 writes."""
    import torch

    if shutil.which("accelerate") is None and not (Path(sys.executable).parent / "accelerate").exists():
        pytest.skip("accelerate launcher not installed")
    worker = Path(__file__).with_name("cpt_ddp_worker.py")
    runs = {}
    for mode in ("single", "ddp"):
        out = tmp_path / mode
        cfg_path = tmp_path / f"{mode}.yaml"
        cfg_path.write_text(
            f"cpt:\n  data: {corpus[0]}\n  val: {corpus[1]}\n  model: {tiny_gemma3_dir}\n  output: {out}\n"
            f"  max_length: 32\n  max_samples: 12\n  max_val_samples: 2\n  cache_dir: {tmp_path / 'cache'}\n"
            "  lora: {r: 4, dropout: 0.0}\n"
            "  train: {batch_size: 2, grad_accum: 2, max_steps: 2, eval_steps: 2, lr: 0.01, warmup_ratio: 0.0,\n"
            "          gradient_checkpointing: false, report_to: [], device: cpu, eval_on_start: false}\n",
            encoding="utf-8",
        )
        # the tests directory first, then the caller's path (a worktree's src/ before the installed kormed)
        path = [str(Path(__file__).parent), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(path)}
        if mode == "single":
            cmd = [sys.executable, str(worker), str(cfg_path), str(tmp_path / f"rec-{mode}")]
        else:
            launcher = [sys.executable, "-m", "accelerate.commands.launch"]
            # --multi_gpu selects the torch.distributed launcher; on a CPU-only run kormed picks gloo (MULTI_CPU)
            cmd = [*launcher, "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                   "--dynamo_backend", "no", "--main_process_port", "29533", str(worker), str(cfg_path),
                   str(tmp_path / f"rec-{mode}")]
        shutil.rmtree(tmp_path / "cache", ignore_errors=True)  # each run builds its packed sets
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
        runs[mode] = out
    rec = [json.loads((tmp_path / "rec-ddp" / f"rank{r}.json").read_text()) for r in (0, 1)]
    single = json.loads((tmp_path / "rec-single" / "rank0.json").read_text())
    assert [r["world_size"] for r in rec] == [2, 2] and [r["grad_accum"] for r in rec] == [1, 1]
    assert rec[0]["effective_batch"] == single["effective_batch"] == 4
    # one process tokenized (the single run's cache was removed first); the other waited and read its cache
    assert rec[0]["built"] == [str(corpus[0]), str(corpus[1])] and rec[1]["built"] == []
    from kormed.train.cpt import load_packed

    key = json.loads((runs["ddp"] / "training_info.json").read_text())["data"]["train"]["cache_key"]
    cache = tmp_path / "cache" / key
    train_prefixes = {tuple(b[:8]) for b in load_packed(cache)["input_ids"]}
    # the data loader fetches one batch ahead: the first blocks collated are the ones trained on
    seen = [[tuple(s) for s in r["seen"] if tuple(s) in train_prefixes][:4] for r in rec]  # 2 steps x 2 per rank
    assert len(seen[0]) == len(seen[1]) == 4
    assert not set(seen[0]) & set(seen[1])  # different data on each rank
    single_seen = [tuple(s) for s in single["seen"] if tuple(s) in train_prefixes][:8]
    assert sorted(seen[0] + seen[1]) == sorted(single_seen)  # together: the single run's blocks
    assert len(rec[0]["writes"]) == 1 and rec[1]["writes"] == []  # only rank 0 writes
    a, b = _adapter_tensors(runs["single"]), _adapter_tensors(runs["ddp"])
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6)
    ia = json.loads((runs["single"] / "training_info.json").read_text())
    ib = json.loads((runs["ddp"] / "training_info.json").read_text())
    assert ib["best_eval"]["eval_loss"] == pytest.approx(ia["best_eval"]["eval_loss"], rel=1e-4)


@pytest.mark.slow
@pytest.mark.heavy  # 2+ minutes on 2 cores: with the heavy checks, so CI stays within its budget
def test_real_model_cpt_lowers_validation_perplexity(embedded_model_dir, tmp_path):
    """A few steps of `kormed train cpt` on the real embedded Gemma 3 270M lower validation perplexity."""
    from typer.testing import CliRunner

    from kormed.cli import app

    texts = _korean_texts()
    train = _write_jsonl(tmp_path / "train.jsonl", texts[:60])
    val = _write_jsonl(tmp_path / "val.jsonl", texts[-10:-8])  # fewshot, held out: never in the training documents
    out = tmp_path / "run"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"cpt:\n  max_val_samples: 2\n  cache_dir: {tmp_path / 'cache'}\n"
                   "  train: {gradient_checkpointing: false, report_to: [], warmup_ratio: 0.0}\n", encoding="utf-8")
    result = CliRunner().invoke(app, [
        "train", "cpt", "--config", str(cfg), "--data", str(train), "--val", str(val), "--output", str(out),
        "--max-steps", "3", "--max-samples", "8", "--batch-size", "2", "--grad-accum", "1", "--max-length", "64",
        "--lr", "3e-4", "--eval-steps", "3", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    info = json.loads((out / "training_info.json").read_text())
    before, after = info["first_eval"]["eval_perplexity"], info["last_eval"]["eval_perplexity"]
    print(f"real-model CPT: validation perplexity {before:.3f} -> {after:.3f}")
    assert after < before, (before, after)


def test_extended_tokenizer_trains_new_rows_by_default():
    from types import SimpleNamespace

    from kormed.train.cpt import apply_tokenizer_options, default_output

    cfg = CPTConfig(tokenizer_path="tok", train=TrainOptions(lr=1e-4))
    got = apply_tokenizer_options(cfg, None)
    # new rows only: 10x the LoRA learning rate unless a rate is given
    assert got.lora.train_embeddings and got.lora.embedding_rows == "new"
    assert got.lora.embedding_lr == pytest.approx(1e-3)
    # the whole (pretrained) matrix keeps the trainer's default (lr / 4): no rate is set here
    assert apply_tokenizer_options(cfg, SimpleNamespace(train_new_rows_only=False)).lora.embedding_lr is None
    rows_new = dataclasses.replace(cfg, lora=LoraOptions(train_embeddings=True, embedding_rows="new"))
    assert apply_tokenizer_options(rows_new, None).lora.embedding_lr == pytest.approx(1e-3)
    assert apply_tokenizer_options(cfg, SimpleNamespace(embedding_lr=3e-5)).lora.embedding_lr == 3e-5
    got = apply_tokenizer_options(cfg, SimpleNamespace(train_new_rows_only=False, embedding_lr=3e-5))
    assert got.lora.embedding_rows == "all" and got.lora.embedding_lr == 3e-5
    explicit = dataclasses.replace(cfg, lora=LoraOptions(train_embeddings=True, embedding_lr=1e-6))
    assert apply_tokenizer_options(explicit, SimpleNamespace(embedding_lr=3e-5)).lora.embedding_lr == 1e-6
    assert apply_tokenizer_options(CPTConfig(), None).lora.train_embeddings is False  # no extended tokenizer
    assert default_output(None) == Path("model/00_trained/gemma3-270m")
    assert default_output("google/medgemma-4b-it") == Path("model/00_trained/medgemma-4b-it")
