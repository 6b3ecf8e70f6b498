"""`kormed bench train`: training tokens/s and peak memory, kormed against the scripts a user would write.

One job runs, with the same model, data, LoRA settings (rsLoRA r16, alpha 32, on the language model's linear
layers), block length and batch, each "arm" in its own Python process (so peak memory is per arm):

- `cpt`: `reference` = a plain `transformers.Trainer` + PEFT `get_peft_model` script (default loss, fp32 on CPU,
  bf16 on CUDA, documents tokenized and grouped into `max_length` blocks, `DataCollatorForLanguageModeling`);
  `seeds` = the same script at the seeds' settings (batch 2, gradient checkpointing; on CUDA by default);
  `kormed` = :func:`kormed.train.cpt.run_cpt`, kormed's own path, at its defaults.
- `sft` on the seeds' step-3 mix (MCQ with reasoning 70 % + dictionary 30 %, bundled sample data):
  `reference` = a plain Trainer on padded batches with answer-only labels (`DataCollatorForSeq2Seq`);
  `trl` = TRL's `SFTTrainer` at its defaults on a prompt/completion dataset (completion-only loss);
  `kormed` = :func:`kormed.train.sft.run_sft_step`, kormed's own step runner.
- `kormed-full` (either mode, with `--method full` or `--method lora,full`): kormed's own path with
  `train.method full` (every language-model weight trains, fp32 master weights), so LoRA's and full
  fine-tuning's peak memory and tokens/s print side by side (the row's kormed / kormed-full ratios).
  Every SFT arm trains on the same examples in the same order: the bench writes the step-3 mix (kormed's
  `mix_datasets`, seed 42) once, in the order kormed's step runner will see it, and every Trainer draws its
  batches with the same seeded sampler, so the arms see the same examples in the same micro-batches.

Measurement, identical for every arm: one untimed warm-up optimizer step, then `steps` timed ones. A global
optimizer step hook (`torch.optim.optimizer.register_optimizer_step_post_hook`) stamps the end of each step
(after a CUDA synchronize); a forward pre-hook on the trained model counts the REAL tokens of every training
forward pass (`input_ids != pad_token_id`: padding is not counted, padding-free rows have none). tokens/s =
real tokens of the timed steps / their wall time. Peak memory: the arm process's peak RSS
(`getrusage(RUSAGE_SELF).ru_maxrss`, model loading included) on CPU, `torch.cuda.max_memory_allocated` on GPU.

Models (`--arch`): `gemma3-270m` (the embedded model), `medgemma-4b` (a RANDOM `Gemma3ForConditionalGeneration`
of MedGemma 4B's sizes, built from a config -- no download -- and cached as safetensors once, so every arm loads
the same weights by `from_pretrained`), and `tiny` / `tiny-multimodal` (tiny random Gemma 3 models for tests).
The tokenizer is always the real 262K Gemma 3 tokenizer of the embedded model.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import importlib.metadata as md
import inspect
import json
import os
import platform
import re
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from kormed.bench.worker import run_worker
from kormed.config import check_device
from kormed.data.chat import END_OF_TURN, chat_prompt, encode_chat_example, render_dict_entry, render_mcq
from kormed.data.mixture import mix_datasets
from kormed.errors import KormedError
from kormed.io import Log, check_output_path, iter_jsonl, read_json, write_json, write_jsonl
from kormed.models import cache_root, ensure_embedded_model, load_tokenizer, pick_runtime
from kormed.prepare.config import PrepareConfig
from kormed.prepare.corpus import run_prepare
from kormed.sample_data import sample_data_root, sample_paths
from kormed.train.config import CPTConfig, LoraOptions
from kormed.train.sft_config import SFTConfig, SFTStepConfig
from kormed.train.stop_conditions import Tolerances

# torch, transformers and the kormed modules that load them are imported inside the functions that use them:
# this module is imported by `kormed --help` or by a torch-free command, which must not pay for them.

MODES = ("cpt", "sft")
ARMS = {"cpt": ("reference", "seeds", "kormed", "kormed-full"), "sft": ("reference", "trl", "kormed", "kormed-full")}
# kormed's arm per training method (`--method`): LoRA (the default) and full fine-tuning (`train.method full`)
METHOD_ARMS = {"lora": "kormed", "full": "kormed-full"}
ARCHS = ("gemma3-270m", "medgemma-4b", "tiny", "tiny-multimodal")
DTYPES = ("auto", "float32", "bfloat16")
BENCH_MODEL_VERSION = 1  # bump when a random bench model's recipe changes (rebuilds the cached weights)
SEED = 42
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "use_rslora": True}
LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# issue 11's targets (kormed / reference on the embedded 270M; on an H100-class GPU at MedGemma-4B size)
TARGETS = {
    "cpt": {"memory_vs_reference_max": 0.5, "tokens_per_s_vs_reference_min": 2.0},
    "sft": {"tokens_per_s_vs_reference_min": 3.0, "tokens_per_s_vs_trl_min": 1.0},
    "cpt_gpu_medgemma": {"tokens_per_s_min": 30000.0, "tokens_per_s_vs_seeds_min": 15.0},
}


# --------------------------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------------------------


def medgemma_4b_config() -> Any:
    """A `Gemma3Config` with the sizes of the public MedGemma 4B config (random weights are built from it)."""
    from transformers import Gemma3Config, Gemma3TextConfig, SiglipVisionConfig

    text = Gemma3TextConfig(
        vocab_size=262208, hidden_size=2560, intermediate_size=10240, num_hidden_layers=34, num_attention_heads=8,
        num_key_value_heads=4, head_dim=256, sliding_window=1024, query_pre_attn_scalar=256,
        max_position_embeddings=131072,
    )
    vision = SiglipVisionConfig(
        hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16, image_size=896,
        patch_size=14, vision_use_head=False,
    )
    return Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=256)


def tiny_config(multimodal: bool) -> Any:
    """Tiny random Gemma 3 (text-only or multimodal) with the real 262K vocabulary, for tests."""
    from transformers import Gemma3Config, Gemma3TextConfig, SiglipVisionConfig

    text = Gemma3TextConfig(
        vocab_size=262144 if not multimodal else 262208, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=2048, sliding_window=512,
    )
    if not multimodal:
        return text
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                image_size=28, patch_size=14, vision_use_head=False)
    return Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4)


def bench_model_dir(arch: str) -> Path:

    return cache_root() / "bench-models" / f"{arch}-v{BENCH_MODEL_VERSION}"


def _build_random_model(arch: str, device: str, target: Path, tokenizer_dir: str) -> None:
    """Build the random model of `arch` (in memory, on `device`) and save it with the real tokenizer."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3ForConditionalGeneration


    tokenizer = load_tokenizer(tokenizer_dir)
    torch.manual_seed(SEED)
    config = medgemma_4b_config() if arch == "medgemma-4b" else tiny_config(arch == "tiny-multimodal")
    dtype = torch.bfloat16 if arch == "medgemma-4b" else torch.float32
    cls = Gemma3ForCausalLM if arch == "tiny" else Gemma3ForConditionalGeneration
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = cls(config)
    finally:
        torch.set_default_dtype(previous)
    model.config.dtype = str(dtype).removeprefix("torch.")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as tmp:
        out = Path(tmp) / "model"
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        (out / "kormed_bench_model.json").write_text(json.dumps(
            {"arch": arch, "random": True, "seed": SEED, "version": BENCH_MODEL_VERSION}, indent=2))
        if target.exists():
            shutil.rmtree(target)
        os.replace(out, target)


