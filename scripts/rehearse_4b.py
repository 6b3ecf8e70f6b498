"""Rehearse MedGemma-4B's real shape end to end on CPU, with each command's peak memory (issue 22).

Builds a random-weight `Gemma3ForConditionalGeneration` with MedGemma-4B's exact configuration (written below, no
download), saved in bf16 in the Hub's key layout (`language_model.model.*`, `vision_tower.vision_model.*`,
`multi_modal_projector.*`, sharded safetensors + index) without ever holding the model in fp32: the module tree is
built on the meta device and each tensor is drawn directly in bf16, one shard at a time. The tokenizer is the real
Gemma 3 tokenizer of kormed's embedded model (`kormed model path`), which is MedGemma's.

Then, each as its own `kormed` process: `tokenizer extend` (200 entries), `train cpt` (2 steps, the new rows
training), `eval ppl` with the adapter (must equal CPT's last validation perplexity), `train sft` (one step),
`chat --prompt`, `export --merge` and `export --gguf f16`. Every process's peak RSS (its own `ru_maxrss` from
`wait4`, which covers its children such as llama.cpp's converter) and wall time are printed and written to
`<workdir>/rehearsal.json`; a watchdog kills a step whose process tree passes `--limit-gib` (20).

Precision: this CPU class (AVX2, no AVX512-BF16/AMX) makes `--dtype auto` pick fp32, and a 4B model in fp32 is
17 GiB before any activation, so every command runs with `--dtype bfloat16` (frozen weights in bf16, trainable
weights fp32; see kormed.precision). `export --merge` merges in the base's dtype (bf16 from config.json).

    python scripts/rehearse_4b.py                    # the 4B shape (about 9 GB of disk per model copy)
    KORMED_REHEARSE_SIZE=tiny python scripts/rehearse_4b.py   # the same chain at a tiny size, in minutes
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

GIB = 2**30
# MedGemma-4B (google/medgemma-4b-it config.json; the same architecture as gemma-3-4b-it): Gemma 3 4B text model
# with 262,208 embedding rows, SigLIP-400M (So400m/14 at 896 px) vision tower, 256 soft tokens per image.
MEDGEMMA_4B: dict[str, Any] = {
    "architectures": ["Gemma3ForConditionalGeneration"],
    "model_type": "gemma3",
    "boi_token_index": 255999,
    "eoi_token_index": 256000,
    "image_token_index": 262144,
    "mm_tokens_per_image": 256,
    "initializer_range": 0.02,
    "eos_token_id": [1, 106],
    "text_config": {
        "model_type": "gemma3_text",
        "vocab_size": 262208,
        "hidden_size": 2560,
        "intermediate_size": 10240,
        "num_hidden_layers": 34,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "query_pre_attn_scalar": 256,
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_local_base_freq": 10000.0,
        "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
        "sliding_window": 1024,
        "sliding_window_pattern": 6,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "final_logit_softcapping": None,
        "attn_logit_softcapping": None,
    },
    "vision_config": {
        "model_type": "siglip_vision_model",
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_hidden_layers": 27,
        "num_attention_heads": 16,
        "num_channels": 3,
        "image_size": 896,
        "patch_size": 14,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
        "attention_dropout": 0.0,
        "vision_use_head": False,
    },
}


def sized_config(size: str) -> dict[str, Any]:
    """MedGemma-4B's config, or a smaller one of the same shape family for a fast run of the whole chain."""
    cfg = json.loads(json.dumps(MEDGEMMA_4B))
    if size == "4b":
        return cfg
    if size == "tiny":
        text = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
                "num_key_value_heads": 1, "head_dim": 32, "query_pre_attn_scalar": 32, "sliding_window": 512}
        vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                  "image_size": 28}
        mm_tokens = 4
    elif size == "medium":  # full vision tower width, 4 text layers at a quarter width: ~1B parameters
        text = {"hidden_size": 640, "intermediate_size": 2560, "num_hidden_layers": 4, "num_attention_heads": 4,
                "num_key_value_heads": 2, "head_dim": 160, "query_pre_attn_scalar": 160}
        vision = {"num_hidden_layers": 2}
        mm_tokens = 256
    else:
        raise SystemExit(f"unknown size '{size}' (4b, medium, tiny)")
    cfg["text_config"].update(text)
    cfg["vision_config"].update(vision)
    cfg["mm_tokens_per_image"] = mm_tokens
    return cfg


# --------------------------------------------------------------------------------------------------- the model


def hub_key(name: str) -> str:
    """transformers 5's parameter name -> the key MedGemma's Hub checkpoint stores it under."""
    for ours, hub in (("model.vision_tower.", "vision_tower.vision_model."),
                      ("model.language_model.", "language_model.model."),
                      ("model.multi_modal_projector.", "multi_modal_projector.")):
        if name.startswith(ours):
            return hub + name[len(ours):]
    return name


