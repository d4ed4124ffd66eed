#!/usr/bin/env bash
# On a machine with an NVIDIA GPU and nvcc: build vgpa._C for this GPU's architecture, run the
# whole test suite (the `gpu`-marked tests included) and the full bench. Logs go to DIR
# (default gpu-check/), bench results to bench/results/<device>/.
# Needs torch, triton, pybind11, setuptools>=77 and pytest installed (no build isolation).
set -uo pipefail
out=${1:-gpu-check}
mkdir -p "$out"
arch=$(python3 -c "import torch; major, minor = torch.cuda.get_device_capability(); print(f'{major}{minor}')") || exit 1
export PYTHONUNBUFFERED=1

echo "== build for sm_$arch"
if ! VGPA_BUILD_CUDA=1 VGPA_CUDA_ARCHS="$arch" python3 -m pip install --no-build-isolation --no-deps -e . \
    > "$out/build.log" 2>&1; then
  tail -n 60 "$out/build.log"
  exit 1
fi
vgpa info | tee "$out/info.txt"

echo "== tests"
python3 -m pytest -q -rs 2>&1 | tee "$out/tests.log"
tests_status=${PIPESTATUS[0]}

echo "== bench"
vgpa bench --full --out bench/results 2>&1 | tee "$out/bench.log"
bench_status=${PIPESTATUS[0]}

echo "tests exit $tests_status, bench exit $bench_status"
[ "$tests_status" -eq 0 ] && [ "$bench_status" -eq 0 ]