def ensure_bench_model(arch: str, device: str, log: Log = print, tokenizer: str | None = None) -> Path:
    """The local model directory of `arch` (random models are built once, in a subprocess, and cached).

    `tokenizer`: a directory holding the Gemma 3 tokenizer files, for a machine where the embedded model cannot
    be converted (e.g. a GPU host without the GGUF package); default: the embedded model's tokenizer."""

    if arch not in ARCHS:
        raise KormedError(f"unknown arch '{arch}' (use {', '.join(ARCHS)})", field="arch")
    if arch == "gemma3-270m":
        return ensure_embedded_model(log=log)
    target = bench_model_dir(arch)
    if (target / "config.json").is_file() and (target / "kormed_bench_model.json").is_file():
        return target
    if tokenizer is not None and not (Path(tokenizer) / "tokenizer_config.json").is_file():
        raise KormedError("not a tokenizer directory (no tokenizer_config.json)", path=tokenizer, field="tokenizer")
    tokenizer = tokenizer or str(ensure_embedded_model(log=log))
    if arch == "medgemma-4b" and not device.startswith("cuda"):
        log("[kormed] note: building the MedGemma-4B-sized random model on CPU (slow, about 17 GB of RAM)")
    log(f"[kormed] building the random {arch} model into {target} (once)")
    _run_task({"task": "build", "arch": arch, "device": device, "target": str(target), "tokenizer": tokenizer},
              target.parent, log=log, name=f"build-{arch}")
    return target


# --------------------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------------------


def prepare_cpt_data(work: Path, log: Log = print) -> tuple[Path, Path]:
    """The CPT corpus (and its validation text) of the bundled sample data, made by `kormed prepare`."""

    out = work / "corpus" / "raw_text_mixed.jsonl"
    cfg = PrepareConfig(data_root=str(sample_data_root()), out=str(out), num_proc=1)
    run_prepare(cfg, log=None, progress=False)
    val = out.with_name("raw_text_mixed.val.jsonl")
    if not out.is_file() or not val.is_file():
        raise KormedError("kormed prepare did not write the corpus and its validation text", path=out.parent)
    return out, val


def step3_examples(n: int, *, seed: int = SEED,
                   fits: Callable[[dict[str, Any]], bool] | None = None) -> tuple[list[dict[str, str]], int]:
    """The first `n` examples of the seeds' step-3 mix (kormed's mix of MCQ-with-reasoning and dictionary QA
    from the bundled sample data), each {"user", "answer", "source"}, in the mix's order, and how many were
    passed over because `fits` said no (the bench keeps only examples every arm trains on whole: arms truncate
    or drop over-long examples in different ways - TRL 1.16 drops them)."""
    from datasets import Dataset

    from kormed.records import read_dictionary, read_mcq_jsonl

    paths = sample_paths()
    questions, _ = read_mcq_jsonl(paths["mcq_train"])
    entries = [(e, False) for e in read_dictionary(paths["medical_dict"])[0]]
    entries += [(e, True) for e in read_dictionary(paths["char_dict"])[0]]
    step = SFTConfig().steps[2]  # the seeds' step 3
    sources: dict[str, list[tuple[str, str]]] = {
        "qa_cot": [render_mcq(q, reasoning=True) for q in questions],
        "qa": [render_mcq(q) for q in questions],
        "dict": [render_dict_entry(e, symbol=s) for e, s in entries],
    }
    sets = {k: Dataset.from_dict({"user": [u for u, _ in v], "answer": [a for _, a in v], "source": [k] * len(v)})
            for k, v in sources.items() if k in step.mix}
    mixed = mix_datasets(sets, step.mix, mode=step.mode, seed=seed)
    kept: list[dict[str, str]] = []
    passed_over = 0
    for row in mixed:  # only as far as needed: `fits` may tokenize
        if len(kept) == n:
            break
        if fits is None or fits(row):
            kept.append(dict(row))
        else:
            passed_over += 1
    if len(kept) < n:
        raise KormedError(f"the step-3 mix has {len(kept)} examples that fit, {n} are needed", field="steps")
    return kept, passed_over


