"""Model side of an extended tokenizer: resize the embeddings and initialise the new rows.

`resize_and_init_embeddings` is what `kormed train cpt --tokenizer-path DIR` calls after loading the base model:

- the embedding matrix grows to cover the new tokenizer, padded to a multiple of 64 rows (never shrinks);
- each new token's row is the mean of the base model's rows of the pieces the *base* tokenizer makes of the
  token's text (input side; the output side too when the model does not tie them -- Gemma 3 ties them, so the
  lm_head shares the very same tensor and follows);
- padding rows (no token maps to them) are set to the mean of all base rows: their logit is then the average
  logit, far below the log-partition, so they take (almost) no probability mass at step 0.

How the rows then train (PEFT `trainable_token_indices` on the new rows or a `modules_to_save` copy of the whole
matrix, with their own learning rate) is :mod:`kormed.train.engine.model_setup`'s.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kormed.errors import KormedError

# torch, transformers and the kormed modules that load them are imported inside the functions that use them:
# this module is imported by `kormed --help` or by a torch-free command, which must not pay for them.

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


def piece_sequence_stats(model: Any, rows: dict[int, list[int]], bos_id: int, batch_size: int = 64) -> tuple[Any, Any]:
    """Run the base model on `<bos> + pieces` of every new token; returns (mean final hidden state over the
    piece positions, {row: log P(piece_2..piece_k | <bos>, piece_1)}) -- what the `sequence` init needs.

    Only the base rows are read (the pieces are base tokens), so this may run before or after resizing.
    """
    import torch

    items = [(row, pieces) for row, pieces in rows.items() if pieces]
    hidden_sum, count, rest_logprob = None, 0, {}
    was_training = model.training
    model.eval()
    weight = model.get_output_embeddings().weight
    with torch.no_grad():
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            width = 1 + max(len(p) for _, p in chunk)
            ids = torch.zeros(len(chunk), width, dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            for b, (_, pieces) in enumerate(chunk):
                ids[b, 0] = bos_id
                ids[b, 1:1 + len(pieces)] = torch.tensor(pieces)
                mask[b, :1 + len(pieces)] = 1
            out = model(input_ids=ids.to(weight.device), attention_mask=mask.to(weight.device),
                        output_hidden_states=True)
            hidden = out.hidden_states[-1].float()  # after the final norm: what the output projection reads
            logprobs = torch.log_softmax(out.logits.float(), dim=-1)
            for b, (row, pieces) in enumerate(chunk):
                k = len(pieces)
                positions = hidden[b, 1:1 + k]
                hidden_sum = positions.sum(0) if hidden_sum is None else hidden_sum + positions.sum(0)
                count += k
                # position j predicts token j+1: pieces[i] (i >= 1) is predicted at position i
                rest_logprob[row] = float(sum(logprobs[b, i, pieces[i]] for i in range(1, k)))
    model.train(was_training)
    if hidden_sum is None:
        return None, rest_logprob
    return hidden_sum / count, rest_logprob


def _shift_to_sequence_logit(weight: Any, rows: dict[int, list[int]], mean_hidden: Any,
                             rest_logprob: dict[int, float]) -> None:
    """Move each mean-initialised new row along the mean hidden direction u so that, at the mean hidden state h,
    its logit equals the first piece's logit plus log P(rest of the pieces | first piece):
    h . e_new = h . e_first + log P(rest | first), i.e. the new token starts with about the probability the base
    model gives its whole piece sequence (mean-of-pieces alone gives it the average of its pieces' logits)."""
    import torch

    with torch.no_grad():
        h = mean_hidden.to(weight.device)
        norm = h.norm()
        u = h / norm
        for row, pieces in rows.items():
            if not pieces or row not in rest_logprob:
                continue
            current = weight[row].float()
            target = float(h @ weight[pieces[0]].float()) + rest_logprob[row]
            shift = (target - float(h @ current)) / float(norm)
            weight[row] = (current + shift * u).to(weight.dtype)


INIT_METHODS = ("mean", "sequence")


def resize_and_init_embeddings(
    model: Any, base_tokenizer: Any, new_tokenizer: Any, pad_to_multiple_of: int = 64, init: str = "mean"
) -> list[int]:
    """Resize `model`'s embeddings for `new_tokenizer` and initialise the new rows; returns the new ids.

    init `mean`: each new row is the mean of its base pieces' rows. `sequence` (for tied input/output
    embeddings): the mean row moved along the mean hidden direction so that the new token's initial logit is
    its first piece's logit plus the log-probability of the remaining pieces (see _shift_to_sequence_logit).
    Works on Gemma3ForCausalLM and on multimodal Gemma3ForConditionalGeneration (its language model's
    embeddings). The base rows are never changed, so text without new tokens is encoded and scored as before.
    """
    if init not in INIT_METHODS:
        raise KormedError(f"unknown embedding init {init!r}; one of {', '.join(INIT_METHODS)}")
    new_ids = new_token_ids(base_tokenizer, new_tokenizer)
    emb = model.get_input_embeddings()
    old_rows = emb.weight.shape[0]
    n_base = len(base_tokenizer)
    if n_base > old_rows:
        raise KormedError(f"the base tokenizer has {n_base} tokens but the model only {old_rows} embedding rows")
    pieces = {i: token_pieces(base_tokenizer, new_tokenizer, i) for i in new_ids}
    bad = [i for i, p in pieces.items() if any(j >= n_base for j in p)]
    if bad:
        raise KormedError(f"internal error: pieces of new token {bad[0]} are not base tokens")
    stats = None
    if init == "sequence" and pieces:
        stats = piece_sequence_stats(model, pieces, int(base_tokenizer.bos_token_id))  # on the untouched base
    needed = max(old_rows, len(new_tokenizer))
    if needed > old_rows or old_rows % pad_to_multiple_of:
        # mean_resizing=False: transformers would sample the new rows; we set them deterministically below.
        model.resize_token_embeddings(needed, pad_to_multiple_of=pad_to_multiple_of, mean_resizing=False)
    emb = model.get_input_embeddings()
    rows = emb.weight.shape[0]
    new_set = set(new_ids)
    pad_rows = [r for r in range(max(old_rows, n_base), rows) if r not in new_set]
    _init_rows(emb.weight, pieces, pad_rows, n_base)
    out = model.get_output_embeddings()
    untied = out is not None and out.weight.data_ptr() != emb.weight.data_ptr()
    if untied:
        if out.weight.shape[0] != rows:
            raise KormedError("internal error: output embeddings were not resized with the input embeddings")
        _init_rows(out.weight, pieces, pad_rows, n_base)
    if stats is not None and stats[0] is not None:
        # the shift is about the output side; an untied model keeps the mean rows as its input side
        _shift_to_sequence_logit(out.weight if untied else emb.weight, pieces, *stats)
    return new_ids
