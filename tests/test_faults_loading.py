"""Fault suite: loading models, tokenizers and adapters (issue 14 items 4, 5, 8 and 10).

Every bad model, tokenizer or adapter directory gives one KormedError naming the path (and file), never a traceback,
never an unpickled file and never a hub download: the hub's download functions are patched to fail the test if they
are called. Each case fails before anything large is loaded, so no test here builds the 262K-token tokenizer.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from kormed.cli import app
from kormed.errors import KormedError
from kormed.models import (
    check_adapter_dir,
    load_model,
    load_model_and_tokenizer,
    load_model_config,
    load_tokenizer,
    looks_like_hub_id,
    pick_runtime,
    resolve_model,
)

runner = CliRunner()


def _quiet(_msg: str) -> None:
    pass


@pytest.fixture
def hub_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Block the network: every hub download entry point records its call and raises."""
    import huggingface_hub
    import huggingface_hub.file_download
    import peft.config
    import peft.utils.save_and_load
    import transformers.utils.hub

    calls: list[tuple[Any, ...]] = []

    def blocked(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        raise AssertionError(f"hub download attempted: {args}")

    for module in (huggingface_hub, huggingface_hub.file_download, transformers.utils.hub, peft.config,
                   peft.utils.save_and_load):
        for name in ("hf_hub_download", "snapshot_download"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, blocked)
    return calls


def _one_error(args: list[str]) -> str:
    """Run the CLI in-process: exit 2, no traceback, the first line `kormed: error: ...`; return the output."""
    result = runner.invoke(app, args)
    assert result.exit_code == 2, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert result.output.startswith("kormed: error: "), result.output
    return result.output


class _Payload:
    """A pickle that, when unpickled, writes a marker file (stands in for a malicious payload)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (Path.write_text, (self.marker, "pwned"))


def _malicious_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({"weight": _Payload(marker)}))


# -- item 5: a path is a path ------------------------------------------------------------------------------------

def test_hub_id_rule() -> None:
    assert looks_like_hub_id("google/medgemma-4b-it")
    assert looks_like_hub_id("unsloth/gemma-3-270m-it")
    for name in ("./models", "/abs/dir", "~/models/x", "a/b/c", "../x/y", "models\\typo", "x", "own/na me"):
        assert not looks_like_hub_id(name), name


@pytest.mark.parametrize("name", ["models/typo", "./typo", "runs/a/b", "~/kormed-no-such-dir-xyz"])
def test_mistyped_model_path_is_refused_without_network(name: str, tmp_path: Path, monkeypatch, hub_calls) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()  # `models/typo`: its parent exists here, so it is a path, not a hub id
    with pytest.raises(KormedError, match="model directory does not exist") as exc:
        resolve_model(name, log=_quiet)
    assert exc.value.path == str(Path(name).expanduser())
    with pytest.raises(KormedError, match="does not exist"):
        load_model_and_tokenizer(name, runtime=pick_runtime("cpu"), log=_quiet)
    with pytest.raises(KormedError, match="tokenizer directory does not exist"):
        load_tokenizer(name)
    assert hub_calls == []


def test_mistyped_model_path_through_the_cli(tmp_path: Path, monkeypatch, hub_calls) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    out = _one_error(["model", "path", "--model", "models/typo"])
    assert "models/typo: model directory does not exist" in out
    assert hub_calls == []


# -- item 4 and 5: adapters load from safetensors only, from a local directory ----------------------------------

def _adapter_dir(root: Path) -> Path:
    adapter = root / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}), encoding="utf-8")
    return adapter


def test_pickle_adapter_is_refused_and_never_unpickled(tmp_path: Path, hub_calls) -> None:
    adapter = _adapter_dir(tmp_path)
    marker = tmp_path / "unpickled"
    _malicious_pickle(adapter / "adapter_model.bin", marker)
    with pytest.raises(KormedError, match="adapter_model.bin is a pickle file.*safetensors only") as exc:
        load_model_and_tokenizer(None, adapter=adapter, runtime=pick_runtime("cpu"), log=_quiet)
    assert exc.value.path == str(adapter / "adapter_model.bin")
    assert "adapter_model.safetensors" in (exc.value.hint or "")
    assert not marker.exists()
    assert hub_calls == []


def test_pickle_adapter_through_the_cli(tmp_path: Path, hub_calls) -> None:
    adapter = _adapter_dir(tmp_path)
    marker = tmp_path / "unpickled"
    _malicious_pickle(adapter / "adapter_model.bin", marker)
    out = _one_error(["export", "--adapter", str(adapter), "--out", str(tmp_path / "merged"), "--merge"])
    assert f"{adapter / 'adapter_model.bin'}: adapter_model.bin is a pickle file" in out
    assert not marker.exists() and not (tmp_path / "merged").exists()
    assert hub_calls == []


def test_adapter_without_weights_says_what_is_missing(tmp_path: Path, hub_calls) -> None:
    adapter = _adapter_dir(tmp_path)
    with pytest.raises(KormedError, match="no adapter weights: adapter_model.safetensors is missing") as exc:
        load_model_and_tokenizer(None, adapter=adapter, runtime=pick_runtime("cpu"), log=_quiet)
    assert exc.value.path == str(adapter)
    with pytest.raises(KormedError, match="adapter directory does not exist"):
        check_adapter_dir(tmp_path / "no-such-adapter")
    (adapter / "adapter_config.json").write_text('{"r": 4,', encoding="utf-8")
    with pytest.raises(KormedError, match="malformed JSON") as exc:
        check_adapter_dir(adapter)
    assert exc.value.path == str(adapter / "adapter_config.json") and exc.value.line == 1
    assert hub_calls == []


def test_pickle_model_weights_are_refused_by_name(tmp_path: Path, hub_calls) -> None:
    from transformers import Gemma3TextConfig

    model_dir = tmp_path / "model"
    Gemma3TextConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=1,
                     num_key_value_heads=1, head_dim=16).save_pretrained(model_dir)
    marker = tmp_path / "unpickled"
    _malicious_pickle(model_dir / "pytorch_model.bin", marker)
    with pytest.raises(KormedError, match="pytorch_model.bin is a pickle file") as exc:
        load_model(str(model_dir), pick_runtime("cpu"))
    assert exc.value.path == str(model_dir / "pytorch_model.bin")
    assert not marker.exists()
    assert hub_calls == []


# -- items 8 and 10: tokenizer and config files ------------------------------------------------------------------

def test_empty_directory_says_what_is_missing(tmp_path: Path, hub_calls) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(KormedError) as exc:
        load_tokenizer(str(empty))
    text = str(exc.value)
    assert text.startswith(f"{empty}: not a Gemma 3 model or tokenizer directory: no tokenizer.json")
    assert "sentencepiece" not in text and len(text.splitlines()) <= 2  # message + hint
    with pytest.raises(KormedError, match="not a model directory"):
        load_model_and_tokenizer(str(empty), runtime=pick_runtime("cpu"), log=_quiet)
    assert hub_calls == []


def test_incomplete_tokenizer_json_names_the_file_and_field(tmp_path: Path) -> None:
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    (tok_dir / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {},
                                                                                      "merges": []}}))
    with pytest.raises(KormedError, match="incomplete tokenizer file") as exc:
        load_tokenizer(str(tok_dir))
    assert exc.value.path == str(tok_dir / "tokenizer.json") and exc.value.field == "added_tokens"


def test_broken_config_json_is_reported_as_the_config_file(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text('{\n  "model_type": "gemma3_text",\n  "vocab_size": \n}', encoding="utf-8")
    (model_dir / "tokenizer.json").write_text("{}", encoding="utf-8")
    for load in (load_tokenizer, load_model_config, resolve_model):
        with pytest.raises(KormedError, match="malformed JSON") as exc:
            load(str(model_dir))
        assert (exc.value.path, exc.value.line) == (str(model_dir / "config.json"), 4), load
        assert "tokenizer" not in exc.value.message
    out = _one_error(["model", "path", "--model", str(model_dir)])
    assert f"{model_dir / 'config.json'}:4: malformed JSON" in out


def _small_tokenizer_model(root: Path) -> Path:
    """A non-Gemma model directory (Llama config) with a 7-token tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, PreTrainedTokenizerFast

    out = root / "llama"
    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", "가", "나", "다"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
                            pad_token="<pad>").save_pretrained(out)
    LlamaConfig(vocab_size=7, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1).save_pretrained(out)
    return out


