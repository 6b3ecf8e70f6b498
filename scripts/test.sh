#!/usr/bin/env bash
# The test suite: install what is needed, lint, run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check src tests
python -m pytest "$@"
