"""CPT's training text to packed blocks in bounded memory, in parallel, cached on disk as memory-mapped Arrow.

The JSONL corpus is cut into line-aligned byte ranges (shards of a few MiB). `datasets.map` with `num_proc`
workers gives each worker whole shards: it reads its byte range straight from the file, parses and checks every
line with kormed's own JSONL reader (:func:`kormed.io.parse_jsonl_lines`, :func:`kormed.io.record_text`), and
tokenizes the texts; the token ids (each document followed by the end-of-document token) land in Arrow files.
The packer then walks those memory-mapped files chunk by chunk and cuts the token stream into `max_length`
blocks with `<bos>` first -- exactly the blocks of :func:`kormed.data.packing.pack_token_stream` -- written to
one Arrow file that training memory-maps. Neither the corpus nor the blocks are ever held in Python memory.

Why not `load_dataset("json")`: pyarrow's JSON reader cannot say which line of a file is bad, infers one schema
for the whole file (an extra field that changes type breaks it) and splits lines on more than `\\n`; kormed's
reader gives the file:line error of every other kormed command and the same texts as :func:`kormed.io.read_texts`.
The text is not copied to disk at all: only the token ids are (about 4 bytes per token).

A bad line is found by the worker that reads it; the error itself is then raised by the sequential reader from
the start of the first shard that was not read cleanly, so it is the very error (file, line, field) that
:func:`kormed.io.read_texts` raises on the same file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from kormed.errors import KormedError
from kormed.io import (
    Log,
    clean_stale_temps,
    iter_jsonl,
    parse_jsonl_lines,
    record_text,
    report_stale,
    temp_dir,
)

CACHE_FORMAT = 2  # the on-disk layout of a packed set (blocks.arrow); part of the cache key
SHARD_BYTES = 4 << 20  # bytes of JSONL per worker task: small enough for bounded memory, large enough to amortise
BLOCKS_FILE = "blocks.arrow"
META_FILE = "kormed_packed.json"

# row kinds of the tokenized intermediate
_DOC, _SHARD_END, _BAD, _SKIPPED = 0, 1, 2, 3


def shard_ranges(path: str | Path, shard_bytes: int = SHARD_BYTES) -> list[tuple[int, int]]:
    """Line-aligned byte ranges [start, end) covering the file, each about `shard_bytes` long."""
    size = Path(path).stat().st_size
    bounds = [0]
    with Path(path).open("rb") as fh:
        while bounds[-1] + shard_bytes < size:
            fh.seek(bounds[-1] + shard_bytes)
            fh.readline()  # to the end of the line the cut fell in
            pos = fh.tell()
            if pos >= size:
                break
            bounds.append(pos)
    bounds.append(size)
    return [(a, b) for a, b in zip(bounds, bounds[1:], strict=False) if b > a] or [(0, 0)]


_SHARED: dict[int, Any] = {}  # objects handed to forked map workers by reference (see _ByReference)


def _lookup(key: int) -> Any:
    return _SHARED[key]


class _ByReference:
    """Hands the tokenizer to `datasets.map`'s forked workers as a key into `_SHARED`, which a forked child
    inherits: pickled in full (the default), a 262k-entry tokenizer costs each worker about 10 s to rebuild.
    Under another start method (spawn) it is pickled whole."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj
        _SHARED[id(obj)] = obj  # before the pool forks: the children inherit the entry

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        import multiprocess

        if multiprocess.get_start_method() == "fork":
            return _lookup_wrapped, (id(self.obj),)
        return _ByReference, (self.obj,)


def _lookup_wrapped(key: int) -> _ByReference:
    return _ByReference(_lookup(key))


def _features() -> Any:
    from datasets import Features, Sequence, Value

    return Features({"ids": Sequence(Value("int32")), "kind": Value("int8"), "shard": Value("int32"),
                     "n": Value("int64")})


def _tokenize_shards(batch: dict[str, list[Any]], *, path: str, field: str, tokenizer: _ByReference, eod_id: int,
                     abort_flag: str | None) -> dict[str, list[Any]]:
    """The `datasets.map` worker: read, check and tokenize whole shards (one output row per non-blank text, then a
    row closing the shard with its blank-text count, or a row marking the first bad line / a shard skipped)."""
    out: dict[str, list[Any]] = {"ids": [], "kind": [], "shard": [], "n": []}

    def row(ids: list[int], kind: int, shard: int, n: int) -> None:
        out["ids"].append(ids)
        out["kind"].append(kind)
        out["shard"].append(shard)
        out["n"].append(n)

    for shard, start, end in zip(batch["shard"], batch["start"], batch["end"], strict=True):
        if abort_flag and os.path.exists(abort_flag):  # a bad line was found: the rest is not needed
            row([], _SKIPPED, shard, 0)
            continue
        with open(path, "rb") as fh:
            fh.seek(start)
            lines = fh.read(end - start).split(b"\n")
        texts: list[str] = []
        blank, bad_line = 0, 0
        try:
            for lineno, record in parse_jsonl_lines(lines, where=path):
                text = record_text(record, field, path, lineno)
                if text.strip():
                    texts.append(text)
                else:
                    blank += 1  # read_texts skips blank texts too
        except KormedError as exc:
            bad_line = exc.line or 1
        for i in range(0, len(texts), 1000):
            for ids in tokenizer.obj(texts[i : i + 1000], add_special_tokens=False)["input_ids"]:
                ids.append(eod_id)
                row(ids, _DOC, shard, 0)
        if bad_line:
            row([], _BAD, shard, bad_line)
            if abort_flag:
                Path(abort_flag).touch()
        else:
            row([], _SHARD_END, shard, blank)
    return out


