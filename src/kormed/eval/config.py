"""Configuration of `kormed eval` (section `eval` of a YAML config; `kormed config show eval`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kormed.config import DEVICE_PATTERN, opt, seed_opt

# How a dictionary-knowledge question is scored (kormed.eval.knowledge.evaluate_knowledge): one declaration for
# `kormed eval knowledge`, the eval stage, SFT/the loop (`knowledge_scoring`) and the bench.
# scoring -> (kormedmcqa mode, permutations). letter: the harness prompt with the 5 options and the letters'
# log-likelihood under the 5 cyclic rotations (the letter prior removed); cloze: the question alone, then each
# option's text, log-likelihood per UTF-8 byte (no options shown: nothing to rotate).
KNOWLEDGE_SCORINGS: dict[str, tuple[str, str]] = {"letter": ("loglik", "cyclic"), "cloze": ("cloze", "none")}
DEFAULT_KNOWLEDGE_SCORING = "cloze"
KNOWLEDGE_SCORING_HELP = (
    "How a dictionary-knowledge question is scored. letter: the harness prompt with the 5 options, the letters'\n"
    "log-likelihood under the 5 cyclic rotations (what a model that answers multiple choice by letter does).\n"
    "cloze: the question alone, then each option's text, log-likelihood per UTF-8 byte (the harness's cloze\n"
    "formulation: what a model too small to answer by letter still prefers). Same cost: 5 forwards a question."
)

DEFAULT_MAX_NEW_TOKENS = 32
HARNESS_MAX_GEN_TOKS = 1024


def eval_inputs(cfg: EvalConfig) -> dict[str, str | None]:
    """Flag -> path of what `kormed eval` reads: its --output must be none of them."""
    return {"--data": cfg.data, "--fewshot-file": cfg.fewshot_file, "--model": cfg.model, "--adapter": cfg.adapter,
            "--dict": cfg.dict, "--char-dict": cfg.char_dict, "--heldout": cfg.heldout}


@dataclass
class EvalConfig:
    """KorMedMCQA accuracy and held-out perplexity."""

    model: str | None = opt(
        None, "Base or merged model: hub id or local directory; null = the embedded Gemma 3 270M.",
        aliases=("model_name_or_path",),
    )
    adapter: str | None = opt(
        None, "kormed adapter directory (PEFT) to load on top of `model`; with no `model`, its recorded base."
    )
    data: str | None = opt(
        None, "kormedmcqa: test JSONL in the KorMedMCQA schema (question, A-E, answer 1-5, ...).\n"
        "ppl: JSONL of raw text, one {\"text\": ...} per line.",
    )
    fewshot_file: str | None = opt(
        None, "JSONL of few-shot examples (the dataset's `fewshot` split). Shots are taken first-n, from the\n"
        "rows of the question's own subset when the file has any, else from the whole file.",
    )
    num_fewshot: int = opt(
        0, "Number of few-shot examples before each question (harness default: 0).", bounds=(0, None)
    )
    mode: Literal["generate", "loglik", "chat", "chat-loglik", "cloze"] = opt(
        "generate",
        "generate: the lm-evaluation-harness kormedmcqa v3.0 protocol (prompt, greedy decoding, stop sequences,\n"
        "extraction cascade); comparable with published numbers.\n"
        "loglik: the option with the highest log-likelihood after the same prompt (fast, deterministic).\n"
        "chat: the question in the Gemma chat format the SFT stages train on, parsed with the same cascade.\n"
        "chat-loglik: the letters scored after the chat prompt and '정답:' in the model turn (the SFT format).\n"
        "cloze: the question alone (no options shown), then each option's text scored per UTF-8 byte (the\n"
        "harness's cloze formulation): what a model too small to answer by letter still prefers.",
    )
    permutations: Literal["none", "cyclic"] = opt(
        "none",
        "loglik modes: cyclic = score each question under its 5 cyclic option rotations and average each\n"
        "option's log-prob (removes the model's letter preference; 5 forwards a question). none = the harness.",
    )
    backend: Literal["kormed", "lm-eval"] = opt(
        "kormed",
        "kormedmcqa: who runs the questions. kormed: kormed's own modes (--mode). lm-eval: lm-evaluation-harness's\n"
        "own `kormedmcqa` task (v3.0, generate mode) on the same local JSONL and the model kormed loaded (adapters,\n"
        "QLoRA); needs `pip install 'kormed[harness]'`, records the lm-eval version, never downloads.",
    )
    loglik_target: Literal["letter", "text"] = opt(
        "letter",
        "loglik mode: score the option letter (' A'...' E', summed log-prob) or the option text (' <text>',\n"
        "log-prob divided by its UTF-8 byte length, like the harness's acc_norm).",
    )
    chat_mcq_prompt: str | None = opt(
        None, "chat mode: user-turn template of an MCQ; null = the SFT default (kormed.data.chat). Set it to the\n"
        "`sft.templates.mcq_prompt` you trained with if you changed that.",
    )
    batch_size: int = opt(
        8, "Questions per forward/generate batch (left-padded).", bounds=(1, None),
        aliases=("per_device_eval_batch_size",),
    )
    max_new_tokens: int = opt(
        DEFAULT_MAX_NEW_TOKENS,
        f"Greedy generation limit (generate and chat modes). The harness uses max_gen_toks={HARNESS_MAX_GEN_TOKS},\n"
        "but its '.' and blank-line stop sequences end almost every answer within a few tokens; raise it for\n"
        "models that reason before answering.",
        bounds=(1, None),
    )
    limit: int | None = opt(None, "Evaluate only the first N questions (null = all).", bounds=(1, None))
    subset: str | None = opt(
        None, "Subset name for records that carry neither `exam_type` nor `subject` (default: the file name stem)."
    )
    device: str = opt(
        "auto", "auto, cpu, cuda or cuda:N. On CUDA: bf16 and the fastest attention available.",
        pattern=DEVICE_PATTERN,
    )
    dtype: Literal["auto", "float32", "bfloat16"] = opt(
        "auto", "Compute precision, as train.dtype: auto = bf16 weights + autocast on CUDA and on a CPU with\n"
        "native bf16 matmul (AMX-BF16 / AVX512-BF16), else fp32. bfloat16 on a CPU without native bf16: bf16\n"
        "weights, fp32 matmuls.",
    )
    output: str | None = opt(None, "Write the full result (summary + one record per question) to this JSON file.")
    dict: str | None = opt(None, "knowledge: medical dictionary JSON ([{term, definition}]).")
    char_dict: str | None = opt(None, "knowledge: medical symbol dictionary JSON (same format).")
    heldout: str | None = opt(
        None, "knowledge: the held-out dictionary record `kormed prepare` wrote (<out>.dict_heldout.json): its\n"
        "entries are reported apart from the trained ones (the control).",
    )
    knowledge_split: Literal["dev", "test"] = opt(
        "dev", "knowledge: question forms to use: dev (for selection) or test (report once); disjoint wordings.",
    )
    knowledge_seed: int = seed_opt(0, "knowledge: seed of the distractors and answer positions.")
    knowledge_scoring: Literal["letter", "cloze"] = opt(DEFAULT_KNOWLEDGE_SCORING,
                                                        "knowledge: " + KNOWLEDGE_SCORING_HELP)
    knowledge_per_group: int | None = opt(
        None, "knowledge: at most N questions per form and entry group (trained / held out), a seeded sample\n"
        "(null = all: the full bundled dictionaries give 811 questions, 5 forward passes each, 113,445 tokens\n"
        "scored as cloze, 257,150 as letter). `kormed run`'s eval stage wires 4 (40 questions a model: 5,251 tokens\n"
        "as cloze, about half the 9,874 of the 100 bundled KorMedMCQA questions); set it in the pipeline file's\n"
        "eval section.",
        bounds=(1, None),
    )
    max_length: int = opt(
        1024, "ppl: block length in tokens, as in CPT training (`cpt.max_length`).", bounds=(2, None)
    )
    eod_token: str = opt("<end_of_turn>", "ppl: end-of-document token appended after every text, as in CPT.")
    text_field: str = opt("text", "ppl: the JSONL field that holds the raw text.")