def random_bf16(name: str, shape: tuple[int, ...], seed: int) -> Any:
    """A tensor drawn directly in bf16 (never an fp32 copy): matrices N(0, 0.02); biases 0; vision LayerNorm
    weights 1; Gemma RMSNorm weights 0 (Gemma scales by 1 + weight)."""
    import torch

    t = torch.empty(shape, dtype=torch.bfloat16)
    if len(shape) >= 2:
        return t.normal_(0.0, 0.02, generator=torch.Generator().manual_seed(seed))
    if name.endswith(".weight") and name.startswith("vision_tower.") and "norm" in name:
        return t.fill_(1.0)
    return t.zero_()


def build_model(size: str, out: Path, seed: int = 0, shard_gib: float = 2.0) -> dict[str, Any]:
    """Write the random-weight model (config, bf16 safetensors shards in the Hub layout, tokenizer) into `out`."""
    import torch
    from safetensors.torch import save_file
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    from kormed.models import ensure_embedded_model

    cfg = Gemma3Config(**{k: v for k, v in sized_config(size).items() if k not in ("model_type", "architectures")})
    cfg.architectures = ["Gemma3ForConditionalGeneration"]
    cfg.dtype = "bfloat16"
    cfg.text_config.dtype = "bfloat16"
    with torch.device("meta"):  # the module tree without any storage
        meta = Gemma3ForConditionalGeneration(cfg)
    params = [(hub_key(n), tuple(p.shape)) for n, p in meta.named_parameters()]  # a tied lm_head is listed once
    del meta
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size_now = 0
    for name, shape in params:
        nbytes = 2 * int(torch.Size(shape).numel())
        if shards[-1] and size_now + nbytes > shard_gib * GIB:
            shards.append([])
            size_now = 0
        shards[-1].append((name, shape))
        size_now += nbytes
    tmp = out.with_name(out.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weight_map: dict[str, str] = {}
    total = 0
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {name: random_bf16(name, shape, seed + j) for j, (name, shape) in
                   enumerate(shard, start=sum(len(s) for s in shards[:i]))}
        save_file(tensors, str(tmp / fname), metadata={"format": "pt"})
        total += sum(t.numel() * 2 for t in tensors.values())
        weight_map.update({name: fname for name in tensors})
        del tensors
    (tmp / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2), encoding="utf-8")
    cfg.save_pretrained(tmp)
    embedded = ensure_embedded_model(log=lambda m: None)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (embedded / name).is_file():
            shutil.copy2(embedded / name, tmp / name)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return {"parameters": total // 2, "bytes": total, "shards": len(shards), "tensors": len(weight_map)}


def check_layout(model_dir: Path) -> None:
    """Load the saved directory with transformers and require that every key was consumed and none is missing."""
    import torch
    from transformers import Gemma3ForConditionalGeneration

    model, info = Gemma3ForConditionalGeneration.from_pretrained(
        str(model_dir), dtype=torch.bfloat16, output_loading_info=True, use_safetensors=True)
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if bad:
        raise SystemExit(f"the Hub layout did not load cleanly: {bad}")
    assert next(model.parameters()).dtype == torch.bfloat16


# --------------------------------------------------------------------------------------------------- measuring


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total


def measure(name: str, cmd: list[str], log_file: Path, limit: int, env: dict[str, str]) -> dict[str, Any]:
    """Run `cmd`; return its wall time, peak RSS (ru_maxrss of wait4: the largest resident set of the process or of
    any child it waited for) and the largest process-tree RSS the watchdog saw. Killed above `limit` bytes."""
    print(f"[rehearse] {name}: {' '.join(cmd)}", flush=True)
    start = time.monotonic()
    with log_file.open("w", encoding="utf-8") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        tree_peak = 0
        killed = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            tree = _tree_rss(proc.pid)
            tree_peak = max(tree_peak, tree)
            if tree > limit and not killed:
                print(f"[rehearse] {name}: {tree / GIB:.1f} GiB > limit {limit / GIB:.0f} GiB, killing it",
                      flush=True)
                proc.kill()
                killed = True
            time.sleep(0.5)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - start
    row = {"step": name, "rc": proc.returncode, "wall_s": round(wall, 1),
           "peak_rss_gib": round(usage.ru_maxrss * 1024 / GIB, 2), "tree_peak_gib": round(tree_peak / GIB, 2),
           "killed_over_limit": killed, "log": str(log_file)}
    print(f"[rehearse] {name}: rc {row['rc']}, {row['wall_s']} s, peak RSS {row['peak_rss_gib']} GiB "
          f"(process tree {row['tree_peak_gib']} GiB)", flush=True)
    if proc.returncode != 0:
        tail = log_file.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-15:]
        print("\n".join(tail), flush=True)
    return row


