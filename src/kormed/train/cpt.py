"""`kormed train cpt`: continued pretraining (stage 1.1 of the seeds) with LoRA on packed raw text.

Training text (`{"text": ...}` JSONL from `kormed prepare`) is tokenized in parallel (`datasets.map`), packed
sequentially into `max_length` blocks with :func:`kormed.data.packing.pack_token_stream` (every block starts
with `<bos>`, every document ends with the end-of-document token, nothing is truncated), and the packed set is
cached on disk keyed by the tokenizer, the data file and the packing settings. Validation uses the held-out
file packed by :func:`kormed.eval.perplexity.packed_eval_blocks` -- the very blocks `kormed eval ppl` scores --
with the same token-weighted loss, so both report one number. The trainer is the shared one
(:mod:`kormed.train.engine.trainer`).

:func:`run_cpt` goes through three phases, named in its body:

1. **setup**: check the inputs (a corpus and validation file from one `kormed prepare` run), record what the data
   order depends on and plan a `--resume` *before* the model loads (a mismatch is refused cheaply), load the model
   with its LoRA (and grown embeddings), tokenize and pack the data (cached);
2. **train**: an optional embedding warm-up (new token rows only, so LoRA does not chase random rows), then the
   shared trainer with validation perplexity, early stopping and the NaN/interrupt guards;
3. **save**: the adapter and `training_info.json` (only when the run finished; an interrupted run keeps its
   checkpoint for `--resume`), and the result printed by :func:`show`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from accelerate import PartialState

from kormed.config import to_dict
from kormed.data.corpus_cache import (
    META_FILE,
    SHARD_BYTES,
    build_packed,
    cache_key,
    dir_bytes,
    human_bytes,
    load_packed,
    wait_for_packed,
)
from kormed.data.corpus_stream import stream_blocks, streaming_dataset
from kormed.data.packing import resolve_eod_id
from kormed.errors import KormedError
from kormed.eval.callback import KorMedMCQACallback
from kormed.io import (
    Log,
    check_output_path,
    file_sha256,
    read_json,
    require_file,
)
from kormed.models import (
    ADAPTER_WEIGHTS,
    EMBEDDED_ALIASES,
    EMBEDDED_MODEL_NAME,
    cache_root,
    check_adapter_dir,
    pick_runtime,
    resolve_model,
)
from kormed.prepare.publish import check_prepared_set
from kormed.records import read_mcq_jsonl
from kormed.stop_reason import StopReason
from kormed.tokenizer.report import reported_new_tokens
from kormed.train.config import CPTConfig
from kormed.train.engine.checkpoints import plan_resume
from kormed.train.engine.model_setup import is_embedding_param, prepare_full_model, prepare_model_for_training
from kormed.train.engine.outputs import finish_run
from kormed.train.engine.processes import effective_grad_accum, world_size
from kormed.train.engine.trainer import CausalCollator, build_trainer, run_training

PACKING_VERSION = 1  # bump when tokenization/packing changes, to invalidate cached packed sets


def default_output(model: str | None) -> Path:
    """The seeds' layout: model/00_trained/<model-name>/."""
    name = EMBEDDED_MODEL_NAME if model in EMBEDDED_ALIASES else (Path(str(model).rstrip("/")).name or "model")
    return Path("model") / "00_trained" / name


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of the tokenizer's full definition (vocabulary, merges, added tokens, normalizer)."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode("utf-8"))
    else:  # pragma: no cover - kormed always uses fast tokenizers
        h.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode("utf-8"))
    h.update(f"bos={tokenizer.bos_token_id}".encode())
    return h.hexdigest()


