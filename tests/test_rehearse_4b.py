"""scripts/rehearse_4b.py: MedGemma-4B's shape saved in the Hub's key layout without an fp32 copy, and the whole
chain (extend, CPT, eval ppl, SFT, chat, merge, GGUF) with each command's peak memory — at a tiny size in the heavy
run, at the real 4B size where the machine has the memory for it."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "rehearse_4b.py"
STEPS = ["build model", "tokenizer extend", "train cpt", "eval ppl", "train sft", "chat", "export --merge",
         "export --gguf f16"]


def _script():
    spec = importlib.util.spec_from_file_location("rehearse_4b", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_medgemma_4b_config_has_the_published_shape():
    """The config the rehearsal builds is MedGemma-4B's: 4.3B parameters, 262,208 rows, SigLIP-400M."""
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    cfg = _script().sized_config("4b")
    with torch.device("meta"):
        model = Gemma3ForConditionalGeneration(Gemma3Config(**{k: v for k, v in cfg.items() if k != "model_type"}))
    vision = sum(p.numel() for n, p in model.named_parameters() if "vision_tower" in n)
    total = sum(p.numel() for p in model.parameters())
    assert model.get_input_embeddings().weight.shape == (262208, 2560)
    assert len(model.model.language_model.layers) == 34
    assert 410e6 < vision < 420e6  # SigLIP So400m without its head
    assert 4.29e9 < total < 4.31e9


def test_tiny_build_is_bf16_in_the_hub_layout_and_loads_cleanly(tmp_path):
    """Every tensor is stored bf16 under the Hub's names, and transformers loads it with nothing missing/unexpected."""
    from safetensors import safe_open

    rehearse = _script()
    info = rehearse.build_model("tiny", tmp_path / "model", shard_gib=0.01)
    index = json.loads((tmp_path / "model" / "model.safetensors.index.json").read_text())
    keys = set(index["weight_map"])
    assert info["shards"] > 1 and len(keys) == info["tensors"]
    assert any(k.startswith("vision_tower.vision_model.encoder.layers.0.") for k in keys)
    assert any(k.startswith("language_model.model.layers.1.") for k in keys)
    assert "multi_modal_projector.mm_input_projection_weight" in keys
    assert not any(k.startswith("model.") for k in keys) and "lm_head.weight" not in keys  # tied, as on the Hub
    for shard in set(index["weight_map"].values()):
        with safe_open(str(tmp_path / "model" / shard), framework="pt") as fh:
            assert {str(fh.get_tensor(k).dtype) for k in fh.keys()} == {"torch.bfloat16"}  # noqa: SIM118
    rehearse.check_layout(tmp_path / "model")  # raises on a missing or unexpected key


def _rehearse(size: str, work: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--size", size, "--workdir", str(work)], capture_output=True,
                          text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return json.loads((work / "rehearsal.json").read_text(encoding="utf-8"))


def _check(result: dict) -> None:
    assert result["ok"]
    assert [r["step"] for r in result["steps"]] == STEPS
    assert all(r["rc"] == 0 and not r["killed_over_limit"] for r in result["steps"])
    assert result["new_tokens"] == 200
    assert result["ppl"]["eval_ppl"] == result["ppl"]["cpt_last_validation"]
    assert result["gguf_bytes"] > 0


@pytest.mark.heavy
def test_rehearsal_chain_at_tiny_size(tmp_path):
    _check(_rehearse("tiny", tmp_path))


@pytest.mark.heavy
@pytest.mark.skipif(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") < 22 * 2**30,
                    reason="the 4B rehearsal needs a machine with at least 22 GiB of memory")
@pytest.mark.skipif(os.environ.get("KORMED_REHEARSE_4B") != "1",
                    reason="about an hour on a 2-core CPU: opt in with KORMED_REHEARSE_4B=1")
def test_rehearsal_at_medgemma_4b_shape(tmp_path):
    """The real shape: every command fits 20 GiB (measured: docs/commands/rehearse-4b.md)."""
    result = _rehearse("4b", tmp_path)
    _check(result)
    assert 4.29e9 < result["model"]["parameters"] < 4.31e9
    assert max(r["peak_rss_gib"] for r in result["steps"]) <= 20.0
