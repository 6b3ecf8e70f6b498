"""CPT's training text tokenized and packed on the fly (`kormed train cpt --streaming`): no disk cache, the first
step as soon as the first few hundred documents are tokenized, memory independent of the corpus size.

The texts come from kormed's guarded JSONL reader (:func:`kormed.io.iter_texts`: a bad line is a KormedError naming
file:line, blank texts are skipped and counted, as on the cached path), are tokenized a batch of documents at a time
(each followed by the end-of-document token) and cut into blocks by the cached path's own cutter
(:func:`kormed.data.corpus_cache.iter_block_rows`): the same blocks in the same order as the cache holds.

The blocks are served as a `datasets.IterableDataset` repeated without end (a stream has no length; the run needs
max_steps), in file order: the Trainer cannot shuffle a stream. Under `accelerate launch` each process reads the whole
stream and keeps its own batches (accelerate's `IterableDatasetShard`: global batch k goes to process k mod N, the
split a sequential sampler gets on the cached path); `--resume` skips the batches already trained on (the Trainer's
`skip_first_batches`), which re-reads and re-tokenizes the corpus up to that point but trains on nothing twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from kormed.data.corpus_cache import iter_block_rows
from kormed.io import Log, iter_texts

DOCS_PER_BATCH = 256  # documents tokenized per tokenizer call: the fast tokenizer's batch speed, little memory


def token_chunks(texts: Iterable[str], tokenizer: Any, *, eod_id: int,
                 counts: dict[str, int] | None = None) -> Iterator[np.ndarray]:
    """The token stream of `texts` (each text's ids, then `eod_id`) as int32 arrays, one per DOCS_PER_BATCH texts.
    `counts` (optional) counts the documents as they are tokenized."""
    counts = counts if counts is not None else {}
    counts.setdefault("documents", 0)

    def encode(batch: list[str]) -> np.ndarray:
        stream: list[int] = []
        for ids in tokenizer(batch, add_special_tokens=False, return_attention_mask=False)["input_ids"]:
            stream.extend(ids)
            stream.append(eod_id)
        counts["documents"] += len(batch)
        return np.array(stream, dtype=np.int32)

    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == DOCS_PER_BATCH:
            yield encode(batch)
            batch = []
    if batch:
        yield encode(batch)


def pack_texts(texts: Iterable[str], tokenizer: Any, *, max_length: int, bos_id: int, eod_id: int,
               counts: dict[str, int] | None = None) -> Iterator[list[int]]:
    """The packed blocks of `texts`, one `[bos, ...]` list at a time (those of :func:`kormed.data.packing.
    pack_documents`), tokenized a batch at a time: memory independent of how many texts there are."""
    chunks = token_chunks(texts, tokenizer, eod_id=eod_id, counts=counts)
    for rows in iter_block_rows(chunks, max_length=max_length, bos_id=bos_id):
        yield from rows.tolist()


def stream_blocks(path: str | Path, tokenizer: Any, *, max_length: int, bos_id: int, eod_id: int,
                  field: str = "text", limit: int | None = None, what: str = "training text",
                  counts: dict[str, int] | None = None) -> Iterator[list[int]]:
    """The packed blocks of the JSONL file `path`: those of :func:`kormed.data.corpus_cache.build_packed`, in the same
    order, without a cache. `counts` receives documents and blank_skipped as the file is read."""
    counts = counts if counts is not None else {}
    counts.update(documents=0, blank_skipped=0)
    blank = [0]
    texts = iter_texts(path, field=field, limit=limit, what=what, blank=blank)
    yield from pack_texts(texts, tokenizer, max_length=max_length, bos_id=bos_id, eod_id=eod_id, counts=counts)
    counts["blank_skipped"] = blank[0]


def _examples(path: str, tokenizer: Any, max_length: int, bos_id: int, eod_id: int, limit: int | None, what: str,
              log: Log) -> Iterator[tuple[int, dict[str, list[int]]]]:
    """One pass over the corpus as (key, example) pairs, for `datasets`' ExamplesIterable."""
    counts: dict[str, int] = {}
    n = 0
    for n, block in enumerate(stream_blocks(path, tokenizer, max_length=max_length, bos_id=bos_id, eod_id=eod_id,
                                            limit=limit, what=what, counts=counts), start=1):
        yield n, {"input_ids": block}
    log(f"[kormed] --streaming: a pass over {path} ended ({counts['documents']} documents, {n} blocks, "
        f"{counts['blank_skipped']} blank texts skipped); the next pass starts from its first line")


def streaming_dataset(path: str | Path, tokenizer: Any, *, max_length: int, bos_id: int, eod_id: int,
                      limit: int | None = None, what: str = "training text", log: Log = print) -> Any:
    """The blocks of `path` as an endless `datasets.IterableDataset` of `input_ids` (pass after pass, in file order).

    Built from an ExamplesIterable rather than `IterableDataset.from_generator`, which fingerprints its arguments
    by pickling them: a 262k-entry tokenizer costs that about 20 s before the first step. Not
    `load_dataset("json", streaming=True)`: pyarrow's reader cannot name a bad line (see corpus_cache)."""
    from datasets import DatasetInfo, Features, IterableDataset, Sequence, Value
    from datasets.iterable_dataset import ExamplesIterable

    kwargs = {"path": str(path), "tokenizer": tokenizer, "max_length": max_length, "bos_id": bos_id,
              "eod_id": eod_id, "limit": limit, "what": what, "log": log}
    features = Features({"input_ids": Sequence(Value("int32"))})
    return IterableDataset(ExamplesIterable(_examples, kwargs), info=DatasetInfo(features=features)).repeat(None)