def test_non_gemma_small_vocabulary_is_refused(tmp_path: Path, hub_calls) -> None:
    model_dir = _small_tokenizer_model(tmp_path)
    with pytest.raises(KormedError, match="not the Gemma 3 tokenizer: its vocabulary has 7 tokens") as exc:
        load_model_and_tokenizer(str(model_dir), runtime=pick_runtime("cpu"), log=_quiet)
    assert exc.value.path == str(model_dir)
    out = _one_error(["eval", "ppl", "--model", str(model_dir), "--data", str(_texts(tmp_path)),
                      "--output", str(tmp_path / "ppl.json")])
    assert "not the Gemma 3 tokenizer" in out and str(model_dir) in out
    assert not (tmp_path / "ppl.json").exists()
    assert hub_calls == []


def test_tokenizer_extend_checks_the_base_tokenizer(tmp_path: Path) -> None:
    """`tokenizer extend` reads the base tokenizer.json itself; it goes through the shared loader's checks first."""
    small = _small_tokenizer_model(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "gemma3_text"}), encoding="utf-8")
    (broken / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {}}), encoding="utf-8")
    words = tmp_path / "dict.json"
    words.write_text(json.dumps([{"term": "가나", "definition": "다"}], ensure_ascii=False), encoding="utf-8")
    base = ["tokenizer", "extend", "--corpus", str(_texts(tmp_path)), "--dict", str(words)]
    out = _one_error([*base, "--model", str(small), "--out", str(tmp_path / "ext1")])
    assert f"{small}: not the Gemma 3 tokenizer" in out
    out = _one_error([*base, "--model", str(broken), "--out", str(tmp_path / "ext2")])
    assert f"{broken / 'tokenizer.json'}: field 'added_tokens': incomplete tokenizer file" in out
    assert not (tmp_path / "ext1").exists() and not (tmp_path / "ext2").exists()


