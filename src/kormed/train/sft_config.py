"""Configuration of `kormed train sft` (section `sft`: a list of staged steps, default the seeds' four) and
`kormed train loop` (section `loop`: rounds cycled until a target accuracy). Both are one recipe
(:mod:`kormed.train.sft`): read the data, measure the baseline, then for each step (or round) train, check its
stop conditions, save.

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
from typing import ClassVar, Literal

from kormed.config import nested, opt, seed_opt
from kormed.data.chat import ChatTemplates
from kormed.data.mixture import normalise_weights
from kormed.errors import KormedError
from kormed.eval.config import DEFAULT_KNOWLEDGE_SCORING, KNOWLEDGE_SCORING_HELP
from kormed.train.config import LoraOptions, TrainOptions
from kormed.train.stop_conditions import Tolerances, parse_condition

SOURCES = ("qa", "qa_cot", "dict", "raw")
EVAL_SETS = ("qa", "qa_cot", "dict", "raw")


@dataclass
class SFTStepConfig:
    """One SFT step (or one loop round): its data mix, its stop conditions and its step budget."""

    name: str = opt("step", "Short name of the step (logs, training_info.json; a loop round's directory suffix).")
    description: str = opt("", "What this step is for (recorded in training_info.json).")
    mix: dict[str, float] = opt({"qa": 1.0}, "Source -> weight (qa, qa_cot, dict, raw); weights are normalised.")
    mode: Literal["interleave", "concatenate"] = opt(
        "interleave",
        "interleave: a ratio mix sampled by weight (datasets.interleave_datasets, seeded);\n"
        "concatenate: all examples of the listed sources once per pass, shuffled (weights only select sources).",
    )
    mix_by: Literal["examples", "tokens"] = opt(
        "tokens",
        "What an interleave weight is a share of: tokens = of the LEARNED tokens (the training signal: the loss\n"
        "is a mean over them, so raw text with hundreds of targets per example does not drown QA answers of a\n"
        "few); examples = of the drawn examples. The seeds' percentages are shares of training signal, hence\n"
        "tokens. Either way training_info.json `mix_report` records both shares per source.",
    )
    stop: list[str] = opt(
        ["eval_qa_loss < 0.3"],
        "Stop conditions, ALL must hold: 'METRIC < X', 'METRIC < F * baseline', 'METRIC ~ F * baseline'\n"
        "(no worse than about F x baseline), 'METRIC maintained' (no worse than at the start of the step).",
    )
    stable_evals: int = opt(
        1, "The conditions must hold at this many consecutive evaluations (seeds' step 4: 5).", bounds=(1, None)
    )
    stable_metrics: list[str] = opt(
        [], "Metrics whose relative range over those evaluations must stay within stable_tolerance."
    )
    max_steps: int = opt(
        1000, "Optimizer-step budget: the guard reported as stop_reason 'max_steps'.", bounds=(1, None)
    )
    lr: float | None = opt(None, "Learning rate of this step (default: train.lr).", bounds=(0, None, "()"))

    def validate_step(self, where: str) -> None:
        if not self.name.strip():
            raise KormedError("a step needs a name", field=f"{where}.name")
        for source in self.mix:
            if source not in SOURCES:
                raise KormedError(f"unknown source '{source}' (known: {', '.join(SOURCES)})",
                                  field=f"{where}.mix.{source}")
        try:
            normalise_weights(self.mix)
        except KormedError as exc:
            raise KormedError(exc.message, field=f"{where}.{exc.field}") from None
        if not self.stop:
            raise KormedError("at least one stop condition is needed", field=f"{where}.stop")
        for i, text in enumerate(self.stop):
            parse_condition(text, field_name=f"{where}.stop[{i}]")


def _steps(help_text: str, *steps: SFTStepConfig) -> dataclasses.Field:
    return dataclasses.field(default_factory=lambda: [dataclasses.replace(s) for s in steps],
                             metadata={"help": help_text})


def _sft_train_options() -> TrainOptions:
    # SFT stops on its own conditions: the engine's early stopping is switched off (see the `train` help).
    return TrainOptions(load_best_at_end=False, early_stopping_patience=None)


def _validate_steps(steps: list[SFTStepConfig], where: str) -> None:
    if not steps:
        raise KormedError("at least one step is needed", field=where)
    names = [s.name for s in steps]
    for i, step in enumerate(steps):
        step.validate_step(f"{where}[{i}]")
        if names.index(step.name) != i:
            raise KormedError(f"two steps are named '{step.name}'", field=f"{where}[{i}].name")


SEEDS_SFT_STEPS = (
    SFTStepConfig(
        name="qa_examples", description="QA + examples: dictionary QA and MCQ answers in chat format",
        mix={"qa": 0.5, "dict": 0.5}, stop=["eval_qa_loss < 0.3", "eval_raw_perplexity < 1.03 * baseline"],
    ),
    SFTStepConfig(
        name="qa_more_data", description="QA + examples (more data): all dictionary QA, MCQ answers and reasoning",
        mix={"qa": 1.0, "qa_cot": 1.0, "dict": 1.0}, mode="concatenate",
        stop=["eval_qa_loss < 0.2", "eval_raw_perplexity maintained"],
    ),
    SFTStepConfig(
        name="qa_dict", description="QA + examples + dictionary: QA 70 %, dictionary 30 %",
        mix={"qa_cot": 0.7, "dict": 0.3},
        stop=["eval_qa_loss < 0.2", "eval_dict_loss < 0.3", "eval_raw_perplexity maintained"],
    ),
    SFTStepConfig(
        name="qa_dict_raw",
        description="QA + examples + dictionary + raw Korean text: QA 40 %, dictionary 20 %, raw 40 % (against "
                    "forgetting)",
        mix={"qa_cot": 0.4, "dict": 0.2, "raw": 0.4},
        stop=["eval_qa_loss < 0.2", "eval_raw_perplexity ~ 1.1 * baseline"],
        stable_evals=5, stable_metrics=["eval_qa_loss", "eval_raw_perplexity"],
    ),
)

SEEDS_LOOP_ROUNDS = (
    SFTStepConfig(name="dict", description="train_01: medical dictionary SFT", mix={"dict": 1.0},
                  stop=["eval_dict_loss < 0.3"], max_steps=300),
    SFTStepConfig(name="mcq", description="train_02: MCQ with reasoning SFT", mix={"qa_cot": 1.0},
                  stop=["eval_qa_loss < 0.2"], max_steps=300),
)


@dataclass
class RecipeOptions:
    """What `kormed train sft` and `kormed train loop` share: the data, the model, encoding and the trainer."""

    mcq: str | None = opt(None, "KorMedMCQA training questions (JSONL, the seeds' train.jsonl).")
    dict: str | None = opt(None, "Medical dictionary, JSON array of {term, definition}.")
    char_dict: str | None = opt(None, "Symbol dictionary, same format (optional; joins the 'dict' source).")
    raw: str | None = opt(
        None, "Raw Korean text, JSONL with one {\"text\": ...} per line (kormed prepare output). sft: required\n"
        "(baseline perplexity, raw mixes); loop: optional (its held-out part is reported as perplexity).",
    )
    raw_val: str | None = opt(
        None, "Held-out raw Korean text for the perplexity checks (default: held out from --raw)."
    )
    model: str | None = opt(
        None, "Hub id or local model directory; default: the embedded Gemma 3 270M.", aliases=("model_name_or_path",)
    )
    from_adapter: str | None = opt(
        None, "Start from this kormed adapter (sft: e.g. the CPT adapter; loop: SFT's last step); default: a fresh\n"
        "LoRA.",
    )
    output: str | None = opt(
        None, "Output directory. sft: baseline.json, step1/ ... stepN/, sft_summary.json; loop: round00_start/,\n"
        "round01_dict/ ..., best/, loop_table.json, loop_table.md.",
        aliases=("output_dir",),
    )
    max_length: int = opt(
        512, "Tokens per example (chat examples: prompt truncated from the left; raw: split).", bounds=(16, None),
        aliases=("max_seq_length",),
    )
    padding_free: bool = opt(
        True,
        "Training micro-batches without padding: the batch_size examples are flattened into one row, position\n"
        "ids restart at 0 for each and no example attends to another (same losses as padded rows, less\n"
        "compute). false: pad each micro-batch to its longest example. Validation is always padded.",
    )
    val_fraction: float = opt(
        0.05, "Fraction of each source held out for validation (at least 1 record).", bounds=(0, 1, "[)")
    )
    val_max: int = opt(200, "At most this many held-out records per source.", bounds=(1, None))
    raw_max_texts: int = opt(50000, "Use the first N texts of --raw for training.", bounds=(1, None))
    raw_val_max_texts: int = opt(
        200, "At most this many held-out raw texts for the perplexity checks.", bounds=(1, None)
    )
    eod_token: str = opt("<end_of_turn>", "End-of-document token of raw text (as in CPT).")
    stopping_strategy: Literal["all_exhausted", "first_exhausted"] = opt(
        "all_exhausted",
        "Interleaved mixes: all_exhausted oversamples the smaller sources until every example was drawn once;\n"
        "first_exhausted stops the mix when the first source runs out.",
    )
    maintain_tolerance: float = opt(
        0.02, "'maintained' = at most (1 + this) x the metric at the start of the step (lower is always fine).",
        bounds=(0, None),
    )
    approx_tolerance: float = opt(0.02, "'~ F * baseline' = at most F x baseline x (1 + this).", bounds=(0, None))
    stable_tolerance: float = opt(
        0.05, "'stable' = (max - min) / min of each stable metric over the last stable_evals evaluations <= this.",
        bounds=(0, None),
    )
    knowledge_per_group: int | None = opt(
        20, "Dictionary knowledge (the loop after each round; SFT steps and rounds whose stop conditions name\n"
        "eval_dev_knowledge, at each evaluation): at most N questions per form and entry group, a seeded sample\n"
        "(kormed.eval.knowledge.sample_per_group; null = all). 20 keeps a round's dev check to ~100 questions (5\n"
        "forms of the bundled 217+89-entry dictionaries, 5 forward passes each), well under a minute on 2 CPU\n"
        "cores for the embedded 270M; the loop's reported test check also scores the held-out entries (twice the\n"
        "questions), only for the rounds that become the best (or every round: test_every_round).",
        bounds=(1, None),
    )
    knowledge_seed: int = seed_opt(
        0, "Seed of the knowledge questions' distractors, answer positions and sample (as `eval.knowledge_seed`:\n"
        "the same seed and per_group give the numbers `kormed eval knowledge` gives).",
    )
    knowledge_scoring: Literal["letter", "cloze"] = opt(
        DEFAULT_KNOWLEDGE_SCORING, KNOWLEDGE_SCORING_HELP
    )
    templates: ChatTemplates = nested(ChatTemplates, "Chat prompt/answer templates (the loop's eval uses mcq_prompt).")
    lora: LoraOptions = nested(LoraOptions, "LoRA settings of a fresh adapter (ignored with from_adapter).")
    train: TrainOptions = dataclasses.field(
        default_factory=_sft_train_options,
        metadata={"help": "Trainer settings shared by the steps (rounds). Each step's max_steps/lr override them;\n"
                          "early stopping is off (the stop conditions decide) and the final adapter is the\n"
                          "last one (load_best_at_end false)."},
    )

    def check_method(self, section: str) -> None:
        """`train.method full` starts from --model (a base or a full model directory), never from an adapter."""
        if self.train.method == "full" and self.from_adapter is not None:
            raise KormedError("--from-adapter continues a LoRA adapter; it cannot be combined with --method full",
                              field=f"{section}.from_adapter",
                              hint="to fully fine-tune a model, pass it (e.g. a full model directory) as --model")

    @property
    def tolerances(self) -> Tolerances:
        return Tolerances(maintain=self.maintain_tolerance, approx=self.approx_tolerance,
                          stable=self.stable_tolerance)


_STEPS_NOW_A_LIST = ("the SFT steps are a list now: write `steps:` with one entry per step, e.g.\n"
                     "  steps:\n    - {name: qa_examples, mix: {qa: 0.5, dict: 0.5}, stop: [\"eval_qa_loss < 0.3\"]}\n"
                     "    - ...\n"
                     "(`kormed config show sft` prints the default list; a step's output directory stays stepN)")
_ROUNDS_NOW_A_LIST = ("the loop's rounds are a list now: write `rounds:` with the rounds in the order they cycle, "
                      "e.g. rounds: [{name: dict, mix: {dict: 1.0}, stop: [...]}, {name: mcq, mix: {qa_cot: 1.0}, "
                      "stop: [...]}] (`kormed config show loop` prints the default)")


@dataclass
class SFTConfig(RecipeOptions):
    """`kormed train sft`: staged chat-format SFT steps with answer-only loss and stop conditions."""

    removed_options: ClassVar[dict[str, str]] = {f"step{n}": _STEPS_NOW_A_LIST for n in range(1, 10)}

    steps: list[SFTStepConfig] = _steps(
        "The steps, run in order, each continuing the previous adapter (default: the seeds' four: QA +\n"
        "examples; more data; QA 70 % + dictionary 30 %; QA 40 % + dictionary 20 % + raw Korean 40 %). Step N\n"
        "saves to <output>/stepN/. A list in a config file replaces the whole default list.",
        *SEEDS_SFT_STEPS,
    )
    from_step: int = opt(
        1, "Resume at step N (1-based), starting from <output>/step{N-1}/ (its adapter).", bounds=(1, None)
    )
    max_steps_per_step: int | None = opt(None, "Override every step's max_steps (quick runs).", bounds=(1, None))

    def validate(self) -> None:
        _validate_steps(self.steps, "sft.steps")
        self.check_method("sft")
        if not 1 <= self.from_step <= len(self.steps):
            raise KormedError(f"must be between 1 and {len(self.steps)} (the number of steps)", field="sft.from_step")


@dataclass
class LoopConfig(RecipeOptions):
    """`kormed train loop`: cycle through the rounds (default: dictionary SFT train_01, then MCQ-with-reasoning
    SFT train_02), measuring dictionary knowledge and KorMedMCQA accuracy after each, until the target (on the
    `select_on` metric), no improvement for `stop_after_no_improvement` rounds, or max_rounds. The best round is
    chosen on dev, never on the test forms, held-out entries or test questions it reports."""

    removed_options: ClassVar[dict[str, str]] = {k: _ROUNDS_NOW_A_LIST
                                                 for k in ("dict_round", "mcq_round", "first_round")}

    rounds: list[SFTStepConfig] = _steps(
        "The kinds of round, cycled in this order until the target or max_rounds (default: the seeds'\n"
        "dictionary round train_01, then the MCQ-with-reasoning round train_02). Round i saves to\n"
        "<output>/round{i:02d}_{name}/.",
        *SEEDS_LOOP_ROUNDS,
    )
    eval_data: str | None = opt(
        None, "KorMedMCQA questions the accuracy is REPORTED on (the seeds' test.jsonl); never used to choose.")
    dev_data: str | None = opt(
        None, "KorMedMCQA questions the best round and the target are judged on (default: dev.jsonl beside\n"
        "--eval-data when it exists, KorMedMCQA's dev split in the seeds' layout; else dev_holdout training\n"
        "questions held out of training).",
    )
    dev_holdout: int = opt(
        100, "Without dev questions: hold out this many training questions (seeded; at most half of them) as the\n"
        "selection split; the rounds never train on them.",
        bounds=(1, None),
    )
    test_every_round: bool = opt(
        False, "Also score --eval-data after every round (labelled as not used for selection); by default only\n"
        "the rounds that became the best on dev are scored on it.",
    )
    dict_heldout: str | None = opt(
        None, "The dictionary entries `kormed prepare` held out of every stage (<out>.dict_heldout.json): their\n"
        "test-form knowledge is reported beside the trained entries' as the control; never used to choose.",
    )
    select_on: Literal["knowledge", "exam", "both"] = opt(
        "knowledge",
        "What the best round is chosen on and the target judged on, always on dev (the loop's counterpart of\n"
        "metric_for_best_model): knowledge = dictionary knowledge, the dev forms of the trained entries (--dict,\n"
        "--char-dict), a tie going to the higher dev exam accuracy, then to the earlier round; target:\n"
        "knowledge_target. exam = dev exam accuracy, a tie going to the higher dev knowledge, then the earlier\n"
        "round; target: `target`. both = the mean of the two, a tie going to the earlier round; target: both\n"
        "targets reached. Test forms, held-out entries and the test questions are reported, never used.",
    )
    knowledge_target: float = opt(
        0.9, "select_on knowledge or both: stop once the dev knowledge (trained entries, dev forms) reaches this\n"
        "(0-1; the seeds' 90 %).", bounds=(0, 1, "(]"),
    )
    stop_after_no_improvement: int | None = opt(
        2, "Stop once this many rounds in a row have not improved the selection metric on dev (strictly); the\n"
        "loop's counterpart of early_stopping_patience. 2 lets one dictionary + exam cycle try; null = off.",
        bounds=(1, None),
    )
    target: float = opt(
        0.9, "select_on exam or both: stop once the dev exam accuracy (KorMedMCQA) reaches this (0-1).",
        bounds=(0, 1, "(]"),
    )
    max_rounds: int = opt(6, "At most this many rounds.", bounds=(1, None))
    eval_mode: Literal["chat", "generate", "loglik"] = opt("chat", "KorMedMCQA scoring mode after each round.")
    eval_limit: int | None = opt(
        None, "Score only the first N questions of the dev and test sets (quick runs).", bounds=(1, None)
    )
    eval_batch_size: int = opt(8, "Questions per generation batch.", bounds=(1, None))
    eval_max_new_tokens: int = opt(
        256, "Generation budget in chat mode (the reasoning comes before '정답: X').", bounds=(1, None)
    )
    eval_before: bool = opt(True, "Also measure the accuracy before the first round (round 0).")
    max_steps_per_round: int | None = opt(None, "Override every round's max_steps (quick runs).", bounds=(1, None))

    def validate(self) -> None:
        _validate_steps(self.rounds, "loop.rounds")
        self.check_method("loop")

