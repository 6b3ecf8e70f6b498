"""GGUF for llama.cpp / Ollama / LM Studio, written by llama.cpp's own converter (`convert_hf_to_gguf.py`).

The converter and its `gguf-py` ship inside the `llama-cpp-python` source distribution on PyPI
(`vendor/llama.cpp/`). Fetching it is an installation step, never part of an export: `kormed export
--fetch-converter`, run once, downloads that sdist with pip (`pip download --no-binary :all: --no-deps
llama-cpp-python==LLAMA_CPP_PYTHON_VERSION`) and keeps only the converter's Python files in kormed's cache
(`kormed.models.cache_root()/llama.cpp/`); `$KORMED_LLAMA_CPP` may point at a llama.cpp checkout instead. An export
only looks the converter up (:func:`find_converter`) and opens no connection.

The converter's Gemma 3 class takes its vocabulary from `tokenizer.model` (SentencePiece: tokens, scores, types,
written as llama.cpp's "llama" tokenizer). Without that file it falls back to the byte-level "gpt2" path, which
refuses Gemma's tokenizer (unknown pre-tokenizer hash) and would not match it anyway (Gemma is SentencePiece-style
BPE with byte fallback, not byte-level BPE). kormed's models carry only `tokenizer.json` (the embedded 270M was
converted from GGUF; an extended tokenizer exists only as tokenizer.json), so the converter is given a
`tokenizer.model` written from the model's own tokenizer.json: every id keeps its token, special tokens are
CONTROL, `<0xNN>` BYTE, and the score is minus the id. Gemma's merge priority follows the id order (new tokens of an
extension come last, in the order their merges were appended), which is also how transformers rebuilds a Gemma
tokenizer from a GGUF (`gemma_tokenizer` in transformers.integrations.gguf), so llama.cpp and transformers both
tokenize like the tokenizer.json the model was trained with. This file is the one hand-written piece: no library
writes a SentencePiece model from a tokenizers BPE model.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma3ForConditionalGeneration

from kormed.errors import KormedError
from kormed.io import Log, atomic_write, read_json, temp_dir
from kormed.models import cache_root, is_multimodal, load_model_config

LLAMA_CPP_PYTHON_VERSION = "0.3.36"  # the sdist whose vendored converter was tested with kormed
# what the converter offers (`--outtype`) that kormed exports and verifies
CONVERTER_TYPES = ("f16", "bf16", "q8_0")
# what llama.cpp's quantizer makes from the f16 file (llama-cpp-python's `llama_model_quantize`, kormed[gguf-quant]):
# the type -> the name of its llama_ftype constant in llama_cpp
QUANT_TYPES = {"q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
               "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M", "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K"}
GGUF_TYPES = CONVERTER_TYPES + tuple(QUANT_TYPES)
QUANT_INSTALL = "pip install 'kormed[gguf-quant]'"
_KEEP = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")
# bytes per parameter of each type (Q8_0: 34 bytes per block of 32; k-quants: llama.cpp's bits per weight, rounded
# up), for the free-space check; a quantized type also needs its f16 intermediate while it is made
_BYTES_PER_PARAM = {"f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32, "q4_k_m": 0.61, "q5_k_m": 0.72,
                    "q6_k": 0.83}
# --verify (llama.cpp): the merged model's greedy token may lose to llama.cpp's top token only by this fraction of
# max(1, max |logit|) (a near tie that the type's rounding flips); f16/bf16 must give identical greedy tokens
GREEDY_MARGIN = {"f16": 2e-3, "bf16": 2e-2, "q8_0": 0.1, "q6_k": 0.15, "q5_k_m": 0.2, "q4_k_m": 0.3, "q4_0": 0.3}



def parse_types(value: str | list[str] | tuple[str, ...]) -> list[str]:
    """`f16,q8_0` -> ["f16", "q8_0"]; an unknown or unoffered type is one clear error."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for raw in items:
        t = raw.strip().lower()
        if not t:
            continue
        if t not in GGUF_TYPES:
            raise KormedError(f"unknown GGUF type '{raw.strip()}' (offered: {', '.join(GGUF_TYPES)})",
                              field="--gguf-type")
        if t not in out:
            out.append(t)
    if not out:
        raise KormedError(f"no GGUF type given (offered: {', '.join(GGUF_TYPES)})", field="--gguf-type")
    return out


