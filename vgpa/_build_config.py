"""Build parameters of vgpa's compiled code, in one place.

Read by setup.py (loaded by path: it must not import torch or the rest of vgpa), by the CUDA
emulation build and by the GPU-proof checks (tools/gpu_proof), so that the PTX and the resource
figures the checks read come from exactly the flags the wheel is built with.
"""

from __future__ import annotations

import os

DEFAULT_CUDA_ARCHS = "80;90"  # A100 and H100/H200

# Host C++ flags of every compiled module. No contraction of a * b + c into an FMA: the C++
# twin must round every operation as the CUDA geometry kernels do (see NVCC_SOURCE_FLAGS).
HOST_CXX_FLAGS = ["-O3", "-fopenmp", "-ffp-contract=off"]

# Host C++ flags of the CUDA emulation module (vgpa._C_cuda_emu, a test instrument): no OpenMP
# (the emulation schedules the GPU threads itself), the same rounding rules.
EMULATION_CXX_FLAGS = ["-O2", "-ffp-contract=off", "-Wno-unknown-pragmas"]

# .cu files that talk to the CUDA runtime rather than hold kernels: not part of the emulation.
CUDA_HOST_ONLY_SOURCES = ("cuda_runtime_info.cu",)

# nvcc flags of every .cu file (the arch flags come from gencode_flags).
NVCC_FLAGS = ["-O3", "-std=c++17", "-lineinfo", "--expt-relaxed-constexpr", "-Xcompiler", "-fPIC",
              "-DVGPA_WITH_CUDA"]

# Sources whose kernels take discrete decisions (validity, the pixel a point lands on, the
# z-buffer winner, the inlier test): compiled without FMA contraction, so every multiply and add
# is rounded on its own, as on the CPU, and the GPU decides exactly as the C++ twin does.
# Division and square root are IEEE without --use_fast_math, which vgpa never uses.
DECISION_SOURCES = ("epipolar.cu", "normal_stability.cu", "render_points.cu", "reprojection_error.cu")
NVCC_SOURCE_FLAGS = {name: ["--fmad=false"] for name in DECISION_SOURCES}


def nvcc_flags_for(source: str) -> list[str]:
    """The nvcc flags (without arch flags) that compile ``source`` (a path or a file name)."""
    return NVCC_FLAGS + NVCC_SOURCE_FLAGS.get(os.path.basename(source), [])


def parse_cuda_archs(text: str) -> list[str]:
    """'80;90a' or '8.0 9.0+PTX' -> ['80', '90a'] (order kept, duplicates dropped)."""
    archs = []
    for item in text.replace(",", ";").replace(" ", ";").split(";"):
        item = item.strip().lower().replace("+ptx", "").replace("sm_", "").replace(".", "")
        if not item:
            continue
        if not (item.rstrip("af")).isdigit():
            raise SystemExit(f"VGPA_CUDA_ARCHS: cannot read architecture {item!r}")
        if item not in archs:
            archs.append(item)
    if not archs:
        raise SystemExit("VGPA_CUDA_ARCHS is empty")
    return archs


def gencode_flags(archs: list[str]) -> list[str]:
    """SASS for every arch and PTX for the newest, so newer GPUs can JIT it."""
    flags = [f"-gencode=arch=compute_{arch},code=sm_{arch}" for arch in archs]
    newest = max(archs, key=lambda a: int(a.rstrip("af")))
    flags.append(f"-gencode=arch=compute_{newest},code=compute_{newest}")
    return flags