def _texts(root: Path) -> Path:
    p = root / "texts.jsonl"
    p.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in ("가 나 다", "나 다 가")),
                 encoding="utf-8")
    return p


@pytest.mark.parametrize("rows, refused", [(1024, True), (262144, False)])
def test_model_vocabulary_checked_against_the_gemma_vocabulary(tmp_path: Path, real_tokenizer, hub_calls, rows,
                                                               refused) -> None:
    """A Gemma 3 directory whose embedding has fewer rows than the Gemma 3 vocabulary is one error line before any
    weight loads; 262,144 rows pass even when the tokenizer lists one token more (hub text-only Gemma 3 tokenizers
    add <image_soft_token> beyond the embedding), here simulated with an added token."""
    from conftest import tiny_text_config

    from kormed.models import load_model_and_tokenizer

    model_dir = tmp_path / f"model-{rows}"
    tiny_text_config(vocab_size=rows).save_pretrained(model_dir)
    tokenizer = real_tokenizer.__class__.from_pretrained(real_tokenizer.name_or_path)
    tokenizer.add_tokens(["<image_soft_token_for_test>"], special_tokens=True)
    tokenizer.save_pretrained(model_dir)
    assert len(tokenizer) == 262145
    if refused:
        with pytest.raises(KormedError, match="smaller than its tokenizer") as exc:
            load_model_and_tokenizer(str(model_dir), runtime=pick_runtime("cpu"), log=lambda m: None)
        assert exc.value.path == str(model_dir)
    else:  # gets past the vocabulary check; the weights are absent, so loading them is what fails
        with pytest.raises(Exception) as exc:
            load_model_and_tokenizer(str(model_dir), runtime=pick_runtime("cpu"), log=lambda m: None)
        assert "smaller than its tokenizer" not in str(exc.value)
    assert hub_calls == []


# -- issue 28: no network at run time -------------------------------------------------------------------------------

