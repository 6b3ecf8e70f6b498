"""`kormed export --merge`: fold a LoRA adapter (and trained embeddings) into a full HF model directory.

The merged directory loads with plain `from_pretrained` (safetensors, the adapter's tokenizer, the base
model's class: a multimodal Gemma3ForConditionalGeneration stays multimodal). Gemma ties embed_tokens and
lm_head: when both are still one matrix after the merge the directory stays tied; if an adapter trained them
as two different matrices the config is untied so that loading does not silently overwrite lm_head (PEFT #2777).

An adapter trained on a 4-bit NF4 base (QLoRA, kormed_adapter.json "quantization") is merged into the base loaded
unquantized: merging into the dequantized 4-bit weights would bake the quantization error into the merged model.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from kormed.errors import KormedError
from kormed.io import make_temp_dir, replace_path, write_json
from kormed.models import (
    EMBEDDED_MODEL_NAME,
    RuntimeSpec,
    check_adapter_dir,
    load_model_and_tokenizer,
    load_model_config,
    looks_like_hub_id,
    read_adapter_base,
    read_adapter_meta,
    resolve_model,
)
from kormed.weights import staged_as

_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


def _base_dtype(model_path: str) -> str:
    cfg = load_model_config(model_path)
    dtype = getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None)
    if dtype is None and hasattr(cfg, "text_config"):
        dtype = getattr(cfg.text_config, "dtype", None)
    name = str(dtype).removeprefix("torch.") if dtype is not None else "float32"
    return name if name in ("float32", "bfloat16", "float16") else "float32"


def _set_tie(config: Any, tied: bool) -> None:
    config.tie_word_embeddings = tied
    sub = getattr(config, "text_config", None)
    if sub is not None and hasattr(sub, "tie_word_embeddings"):
        sub.tie_word_embeddings = tied


def check_adapter_base(adapter: str | Path, model: str | None = None) -> str | None:
    """The base model to load `adapter` on: `model` when given, else the one the adapter recorded. A recorded local
    path that does not exist is an error, unless it names the embedded default (a cache path from another machine,
    which `load_model_and_tokenizer` maps to this machine's embedded model)."""
    base = read_adapter_base(adapter)
    if model is not None:
        check_adapter_dir(adapter)
        return model
    if base and not Path(base).expanduser().exists() and not looks_like_hub_id(base) and not Path(
            base).name.startswith(EMBEDDED_MODEL_NAME):
        raise KormedError(f"the adapter's base model cannot be found: {base}",
                          path=Path(adapter) / "adapter_config.json", hint="pass the base with --model")
    check_adapter_dir(adapter)  # safetensors weights (a pickle adapter_model.bin is refused), before any work
    return None


def merge_adapter(model: Any) -> Any:
    """`merge_and_unload` a PEFT model and make the embedding tie consistent with the weights."""
    merged = model.merge_and_unload()
    inp = merged.get_input_embeddings()
    out = merged.get_output_embeddings()
    if out is not None and out.weight is not inp.weight:
        if out.weight.shape == inp.weight.shape and torch.equal(out.weight, inp.weight):
            out.weight = inp.weight
            _set_tie(merged.config, True)
        else:
            _set_tie(merged.config, False)
    return merged


def export_merged(
    adapter: str | Path, out: str | Path, model: str | None = None, *, log: Any = print
) -> dict[str, Any]:
    """Write base + adapter merged into `out` (a full HF model directory); returns a small report."""
    adapter = Path(adapter)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / "kormed_export.json").is_file():
        raise KormedError("output directory exists and is not an earlier kormed export", path=out,
                          hint="choose an empty or new --out directory")
    base = model if model is not None else read_adapter_base(adapter)
    if model is None and base and not Path(base).expanduser().exists() and not looks_like_hub_id(base):
        base = None  # recorded path from another machine: the embedded default, as load_model_and_tokenizer does
    model_path = resolve_model(base, log=log)
    dtype = _base_dtype(model_path)
    runtime = RuntimeSpec(device="cpu", dtype=dtype, attn_implementation="sdpa")
    quantization = read_adapter_meta(adapter).get("quantization")
    if quantization:
        log(f"[kormed] the adapter was trained on a {quantization} base: merging it into the unquantized {dtype} "
            "base weights (merging into dequantized 4-bit weights would bake the quantization error in)")
    net, tokenizer, _ = load_model_and_tokenizer(model_path, adapter=adapter, runtime=runtime, log=log,
                                                 quantize="none")
    merged = merge_adapter(net)
    merged.config.name_or_path = str(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = make_temp_dir(out.parent, out.name, ".export")  # umask-normal mode, kormed temp name
    try:
        with staged_as(stage, out):  # a full disk names the output directory's file, not the hidden stage
            merged.save_pretrained(stage, safe_serialization=True)
            tokenizer.save_pretrained(stage)
            for name in _PROCESSOR_FILES:  # a multimodal model's image processor (llama.cpp's --mmproj reads it)
                if (Path(model_path) / name).is_file():
                    shutil.copyfile(Path(model_path) / name, stage / name)
        report = {
            "adapter": str(adapter),
            "base_model": model_path,
            "dtype": dtype,
            "class": type(merged).__name__,
            "vocab_size": int(merged.get_input_embeddings().weight.shape[0]),
            "tokenizer_size": len(tokenizer),
            "tie_word_embeddings": bool(getattr(merged.config, "tie_word_embeddings", False)),
            "adapter_base_quantization": quantization,
        }
        with staged_as(stage, out):
            write_json(stage / "kormed_export.json", report)
        replace_path(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    log(f"[kormed] merged model written to {out} ({report['class']}, {dtype})")
    return report
