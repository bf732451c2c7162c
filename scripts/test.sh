#!/usr/bin/env bash
# Install everything the tests need (pip extras + Icarus Verilog) and run lint + the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
export QMAP_DATA="${QMAP_DATA:-$(cd .. && pwd)/shared/data}"
.venv/bin/ruff check src tests benchmarks
.venv/bin/python -m pytest -q "$@"