@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    """Every way out of the process is blocked and counted: socket connections (what any HTTP client ends in) and
    child processes (pip). The hub libraries are put online (the test session sets HF_HUB_OFFLINE, which would hide
    an attempt), so what the code itself does is what is counted."""
    import socket
    import subprocess

    import huggingface_hub.constants

    attempts: dict[str, list[Any]] = {"connect": [], "process": []}

    def connect(_sock: Any, address: Any, *_a: Any) -> Any:
        attempts["connect"].append(address)
        raise OSError(101, "network blocked by the test")

    def create_connection(address: Any, *_a: Any, **_k: Any) -> Any:
        attempts["connect"].append(address)
        raise OSError(101, "network blocked by the test")

    def popen(args: Any, *_a: Any, **_k: Any) -> Any:
        attempts["process"].append(args)
        raise OSError(1, "child processes blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    monkeypatch.setattr(subprocess, "Popen", popen)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # transformers asks the same flag
    return attempts


def test_the_cli_is_offline_from_its_first_import_and_quiet_about_bitsandbytes_kernels() -> None:
    """On a CPU with AVX512-BF16, importing bitsandbytes (peft and transformers do) asks the hub for a kernel
    (kernels-community/quantization-bitsandbytes): kormed's CLI is offline before any Hugging Face library loads,
    so the request fails at once, and the two libraries' notes about it do not reach the user's terminal."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    code = ("import os, kormed.cli, bitsandbytes, huggingface_hub.constants as c; "
            "print(os.environ['HF_HUB_OFFLINE'], c.HF_HUB_OFFLINE)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().split() == ["1", "True"]
    assert "kernels-community" not in proc.stderr.decode() and "publisher trust" not in proc.stderr.decode()


def test_gguf_export_never_downloads_the_converter(tiny_gemma3_dir: Path, tmp_path: Path, monkeypatch,
                                                   no_network) -> None:
    """`kormed export --gguf` without the converter installed is one line saying how to install it (before any
    work), with no pip and no connection: fetching is `kormed export --fetch-converter`, run once."""
    pytest.importorskip("sentencepiece")
    import kormed.export.gguf as gguf

    monkeypatch.delenv("KORMED_LLAMA_CPP", raising=False)
    monkeypatch.setattr(gguf, "converter_dir", lambda: tmp_path / "cache" / "llama.cpp" / "none")
    out = _one_error(["export", "--model", str(tiny_gemma3_dir), "--gguf", "--out", str(tmp_path / "o")])
    assert "GGUF converter is not installed" in out and "kormed export --fetch-converter" in out
    assert len(out.strip().splitlines()) == 1
    assert no_network == {"connect": [], "process": []}
    assert not (tmp_path / "o").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def _hide_module(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make `import name` fail as if the package were not installed (an import finder that refuses it)."""
    import importlib.abc
    import sys

    class Absent(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
            if fullname == name or fullname.startswith(name + "."):
                raise ModuleNotFoundError(f"No module named '{fullname}'", name=fullname)
            return None

    for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        monkeypatch.delitem(sys.modules, loaded)
    monkeypatch.setattr(sys, "meta_path", [Absent(), *sys.meta_path])


@pytest.mark.parametrize("gguf_type", ["q4_k_m", "f16,q6_k"])
def test_quantized_gguf_without_llama_cpp_is_one_line_before_any_work(gguf_type: str, tiny_gemma3_dir: Path,
                                                                       tmp_path: Path, monkeypatch) -> None:
    """`--gguf-type q4_k_m` (llama.cpp's quantizer, the optional kormed[gguf-quant]) without llama-cpp-python is one
    line saying how to install it, before the converter runs or anything is written."""
    pytest.importorskip("sentencepiece")
    converter = tmp_path / "llama.cpp"
    converter.mkdir()
    marker = tmp_path / "converter-ran"
    (converter / "convert_hf_to_gguf.py").write_text(f"open({str(marker)!r}, 'w').close()\n", encoding="utf-8")
    monkeypatch.setenv("KORMED_LLAMA_CPP", str(converter))
    _hide_module(monkeypatch, "llama_cpp")
    out = _one_error(["export", "--model", str(tiny_gemma3_dir), "--gguf", "--gguf-type", gguf_type,
                      "--out", str(tmp_path / "o")])
    assert "needs llama-cpp-python, which is not installed" in out and "pip install 'kormed[gguf-quant]'" in out
    assert len(out.strip().splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "o").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging directory left


def test_mmproj_export_refuses_vision_keys_outside_the_hub_layout(tmp_path: Path, monkeypatch) -> None:
    """A multimodal checkpoint whose vision keys are not the Hub's `vision_tower.vision_model.*` (what llama.cpp's
    --mmproj converter maps) is one line naming the file and the key, before converting anything."""
    pytest.importorskip("sentencepiece")
    import torch
    from safetensors.torch import save_file

    model = tmp_path / "mm"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["Gemma3ForConditionalGeneration"],
                                                   "model_type": "gemma3", "text_config": {},
                                                   "vision_config": {"image_size": 28}}), encoding="utf-8")
    (model / "tokenizer.json").write_text("{}", encoding="utf-8")
    save_file({"language_model.model.norm.weight": torch.zeros(4),
               "vision_tower.encoder.layers.0.layer_norm1.weight": torch.zeros(4)}, str(model / "model.safetensors"))
    converter = tmp_path / "llama.cpp"
    converter.mkdir()
    (converter / "convert_hf_to_gguf.py").write_text("raise SystemExit(1)\n", encoding="utf-8")
    monkeypatch.setenv("KORMED_LLAMA_CPP", str(converter))
    out = _one_error(["export", "--model", str(model), "--gguf", "--out", str(tmp_path / "o")])
    assert "model.safetensors" in out and "'vision_tower.encoder.layers.0.layer_norm1.weight'" in out
    assert "vision_tower.vision_model.*" in out and len(out.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_fetch_converter_is_the_one_step_that_runs_pip(tmp_path: Path, monkeypatch) -> None:
    """`kormed export --fetch-converter` runs pip download (its failure is one line), and nothing once installed."""
    pytest.importorskip("sentencepiece")
    import subprocess

    import kormed.export.gguf as gguf

    calls: list[list[str]] = []

    def pip(cmd: list[str], **_k: Any) -> subprocess.CompletedProcess:
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found\n")

    monkeypatch.setattr(gguf.subprocess, "run", pip)
    monkeypatch.setattr(gguf, "converter_dir", lambda: tmp_path / "llama.cpp" / "v")
    result = runner.invoke(app, ["export", "--fetch-converter"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.splitlines()[-1] == ("kormed: error: cannot fetch llama.cpp's GGUF converter: pip download "
                                              "llama-cpp-python failed (ERROR: No matching distribution found); it "
                                              "needs the package registry once, or set KORMED_LLAMA_CPP to a "
                                              "llama.cpp checkout")
    assert [cmd[1:4] for cmd in calls] == [["-m", "pip", "download"]]
    installed = tmp_path / "llama.cpp" / "v"
    installed.mkdir(parents=True)
    (installed / "convert_hf_to_gguf.py").write_text("", encoding="utf-8")
    result = runner.invoke(app, ["export", "--fetch-converter"])
    assert result.exit_code == 0 and f"llama.cpp GGUF converter: {installed}" in result.output
    assert len(calls) == 1  # already installed: nothing fetched again


def _hub_cache(root: Path, repo_id: str, files: Path | None = None) -> Path:
    """A Hugging Face cache holding `repo_id` as `hf download` leaves it (refs/main -> snapshots/<sha>/), with the
    files of the directory `files` linked in (a config.json alone when None). Returns the snapshot directory."""
    from conftest import tiny_text_config

    repo = root / f"models--{repo_id.replace('/', '--')}"
    sha = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / sha
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha, encoding="utf-8")
    if files is None:
        tiny_text_config().save_pretrained(snapshot)
    else:
        for f in files.iterdir():
            (snapshot / f.name).symlink_to(f)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache of the test's own (what huggingface_hub and transformers read)."""
    import huggingface_hub.constants

    cache = tmp_path / "hf-hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.mark.parametrize("name", ["models/typo", "google/medgemma-4b-it"])
def test_name_that_is_nowhere_is_one_line_with_no_connection(name: str, tmp_path: Path, monkeypatch, hub_cache,
                                                             no_network, hub_calls) -> None:
    """`--model models/typo` with no `models/` here is shaped like a hub id: it is still one line, with no
    connection attempted (the battery counted 38), for the model, the tokenizer and the CLI alike; the line says how
    to fetch a hub model once (`kormed model path --download`)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(KormedError, match="model directory does not exist, and no hub model") as exc:
        resolve_model(name, log=_quiet)
    assert exc.value.path == name and f"kormed model path --model {name} --download" in str(exc.value)
    with pytest.raises(KormedError, match="does not exist"):
        load_model_and_tokenizer(name, runtime=pick_runtime("cpu"), log=_quiet)
    with pytest.raises(KormedError, match="tokenizer directory does not exist"):
        load_tokenizer(name)
    with pytest.raises(KormedError, match="model directory does not exist"):
        load_model_config(name)
    out = _one_error(["model", "path", "--model", name])
    assert len(out.strip().splitlines()) == 1 and f"{name}: model directory does not exist" in out
    assert no_network == {"connect": [], "process": []} and hub_calls == []


def test_hub_model_in_the_cache_loads_with_no_connection(tiny_gemma3_dir: Path, hub_cache: Path, no_network) -> None:
    """A hub id fetched earlier loads from the Hugging Face cache alone, with the hub libraries online: no revision
    check, and not the agent registry huggingface_hub fetches when it builds request headers."""
    _hub_cache(hub_cache, "kormed-test/tiny-gemma3", files=tiny_gemma3_dir)
    assert resolve_model("kormed-test/tiny-gemma3", log=_quiet) == "kormed-test/tiny-gemma3"
    model, tokenizer, _ = load_model_and_tokenizer("kormed-test/tiny-gemma3", runtime=pick_runtime("cpu"), log=_quiet)
    assert model.config.hidden_size == 64 and len(tokenizer) >= 262144
    assert no_network == {"connect": [], "process": []}


def test_model_path_download_is_the_one_request_for_the_hub(tmp_path: Path, monkeypatch, hub_cache) -> None:
    """`kormed model path --model OWNER/NAME --download` fetches config, tokenizer and safetensors (never pickles)
    into the cache, once; a path that is no hub id is refused as a path, with nothing fetched."""
    import huggingface_hub

    from kormed.models import HUB_FILES

    calls: list[tuple[str, Any]] = []

    def snapshot_download(repo_id: str, **kwargs: Any) -> str:
        calls.append((repo_id, kwargs.get("allow_patterns")))
        return str(_hub_cache(hub_cache, repo_id))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["model", "path", "--model", "kormed-test/tiny", "--download"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == "kormed-test/tiny"
    assert calls == [("kormed-test/tiny", HUB_FILES)] and not any(p.endswith((".bin", ".pt")) for p in HUB_FILES)
    assert runner.invoke(app, ["model", "path", "--model", "kormed-test/tiny", "--download"]).exit_code == 0
    assert len(calls) == 1  # in the cache now: not fetched again
    (tmp_path / "models").mkdir()
    out = _one_error(["model", "path", "--model", "models/typo", "--download"])
    assert "models/typo: model directory does not exist" in out and len(calls) == 1


# -- issue 26: one guarded loader for weights and adapters, by class ----------------------------------------------

def _save_tiny(root: Path, name: str, **config: Any) -> Path:
    """A tiny random Gemma3ForCausalLM (safetensors, no tokenizer files: the tests hand the loader the real one)."""
    import torch
    from conftest import tiny_text_config
    from transformers import Gemma3ForCausalLM

    torch.manual_seed(0)
    out = root / name
    Gemma3ForCausalLM(tiny_text_config(**config)).save_pretrained(out, safe_serialization=True)
    return out


def _save_adapter(root: Path, base: Path, name: str = "adapter", **lora: Any) -> Path:
    """A PEFT LoRA adapter trained on `base` (as PEFT writes it)."""
    import warnings

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Gemma3ForCausalLM

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(Gemma3ForCausalLM.from_pretrained(base),
                               LoraConfig(r=4, target_modules=r".*\.(q_proj|v_proj)", **lora))
    model.save_pretrained(root / name)
    return root / name


def _rewrite_header(path: Path, change: Any) -> None:
    """Rewrite a safetensors header (keeping the tensor bytes): `change(header)` edits it in place."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    change(header)
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n :])


