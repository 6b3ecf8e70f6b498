"""`kormed env`: what a bug report needs (versions, device, CPU features, OS, memory), as text or JSON.

Nothing is imported at module level but the standard library and typer: `kormed --help` stays torch-free.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
from pathlib import Path
from typing import Any

import typer

# Distributions whose versions a report gives: the stack kormed runs on, then the optional extras.
CORE_PACKAGES = ("torch", "transformers", "peft", "datasets", "accelerate", "tokenizers", "safetensors", "numpy")
OPTIONAL_PACKAGES = ("trl", "liger-kernel", "bitsandbytes", "llama-cpp-python", "lm-eval", "vllm", "gguf")
# CPU feature flags that decide kormed's speed on a CPU (bf16 matmuls: kormed.precision)
CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "bf16")
NOT_INSTALLED = "not installed"


def kormed_version() -> str:
    """The installed kormed distribution's version (importlib.metadata), else the package's own."""
    try:
        return importlib.metadata.version("kormed")
    except importlib.metadata.PackageNotFoundError:
        from kormed import __version__

        return __version__


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return NOT_INSTALLED


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name from /proc/cpuinfo (x86 `model name`; Arm's `Hardware`/`CPU part`), else platform's."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            cpuinfo = ""
    for key in ("model name", "hardware", "cpu model"):
        for line in cpuinfo.splitlines():
            name, sep, value = line.partition(":")
            if sep and name.strip().lower() == key and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def total_ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def device_info() -> dict[str, Any]:
    """CUDA devices (name, count, CUDA version) when torch sees any, else the CPU."""
    import torch  # here, not at the top: `kormed --help` imports this module

    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        names = [torch.cuda.get_device_name(i) for i in range(count)]
        return {"device": "cuda", "cuda_devices": names, "cuda_device_count": count, "cuda_version": torch.version.cuda}
    return {"device": "cpu", "cuda_devices": [], "cuda_device_count": 0, "cuda_version": torch.version.cuda}


def environment() -> dict[str, Any]:
    """Every field of the report, as `kormed env --json` prints it."""
    from kormed.precision import cpu_flags, cpu_has_native_bf16

    flags = cpu_flags()
    ram = total_ram_bytes()
    return {
        "kormed": kormed_version(),
        "python": platform.python_version(),
        "packages": {name: package_version(name) for name in CORE_PACKAGES},
        "optional_packages": {name: package_version(name) for name in OPTIONAL_PACKAGES},
        **device_info(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_features": {flag: flag in flags for flag in CPU_FEATURES},
        "cpu_native_bf16": cpu_has_native_bf16(),
        "os": platform.platform(),
        "ram_gib": round(ram / 2**30, 1) if ram else None,
    }


def environment_text(env: dict[str, Any]) -> str:
    """The report as `name: value` lines, to paste into an issue."""
    lines = [f"kormed: {env['kormed']}", f"python: {env['python']}"]
    lines += [f"{name}: {version}" for name, version in {**env["packages"], **env["optional_packages"]}.items()]
    if env.get("cuda_device_count"):
        lines.append(f"device: cuda x{env['cuda_device_count']} ({', '.join(env['cuda_devices'])}; "
                     f"CUDA {env['cuda_version']})")
    else:
        lines.append(f"device: {env['device']}")
    features = [f for f, present in env["cpu_features"].items() if present]
    lines += [
        f"cpu: {env['cpu']} ({env['cpu_count']} logical cores)",
        f"cpu features: {', '.join(features) or 'none of ' + ', '.join(env['cpu_features'])}",
        "cpu native bf16: " + ("yes (--dtype bfloat16 multiplies in bf16)" if env["cpu_native_bf16"]
                               else "no (--dtype bfloat16 stores bf16 and multiplies in fp32)"),
        f"os: {env['os']}",
        f"ram: {env['ram_gib']} GiB" if env["ram_gib"] is not None else "ram: unknown",
    ]
    return "\n".join(lines)


def register(app: typer.Typer, subapps: dict[str, typer.Typer]) -> None:
    """Register `kormed env` on the root app."""

    @app.command("env")
    def env_command(
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    ) -> None:
        """Print what a bug report needs: versions, device, CPU model and features, OS, memory."""
        env = environment()
        typer.echo(json.dumps(env, indent=2, ensure_ascii=False) if as_json else environment_text(env))