# --------------------------------------------------------------------------------------------------- data


def write_data(work: Path) -> dict[str, Path]:
    """Korean text from kormed's bundled sample (namu wiki, Wikipedia, C4: ~62,000 characters) for the extension and
    CPT, a short validation file, and the bundled KorMedMCQA / dictionary files for SFT. The extension corpus is the
    sample written twice, so that with `--min-frequency 2` the extension reaches its 200 entries on so little text."""
    from datasets import load_from_disk

    from kormed.sample_data import sample_paths

    paths = sample_paths()
    texts: list[str] = []
    for source in ("wikipedia_korean", "namu_wiki", "c4_korean"):
        ds = load_from_disk(str(paths[source]))
        ds = ds["train"] if hasattr(ds, "keys") else ds
        texts += [t for t in ds["text"] if len(t) > 200]
    val = work / "val.jsonl"
    val.write_text(json.dumps({"text": texts[0][:120]}, ensure_ascii=False) + "\n", encoding="utf-8")
    train = texts[1:]
    corpus = work / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in train), encoding="utf-8")
    extension = work / "extension_corpus.jsonl"
    extension.write_text(corpus.read_text(encoding="utf-8") * 2, encoding="utf-8")
    raw = work / "raw.jsonl"
    raw.write_text("".join(json.dumps({"text": t[:300]}, ensure_ascii=False) + "\n" for t in train[:8]),
                   encoding="utf-8")
    return {"corpus": corpus, "extension_corpus": extension, "val": val, "raw": raw, "mcq": paths["mcq_train"],
            "dict": paths["medical_dict"], "char_dict": paths["char_dict"]}