def build_packed_dataset(
    data: str | Path,
    tokenizer: Any,
    *,
    max_length: int = 512,
    eod_token: str = "<end_of_turn>",
    max_samples: int | None = None,
    num_proc: int | None = None,
    cache_dir: str | Path | None = None,
    log: Log = print,
    data_sha256: str | None = None,
    what: str = "training text",
    wait: bool = False,
    shard_bytes: int = SHARD_BYTES,
) -> tuple[Any, dict[str, Any]]:
    """Tokenize and pack `data` into a memory-mapped `datasets.Dataset` of `input_ids` blocks (cached); returns
    (dataset, info). The work is :mod:`kormed.data.corpus_cache`'s: bounded memory, `num_proc` workers.

    info: data path, data sha256, tokenizer sha256, documents, blocks, tokens (including BOS/EOD), cache key
    and whether the cache was hit. The cache key covers the tokenizer, the data bytes, max_length, eod_token,
    max_samples, the packing version and the cache format. `data_sha256`: the data file's digest when the caller
    has it. `wait`: another process builds the set (the main process under `accelerate launch`): wait for it.
    """
    data = require_file(data, what)
    eod_id = resolve_eod_id(tokenizer, eod_token)
    bos_id = tokenizer.bos_token_id
    if bos_id is None:
        raise KormedError("the tokenizer has no <bos> token; Gemma needs one")
    data_hash = data_sha256 or file_sha256(data)
    tok_hash = tokenizer_fingerprint(tokenizer)
    settings = {"max_length": max_length, "eod_token": eod_token, "eod_id": eod_id, "bos_id": int(bos_id),
                "max_samples": max_samples, "packing_version": PACKING_VERSION}
    key = cache_key(data_hash, tok_hash, settings)
    root = Path(cache_dir) if cache_dir else cache_root() / "packed"
    target = root / key
    info: dict[str, Any] = {"path": str(data), "sha256": data_hash, "tokenizer_sha256": tok_hash, "cache_key": key,
                            "cache_dir": str(target), **settings}
    meta_path = target / META_FILE
    if wait:
        wait_for_packed(target, log)
    if meta_path.is_file():
        meta = read_json(meta_path, what="packed-set record")
        log(f"[kormed] packed {what} from cache: {target} ({meta['blocks']} blocks, "
            f"{human_bytes(dir_bytes(target))}; not re-tokenized)")
        return load_packed(target), {**info, **meta, "cache_hit": True}

    n_proc = max(1, num_proc or min(8, os.cpu_count() or 1))
    log(f"[kormed] tokenizing {data} ({human_bytes(data.stat().st_size)}, {n_proc} processes) and packing into "
        f"{max_length}-token blocks")
    meta = build_packed(data, tokenizer, target, max_length=max_length, bos_id=int(bos_id), eod_id=eod_id,
                        limit=max_samples, num_proc=n_proc, what=what, shard_bytes=shard_bytes, log=log)
    if meta["blank_skipped"]:
        log(f"[kormed] skipped {meta['blank_skipped']} blank texts in {data}")
    log(f"[kormed] packed {meta['documents']} documents -> {meta['blocks']} blocks, {meta['tokens']} tokens in "
        f"{meta['seconds']:.1f} s (cached in {target}, {human_bytes(dir_bytes(target))})")
    return load_packed(target), {**info, **meta, "cache_hit": False}