@pytest.fixture
def given_tokenizer(monkeypatch: pytest.MonkeyPatch, real_tokenizer) -> None:
    """The loader gets the real Gemma 3 tokenizer without building it again for every tiny model directory."""
    import kormed.models

    monkeypatch.setattr(kormed.models, "load_tokenizer", lambda path: real_tokenizer)


# the classes of a damaged safetensors file, and the words of the one line that names it
DAMAGED = {
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "bytes, its header says"),
    "cut in its header": (lambda p: p.write_bytes(p.read_bytes()[:20]), "truncated header"),
    "empty": (lambda p: p.write_bytes(b""), "empty"),
    "header lies about a shape": (
        lambda p: _rewrite_header(p, lambda h: h[sorted(k for k in h if k != "__metadata__")[0]].update(
            shape=[4, 4096])), "says shape [4, 4096]"),
    "header lies about a dtype": (
        lambda p: _rewrite_header(p, lambda h: h[sorted(k for k in h if k != "__metadata__")[0]].update(
            dtype="F64")), "F64"),
    "header claims a huge length": (lambda p: p.write_bytes((10**12).to_bytes(8, "little") + b"{}"),
                                    "unreadable header"),
    "header is not JSON": (lambda p: p.write_bytes((4).to_bytes(8, "little") + b"{{{{"), "unreadable header"),
}


