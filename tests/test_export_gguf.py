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
    from kormed.export.gguf import fetch_converter

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
    # head_dim = query_pre_attn_scalar (256), as in every Gemma 3 but 27B: llama.cpp scales attention by
    # 1/sqrt(head_dim) and ignores query_pre_attn_scalar (transformers' default 256), so a tiny model must agree
    model = Gemma3ForCausalLM(tiny_text_config(head_dim=256))
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
    from kormed.export.run import VERIFY_PROMPT
    from kormed.models import load_tokenizer

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
    from kormed.export.run import run_export

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
    from kormed.export.run import run_export

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 << 20, 10 << 20, 1 << 20))
    with pytest.raises(KormedError, match="not enough free disk space"):
        run_export(adapter=None, model=str(tiny_gemma3_dir), out=str(tmp_path / "o"), merge=False, gguf=True)
    assert list(tmp_path.iterdir()) == [installed_converter]  # staging directory removed, nothing under the name


def test_gguf_unwritable_target(tiny_gemma3_dir, tmp_path, installed_converter):
    import os

    from kormed.errors import KormedError
    from kormed.export.run import run_export

    if os.geteuid() == 0:
        target = Path("/proc/kormed-cannot-write/out")  # root ignores mode bits; /proc refuses new entries
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = locked / "out"
    with pytest.raises(KormedError, match="cannot write the export"):
        run_export(adapter=None, model=str(tiny_gemma3_dir), out=str(target), merge=False, gguf=True)


@pytest.mark.heavy  # ~1 minute (two converter runs): with the heavy checks, so CI stays within its budget
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


# ------------------------------------------------------------------------- llama.cpp itself (kormed[gguf-quant])


@pytest.fixture(scope="module")
def llama_cpp():
    """llama-cpp-python: its quantizer and its Llama; PyPI has only its source (a C++ compile), so CI has none."""
    try:
        import llama_cpp
    except ImportError:
        pytest.skip("llama-cpp-python is not installed (pip install 'kormed[gguf-quant]' compiles llama.cpp)")
    return llama_cpp


@pytest.fixture(scope="module")
def extended_model_256(tmp_path_factory, extended_model):
    """extended_model's tokenizer on a Gemma3ForCausalLM 256 wide: rows of 256, so Q4_K blocks are really used."""
    import shutil

    import torch
    from transformers import Gemma3ForCausalLM

    out = tmp_path_factory.mktemp("tiny-ext-256")
    for f in extended_model.iterdir():
        if f.name.startswith("tokenizer") or f.name == "special_tokens_map.json":
            shutil.copy2(f, out / f.name)
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(tiny_text_config(hidden_size=256, intermediate_size=512, head_dim=256))
    model.resize_token_embeddings(262144 + 64, mean_resizing=False)
    model.save_pretrained(out, safe_serialization=True)
    return out


def _gguf_fields(path: Path) -> tuple[dict, set[str]]:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    fields = {}
    for name in ("general.architecture", "general.file_type", "clip.projector_type", "clip.has_vision_encoder"):
        if name in reader.fields:
            field = reader.fields[name]
            value = field.parts[field.data[0]]
            fields[name] = bytes(value).decode() if field.types[0].name == "STRING" else value.tolist()[0]
    return fields, {t.tensor_type.name for t in reader.tensors}