def training_order(examples: list[dict[str, Any]], *, seed: int = SEED) -> list[dict[str, Any]]:
    """`examples` in the order kormed's step runner trains on them: run_sft_step mixes its one source with
    `mix_datasets` (a seeded shuffle); the same call on the same number of rows gives the same permutation."""
    from datasets import Dataset


    index = Dataset.from_dict({"i": list(range(len(examples)))})
    order = mix_datasets({"mix": index}, {"mix": 1.0}, seed=seed)["i"]
    return [examples[i] for i in order]


def write_sft_data(work: Path, n: int, tokenizer: Any, max_length: int) -> tuple[Path, Path, int]:
    """(kormed's input: user/answer in mix order, the references' prompt/completion file in training order, the
    number of mix examples passed over because their whole text with <eos> is longer than `max_length` tokens)."""

    def whole(e: dict[str, Any]) -> str:
        return chat_prompt(e["user"]) + f"{e['answer']}{END_OF_TURN}\n" + tokenizer.eos_token

    examples, passed_over = step3_examples(n, fits=lambda e: len(tokenizer(whole(e))["input_ids"]) <= max_length)
    kormed_file = work / "sft" / "step3_examples.jsonl"
    ref_file = work / "sft" / "step3_prompt_completion.jsonl"
    kormed_file.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(kormed_file, examples)
    write_jsonl(ref_file, [{"prompt": chat_prompt(e["user"]), "completion": f"{e['answer']}{END_OF_TURN}\n"}
                           for e in training_order(examples)])
    return kormed_file, ref_file, passed_over


# --------------------------------------------------------------------------------------------------------------
# the parent: one subprocess per arm
# --------------------------------------------------------------------------------------------------------------


def _run_task(task: dict[str, Any], work: Path, *, log: Log, name: str, timeout: float | None = None) -> dict[str, Any]:
    """Run one task in a fresh Python process; returns its result with `process_seconds` (raises KormedError with
    the log tail)."""
    result, wall = run_worker("kormed.bench.train", task, work, name, timeout)
    result["process_seconds"] = round(wall, 2)
    return result


def device_name(device: str) -> str:
    """The GPU name on CUDA, else the CPU model name (from /proc/cpuinfo, else platform)."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def default_arms(mode: str, device: str, methods: tuple[str, ...] = ("lora",)) -> tuple[str, ...]:
    """Every arm of `mode`, except `seeds` on CPU (it is the GPU target's comparison), with kormed's arm of each
    training method in `methods` (lora: `kormed`, full: `kormed-full`)."""
    mine = {METHOD_ARMS[m] for m in methods}
    return tuple(a for a in ARMS[mode] if (a != "seeds" or device.startswith("cuda"))
                 and (a not in METHOD_ARMS.values() or a in mine))


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def make_row(mode: str, arms: dict[str, dict[str, Any]], common: dict[str, Any]) -> dict[str, Any]:
    """One JSON row: the arms' figures, the ratios kormed / each other arm, and the targets of issue 11."""
    row: dict[str, Any] = {**common, "mode": mode}
    for name, res in arms.items():
        row[name] = res
    kormed = arms.get("kormed", {})
    ratios: dict[str, dict[str, float | None]] = {}
    for name, res in arms.items():
        if name == "kormed" or "error" in res or "error" in kormed:
            continue
        ratios[name] = {"tokens_per_s": _ratio(kormed.get("tokens_per_s"), res.get("tokens_per_s")),
                        "peak_memory": _ratio(kormed.get("peak_memory_gib"), res.get("peak_memory_gib")),
                        "tokens_per_cpu_s": _ratio(kormed.get("tokens_per_cpu_s"), res.get("tokens_per_cpu_s"))}
    row["ratios_kormed_over"] = ratios
    checks: dict[str, Any] = {}
    ref, trl, seeds = ratios.get("reference", {}), ratios.get("trl", {}), ratios.get("seeds", {})
    if mode == "cpt":
        t = TARGETS["cpt"]
        if ref:
            checks["memory_vs_reference"] = {"target_max": t["memory_vs_reference_max"], "value": ref["peak_memory"]}
            checks["tokens_per_s_vs_reference"] = {"target_min": t["tokens_per_s_vs_reference_min"],
                                                   "value": ref["tokens_per_s"]}
        if common.get("device_type") == "cuda" and common.get("arch") == "medgemma-4b":
            g = TARGETS["cpt_gpu_medgemma"]
            checks["tokens_per_s"] = {"target_min": g["tokens_per_s_min"], "value": kormed.get("tokens_per_s")}
            if seeds:
                checks["tokens_per_s_vs_seeds"] = {"target_min": g["tokens_per_s_vs_seeds_min"],
                                                   "value": seeds["tokens_per_s"]}
    else:
        t = TARGETS["sft"]
        if ref:
            checks["tokens_per_s_vs_reference"] = {"target_min": t["tokens_per_s_vs_reference_min"],
                                                   "value": ref["tokens_per_s"]}
        if trl:
            checks["tokens_per_s_vs_trl"] = {"target_min": t["tokens_per_s_vs_trl_min"], "value": trl["tokens_per_s"]}
    for c in checks.values():
        v = c["value"]
        c["met"] = None if v is None else (v <= c["target_max"] if "target_max" in c else v >= c["target_min"])
    row["targets"] = checks
    return row


def run_bench(
    *,
    arch: str = "gemma3-270m",
    modes: tuple[str, ...] = MODES,
    arms: tuple[str, ...] | None = None,
    steps: int = 4,
    warmup_steps: int = 1,
    batch_size: int = 4,
    seeds_batch_size: int = 2,
    max_length: int = 512,
    device: str = "auto",
    dtype: str = "auto",
    work_dir: str | Path | None = None,
    arm_timeout: float | None = None,
    tokenizer: str | None = None,
    methods: tuple[str, ...] = ("lora",),
    log: Log = print,
) -> list[dict[str, Any]]:
    """Run every (mode, arm) in its own process and return one row per mode (see :func:`make_row`). `methods`:
    kormed's training methods to run (lora, full), each its own arm (so each its own peak memory)."""
    import torch

    for m in modes:
        if m not in MODES:
            raise KormedError(f"unknown mode '{m}' (use {', '.join(MODES)})", field="modes")
    known = {a for m in modes for a in ARMS[m]}
    for a in arms or ():
        if a not in known:
            raise KormedError(f"unknown arm '{a}' for modes {', '.join(modes)} (use {', '.join(sorted(known))})",
                              field="arms")
    if dtype not in DTYPES:
        raise KormedError(f"unknown dtype '{dtype}' (use {', '.join(DTYPES)})", field="dtype")
    for m in methods:
        if m not in METHOD_ARMS:
            raise KormedError(f"unknown method '{m}' (use {', '.join(METHOD_ARMS)})", field="method")
    if steps < 1 or warmup_steps < 0 or batch_size < 1 or seeds_batch_size < 1 or max_length < 16:
        raise KormedError("steps and batch sizes must be at least 1, max_length at least 16, warmup at least 0")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise KormedError("--device cuda was asked for but CUDA is not available")
    if device != "cpu" and not device.startswith("cuda"):
        raise KormedError(f"unknown device '{device}' (use auto, cpu, cuda or cuda:N)", field="device")
    own_work = work_dir is None
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="kormed-bench-train-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        model_dir = ensure_bench_model(arch, device, log=log, tokenizer=tokenizer)
        total_steps = steps + warmup_steps
        common = {
            "device": device_name(device),
            "device_type": "cuda" if device.startswith("cuda") else "cpu",
            "arch": arch,
            "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "settings": {"steps": steps, "warmup_steps": warmup_steps, "batch_size": batch_size,
                         "seeds_batch_size": seeds_batch_size, "max_length": max_length, "dtype": dtype,
                         "lora": {**LORA, "target_modules": list(LINEAR_MODULES)}, "seed": SEED,
                         "cpu_threads": torch.get_num_threads(), "host": platform.node(),
                         "load_average_before": _loadavg()},
            "library_versions": _library_versions(),
        }
        rows = []
        for mode in modes:
            wanted = [a for a in ARMS[mode] if (a in arms if arms else a in default_arms(mode, device, methods))]
            if not wanted:
                continue
            data: dict[str, str] = {}
            if mode == "cpt":
                corpus, val = prepare_cpt_data(work, log=log)
                data = {"corpus": str(corpus), "val": str(val)}
            else:
                from kormed.models import load_tokenizer

                kormed_file, ref_file, passed_over = write_sft_data(work, total_steps * batch_size,
                                                                    load_tokenizer(str(model_dir)), max_length)
                if passed_over:
                    log(f"[kormed] bench train: {passed_over} step-3 examples longer than {max_length} tokens "
                        "passed over (every arm trains the same whole examples)")
                data = {"examples": str(kormed_file), "prompt_completion": str(ref_file)}
            results: dict[str, dict[str, Any]] = {}
            for arm in wanted:
                task = {"task": "arm", "mode": mode, "arm": arm, "model_dir": str(model_dir), "device": device,
                        "dtype": dtype, "steps": steps, "warmup_steps": warmup_steps,
                        "method": "full" if arm == METHOD_ARMS["full"] else "lora",
                        "batch_size": seeds_batch_size if arm == "seeds" else batch_size,
                        "max_length": max_length, "work": str(work / f"{mode}-{arm}"), **data}
                log(f"[kormed] bench train: {mode} / {arm} ({arch}, {device}) ...")
                try:
                    results[arm] = _run_task(task, work / "tasks", log=log, name=f"{mode}-{arm}", timeout=arm_timeout)
                except KormedError as exc:
                    log(f"[kormed] {mode} / {arm} failed: {exc}")
                    results[arm] = {"error": str(exc)}
                    continue
                r = results[arm]
                log(f"[kormed]   {r['tokens_per_s']:.1f} real tokens/s, peak {r['peak_memory_gib']:.2f} GiB "
                    f"({r['process_seconds']:.0f} s process)")
            rows.append(make_row(mode, results, common))
        return rows
    finally:
        if own_work:
            shutil.rmtree(work, ignore_errors=True)


