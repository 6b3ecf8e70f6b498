"""Model preparation for training: load the base model (or continue an adapter), grow the embeddings to an
extended tokenizer, choose which embedding rows train, wrap the language model's linear layers in PEFT LoRA,
keep trainable copies in fp32, and count parameters.

Embedding training is PEFT's: the new rows only (`trainable_token_indices`) or one whole trainable copy
(`modules_to_save`), with `ensure_weight_tying` on Gemma's tied embed_tokens/lm_head, so a saved adapter
reloads and merges to the same model; the optimizer gives those parameters their own learning rate
(:func:`embedding_param_groups`). The initialisation of new rows is :mod:`kormed.embeddings`'s.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import set_seed

from kormed.embeddings import resize_and_init_embeddings
from kormed.errors import KormedError
from kormed.io import Log
from kormed.models import (
    RuntimeSpec,
    is_multimodal,
    language_model_prefix,
    load_model,
    load_model_and_tokenizer,
    load_tokenizer,
    pick_runtime,
    resolve_model,
)
from kormed.quantization import model_label, prepare_for_kbit_training
from kormed.train.config import LoraOptions, TrainOptions


def lora_target_regex(model: Any, modules: Sequence[str]) -> str:
    """A PEFT target_modules regex (full match) selecting `modules` in the language model only."""
    names = "|".join(re.escape(m) for m in modules)
    if is_multimodal(model.config):
        return rf".*language_model.*\.({names})"
    return rf".*\.({names})"


def check_target_modules(model: Any, modules: Sequence[str]) -> None:
    """Each of `modules` (lora.target_modules) names a linear layer of the language model; a name that matches none
    (a typo, another architecture's name) is one line listing the layers there are, before PEFT sees it (PEFT raises
    NoMatchingPeftModuleError for none matching, and silently trains less for one name of several)."""
    prefix = language_model_prefix(model)
    linear = [name for name, mod in model.named_modules()
              if isinstance(getattr(mod, "in_features", None), int) and re.fullmatch(prefix, name)]
    for m in modules:
        if not any(re.fullmatch(lora_target_regex(model, [m]), name) for name in linear):
            names = ", ".join(sorted({n.rsplit(".", 1)[-1] for n in linear})) or "none"
            raise KormedError(f"{m!r} matches no linear layer of the language model; its linear layers are: {names}",
                              field="lora.target_modules")


def embeddings_tied(model: Any) -> bool:
    """Whether the output projection shares its weight with the input embeddings (Gemma: yes)."""
    out = model.get_output_embeddings()
    return out is not None and out.weight is model.get_input_embeddings().weight


def grow_embeddings(model: Any, base_tokenizer: Any, tokenizer: Any, log: Log = print) -> list[int]:
    """Resize the embeddings to an extended tokenizer (mean-of-pieces rows, padded to a multiple of 64,
    :func:`kormed.embeddings.resize_and_init_embeddings`); return the ids of the new tokens."""
    base_n, new_n = len(base_tokenizer), len(tokenizer)
    if new_n < base_n:
        raise KormedError(f"the tokenizer has fewer tokens ({new_n}) than the model's base tokenizer ({base_n})")
    rows = model.get_input_embeddings().weight.shape[0]
    new_ids = list(resize_and_init_embeddings(model, base_tokenizer, tokenizer, pad_to_multiple_of=64))
    grown = model.get_input_embeddings().weight.shape[0]
    if grown != rows or new_ids:
        log(f"[kormed] embeddings resized: {rows} -> {grown} rows ({len(new_ids)} new tokens)")
    return new_ids


def embedding_module_name(model: Any) -> str:
    """Short name of the input embedding module (`embed_tokens` for Gemma 3), as PEFT matches module names."""
    emb = model.get_input_embeddings()
    for name, module in model.named_modules():
        if module is emb:
            return name.rsplit(".", 1)[-1]
    raise KormedError("internal error: the input embedding module has no name")


def peft_embedding_kwargs(model: Any, new_ids: Sequence[int], train_new_rows_only: bool = True) -> dict[str, Any]:
    """LoraConfig keyword arguments that make embedding rows trainable next to the LoRA weights.

    `train_new_rows_only=True` (`lora.embedding_rows: new`): PEFT's `trainable_token_indices` trains a delta for
    the new rows only (the rest of the matrix stays frozen and out of the adapter; a tied lm_head is wrapped with
    the same delta). False (`all`): the whole matrix is trained as a `modules_to_save` copy (and `lm_head` too when
    it is not tied). With tied embeddings `ensure_weight_tying` keeps the output side on the trained rows.
    """
    name = embedding_module_name(model)
    tied = embeddings_tied(model)
    if train_new_rows_only:
        if not new_ids:
            raise KormedError(
                "lora.embedding_rows 'new' needs an extended tokenizer (--tokenizer-path) with new tokens",
                field="lora.embedding_rows",
            )
        kwargs: dict[str, Any] = {"trainable_token_indices": {name: list(new_ids)}}
    else:
        kwargs = {"modules_to_save": [name] if tied else [name, "lm_head"]}
    if tied:
        kwargs["ensure_weight_tying"] = True
    return kwargs


def is_embedding_param(name: str) -> bool:
    """Whether a (PEFT) parameter name belongs to the trained embeddings rather than to LoRA."""
    return "embed_tokens" in name or "lm_head" in name or "trainable_tokens" in name


def embedding_param_groups(
    model: Any, lr: float, embedding_lr: float | None = None, weight_decay: float = 0.0,
    decay_names: Collection[str] | None = None,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups of the trainable parameters: the non-embedding ones at `lr` (with
    `weight_decay` when named in `decay_names`, every one when None; without otherwise), the embedding ones at
    `embedding_lr` (default lr / 4) without weight decay. Empty groups are left out."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    rest = [(n, p) for n, p in named if not is_embedding_param(n)]
    emb = [p for n, p in named if is_embedding_param(n)]
    decayed = None if decay_names is None else set(decay_names)
    decays = (lambda n: True) if decayed is None else (lambda n: n in decayed)
    groups = [
        {"params": [p for n, p in rest if decays(n)], "lr": lr, "weight_decay": weight_decay},
        {"params": [p for n, p in rest if not decays(n)], "lr": lr, "weight_decay": 0.0},
        {"params": emb, "lr": embedding_lr or lr * 0.25, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def use_gradient_checkpointing(options: TrainOptions, device: str) -> bool:
    """`train.gradient_checkpointing`, with null (auto) resolved: on for CUDA, off on CPU."""
    if options.gradient_checkpointing is not None:
        return bool(options.gradient_checkpointing)
    return str(device).startswith("cuda")


def upcast_trainable_copies(model: Any) -> int:
    """Keep every trainable parameter in fp32 on a bf16/fp16 base; returns how many were cast.

    PEFT makes LoRA weights fp32 already, but a `modules_to_save` embedding copy and `trainable_token_indices`
    rows keep the base dtype, and Adam steps of lr/4 are below bf16's spacing: in bf16 those rows barely move.
    Mixed precision (autocast) then runs the matmuls in bf16 while the optimizer updates fp32 master weights.
    """
    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype in (torch.bfloat16, torch.float16):
            param.data = param.data.float()
            cast += 1
    return cast


def format_count(n: int) -> str:
    """1_590_000_000 -> '1.59B', 2_949_120 -> '2.95M'."""
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def count_parameters(model: Any) -> dict[str, Any]:
    """Trainable and total parameters (PEFT's count; a plain model's own) and the seeds' display form
    '1.59B (26.78%)'."""
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
    else:  # full fine-tuning: a tied embedding/lm_head matrix is one parameter (parameters() yields it once)
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    pct = 100.0 * trainable / total if total else 0.0
    return {
        "trainable_params": int(trainable),
        "total_params": int(total),
        "trainable_percent": round(pct, 4),
        "trainable": f"{format_count(int(trainable))} ({pct:.2f}%)",
    }


def freeze_all_but_language_model(model: Any) -> list[str]:
    """Full fine-tuning: every parameter of the language model (embeddings, decoder layers, norms; a tied lm_head
    is the embedding matrix) trains, anything else (a multimodal checkpoint's vision tower and multimodal
    projector) is frozen. Returns the names of the frozen parameters."""
    frozen = []
    multimodal = is_multimodal(model.config)
    for name, param in model.named_parameters():
        language = not multimodal or "language_model" in name or name.startswith("lm_head")
        param.requires_grad_(language)
        if not language:
            frozen.append(name)
    return frozen


def prepare_full_model(
    model_name: str | None,
    runtime: RuntimeSpec,
    tokenizer_path: str | Path | None = None,
    log: Log = print,
    tokenizer: Any = None,
) -> tuple[Any, Any, dict[str, Any]]:
    """`train.method full`: load the model (a base or an earlier full fine-tune's directory) for full fine-tuning.

    The embeddings grow to an extended tokenizer as for LoRA (:func:`grow_embeddings`); every language-model weight
    trains and is held in fp32 (the optimizer's master weights; the Trainer's bf16 autocast runs the matmuls in
    bf16 on a bf16 run), a vision tower and projector stay frozen in the loaded dtype. Returns (model, tokenizer,
    info) like :func:`prepare_model_for_training`.
    """
    model_path = resolve_model(model_name, log=log)
    base_tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model_path)
    tokenizer = load_tokenizer(str(tokenizer_path)) if tokenizer_path is not None else base_tokenizer
    model = load_model(model_path, runtime)
    new_ids = grow_embeddings(model, base_tokenizer, tokenizer, log=log) if tokenizer_path is not None else []
    frozen = freeze_all_but_language_model(model)
    upcast_trainable_copies(model)
    counts = count_parameters(model)
    log(f"[kormed] full fine-tuning: trainable params {counts['trainable']} of {format_count(counts['total_params'])}"
        + (f" ({len(frozen)} vision-tower/projector tensors frozen)" if frozen else ""))
    info = {
        "model": model_name or "embedded",
        "model_path": model_path,
        "method": "full",
        "multimodal": is_multimodal(model.config),
        "adapter_init": None,
        "tokenizer": {
            "path": str(tokenizer_path) if tokenizer_path is not None else model_path,
            "vocab_size": len(tokenizer),
            "new_tokens": len(new_ids),
        },
        "lora": None,
        "embeddings_tied": embeddings_tied(model),
        "frozen_params": len(frozen),
        "quantization": model_label(model),
        "runtime": dataclasses.asdict(runtime),
        **counts,
    }
    return model, tokenizer, info


def target_module_names(target_modules: str | Sequence[str] | None) -> list[str]:
    """The module names a PEFT target_modules holds: a list, or a regex of :func:`lora_target_regex`'s shape."""
    if isinstance(target_modules, str):
        found = re.search(r"\(([^()]*)\)$", target_modules)
        return sorted({n.replace("\\", "") for n in found.group(1).split("|")}) if found else [target_modules]
    return sorted(set(target_modules or []))


def lora_settings_not_used(lora: LoraOptions, adapter_config: Any) -> str:
    """The `lora` settings that differ from a continued adapter's PEFT config, as `name X (adapter: Y)` items."""
    pairs = {"r": (lora.r, adapter_config.r), "alpha": (lora.alpha, adapter_config.lora_alpha),
             "dropout": (lora.dropout, adapter_config.lora_dropout),
             "use_rslora": (lora.use_rslora, adapter_config.use_rslora),
             "target_modules": (sorted(set(lora.target_modules)), target_module_names(adapter_config.target_modules))}
    return ", ".join(f"{name} {mine} (adapter: {theirs})" for name, (mine, theirs) in pairs.items()
                     if mine != theirs)


def prepare_model_for_training(
    model_name: str | None,
    adapter: str | Path | None = None,
    lora: LoraOptions | None = None,
    runtime: RuntimeSpec | None = None,
    tokenizer_path: str | Path | None = None,
    log: Log = print,
    seed: int | None = None,
    tokenizer: Any = None,
    quantize: str = "none",
) -> tuple[Any, Any, dict[str, Any]]:
    """Load the base model and text tokenizer, and wrap the model in a trainable PEFT LoRA adapter.

    - `adapter`: continue training an existing kormed adapter (its config wins over `lora`; its tokenizer/
      is used and the embeddings are resized to it).
    - `tokenizer_path`: an extended tokenizer; the embeddings grow to it (see :func:`grow_embeddings`).
    - LoRA (rsLoRA by default) goes on the language model's linear layers only (never a vision tower).
    - `lora.train_embeddings`: with Gemma's tied embed_tokens/lm_head, ONE tied trainable copy is trained
      (PEFT `modules_to_save` + `ensure_weight_tying`), or only the new rows (`embedding_rows='new'`,
      PEFT `trainable_token_indices`), so a saved adapter reloads and merges to the same model.

    `tokenizer`: the base model's tokenizer when the caller already loaded it (loading the 262K-token Gemma
    tokenizer takes seconds). `seed` seeds the LoRA initialisation (same seed -> same initial adapter on every
    process and every rerun). `quantize` "4bit": QLoRA on an NF4 base (:mod:`kormed.quantization`); an adapter
    trained on a 4-bit base is continued on one whatever `quantize` says (its kormed_adapter.json records it).

    Returns (peft_model, tokenizer, info) where info records model, tokenizer, LoRA settings, runtime and the
    trainable-parameter count (printed like the seeds: "trainable params: 1.59B (26.78%)").
    """
    lora = lora or LoraOptions()
    runtime = runtime or pick_runtime("auto")
    new_ids: list[int] = []
    if adapter is not None:
        if tokenizer_path is not None:
            raise KormedError(
                "--tokenizer-path cannot be combined with continuing an adapter (the adapter has its tokenizer/)"
            )
        model, tokenizer, runtime = load_model_and_tokenizer(
            model_name, adapter=adapter, runtime=runtime, trainable_adapter=True, log=log,
            quantize="4bit" if quantize == "4bit" else None,  # None: as the adapter was trained
        )
        model_path = str(model.base_model.model.config.name_or_path or model_name)
        log(f"[kormed] continuing adapter {adapter} (its LoRA settings are kept)")
        unused = lora_settings_not_used(lora, model.peft_config[model.active_adapter])
        if unused:
            log(f"[kormed] this config's LoRA settings that differ from the adapter's are not used: {unused} "
                "(the rank and scale are those the adapter was created with)")
    else:
        model_path = resolve_model(model_name, log=log)
        base_tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model_path)
        tokenizer = load_tokenizer(str(tokenizer_path)) if tokenizer_path is not None else base_tokenizer
        base = load_model(model_path, runtime, quantize=quantize)
        if tokenizer_path is not None:
            new_ids = grow_embeddings(base, base_tokenizer, tokenizer, log=log)
        if quantize == "4bit":
            base = prepare_for_kbit_training(base)
            log("[kormed] QLoRA: language-model linear layers in 4-bit NF4 (bf16 compute)")
        check_target_modules(base, lora.target_modules)
        kwargs = (peft_embedding_kwargs(base, new_ids, train_new_rows_only=lora.embedding_rows == "new")
                  if lora.train_embeddings else {})
        config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            use_rslora=lora.use_rslora,
            target_modules=lora_target_regex(base, lora.target_modules),
            task_type="CAUSAL_LM",
            bias="none",
            **kwargs,
        )
        if seed is not None:
            set_seed(seed)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ensure_weight_tying.*")
            model = get_peft_model(base, config)
    upcast_trainable_copies(model)
    counts = count_parameters(model)
    log(f"[kormed] trainable params: {counts['trainable']} of {format_count(counts['total_params'])}")
    info = {
        "model": model_name or "embedded",
        "model_path": model_path,
        "method": "lora",
        "multimodal": is_multimodal(model.base_model.model.config),
        "adapter_init": str(adapter) if adapter is not None else None,
        "tokenizer": {
            "path": str(tokenizer_path) if tokenizer_path is not None else model_path,
            "vocab_size": len(tokenizer),
            "new_tokens": len(new_ids),
        },
        "lora": dataclasses.asdict(lora),
        "embeddings_tied": embeddings_tied(model.base_model.model),
        "quantization": model_label(model),
        "runtime": dataclasses.asdict(runtime),
        **counts,
    }
    return model, tokenizer, info