class TestDamagedSafetensors:
    """A truncated safetensors file, or one whose header lies, is one line naming the file (was SafetensorError)."""

    @pytest.mark.parametrize("case", sorted(DAMAGED))
    def test_model_weights(self, case: str, tmp_path: Path, given_tokenizer, hub_calls) -> None:
        model_dir = _save_tiny(tmp_path, "model", vocab_size=1024)
        damage, words = DAMAGED[case]
        damage(model_dir / "model.safetensors")
        with pytest.raises(KormedError, match="model weights file is damaged") as exc:
            load_model_and_tokenizer(str(model_dir), runtime=pick_runtime("cpu"), log=_quiet)
        assert exc.value.path == str(model_dir / "model.safetensors") and words in exc.value.message, exc.value
        assert "\n" not in exc.value.message
        assert hub_calls == []

    @pytest.mark.parametrize("case", ["truncated", "header lies about a shape"])
    def test_adapter_weights_through_the_cli(self, case: str, tmp_path: Path, hub_calls) -> None:
        base = _save_tiny(tmp_path, "model", vocab_size=1024)
        adapter = _save_adapter(tmp_path, base)
        DAMAGED[case][0](adapter / "adapter_model.safetensors")
        out = _one_error(["export", "--adapter", str(adapter), "--model", str(base), "--out",
                          str(tmp_path / "merged"), "--merge"])
        assert out.startswith(f"kormed: error: {adapter / 'adapter_model.safetensors'}: adapter weights file is "
                              "damaged: "), out
        assert DAMAGED[case][1] in out.splitlines()[0]
        assert not (tmp_path / "merged").exists()
        assert hub_calls == []


