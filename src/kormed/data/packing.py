"""Sequential packing of documents into fixed-length CPT blocks (shared by training and perplexity eval).

Documents are tokenized without special tokens, each followed by the end-of-document token, concatenated,
and cut into blocks of `max_length` tokens of which the first is always `<bos>` (Gemma degrades badly
without it). A long document simply continues in the next block; nothing is truncated or dropped: the
final block may be shorter. This mirrors LLaMA-Factory's stage-pt processor, but with BOS *prepended*
(not overwriting a content token) so that no token is lost.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator


def pack_token_stream(
    documents: Iterable[list[int]], *, max_length: int, bos_id: int, eod_id: int
) -> Iterator[list[int]]:
    """Yield blocks of at most `max_length` ids, each `[bos, ...]`; every document is followed by `eod_id`."""
    if max_length < 2:
        raise ValueError("max_length must be at least 2 (BOS plus one token)")
    body = max_length - 1
    buffer: list[int] = []
    for ids in documents:
        buffer.extend(ids)
        buffer.append(eod_id)
        while len(buffer) >= body:
            yield [bos_id, *buffer[:body]]
            del buffer[:body]
    if buffer:
        yield [bos_id, *buffer]


def pack_documents(
    documents: Iterable[list[int]], *, max_length: int, bos_id: int, eod_id: int
) -> list[list[int]]:
    """List form of :func:`pack_token_stream`."""
    return list(pack_token_stream(documents, max_length=max_length, bos_id=bos_id, eod_id=eod_id))


def resolve_eod_id(tokenizer, eod_token: str) -> int:
    """Token id of the end-of-document marker (default `<end_of_turn>` as in the seeds, or `<eos>`)."""
    from kormed.errors import KormedError

    tid = tokenizer.convert_tokens_to_ids(eod_token)
    if tid is None or tid == tokenizer.unk_token_id:
        raise KormedError(f"end-of-document token {eod_token!r} is not in the tokenizer's vocabulary")
    return int(tid)
