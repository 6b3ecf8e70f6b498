"""Perplexity on held-out raw text, over packed blocks built exactly like the CPT training blocks.

`packed_eval_blocks` tokenizes each text without special tokens and packs it with
:func:`kormed.data.packing.pack_documents` (BOS first in every block, the end-of-document token after every
text), so a block here is byte-for-byte a block the CPT stage trains on. `evaluate_perplexity` returns the
token-weighted mean next-token loss over every predicted position of every block (the sum of per-token
negative log-likelihoods divided by the number of predicted tokens; padding never counts), and exp of it.
The CPT trainer uses these two functions for its validation, so `kormed eval ppl` and CPT report one number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import typer

from kormed.data.packing import pack_documents, resolve_eod_id
from kormed.errors import KormedError
from kormed.eval.config import eval_inputs
from kormed.io import check_output_path, read_texts, write_json

# torch, transformers and the kormed modules that load them are imported inside the functions that use them:
# this module is imported by `kormed --help` or by a torch-free command, which must not pay for them.


def packed_eval_blocks(
    tokenizer: Any, texts: list[str], *, max_length: int, eod_token: str = "<end_of_turn>"
) -> list[list[int]]:
    """Token-id blocks of at most `max_length` ids, `[bos, ...]`, each text followed by `eod_token`."""
    eod_id = resolve_eod_id(tokenizer, eod_token)
    bos_id = tokenizer.bos_token_id
    if bos_id is None:
        from kormed.errors import KormedError

        raise KormedError("the tokenizer has no <bos> token; Gemma needs one")
    docs = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    return pack_documents(docs, max_length=max_length, bos_id=int(bos_id), eod_id=eod_id)


def _model_device(model: Any) -> Any:
    import torch

    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - a model always has parameters
        return torch.device("cpu")


def evaluate_perplexity(
    model: Any,
    blocks: Sequence[Sequence[int]],
    *,
    batch_size: int = 8,
    device: Any = None,
    progress: bool = True,
    loss_impl: str = "chunked",
    chunk_size: int | None = None,
    compute_dtype: str | None = None,
) -> dict[str, float | int]:
    """Token-weighted next-token loss and perplexity of `model` over `blocks`.

    Returns {"loss", "perplexity", "tokens" (predicted positions counted), "blocks"}. The model is put in
    eval mode and restored to its previous mode afterwards; no gradients are computed. Blocks of different
    lengths are right-padded within a batch and the padding is masked out of attention and of the loss.
    `loss_impl`: "chunked" (default) never builds full-vocabulary logits (:mod:`kormed.loss`); "full"
    computes the same numbers from the model's logits. `compute_dtype` "bfloat16" runs under bf16 autocast;
    "float32" or None (a library call) runs in the model's own dtype. `kormed eval ppl` and SFT's baseline pass
    the runtime's compute dtype (`--dtype`, :mod:`kormed.precision`).
    """
    import torch
    from tqdm.auto import tqdm

    from kormed.loss import DEFAULT_CHUNK_SIZE, LossSpec, sequence_nll
    from kormed.precision import autocast

    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if loss_impl not in ("chunked", "full"):
        raise ValueError("loss_impl must be 'chunked' or 'full'")
    spec = LossSpec(loss_impl, chunk_size or DEFAULT_CHUNK_SIZE)
    device = torch.device(device) if device is not None else _model_device(model)
    was_training = model.training
    model.eval()
    total_nll = 0.0
    total_tokens = 0
    # Longest first, so that padding is minimal and the largest batch (memory peak) comes first.
    order = sorted(range(len(blocks)), key=lambda i: -len(blocks[i]))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    try:
        with torch.no_grad(), autocast(device, compute_dtype or "float32"):
            for batch in tqdm(batches, desc="perplexity", unit="batch", disable=not progress):
                width = max(len(blocks[i]) for i in batch)
                ids = torch.zeros((len(batch), width), dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    ids[row, : len(blocks[i])] = torch.tensor(list(blocks[i]), dtype=torch.long)
                    mask[row, : len(blocks[i])] = 1
                ids, mask = ids.to(device), mask.to(device)
                # Position t predicts token t+1; only pairs where the target is a real (unpadded) token count.
                labels = ids.masked_fill(mask == 0, -100)
                nll, count = sequence_nll(model, {"input_ids": ids, "attention_mask": mask}, labels, spec=spec)
                total_nll += float(nll.double().sum().item())
                total_tokens += int(count.sum().item())
    finally:
        if was_training:
            model.train()
    loss = total_nll / total_tokens if total_tokens else float("nan")
    perplexity = math.exp(loss) if total_tokens and loss < 700 else float("inf") if total_tokens else float("nan")
    return {"loss": loss, "perplexity": perplexity, "tokens": total_tokens, "blocks": len(blocks)}


def run_perplexity(cfg: Any, *, progress: bool = True, log: Any = print) -> dict[str, Any]:
    """`kormed eval ppl`: load the model (+ adapter), pack the texts as CPT does, evaluate, write `cfg.output`."""
    from kormed.models import load_model_and_tokenizer, pick_runtime

    if cfg.output:
        check_output_path(cfg.output, "file", "--output", inputs=eval_inputs(cfg))  # before any work
    if not cfg.data:
        raise KormedError("no text file given", field="data", hint="pass --data held_out.jsonl")
    texts = read_texts(cfg.data, field=cfg.text_field, limit=cfg.limit, what="text JSONL file")
    runtime = pick_runtime(cfg.device, cfg.dtype)
    model, tokenizer, runtime = load_model_and_tokenizer(cfg.model, adapter=cfg.adapter, runtime=runtime, log=log)
    blocks = packed_eval_blocks(tokenizer, texts, max_length=cfg.max_length, eod_token=cfg.eod_token)
    result: dict[str, Any] = dict(evaluate_perplexity(model, blocks, batch_size=cfg.batch_size, progress=progress,
                                                      compute_dtype=runtime.compute_dtype))
    result.update(
        documents=len(texts),
        max_length=cfg.max_length,
        eod_token=cfg.eod_token,
        model=cfg.model or "embedded:gemma3-270m",
        adapter=cfg.adapter,
        data=str(cfg.data),
        runtime={"device": runtime.device, "dtype": runtime.dtype, "compute_dtype": runtime.compute_dtype,
                 "attn_implementation": runtime.attn_implementation},
    )
    if cfg.output:
        write_json(cfg.output, result)
    return result


# How `kormed eval ppl` prints its result (the command is a row of kormed.cli.COMMANDS).
def show(result: dict[str, Any], cfg: Any) -> None:
    """Perplexity, loss and what they were measured on."""
    typer.echo(
        f"perplexity {result['perplexity']:.4f}  loss {result['loss']:.4f}  "
        f"({result['tokens']} predicted tokens, {result['blocks']} blocks of <= {result['max_length']}, "
        f"{result['documents']} texts)"
    )
    if cfg.output:
        typer.echo(f"wrote {cfg.output}")
