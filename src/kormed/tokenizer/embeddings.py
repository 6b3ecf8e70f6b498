"""Model side of an extended tokenizer: resize the embeddings, initialise the new rows, train them in CPT.

`resize_and_init_embeddings` is what `kormed train cpt --tokenizer-path DIR` calls after loading the base model:

- the embedding matrix grows to cover the new tokenizer, padded to a multiple of 64 rows (never shrinks);
- each new token's row is the mean of the base model's rows of the pieces the *base* tokenizer makes of the
  token's text (input side; the output side too when the model does not tie them -- Gemma 3 ties them, so the
  lm_head shares the very same tensor and follows);
- padding rows (no token maps to them) are set to the mean of all base rows: their logit is then the average
  logit, far below the log-partition, so they take (almost) no probability mass at step 0.

`peft_embedding_kwargs` gives the LoraConfig arguments that train the new rows (PEFT `trainable_token_indices`,
which keeps tied weights tied and saves only the new rows) or the whole matrix (`modules_to_save` with
`ensure_weight_tying`), and `embedding_param_groups` gives them their own learning rate.
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


def embedding_module_name(model: Any) -> str:
    """Short name of the input embedding module (`embed_tokens` for Gemma 3), as PEFT matches module names."""
    emb = model.get_input_embeddings()
    for name, module in model.named_modules():
        if module is emb:
            return name.rsplit(".", 1)[-1]
    raise KormedError("internal error: the input embedding module has no name")


def ties_embeddings(model: Any) -> bool:
    """Whether the output projection shares the input embedding matrix (Gemma 3: yes)."""
    out = model.get_output_embeddings()
    return out is not None and out.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def peft_embedding_kwargs(model: Any, new_ids: list[int], train_new_rows_only: bool = True) -> dict[str, Any]:
    """LoraConfig keyword arguments that make the (new) embedding rows trainable next to the LoRA weights.

    `train_new_rows_only=True` uses PEFT's `trainable_token_indices`: only the new rows get a trainable delta
    (the rest of the matrix is frozen and not stored in the adapter), and PEFT wraps a tied lm_head with the same
    delta, so input and output side stay one matrix. This is the library mechanism for what a gradient hook would
    do by hand, and it also keeps the optimiser state and the adapter small. With False the whole matrix is
    trained via `modules_to_save`; `ensure_weight_tying` keeps a tied lm_head tied to that copy (PEFT #2777).
    """
    name = embedding_module_name(model)
    if train_new_rows_only:
        if not new_ids:
            return {}
        return {"trainable_token_indices": {name: list(new_ids)}}
    if ties_embeddings(model):
        return {"modules_to_save": [name], "ensure_weight_tying": True}
    return {"modules_to_save": [name, "lm_head"]}


def is_embedding_param(name: str) -> bool:
    """Whether a (PEFT) parameter name belongs to the trainable embeddings rather than to LoRA."""
    return "trainable_tokens_" in name or (
        "modules_to_save" in name and ("embed_tokens" in name or "lm_head" in name)
    ) or name.endswith(("embed_tokens.weight", "lm_head.weight"))


def embedding_param_groups(
    model: Any, lr: float, embedding_lr: float | None, weight_decay: float = 0.0
) -> list[dict[str, Any]]:
    """Optimizer parameter groups: trainable embedding parameters at `embedding_lr` (no weight decay, so
    frozen-by-zero-gradient rows are not shrunk), every other trainable parameter at `lr`."""
    emb, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (emb if is_embedding_param(name) else rest).append(p)
    groups = [{"params": rest, "lr": lr, "weight_decay": weight_decay}]
    if emb:
        groups.append({"params": emb, "lr": embedding_lr if embedding_lr is not None else lr, "weight_decay": 0.0})
    return groups


def restrict_embedding_grad(model: Any, row_ids: list[int]) -> Any:
    """Without PEFT (full fine-tuning): zero the embedding gradient outside `row_ids`; returns the hook handle.

    Prefer `peft_embedding_kwargs`; use this only when the model is trained without an adapter. Pair it with
    weight_decay 0 for the embedding (see `embedding_param_groups`) or decay still moves the frozen rows.
    """
    import torch

    weight = model.get_input_embeddings().weight
    mask = torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
    mask[list(row_ids)] = 1
    return weight.register_hook(lambda grad: grad * mask)
