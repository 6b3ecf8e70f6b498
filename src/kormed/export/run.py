"""`kormed export`: the merged HF directory (`--merge`) and/or GGUF files (`--gguf`), with a model card.

Everything is written into a temporary directory beside `--out` and renamed into place at the end, so a failure
(bad input, converter error, full disk, Ctrl-C) never leaves a half-written export under the final name.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from kormed.errors import KormedError
from kormed.export.gguf import (
    CONVERTER_TYPES,
    LLAMA_CPP_PYTHON_VERSION,
    QUANT_INSTALL,
    QUANT_TYPES,
    check_vision_layout,
    export_gguf_files,
    export_mmproj,
    find_converter,
    has_vision_tower,
    merged_reference,
    parse_types,
    require_llama_cpp,
    verify_gguf,
    verify_llama_cpp,
)
from kormed.export.merge import check_adapter_base, export_merged
from kormed.export.model_card import export_card
from kormed.io import atomic_write, check_output_path, make_temp_dir, read_json, replace_path, write_json
from kormed.models import resolve_model
from kormed.weights import staged_as

MARKER = "kormed_export.json"
# Ollama's own Gemma 3 template (user/system turns as <start_of_turn>user, the model turn left open).
OLLAMA_TEMPLATE = """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if or (eq .Role "user") (eq .Role "system") }}<start_of_turn>user
{{ .Content }}<end_of_turn>
{{ if $last }}<start_of_turn>model
{{ end }}
{{- else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}{{ if not $last }}<end_of_turn>
{{ end }}
{{- end }}
{{- end }}"""
VERIFY_PROMPT = ("<start_of_turn>user\n고혈압 환자에게 처음 권하는 생활 습관 교정은 무엇인가요?<end_of_turn>\n"
                 "<start_of_turn>model\n")


def modelfile(gguf_name: str, mmproj_name: str | None = None) -> str:
    """An Ollama Modelfile for one GGUF file in the same directory (greedy, `<end_of_turn>` stops); a vision
    projector is a second FROM line (Ollama's way to attach a projector GGUF)."""
    return (f"FROM ./{gguf_name}\n" + (f"FROM ./{mmproj_name}\n" if mmproj_name else "") +
            f'TEMPLATE """{OLLAMA_TEMPLATE}"""\n'
            'PARAMETER stop "<end_of_turn>"\n'
            "PARAMETER temperature 0\n")


def _check_out(out: Path, inputs: dict[str, str | None]) -> None:
    check_output_path(out, "dir", "--out", inputs=inputs)
    if out.exists() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise KormedError("output directory exists and is not an earlier kormed export", path=out,
                          hint="choose an empty or new --out directory")


def _stage_dir(out: Path) -> Path:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return make_temp_dir(out.parent, out.name, ".export")
    except OSError as exc:
        raise KormedError(f"cannot write the export: {exc.strerror}", path=out.parent) from None


def _new_tokens(model_dir: Path, limit: int = 8) -> list[str]:
    """Up to `limit` tokens above the base Gemma 3 vocabulary (an extended tokenizer's), as text."""
    data = read_json(model_dir / "tokenizer.json")
    vocab = data["model"]["vocab"]
    base = 262144
    new = sorted((i, t) for t, i in vocab.items() if i >= base)
    return [t.replace("\u2581", " ").strip() for _, t in new[:limit] if t.strip("\u2581")]


def _llama_cpp_version() -> str:
    import llama_cpp

    return str(getattr(llama_cpp, "__version__", "?"))


def _verify_llama_cpp(model_dir: Path, types: list[str], files: list[Path], mmproj: Path | None, available: bool,
                      summary: list[str], log: Any) -> dict[str, Any]:
    """--verify with llama.cpp itself (every file, the projector loaded on the first); without llama-cpp-python
    installed, a reported skip (the quantized types have refused to start without it)."""
    if not available:
        line = f"verify with llama.cpp: skipped, llama-cpp-python is not installed ({QUANT_INSTALL})"
        log(f"[kormed] {line}")
        summary.append(line)
        return {"skipped": f"llama-cpp-python not installed ({QUANT_INSTALL})"}
    reference = merged_reference(model_dir, VERIFY_PROMPT, 16)
    results: dict[str, Any] = {"llama_cpp_python": _llama_cpp_version()}
    for i, (t, f) in enumerate(zip(types, files, strict=True)):
        log(f"[kormed] verifying {f.name}: llama.cpp (llama-cpp-python) loads it and generates")
        v = verify_llama_cpp(model_dir, f, t, VERIFY_PROMPT, reference=reference,
                             mmproj=mmproj if i == 0 else None)
        results[f.name] = v
        summary.append(f"verify {f.name} with llama.cpp: prompt ids equal, {len(v['greedy_merged'])} greedy tokens "
                       f"equal {v['greedy_equal']} (largest near-tie {v['max_greedy_margin']:.2e} <= "
                       f"{v['margin_limit']:.2e}), max |Δlogit| {v['max_abs_logit_diff']:.2e}"
                       + (f"; {mmproj.name} loads on it" if "mmproj" in v and mmproj else ""))
    return results


def run_export(*, adapter: str | None, out: str, model: str | None, merge: bool, gguf: bool,
               gguf_types: str = "f16", verify: bool = False, log: Any = print) -> dict[str, Any]:
    """Write the export; returns {"summary": [lines], "files": [...], ...}."""
    types = parse_types(gguf_types) if gguf else []
    out_p = Path(out)
    _check_out(out_p, {"--adapter": adapter, "--model": model})
    if merge and adapter is None:
        from kormed.train.engine.outputs import is_full_model_dir

        if model is not None and is_full_model_dir(model):
            raise KormedError("--model is already a full model (a --method full fine-tune): there is no adapter to "
                              "merge", path=model, hint="pass it as --model to --gguf, eval or chat as it is")
        raise KormedError("--merge needs --adapter (the adapter to merge into its base)")
    if adapter is not None:
        check_adapter_base(adapter, model)
    src_model: Path | None = None
    if adapter is None:
        resolved = Path(resolve_model(model, log=log))
        if not resolved.is_dir():
            raise KormedError("GGUF export needs a local model directory (download the hub model first)",
                              path=str(resolved))
        if not (resolved / "tokenizer.json").is_file():
            raise KormedError("the model directory has no tokenizer.json", path=resolved)
        src_model = resolved
    llama_cpp_available = True
    if gguf:
        find_converter()  # before any work: a missing converter is one line saying how to install it
        quant = [t for t in types if t in QUANT_TYPES]
        if quant:  # before any work too: the quantizer is the optional llama-cpp-python
            require_llama_cpp(f"GGUF type {', '.join(quant)}")
        if verify:
            try:
                require_llama_cpp("--verify with llama.cpp")
            except KormedError:
                llama_cpp_available = False
        if src_model is not None and has_vision_tower(src_model):
            check_vision_layout(src_model)
    stage = _stage_dir(out_p)
    summary: list[str] = []
    report: dict[str, Any] = {}
    try:
        if adapter is not None:
            merged = stage / "merged"
            with staged_as(merged, out_p):  # a full disk names the file under --out, not the hidden stage
                report = export_merged(adapter, merged, model=model, log=log)
            src_model = merged
        assert src_model is not None
        result_dir = stage / "merged" if merge else stage / "out"
        result_dir.mkdir(exist_ok=True)
        files: list[Path] = []
        mmproj: Path | None = None
        verification: dict[str, Any] = {}
        if gguf:
            files = export_gguf_files(src_model, result_dir, types, out_p.name, log=log)
            if has_vision_tower(src_model):
                mmproj = export_mmproj(src_model, result_dir, out_p.name, log=log)
            report["gguf"] = {"files": [f.name for f in files], "converter": "llama.cpp convert_hf_to_gguf.py "
                              f"(llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist)"}
            if any(t in QUANT_TYPES for t in types):
                report["gguf"]["quantizer"] = ("llama.cpp llama_model_quantize (llama-cpp-python "
                                               f"{_llama_cpp_version()})")
            if mmproj is not None:
                report["gguf"]["mmproj"] = mmproj.name
            with atomic_write(result_dir / "Modelfile") as fh:
                fh.write(modelfile(files[0].name, mmproj.name if mmproj else None))
            if verify:
                for t, f in zip(types, files, strict=True):
                    if t not in CONVERTER_TYPES:
                        continue  # transformers' reader checks the converter's own types; llama.cpp checks all
                    log(f"[kormed] verifying {f.name}: transformers loads it back with gguf_file=")
                    v = verify_gguf(src_model, f, VERIFY_PROMPT, terms=_new_tokens(src_model))
                    verification[f.name] = v
                    summary.append(f"verify {f.name}: max |Δlogit| {v['max_abs_logit_diff']:.2e} (max |logit| "
                                   f"{v['max_abs_logit']:.2f}), argmax equal {v['argmax_equal']}, greedy equal "
                                   f"{v['greedy_merged'] == v['greedy_gguf']}")
                report["verification"] = verification
                report["verification_llama_cpp"] = _verify_llama_cpp(src_model, types, files, mmproj,
                                                                     llama_cpp_available, summary, log)
        if not merge:
            report.setdefault("base_model", str(src_model))
            report.setdefault("class", read_json(src_model / "config.json").get("architectures", ["?"])[0])
        report["source_adapter"] = adapter
        write_json(result_dir / MARKER, report)
        with atomic_write(result_dir / "README.md") as fh:
            fh.write(export_card(result_dir, name=out_p.name, adapter=adapter, model_dir=src_model, report=report))
        replace_path(result_dir, out_p)
    except OSError as exc:
        if exc.errno == 28:  # ENOSPC
            raise KormedError("the disk filled up while writing the export; nothing was left under --out",
                              path=out_p.parent) from None
        raise KormedError(f"cannot write the export: {exc.strerror or exc}", path=out_p) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    if merge:
        summary.insert(0, f"merged model ({report.get('class')}, {report.get('dtype')}) in {out_p}")
    for f in files + ([mmproj] if mmproj else []):
        summary.append(f"GGUF {out_p / f.name} ({(out_p / f.name).stat().st_size / 2**20:.1f} MiB)")
    if gguf:
        summary.append(f"Ollama: cd {out_p} && ollama create NAME -f Modelfile")
        if mmproj is not None:
            summary.append(f"llama.cpp with images: llama-mtmd-cli -m {out_p / files[0].name} --mmproj "
                           f"{out_p / mmproj.name} --image IMAGE -p PROMPT")
    summary.append(f"model card: {out_p / 'README.md'}")
    return {"summary": summary, "files": [str(out_p / f.name) for f in files], "report": report}