# --------------------------------------------------------------------------------------------------- the converter


def converter_dir() -> Path:
    return cache_root() / "llama.cpp" / f"llama-cpp-python-{LLAMA_CPP_PYTHON_VERSION}"


def _check_python_deps() -> None:
    try:
        import sentencepiece  # noqa: F401
    except ImportError:
        raise KormedError("GGUF export needs the optional package 'sentencepiece' (llama.cpp's converter uses it)",
                          hint="pip install 'kormed[gguf]'") from None


def find_converter() -> Path:
    """The directory holding llama.cpp's `convert_hf_to_gguf.py`: `$KORMED_LLAMA_CPP`, else the one
    `kormed export --fetch-converter` put in kormed's cache. Looks on disk only: an export never downloads."""
    _check_python_deps()
    env = os.environ.get("KORMED_LLAMA_CPP")
    if env:
        path = Path(env).expanduser()
        if not (path / "convert_hf_to_gguf.py").is_file():
            raise KormedError("$KORMED_LLAMA_CPP has no convert_hf_to_gguf.py", path=path)
        return path
    target = converter_dir()
    if (target / "convert_hf_to_gguf.py").is_file():
        return target
    raise KormedError("llama.cpp's GGUF converter is not installed: run `kormed export --fetch-converter` once "
                      f"(downloads the llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} source package, about 77 MB), or "
                      "set KORMED_LLAMA_CPP to a llama.cpp checkout", path=target)