def build_val_dataset(
    val: str | Path, tokenizer: Any, *, max_length: int, eod_token: str, limit: int | None = None,
    cache_dir: str | Path | None = None, log: Log = print, wait: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """Validation blocks exactly as `kormed eval ppl` builds them (the packing of packed_eval_blocks), built and
    cached like the training set so that a large held-out file is never held in memory either."""
    ds, info = build_packed_dataset(val, tokenizer, max_length=max_length, eod_token=eod_token, max_samples=limit,
                                    num_proc=1, cache_dir=cache_dir, log=log, what="validation text", wait=wait)
    keep = ("path", "sha256", "documents", "blocks", "tokens", "cache_key", "cache_hit")
    return ds, {k: info[k] for k in keep}


def build_streaming_dataset(
    data: str | Path, tokenizer: Any, *, max_length: int, eod_token: str, max_samples: int | None = None,
    data_sha256: str | None = None, log: Log = print,
) -> tuple[Any, dict[str, Any]]:
    """`--streaming`: the training blocks packed on the fly (:mod:`kormed.data.corpus_stream`), no cache; returns
    (endless `datasets.IterableDataset`, info). The counts are not known before a pass ends (the pass logs them)."""
    data = require_file(data, "training text")
    eod_id = resolve_eod_id(tokenizer, eod_token)
    bos_id = _bos_id(tokenizer)
    info = {"path": str(data), "sha256": data_sha256 or file_sha256(data),
            "tokenizer_sha256": tokenizer_fingerprint(tokenizer), "streaming": True, "max_length": max_length,
            "eod_token": eod_token, "eod_id": eod_id, "bos_id": bos_id, "max_samples": max_samples,
            "packing_version": PACKING_VERSION}
    log(f"[kormed] --streaming: tokenizing and packing {data} ({human_bytes(data.stat().st_size)}) on the fly into "
        f"{max_length}-token blocks, in file order; no cache")
    ds = streaming_dataset(data, tokenizer, max_length=max_length, bos_id=bos_id, eod_id=eod_id, limit=max_samples,
                           log=log)
    return ds, info


def build_val_in_memory(
    val: str | Path, tokenizer: Any, *, max_length: int, eod_token: str, limit: int | None = None, log: Log = print,
) -> tuple[Any, dict[str, Any]]:
    """`--streaming`'s validation set: the blocks of the first `limit` documents of `val` (those of
    :func:`build_val_dataset`), read by the streaming reader and held in memory (no cache)."""
    from datasets import Dataset, Features, Sequence, Value

    val = require_file(val, "validation text")
    counts: dict[str, int] = {}
    blocks = list(stream_blocks(val, tokenizer, max_length=max_length, bos_id=_bos_id(tokenizer),
                                eod_id=resolve_eod_id(tokenizer, eod_token), limit=limit, what="validation text",
                                counts=counts))
    tokens = sum(map(len, blocks))
    log(f"[kormed] validation: {counts['documents']} documents of {val} -> {len(blocks)} blocks, {tokens} tokens "
        "(in memory)")
    ds = Dataset.from_dict({"input_ids": blocks}, features=Features({"input_ids": Sequence(Value("int32"))}))
    return ds, {"path": str(val), "sha256": file_sha256(val), "documents": counts["documents"],
                "blocks": len(blocks), "tokens": tokens, "cache_key": None, "cache_hit": False}


def _bos_id(tokenizer: Any) -> int:
    if tokenizer.bos_token_id is None:
        raise KormedError("the tokenizer has no <bos> token; Gemma needs one")
    return int(tokenizer.bos_token_id)


def _kormedmcqa_callback(cfg: CPTConfig, tokenizer: Any, runtime: Any, log: Log) -> list[Any]:
    if not cfg.kormedmcqa_data or cfg.kormedmcqa_every <= 0:
        return []
    questions, _ = read_mcq_jsonl(cfg.kormedmcqa_data)
    every_evals = max(1, round(cfg.kormedmcqa_every / cfg.train.eval_steps))
    return [KorMedMCQACallback(questions, every_n_evals=every_evals, sample=cfg.kormedmcqa_limit,
                               seed=cfg.train.seed, tokenizer=tokenizer, compute_dtype=runtime.compute_dtype)]


@contextmanager
def embedding_warmup_trainables(model: Any) -> Iterator[list[str]]:
    """Within the block only the trainable embedding parameters (the new rows' delta of PEFT
    `trainable_token_indices`, or a trained embedding copy) keep `requires_grad`; LoRA is frozen and restored
    on exit. Yields the names of the parameters left trainable (the embeddings-first phase)."""
    frozen = [p for n, p in model.named_parameters() if p.requires_grad and not is_embedding_param(n)]
    left = [n for n, p in model.named_parameters() if p.requires_grad and is_embedding_param(n)]
    if not left:
        raise KormedError("internal error: the embeddings-first phase has no trainable embedding parameters")
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield left
    finally:
        for p in frozen:
            p.requires_grad_(True)


def run_embedding_warmup(
    model: Any, tokenizer: Any, train_ds: Any, cfg: CPTConfig, output: Path, runtime: Any, log: Log = print
) -> dict[str, Any]:
    """The embeddings-first phase: `cfg.embedding_warmup_steps` optimizer steps (the first batches of the
    training order) in which only the new embedding rows learn, at a constant `cfg.embedding_warmup_lr`.

    A short Trainer run of its own (no validation, no checkpoint; its scratch directory is removed), so the
    LoRA run that follows starts its optimizer and schedule fresh. Returns what it did for training_info.json.
    """
    options = dataclasses.replace(
        cfg.train, max_steps=cfg.embedding_warmup_steps, lr=cfg.embedding_warmup_lr, scheduler="constant",
        warmup_ratio=0.0, eval_on_start=False, load_best_at_end=False, report_to=[],
        save_checkpoints=False, logging_steps=1,
    )
    scratch = output / "embedding_warmup"
    with embedding_warmup_trainables(model) as trainable:
        trainer = build_trainer(
            model, tokenizer, train_ds, None, CausalCollator(tokenizer), options, scratch,
            embedding_lr=cfg.embedding_warmup_lr, runtime=runtime,
        )
        result = trainer.train()
    shutil.rmtree(scratch, ignore_errors=True)
    losses = [round(float(r["loss"]), 4) for r in trainer.state.log_history if "loss" in r]
    log(f"[kormed] embeddings-first phase: {cfg.embedding_warmup_steps} steps on the new rows only "
        f"(lr {cfg.embedding_warmup_lr:g}), loss {losses[0] if losses else '?'} -> {losses[-1] if losses else '?'}")
    return {"steps": int(result.global_step), "lr": cfg.embedding_warmup_lr, "trainable": trainable,
            "losses": losses}


# New rows start from an average of other rows and have everything to learn: they train at 10x the LoRA learning
# rate (the literature's direction; measured at 100,000 training characters, seed 0: 100 new rows at 10x cost 2.0
# points of held-out bits per character against no extension, at lr / 4 4.6; benchmarks/vocab_extension.py).
NEW_ROWS_LR_FACTOR = 10.0


def apply_tokenizer_options(cfg: CPTConfig, tokenizer_options: Any = None, log: Log = print) -> CPTConfig:
    """With an extended tokenizer, make sure the new embedding rows are trained.

    A tokenizer that `kormed tokenizer extend` left without new entries (a null `max_new_tokens` sized to a
    budget too small to pay back an extension) is the base tokenizer: CPT then runs without it.

    If the `cpt.lora` section does not train embeddings, the `tokenizer` section's CPT-side options decide:
    `train_new_rows_only` (default true: PEFT trainable_token_indices on the new rows) and `embedding_lr`
    (`cpt.lora.embedding_lr` wins; when neither is set, new rows only train at NEW_ROWS_LR_FACTOR x lr).
    Untrained new rows would keep their initial mean embedding for ever.
    """
    if cfg.tokenizer_path is None:
        return cfg
    if reported_new_tokens(cfg.tokenizer_path) == 0:
        log(f"[kormed] {cfg.tokenizer_path} adds no tokens (see its tokenizer_report.json): CPT uses the base "
            "tokenizer")
        return dataclasses.replace(cfg, tokenizer_path=None)
    if cfg.train.method == "full":
        return cfg  # every embedding row trains with the rest of the model
    lora = cfg.lora
    rows_only = getattr(tokenizer_options, "train_new_rows_only", True)
    emb_lr = lora.embedding_lr if lora.embedding_lr is not None else getattr(tokenizer_options, "embedding_lr", None)
    if not lora.train_embeddings:
        lora = dataclasses.replace(lora, train_embeddings=True, embedding_rows="new" if rows_only else "all")
    if emb_lr is None and lora.embedding_rows == "new":
        emb_lr = NEW_ROWS_LR_FACTOR * cfg.train.lr
    lora = dataclasses.replace(lora, embedding_lr=emb_lr)
    return dataclasses.replace(cfg, lora=lora)


def model_shape(cfg: CPTConfig, log: Log = print) -> dict[str, Any]:
    """What the checkpoints' weights depend on (base model, tokenizer, starting adapter, LoRA settings): recorded
    with the data order when a run starts, so that a --resume that changes one is refused before the model loads."""
    shape: dict[str, Any] = {}
    if cfg.model is not None or cfg.adapter is None:
        model_path = resolve_model(cfg.model, log=log)
        shape["base_model"] = str(Path(model_path).resolve()) if Path(model_path).exists() else model_path
        tokenizer = Path(str(cfg.tokenizer_path or model_path)) / "tokenizer.json"
        shape["tokenizer_sha256"] = file_sha256(tokenizer) if tokenizer.is_file() else str(tokenizer.parent)
    shape["quantize"] = cfg.train.quantize
    if cfg.train.method == "full":
        shape["method"] = "full"
    elif cfg.adapter is not None:
        shape["adapter_sha256"] = file_sha256(check_adapter_dir(cfg.adapter) / ADAPTER_WEIGHTS)
    else:
        lora = cfg.lora
        shape.update(lora_r=lora.r, lora_alpha=lora.alpha, lora_target_modules=sorted(lora.target_modules),
                     lora_use_rslora=lora.use_rslora, lora_train_embeddings=lora.train_embeddings,
                     lora_embedding_rows=lora.embedding_rows if lora.train_embeddings else None)
    return shape


def embedding_lr(cfg: CPTConfig) -> float | None:
    """The embeddings' learning rate: lora.embedding_lr for LoRA (default lr / 4); one rate for the whole model
    under full fine-tuning (train.lr; the lora section is ignored)."""
    if cfg.train.method == "full":
        return cfg.train.lr
    return cfg.lora.embedding_lr


def run_cpt(cfg: CPTConfig, *, tokenizer_options: Any = None, callbacks: Any = (), log: Log = print) -> dict[str, Any]:
    """Run continued pretraining; returns the training info written to `<output>/training_info.json`.

    Raises KormedError when the loss became NaN/inf (the last good checkpoint is kept). An interrupted run
    (SIGINT/SIGTERM) returns with `stop_reason == "interrupted"` after saving a checkpoint; rerun with
    `resume=True` to continue it.
    """
    # --- setup: inputs, data-order record, resume plan, model, packed data ---
    cfg.validate()  # --streaming needs max_steps (also checked when the config is read)
    if not cfg.data:
        raise KormedError("no training data: pass --data FILE (JSONL with a 'text' field per line)")
    if not cfg.val:
        raise KormedError("no validation data: pass --val FILE (held-out JSONL with a 'text' field)")
    require_file(cfg.data, "training text")
    require_file(cfg.val, "validation text")
    data_sha256 = file_sha256(cfg.data)  # read once: the prepared-set check, the data-order record, the cache key
    # a corpus and validation file from two prepare runs are refused
    check_prepared_set(cfg.data, cfg.val, corpus_sha256=data_sha256)
    output = check_output_path(cfg.output or default_output(cfg.model), "dir", "--output", inputs={
        "--data": cfg.data, "--val": cfg.val, "--model": cfg.model, "--tokenizer-path": cfg.tokenizer_path,
        "--adapter": cfg.adapter, "--kormedmcqa-data": cfg.kormedmcqa_data})
    runtime = pick_runtime(cfg.train.device, cfg.train.dtype)
    state = PartialState(cpu=runtime.device == "cpu")  # cpu=True: several CPU processes use gloo (MULTI_CPU)
    quiet = (lambda m: None) if not state.is_main_process else log
    cfg = apply_tokenizer_options(cfg, tokenizer_options, log=quiet)  # logs once, on the main process

    # what the data order depends on: checked against the run's record BEFORE the model loads (as is the
    # refusal to mix with an earlier run's checkpoints), recorded when a run starts
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # build_trainer warns about an uneven accumulation split once
        accum = effective_grad_accum(cfg.train)
    data_order = {"data_sha256": data_sha256, "max_length": cfg.max_length,
                  "max_samples": cfg.max_samples, "eod_token": cfg.eod_token, "packing_version": PACKING_VERSION,
                  "seed": cfg.train.seed, "batch_size": cfg.train.batch_size, "grad_accum": accum,
                  "processes": world_size(), "streaming": cfg.streaming,
                  **model_shape(cfg, log=quiet)}
    plan = plan_resume(output, resume=cfg.resume, data_order=data_order, log=quiet)

    if cfg.train.method == "full":
        model, tokenizer, model_info = prepare_full_model(cfg.model, runtime, tokenizer_path=cfg.tokenizer_path,
                                                          log=quiet)
    else:
        model, tokenizer, model_info = prepare_model_for_training(
            cfg.model, adapter=cfg.adapter, lora=cfg.lora, runtime=runtime, tokenizer_path=cfg.tokenizer_path,
            log=quiet, seed=cfg.train.seed, quantize=cfg.train.quantize,
        )
    if cfg.streaming:  # every process reads the stream and keeps its own batches (kormed.data.corpus_stream)
        train_ds, data_info = build_streaming_dataset(
            cfg.data, tokenizer, max_length=cfg.max_length, eod_token=cfg.eod_token, max_samples=cfg.max_samples,
            data_sha256=data_sha256, log=quiet,
        )
        val_ds, val_info = build_val_in_memory(cfg.val, tokenizer, max_length=cfg.max_length,
                                               eod_token=cfg.eod_token, limit=cfg.max_val_samples, log=quiet)
    else:
        # the main process tokenizes and caches; the others wait for the cache (a file poll) and memory-map it
        wait = not state.is_main_process
        train_ds, data_info = build_packed_dataset(
            cfg.data, tokenizer, max_length=cfg.max_length, eod_token=cfg.eod_token, max_samples=cfg.max_samples,
            num_proc=cfg.num_proc, cache_dir=cfg.cache_dir, log=quiet, data_sha256=data_sha256, wait=wait,
        )
        val_ds, val_info = build_val_dataset(
            cfg.val, tokenizer, max_length=cfg.max_length, eod_token=cfg.eod_token, limit=cfg.max_val_samples,
            cache_dir=cfg.cache_dir, log=quiet, wait=wait,
        )
    # --- train: embedding warm-up, then the shared trainer ---
    warmup: dict[str, Any] = {}
    if cfg.embedding_warmup_steps and model_info["tokenizer"]["new_tokens"] and plan.resume_from is None:
        warmup = run_embedding_warmup(model, tokenizer, train_ds, cfg, output, runtime, log=quiet)
    extra = [*_kormedmcqa_callback(cfg, tokenizer, runtime, quiet), *callbacks]
    trainer = build_trainer(
        model, tokenizer, train_ds, {"val": val_ds}, CausalCollator(tokenizer), cfg.train, output,
        callbacks=extra, embedding_lr=embedding_lr(cfg), runtime=runtime,
    )
    summary = run_training(trainer, resume=cfg.resume, log=quiet, data_order=data_order, plan=plan)
    # --- save: adapter and training_info.json ---
    info = {
        "stage": "cpt",
        "config": to_dict(cfg),
        "data": {"train": data_info, "val": val_info},
        **({"embedding_warmup": warmup} if warmup else {}),
        **model_info,
    }
    ok = StopReason(summary["stop_reason"]).finished
    full = finish_run(trainer, tokenizer, output, info, summary, save=ok)
    done = full.summary
    if done.stop_reason == StopReason.NON_FINITE_LOSS:  # also weights found non-finite when saving the adapter
        raise KormedError(
            done.stop_detail or StopReason.NON_FINITE_LOSS, path=output,
            hint="lower --lr, check the data, or --resume from the last good checkpoint with other settings",
        )
    return {**full.to_json(), "output": str(output)}


# How `kormed train cpt` prints its result (the command is a row of kormed.cli.COMMANDS).
def show(info: dict[str, Any], cfg: Any) -> None:
    """Steps, tokens and validation perplexity before -> after; exit 130 (and how to resume) when interrupted."""
    if info.get("stop_reason") == StopReason.INTERRUPTED:
        typer.echo(
            f"kormed: interrupted at step {info.get('stop_step')}; checkpoint saved under "
            f"{info['output']}/checkpoints. Continue with the same command plus --resume.", err=True,
        )
        sys.exit(130)
    nan = float("nan")
    before = (info.get("first_eval") or {}).get("eval_perplexity", nan)
    after = (info.get("best_eval") or {}).get("eval_perplexity", nan)
    typer.echo(
        f"cpt done ({info['stop_reason']}): {info['global_step']} steps, {info['tokens_seen']} tokens, "
        f"val ppl {before:.3f} -> {after:.3f}; "
        f"{'model' if info.get('method') == 'full' else 'adapter'} in {info['output']}"
    )