def _loadavg() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def _library_versions() -> dict[str, str]:

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "trl", "accelerate", "liger-kernel", "flash-attn"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def format_table(rows: list[dict[str, Any]]) -> str:
    """The printed table: per arm tokens/s, peak memory and kormed's ratios to it."""
    lines = [f"{'mode':<5} {'arm':<10} {'real tok/s':>11} {'tok/CPU-s':>10} {'peak GiB':>9} {'kormed/arm tok/s':>17} "
             f"{'kormed/arm mem':>15}  settings"]
    for row in rows:
        for arm in ARMS[row["mode"]]:
            res = row.get(arm)
            if res is None:
                continue
            if "error" in res:
                lines.append(f"{row['mode']:<5} {arm:<10} {'failed':>11}  {res['error'].splitlines()[0][:80]}")
                continue
            ratio = row["ratios_kormed_over"].get(arm, {})
            tr = f"{ratio['tokens_per_s']:.2f}x" if ratio.get("tokens_per_s") else ""
            mr = f"{ratio['peak_memory']:.2f}x" if ratio.get("peak_memory") else ""
            s = res.get("settings", {})
            desc = ((f"{s['method']}, " if s.get("method") else "") + f"{s.get('compute_dtype', '?')}, "
                    f"batch {s.get('batch_size')}, "
                    f"{'ckpt' if s.get('gradient_checkpointing') else 'no ckpt'}, {s.get('loss', '?')}"
                    + (", padding-free" if s.get("padding_free") else ""))
            cpu = res.get("tokens_per_cpu_s") or 0.0
            lines.append(f"{row['mode']:<5} {arm:<10} {res['tokens_per_s']:>11.1f} {cpu:>10.1f} "
                         f"{res['peak_memory_gib']:>9.2f} {tr:>17} {mr:>15}  {desc}")
        for name, c in row.get("targets", {}).items():
            bound = f"<= {c['target_max']}" if "target_max" in c else f">= {c['target_min']}"
            verdict = "n/a" if c["met"] is None else ("met" if c["met"] else "NOT met")
            lines.append(f"      target {row['mode']} {name}: {c['value']} ({bound}) {verdict}")
    return "\n".join(lines)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table (benchmarks/README.md): one line per arm, then the targets."""
    out = ["| mode | arm | real tokens/s | tokens per CPU-second | peak memory (GiB) | kormed / arm, tokens/s | "
           "kormed / arm, memory | settings |", "|---|---|---|---|---|---|---|---|"]
    checks = []
    for row in rows:
        for arm in ARMS[row["mode"]]:
            res = row.get(arm)
            if res is None:
                continue
            if "error" in res:
                out.append(f"| {row['mode']} | {arm} | failed | | | | | {res['error'].splitlines()[0][:60]} |")
                continue
            ratio = row["ratios_kormed_over"].get(arm, {})
            s = res.get("settings", {})
            desc = ((f"{s['method']}, " if s.get("method") else "") + f"{s.get('compute_dtype')}, "
                    f"batch {s.get('batch_size')}, "
                    f"{'checkpointing' if s.get('gradient_checkpointing') else 'no checkpointing'}, "
                    f"loss {s.get('loss')}" + (", padding-free" if s.get("padding_free") else ""))
            tr = f"{ratio['tokens_per_s']:.2f}x" if ratio.get("tokens_per_s") else ""
            mr = f"{ratio['peak_memory']:.2f}x" if ratio.get("peak_memory") else ""
            cpu = res.get("tokens_per_cpu_s") or 0.0
            out.append(f"| {row['mode']} | {arm} | {res['tokens_per_s']:.1f} | {cpu:.1f} | "
                       f"{res['peak_memory_gib']:.2f} | {tr} | {mr} | {desc} |")
        for name, c in row.get("targets", {}).items():
            bound = f"<= {c['target_max']}x" if "target_max" in c else f">= {c['target_min']}"
            verdict = "n/a" if c["met"] is None else ("met" if c["met"] else "**not met**")
            checks.append(f"| {row['mode']} | {name} | {bound} | {c['value']} | {verdict} |")
    if checks:
        out += ["", "| mode | target (issue 11) | bound | measured | verdict |", "|---|---|---|---|---|", *checks]
    return "\n".join(out)


def default_output(rows: list[dict[str, Any]], directory: str | Path = "benchmarks/results") -> Path:
    """benchmarks/results/train-<device>-<arch>-<UTC date>.json."""
    row = rows[0] if rows else {}
    dev = re.sub(r"[^a-z0-9]+", "-", str(row.get("device", "device")).lower()).strip("-")
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M")
    return Path(directory) / f"train-{dev}-{row.get('arch', 'model')}-{stamp}.json"


# --------------------------------------------------------------------------------------------------------------
# the arm process: instrumentation
# --------------------------------------------------------------------------------------------------------------


class StepMeter:
    """Counts the real tokens of every training forward pass and stamps the end of every optimizer step."""

    def __init__(self, pad_id: int, device: str) -> None:
        self.pad_id = int(pad_id)
        self.cuda = device.startswith("cuda")
        self.real: Any = 0  # a tensor after the first forward (summed on the device; read once per step)
        self.slots = 0
        # after each optimizer step: (wall time, real tokens, computed positions, process CPU time of all threads)
        self.marks: list[tuple[float, int, int, float]] = []
        self._handles: list[Any] = []

    def install(self) -> None:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self._handles.append(register_optimizer_step_post_hook(self._after_step))
        self.start = (time.perf_counter(), 0, 0, time.process_time())
        self.load_start = _loadavg()

    def watch(self, model: Any) -> None:
        """Count the tokens of `model`'s training forward passes (the model the Trainer calls)."""
        self._handles.append(model.register_forward_pre_hook(self._before_forward, with_kwargs=True))

    def _before_forward(self, module: Any, args: tuple, kwargs: dict) -> None:
        if not module.training:
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            return
        self.real = self.real + ids.ne(self.pad_id).sum()
        self.slots += ids.numel()

    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
        self.marks.append((time.perf_counter(), int(self.real), self.slots, time.process_time()))

    def figures(self, warmup: int, steps: int) -> dict[str, Any]:
        if len(self.marks) < warmup + steps:
            raise RuntimeError(f"only {len(self.marks)} optimizer steps ran, {warmup + steps} expected")
        if steps < 1:
            raise RuntimeError("no timed step")
        t0, r0, s0, c0 = self.marks[warmup - 1] if warmup else self.start
        t1, r1, s1, c1 = self.marks[warmup + steps - 1]
        prev = [self.start, *self.marks]
        per_step = [(b[1] - a[1], b[2] - a[2], b[0] - a[0]) for a, b in zip(prev, prev[1:], strict=False)]
        seconds = t1 - t0
        return {
            "tokens_per_s": round((r1 - r0) / seconds, 3),
            "timed_steps": steps,
            "timed_seconds": round(seconds, 4),
            # CPU time of this process in the timed steps: on a shared machine the wall clock also counts other
            # processes' work, the CPU time does not (tokens per CPU-second is the contention-free view)
            "timed_cpu_seconds": round(c1 - c0, 3),
            "tokens_per_cpu_s": round((r1 - r0) / (c1 - c0), 3) if c1 > c0 else None,
            "load_average": {"start": self.load_start, "end": _loadavg()},
            "timed_real_tokens": r1 - r0,
            "timed_computed_tokens": s1 - s0,
            "real_fraction": round((r1 - r0) / (s1 - s0), 4) if s1 > s0 else None,
            "optimizer_steps": len(self.marks),
            "total_real_tokens": self.marks[-1][1],
            "step_real_tokens": [p[0] for p in per_step],
            "step_computed_tokens": [p[1] for p in per_step],
            "step_seconds": [round(p[2], 4) for p in per_step],
        }

    def callback(self) -> Any:
        """A TrainerCallback for kormed's stages: the engine calls its `attach(trainer)`, which watches the model."""
        from transformers import TrainerCallback

        meter = self

        class MeterCallback(TrainerCallback):
            trainer: Any = None

            def attach(self, trainer: Any) -> None:
                if self.trainer is None:
                    self.trainer = trainer
                    meter.watch(trainer.model)

        return MeterCallback()