def fetch_converter(log: Log = print) -> Path:
    """Install llama.cpp's converter into kormed's cache from the PyPI sdist (`kormed export --fetch-converter`):
    the one step of GGUF export that uses the network, run by the user once, like a package install."""
    _check_python_deps()
    target = converter_dir()
    if (target / "convert_hf_to_gguf.py").is_file():
        log(f"[kormed] llama.cpp's GGUF converter is already installed in {target}")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log(f"[kormed] fetching llama.cpp's GGUF converter (llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist, "
        f"~77 MB, once) into {target}")
    with temp_dir(target.parent, target.name) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "--quiet",
               "--dest", str(tmp), f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        sdists = sorted(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if proc.returncode != 0 or not sdists:
            last = (proc.stderr.strip().splitlines() or ["no sdist downloaded"])[-1]
            raise KormedError(
                f"cannot fetch llama.cpp's GGUF converter: pip download llama-cpp-python failed ({last}); it needs "
                "the package registry once, or set KORMED_LLAMA_CPP to a llama.cpp checkout")
        stage = Path(tmp) / "llama.cpp"
        _extract_converter(sdists[0], stage)
        if target.exists():
            shutil.rmtree(target)
        os.replace(stage, target)
    return target


def _extract_converter(sdist: Path, dest: Path) -> None:
    """Only the converter's files out of the sdist's `vendor/llama.cpp/` (tar's own path-safety filter applies)."""
    with tarfile.open(sdist, "r:gz") as tar:
        members = []
        for m in tar.getmembers():
            parts = m.name.split("/", 3)
            if len(parts) < 4 or parts[1:3] != ["vendor", "llama.cpp"]:
                continue
            rel = parts[3]
            if (m.isfile() or m.isdir()) and any(rel == k or rel.startswith(k) for k in _KEEP):
                m.name = rel
                members.append(m)
        if not any(m.name == "convert_hf_to_gguf.py" for m in members):
            raise KormedError("the llama-cpp-python sdist has no vendor/llama.cpp/convert_hf_to_gguf.py", path=sdist)
        dest.mkdir(parents=True)
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(dest, members=members, **kwargs)  # noqa: S202 - members filtered above


# --------------------------------------------------------------------------------------------------- tokenizer.model


def write_sentencepiece_model(tokenizer_json: Path, dest: Path) -> int:
    """Write `dest` (tokenizer.model) with exactly the vocabulary of a Gemma `tokenizer.json`; returns its size.

    Scores are minus the id (see the module docstring); types follow tokenizer.json (special -> CONTROL, other
    added tokens -> USER_DEFINED, `<0xNN>` -> BYTE, the unk token -> UNKNOWN)."""
    # sentencepiece is optional (kormed[gguf]); _check_python_deps has said so before this runs
    from sentencepiece import sentencepiece_model_pb2 as sp

    data = read_json(tokenizer_json, what="tokenizer file")
    model = data.get("model") or {}
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        raise KormedError("GGUF export expects a Gemma tokenizer (BPE with byte fallback)", path=tokenizer_json)
    pieces: dict[int, tuple[str, int]] = {}
    byte_re = re.compile(r"<0x[0-9A-Fa-f]{2}>")
    unk = model.get("unk_token")
    for tok, idx in model["vocab"].items():
        kind = sp.ModelProto.SentencePiece.NORMAL
        if tok == unk:
            kind = sp.ModelProto.SentencePiece.UNKNOWN
        elif byte_re.fullmatch(tok):
            kind = sp.ModelProto.SentencePiece.BYTE
        pieces[int(idx)] = (tok, kind)
    for added in data.get("added_tokens") or []:
        kind = sp.ModelProto.SentencePiece.CONTROL if added.get("special") else sp.ModelProto.SentencePiece.USER_DEFINED
        if added["content"] == unk:
            kind = sp.ModelProto.SentencePiece.UNKNOWN
        pieces[int(added["id"])] = (added["content"], kind)
    size = max(pieces) + 1
    proto = sp.ModelProto()
    proto.trainer_spec.model_type = sp.TrainerSpec.BPE
    proto.trainer_spec.vocab_size = size
    proto.trainer_spec.byte_fallback = True
    proto.trainer_spec.unk_id = model["vocab"].get(unk, 3) if unk else 3
    for name in ("bos", "eos", "pad"):
        idx = next((i for i, (t, _) in pieces.items() if t == f"<{name}>"), -1)
        setattr(proto.trainer_spec, f"{name}_id", idx)
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = False
    proto.normalizer_spec.remove_extra_whitespaces = False
    proto.normalizer_spec.escape_whitespaces = True
    for i in range(size):
        tok, kind = pieces.get(i, (f"<unused_kormed_{i}>", sp.ModelProto.SentencePiece.UNUSED))
        piece = proto.pieces.add()
        piece.piece = tok
        piece.score = 0.0 if kind != sp.ModelProto.SentencePiece.NORMAL else -float(i)
        piece.type = kind
    dest.write_bytes(proto.SerializeToString())
    return size


# --------------------------------------------------------------------------------------------------- conversion


def _param_count(model_dir: Path, prefixes: tuple[str, ...] = ("",)) -> int:
    total = 0
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
                if not key.startswith(prefixes):
                    continue
                shape = fh.get_slice(key).get_shape()
                n = 1
                for d in shape:
                    n *= int(d)
                total += n
    return total


def check_free_space(model_dir: Path, out_dir: Path, types: list[str], *, mmproj: bool = False) -> None:
    """Refuse before converting when the target file system cannot hold the files (10 % margin), the f16
    intermediate of a quantized type and the f16 vision projector included."""
    sizes = list(types) + (["f16"] if "f16" not in types and any(t in QUANT_TYPES for t in types) else [])
    need = int(_param_count(model_dir) * sum(_BYTES_PER_PARAM[t] for t in sizes) * 1.1) + (16 << 20)
    if mmproj:
        need += 2 * _param_count(model_dir, VISION_PREFIXES)
    probe = out_dir
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need:
        raise KormedError(f"not enough free disk space for the GGUF files: need about {need / 2**30:.2f} GiB, "
                          f"{free / 2**30:.2f} GiB free", path=probe)


def convert(model_dir: Path, out_file: Path, gguf_type: str, *, mmproj: bool = False, log: Log = print) -> Path:
    """Run llama.cpp's converter on a merged HF model directory; writes `out_file` (staged by the caller). With
    `mmproj`, the converter's `--mmproj` mode: the vision tower and projector of a Gemma3ForConditionalGeneration."""
    converter = find_converter()
    with temp_dir(out_file.parent, out_file.name) as tmp:
        # the view is named like the model directory: the converter writes general.name/finetune from the name,
        # and a temporary name would make every rerun's bytes differ
        src = tmp / model_dir.resolve().name
        src.mkdir()
        for f in model_dir.iterdir():  # a view of the merged directory plus a tokenizer.model (see module doc)
            if f.is_file() and f.name != "tokenizer.model":
                os.symlink(f.resolve(), src / f.name)
        if mmproj:
            _ensure_preprocessor_config(model_dir, src, log=log)
        else:
            if (model_dir / "tokenizer.model").is_file():
                log("[kormed] note: the model's tokenizer.model is replaced by one written from its tokenizer.json")
            write_sentencepiece_model(model_dir / "tokenizer.json", src / "tokenizer.model")
        cmd = [sys.executable, str(converter / "convert_hf_to_gguf.py"), str(src), "--outfile", str(out_file),
               "--outtype", gguf_type] + (["--mmproj"] if mmproj else [])
        log(f"[kormed] llama.cpp convert_hf_to_gguf.py{' --mmproj' if mmproj else ''} --outtype {gguf_type} -> "
            f"{out_file.name}")
        env = dict(os.environ)
        env.pop("NO_LOCAL_GGUF", None)  # the converter then uses its own gguf-py, not the installed gguf
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")  # it reads the local directory only: no hub look-up
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0 or not out_file.is_file():
        text = proc.stderr + proc.stdout
        if "No space left on device" in text:
            raise KormedError("the disk filled up while writing the GGUF file", path=out_file.parent)
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        errors = [ln for ln in lines if "Error" in ln or "error" in ln]
        raise KormedError(f"llama.cpp's converter failed: {(errors or lines or ['no output'])[-1].strip()}",
                          path=model_dir)
    return out_file


def export_gguf_files(model_dir: Path, out_dir: Path, types: list[str], name: str, *, log: Log = print) -> list[Path]:
    """Convert `model_dir` into `out_dir/<name>-<type>.gguf` for each type (out_dir is a staging directory). A
    quantized type (QUANT_TYPES) is made from the f16 file by llama.cpp's quantizer; an f16 file that was not asked
    for is made in a temporary directory and removed once the quantized files are written."""
    check_free_space(model_dir, out_dir, types, mmproj=has_vision_tower(model_dir))
    files: dict[str, Path] = {}
    for t in types:
        if t in CONVERTER_TYPES:
            files[t] = convert(model_dir, out_dir / f"{name}-{t}.gguf", t, log=log)
    quant = [t for t in types if t in QUANT_TYPES]
    if quant:
        with temp_dir(out_dir, "f16") as tmp:
            f16 = files.get("f16") or convert(model_dir, tmp / f"{name}-f16.gguf", "f16", log=log)
            for t in quant:
                files[t] = quantize(f16, out_dir / f"{name}-{t}.gguf", t, log=log)
    return [files[t] for t in types]


def has_vision_tower(model_dir: Path) -> bool:
    """A Gemma3ForConditionalGeneration directory (MedGemma): its vision tower gets an mmproj GGUF."""
    return "vision_config" in read_json(model_dir / "config.json", what="model config")


VISION_PREFIXES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.")
_HUB_VISION_PREFIXES = ("vision_tower.vision_model.", "multi_modal_projector.")


def check_vision_layout(model_dir: Path) -> None:
    """The converter maps the Hub's vision keys (`vision_tower.vision_model.*`, `multi_modal_projector.*`); a
    checkpoint with other names (e.g. one built from a config and saved by transformers 5) is one clear error
    instead of a converter traceback."""
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
                if key.startswith(VISION_PREFIXES) and not key.startswith(_HUB_VISION_PREFIXES):
                    raise KormedError(f"vision weight '{key}' is not in the Hub's layout (vision_tower.vision_model.*, "
                                      "multi_modal_projector.*) that llama.cpp's --mmproj converter maps", path=f)


def _ensure_preprocessor_config(model_dir: Path, view: Path, *, log: Log = print) -> None:
    """The mmproj converter reads the image mean/std and the soft tokens per image from preprocessor_config.json;
    a merged directory without one gets Gemma 3's image processor defaults (transformers' Gemma3ImageProcessor)
    at the vision config's image size and the config's `mm_tokens_per_image`."""
    if (model_dir / "preprocessor_config.json").is_file() or (model_dir / "processor_config.json").is_file():
        return
    try:  # transformers 5: the PIL backend by name (the default one wants torchvision, and warns without it)
        from transformers import Gemma3ImageProcessorPil as ImageProcessor
    except ImportError:
        from transformers import Gemma3ImageProcessor as ImageProcessor

    cfg = read_json(model_dir / "config.json", what="model config")
    size = int(cfg["vision_config"]["image_size"])
    data = ImageProcessor(size={"height": size, "width": size}).to_dict()
    data["image_seq_length"] = int(cfg.get("mm_tokens_per_image", 256))
    log("[kormed] note: no preprocessor_config.json beside the model: the projector uses Gemma 3's image "
        f"processor defaults ({size} px, {data['image_seq_length']} tokens per image)")
    with atomic_write(view / "preprocessor_config.json") as fh:
        fh.write(json.dumps(data, indent=2, default=str))


def export_mmproj(model_dir: Path, out_dir: Path, name: str, *, log: Log = print) -> Path:
    """The vision projector GGUF (`mmproj-<name>-f16.gguf`) of a Gemma3ForConditionalGeneration, which llama.cpp
    loads with `--mmproj` beside the text GGUF; f16, as llama.cpp's own Gemma 3 projectors."""
    check_vision_layout(model_dir)
    return convert(model_dir, out_dir / f"mmproj-{name}-f16.gguf", "f16", mmproj=True, log=log)


# --------------------------------------------------------------------------------------------------- quantization


def require_llama_cpp(what: str) -> Any:
    """llama-cpp-python (kormed[gguf-quant]), or one line saying how to install it."""
    try:
        import llama_cpp
    except ImportError:
        raise KormedError(f"{what} needs llama-cpp-python, which is not installed: {QUANT_INSTALL} (compiles "
                          "llama.cpp once, 10-20 CPU-minutes)") from None
    except (OSError, RuntimeError) as exc:  # installed, but its compiled library does not load
        raise KormedError(f"{what} needs llama-cpp-python, whose llama.cpp library does not load ({exc}): "
                          f"reinstall it with {QUANT_INSTALL}") from None
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # llama.cpp's per-tensor log lines
    return llama_cpp


def quantize(f16_file: Path, out_file: Path, gguf_type: str, *, log: Log = print) -> Path:
    """llama.cpp's own quantizer (`llama_model_quantize`, what `llama-quantize` runs) from the f16 GGUF."""
    llama_cpp = require_llama_cpp(f"GGUF type {gguf_type}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TYPES[gguf_type])
    params.nthread = min(os.cpu_count() or 1, 16)
    log(f"[kormed] llama.cpp llama_model_quantize {gguf_type.upper()} {f16_file.name} -> {out_file.name}")
    rc = llama_cpp.llama_model_quantize(str(f16_file).encode(), str(out_file).encode(), ctypes.byref(params))
    if rc != 0 or not out_file.is_file():
        free = shutil.disk_usage(out_file.parent).free
        if free < f16_file.stat().st_size // 4:
            raise KormedError("the disk filled up while writing the GGUF file", path=out_file.parent)
        raise KormedError(f"llama.cpp's quantizer failed ({gguf_type}, return code {rc})", path=f16_file)
    return out_file


# --------------------------------------------------------------------------------------------------- verification


def verify_gguf(model_dir: str | Path, gguf_file: str | Path, prompt: str, *, terms: list[str] | None = None,
                max_new_tokens: int = 16) -> dict[str, Any]:
    """Load the GGUF back with transformers (`gguf_file=`), as an independent client would, and compare with the
    merged HF model: next-token logits on `prompt` (max |difference|), greedy generations, and the ids of `terms`."""
    gguf_file = Path(gguf_file)
    ref_tok = AutoTokenizer.from_pretrained(str(model_dir))
    g_tok = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    cfg = load_model_config(str(model_dir))
    model_class = Gemma3ForConditionalGeneration if is_multimodal(cfg) else AutoModelForCausalLM
    ref = model_class.from_pretrained(str(model_dir), dtype=torch.float32, use_safetensors=True).eval()
    gm = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name,
                                              dtype=torch.float32).eval()
    ids = ref_tok(prompt, return_tensors="pt").input_ids
    g_ids = g_tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        a = ref(input_ids=ids).logits[0].float()
        b = gm(input_ids=ids).logits[0].float()
        n = min(a.shape[-1], b.shape[-1])
        gen_kw = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=ref_tok.pad_token_id)
        ga = ref.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **gen_kw)[0, ids.shape[1]:].tolist()
        gb = gm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **gen_kw)[0, ids.shape[1]:].tolist()
    term_ids = {}
    for t in terms or []:
        term_ids[t] = {"merged": ref_tok.encode(t, add_special_tokens=False),
                       "gguf": g_tok.encode(t, add_special_tokens=False)}
    return {
        "prompt_ids_equal": ids.tolist() == g_ids.tolist(),
        "vocab_rows": [int(a.shape[-1]), int(b.shape[-1])],
        "max_abs_logit_diff": float((a[:, :n] - b[:, :n]).abs().max()),
        "max_abs_logit": float(a.abs().max()),
        "argmax_equal": bool(torch.equal(a[:, :n].argmax(-1), b[:, :n].argmax(-1))),
        "greedy_merged": ga,
        "greedy_gguf": gb,
        "terms": term_ids,
    }


