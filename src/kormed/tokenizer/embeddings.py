"""Model side of an extended tokenizer: resize the embeddings and initialise the new rows.

`resize_and_init_embeddings` is what `kormed train cpt --tokenizer-path DIR` calls after loading the base model:

- the embedding matrix grows to cover the new tokenizer, padded to a multiple of 64 rows (never shrinks);
- each new token's row is the mean of the base model's rows of the pieces the *base* tokenizer makes of the
  token's text (input side; the output side too when the model does not tie them -- Gemma 3 ties them, so the
  lm_head shares the very same tensor and follows);
- padding rows (no token maps to them) are set to the mean of all base rows: their logit is then the average
  logit, far below the log-partition, so they take (almost) no probability mass at step 0.

How the rows then train (PEFT `trainable_token_indices` on the new rows or a `modules_to_save` copy of the whole
matrix, with their own learning rate) is :mod:`kormed.train.model_setup`'s.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kormed.errors import KormedError

SPACE = "\u2581"


def new_token_ids(base_tokenizer: Any, new_tokenizer: Any) -> list[int]:
    """Ids of the tokens the new tokenizer adds; raises if it changed any of the base tokenizer's ids."""
    base_vocab = base_tokenizer.get_vocab()
    new_vocab = new_tokenizer.get_vocab()
    changed = [t for t, i in base_vocab.items() if new_vocab.get(t) != i]
    if changed:
        raise KormedError(
            f"the tokenizer is not an extension of the base tokenizer: {len(changed)} base tokens have other ids "
            f"(e.g. {changed[0]!r})",
            hint="pass a tokenizer written by `kormed tokenizer extend` for this base model",
        )
    base_ids = set(base_vocab.values())
    return sorted(i for i in new_vocab.values() if i not in base_ids)


def token_pieces(base_tokenizer: Any, new_tokenizer: Any, token_id: int) -> list[int]:
    """The base tokenizer's ids for the text of new token `token_id` (its `▁` read as a space)."""
    token = new_tokenizer.convert_ids_to_tokens(token_id)
    text = token.replace(SPACE, " ")
    return list(base_tokenizer(text, add_special_tokens=False)["input_ids"])


def _init_rows(weight: Any, rows: dict[int, list[int]], pad_rows: Iterable[int], n_base: int) -> None:
    import torch

    with torch.no_grad():
        base = weight[:n_base].float()
        mean_all = base.mean(dim=0)
        for row, pieces in rows.items():
            value = base[pieces].mean(dim=0) if pieces else mean_all
            weight[row] = value.to(weight.dtype)
        pad = list(pad_rows)
        if pad:
            weight[pad] = mean_all.to(weight.dtype).expand(len(pad), -1)


def resize_and_init_embeddings(
    model: Any, base_tokenizer: Any, new_tokenizer: Any, pad_to_multiple_of: int = 64
) -> list[int]:
    """Resize `model`'s embeddings for `new_tokenizer` and mean-initialise the new rows; returns the new ids.

    Works on Gemma3ForCausalLM and on multimodal Gemma3ForConditionalGeneration (its language model's
    embeddings). The base rows are never changed, so text without new tokens is encoded and scored as before.
    """
    new_ids = new_token_ids(base_tokenizer, new_tokenizer)
    emb = model.get_input_embeddings()
    old_rows = emb.weight.shape[0]
    n_base = len(base_tokenizer)
    if n_base > old_rows:
        raise KormedError(f"the base tokenizer has {n_base} tokens but the model only {old_rows} embedding rows")
    needed = max(old_rows, len(new_tokenizer))
    if needed > old_rows or old_rows % pad_to_multiple_of:
        # mean_resizing=False: transformers would sample the new rows; we set them deterministically below.
        model.resize_token_embeddings(needed, pad_to_multiple_of=pad_to_multiple_of, mean_resizing=False)
    emb = model.get_input_embeddings()
    rows = emb.weight.shape[0]
    pieces = {i: token_pieces(base_tokenizer, new_tokenizer, i) for i in new_ids}
    bad = [i for i, p in pieces.items() if any(j >= n_base for j in p)]
    if bad:
        raise KormedError(f"internal error: pieces of new token {bad[0]} are not base tokens")
    new_set = set(new_ids)
    pad_rows = [r for r in range(max(old_rows, n_base), rows) if r not in new_set]
    _init_rows(emb.weight, pieces, pad_rows, n_base)
    out = model.get_output_embeddings()
    if out is not None and out.weight.data_ptr() != emb.weight.data_ptr():
        if out.weight.shape[0] != rows:
            raise KormedError("internal error: output embeddings were not resized with the input embeddings")
        _init_rows(out.weight, pieces, pad_rows, n_base)
    return new_ids
