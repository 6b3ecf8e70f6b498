"""Configuration of the training stages: LoRA and Trainer options shared by CPT and SFT, and the `cpt` section.

`LoraOptions` and `TrainOptions` are nested under `lora:` and `train:` in every training section, e.g.

    cpt:
      data: runs/x/corpus/raw_text_mixed.jsonl
      val: runs/x/corpus/raw_text_val.jsonl
      lora: {r: 16, train_embeddings: true}
      train: {batch_size: 2, grad_accum: 16, lr: 2.0e-5}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kormed.config import DEVICE_PATTERN, nested, opt, seed_opt
from kormed.errors import KormedError

# The linear layers of a Gemma 3 decoder block (attention and MLP); the vision tower is never targeted.
# Gradient accumulation steps beyond any real run (the seeds use 16): a larger number is a typo, not a setting.
MAX_GRAD_ACCUM = 65536

GEMMA_LINEAR_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# transformers' optimizer names (OptimizerNames) whose optimizer is bitsandbytes' (8-bit Adam and friends)
_BNB_OPTIM_NAMES = ("adamw_8bit", "lion_8bit", "lion_32bit", "ademamix", "ademamix_8bit")


def uses_bitsandbytes(optim: str) -> bool:
    """Whether the Trainer builds `train.optim` from bitsandbytes (adamw_bnb_8bit, adamw_8bit, paged_*, ...)."""
    return "bnb" in optim or optim.startswith("paged_") or optim in _BNB_OPTIM_NAMES


def report_to_names() -> tuple[str, ...]:
    """What transformers' TrainingArguments accepts in report_to: its integrations' names, plus all and none."""
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    return ("all", "none", *INTEGRATION_TO_CALLBACK)


@dataclass
class LoraOptions:
    """PEFT LoRA settings (rsLoRA by default) and optional embedding training."""

    r: int = opt(16, "LoRA rank. 16 did best of 4, 16 and 64 (rsLoRA scale held) for CPT's medical gain "
                 "and the loop's\nknowledge per unit of forgetting on the embedded 270M (benchmarks/README.md, "
                 "\"LoRA rank\").", bounds=(1, None), aliases=("lora_r",))
    alpha: int = opt(
        32, "LoRA alpha. With rsLoRA the update is scaled by alpha / sqrt(r) instead of alpha / r.", bounds=(1, None),
        aliases=("lora_alpha",),
    )
    dropout: float = opt(0.05, "Dropout on the LoRA input.", bounds=(0, 1, "[)"), aliases=("lora_dropout",))
    use_rslora: bool = opt(
        True, "Rank-stabilised LoRA scaling (alpha / sqrt(r)); stable at higher ranks.", aliases=("use_rslora",)
    )
    target_modules: list[str] = opt(
        list(GEMMA_LINEAR_MODULES),
        "Linear layers that get LoRA adapters, by name; only layers of the language model are matched\n"
        "(a multimodal checkpoint's vision tower is left alone).",
        pattern=(r"[A-Za-z_][A-Za-z0-9_.]*", "a module name such as q_proj"),
        aliases=("target_modules", "lora_target_modules"),
    )
    train_embeddings: bool = opt(
        False,
        "Also train the token embeddings. Gemma ties embed_tokens and lm_head: kormed trains ONE tied matrix\n"
        "(PEFT modules_to_save with ensure_weight_tying), so saving, reloading and merging stay consistent.",
        flags=("--train-embeddings",),
    )
    embedding_rows: Literal["all", "new"] = opt(
        "all",
        "With train_embeddings: 'all' trains the whole embedding matrix; 'new' trains only the rows of tokens\n"
        "added by an extended tokenizer (PEFT trainable_token_indices; far less memory).",
    )
    embedding_lr: float | None = opt(
        None,
        "Learning rate of the embedding parameters. null: a quarter of train.lr for the whole (pretrained) matrix\n"
        "(2-10x smaller is usual); with an extended tokenizer's new rows only (embedding_rows 'new'), 10x\n"
        "train.lr (measured better: docs/commands/tokenizer-extend.md).",
        bounds=(0, None, "()"),
    )

    def validate(self) -> None:
        if not self.target_modules:
            raise KormedError("at least one target module is needed", field="lora.target_modules")


@dataclass
class TrainOptions:
    """HF Trainer settings shared by every training stage (seeds' defaults: batch 2 x accumulation 16, lr 2e-5)."""

    batch_size: int = opt(
        2, "Sequences per device per micro-batch.", bounds=(1, None), flags=("--batch-size",),
        aliases=("per_device_train_batch_size",),
    )
    grad_accum: int = opt(
        16,
        "Gradient accumulation steps for ONE process. Effective batch = batch_size x grad_accum (32 sequences);\n"
        "under `accelerate launch` with N processes the accumulation is divided by N to keep it (see scale_accum).",
        bounds=(1, MAX_GRAD_ACCUM),
        flags=("--grad-accum",),
        aliases=("gradient_accumulation_steps",),
    )
    scale_accum: bool = opt(
        True, "Keep the effective batch constant when processes are added: grad_accum / world_size per process."
    )
    lr: float = opt(2e-5, "Peak learning rate.", bounds=(0, None, "()"), flags=("--lr",), aliases=("learning_rate",))
    warmup_ratio: float = opt(
        0.03, "Fraction of the optimizer steps spent warming the learning rate up linearly (a warm-up under 2\n"
        "steps is dropped, and the log says so: it would only run the first step at learning rate 0).",
        bounds=(0, 1, "[)"),
        aliases=("warmup_ratio",),
    )
    scheduler: str = opt(
        "cosine", "Decay after warmup: cosine, linear, constant_with_warmup (HF scheduler names).",
        choices="transformers.trainer_utils:SchedulerType", aliases=("lr_scheduler_type",),
    )
    weight_decay: float = opt(
        0.0, "AdamW weight decay (not applied to biases, norms or embeddings).", bounds=(0, None),
        aliases=("weight_decay",),
    )
    max_grad_norm: float = opt(
        1.0, "Gradient clipping norm (0: no clipping).", bounds=(0, None), aliases=("max_grad_norm",)
    )
    epochs: float = opt(
        1.0, "Passes over the training data (ignored when max_steps is set).", bounds=(0, None, "()"),
        flags=("--epochs",), aliases=("num_train_epochs",),
    )
    max_steps: int | None = opt(
        None, "Stop after this many optimizer steps (overrides epochs).", bounds=(1, None), flags=("--max-steps",),
        aliases=("max_steps",),
    )
    eval_steps: int = opt(
        50, "Validate every N optimizer steps.", bounds=(1, None), flags=("--eval-steps",), aliases=("eval_steps",)
    )
    save_steps: int | None = opt(
        None, "Checkpoint every N optimizer steps (default: eval_steps).", bounds=(1, None), aliases=("save_steps",)
    )
    save_checkpoints: bool = opt(
        True, "Write periodic checkpoints (off: only the final adapter is saved; nothing to --resume from)."
    )
    save_total_limit: int = opt(
        2, "Checkpoints kept on disk (the best one is always kept).", bounds=(1, None), aliases=("save_total_limit",)
    )
    logging_steps: int = opt(
        10, "Log the training loss every N optimizer steps.", bounds=(1, None), aliases=("logging_steps",)
    )
    eval_batch_size: int | None = opt(
        None, "Sequences per device during validation (default: 2 x batch_size).", bounds=(1, None),
        aliases=("per_device_eval_batch_size",),
    )
    gradient_checkpointing: bool | None = opt(
        None,
        "Recompute activations in the backward pass: less activation memory for about a third more compute.\n"
        "null (auto): on for CUDA (the seeds' setting; GPU memory is the limit), off on CPU (measured 1.6x the\n"
        "tokens/s on the embedded model, benchmarks/README.md). true / false force it.",
        aliases=("gradient_checkpointing",),
    )
    seed: int = seed_opt(
        42, "Seed of the data order, dropout and initialisation.", flags=("--seed",), aliases=("seed",)
    )
    device: str = opt(
        "auto", "auto, cpu, cuda or cuda:N (auto: CUDA when available).", pattern=DEVICE_PATTERN, flags=("--device",)
    )
    dtype: Literal["auto", "float32", "bfloat16"] = opt(
        "auto",
        "Compute precision. auto: bf16 on CUDA, and on a CPU that multiplies bf16 natively (AMX-BF16 /\n"
        "AVX512-BF16 flags; about 3x fp32's rate), else fp32. bf16 = frozen base weights in bf16 + bf16 autocast;\n"
        "on a CPU without native bf16, bf16 weights with fp32 matmuls (each layer's weight upcast for its call).\n"
        "Trainable weights (LoRA, embeddings) always stay fp32 (the optimizer's master weights). Recorded in\n"
        "training_info.json `runtime` (dtype = weights, compute_dtype = matmuls).",
        flags=("--dtype",),
        aliases=("dtype", ("bf16", {True: "bfloat16", False: "float32"})),
    )
    method: Literal["lora", "full"] = opt(
        "lora",
        "What trains. lora: a PEFT LoRA adapter on the frozen base (the output is an adapter directory).\n"
        "full: every language-model weight (embeddings, decoder layers, norms; a multimodal checkpoint's vision\n"
        "tower and projector stay frozen); the trainable weights are held in fp32 (master weights) while the\n"
        "matmuls run in the compute dtype, and the output is a full model directory (model.safetensors, config,\n"
        "tokenizer) that --model takes. Memory: about 16 bytes per trained parameter with AdamW (10 with 8-bit\n"
        "Adam: optim adamw_bnb_8bit). The lora section is ignored; an adapter to continue and --quantize 4bit\n"
        "are refused.",
        flags=("--method",),
    )
    quantize: Literal["none", "4bit"] = opt(
        "none",
        "4bit: QLoRA. The base model's language-model linear layers load as bitsandbytes NF4 (double quantization,\n"
        "bf16 compute; embeddings, lm_head, norms and a vision tower stay unquantized) and LoRA trains on top.\n"
        "Needs `pip install kormed[qlora]`. The adapter records it (kormed_adapter.json): continuing it, SFT from\n"
        "it, the loop, eval and `kormed eval ppl` load its base in 4-bit without being told.",
        flags=("--quantize",),
        aliases=(("load_in_4bit", {True: "4bit", False: "none"}),),
    )
    loss_impl: Literal["auto", "liger", "chunked", "full"] = opt(
        "auto",
        "How the next-token loss is computed. None but 'full' builds the full-vocabulary logits (262K x tokens):\n"
        "the hidden states are projected only where a label is learned. liger: Liger-Kernel's fused linear\n"
        "cross-entropy (CUDA, `pip install kormed[gpu]`); chunked: kormed's token-chunked fused loss (any device);\n"
        "full: the model's logits (reference). auto: liger on CUDA when installed, else chunked.",
    )
    loss_chunk_size: int = opt(
        256,
        "Learned positions per chunk of the chunked loss (a chunk is this many tokens x the vocabulary of logits).",
        bounds=(1, None),
    )
    report_to: list[str] = opt(
        ["tensorboard"],
        "Trainer loggers (transformers' report_to names, or none); TensorBoard logs go to <output>/runs/.",
        choices="kormed.train.config:report_to_names", aliases=("report_to",),
    )
    early_stopping_patience: int | None = opt(
        5, "Stop after this many validations without improvement (seeds: 5-10); null: never stop on patience.",
        bounds=(1, None), aliases=("early_stopping_patience",),
    )
    early_stopping_min_delta: float = opt(
        0.01, "Smallest decrease of the monitored loss that counts as improvement.", bounds=(0, None),
        aliases=("early_stopping_threshold",),
    )
    early_stopping_metric: str = opt(
        "eval_loss", "Metric watched by early stopping and best-checkpoint selection.",
        aliases=("metric_for_best_model",),
    )
    target_perplexity: float | None = opt(
        None, "Stop as soon as validation perplexity falls below this (seeds: 3.0).", bounds=(1, None, "()")
    )
    load_best_at_end: bool = opt(
        True, "Restore the best validated checkpoint before saving the final adapter.",
        aliases=("load_best_model_at_end",),
    )
    eval_on_start: bool = opt(
        True, "Validate once before the first step (the 'before' number).", aliases=("eval_on_start",)
    )
    num_workers: int = opt(0, "DataLoader worker processes.", bounds=(0, None), aliases=("dataloader_num_workers",))
    optim: str = opt(
        "adamw_torch", "HF optimizer name (adamw_torch, adamw_torch_fused, adamw_bnb_8bit, ...). 8-bit Adam\n"
        "(adamw_bnb_8bit; bitsandbytes, `pip install kormed[qlora]`) keeps Adam's two moments in 8 bits: 2 instead\n"
        "of 8 bytes per trained parameter, what full fine-tuning (method full) saves most on.",
        choices="transformers.training_args:OptimizerNames", aliases=("optim",),
    )

    def validate(self) -> None:
        if self.method == "full" and self.quantize == "4bit":
            raise KormedError("--quantize 4bit (QLoRA) trains a LoRA adapter on a frozen 4-bit base; it cannot be "
                              "combined with --method full", field="train.method",
                              hint="drop --quantize for full fine-tuning, or use --method lora")
        if self.quantize == "4bit":
            from kormed.quantization import require_bitsandbytes

            require_bitsandbytes("--quantize 4bit", field="train.quantize")
        if uses_bitsandbytes(self.optim):  # else the Trainer fails with an ImportError when it builds the optimizer
            from kormed.quantization import require_bitsandbytes

            require_bitsandbytes(f"train.optim {self.optim}", field="train.optim")


@dataclass
class CPTConfig:
    """`kormed train cpt`: continued pretraining with LoRA on packed raw Korean text."""

    data: str | None = opt(None, "Training text, JSONL with one {\"text\": ...} per line (kormed prepare output).")
    val: str | None = opt(None, "Held-out validation text, same format.")
    model: str | None = opt(
        None, "Hub id or local model directory; default: the embedded Gemma 3 270M.", aliases=("model_name_or_path",)
    )
    tokenizer_path: str | None = opt(
        None, "Extended tokenizer directory (kormed tokenizer extend); the embeddings are resized and initialised."
    )
    adapter: str | None = opt(None, "Continue training this kormed adapter directory instead of a fresh LoRA.")
    output: str | None = opt(
        None, "Output directory; default: model/00_trained/<model-name>/.", aliases=("output_dir",)
    )
    max_length: int = opt(
        512, "Tokens per packed block (the first is always <bos>).", bounds=(2, None), aliases=("max_seq_length",)
    )
    eod_token: str = opt("<end_of_turn>", "Token appended after every document (seeds: <end_of_turn>; or <eos>).")
    max_samples: int | None = opt(None, "Use only the first N training documents.", bounds=(1, None))
    max_val_samples: int | None = opt(None, "Use only the first N validation documents.", bounds=(1, None))
    num_proc: int | None = opt(
        None, "Tokenization processes, each reading whole 4 MiB shards of the corpus (default: min(8, CPU count)).",
        bounds=(1, None),
    )
    cache_dir: str | None = opt(
        None, "Where the packed blocks are cached as memory-mapped Arrow, about 4 bytes per token (default:\n"
        "<kormed cache>/packed); shared by all processes of an `accelerate launch` run."
    )
    streaming: bool = opt(
        False,
        "Tokenize and pack the training text on the fly instead of into the cache: no disk for the cache, the first\n"
        "step at once, memory independent of the corpus. Prefer it when the free disk is short of what the cache\n"
        "needs (1.12 bytes per corpus byte, about twice that while it is built) or the run must start without a\n"
        "tokenizing pass over the whole corpus (hours at 40 GB). The blocks are the cache's, but trained in file\n"
        "order (a stream is not shuffled) and re-tokenized on every pass and by --resume. Needs max_steps (and\n"
        "train.num_workers 0). Validation is packed in memory from --val (bound it with max_val_samples).",
    )
    resume: bool = opt(False, "Continue from the last checkpoint in <output>/checkpoints with the same data order.")
    embedding_warmup_steps: int = opt(
        0,
        "Embeddings-first phase (with --tokenizer-path): this many optimizer steps on the first training batches\n"
        "train ONLY the new embedding rows (LoRA frozen, every base weight untouched) at embedding_warmup_lr,\n"
        "before the LoRA run (which then runs its own max_steps). 0: no such phase.",
        bounds=(0, None),
    )
    embedding_warmup_lr: float = opt(
        1e-3, "Learning rate (constant) of the embeddings-first phase; new rows want a larger step than LoRA.",
        bounds=(0, None, "()"),
    )
    kormedmcqa_data: str | None = opt(None, "KorMedMCQA JSONL for periodic accuracy checks during CPT (optional).")
    kormedmcqa_every: int = opt(0, "Check KorMedMCQA accuracy every N optimizer steps (0: never).", bounds=(0, None))
    kormedmcqa_limit: int | None = opt(200, "Questions used by each periodic KorMedMCQA check.", bounds=(1, None))
    lora: LoraOptions = nested(LoraOptions, "LoRA adapter settings.")
    train: TrainOptions = nested(TrainOptions, "Trainer settings.")

    def validate(self) -> None:
        if self.train.method == "full" and self.adapter is not None:
            raise KormedError("--adapter continues a LoRA adapter; it cannot be combined with --method full",
                              field="cpt.adapter",
                              hint="to fully fine-tune a model, pass it (e.g. a full model directory) as --model")
        if self.streaming and self.train.max_steps is None:
            raise KormedError("--streaming needs --max-steps: a stream has no length to count epochs in",
                              field="cpt.streaming", hint="add --max-steps N, or drop --streaming to use the cache")
        if self.streaming and self.train.num_workers:
            # a DataLoader worker's error would reach the user as a traceback, not as the reader's file:line error
            raise KormedError("--streaming reads the corpus in the training process: train.num_workers must be 0",
                              field="cpt.train.num_workers")
        if self.eod_token not in ("<end_of_turn>", "<eos>") and not self.eod_token.startswith("<"):
            raise KormedError("must be a special token such as <end_of_turn> or <eos>", field="cpt.eod_token")