def peak_memory_gib(device: str) -> tuple[float, str]:
    """(peak GiB, what it is): CUDA max allocated on GPU, the process's peak RSS on CPU."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated() / 2**30, "torch.cuda.max_memory_allocated"

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30, "peak RSS (ru_maxrss)"


# --------------------------------------------------------------------------------------------------------------
# the arm process: the reference scripts (what a user would write with transformers / PEFT / TRL)
# --------------------------------------------------------------------------------------------------------------


def _ref_model(task: dict[str, Any]) -> tuple[Any, Any]:
    """The reference scripts' model and tokenizer: fp32 on CPU, bf16 on CUDA, default (SDPA) attention."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, Gemma3ForConditionalGeneration

    path = task["model_dir"]
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = AutoConfig.from_pretrained(path)
    cls = Gemma3ForConditionalGeneration if hasattr(config, "vision_config") else AutoModelForCausalLM
    dtype = torch.bfloat16 if task["device"].startswith("cuda") else torch.float32
    model = cls.from_pretrained(path, dtype=dtype, use_safetensors=True).to(task["device"])
    return model, tokenizer


def _ref_lora(model: Any) -> Any:
    from peft import LoraConfig

    names = "|".join(LINEAR_MODULES)
    # the language model's linear layers only (a multimodal model's vision tower has q/k/v_proj too)
    target = rf".*language_model.*\.({names})" if hasattr(model.config, "vision_config") else rf".*\.({names})"
    return LoraConfig(task_type="CAUSAL_LM", target_modules=target, **LORA)