def merged_reference(model_dir: str | Path, prompt: str, max_new_tokens: int) -> tuple[list[int], list[int], Any]:
    """The merged model's prompt ids, greedy continuation and next-token logits over prompt + continuation (fp32)."""
    ref_tok = AutoTokenizer.from_pretrained(str(model_dir))
    cfg = load_model_config(str(model_dir))
    model_class = Gemma3ForConditionalGeneration if is_multimodal(cfg) else AutoModelForCausalLM
    ref = model_class.from_pretrained(str(model_dir), dtype=torch.float32, use_safetensors=True).eval()
    ids = ref_tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        greedy = ref.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                              do_sample=False, pad_token_id=ref_tok.pad_token_id)[0, ids.shape[1]:].tolist()
        logits = ref(input_ids=torch.tensor([ids[0].tolist() + greedy])).logits[0].float().numpy()
    return ids[0].tolist(), greedy, logits


def verify_llama_cpp(model_dir: str | Path, gguf_file: str | Path, gguf_type: str, prompt: str, *,
                     mmproj: str | Path | None = None, max_new_tokens: int = 16, n_threads: int = 2,
                     reference: tuple[list[int], list[int], Any] | None = None) -> dict[str, Any]:
    """Load the GGUF with llama.cpp itself (llama-cpp-python) and compare with the merged transformers model: the
    prompt's token ids (vocab-only load), `max_new_tokens` greedy tokens, and, teacher-forced on the merged model's
    greedy tokens, how far each of them falls below llama.cpp's top logit (GREEDY_MARGIN: a quantized type may flip
    a near tie, never a clear choice). With `mmproj`, llama.cpp's multimodal library loads the projector on the
    text model. A mismatch is one KormedError naming the file."""
    llama_cpp = require_llama_cpp("--verify with llama.cpp")
    gguf_file = Path(gguf_file)
    ids, greedy, ref_logits = reference or merged_reference(model_dir, prompt, max_new_tokens)
    vocab = llama_cpp.Llama(str(gguf_file), vocab_only=True, verbose=False)
    try:
        g_ids = vocab.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
    finally:
        vocab.close()
    if g_ids != ids:
        first = next((i for i, (a, b) in enumerate(zip(ids, g_ids, strict=False)) if a != b), min(len(ids), len(g_ids)))
        raise KormedError(f"llama.cpp tokenizes the check prompt differently from the merged model (first difference "
                          f"at token {first} of {len(ids)})", path=gguf_file)
    n_ctx = -(-(len(ids) + len(greedy) + 8) // 64) * 64
    llm = llama_cpp.Llama(str(gguf_file), n_ctx=n_ctx, n_batch=n_ctx, n_threads=n_threads, logits_all=True, seed=0,
                          verbose=False)
    try:
        free_run: list[int] = []
        for tok in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
            free_run.append(int(tok))
            if len(free_run) >= len(greedy):
                break
        llm.reset()
        llm.eval(ids + greedy)
        scores = llm.scores[: len(ids) + len(greedy)]
        projector = _load_projector(llama_cpp, llm, Path(mmproj), n_threads) if mmproj else None
    finally:
        llm.close()
    n = min(scores.shape[-1], ref_logits.shape[-1])
    scale = max(1.0, float(abs(ref_logits).max()))
    margins = [float(scores[len(ids) - 1 + j, :n].max() - scores[len(ids) - 1 + j, tok])
               for j, tok in enumerate(greedy)]
    result = {
        "prompt_ids_equal": True,
        "n_vocab": int(scores.shape[-1]),
        "max_abs_logit_diff": float(abs(scores[:, :n] - ref_logits[: scores.shape[0], :n]).max()),
        "max_abs_logit": scale,
        "greedy_merged": greedy,
        "greedy_llama_cpp": free_run,
        "greedy_equal": free_run == greedy,
        "max_greedy_margin": max(margins, default=0.0),
        "margin_limit": GREEDY_MARGIN[gguf_type] * scale,
    }
    if projector is not None:
        result["mmproj"] = projector
    if result["max_greedy_margin"] > result["margin_limit"] or (gguf_type in ("f16", "bf16") and not
                                                                 result["greedy_equal"]):
        j = next((i for i, m in enumerate(margins) if m > result["margin_limit"]), None)
        where = f"at generated token {j}" if j is not None else "in free-running generation"
        raise KormedError(f"llama.cpp's greedy tokens differ from the merged model's {where} (the merged model's "
                          f"choice is {result['max_greedy_margin']:.3g} below llama.cpp's top logit; {gguf_type} "
                          f"allows {result['margin_limit']:.3g})", path=gguf_file)
    return result


def _load_projector(llama_cpp: Any, llm: Any, mmproj: Path, n_threads: int) -> dict[str, Any]:
    """llama.cpp's multimodal library (mtmd, what `llama-mtmd-cli --mmproj` uses) loads the projector on the
    text model: it checks the projector's tensors and that its output width is the text model's."""
    from llama_cpp import mtmd_cpp

    params = mtmd_cpp.mtmd_context_params_default()
    params.use_gpu = False
    params.n_threads = n_threads
    params.print_timings = False
    ctx = mtmd_cpp.mtmd_init_from_file(str(mmproj).encode(), llm.model, params)
    if not ctx:
        raise KormedError("llama.cpp cannot load the vision projector with the text model", path=mmproj)
    try:
        return {"file": mmproj.name, "vision": bool(mtmd_cpp.mtmd_support_vision(ctx))}
    finally:
        mtmd_cpp.mtmd_free(ctx)
