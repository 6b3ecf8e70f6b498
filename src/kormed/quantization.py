"""QLoRA: load a base model with its language-model linear layers in 4-bit NF4 (bitsandbytes), `--quantize 4bit`.

NF4 with double quantization and bf16 compute, as in the QLoRA paper. The token embeddings, the (tied) output
projection, the norms and a multimodal checkpoint's vision tower and projector stay unquantized. An adapter
trained this way records `"quantization": "4bit-nf4"` in its kormed_adapter.json, so every later load of it
(SFT, the loop, eval, `kormed eval ppl`) quantizes its base the same way; `kormed export --merge` instead loads
the base unquantized and merges into the original weights.

No torch / transformers / bitsandbytes import at module level (the config and CLI modules import this one).
"""

from __future__ import annotations

import logging
from typing import Any

from kormed.errors import KormedError

# torch, transformers and the kormed modules that load them are imported inside the functions that use them:
# this module is imported by `kormed --help` or by a torch-free command, which must not pay for them.

QUANTIZE_CHOICES = ("none", "4bit")
NF4_LABEL = "4bit-nf4"  # the value recorded in kormed_adapter.json ("quantization"); null when unquantized

# Modules that stay unquantized (transformers' llm_int8_skip_modules: a name suffix or a regex from the start).
# Giving the list replaces transformers' default skips, so lm_head (tied to the embeddings) is named here too.
SKIP_MODULES = ["lm_head", r".*vision_tower", r".*multi_modal_projector"]


def require_bitsandbytes(why: str = "--quantize 4bit", *, path: str | None = None, field: str | None = None) -> None:
    """Raise one clear KormedError when bitsandbytes cannot be imported."""

    # bitsandbytes' CPU backend warns at import that it cannot fetch an optional kernel from the HF hub; that
    # kernel only serves the inference repacking that finish_quantized_load switches off, so the line is noise.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise KormedError(
            f"{why} needs bitsandbytes, which is not installed", path=path, field=field,
            hint="pip install 'kormed[qlora]'  (or: pip install 'bitsandbytes>=0.50,<1')",
        ) from None
    except Exception as exc:  # a broken native library raises other errors at import time
        raise KormedError(f"{why} needs bitsandbytes, which is installed but does not import: {exc}",
                          path=path, field=field) from None


def check_quantize(quantize: str | None, field: str = "train.quantize") -> str:
    """Normalise a --quantize value ('none' for None)."""
    value = quantize or "none"
    if value not in QUANTIZE_CHOICES:
        raise KormedError(f"must be one of {list(QUANTIZE_CHOICES)}, got {quantize!r}", field=field)
    return value


def label_for(quantize: str | None) -> str | None:
    """--quantize value -> the adapter-metadata label ('4bit' -> '4bit-nf4', 'none' -> None)."""
    return NF4_LABEL if check_quantize(quantize) == "4bit" else None


def quantize_for(label: str | None) -> str:
    """Adapter-metadata label -> --quantize value (inverse of :func:`label_for`)."""
    if label in (None, "", "none"):
        return "none"
    if label == NF4_LABEL:
        return "4bit"
    raise KormedError(f"unknown quantization '{label}' in kormed_adapter.json (known: {NF4_LABEL} or null)")


def bnb_config() -> Any:
    """transformers' BitsAndBytesConfig for NF4 QLoRA (double quant, bf16 compute, SKIP_MODULES unquantized)."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        llm_int8_skip_modules=list(SKIP_MODULES),
    )


def device_map_for(device: str) -> dict[str, Any]:
    """Where from_pretrained quantizes: the process's own GPU under DDP (set by accelerate), else `device`."""
    import torch

    if device == "cuda" and torch.cuda.is_available():
        return {"": torch.cuda.current_device()}
    return {"": device}


def is_quantized(model: Any) -> bool:
    """Whether `model` (a transformers model or a PEFT wrapper of one) holds bitsandbytes 4-bit layers."""
    if getattr(model, "is_loaded_in_4bit", False):  # PEFT wrappers forward the attribute to the base model
        return True
    return any(type(m).__name__ == "Linear4bit" for m in model.modules())


def model_label(model: Any) -> str | None:
    """The adapter-metadata label of a loaded model ('4bit-nf4' or None)."""
    return NF4_LABEL if is_quantized(model) else None


def finish_quantized_load(model: Any) -> Any:
    """Post-load fix-up of a 4-bit model (every kormed load, training or not).

    bitsandbytes 0.50 on a CPU with AVX512-BF16 repacks a Linear4bit's weight in place, the first time it runs in
    eval mode without grad, into an inference-only layout whose kernel has no backward: after a validation pass
    the next training steps silently get no gradient through the quantized layers (tests/test_qlora.py shows
    it). Switching the repacking off keeps the one dequantize-and-matmul path for training, validation and
    eval. The unquantized bf16/fp16 weights (embeddings, norms, a vision tower) are upcast to fp32 here, as
    PEFT's `prepare_model_for_kbit_training` does before training, so that a load for evaluation computes with
    the same weights as training did: `kormed eval ppl` on the saved adapter reproduces its validation exactly.
    """
    import bitsandbytes as bnb
    import torch

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
    for param in model.parameters():
        if param.dtype in (torch.float16, torch.bfloat16):  # 4-bit weights are stored as uint8: not touched
            param.data = param.data.float()
    return model


def prepare_for_kbit_training(model: Any) -> Any:
    """PEFT's `prepare_model_for_kbit_training` before LoRA: freeze the base, upcast its unquantized bf16/fp16
    weights (embeddings, norms, vision tower) to fp32. Gradient checkpointing is left to the Trainer
    (`train.gradient_checkpointing`, non-reentrant, set in kormed.train.engine.trainer.build_trainer), so PEFT does not
    switch it on."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