def _ref_args(task: dict[str, Any], **extra: Any) -> dict[str, Any]:
    cuda = task["device"].startswith("cuda")
    return dict(output_dir=str(Path(task["work"]) / "out"), per_device_train_batch_size=task["batch_size"],
                gradient_accumulation_steps=1, max_steps=task["steps"] + task["warmup_steps"], learning_rate=2e-5,
                logging_steps=1, save_strategy="no", report_to="none", use_cpu=not cuda, bf16=cuda, seed=SEED,
                **extra)


def _cpt_reference(task: dict[str, Any], meter: StepMeter) -> dict[str, Any]:
    """Plain Trainer + PEFT CPT: tokenize documents, group into max_length blocks, default loss."""
    from datasets import load_dataset
    from peft import get_peft_model
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    seeds = task["arm"] == "seeds"
    model, tokenizer = _ref_model(task)
    model = get_peft_model(model, _ref_lora(model))
    if seeds:
        model.enable_input_require_grads()
    block = task["max_length"]
    raw = load_dataset("json", data_files=task["corpus"], split="train")
    tokenized = raw.map(lambda b: tokenizer(b["text"]), batched=True, remove_columns=raw.column_names)

    def group_texts(batch: dict[str, list]) -> dict[str, list]:
        ids = [t for seq in batch["input_ids"] for t in seq]
        n = len(ids) // block * block
        return {"input_ids": [ids[i:i + block] for i in range(0, n, block)]}

    blocks = tokenized.map(group_texts, batched=True, remove_columns=tokenized.column_names)
    args = TrainingArguments(**_ref_args(task, gradient_checkpointing=seeds))
    trainer = Trainer(model=model, args=args, train_dataset=blocks,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    meter.watch(trainer.model)
    trainer.train()
    return {"compute_dtype": "bfloat16" if args.bf16 else "float32", "gradient_checkpointing": seeds,
            "loss": "model default (full logits)", "attention": model.config._attn_implementation,
            "blocks": len(blocks), "batch_size": task["batch_size"]}


def _sft_reference(task: dict[str, Any], meter: StepMeter) -> dict[str, Any]:
    """Plain Trainer SFT: prompt masked to -100, answer learned, each batch padded to its longest example."""
    from datasets import load_dataset
    from peft import get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    model, tokenizer = _ref_model(task)
    model = get_peft_model(model, _ref_lora(model))
    length = task["max_length"]
    raw = load_dataset("json", data_files=task["prompt_completion"], split="train")

    def encode(ex: dict[str, str]) -> dict[str, list[int]]:
        prompt = tokenizer(ex["prompt"])["input_ids"]  # adds <bos>
        answer = tokenizer(ex["completion"], add_special_tokens=False)["input_ids"]
        ids = (prompt + answer)[:length]
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": ([-100] * len(prompt) + answer)[:length]}

    train = raw.map(encode, remove_columns=raw.column_names)
    args = TrainingArguments(**_ref_args(task))
    trainer = Trainer(model=model, args=args, train_dataset=train,
                      data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True))
    meter.watch(trainer.model)
    trainer.train()
    return {"compute_dtype": "bfloat16" if args.bf16 else "float32", "gradient_checkpointing": False,
            "loss": "model default (full logits)", "attention": model.config._attn_implementation,
            "examples": len(train), "batch_size": task["batch_size"]}


def _sft_trl(task: dict[str, Any], meter: StepMeter) -> dict[str, Any]:
    """TRL SFTTrainer at its defaults on the prompt/completion file (completion-only loss by default)."""
    from datasets import load_dataset
    from trl import SFTConfig, SFTTrainer

    model, tokenizer = _ref_model(task)
    train = load_dataset("json", data_files=task["prompt_completion"], split="train")
    cuda = task["device"].startswith("cuda")
    args = SFTConfig(output_dir=str(Path(task["work"]) / "out"), per_device_train_batch_size=task["batch_size"],
                     gradient_accumulation_steps=1, max_steps=task["steps"] + task["warmup_steps"],
                     max_length=task["max_length"], logging_steps=1, save_strategy="no", report_to="none",
                     use_cpu=not cuda, seed=SEED)
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer,
                         peft_config=_ref_lora(model))
    meter.watch(trainer.model)
    trainer.train()
    return {"compute_dtype": "bfloat16" if args.bf16 else "float32",
            "gradient_checkpointing": bool(args.gradient_checkpointing), "loss": f"trl {args.loss_type}",
            "completion_only_loss": trainer.completion_only_loss, "padding_free": bool(args.padding_free),
            "attention": model.config._attn_implementation, "examples": len(train), "batch_size": task["batch_size"]}


