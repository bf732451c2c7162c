#!/usr/bin/env bash
# Install qmap into ./.venv (CPU torch), plus the test/RTL extras, Icarus Verilog and Verilator (the fast
# simulator of the whole-network RTL run, hardware.rtl_network) when given --test.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="onnx"
if [[ "${1:-}" == "--test" ]]; then
  extras="test,rtl,onnx"
  missing=""
  command -v iverilog >/dev/null 2>&1 || missing="iverilog"
  command -v verilator >/dev/null 2>&1 || missing="$missing verilator"
  if [[ -n "$missing" ]]; then
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    # shellcheck disable=SC2086
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq $missing >/dev/null
  fi
fi
[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch==2.13.0 resolves to the local CPU wheel here; an unpinned torch would pull the CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0" -e ".[${extras}]"
