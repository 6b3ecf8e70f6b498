"""`kormed train cpt --streaming`: the cache's blocks packed on the fly (same blocks, same order, pass after pass),
validation in memory, max_steps required, --resume continuing the uninterrupted run, each process's own batches."""

from __future__ import annotations

import dataclasses
import os
import signal
from pathlib import Path

import pytest

from kormed.errors import KormedError
from tests.test_cpt import _korean_texts, _mixed_corpus, _tiny_cfg, _write_jsonl


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    """test_cpt's training and validation files."""
    texts = _korean_texts()
    root = tmp_path_factory.mktemp("corpus")
    return _write_jsonl(root / "train.jsonl", texts[:80]), _write_jsonl(root / "val.jsonl", texts[-20:])


@pytest.mark.parametrize("max_samples", [None, 77])
def test_streaming_gives_the_cache_blocks_pass_after_pass(real_tokenizer, tmp_path, max_samples):
    """The stream's first pass is the cached set's blocks in order (blank texts skipped, nothing dropped); the next
    pass starts again from the first block; the in-memory validation set is `kormed eval ppl`'s blocks."""
    from kormed.data.corpus_stream import streaming_dataset
    from kormed.eval.perplexity import packed_eval_blocks
    from kormed.io import read_texts
    from kormed.train.cpt import build_packed_dataset, build_val_in_memory

    data = _mixed_corpus(tmp_path / "mixed.jsonl")
    cached, info = build_packed_dataset(data, real_tokenizer, max_length=48, max_samples=max_samples, num_proc=1,
                                        cache_dir=tmp_path / "cache", log=lambda m: None, shard_bytes=4096)
    blocks = cached["input_ids"]
    logs: list[str] = []
    ids = {"bos_id": real_tokenizer.bos_token_id, "eod_id": real_tokenizer.convert_tokens_to_ids("<end_of_turn>")}
    stream = streaming_dataset(data, real_tokenizer, max_length=48, limit=max_samples, log=logs.append, **ids)
    it = iter(stream)
    got = [next(it)["input_ids"] for _ in range(len(blocks) + 2)]
    assert got[: len(blocks)] == blocks
    assert got[len(blocks) :] == blocks[:2]  # the second pass
    ended = [m for m in logs if "pass over" in m]
    assert len(ended) == 1 and f"{info['documents']} documents, {len(blocks)} blocks" in ended[0]
    if max_samples is None:  # with a limit the cache counts the blank texts of every shard it read
        assert f"{info['blank_skipped']} blank texts skipped" in ended[0]

    val, vinfo = build_val_in_memory(data, real_tokenizer, max_length=48, eod_token="<end_of_turn>", limit=30,
                                     log=lambda m: None)
    want = packed_eval_blocks(real_tokenizer, read_texts(data, limit=30), max_length=48)
    assert val["input_ids"] == want and (vinfo["documents"], vinfo["blocks"]) == (30, len(want))