# --------------------------------------------------------------------------------------------------------------
# the arm process: kormed's own path
# --------------------------------------------------------------------------------------------------------------


def _kormed_train_options(base: Any, task: dict[str, Any]) -> Any:
    """kormed's defaults, with the bench's batch, step budget, device and dtype; no validation or saving
    during the run (the timed steps are training steps only)."""
    fields = {f.name for f in dataclasses.fields(base)}
    over: dict[str, Any] = dict(batch_size=task["batch_size"], grad_accum=1, scale_accum=False,
                                max_steps=task["steps"] + task["warmup_steps"], eval_steps=1_000_000,
                                eval_on_start=False, load_best_at_end=False, report_to=[], device=task["device"],
                                seed=SEED, method=task.get("method", "lora"))
    if "dtype" in fields:
        over["dtype"] = task["dtype"]
    return dataclasses.replace(base, **{k: v for k, v in over.items() if k in fields})


def _kormed_settings(info: dict[str, Any], options: Any) -> dict[str, Any]:
    from kormed.train.engine.model_setup import use_gradient_checkpointing

    runtime = info.get("runtime") or {}
    loss = info.get("loss") or {}
    return {"compute_dtype": runtime.get("compute_dtype") or runtime.get("dtype"),
            "load_dtype": runtime.get("dtype"), "runtime": runtime,
            "gradient_checkpointing": use_gradient_checkpointing(options, runtime.get("device", "cpu")),
            "loss": loss.get("impl", "?"),
            "attention": runtime.get("attn_implementation"), "batch_size": options.batch_size,
            "method": getattr(options, "method", "lora"), "trainable_params": info.get("trainable_params")}


def _cpt_kormed(task: dict[str, Any], meter: StepMeter) -> dict[str, Any]:
    """kormed's CPT: run_cpt itself (packing, LoRA, engine, loss) at its defaults."""
    from kormed.train.cpt import run_cpt

    base = CPTConfig()
    cfg = dataclasses.replace(base, data=task["corpus"], val=task["val"], model=task["model_dir"],
                              output=str(Path(task["work"]) / "out"), max_length=task["max_length"],
                              cache_dir=str(Path(task["work"]) / "packed"), max_val_samples=2,
                              train=_kormed_train_options(base.train, task))
    info = run_cpt(cfg, callbacks=[meter.callback()], log=lambda m: print(m, flush=True))
    return {**_kormed_settings(info, cfg.train), "blocks": info["data"]["train"]["blocks"]}


def _sft_kormed(task: dict[str, Any], meter: StepMeter) -> dict[str, Any]:
    """kormed's SFT: kormed's model preparation, chat encoding and step runner (run_sft_step) on the examples."""
    from datasets import Dataset

    from kormed.train import sft
    from kormed.train.engine.model_setup import prepare_full_model, prepare_model_for_training

    base = SFTConfig()
    options = _kormed_train_options(base.train, task)
    runtime = _kormed_runtime(options)
    log = lambda m: print(m, flush=True)  # noqa: E731
    if options.method == "full":
        model, tokenizer, info = prepare_full_model(task["model_dir"], runtime, log=log)
    else:
        model, tokenizer, info = prepare_model_for_training(task["model_dir"], lora=LoraOptions(),
                                                            runtime=runtime, log=log, seed=SEED)
    examples = [rec for _, rec in iter_jsonl(task["examples"], what="bench examples")]
    rows = [encode_chat_example(tokenizer, e["user"], e["answer"], task["max_length"]) for e in examples]

    def to_ds(rs: list[dict[str, list[int]]]) -> Any:
        return Dataset.from_dict({"input_ids": [r["input_ids"] for r in rs], "labels": [r["labels"] for r in rs]})

    data = sft.EncodedData(train={"qa_cot": to_ds(rows)}, eval={"qa": to_ds(rows[:2])}, raw_blocks=[], stats={})
    # one pre-mixed source: the examples ARE the step-3 mix; the condition never holds, so max_steps decides
    step = SFTStepConfig(description="bench: step-3 mix", mix={"qa_cot": 1.0}, stop=["eval_qa_loss < 0"],
                         max_steps=options.max_steps)
    ctx_fields = {f.name for f in dataclasses.fields(sft.StepContext)}
    extra = {"padding_free": base.padding_free} if "padding_free" in ctx_fields and hasattr(base, "padding_free") \
        else {}
    ctx = sft.StepContext(model=model, tokenizer=tokenizer, runtime=runtime, data=data, train_options=options,
                          baseline=None, tolerances=Tolerances(), seed=SEED, stopping_strategy=base.stopping_strategy,
                          info=info, log=log, **extra)
    meter.watch(model)
    full = sft.run_sft_step(ctx, step, name="bench", out_dir=Path(task["work"]) / "out").to_json()
    batches = full.get("batches") or {}
    return {**_kormed_settings(full, options), "padding_free": batches.get("padding_free"),
            "examples": len(rows)}


def _kormed_runtime(options: Any) -> Any:
    """The runtime kormed's stages pick for these options (device, and the compute dtype where supported)."""


    params = inspect.signature(pick_runtime).parameters
    if "dtype" in params and hasattr(options, "dtype"):
        return pick_runtime(options.device, dtype=options.dtype)
    return pick_runtime(options.device)


