"""`kormed export --gguf`: llama.cpp's own converter on a tiny Gemma 3 with an extended tokenizer, read back by
transformers (`gguf_file=`) as an independent client would; bad input; the Ollama Modelfile and the card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_text_config
from typer.testing import CliRunner

from kormed.cli import app

runner = CliRunner()
NEW_TOKENS = ["혈압", "고혈압", "▁고혈압"]
NEW_MERGES = [("혈", "압"), ("고", "혈압"), ("▁", "고혈압")]
# f16 weights against the fp32 merged model: |Δlogit| <= 2e-3 * max(1, max |logit|) (measured 5.7e-4 at 0.77)
REL_TOL = 2e-3


@pytest.fixture(scope="module")
def converter():
    pytest.importorskip("sentencepiece")
    from kormed.errors import KormedError
    from kormed.train.gguf import fetch_converter

    try:  # the installation step (`kormed export --fetch-converter`): the only one that may use the network
        return fetch_converter(log=lambda m: None)
    except KormedError as exc:  # no registry access and no cached converter: nothing to test against
        pytest.skip(f"llama.cpp converter unavailable: {exc}")


@pytest.fixture
def installed_converter(tmp_path, monkeypatch):
    """A converter found where export looks (KORMED_LLAMA_CPP), for the checks that stop before it would run."""
    path = tmp_path / "llama.cpp"
    path.mkdir()
    (path / "convert_hf_to_gguf.py").write_text("raise SystemExit('not run by these tests')\n", encoding="utf-8")
    monkeypatch.setenv("KORMED_LLAMA_CPP", str(path))
    return path


@pytest.fixture(scope="module")
def extended_model(tmp_path_factory, embedded_model_dir):
    """A tiny random Gemma3ForCausalLM whose tokenizer.json has 3 new BPE tokens (ids 262144..262146)."""
    import torch
    from transformers import Gemma3ForCausalLM

    from kormed.models import load_tokenizer
    from kormed.tokenizer.extend import Selection, build_extended_json, save_tokenizer_dir

    out = tmp_path_factory.mktemp("tiny-ext")
    base_json = json.loads((embedded_model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    ext = build_extended_json(base_json, Selection(method="bpe", new_tokens=NEW_TOKENS, merges=NEW_MERGES))
    save_tokenizer_dir(embedded_model_dir, ext, out)
    tok = load_tokenizer(str(out))
    assert tok.encode("고혈압", add_special_tokens=False) == [262145]  # the extension is live
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(tiny_text_config())
    model.resize_token_embeddings(len(tok), pad_to_multiple_of=64, mean_resizing=False)
    model.save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def exported(converter, extended_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf") / "tiny-ko"
    result = runner.invoke(app, ["export", "--model", str(extended_model), "--gguf", "--gguf-type", "f16,q8_0",
                                 "--verify", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.mark.heavy
def test_gguf_round_trip_through_transformers(exported, extended_model):
    from kormed.models import load_tokenizer
    from kormed.train.export_all import VERIFY_PROMPT

    assert 262145 in load_tokenizer(str(extended_model)).encode(VERIFY_PROMPT)
    out, output = exported
    assert sorted(p.name for p in out.glob("*.gguf")) == ["tiny-ko-f16.gguf", "tiny-ko-q8_0.gguf"]
    assert "verify tiny-ko-f16.gguf" in output
    report = json.loads((out / "kormed_export.json").read_text())
    v = report["verification"]["tiny-ko-f16.gguf"]
    assert v["prompt_ids_equal"]
    assert v["vocab_rows"][0] == v["vocab_rows"][1] == 262144 + 64  # padded rows kept, none dropped
    assert v["max_abs_logit_diff"] <= REL_TOL * max(1.0, v["max_abs_logit"])
    assert v["greedy_merged"] == v["greedy_gguf"]
    # the extended tokenizer's new ids survive: the term encodes to the new token in both
    assert v["terms"]["고혈압"] == {"merged": [262145], "gguf": [262145]}
    # the verification prompt contains 고혈압: it tokenizes to the new id identically (prompt_ids_equal above)
    q8 = report["verification"]["tiny-ko-q8_0.gguf"]
    assert q8["prompt_ids_equal"] and q8["max_abs_logit_diff"] < 0.1 * max(1.0, q8["max_abs_logit"])


@pytest.mark.heavy
def test_gguf_export_writes_modelfile_and_card(exported):
    out, _ = exported
    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./tiny-ko-f16.gguf\n")
    assert 'PARAMETER stop "<end_of_turn>"' in modelfile and "<start_of_turn>model" in modelfile
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlicense: gemma\n") and "library_name: gguf" in card
    assert "Not for clinical use" in card and "tiny-ko-q8_0.gguf" in card
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no staging directory left behind


@pytest.mark.parametrize("gguf_type, message", [
    ("q3_k_s", "unknown GGUF type 'q3_k_s'"),
    ("f8", "unknown GGUF type 'f8'"),
])
def test_gguf_bad_type_is_one_line(gguf_type, message, tiny_gemma3_dir, tmp_path):
    result = runner.invoke(app, ["export", "--model", str(tiny_gemma3_dir), "--gguf", "--gguf-type", gguf_type,
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_export_bad_inputs(tiny_gemma3_dir, tmp_path):
    from kormed.errors import KormedError
    from kormed.train.export_all import run_export

    not_model = tmp_path / "notmodel"
    not_model.mkdir()
    with pytest.raises(KormedError, match="not a model directory"):
        run_export(adapter=None, model=str(not_model), out=str(tmp_path / "o1"), merge=False, gguf=True)
    with pytest.raises(KormedError, match="not an adapter directory"):
        run_export(adapter=str(not_model), model=None, out=str(tmp_path / "o2"), merge=True, gguf=False)
    orphan = tmp_path / "orphan"
    orphan.mkdir()
    (orphan / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/data/medgemma-4b-it"}))
    with pytest.raises(KormedError, match="base model cannot be found: /data/medgemma-4b-it"):
        run_export(adapter=str(orphan), model=None, out=str(tmp_path / "o3"), merge=True, gguf=False)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("user file")
    with pytest.raises(KormedError, match="not an earlier kormed export"):
        run_export(adapter=None, model=str(tiny_gemma3_dir), out=str(occupied), merge=False, gguf=True)
    assert (occupied / "keep.txt").read_text() == "user file"
    assert not any((tmp_path / n).exists() for n in ("o1", "o2", "o3"))
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging directory left


def test_gguf_full_disk_is_refused_before_writing(tiny_gemma3_dir, tmp_path, monkeypatch, installed_converter):
    import shutil
    from collections import namedtuple

    from kormed.errors import KormedError
    from kormed.train.export_all import run_export

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 << 20, 10 << 20, 1 << 20))
    with pytest.raises(KormedError, match="not enough free disk space"):
        run_export(adapter=None, model=str(tiny_gemma3_dir), out=str(tmp_path / "o"), merge=False, gguf=True)
    assert list(tmp_path.iterdir()) == [installed_converter]  # staging directory removed, nothing under the name


def test_gguf_unwritable_target(tiny_gemma3_dir, tmp_path, installed_converter):
    import os

    from kormed.errors import KormedError
    from kormed.train.export_all import run_export

    if os.geteuid() == 0:
        target = Path("/proc/kormed-cannot-write/out")  # root ignores mode bits; /proc refuses new entries
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = locked / "out"
    with pytest.raises(KormedError, match="cannot write the export"):
        run_export(adapter=None, model=str(tiny_gemma3_dir), out=str(target), merge=False, gguf=True)


def test_adapter_merge_and_gguf_in_one_directory(converter, tiny_gemma3_dir, tmp_path):
    """--adapter --merge --gguf: the merged HF model, its GGUF and the card side by side; the card is an export
    card (library transformers) naming the GGUF file, and the merged weights carry the adapter's LoRA update."""
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from kormed.models import load_tokenizer

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_gemma3_dir)
    peft = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter = tmp_path / "adapter"
    peft.save_pretrained(adapter)
    load_tokenizer(str(tiny_gemma3_dir)).save_pretrained(adapter / "tokenizer")
    out = tmp_path / "exp"
    result = runner.invoke(app, ["export", "--adapter", str(adapter), "--model", str(tiny_gemma3_dir), "--merge",
                                 "--gguf", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").is_file() and (out / "exp-f16.gguf").is_file() and (out / "Modelfile").is_file()
    card = (out / "README.md").read_text()
    assert "library_name: transformers" in card and "`exp-f16.gguf`" in card
    merged = load_file(out / "model.safetensors")
    orig = load_file(tiny_gemma3_dir / "model.safetensors")
    key = next(k for k in merged if k.endswith("layers.0.self_attn.q_proj.weight"))
    assert not torch.equal(merged[key], orig[key])  # LoRA merged in
    report = json.loads((out / "kormed_export.json").read_text())
    assert report["gguf"]["files"] == ["exp-f16.gguf"] and report["source_adapter"] == str(adapter)
