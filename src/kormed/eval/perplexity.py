"""Perplexity on held-out raw text, over packed blocks built exactly like the CPT training blocks.

`packed_eval_blocks` tokenizes each text without special tokens and packs it with
:func:`kormed.data.packing.pack_documents` (BOS first in every block, the end-of-document token after every
text), so a block here is byte-for-byte a block the CPT stage trains on. `evaluate_perplexity` returns the
token-weighted mean next-token loss over every predicted position of every block (the sum of per-token
negative log-likelihoods divided by the number of predicted tokens; padding never counts), and exp of it.
The CPT trainer uses these two functions for its validation, so `kormed eval ppl` and CPT report one number.

`score_documents` scores each text alone (`<bos>` + its tokens, no end-of-text target: a base model never saw
that token end a document and CPT learns exactly that convention) for the tokenizer-independent bits per
character and the Hangul bits per Hangul character `kormed eval ppl` and `kormed bench quality` report.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import Any

import typer

from kormed.data.packing import pack_documents, resolve_eod_id
from kormed.errors import KormedError
from kormed.eval.config import eval_inputs
from kormed.io import check_output_path, iter_texts, write_json

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


def _batches(blocks: Iterable[Sequence[int]], batch_size: int) -> Iterator[list[Sequence[int]]]:
    """`blocks` in batches of `batch_size`: a sequence longest first (padding minimal, the largest batch -- the memory
    peak -- first); an iterator in arrival order, never held whole. For packed blocks (all full but the last) the two
    orders are one: the batches, and so the numbers, are the same."""
    if isinstance(blocks, Sequence):
        order = sorted(range(len(blocks)), key=lambda i: -len(blocks[i]))
        for i in range(0, len(order), batch_size):
            yield [blocks[j] for j in order[i : i + batch_size]]
        return
    batch: list[Sequence[int]] = []
    for block in blocks:
        batch.append(block)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def evaluate_perplexity(
    model: Any,
    blocks: Iterable[Sequence[int]],
    *,
    batch_size: int = 8,
    device: Any = None,
    progress: bool = True,
    loss_impl: str = "chunked",
    chunk_size: int | None = None,
    compute_dtype: str | None = None,
) -> dict[str, float | int]:
    """Token-weighted next-token loss and perplexity of `model` over `blocks`.

    Returns {"loss", "perplexity", "tokens" (predicted positions counted), "blocks"}. `blocks` may be an iterator
    (`kormed eval ppl` streams its file): scored batch by batch as they come, in memory independent of their number.
    The model is put in
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
    n_blocks = 0
    total = -(-len(blocks) // batch_size) if isinstance(blocks, Sequence) else None
    try:
        with torch.no_grad(), autocast(device, compute_dtype or "float32"):
            for batch in tqdm(_batches(blocks, batch_size), total=total, desc="perplexity", unit="batch",
                              disable=not progress):
                n_blocks += len(batch)
                width = max(len(b) for b in batch)
                ids = torch.zeros((len(batch), width), dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, block in enumerate(batch):
                    ids[row, : len(block)] = torch.tensor(list(block), dtype=torch.long)
                    mask[row, : len(block)] = 1
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
    return {"loss": loss, "perplexity": perplexity, "tokens": total_tokens, "blocks": n_blocks}


SCORE_GROUP = 256  # texts scored per character at a time by `kormed eval ppl` (bounds its memory)
HANGUL_SYLLABLE = re.compile(r"[\uac00-\ud7a3]")


def _hangul_weights(text: str, offsets: Sequence[tuple[int, int]]) -> list[float]:
    """Each token's share of Hangul: Hangul syllables in its character span / the span's length (0 for an empty
    span). Byte-fallback pieces of one character share its span, so all of them count for it."""
    return [len(HANGUL_SYLLABLE.findall(text, s, e)) / (e - s) if e > s else 0.0 for s, e in offsets]


def score_documents(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_length: int,
    batch_size: int = 8,
    progress: bool = True,
    loss_impl: str = "chunked",
    chunk_size: int | None = None,
    compute_dtype: str | None = None,
) -> list[dict[str, float | int]]:
    """Each text scored alone: `<bos>` + its tokens, no end-of-text target (no format convention is scored), cut
    into windows of `max_length` (each restarting after `<bos>`). Per text: `characters`, `tokens` (predicted),
    `nll` (nats), `hangul_characters` and `hangul_nll` (each token's NLL shared over its characters; the Hangul
    syllables' share). Tokenizer-independent: every character is predicted once through some token."""
    import torch
    from tqdm.auto import tqdm

    from kormed.loss import DEFAULT_CHUNK_SIZE, LossSpec, token_nll
    from kormed.precision import autocast

    if max_length < 2:
        raise ValueError("max_length must be at least 2")
    if not getattr(tokenizer, "is_fast", False):
        raise KormedError("scoring per character needs a fast tokenizer (character offsets)")
    bos_id = tokenizer.bos_token_id
    if bos_id is None:
        raise KormedError("the tokenizer has no <bos> token; Gemma needs one")
    docs = [{"characters": len(t), "tokens": 0, "nll": 0.0, "hangul_characters": len(HANGUL_SYLLABLE.findall(t)),
             "hangul_nll": 0.0} for t in texts]
    windows: list[tuple[int, list[int], list[float]]] = []  # (document, ids, Hangul weight of each target)
    body = max_length - 1
    for d, text in enumerate(texts):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, weights = list(enc["input_ids"]), _hangul_weights(text, enc["offset_mapping"])
        for start in range(0, len(ids), body):
            windows.append((d, [int(bos_id), *ids[start : start + body]], weights[start : start + body]))
    spec = LossSpec(loss_impl, chunk_size or DEFAULT_CHUNK_SIZE)
    device = _model_device(model)
    was_training = model.training
    model.eval()
    order = sorted(range(len(windows)), key=lambda i: -len(windows[i][1]))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    try:
        with torch.no_grad(), autocast(device, compute_dtype or "float32"):
            for batch in tqdm(batches, desc="bits/char", unit="batch", disable=not progress):
                width = max(len(windows[i][1]) for i in batch)
                ids = torch.zeros((len(batch), width), dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    ids[row, : len(windows[i][1])] = torch.tensor(windows[i][1], dtype=torch.long)
                    mask[row, : len(windows[i][1])] = 1
                ids, mask = ids.to(device), mask.to(device)
                labels = ids.masked_fill(mask == 0, -100)
                nll, valid = token_nll(model, {"input_ids": ids, "attention_mask": mask}, labels, spec=spec)
                nll = nll.double().cpu()
                for row, i in enumerate(batch):
                    d, _, weights = windows[i]
                    values = nll[row, : len(weights)]
                    docs[d]["nll"] += float(values.sum())
                    docs[d]["hangul_nll"] += float((values * torch.tensor(weights, dtype=torch.float64)).sum())
                    docs[d]["tokens"] += int(valid[row].sum())
    finally:
        if was_training:
            model.train()
    return docs


def summarise_documents(docs: Sequence[dict[str, float | int]]) -> dict[str, float | int]:
    """Bits per character and Hangul bits per Hangul character of the documents of `score_documents`."""
    chars = sum(int(d["characters"]) for d in docs)
    hangul = sum(int(d["hangul_characters"]) for d in docs)
    nll = sum(float(d["nll"]) for d in docs)
    hangul_nll = sum(float(d["hangul_nll"]) for d in docs)
    return {"bits_per_char": nll / math.log(2) / chars if chars else float("nan"),
            "hangul_bits_per_char": hangul_nll / math.log(2) / hangul if hangul else float("nan"),
            "documents": len(docs), "characters": chars, "hangul_characters": hangul,
            "tokens": sum(int(d["tokens"]) for d in docs), "nll_nats": nll, "hangul_nll_nats": hangul_nll}


def run_perplexity(cfg: Any, *, progress: bool = True, log: Any = print) -> dict[str, Any]:
    """`kormed eval ppl`: load the model (+ adapter), pack the texts as CPT does, evaluate, write `cfg.output`.

    The file is streamed (:func:`kormed.io.iter_texts`) and scored block by block as it is packed
    (:func:`kormed.data.corpus_stream.pack_texts`): memory does not grow with its size; the numbers are those of
    :func:`packed_eval_blocks` + :func:`evaluate_perplexity` on the whole list (the same blocks, the same batches)."""
    from kormed.models import load_model_and_tokenizer, pick_runtime

    if cfg.output:
        check_output_path(cfg.output, "file", "--output", inputs=eval_inputs(cfg))  # before any work
    documents = count_texts(cfg)
    runtime = pick_runtime(cfg.device, cfg.dtype)
    model, tokenizer, runtime = load_model_and_tokenizer(cfg.model, adapter=cfg.adapter, runtime=runtime, log=log)
    return score_loaded(cfg, model, tokenizer, runtime, documents, progress=progress)


def _texts(cfg: Any) -> Iterator[str]:
    return iter_texts(cfg.data, field=cfg.text_field, limit=cfg.limit, what="text JSONL file")


def count_texts(cfg: Any) -> int:
    """The number of texts in `cfg.data`, in one reading pass that keeps none: a bad line anywhere is refused
    before the model loads, as when the file was read whole (parsing is far faster than scoring)."""
    if not cfg.data:
        raise KormedError("no text file given", field="data", hint="pass --data held_out.jsonl")
    return sum(1 for _ in _texts(cfg))


def score_loaded(cfg: Any, model: Any, tokenizer: Any, runtime: Any, documents: int, *,
                 progress: bool = True) -> dict[str, Any]:
    """Score `cfg.data` (of `documents` texts, :func:`count_texts`) with an already loaded model and write
    `cfg.output` when set: the numbers and bytes of :func:`run_perplexity`."""
    from kormed.data.corpus_stream import pack_texts

    def texts() -> Iterator[str]:
        return _texts(cfg)

    eod_id = resolve_eod_id(tokenizer, cfg.eod_token)
    if tokenizer.bos_token_id is None:
        raise KormedError("the tokenizer has no <bos> token; Gemma needs one")
    counts: dict[str, int] = {}
    blocks = pack_texts(texts(), tokenizer, max_length=cfg.max_length, bos_id=int(tokenizer.bos_token_id),
                        eod_id=eod_id, counts=counts)
    result: dict[str, Any] = dict(evaluate_perplexity(model, blocks, batch_size=cfg.batch_size, progress=progress,
                                                      compute_dtype=runtime.compute_dtype))
    if counts["documents"] != documents:
        raise KormedError(f"the file changed while it was read ({documents} texts, then {counts['documents']})",
                          path=cfg.data)
    # per character: each text alone, no end-of-text target (the loss above counts one per text, as CPT trains);
    # scored a bounded group of texts at a time, so memory stays independent of the file's size
    sums: dict[str, float] = {"characters": 0, "hangul_characters": 0, "nll_nats": 0.0, "hangul_nll_nats": 0.0}
    stream = texts()
    while group := list(islice(stream, SCORE_GROUP)):
        part = summarise_documents(score_documents(
            model, tokenizer, group, max_length=cfg.max_length, batch_size=cfg.batch_size, progress=False,
            compute_dtype=runtime.compute_dtype,
        ))
        for key in sums:
            sums[key] += part[key]
    result.update(
        bits_per_char=sums["nll_nats"] / math.log(2) / sums["characters"] if sums["characters"] else float("nan"),
        hangul_bits_per_char=(sums["hangul_nll_nats"] / math.log(2) / sums["hangul_characters"]
                              if sums["hangul_characters"] else float("nan")),
        characters=int(sums["characters"]), hangul_characters=int(sums["hangul_characters"]),
    )
    result.update(
        documents=documents,
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
    if result.get("bits_per_char") is not None:
        typer.echo(f"bits per character {result['bits_per_char']:.4f}  Hangul bits per Hangul character "
                   f"{result['hangul_bits_per_char']:.4f}  (each text alone, no end-of-text target; "
                   f"{result['characters']:,} characters)")
    if cfg.output:
        typer.echo(f"wrote {cfg.output}")