def test_streaming_needs_max_steps_and_no_loader_workers(tmp_path):
    from typer.testing import CliRunner

    from kormed.cli import app
    from kormed.train.config import CPTConfig, TrainOptions

    with pytest.raises(KormedError, match="--streaming needs --max-steps"):
        CPTConfig(streaming=True).validate()
    with pytest.raises(KormedError, match="num_workers must be 0"):
        CPTConfig(streaming=True, train=TrainOptions(max_steps=2, num_workers=1)).validate()
    CPTConfig(streaming=True, train=TrainOptions(max_steps=2)).validate()
    data = tmp_path / "t.jsonl"
    data.write_text('{"text": "가나다"}\n', encoding="utf-8")
    result = CliRunner().invoke(app, ["train", "cpt", "--streaming", "--data", str(data), "--val", str(data),
                                      "--output", str(tmp_path / "out")])
    assert result.exit_code == 2 and "--streaming needs --max-steps" in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def _adapter(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


@pytest.mark.heavy  # three short runs of the tiny model: about a minute on a shared 2-core CPU
def test_streaming_run_and_resume_match_the_uninterrupted_run(tiny_gemma3_dir, corpus, tmp_path):
    """A --streaming run interrupted at step 2 and resumed trains on the blocks the uninterrupted run trains on
    (the Trainer skips the consumed batches): same adapter, same logged losses. Switching --streaming off for the
    resume is refused (the data order would change)."""
    import torch
    from transformers import TrainerCallback

    from kormed.train.cpt import run_cpt

    def cfg(out: Path):
        return dataclasses.replace(_tiny_cfg(tiny_gemma3_dir, corpus, out, max_steps=4, eval_steps=4,
                                             eval_on_start=False), streaming=True)

    class LoaderSetup(TrainerCallback):
        def attach(self, trainer):
            self.trainer = trainer
            self.dispatch = trainer.accelerator.dataloader_config.dispatch_batches

    setup = LoaderSetup()
    full = run_cpt(cfg(tmp_path / "full"), callbacks=[setup], log=lambda m: None)
    assert setup.dispatch is False  # each process reads the stream (test below)
    assert full["stop_reason"] == "completed" and full["global_step"] == 4
    assert full["data"]["train"]["streaming"] and full["data"]["val"]["documents"] == 3
    assert not (tmp_path / "packed-cache").exists()  # nothing cached

    class Sigterm(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 1:
                os.kill(os.getpid(), signal.SIGTERM)

    out = tmp_path / "cut"
    first = run_cpt(cfg(out), callbacks=[Sigterm()], log=lambda m: None)
    assert first["stop_reason"] == "interrupted" and first["stop_step"] == 2
    with pytest.raises(KormedError, match="different --streaming"):
        run_cpt(dataclasses.replace(cfg(out), resume=True, streaming=False), log=lambda m: None)
    resumed = run_cpt(dataclasses.replace(cfg(out), resume=True), log=lambda m: None)
    assert resumed["stop_reason"] == "completed" and resumed["resumed_from"].endswith("checkpoint-2")
    a, b = _adapter(tmp_path / "full"), _adapter(out)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-7)

    assert [e["step"] for e in resumed["eval_history"]] == [e["step"] for e in full["eval_history"]] == [4]
    assert resumed["last_eval"]["eval_loss"] == pytest.approx(full["last_eval"]["eval_loss"], rel=1e-6)


def test_each_process_takes_its_own_batches_of_the_stream(real_tokenizer, tmp_path):
    """Under `accelerate launch` (N processes; the Trainer's loader set up as build_trainer sets it, checked in the
    run above) the stream is not dispatched from the main process: each process reads it and keeps global batches
    k with k mod N == its rank, as a sequential sampler splits the cache."""
    from accelerate.data_loader import prepare_data_loader, skip_first_batches
    from torch.utils.data import DataLoader

    from kormed.data.corpus_stream import stream_blocks, streaming_dataset

    data = _mixed_corpus(tmp_path / "mixed.jsonl")
    ids = {"bos_id": real_tokenizer.bos_token_id, "eod_id": real_tokenizer.convert_tokens_to_ids("<end_of_turn>")}
    blocks = list(stream_blocks(data, real_tokenizer, max_length=48, **ids))  # the cache's (test above)
    stream = streaming_dataset(data, real_tokenizer, max_length=48, log=lambda m: None, **ids)
    def batches(rank: int, skip: int = 0, n: int = 5) -> list[list[list[int]]]:
        loader = prepare_data_loader(DataLoader(stream, batch_size=2, collate_fn=list), num_processes=2,
                                     process_index=rank, put_on_device=False, dispatch_batches=False)
        got = []
        for batch in skip_first_batches(loader, skip) if skip else loader:
            got.append([b["input_ids"] for b in batch])
            if len(got) == n:
                return got
        raise AssertionError("the stream ended")

    seen = [batches(0), batches(1)]
    for k in range(10):
        assert seen[k % 2][k // 2] == blocks[2 * k : 2 * k + 2]
    # --resume: the Trainer skips each process's consumed batches; the endless stream continues across the end
    # of a pass exactly as the uninterrupted run does (blocks 502 = 4 x 125 + 2: the pass ends inside a batch)
    skip = len(blocks) // 4
    cycled = blocks * 2
    for rank in (0, 1):
        assert batches(rank, skip=skip, n=3) == [cycled[2 * k : 2 * k + 2] for k in (2 * (skip + i) + rank
                                                                                     for i in range(3))]


@pytest.mark.heavy  # two launches of 1 and 2 CPU processes: minutes on a shared 2-core CPU
def test_streaming_under_accelerate_launch_matches_one_process(tiny_gemma3_dir, corpus, tmp_path):
    """`accelerate launch` with 2 CPU processes and --streaming: each process trains on its own blocks of the
    stream, together the single process's, and the adapter equals the single-process one."""
    import json
    import shutil
    import subprocess
    import sys

    import torch

    worker = Path(__file__).with_name("cpt_ddp_worker.py")
    runs, seen = {}, {}
    for mode in ("single", "ddp"):
        out = tmp_path / mode
        cfg_path = tmp_path / f"{mode}.yaml"
        cfg_path.write_text(
            f"cpt:\n  data: {corpus[0]}\n  val: {corpus[1]}\n  model: {tiny_gemma3_dir}\n  output: {out}\n"
            "  streaming: true\n  max_length: 32\n  max_samples: 12\n  max_val_samples: 2\n"
            "  lora: {r: 4, dropout: 0.0}\n"
            "  train: {batch_size: 2, grad_accum: 2, max_steps: 2, eval_steps: 2, lr: 0.01, warmup_ratio: 0.0,\n"
            "          gradient_checkpointing: false, report_to: [], device: cpu, eval_on_start: false}\n",
            encoding="utf-8",
        )
        path = [str(Path(__file__).parent), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(path)}
        cmd = [sys.executable, str(worker), str(cfg_path), str(tmp_path / f"rec-{mode}")]
        if mode == "ddp":
            if shutil.which("accelerate") is None and not (Path(sys.executable).parent / "accelerate").exists():
                pytest.skip("accelerate launcher not installed")
            cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", "29541", *cmd[1:]]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
        runs[mode] = out
        seen[mode] = [json.loads((tmp_path / f"rec-{mode}" / f"rank{r}.json").read_text())
                      for r in ((0,) if mode == "single" else (0, 1))]
    from kormed.data.corpus_stream import stream_blocks
    from kormed.models import load_tokenizer

    tok = load_tokenizer(str(tiny_gemma3_dir))
    blocks = [tuple(b[:8]) for b in stream_blocks(corpus[0], tok, max_length=32, bos_id=tok.bos_token_id,
                                                  eod_id=tok.convert_tokens_to_ids("<end_of_turn>"), limit=12)]
    train = set(blocks)
    ddp = [[tuple(s) for s in r["seen"] if tuple(s) in train][:4] for r in seen["ddp"]]  # 2 steps x 2 per rank
    single = [tuple(s) for s in seen["single"][0]["seen"] if tuple(s) in train][:8]
    assert single == blocks[:8]  # file order
    assert ddp[0] == blocks[0:2] + blocks[4:6] and ddp[1] == blocks[2:4] + blocks[6:8]  # global batch k -> rank k % 2
    assert [r["writes"] for r in seen["ddp"]][1] == [] and not seen["ddp"][0]["built"]  # nothing cached
    a, b = _adapter(runs["single"]), _adapter(runs["ddp"])
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6)