def cpu_summary() -> dict[str, Any]:
    from kormed.precision import cpu_flags, cpu_has_native_bf16

    flags = cpu_flags()
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    simd = sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "f16c")))
    return {"model": model, "cores": os.cpu_count(), "simd_flags": simd, "native_bf16": cpu_has_native_bf16(),
            "mem_total_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB, 1)}


# --------------------------------------------------------------------------------------------------- the chain


def last_val_perplexity(cpt_dir: Path) -> float:
    info = json.loads((cpt_dir / "training_info.json").read_text(encoding="utf-8"))
    evals = [e for e in info["eval_history"] if "eval_perplexity" in e]
    return float(evals[-1]["eval_perplexity"])


def rehearse(size: str, work: Path, limit_gib: float, keep: bool, start: int = 0, skip_sft: bool = False) -> int:
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    kormed = [sys.executable, "-m", "kormed.cli"]
    limit = int(limit_gib * GIB)
    data = write_data(work)
    model, tok, cpt, sft = work / "model", work / "tokenizer", work / "cpt", work / "sft"
    merged, gguf, ppl = work / "merged", work / "gguf", work / "ppl.json"
    for i, d in ((1, tok), (2, cpt), (4, sft), (6, merged), (7, gguf)):  # the outputs of the steps to run
        if i >= start:
            shutil.rmtree(d, ignore_errors=True)
    dt = ["--device", "cpu", "--dtype", "bfloat16"]
    final = cpt if skip_sft else sft / "step1"  # the adapter chat and export use
    sft_steps = json.dumps([{"name": "qa", "mix": {"qa": 1.0}, "max_steps": 1,
                             "stop": ["eval_qa_loss < 0.001"]}])  # cannot hold: one step, ended by max_steps
    steps: list[tuple[str, list[str]]] = [
        ("build model", [sys.executable, __file__, "--build", "--size", size, "--workdir", str(work)]),
        ("tokenizer extend", [*kormed, "tokenizer", "extend", "--model", str(model), "--corpus",
                              str(data["extension_corpus"]), "--dict", str(data["dict"]), "--max-new-tokens", "200",
                              "--min-frequency", "2", "--out", str(tok)]),
        ("train cpt", [*kormed, "train", "cpt", "--model", str(model), "--tokenizer-path", str(tok),
                       "--data", str(data["corpus"]), "--val", str(data["val"]), "--output", str(cpt),
                       "--max-steps", "2", "--max-length", "32", "--batch-size", "1", "--grad-accum", "1",
                       "--eval-steps", "2", "--train.save-steps", "2", "--train.warmup-ratio", "0",
                       "--train.report-to", "[]", "--no-resume", *dt]),
        ("eval ppl", [*kormed, "eval", "ppl", "--adapter", str(cpt), "--data", str(data["val"]), "--max-length",
                      "32", "--batch-size", "2", "--output", str(ppl), "--quiet", *dt]),
        ("train sft", [*kormed, "train", "sft", "--from-adapter", str(cpt), "--model", str(model),
                       "--mcq", str(data["mcq"]), "--dict", str(data["dict"]), "--char-dict", str(data["char_dict"]),
                       "--raw", str(data["raw"]), "--output", str(sft), "--max-length", "48", "--val-max", "1",
                       "--raw-max-texts", "4", "--raw-val-max-texts", "1", "--steps", sft_steps,
                       "--train.batch-size", "1", "--train.grad-accum", "1", "--train.eval-steps", "1",
                       "--train.warmup-ratio", "0", "--train.report-to", "[]", *dt]),
        ("chat", [*kormed, "chat", "--adapter", str(final), "--prompt", "고혈압의 정의는?",
                  "--max-new-tokens", "4", "--device", "cpu", "--dtype", "bfloat16"]),
        ("export --merge", [*kormed, "export", "--adapter", str(final), "--merge", "--out", str(merged)]),
        ("export --gguf f16", [*kormed, "export", "--model", str(merged), "--gguf", "--gguf-type", "f16",
                               "--out", str(gguf)]),
    ]
    rows = []
    result: dict[str, Any] = {"size": size, "limit_gib": limit_gib, "cpu": cpu_summary(), "steps": rows}
    ok = True
    for i, (name, cmd) in enumerate(steps):
        if i < start or (skip_sft and name == "train sft"):
            continue
        row = measure(name, cmd, logs / f"{i:02d}-{name.split()[0]}-{name.split()[-1].strip('-')}.log", limit, env)
        rows.append(row)
        if row["rc"] != 0:
            ok = False
            break
        if name == "build model" or (i == start and (work / "build.json").is_file()):
            result["model"] = json.loads((work / "build.json").read_text(encoding="utf-8"))
        if name == "tokenizer extend":
            result["new_tokens"] = json.loads((tok / "tokenizer_report.json").read_text(encoding="utf-8"))[
                "new_tokens"]
        if name == "eval ppl":
            got = json.loads(ppl.read_text(encoding="utf-8"))["perplexity"]
            want = last_val_perplexity(cpt)
            result["ppl"] = {"eval_ppl": got, "cpt_last_validation": want}
            # the same blocks, weights and batches (--batch-size 2 = CPT's eval batch, 2 x batch_size): the same
            # number. Under bf16 autocast another batch size changes the last bits (batch 8: 2.6e-5 relative).
            if got != want:
                print(f"[rehearse] eval ppl {got} != CPT's last validation perplexity {want}", flush=True)
                ok = False
                break
        if name == "export --gguf f16":
            result["gguf_bytes"] = sum(f.stat().st_size for f in gguf.glob("*.gguf"))
        (work / "rehearsal.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    result["ok"] = ok and all(r["peak_rss_gib"] <= limit_gib for r in rows)
    (work / "rehearsal.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print("\n| step | wall (s) | peak RSS (GiB) |\n|---|---:|---:|")
    for r in rows:
        print(f"| {r['step']} | {r['wall_s']} | {r['peak_rss_gib']} |")
    print(f"\n[rehearse] {'passed' if result['ok'] else 'FAILED'}: {work / 'rehearsal.json'}", flush=True)
    if not keep:
        for d in (model, merged, gguf):
            shutil.rmtree(d, ignore_errors=True)
    return 0 if result["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default=os.environ.get("KORMED_REHEARSE_SIZE", "4b"),
                        choices=("4b", "medium", "tiny"))
    parser.add_argument("--workdir", type=Path, default=None, help="default /tmp/kormed-rehearse-<size>")
    parser.add_argument("--limit-gib", type=float, default=20.0, help="kill a step whose processes pass this")
    parser.add_argument("--keep", action="store_true", help="keep the model, merged and GGUF files")
    parser.add_argument("--start", type=int, default=0, help="skip the first N steps (their outputs are reused)")
    parser.add_argument("--skip-sft", action="store_true", help="no SFT step: chat and export use the CPT adapter")
    parser.add_argument("--build", action="store_true", help=argparse.SUPPRESS)  # the measured build step
    args = parser.parse_args(argv)
    work = args.workdir or Path(f"/tmp/kormed-rehearse-{args.size}")
    if args.build:
        info = build_model(args.size, work / "model")
        if args.size != "4b":  # the key layout does not depend on the size; loading 4B here would cost minutes
            check_layout(work / "model")
        (work / "build.json").write_text(json.dumps(info) + "\n", encoding="utf-8")
        print(f"[rehearse] built {info['parameters']:,} parameters in {info['shards']} shards", flush=True)
        return 0
    return rehearse(args.size, work, args.limit_gib, args.keep, args.start, args.skip_sft)


if __name__ == "__main__":
    sys.exit(main())
