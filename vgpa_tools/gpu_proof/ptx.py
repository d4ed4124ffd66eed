"""Reading compiled GPU code: ptxas resource reports and the floating-point instructions of PTX.

Shared by the CUDA and the Triton checks, so both backends are held to the same rules.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import asdict, dataclass

# ---------------------------------------------------------------------------------------------
# Resources (ptxas -v)


@dataclass
class KernelResources:
    """What ptxas reports for one compiled kernel on one architecture."""

    kernel: str          # mangled (CUDA) or plain (Triton) symbol
    arch: str            # "sm_80", "sm_90", ...
    registers: int
    stack_frame: int     # bytes of local memory per thread (0 unless something spills or an array lives there)
    spill_stores: int
    spill_loads: int
    shared: int          # static shared memory, bytes
    barriers: int

    def as_row(self) -> dict:
        return asdict(self)

    def problems(self) -> list[str]:
        """Why this kernel breaks the budget: any spill or local-memory stack frame."""
        found = []
        if self.spill_stores or self.spill_loads:
            found.append(f"spills {self.spill_stores} bytes (stores) / {self.spill_loads} bytes (loads)")
        if self.stack_frame:
            found.append(f"uses a {self.stack_frame}-byte local-memory stack frame")
        return found


_COMPILING = re.compile(r"Compiling entry function '([^']+)' for '(sm_\w+)'")
_PROPERTIES = re.compile(r"Function properties for (\S+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_BARRIERS = re.compile(r"used (\d+) barriers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas_log(text: str) -> list[KernelResources]:
    """Every entry function of a ``ptxas -v`` log (nvcc -Xptxas -v prints the same)."""
    kernels: list[KernelResources] = []
    current = None
    for line in text.splitlines():
        m = _COMPILING.search(line)
        if m:
            current = KernelResources(m.group(1), m.group(2), 0, 0, 0, 0, 0, 0)
            kernels.append(current)
            continue
        if current is None:
            continue
        m = _PROPERTIES.search(line)
        if m:
            # A device function called by the entry reports its own frame after the entry's
            # figures: that frame is not the entry's.
            if m.group(1) != current.kernel:
                current = None
            continue
        m = _FRAME.search(line)
        if m:
            current.stack_frame, current.spill_stores, current.spill_loads = map(int, m.groups())
            continue
        m = _USED.search(line)
        if m:
            current.registers = int(m.group(1))
            b = _BARRIERS.search(line)
            current.barriers = int(b.group(1)) if b else 0
            s = _SMEM.search(line)
            current.shared = int(s.group(1)) if s else 0
    return kernels


def demangle(names: list[str]) -> dict[str, str]:
    """Itanium-demangled names (unchanged where c++filt is absent or the name is not mangled)."""
    tool = shutil.which("c++filt")
    if not tool or not names:
        return {n: n for n in names}
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return dict(zip(names, out.splitlines()))


# ---------------------------------------------------------------------------------------------
# Floating-point instructions of the decision paths

# A decision (validity, the pixel a point rounds to, a z-buffer winner) must come out on the GPU
# exactly as on the CPU twin, which rounds every operation on its own. So a decision kernel may
# hold no contracted multiply-add (fma/mad on floats), no approximate division, square root or
# reciprocal, and no flush-to-zero.
FORBIDDEN_FLOAT_OPS = {
    "contracted multiply-add": re.compile(r"^\s*(?:@!?%p\d+\s+)?(?:fma|mad)\.[\w.]*f(?:32|64)\b"),
    "approximate division": re.compile(r"^\s*(?:@!?%p\d+\s+)?div\.(?:approx|full)\.[\w.]*f32\b"),
    "approximate square root": re.compile(r"^\s*(?:@!?%p\d+\s+)?sqrt\.approx\.[\w.]*f(?:32|64)\b"),
    "approximate reciprocal": re.compile(r"^\s*(?:@!?%p\d+\s+)?(?:rcp|rsqrt)\.approx\.[\w.]*f(?:32|64)\b"),
    "approximate transcendental": re.compile(r"^\s*(?:@!?%p\d+\s+)?(?:lg2|ex2|sin|cos|tanh)\.approx\b"),
    "flush to zero": re.compile(r"^\s*(?:@!?%p\d+\s+)?[a-z0-9]+(?:\.\w+)*\.ftz\b"),
}


def ptx_functions(ptx: str) -> dict[str, str]:
    """{name: body} for every .entry and .func defined in a PTX module."""
    functions = {}
    for m in re.finditer(r"^\s*(?:\.visible\s+|\.weak\s+)?\.(?:entry|func)\s+(?:\([^)]*\)\s*)?([\w$]+)", ptx, re.M):
        start = ptx.find("{", m.end())
        if start < 0:
            continue
        # A declaration (';' before the body) has no body.
        semi = ptx.find(";", m.end())
        if 0 <= semi < start and "\n" in ptx[m.end():semi] and ptx[m.end():semi].count("(") == ptx[m.end():semi].count(")"):
            if ptx[semi + 1:start].strip().startswith("."):
                continue
        depth, i = 0, start
        while i < len(ptx):
            if ptx[i] == "{":
                depth += 1
            elif ptx[i] == "}":
                depth -= 1
                if depth == 0:
                    break
            i += 1
        functions[m.group(1)] = ptx[start:i + 1]
    return functions


def forbidden_float_ops(body: str, allowed: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(rule, instruction) for every instruction of ``body`` that a decision path may not hold;
    ``allowed`` names rules exempted for this function."""
    found = []
    for line in body.splitlines():
        line = line.split("//")[0]
        for rule, pattern in FORBIDDEN_FLOAT_OPS.items():
            if rule not in allowed and pattern.search(line):
                found.append((rule, line.strip()))
    return found


# Atomics, and those that order memory: gradient scatters only add, and nothing reads the sums
# before the launch ends, so they must be relaxed (an acquire-release atomic serialises each
# warp's scatter).
ATOMIC = re.compile(r"^\s*(?:@!?%p\d+\s+)?(?:atom|red)\.")
ORDERED_ATOMIC = re.compile(r"^\s*(?:@!?%p\d+\s+)?(?:atom|red)\.[\w.]*\b(?:acq_rel|acquire|release|sc)\b")