def _raise_first_error(path: Path, start: int, field: str, what: str) -> None:
    """Re-read the file from byte `start` (a line start) with :func:`kormed.io.iter_jsonl` and raise the first
    error there, numbered as :func:`kormed.io.read_texts` numbers it."""
    newlines = 0
    with path.open("rb") as fh:
        left = start
        while left:
            chunk = fh.read(min(left, 1 << 24))
            if not chunk:
                break
            newlines += chunk.count(b"\n")
            left -= len(chunk)
    for lineno, record in iter_jsonl(path, what=what, start=newlines + 1):
        record_text(record, field, path, lineno)
    raise KormedError("internal error: a worker reported a bad line the reader does not find", path=path)


def tokenize_corpus(path: Path, tokenizer: Any, *, eod_id: int, work: Path, field: str = "text",
                    limit: int | None = None, num_proc: int = 1, what: str = "text file",
                    shard_bytes: int = SHARD_BYTES, log: Log = print) -> tuple[list[Any], dict[str, int]]:
    """Tokenize `path` into Arrow files under `work`; returns (datasets of rows, in file order; counts).

    With `limit` the shards are read in waves of `num_proc` until `limit` texts are in (the first `limit` texts
    are used, as by read_texts), so a small limit on a large corpus reads little of it."""
    from datasets import Dataset

    ranges = shard_ranges(path, shard_bytes)
    wave = len(ranges) if limit is None else max(1, num_proc)
    parts: list[Any] = []
    documents = blank = 0
    w0 = 0
    shared = _ByReference(tokenizer)
    while w0 < len(ranges):
        chunk = ranges[w0 : w0 + wave]
        shards = Dataset.from_dict({"shard": list(range(w0, w0 + len(chunk))), "start": [a for a, _ in chunk],
                                    "end": [b for _, b in chunk]})
        procs = min(num_proc, len(chunk))
        part = shards.map(
            _tokenize_shards, batched=True, batch_size=1, num_proc=procs if procs > 1 else None,
            remove_columns=shards.column_names, features=_features(), desc="tokenize",
            cache_file_name=str(work / f"tokens-{w0:06d}.arrow"), new_fingerprint=f"kormed-tok-{work.name}-{w0}",
            fn_kwargs={"path": str(path), "field": field, "tokenizer": shared, "eod_id": eod_id,
                       "abort_flag": str(work / "bad-line") if limit is None else None},
        )
        kind = np.asarray(part.data.column("kind"))
        problems = np.flatnonzero(kind >= _BAD)
        docs_here = kind == _DOC
        if problems.size:  # the first bad (or unread) shard in file order
            first = int(problems[0])
            before = documents + int(docs_here[:first].sum())
            if limit is None or before < limit:
                _raise_first_error(path, ranges[int(part[first]["shard"])][0], field, what)
        parts.append(part)
        documents += int(docs_here.sum())
        blank += int(np.asarray(part.data.column("n"))[kind == _SHARD_END].sum())
        if limit is not None and documents >= limit:
            break
        w0 += len(chunk)
        wave *= 2  # a limit needs a few waves at most
    _SHARED.clear()
    return parts, {"documents": documents if limit is None else min(documents, limit), "blank_skipped": blank}


def _record_batches(parts: list[Any]) -> Iterator[pa.RecordBatch]:
    """The tokenized rows, in order, read batch by batch from the Arrow files: not through the memory map, whose
    pages would stay counted in this process's RSS until the whole intermediate file had been touched."""
    for part in parts:
        for entry in part.cache_files:
            with pa.OSFile(entry["filename"]) as src:
                yield from pa.ipc.open_stream(src)


def _stream_chunks(parts: list[Any], documents: int) -> Iterator[np.ndarray]:
    """The token stream (ids + EOD of the first `documents` texts) as int32 arrays, one per Arrow record batch."""
    left = documents
    for part in parts:
        for batch in _record_batches([part]):
            if left <= 0:
                return
            kind = batch.column("kind").to_numpy(zero_copy_only=False)
            ids = batch.column("ids")
            doc_rows = np.flatnonzero(kind == _DOC)
            if doc_rows.size > left:  # stop after the `left`-th document
                ids = ids.slice(0, int(doc_rows[left - 1]) + 1)
            left -= min(left, int(doc_rows.size))
            values = ids.flatten()  # other rows hold no ids
            if len(values):
                yield values.to_numpy(zero_copy_only=False)


