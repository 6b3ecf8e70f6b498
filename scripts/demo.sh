#!/usr/bin/env bash
# The demo: install what is needed, then run kormed on its embedded defaults (bundled sample data, Gemma 3 270M).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec kormed demo "$@"
