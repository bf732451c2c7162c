#!/usr/bin/env bash
# The main job: install (with the RTL simulator), then run the seed's flow (vgg16_bn_sq8, alpha-scaling, W4A4, 8x8 array) end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --rtl   # qmap + cocotb + Icarus Verilog, so the run checks the RTL
export QMAP_DATA="${QMAP_DATA:-$(cd .. && pwd)/shared/data}"
.venv/bin/qmap run configs/seed_alpha_w4a4.yaml --overwrite "$@"