def iter_block_rows(chunks: Iterable[np.ndarray], *, max_length: int, bos_id: int) -> Iterator[np.ndarray]:
    """Cut the token stream into blocks `[bos] + max_length - 1 tokens` (the last may be shorter), yielded as 2-D
    int32 arrays of whole blocks (one array per chunk that completes any; the short last block alone).

    The same blocks as :func:`kormed.data.packing.pack_token_stream` (which carries the unfinished block from one
    document to the next: the stream cut into equal pieces), done with numpy on whole chunks instead of per token.
    The one cutter of the cached path (:func:`pack_to_arrow`) and of `--streaming` (:mod:`kormed.data.corpus_stream`).
    """
    if max_length < 2:
        raise ValueError("max_length must be at least 2 (BOS plus one token)")
    body = max_length - 1

    def with_bos(rows: np.ndarray) -> np.ndarray:
        full = np.empty((rows.shape[0], rows.shape[1] + 1), dtype=np.int32)
        full[:, 0] = bos_id
        full[:, 1:] = rows
        return full

    carry = np.empty(0, dtype=np.int32)
    for values in chunks:
        stream = np.concatenate([carry, values]) if carry.size else values
        n_full = len(stream) // body
        if n_full:
            yield with_bos(stream[: n_full * body].reshape(n_full, body))
        carry = np.array(stream[n_full * body :], dtype=np.int32)  # a copy, never a view of a mapped file
    if carry.size:
        yield with_bos(carry.reshape(1, -1))


def pack_to_arrow(chunks: Iterator[np.ndarray], out: Path, *, max_length: int, bos_id: int) -> tuple[int, int]:
    """Cut the token stream into blocks (:func:`iter_block_rows`) and write them as an `input_ids` Arrow file;
    returns (blocks, tokens including BOS)."""
    from datasets import Features, Sequence, Value
    from datasets.arrow_writer import ArrowWriter

    blocks = tokens = 0
    with ArrowWriter(features=Features({"input_ids": Sequence(Value("int32"))}), path=str(out)) as writer:
        for full in iter_block_rows(chunks, max_length=max_length, bos_id=bos_id):
            offsets = np.arange(0, full.size + 1, full.shape[1], dtype=np.int64)
            column = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(full.ravel())).cast(
                pa.list_(pa.int32()))
            writer.write_table(pa.table({"input_ids": column}))
            blocks += full.shape[0]
            tokens += full.size
        writer.finalize()
    return blocks, tokens


def dir_bytes(path: Path) -> int:
    """Total size of the files under `path`."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover - the loop always returns


def cache_key(data_sha256: str, tokenizer_sha256: str, settings: dict[str, Any]) -> str:
    """The packed set's cache key: corpus bytes, tokenizer definition, packing settings, cache format."""
    blob = json.dumps([data_sha256, tokenizer_sha256, settings, CACHE_FORMAT], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def load_packed(target: Path) -> Any:
    """The cached blocks, memory-mapped."""
    from datasets import Dataset

    return Dataset.from_file(str(target / BLOCKS_FILE))


def wait_for_packed(target: Path, log: Log = print, poll_s: float = 1.0) -> None:
    """Wait until another process (the main one under `accelerate launch`) has written the packed set `target`.

    A file poll, not a collective barrier: tokenizing a large corpus outlasts the process group's timeout."""
    last = time.monotonic()
    while not (target / META_FILE).is_file():
        time.sleep(poll_s)
        if time.monotonic() - last > 300:
            log(f"[kormed] waiting for the main process to pack the training text into {target}")
            last = time.monotonic()


def build_packed(data: Path, tokenizer: Any, target: Path, *, max_length: int, bos_id: int, eod_id: int,
                 field: str = "text", limit: int | None = None, num_proc: int = 1, what: str = "text file",
                 shard_bytes: int = SHARD_BYTES, log: Log = print) -> dict[str, Any]:
    """Tokenize and pack `data` into the cache directory `target` (built in a temporary directory beside it and
    renamed into place); returns the counts written to its `kormed_packed.json`."""
    root = target.parent
    root.mkdir(parents=True, exist_ok=True)
    report_stale(clean_stale_temps(root), log)  # half-built sets of killed runs (any key)
    start = time.perf_counter()
    with temp_dir(root, target.name) as tmp:
        work = Path(tmp) / "tokens"
        work.mkdir()
        parts, counts = tokenize_corpus(data, tokenizer, eod_id=eod_id, work=work, field=field, limit=limit,
                                        num_proc=num_proc, what=what, shard_bytes=shard_bytes, log=log)
        if counts["documents"] == 0:
            raise KormedError(f"no non-empty '{field}' records in the {what}", path=data,
                              hint=f'expected lines like {{"{field}": "..."}}')
        out = Path(tmp) / "packed"
        out.mkdir()
        blocks, tokens = pack_to_arrow(_stream_chunks(parts, counts["documents"]), out / BLOCKS_FILE,
                                       max_length=max_length, bos_id=bos_id)
        stream = tokens - blocks  # every document token and one EOD per document
        meta = {**counts, "document_tokens": stream - counts["documents"], "blocks": blocks, "tokens": tokens,
                "seconds": round(time.perf_counter() - start, 3), "num_proc": num_proc}
        del parts
        (out / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        os.replace(out, target)
    return meta
