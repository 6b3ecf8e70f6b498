#!/usr/bin/env bash
# MedGemma-4B's real shape end to end on CPU, each command's peak memory (docs/commands/rehearse-4b.md).
# KORMED_REHEARSE_SIZE=tiny runs the same chain at a tiny size; arguments go to scripts/rehearse_4b.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" scripts/rehearse_4b.py "$@"