def _edit_json(path: Path, **changes: Any) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(changes)
    path.write_text(json.dumps(data), encoding="utf-8")


class TestAdapterConfig:
    """adapter_config.json / kormed_adapter.json checked before PEFT reads them (was KeyError / AttributeError)."""

    @pytest.mark.parametrize("changes, field, words", [
        ({"peft_type": "NOT_A_METHOD"}, "peft_type", "unknown PEFT method 'NOT_A_METHOD'"),
        ({"peft_type": 7}, "peft_type", "must be a string"),
        ({"r": "16"}, "r", "must be an integer"),
        ({"r": 0}, "r", "must be at least 1"),
        ({"lora_alpha": [32]}, "lora_alpha", "must be an integer or a number"),
        ({"target_modules": 5}, "target_modules", "must be a string or an array or null"),
        ({"target_modules": ["q_proj", 3]}, "target_modules", "must be"),
        ({"modules_to_save": "embed_tokens"}, "modules_to_save", "must be an array or null"),
        ({"use_rslora": "yes"}, "use_rslora", "must be true or false"),
        ({"base_model_name_or_path": {"a": 1}}, "base_model_name_or_path", "must be a string or null"),
    ])
    def test_wrong_field(self, changes: dict, field: str, words: str, tmp_path: Path, hub_calls) -> None:
        adapter = _save_adapter(tmp_path, _save_tiny(tmp_path, "model", vocab_size=1024))
        _edit_json(adapter / "adapter_config.json", **changes)
        with pytest.raises(KormedError, match=words) as exc:
            check_adapter_dir(adapter)
        assert exc.value.path == str(adapter / "adapter_config.json") and exc.value.field == field
        out = _one_error(["export", "--adapter", str(adapter), "--model", str(tmp_path / "model"), "--out",
                          str(tmp_path / "merged"), "--merge"])
        assert f"{adapter / 'adapter_config.json'}: field '{field}': " in out.splitlines()[0]
        assert hub_calls == []

    @pytest.mark.parametrize("meta, field", [([1, 2], None), ({"embedding_rows": "1024"}, "embedding_rows"),
                                             ({"quantization": 4}, "quantization")])
    def test_wrong_kormed_metadata(self, meta: Any, field: str | None, tmp_path: Path, hub_calls) -> None:
        adapter = _save_adapter(tmp_path, _save_tiny(tmp_path, "model", vocab_size=1024))
        (adapter / "kormed_adapter.json").write_text(json.dumps(meta), encoding="utf-8")
        with pytest.raises(KormedError) as exc:
            load_model_and_tokenizer(str(tmp_path / "model"), adapter=adapter, runtime=pick_runtime("cpu"),
                                     log=_quiet)
        assert exc.value.path == str(adapter / "kormed_adapter.json") and exc.value.field == field, exc.value
        assert hub_calls == []


class TestAdapterForAnotherModel:
    """An adapter whose tensors or target modules do not fit the base: one line naming the file and the mismatch
    before PEFT loads it (was RuntimeError from load_state_dict, or NoMatchingPeftModuleError)."""

    def _load(self, base: Path, adapter: Path) -> KormedError:
        with pytest.raises(KormedError) as exc:
            load_model_and_tokenizer(str(base), adapter=adapter, runtime=pick_runtime("cpu"), log=_quiet)
        assert "\n" not in exc.value.message
        return exc.value

    def test_hidden_size(self, tmp_path: Path, given_tokenizer, hub_calls) -> None:
        adapter = _save_adapter(tmp_path, _save_tiny(tmp_path, "trained-on"))
        err = self._load(_save_tiny(tmp_path, "other", hidden_size=128), adapter)
        assert err.path == str(adapter / "adapter_model.safetensors")
        assert "q_proj.lora_A.weight takes 64 inputs, the base's layer 128 (hidden size)" in err.message
        assert hub_calls == []

    def test_vocabulary(self, tmp_path: Path, given_tokenizer, hub_calls) -> None:
        adapter = _save_adapter(tmp_path, _save_tiny(tmp_path, "trained-on"), modules_to_save=["embed_tokens"])
        err = self._load(_save_tiny(tmp_path, "other", vocab_size=262144 + 64), adapter)
        assert err.path == str(adapter / "adapter_model.safetensors")
        assert "embed_tokens.weight is 262144 x 64, the base's 262208 x 64 (vocabulary rows x hidden size)" \
            in err.message
        assert hub_calls == []

    def test_layers_the_base_lacks(self, tmp_path: Path, given_tokenizer, hub_calls) -> None:
        adapter = _save_adapter(tmp_path, _save_tiny(tmp_path, "trained-on", num_hidden_layers=3))
        err = self._load(_save_tiny(tmp_path, "other"), adapter)  # 2 layers
        assert err.path == str(adapter / "adapter_model.safetensors") and "has no layer 'model.layers.2" in err.message

    def test_target_modules_match_nothing(self, tmp_path: Path, given_tokenizer, hub_calls) -> None:
        base = _save_tiny(tmp_path, "model")
        adapter = _save_adapter(tmp_path, base)
        _edit_json(adapter / "adapter_config.json", target_modules=["query_key_value"])
        err = self._load(base, adapter)
        assert (err.path, err.field) == (str(adapter / "adapter_config.json"), "target_modules")
        assert '["query_key_value"] matches no layer of the base model' in err.message

    def test_a_fitting_adapter_still_loads(self, tmp_path: Path, given_tokenizer, hub_calls) -> None:
        base = _save_tiny(tmp_path, "model")
        adapter = _save_adapter(tmp_path, base, modules_to_save=["embed_tokens"])
        net, _, _ = load_model_and_tokenizer(str(base), adapter=adapter, runtime=pick_runtime("cpu"), log=_quiet)
        assert type(net).__name__ == "PeftModelForCausalLM" or hasattr(net, "peft_config")


