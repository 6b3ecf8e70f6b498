"""Sequential packing of documents into fixed-length CPT blocks (shared by training and perplexity eval).

Documents are tokenized without special tokens, each followed by the end-of-document token, concatenated,
and cut into blocks of `max_length` tokens of which the first is always `<bos>` (Gemma degrades badly
without it). A long document simply continues in the next block; nothing is truncated or dropped: the
final block may be shorter. This mirrors LLaMA-Factory's stage-pt processor, but with BOS *prepended*
(not overwriting a content token) so that no token is lost.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from kormed.errors import KormedError


def pack_token_stream(
    documents: Iterable[Sequence[int]], *, max_length: int, bos_id: int, eod_id: int
) -> Iterator[list[int]]:
    """Yield blocks of at most `max_length` ids, each `[bos, ...]`; every document is followed by `eod_id`.

    Linear in the number of tokens: each token is copied once (a block is sliced straight out of its document,
    only the unfinished block's tail is carried over), so a document of millions of tokens packs in seconds."""
    if max_length < 2:
        raise ValueError("max_length must be at least 2 (BOS plus one token)")
    body = max_length - 1
    carry: list[int] = []  # the unfinished block (always shorter than `body`)
    for ids in documents:
        n = len(ids)
        pos = 0
        if carry:
            pos = min(body - len(carry), n)
            carry.extend(ids[:pos])
            if len(carry) == body:
                yield [bos_id, *carry]
                carry = []
        if not carry:
            while n - pos >= body:
                block = [bos_id]
                block.extend(ids[pos : pos + body])
                yield block
                pos += body
            carry.extend(ids[pos:n])
        carry.append(eod_id)
        if len(carry) == body:
            yield [bos_id, *carry]
            carry = []
    if carry:
        yield [bos_id, *carry]


def pack_documents(
    documents: Iterable[Sequence[int]], *, max_length: int, bos_id: int, eod_id: int
) -> list[list[int]]:
    """List form of :func:`pack_token_stream`."""
    return list(pack_token_stream(documents, max_length=max_length, bos_id=bos_id, eod_id=eod_id))


def resolve_eod_id(tokenizer, eod_token: str) -> int:
    """Token id of the end-of-document marker (default `<end_of_turn>` as in the seeds, or `<eos>`)."""

    tid = tokenizer.convert_tokens_to_ids(eod_token)
    if tid is None or tid == tokenizer.unk_token_id:
        raise KormedError(f"end-of-document token {eod_token!r} is not in the tokenizer's vocabulary")
    return int(tid)
