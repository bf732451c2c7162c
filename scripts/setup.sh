#!/usr/bin/env bash
# Install qmap into ./.venv (CPU torch, ONNX, Ray for `qmap sweep`).
#   --rtl   also the RTL check: cocotb (pip extra), Icarus Verilog and Verilator (apt; Verilator is the fast
#           simulator of the whole-network RTL run, hardware.rtl_network) — what scripts/main.sh uses
#   --test  everything the test suite needs: --rtl, the test extras and Chromium (apt; the report's browser test)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="onnx,ray"
apt_packages=()
case "${1:-}" in
  --rtl) extras="rtl,onnx,ray" ;;
  --test) extras="test,rtl,onnx,ray" ;;
  "") ;;
  *) echo "usage: bash scripts/setup.sh [--rtl|--test]" >&2; exit 2 ;;
esac
if [[ "$extras" == *rtl* ]]; then
  command -v iverilog >/dev/null 2>&1 || apt_packages+=(iverilog)
  command -v verilator >/dev/null 2>&1 || apt_packages+=(verilator)
fi
if [[ "${1:-}" == "--test" ]] && ! command -v chromium >/dev/null 2>&1; then apt_packages+=(chromium); fi
if (( ${#apt_packages[@]} )); then
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${apt_packages[@]}" >/dev/null; }; then
    echo "setup: could not install ${apt_packages[*]} with apt-get; the RTL check / browser test will be" \
         "reported as SKIPPED with the reason" >&2
  fi
fi
[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch==2.13.0 resolves to the local CPU wheel here; an unpinned torch would pull the CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0" -e ".[${extras}]"
