"""Hugging Face model cards (README.md with YAML front matter) for kormed adapters, merged models and GGUF exports.

Every field comes from files the run wrote: the adapter's `adapter_config.json` and `training_info.json`, and,
when the adapter sits in a `kormed run` directory, that run's prepare statistics, tokenizer report, each training
stage's `training_info.json` and the eval results (read with the report's own reader, `kormed.pipeline.rundir`).
A field with no source file is written as "not recorded", never guessed.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kormed.errors import KormedError
from kormed.io import atomic_write
from kormed.markdown import md_code, md_escape
from kormed.pipeline.registry import TRAINING_STAGES
from kormed.pipeline.rundir import collect, rows_of_stats, target_key
from kormed.run_files import TRAINING_INFO, TrainingInfo, TrainingSummary

# torch, transformers and the kormed modules that load them are imported inside the functions that use them:
# this module is imported by `kormed --help` or by a torch-free command, which must not pay for them.

LICENCES = {  # base model family -> (front-matter licence fields, the terms' own page); linked, never paraphrased
    "medgemma": ({"license": "other", "license_name": "health-ai-developer-foundations",
                  "license_link": "https://developers.google.com/health-ai-developer-foundations/terms"},
                 "Health AI Developer Foundations terms of use"),
    "gemma": ({"license": "gemma", "license_link": "https://ai.google.dev/gemma/terms"}, "Gemma Terms of Use"),
}
INTENDED_USE = """\
Research and development of Korean medical language models: studying domain adaptation, evaluating on
KorMedMCQA, and building prototypes whose outputs are checked by qualified people.

