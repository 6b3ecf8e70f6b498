"""Shared fixtures: the real Gemma 3 tokenizer (from the embedded model) and tiny random Gemma 3 models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    """The real Gemma 3 270M as a cached safetensors directory (converted from GGUF on first use)."""
    from kormed.models import ensure_embedded_model

    return ensure_embedded_model(log=lambda m: None)


@pytest.fixture(scope="session")
def real_tokenizer(embedded_model_dir: Path):
    from kormed.models import load_tokenizer

    return load_tokenizer(str(embedded_model_dir))


def tiny_text_config(vocab_size: int = 262144, **overrides):
    from transformers import Gemma3TextConfig

    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=2048,
        sliding_window=512,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=1,
    )
    kwargs.update(overrides)
    return Gemma3TextConfig(**kwargs)


def tiny_multimodal_config(**text_overrides):
    """A tiny MedGemma-shaped Gemma3Config: a one-layer SigLIP vision tower and tiny_text_config's language model."""
    from transformers import Gemma3Config, SiglipVisionConfig

    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                image_size=28, patch_size=14)
    return Gemma3Config(text_config=tiny_text_config(**text_overrides).to_dict(), vision_config=vision.to_dict(),
                        mm_tokens_per_image=4, image_token_index=262143, boi_token_index=255999,
                        eoi_token_index=256000)


@pytest.fixture(scope="session")
def tiny_gemma3_dir(tmp_path_factory, real_tokenizer) -> Path:
    """A tiny random Gemma3ForCausalLM with the real 262K tokenizer, saved as safetensors."""
    import torch
    from transformers import Gemma3ForCausalLM

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-gemma3")
    model = Gemma3ForCausalLM(tiny_text_config())
    model.save_pretrained(out, safe_serialization=True)
    real_tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_multimodal_dir(tmp_path_factory, real_tokenizer) -> Path:
    """A tiny random MedGemma-shaped checkpoint (vision tower + language model) with the real 262K tokenizer."""
    import torch
    from transformers import Gemma3ForConditionalGeneration

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-medgemma")
    Gemma3ForConditionalGeneration(tiny_multimodal_config()).save_pretrained(out, safe_serialization=True)
    real_tokenizer.save_pretrained(out)
    return out
