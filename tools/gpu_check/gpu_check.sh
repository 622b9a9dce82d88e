#!/usr/bin/env bash
# `make gpu-check`: the GPU check on a machine with an NVIDIA GPU and a CUDA torch (python3), without a
# network: installs what the interpreter lacks from the carried wheel folder, then runs
# tools/gpu_check/run.py. Report in $OUT (the device tool's output folder), else build/gpu-check.
# Extra arguments go to run.py (--budget-s, --swaps, --qwen 7b ...).
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${PYTHON:-python3}
out=${OUT:-build/gpu-check}
site=${GPU_CHECK_SITE:-/tmp/roundhouse-gpu-check-site}
t0=$(date +%s)
"$py" tools/gpu_check/install_wheels.py "${GPU_CHECK_WHEELS:-build/gpu-check-wheels}" "$site"
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
echo "set-up: $(( $(date +%s) - t0 )) s"
exec "$py" tools/gpu_check/run.py --out "$out" "$@"
