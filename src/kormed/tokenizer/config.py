"""Configuration of `kormed tokenizer extend` (YAML section `tokenizer`) and of the CPT-side embedding options."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kormed.config import opt, seed_opt


@dataclass
class TokenizerConfig:
    """Options of the Korean-medical tokenizer extension (`kormed tokenizer extend`)."""

    model: str | None = opt(
        None, "Base model whose tokenizer is extended: hub id, local directory, or null for the embedded Gemma 3 270M."
    )
    corpus: str | None = opt(
        None, "Prepared corpus JSONL ({\"text\": ...} per line), e.g. corpus/raw_text_mixed.jsonl of `kormed prepare`."
    )
    dict: str | None = opt(
        None, "Medical dictionary JSON ([{term, definition}]); its Korean terms become single tokens."
    )
    out: str | None = opt(
        None, "Output directory: the extended HF tokenizer (tokenizer.json) and tokenizer_report.json."
    )
    method: Literal["bpe", "added_tokens"] = opt(
        "bpe",
        "bpe: append vocabulary entries AND merges to the BPE model (continued BPE training on the corpus; a word\n"
        "costs one token with or without its leading space). added_tokens: whole words as added tokens (matched\n"
        "before the model; measured worse, see docs/commands/tokenizer-extend.md).",
    )
    max_new_tokens: int | None = opt(
        None,
        "Most new vocabulary entries in all (dictionary terms first, then the corpus's most frequent Korean\n"
        "sub-words; fewer when the corpus runs out of pairs seen min_frequency times). null: sized to the CPT\n"
        "budget (budget_tokens, else the corpus read): one entry per 30,000 characters, none when that gives fewer\n"
        "than 50, at most 12,000 (kormed.tokenizer.extend.auto_extension_size). Measured on the 270M model: 100\n"
        "entries cost held-out bits per character at every CPT budget tried (3,500, 40,000 and 100,000\n"
        "characters), so small budgets get no extension (docs/commands/tokenizer-extend.md).",
        bounds=(0, None),
    )
    max_dict_tokens: int | None = opt(
        None,
        "Most new entries spent on dictionary terms (part of max_new_tokens; most corpus-frequent terms first).\n"
        "null: a quarter of the entries.",
        bounds=(0, None),
    )
    budget_tokens: int | None = opt(
        None,
        "Tokens (of the base tokenizer) CPT will train on, to size a null max_new_tokens; converted to characters\n"
        "at the corpus's characters per token. null: the corpus read (one epoch). `kormed run` sets it from the\n"
        "cpt section when that stops at max_steps (max_steps x batch_size x grad_accum x max_length).",
        bounds=(0, None),
    )
    min_frequency: int = opt(
        3, "A corpus merge must occur at least this many times in the selection part of the corpus.", bounds=(1, None)
    )
    heldout_fraction: float = opt(
        0.1, "Share of corpus documents held out (never used to select tokens) for the efficiency report.",
        bounds=(0, 1, "()"),
    )
    seed: int = seed_opt(0, "Seed of the held-out split (the same seed and inputs give byte-identical outputs).")
    max_corpus_chars: int = opt(
        200_000_000, "Read at most this many characters of corpus text (the first documents of the file).",
        bounds=(1, None),
    )
    # --- CPT-side options (read by `kormed train cpt --tokenizer-path DIR`) ---
    train_new_rows_only: bool = opt(
        True,
        "CPT: train only the new embedding rows (PEFT trainable_token_indices; tied output side follows), or\n"
        "false: the whole embedding matrix (PEFT modules_to_save with weight tying kept).",
    )
    embedding_lr: float | None = opt(
        None,
        "CPT: learning rate of the trainable embedding parameters. null: 10x the CPT learning rate for the new\n"
        "rows only (at 100,000 training characters it closed 2.6 of the 4.6 points the extension cost at lr/4),\n"
        "a quarter of it for the whole matrix.",
        bounds=(0, None, "()"),
    )

