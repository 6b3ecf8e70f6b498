#!/usr/bin/env bash
# Create .venv (if missing) and install kormed with its dependencies.
# torch is pinned to the CPU build on machines without CUDA, so CI never pulls a multi-GB CUDA wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.kormed-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  python -m pip install -q --upgrade pip
  if ! python -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1; then
      python -m pip install -q "torch>=2.5,<3"
    else
      python -m pip install -q "torch==2.13.0"
    fi
  fi
  python -m pip install -q -e ".[dev]"
  touch "$stamp"
fi