class TestTargetModulesAtTrainingStart:
    """lora.target_modules naming no linear layer: one line naming the option and the layers there are (was
    NoMatchingPeftModuleError for none matching; one bad name of several trained silently less)."""

    @pytest.mark.parametrize("modules", [["qkv_proj"], ["q_proj", "v_porj"], ["mlp"]])
    def test_refused(self, modules: list[str], tmp_path: Path, real_tokenizer, hub_calls) -> None:
        from kormed.train.config import LoraOptions
        from kormed.train.engine.model_setup import prepare_model_for_training

        base = _save_tiny(tmp_path, "model")
        with pytest.raises(KormedError) as exc:
            prepare_model_for_training(str(base), lora=LoraOptions(target_modules=modules),
                                       runtime=pick_runtime("cpu"), log=_quiet, tokenizer=real_tokenizer)
        assert exc.value.field == "lora.target_modules", exc.value
        assert "matches no linear layer of the language model" in exc.value.message
        assert "q_proj" in exc.value.message and "down_proj" in exc.value.message  # the names there are


def test_lm_eval_backend_without_lm_eval_is_one_line_saying_how_to_install(tmp_path: Path, monkeypatch,
                                                                            no_network) -> None:
    """`kormed eval kormedmcqa --backend lm-eval` where lm-eval is not installed: one line naming the extra to install,
    before the questions or the model are read, with no pip and no connection."""
    import sys

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # what `import lm_eval` meets where it is not installed
    data = tmp_path / "test.jsonl"
    data.write_text("not json\n", encoding="utf-8")  # never read: the missing backend is named first
    out = _one_error(["eval", "kormedmcqa", "--backend", "lm-eval", "--data", str(data), "--model",
                      str(tmp_path / "no-model"), "--output", str(tmp_path / "r.json")])
    assert "--backend lm-eval needs lm-evaluation-harness" in out and "pip install 'kormed[harness]'" in out
    assert len(out.strip().splitlines()) == 1
    assert no_network == {"connect": [], "process": []}
    assert not (tmp_path / "r.json").exists()


def test_lm_eval_backend_makes_no_connection(tiny_gemma3_dir: Path, real_tokenizer, no_network, hub_calls) -> None:
    """lm-eval's kormedmcqa task reads the user's JSONL through `datasets` with the hub libraries put online by the
    fixture: kormed's offline switch keeps every socket closed and no child process starts."""
    pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'kormed[harness]')")
    from transformers import AutoModelForCausalLM

    import kormed
    from kormed.eval.harness import run_lm_eval
    from kormed.eval.kormedmcqa import load_questions

    bundled = Path(kormed.__file__).parent / "sample_data" / "data" / "01_raw" / "02_kor_med_test"
    everything = load_questions(bundled / "test.jsonl")
    questions = [next(q for q in everything if q.subset == s) for s in ("doctor", "nurse", "pharm", "dentist")]
    fewshot = load_questions(bundled / "fewshot.jsonl")
    model = AutoModelForCausalLM.from_pretrained(tiny_gemma3_dir, dtype="float32")
    result = run_lm_eval(model, real_tokenizer, questions, fewshot=fewshot, num_fewshot=1, max_new_tokens=2,
                         progress=False)
    assert result["total"] == 4 and result["lm_eval"]["n-shot"] == {
        f"kormedmcqa_{s}": 1 for s in ("doctor", "nurse", "pharm", "dentist")}
    assert no_network == {"connect": [], "process": []} and hub_calls == []