**Not for clinical use.** This model is not a medical device and has not been validated for diagnosis, treatment,
triage or any decision about a patient. Its answers can be wrong, outdated or fabricated while sounding confident.
Do not use it to give medical advice to anyone; a qualified clinician must review anything derived from it.
The benchmark numbers above measure multiple-choice exam questions, not clinical safety or usefulness."""


def _load(path: Path) -> Any:
    from kormed.io import read_json

    try:
        return read_json(path)
    except (OSError, KormedError):
        return None


def _resolved(run_dir: Path) -> dict[str, Any]:
    from kormed.io import read_yaml_file

    try:
        data = read_yaml_file(run_dir / "resolved_config.yaml")
    except (OSError, KormedError):
        return {}
    return data if isinstance(data, dict) else {}


def find_run_dir(path: Path) -> Path | None:
    """The `kormed run` directory holding `path` (the nearest ancestor with a state.json), if any."""
    for p in [path, *path.resolve().parents]:
        if (p / "state.json").is_file() and (p / "resolved_config.yaml").is_file():
            return p
    return None


def _base_name(adapter: Path | None, info: TrainingInfo, model_dir: Path | None) -> str:
    if info.model and info.model != "embedded":
        return info.model
    cfg = _load(adapter / "adapter_config.json") if adapter else None
    base = (cfg or {}).get("base_model_name_or_path") or info.model_path
    if info.model == "embedded" or (base and Path(str(base)).name.startswith("gemma3-270m")):
        return "google/gemma-3-270m"
    if base:
        return str(base)
    export = _load(model_dir / "kormed_export.json") if model_dir else None
    return str((export or {}).get("base_model") or "not recorded")


def licence_for(base: str) -> tuple[dict[str, str], str]:
    return LICENCES["medgemma"] if "medgemma" in base.lower() else LICENCES["gemma"]


def _front_matter(base: str, library: str, extra_tags: list[str]) -> str:
    fields, _ = licence_for(base)
    lines = ["---"]
    for k, v in fields.items():
        lines.append(f"{k}: {v}")
    if "/" in base and not base.startswith(("/", ".")):
        lines.append(f"base_model: {base}")
    lines.append(f"library_name: {library}")
    lines += ["language:", "- ko", "- en", "tags:"]
    lines += [f"- {t}" for t in ["kormed", "medical", "korean", "gemma3", *extra_tags]]
    lines.append("---")
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "–" if v is None else str(v)


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    """A Markdown table; every cell (names, sources, stop details from the run's files) escaped as literal text."""
    out = ["| " + " | ".join(md_escape(h) for h in head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(md_escape(_fmt(c)) for c in r) + " |" for r in rows]
    return out


def _training_units(run_dir: Path | None, adapter: Path | None) -> list[tuple[str, TrainingInfo]]:
    """(name, training_info) of each trainer run that led to the adapter (the run's, or the adapter's alone)."""
    units: list[tuple[str, TrainingInfo]] = []
    if run_dir is not None:
        data = collect(run_dir, curves=False)
        order = list(TRAINING_STAGES)
        try:  # the stages that led to this adapter: up to and including its own
            own = Path(adapter).resolve().relative_to(run_dir.resolve()).parts[0] if adapter else "loop"
        except ValueError:
            own = "loop"
        for stage in order[: order.index(own) + 1] if own in order else order:
            units += [(u.name, u.info) for u in data.training.get(stage, []) if u.info is not None]
    elif adapter is not None and (adapter / TRAINING_INFO).is_file():
        units.append((adapter.name, TrainingInfo.read(adapter / TRAINING_INFO)))
    return units


def _stage_rows(units: list[tuple[str, TrainingInfo]]) -> list[list[Any]]:
    rows = []
    for name, info in units:
        lora = {} if info.method == "full" else info.lora or (info.config or {}).get("lora") or {}
        run = info.summary or TrainingSummary(stop_reason="")  # a saved adapter: no trainer run recorded
        rows.append([name, run.global_step, run.tokens_seen, info.train_options.get("lr"),
                     run.effective_batch_size, lora.get("r"), run.stop_reason or None,
                     (run.stop_detail or "").split("\n")[0][:120] or None])
    return rows


def _data_lines(run_dir: Path | None) -> list[str]:
    if run_dir is None:
        return ["Training data: not recorded (the adapter is not inside a `kormed run` directory)."]
    data = collect(run_dir, curves=False)
    if not data.stats:
        return ["Training data: no prepare statistics in the run directory (prepare was not part of the run)."]
    rows = rows_of_stats(data.stats)
    cols = [c for c in ("source", "base", "multiplier", "final", "ratio", "characters") if any(c in r for r in rows)]
    out = [f"CPT corpus by source, from {md_code(str(data.stats_path))} (records per source before and after the mix):",
           ""]
    out += _table(cols, [[r.get(c) for c in cols] for r in rows])
    for key in ("validation", "val", "dropped", "drops"):
        if key in data.stats and not isinstance(data.stats[key], list | dict):
            out.append(f"\n{key}: {md_escape(str(data.stats[key]))}")
    return out


def _tokenizer_lines(run_dir: Path | None, units: list[tuple[str, TrainingInfo]]) -> list[str]:
    tok = None
    if run_dir is not None:
        tok = collect(run_dir, curves=False).tokenizer
    if tok:
        keep = {k: tok[k] for k in ("method", "base_vocab_size", "vocab_size", "new_tokens") if k in tok}
        lines = ["Extended Gemma 3 tokenizer (`kormed tokenizer extend`; existing ids unchanged): " +
                 ", ".join(f"{k} {md_escape(str(v))}" for k, v in keep.items()) + "."]
        held = tok.get("heldout")
        if isinstance(held, dict):
            lines.append("Held-out Korean text, tokens per 1,000 characters: " + ", ".join(
                f"{md_escape(str(k))} {md_escape(_fmt(v))}" for k, v in held.items()
                if not isinstance(v, dict | list)) + ".")
        return lines
    for _, info in units:
        t = info.tokenizer or {}
        if t.get("new_tokens"):
            return [f"Extended tokenizer: {md_escape(str(t['new_tokens']))} new tokens, vocabulary "
                    f"{md_escape(str(t.get('vocab_size')))}."]
    return ["Tokenizer: the base model's Gemma 3 tokenizer, unchanged."]


def _eval_lines(run_dir: Path | None) -> list[str]:
    if run_dir is None:
        return ["Not recorded (no `kormed run` eval results next to this adapter)."]
    data = collect(run_dir, curves=False)
    if not data.mcq and not data.ppl:
        return ["The run has no eval results (eval stage not run)."]
    rows = []
    for target in sorted(set(data.mcq) | set(data.ppl), key=target_key):
        m, p = data.mcq.get(target) or {}, data.ppl.get(target) or {}
        k = (data.knowledge.get(target) or {}).get("summary")
        k = k if isinstance(k, dict) else {}
        rows.append([target, m.get("accuracy"), m.get("total"), m.get("mode"), p.get("perplexity"),
                     p.get("bits_per_char"), _knowledge_cell(k.get("all/trained")),
                     _knowledge_cell(k.get("all/held_out"))])
    first = next(iter(data.mcq.values()), {})
    resolved = _resolved(run_dir).get("eval") or {}
    split = Path(str(resolved.get("data") or "")).name or "not recorded"
    protocol = {"generate": f"generate, lm-evaluation-harness kormedmcqa v{first.get('harness_version')}, greedy, "
                            f"max {first.get('max_new_tokens')} new tokens",
                "loglik": f"loglik ({first.get('loglik_target')})",
                "chat": "chat (Gemma chat format, SFT MCQ template)"}.get(first.get("mode"), "not recorded")
    fewshot = first.get("num_fewshot")
    out = [f"KorMedMCQA accuracy on {md_code(split)} (protocol: {md_escape(protocol)}"
           + (f", {md_escape(str(fewshot))}-shot" if fewshot is not None else "") + "); perplexity and bits per "
           "character on the corpus's held-out validation split. From the run's `eval/` files:", ""]
    out += _table(["model", "KorMedMCQA accuracy", "questions", "mode", "perplexity", "bits per character",
                   "knowledge, trained entries (95% CI)", "knowledge, held-out entries (95% CI)"], rows)
    if any(row[-1] != "–" or row[-2] != "–" for row in rows):
        out += ["", "Knowledge: multiple choice on the run's dictionaries in forms no stage trains on "
                "(`kormed eval knowledge`, test forms, 5 option rotations a question, chance 0.2); trained entries "
                "are those the SFT and loop stages read, held-out entries were set aside by `kormed prepare` "
                "(`prepare.dict_holdout`) and never trained on: the control. Wilson 95% intervals."]
    return out


def _knowledge_cell(s: dict[str, Any] | None) -> str:
    """`accuracy (low–high, n=N)` of one knowledge group; "–" when not measured."""
    try:
        low, high = s["ci95"]  # type: ignore[index]
        return f"{s['accuracy']:.3f} ({low:.3f}–{high:.3f}, n={s['total']})"  # type: ignore[index]
    except (KeyError, TypeError, ValueError):  # absent, or not a kormed summary: the card never fails on one file
        return "–"


def card(*, title: str, kind: str, adapter: Path | None = None, model_dir: Path | None = None,
         extra: list[str] | None = None, library: str = "peft", tags: list[str] | None = None) -> str:
    """The card text. `kind` says what the directory holds (one sentence)."""
    run_dir = find_run_dir(adapter) if adapter is not None else None
    units = _training_units(run_dir, adapter)
    info = units[0][1] if units else TrainingInfo()
    base = _base_name(adapter, info, model_dir)
    _, terms = licence_for(base)
    lic = licence_for(base)[0]["license_link"]
    parts = [_front_matter(base, library, tags or []), "", f"# {md_escape(title)}", "", kind, "",
             "Trained with kormed (Korean medical adaptation of Gemma 3 / MedGemma).", ""]
    parts += ["## Base model and licence", "", f"Base model: {md_code(base)}.", "",
              f"Use of this model is governed by the base model's terms: the [{terms}]({lic}).", ""]
    parts += ["## Tokenizer", "", *_tokenizer_lines(run_dir, units), ""]
    parts += ["## Training data", "", *_data_lines(run_dir), ""]
    parts += ["## Training stages", ""]
    if units:
        parts += _table(["stage", "steps", "tokens seen", "lr", "effective batch", "LoRA r", "stop reason",
                         "stop detail"], _stage_rows(units))
    else:
        parts.append("Not recorded (no training_info.json).")
    parts += ["", "## Evaluation", "", *_eval_lines(run_dir), ""]
    parts += ["## Intended use and limitations", "", INTENDED_USE, ""]
    if extra:
        parts += extra
    if run_dir is not None:
        parts += ["", f"Source run directory: {md_code(run_dir.name)} (its `report.html` has the curves)."]
    return "\n".join(parts).rstrip() + "\n"


def adapter_card(adapter: str | Path) -> str:
    """The card of an adapter directory (a stage's final adapter in a run directory, or a standalone one)."""
    a = Path(adapter)
    usage = ["## How to use", "", "```bash", f"kormed chat --adapter {a.name}", "```", "",
             "or with PEFT: `PeftModel.from_pretrained(base, path)` after resizing the base embeddings to the "
             "adapter's `tokenizer/` (kormed's `load_model_and_tokenizer` does both)."]
    return card(title=f"kormed adapter: {a.name}", kind="A LoRA adapter (PEFT) with its tokenizer in `tokenizer/`.",
                adapter=a, extra=usage)


def export_card(out_dir: Path, *, name: str, adapter: str | None, model_dir: Path | None,
                report: dict[str, Any]) -> str:
    """The card written by `kormed export` into the merged / GGUF directory."""
    gguf = report.get("gguf") or {}
    files = gguf.get("files") or []
    kind = ("A merged Hugging Face model (safetensors; no PEFT needed)" if (out_dir / "config.json").is_file()
            else "GGUF files") + (f" with GGUF files for llama.cpp / Ollama: {', '.join(map(md_code, files))}"
                                  if files and (out_dir / "config.json").is_file() else "") + "."
    extra = ["## Files", ""]
    extra += [f"- `{k}`: {md_escape(str(v))}" for k, v in report.items()
              if k in ("class", "dtype", "vocab_size", "tokenizer_size", "tie_word_embeddings")]
    if files:
        extra += [f"- GGUF: {', '.join(map(md_code, files))} ({md_escape(str(gguf.get('converter')))}"
                  + (f"; quantized by {md_escape(str(gguf['quantizer']))}" if gguf.get("quantizer") else "") + ")",
                  "- `Modelfile`: `ollama create NAME -f Modelfile` (Gemma template, stops at `<end_of_turn>`)"]
    if gguf.get("mmproj"):
        mmproj = gguf["mmproj"]
        command = md_code(f"llama-mtmd-cli -m {files[0]} --mmproj {mmproj} --image IMAGE")
        extra.append(f"- vision projector: {md_code(mmproj)} (llama.cpp: {command}; a second `FROM` line of the "
                     "Modelfile)")
    for file, v in (report.get("verification") or {}).items():
        extra.append(f"- verified {md_code(file)} with transformers (`gguf_file=`): max |Δlogit| "
                     f"{v['max_abs_logit_diff']:.2e}, greedy generations equal: "
                     f"{v['greedy_merged'] == v['greedy_gguf']}")
    for file, v in (report.get("verification_llama_cpp") or {}).items():
        if isinstance(v, dict):
            extra.append(f"- verified {md_code(file)} with llama.cpp (llama-cpp-python): prompt token ids equal, "
                         f"greedy generations equal: {v['greedy_equal']}, max |Δlogit| {v['max_abs_logit_diff']:.2e}")
    a = Path(adapter) if adapter else None
    return card(title=f"kormed export: {name}", kind=kind, adapter=a, model_dir=model_dir, extra=extra,
                library="transformers" if (out_dir / "config.json").is_file() else "gguf",
                tags=["gguf"] if files else [])


def write_run_cards(adapter_dirs: Iterable[str | Path]) -> list[Path]:
    """README.md into each final adapter directory given (the registry's final adapter of each training stage of a
    run: cpt/, sft/<last step>/, loop/best/); a directory that holds no adapter (a stage not run yet) is passed over."""

    written = []
    for d in map(Path, adapter_dirs):
        if (d / "adapter_config.json").is_file():
            with atomic_write(d / "README.md") as fh:
                fh.write(adapter_card(d))
            written.append(d / "README.md")
    return written
