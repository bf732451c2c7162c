#!/usr/bin/env bash
# Install qmap into ./.venv (CPU torch, ONNX, Ray for `qmap sweep`), plus the test/RTL extras and Icarus Verilog
# when given --test.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="onnx,ray"
if [[ "${1:-}" == "--test" ]]; then
  extras="test,rtl,onnx,ray"
  if ! command -v iverilog >/dev/null 2>&1; then
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq iverilog >/dev/null
  fi
fi
[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch==2.13.0 resolves to the local CPU wheel here; an unpinned torch would pull the CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0" -e ".[${extras}]"