@pytest.mark.heavy
def test_q4_k_m_export_checked_by_llama_cpp(llama_cpp, converter, extended_model_256, tmp_path):
    """`--gguf-type q4_k_m --verify`: the f16 intermediate is quantized by llama.cpp's own quantizer and removed;
    llama.cpp tokenizes the prompt (with the extension's new token) to the merged model's ids and its greedy tokens
    agree with the merged model's; a rerun writes the same bytes."""
    import hashlib

    from kormed.export.run import VERIFY_PROMPT
    from kormed.models import load_tokenizer

    assert 262145 in load_tokenizer(str(extended_model_256)).encode(VERIFY_PROMPT)
    out = tmp_path / "tiny-ko"
    result = runner.invoke(app, ["export", "--model", str(extended_model_256), "--gguf", "--gguf-type", "q4_k_m",
                                 "--verify", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "README.md", "kormed_export.json",
                                                     "tiny-ko-q4_k_m.gguf"]  # no f16 intermediate left
    assert (out / "Modelfile").read_text().startswith("FROM ./tiny-ko-q4_k_m.gguf\n")
    fields, tensor_types = _gguf_fields(out / "tiny-ko-q4_k_m.gguf")
    assert fields["general.architecture"] == "gemma3"
    assert fields["general.file_type"] == int(llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M) and "Q4_K" in tensor_types
    report = json.loads((out / "kormed_export.json").read_text())
    v = report["verification_llama_cpp"]["tiny-ko-q4_k_m.gguf"]
    assert v["prompt_ids_equal"] and len(v["greedy_merged"]) == 16
    assert v["max_greedy_margin"] <= v["margin_limit"]
    assert "verify tiny-ko-q4_k_m.gguf with llama.cpp" in result.output
    assert "verified `tiny-ko-q4_k_m.gguf` with llama.cpp" in (out / "README.md").read_text()
    again = tmp_path / "again" / "tiny-ko"
    result = runner.invoke(app, ["export", "--model", str(extended_model_256), "--gguf", "--gguf-type", "q4_k_m",
                                 "--out", str(again)])
    assert result.exit_code == 0, result.output
    digest = [hashlib.sha256((d / "tiny-ko-q4_k_m.gguf").read_bytes()).hexdigest() for d in (out, again)]
    assert digest[0] == digest[1]


@pytest.mark.heavy
def test_llama_cpp_verify_refuses_a_tokenizer_mismatch(llama_cpp, converter, extended_model, tiny_gemma3_dir,
                                                       tmp_path):
    """The check compares token ids: the extended model's GGUF against the base tokenizer's model is one error."""
    from kormed.errors import KormedError
    from kormed.export.gguf import convert, verify_llama_cpp
    from kormed.export.run import VERIFY_PROMPT

    gguf_file = convert(extended_model, tmp_path / "ext-f16.gguf", "f16", log=lambda m: None)
    with pytest.raises(KormedError, match="llama.cpp tokenizes the check prompt differently"):
        verify_llama_cpp(tiny_gemma3_dir, gguf_file, "f16", VERIFY_PROMPT)


@pytest.fixture(scope="module")
def hub_layout_multimodal(tmp_path_factory, embedded_model_dir):
    """A tiny Gemma3ForConditionalGeneration saved in the Hub's key layout (vision_tower.vision_model.*,
    language_model.model.*, multi_modal_projector.*), as MedGemma's checkpoint is; no preprocessor_config.json."""
    import shutil

    import torch
    from conftest import tiny_multimodal_config
    from safetensors.torch import save_file
    from transformers import Gemma3ForConditionalGeneration

    out = tmp_path_factory.mktemp("tiny-mm-hub")
    torch.manual_seed(0)
    cfg = tiny_multimodal_config(head_dim=256)  # = query_pre_attn_scalar, as llama.cpp assumes (see extended_model)
    model = Gemma3ForConditionalGeneration(cfg)
    hub = {"model.vision_tower.": "vision_tower.vision_model.", "model.language_model.": "language_model.model.",
           "model.multi_modal_projector.": "multi_modal_projector."}
    tensors = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied, as on the Hub
        prefix = next(p for p in hub if name.startswith(p))
        tensors[hub[prefix] + name[len(prefix):]] = tensor.contiguous()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg.architectures = ["Gemma3ForConditionalGeneration"]
    cfg.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (embedded_model_dir / name).is_file():
            shutil.copy2(embedded_model_dir / name, out / name)
    return out


@pytest.mark.heavy
def test_multimodal_export_writes_the_mmproj_that_llama_cpp_loads(llama_cpp, converter, hub_layout_multimodal,
                                                                  tmp_path):
    """A Gemma3ForConditionalGeneration gets the text GGUF and `mmproj-<name>-f16.gguf` (the converter's --mmproj);
    llama.cpp's multimodal library loads the projector on the text model; the Modelfile and usage name both."""
    out = tmp_path / "mm"
    result = runner.invoke(app, ["export", "--model", str(hub_layout_multimodal), "--gguf", "--gguf-type",
                                 "q4_k_m", "--verify", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("*.gguf")) == ["mm-q4_k_m.gguf", "mmproj-mm-f16.gguf"]
    assert (out / "Modelfile").read_text().startswith("FROM ./mm-q4_k_m.gguf\nFROM ./mmproj-mm-f16.gguf\n")
    assert "--mmproj" in result.output and "mmproj-mm-f16.gguf" in result.output
    fields, tensor_types = _gguf_fields(out / "mmproj-mm-f16.gguf")
    assert fields["general.architecture"] == "clip" and fields["clip.projector_type"] == "gemma3"
    assert fields["clip.has_vision_encoder"] is True or fields["clip.has_vision_encoder"] == 1
    text_fields, _ = _gguf_fields(out / "mm-q4_k_m.gguf")
    assert text_fields["general.architecture"] == "gemma3"
    report = json.loads((out / "kormed_export.json").read_text())
    assert report["gguf"]["mmproj"] == "mmproj-mm-f16.gguf"
    v = report["verification_llama_cpp"]["mm-q4_k_m.gguf"]
    assert v["prompt_ids_equal"] and v["mmproj"] == {"file": "mmproj-mm-f16.gguf", "vision": True}
    assert "mmproj-mm-f16.gguf" in (out / "README.md").read_text()
