#!/usr/bin/env bash
# Download the wheels the device image lacks (tools/gpu_check/wheels.txt) for CPython 3.12 on x86-64
# Linux into build/gpu-check-wheels (or $1), and check they fit what one device call carries.
# Needs PyPI; run it on the machine that starts the device call, then carry the folder.
set -euo pipefail
cd "$(dirname "$0")/../.."
dest=${1:-build/gpu-check-wheels}
limit_mib=${GPU_CHECK_WHEELS_MAX_MIB:-60}  # 64 MiB per call, the repository's own files included
rm -rf "$dest" && mkdir -p "$dest"
platforms=()
for p in manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_24_x86_64 manylinux_2_27_x86_64 manylinux_2_28_x86_64 \
         manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_35_x86_64 manylinux1_x86_64 manylinux_2_5_x86_64; do
  platforms+=(--platform "$p")
done
"${PYTHON:-python3}" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$dest" -r tools/gpu_check/wheels.txt
bytes=$(du -cb "$dest"/*.whl | tail -1 | cut -f1)
count=$(ls "$dest"/*.whl | wc -l)
echo "gpu-check wheels: $count files, $((bytes / 1048576)) MiB ($bytes bytes) in $dest"
if [ "$bytes" -gt $((limit_mib * 1048576)) ]; then
  echo "over the $limit_mib MiB a device call can carry beside the repository" >&2
  exit 1
fi
