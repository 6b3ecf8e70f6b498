#!/usr/bin/env bash
# The test suite: install what is needed, lint, run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Headless Chromium lets the report test render the HTML page (best effort: the test skips cleanly without it).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  { timeout 300 apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq chromium; } \
    >/dev/null 2>&1 || echo "note: chromium not installed; the report rendering test will be skipped"
fi
. .venv/bin/activate
ruff check src tests
python -m pytest "$@"
