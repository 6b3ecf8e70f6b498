"""Configuration of `kormed train sft` (section `sft`, four staged steps) and `kormed train loop` (section `loop`).

Data sources a step can mix (`mix` weights; see :mod:`kormed.data.mixture`):

* `qa`     -- KorMedMCQA training questions in chat format, answer only (`정답: B. ...`).
* `qa_cot` -- the same questions with their reasoning (`cot`) before the answer; a question without `cot`
              renders as in `qa`.
* `dict`   -- the medical dictionary (and the symbol dictionary, `--char-dict`) as chat QA
              (`Meaning of word 고혈압:` -> `Hypertension. ...`).
* `raw`    -- raw Korean text (`<bos>` text `<end_of_turn>`, full loss), as in CPT.

Validation sets, evaluated at every evaluation, each with its own metrics: `eval_qa_loss` (held-out questions,
answer only), `eval_qa_cot_loss` (the same with reasoning; only when held-out questions have `cot`),
`eval_dict_loss`, and `eval_raw_loss` / `eval_raw_perplexity` (token-weighted over packed raw blocks, exactly
as `kormed eval ppl` and CPT compute it). Stop conditions are written over these names
(grammar in :mod:`kormed.train.stop_conditions`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from kormed.config import nested, opt
from kormed.data.chat import ChatTemplates
from kormed.errors import KormedError
from kormed.train.config import LoraOptions, TrainOptions

SOURCES = ("qa", "qa_cot", "dict", "raw")
EVAL_SETS = ("qa", "qa_cot", "dict", "raw")


@dataclass
class SFTStepConfig:
    """One SFT step (or one loop round): its data mix, its stop conditions and its step budget."""

    description: str = opt("", "What this step is for (recorded in training_info.json).")
    mix: dict[str, float] = opt({"qa": 1.0}, "Source -> weight (qa, qa_cot, dict, raw); weights are normalised.")
    mode: Literal["interleave", "concatenate"] = opt(
        "interleave",
        "interleave: a ratio mix sampled by weight (datasets.interleave_datasets, seeded);\n"
        "concatenate: all examples of the listed sources once per pass, shuffled (weights only select sources).",
    )
    stop: list[str] = opt(
        ["eval_qa_loss < 0.3"],
        "Stop conditions, ALL must hold: 'METRIC < X', 'METRIC < F * baseline', 'METRIC ~ F * baseline'\n"
        "(no worse than about F x baseline), 'METRIC maintained' (no worse than at the start of the step).",
    )
    stable_evals: int = opt(1, "The conditions must hold at this many consecutive evaluations (seeds' step 4: 5).")
    stable_metrics: list[str] = opt(
        [], "Metrics whose relative range over those evaluations must stay within stable_tolerance."
    )
    max_steps: int = opt(1000, "Optimizer-step budget: the guard reported as stop_reason 'max_steps'.")
    lr: float | None = opt(None, "Learning rate of this step (default: train.lr).")

    def validate_step(self, name: str) -> None:
        from kormed.data.mixture import normalise_weights
        from kormed.train.stop_conditions import parse_condition

        for source in self.mix:
            if source not in SOURCES:
                raise KormedError(f"unknown source '{source}' (known: {', '.join(SOURCES)})",
                                  field=f"{name}.mix.{source}")
        try:
            normalise_weights(self.mix)
        except KormedError as exc:
            raise KormedError(exc.message, field=f"{name}.{exc.field}") from None
        if not self.stop:
            raise KormedError("at least one stop condition is needed", field=f"{name}.stop")
        for i, text in enumerate(self.stop):
            parse_condition(text, field_name=f"{name}.stop[{i}]")
        if self.stable_evals < 1:
            raise KormedError("must be at least 1", field=f"{name}.stable_evals")
        if self.max_steps < 1:
            raise KormedError("must be at least 1", field=f"{name}.max_steps")


def _step(help_text: str, **values) -> dataclasses.Field:
    return dataclasses.field(default_factory=lambda: SFTStepConfig(**values), metadata={"help": help_text})


def _sft_train_options() -> TrainOptions:
    # SFT stops on its own conditions: the engine's early stopping is switched off (see SFTConfig.train help).
    return TrainOptions(load_best_at_end=False, early_stopping_patience=1_000_000)


@dataclass
class SFTConfig:
    """`kormed train sft`: four staged chat-format SFT steps with answer-only loss and stop conditions."""

    mcq: str | None = opt(None, "KorMedMCQA training questions (JSONL, the seeds' train.jsonl).")
    dict: str | None = opt(None, "Medical dictionary, JSON array of {term, definition}.")
    char_dict: str | None = opt(None, "Symbol dictionary, same format (optional; joins the 'dict' source).")
    raw: str | None = opt(None, "Raw Korean text, JSONL with one {\"text\": ...} per line (kormed prepare output).")
    raw_val: str | None = opt(
        None, "Held-out raw Korean text for the perplexity checks (default: held out from --raw)."
    )
    model: str | None = opt(None, "Hub id or local model directory; default: the embedded Gemma 3 270M.")
    from_adapter: str | None = opt(
        None, "Start step 1 from this kormed adapter (e.g. the CPT adapter); default: a fresh LoRA."
    )
    output: str | None = opt(None, "Output directory: baseline.json, step1/ ... step4/, sft_summary.json.")
    from_step: int = opt(1, "Resume at this step (1-4), starting from <output>/step{N-1}/ (its adapter).")
    max_steps_per_step: int | None = opt(None, "Override every step's max_steps (quick runs).")
    max_length: int = opt(512, "Tokens per example (chat examples: prompt truncated from the left; raw: split).")
    padding_free: bool = opt(
        True,
        "Training micro-batches without padding: the batch_size examples are flattened into one row, position\n"
        "ids restart at 0 for each and no example attends to another (same losses as padded rows, less\n"
        "compute). false: pad each micro-batch to its longest example. Validation is always padded.",
    )
    val_fraction: float = opt(0.05, "Fraction of each source held out for validation (at least 1 record).")
    val_max: int = opt(200, "At most this many held-out records per source.")
    raw_max_texts: int = opt(50000, "Use the first N texts of --raw for training (raw is only step 4's 40 %).")
    raw_val_max_texts: int = opt(200, "At most this many held-out raw texts for the perplexity checks.")
    eod_token: str = opt("<end_of_turn>", "End-of-document token of raw text (as in CPT).")
    stopping_strategy: Literal["all_exhausted", "first_exhausted"] = opt(
        "all_exhausted",
        "Interleaved mixes: all_exhausted oversamples the smaller sources until every example was drawn once;\n"
        "first_exhausted stops the mix when the first source runs out.",
    )
    maintain_tolerance: float = opt(
        0.02, "'maintained' = at most (1 + this) x the metric at the start of the step (lower is always fine)."
    )
    approx_tolerance: float = opt(0.02, "'~ F * baseline' = at most F x baseline x (1 + this).")
    stable_tolerance: float = opt(
        0.05, "'stable' = (max - min) / min of each stable metric over the last stable_evals evaluations <= this."
    )
    step1: SFTStepConfig = _step(
        "Step 1, QA + examples: dictionary QA and MCQ answers in chat format.",
        description="QA + examples",
        mix={"qa": 0.5, "dict": 0.5},
        stop=["eval_qa_loss < 0.3", "eval_raw_perplexity < 1.03 * baseline"],
    )
    step2: SFTStepConfig = _step(
        "Step 2, QA + examples, more data: all dictionary QA, all MCQ answers and all MCQ with reasoning.",
        description="QA + examples (more data)",
        mix={"qa": 1.0, "qa_cot": 1.0, "dict": 1.0},
        mode="concatenate",
        stop=["eval_qa_loss < 0.2", "eval_raw_perplexity maintained"],
    )
    step3: SFTStepConfig = _step(
        "Step 3, QA 70 % + dictionary 30 %.",
        description="QA + examples + dictionary",
        mix={"qa_cot": 0.7, "dict": 0.3},
        stop=["eval_qa_loss < 0.2", "eval_dict_loss < 0.3", "eval_raw_perplexity maintained"],
    )
    step4: SFTStepConfig = _step(
        "Step 4, QA 40 % + dictionary 20 % + raw Korean 40 % (against forgetting).",
        description="QA + examples + dictionary + raw Korean text",
        mix={"qa_cot": 0.4, "dict": 0.2, "raw": 0.4},
        stop=["eval_qa_loss < 0.2", "eval_raw_perplexity ~ 1.1 * baseline"],
        stable_evals=5,
        stable_metrics=["eval_qa_loss", "eval_raw_perplexity"],
    )
    templates: ChatTemplates = nested(ChatTemplates, "Chat prompt/answer templates.")
    lora: LoraOptions = nested(LoraOptions, "LoRA settings of a fresh adapter (ignored with from_adapter).")
    train: TrainOptions = dataclasses.field(
        default_factory=_sft_train_options,
        metadata={"help": "Trainer settings shared by the steps. Each step's max_steps/lr override them;\n"
                          "early stopping is off (the stop conditions decide) and the final adapter is the\n"
                          "last one (load_best_at_end false)."},
    )

    def steps(self) -> list[tuple[int, SFTStepConfig]]:
        return [(1, self.step1), (2, self.step2), (3, self.step3), (4, self.step4)]

    def validate(self) -> None:
        if not 1 <= self.from_step <= 4:
            raise KormedError("must be 1, 2, 3 or 4", field="sft.from_step")
        if self.max_length < 16:
            raise KormedError("must be at least 16", field="sft.max_length")
        if self.max_steps_per_step is not None and self.max_steps_per_step < 1:
            raise KormedError("must be at least 1", field="sft.max_steps_per_step")
        for name in ("maintain_tolerance", "approx_tolerance", "stable_tolerance"):
            if getattr(self, name) < 0:
                raise KormedError("must be >= 0", field=f"sft.{name}")
        for n, step in self.steps():
            step.validate_step(f"sft.step{n}")


@dataclass
class LoopConfig:
    """`kormed train loop`: alternate dictionary SFT (train_01) and MCQ-with-reasoning SFT (train_02) rounds,
    measuring KorMedMCQA accuracy (chat mode) after each, until the target accuracy or max_rounds."""

    mcq: str | None = opt(None, "KorMedMCQA training questions (JSONL).")
    dict: str | None = opt(None, "Medical dictionary, JSON array of {term, definition}.")
    char_dict: str | None = opt(None, "Symbol dictionary (optional; joins the dictionary rounds).")
    raw: str | None = opt(None, "Raw Korean text JSONL (optional): its held-out part is reported as perplexity.")
    raw_val: str | None = opt(None, "Held-out raw Korean text (default: held out from --raw).")
    eval_data: str | None = opt(None, "KorMedMCQA questions the accuracy is measured on (the seeds' test.jsonl).")
    model: str | None = opt(None, "Hub id or local model directory; default: the embedded Gemma 3 270M.")
    from_adapter: str | None = opt(None, "Start from this kormed adapter (e.g. SFT step4/); default: a fresh LoRA.")
    output: str | None = opt(None, "Output directory: round01/ ..., best/, loop_table.json, loop_table.md.")
    target: float = opt(0.9, "Stop once KorMedMCQA accuracy reaches this (0-1).")
    max_rounds: int = opt(6, "At most this many rounds (dictionary and MCQ rounds alternate, dictionary first).")
    first_round: Literal["dict", "mcq"] = opt("dict", "Which kind of round comes first.")
    eval_mode: Literal["chat", "generate", "loglik"] = opt("chat", "KorMedMCQA scoring mode after each round.")
    eval_limit: int | None = opt(None, "Score only the first N questions of --eval-data (quick runs).")
    eval_batch_size: int = opt(8, "Questions per generation batch.")
    eval_max_new_tokens: int = opt(256, "Generation budget in chat mode (the reasoning comes before '정답: X').")
    eval_before: bool = opt(True, "Also measure the accuracy before the first round (round 0).")
    max_steps_per_round: int | None = opt(None, "Override both rounds' max_steps (quick runs).")
    max_length: int = opt(512, "Tokens per training example.")
    padding_free: bool = opt(True, "As sft.padding_free: training micro-batches flattened into one row, no padding.")
    val_fraction: float = opt(0.05, "Fraction of each source held out for the per-round validation losses.")
    val_max: int = opt(200, "At most this many held-out records per source.")
    raw_max_texts: int = opt(50000, "Use the first N texts of --raw.")
    raw_val_max_texts: int = opt(200, "At most this many held-out raw texts.")
    eod_token: str = opt("<end_of_turn>", "End-of-document token of raw text.")
    stopping_strategy: Literal["all_exhausted", "first_exhausted"] = opt(
        "all_exhausted", "Interleaving strategy of mixed rounds (see sft.stopping_strategy)."
    )
    maintain_tolerance: float = opt(0.02, "As sft.maintain_tolerance.")
    approx_tolerance: float = opt(0.02, "As sft.approx_tolerance.")
    stable_tolerance: float = opt(0.05, "As sft.stable_tolerance.")
    dict_round: SFTStepConfig = _step(
        "A dictionary round (train_01): medical + symbol dictionary QA.",
        description="train_01: medical dictionary SFT",
        mix={"dict": 1.0},
        stop=["eval_dict_loss < 0.3"],
        max_steps=300,
    )
    mcq_round: SFTStepConfig = _step(
        "An exam round (train_02): MCQ with reasoning.",
        description="train_02: MCQ with reasoning SFT",
        mix={"qa_cot": 1.0},
        stop=["eval_qa_loss < 0.2"],
        max_steps=300,
    )
    templates: ChatTemplates = nested(ChatTemplates, "Chat prompt/answer templates (the eval uses mcq_prompt).")
    lora: LoraOptions = nested(LoraOptions, "LoRA settings of a fresh adapter (ignored with from_adapter).")
    train: TrainOptions = dataclasses.field(
        default_factory=_sft_train_options,
        metadata={"help": "Trainer settings of every round (early stopping off; each round's max_steps/lr win)."},
    )

    def validate(self) -> None:
        if not 0.0 < self.target <= 1.0:
            raise KormedError("must be in (0, 1]", field="loop.target")
        if self.max_rounds < 1:
            raise KormedError("must be at least 1", field="loop.max_rounds")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise KormedError("must be at least 1", field="loop.eval_limit")
        if self.max_steps_per_round is not None and self.max_steps_per_round < 1:
            raise KormedError("must be at least 1", field="loop.max_steps_per_round")
        if self.max_length < 16:
            raise KormedError("must be at least 16", field="loop.max_length")
        self.dict_round.validate_step("loop.dict_round")
        self.mcq_round.validate_step("loop.mcq_round")