ARM_FUNCTIONS = {("cpt", "reference"): _cpt_reference, ("cpt", "seeds"): _cpt_reference,
                 ("cpt", "kormed"): _cpt_kormed, ("sft", "reference"): _sft_reference, ("sft", "trl"): _sft_trl,
                 ("sft", "kormed"): _sft_kormed, ("cpt", "kormed-full"): _cpt_kormed,
                 ("sft", "kormed-full"): _sft_kormed}


def _pad_token_id(model_dir: str) -> int:
    """The padding id (from the tokenizer's special tokens; loading the 262K tokenizer only for it takes seconds)."""
    tok_json = Path(model_dir) / "tokenizer.json"
    try:
        pad = read_json(Path(model_dir) / "tokenizer_config.json")["pad_token"]
        pad = pad["content"] if isinstance(pad, dict) else pad
        added = read_json(tok_json)["added_tokens"]
        return next(int(t["id"]) for t in added if t["content"] == pad)
    except (OSError, KeyError, StopIteration, ValueError, KormedError):
        from kormed.models import load_tokenizer

        return int(load_tokenizer(model_dir).pad_token_id)


def run_arm(task: dict[str, Any]) -> dict[str, Any]:
    """Run one arm in this process and return its figures (called in the arm's own process)."""
    import torch

    device = task["device"]
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    pad_id = _pad_token_id(task["model_dir"])
    meter = StepMeter(pad_id, device)
    meter.install()
    Path(task["work"]).mkdir(parents=True, exist_ok=True)
    settings = ARM_FUNCTIONS[(task["mode"], task["arm"])](task, meter)
    figures = meter.figures(task["warmup_steps"], task["steps"])
    peak, kind = peak_memory_gib(device)
    return {**figures, "peak_memory_gib": round(peak, 3), "memory": kind, "settings": settings}


def _worker_main(argv: list[str]) -> int:
    task_file, result_file = argv
    task = read_json(task_file, what="bench task")
    if task["task"] == "build":
        _build_random_model(task["arch"], task["device"], Path(task["target"]), task["tokenizer"])
        result: dict[str, Any] = {"built": task["target"]}
    else:
        result = run_arm(task)
    Path(result_file).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


# --------------------------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------------------------


def _csv(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    return items or None


def register(app: typer.Typer, subapps: dict[str, typer.Typer]) -> None:
    """Add `kormed bench train`."""

    @subapps["bench"].command("train")
    def bench_train(
        arch: str = typer.Option("gemma3-270m", "--arch",
                                 help="gemma3-270m (embedded) | medgemma-4b (random, MedGemma 4B sizes) | tiny."),
        modes: str = typer.Option("cpt,sft", "--modes", help="Comma-separated: cpt, sft."),
        arms: str = typer.Option(None, "--arms", help="Comma-separated arms (cpt: reference, seeds, kormed, "
                                 "kormed-full; sft: reference, trl, kormed, kormed-full). Default: all, seeds only "
                                 "on CUDA, kormed's per --method."),
        method: str = typer.Option("lora", "--method", help="kormed's training methods, comma-separated: lora "
                                   "(arm kormed), full (arm kormed-full: full fine-tuning), e.g. lora,full to see "
                                   "their memory and tokens/s side by side."),
        steps: int = typer.Option(4, "--steps", min=1, help="Timed optimizer steps per arm."),
        warmup_steps: int = typer.Option(1, "--warmup-steps", min=0, help="Untimed steps before them."),
        batch_size: int = typer.Option(4, "--batch-size", min=1, help="Sequences (examples) per step."),
        seeds_batch_size: int = typer.Option(2, "--seeds-batch-size", min=1, help="Batch of the 'seeds' arm."),
        max_length: int = typer.Option(512, "--max-length", min=16, help="Tokens per CPT block / SFT example."),
        device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N."),
        dtype: str = typer.Option("auto", "--dtype", help="kormed's compute dtype: auto | float32 | bfloat16."),
        output: str = typer.Option(None, "--output", help="JSON file to write (default: benchmarks/results/"
                                   "train-<device>-<arch>-<date>.json)."),
        work_dir: str = typer.Option(None, "--work-dir", help="Keep the arms' data, logs and outputs here."),
        arm_timeout: float = typer.Option(None, "--arm-timeout", help="Seconds before an arm is stopped."),
        tokenizer: str = typer.Option(None, "--tokenizer", help="Gemma 3 tokenizer directory for the random "
                                      "models (default: the embedded model's)."),
    ) -> None:
        """Training tokens/s and peak memory, kormed vs a plain Trainer+PEFT script and TRL's SFTTrainer."""

        check_device(device)
        if output:
            check_output_path(output, "file", "--output", inputs={"--tokenizer": tokenizer})
        if work_dir:
            check_output_path(work_dir, "dir", "--work-dir", inputs={"--tokenizer": tokenizer})
        rows = run_bench(arch=arch, modes=_csv(modes) or MODES, arms=_csv(arms), steps=steps,
                         warmup_steps=warmup_steps, batch_size=batch_size, seeds_batch_size=seeds_batch_size,
                         max_length=max_length, device=device, dtype=dtype, work_dir=work_dir,
                         arm_timeout=arm_timeout, tokenizer=tokenizer, methods=_csv(method) or ("lora",),
                         log=lambda m: typer.echo(m, err=True))
        if rows:
            s = rows[0]["settings"]
            typer.echo(f"{rows[0]['arch']} on {rows[0]['device']} ({s['cpu_threads']} threads); batch "
                       f"{s['batch_size']} x {s['max_length']} tokens, {s['steps']} timed steps after "
                       f"{s['warmup_steps']} warm-up")
        typer.echo(format_table(rows))
        path = Path(output) if output else default_output(rows)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, rows)
        typer.echo(f"wrote {path}", err=True)
        if any("error" in r.get(a, {}) for r in rows for a in ARMS[r["mode"]]):
            raise KormedError("some arms failed (see the table)")


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
