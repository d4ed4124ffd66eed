"""docs/gpu_resources_triton.csv: per Triton kernel, dtypes and arch, the registers, spills, stack
frame and shared memory that ptxas reports over the kernel's variants, and the warps that fit on
one SM (docs/design.md 5)."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from . import resource_table
from .ptx import KernelResources

REPO = Path(__file__).resolve().parents[2]
TABLE = REPO / "docs" / "gpu_resources_triton.csv"


TABLE_COLUMNS = ["module", "kernel", "dtypes", "arch", "variants", "registers", "registers_min", "spill_stores",
                 "spill_loads", "stack_frame", "shared", "threads_per_block", "resident_warps", "max_warps", "triton"]


def resource_rows(proof) -> list[dict]:
    """One row per (kernel, dtypes, arch) of the compiled variants of ``proof`` (triton_kernels.Proof):
    the largest figures over its variants (the smallest
    register count too); resident warps per SM for the variant with the most registers."""
    from .cuda_kernels import SM_LIMITS, resident_warps

    groups = defaultdict(list)
    for (v, arch), r in proof.results.items():
        for k in r["resources"]:
            groups[(v.module, v.name, v.dtypes(), arch)].append((KernelResources(**k), r["num_warps"]))
    rows = []
    for (module, name, dtypes, arch), found in sorted(groups.items()):
        worst, warps = max(found, key=lambda item: item[0].registers)
        threads = 32 * warps
        # the sm_90 build targets sm_90a (ptxas reports that); the limits are sm_90's
        limits_arch = arch if arch in SM_LIMITS else re.sub(r"a$", "", arch)
        resident = resident_warps(replace(worst, arch=limits_arch), threads)
        rows.append({
            "module": module.rsplit(".", 1)[1], "kernel": name, "dtypes": dtypes, "arch": arch,
            "variants": len(found), "registers": worst.registers,
            "registers_min": min(k.registers for k, _ in found),
            "spill_stores": max(k.spill_stores for k, _ in found), "spill_loads": max(k.spill_loads for k, _ in found),
            "stack_frame": max(k.stack_frame for k, _ in found), "shared": max(k.shared for k, _ in found),
            "threads_per_block": threads, "resident_warps": "" if resident is None else resident,
            "max_warps": SM_LIMITS[limits_arch].warps if limits_arch in SM_LIMITS else "",
            "triton": proof.triton_version,
        })
    return rows


def table_text(rows: list[dict]) -> str:
    return resource_table.csv_text(TABLE_COLUMNS, rows)


def table_diff(committed: str, current: str) -> str:
    return resource_table.diff(TABLE, committed, current)

