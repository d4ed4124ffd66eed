"""The CUDA kernels' compiled code, proven without a GPU (docs/design.md 5).

Every kernel source csrc/*.cu is compiled by nvcc for the table's architectures (RESOURCE_TABLE_CUDA_ARCHS),
with exactly the flags the wheel is built with (vgpa/_build_config.py). One device-only nvcc run
per source (``-fatbin -Xptxas -v --keep``, one ptxas per architecture) gives both ptxas' resource
report and the PTX it assembled (the same text ``nvcc -ptx`` writes). From these:

- the resource budget: registers per thread, spills, local-memory stack frame and shared memory
  of every kernel and dtype, and the warps that can be resident per SM, committed as
  docs/gpu_resources_cuda.csv; no kernel or device function may spill or use a stack frame;
- the decision paths: the PTX of the decision sources (every kernel source but NO_DECISION_SOURCES) holds no contracted
  multiply-add, no approximate division, square root, reciprocal or transcendental and no
  flush-to-zero (vgpa_tools/gpu_proof/ptx.py), so the GPU takes every discrete decision as the C++
  twin does.

``python -m vgpa_tools.gpu_proof.cuda_kernels`` rewrites the table and reports both checks;
``--check`` only compares the committed table with the compiled code.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from ..build_config import BUILD
from . import resource_table
from .ptx import KernelResources, demangle, forbidden_float_ops, parse_ptxas_log, ptx_functions

REPO = Path(__file__).resolve().parents[2]
CSRC = REPO / "csrc"
TABLE = REPO / "docs" / "gpu_resources_cuda.csv"

# Two compiler processes: the CI machines have two cores.
COMPILE_WORKERS = 2

# Device functions the decision-path check does not read, by demangled name without template
# arguments. out_of_line_log is libdevice's log (fma.rn, rcp.approx.ftz.f64), kept out of line
# for this (csrc/reprojection_error.h): it only makes the "log" error once validity and
# occlusion are decided; only that error's finiteness is tested after it, and the log of the
# positive finite depths it gets is finite.
EXEMPT_FUNCTIONS = ("vgpa::out_of_line_log",)



def table_archs() -> list[str]:
    """The architectures the committed table covers ("80", "90", as the Triton table)."""
    return BUILD.parse_cuda_archs(BUILD.RESOURCE_TABLE_CUDA_ARCHS)


def cuda_sources() -> list[Path]:
    return sorted(CSRC.glob("*.cu"))


def decision_sources() -> list[Path]:
    """Every kernel source but those NO_DECISION_SOURCES exempts, with its reason."""
    return [path for path in cuda_sources() if BUILD.is_decision_source(path.name)]


def find_nvcc() -> str | None:
    """The nvcc on PATH, else the one of CUDA_HOME or /usr/local/cuda; None when there is none."""
    found = shutil.which("nvcc")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and os.access(os.path.join(home, "bin", "nvcc"), os.X_OK):
            return os.path.join(home, "bin", "nvcc")
    return None


def nvcc_version(nvcc: str) -> str:
    """'13.0.88' from ``nvcc --version``."""
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"\bV(\d+\.\d+\.\d+)", out)
    return m.group(1) if m else out.strip().splitlines()[-1]


# ---------------------------------------------------------------------------------------------
# Compiling


@dataclass(frozen=True)
class Compilation:
    """One nvcc run: ``source`` for the GPU architectures ``archs`` ("80", ...) with ``flags``
    (nvcc flags without the arch flags)."""

    source: Path
    archs: tuple[str, ...]
    flags: tuple[str, ...]
    assemble: bool = True  # also run ptxas for its resource report; False: PTX only (one arch)

    @classmethod
    def as_built(cls, source: Path, archs: list[str]) -> "Compilation":
        return cls(source, tuple(archs), tuple(BUILD.nvcc_flags_for(str(source))))


@dataclass
class CompiledSource:
    """What one architecture's compilation of one source gave."""

    source: str                       # file name, e.g. "reprojection_error.cu"
    arch: str                         # "sm_80"
    ptx: str
    ptxas_log: str = ""               # ptxas' report for this arch
    kernels: list[KernelResources] = field(default_factory=list)

    @cached_property
    def functions(self) -> dict[str, tuple[str, str]]:
        """{mangled name: (demangled name, body)} of every .entry and .func of the PTX."""
        bodies = ptx_functions(self.ptx)
        names = demangle(sorted(bodies))
        return {mangled: (names[mangled], body) for mangled, body in bodies.items()}


class CompileError(RuntimeError):
    pass


def _sass_flags(archs: tuple[str, ...]) -> list[str]:
    """The build's -gencode flags that make SASS for ``archs`` (gencode_flags also embeds the
    newest arch's PTX, which ptxas does not assemble)."""
    return [flag for flag in BUILD.gencode_flags(list(archs)) if "code=sm_" in flag]


def compile_one(job: Compilation, nvcc: str) -> list[CompiledSource]:
    """Compiles ``job`` once for all its archs (device code only: -fatbin, or -ptx); one result
    per arch, with the PTX that ptxas assembled (kept with --keep)."""
    with tempfile.TemporaryDirectory(prefix="vgpa-nvcc-") as tmp:
        cmd = [nvcc, *job.flags, f"-I{CSRC}", *_sass_flags(job.archs)]
        if job.assemble:
            cmd += ["-fatbin", "--threads", str(len(job.archs)), "-Xptxas", "-v", "--keep", "--keep-dir", tmp,
                    "-o", os.path.join(tmp, "out.fatbin")]
        else:
            if len(job.archs) != 1:
                raise ValueError("a PTX-only compilation takes one arch")
            cmd += ["-ptx", "-o", os.path.join(tmp, f"{job.source.stem}.ptx")]
        cmd.append(str(job.source))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise CompileError(f"nvcc failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-4000:]}")
        ptx_files = sorted(Path(tmp).glob("*.ptx"))
        results = []
        for arch in job.archs:
            # One arch: <stem>.ptx; several: <stem>.compute_<arch>.ptx.
            mine = [p for p in ptx_files if len(job.archs) == 1 or f".compute_{arch}." in p.name]
            if len(mine) != 1:
                raise CompileError(f"expected one PTX file for sm_{arch}, found {[p.name for p in ptx_files]}")
            results.append(CompiledSource(job.source.name, f"sm_{arch}", mine[0].read_text()))
    if job.assemble:
        reports = _ptxas_report_per_arch(proc.stdout + proc.stderr)
        for r in results:
            r.ptxas_log = reports.get(r.arch, "")
            r.kernels = parse_ptxas_log(r.ptxas_log)
    return results


def _ptxas_report_per_arch(log: str) -> dict[str, str]:
    """{arch: its ptxas run's report} from the log of a several-arch nvcc run, where every ptxas
    run's report opens with 'N bytes gmem' and nvcc prints each whole."""
    reports = {}
    for report in re.split(r"(?m)^(?=ptxas info\s*: \d+ bytes gmem)", log):
        archs = set(re.findall(r"Compiling entry function '[^']+' for '(sm_\w+)'", report))
        if len(archs) > 1 or archs & reports.keys():
            raise CompileError(f"ptxas reports of several architectures are interleaved: {sorted(archs)}")
        if archs:
            reports[archs.pop()] = report
    return reports


def compile_all(jobs: list[Compilation], nvcc: str | None = None) -> list[list[CompiledSource]]:
    """Runs the compilations COMPILE_WORKERS at a time, largest sources first; one list of
    results (one per arch) per job, in the order of ``jobs``."""
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise CompileError("nvcc not found (PATH, CUDA_HOME, /usr/local/cuda)")
    order = sorted(range(len(jobs)), key=lambda k: -jobs[k].source.stat().st_size)
    with ThreadPoolExecutor(COMPILE_WORKERS) as pool:
        futures = {k: pool.submit(compile_one, jobs[k], nvcc) for k in order}
        return [futures[k].result() for k in range(len(jobs))]


def build_compilations() -> list[Compilation]:
    """Every CUDA source that defines kernels (not the host-only ones), for every table
    architecture, with the build's flags."""
    return [Compilation.as_built(source, table_archs()) for source in cuda_sources()
            if source.name not in BUILD.CUDA_HOST_ONLY_SOURCES]


# ---------------------------------------------------------------------------------------------
# Resource budget

@dataclass(frozen=True)
class SmLimits:
    """Per-SM limits that bound resident warps (CUDA C++ Programming Guide, compute
    capabilities table)."""

    warps: int
    blocks: int
    registers: int
    shared: int                # bytes a kernel's blocks can share on one SM
    register_unit: int = 256   # registers are given to a warp in units of this many
    shared_per_block_reserved: int = 1024  # the runtime keeps this much per block


SM_LIMITS = {
    "sm_80": SmLimits(warps=64, blocks=32, registers=65536, shared=164 * 1024),
    "sm_90": SmLimits(warps=64, blocks=32, registers=65536, shared=228 * 1024),
}


def threads_per_block(entry_body_header: str) -> int | None:
    """The block size a kernel declares with __launch_bounds__ (.maxntid in its PTX)."""
    m = re.search(r"\.maxntid\s+(\d+)\s*,\s*(\d+)\s*,\s*(\d+)", entry_body_header)
    return int(m.group(1)) * int(m.group(2)) * int(m.group(3)) if m else None


def resident_warps(k: KernelResources, threads: int | None) -> int | None:
    """Warps of this kernel that fit on one SM at once, from its registers and shared memory."""
    limits = SM_LIMITS.get(k.arch)
    if limits is None or not threads:
        return None
    warps_per_block = -(-threads // 32)
    unit = limits.register_unit
    registers_per_warp = -(-max(k.registers, 1) * 32 // unit) * unit
    blocks = min(limits.blocks, limits.warps // warps_per_block,
                 limits.registers // registers_per_warp // warps_per_block,
                 limits.shared // (k.shared + limits.shared_per_block_reserved))
    return blocks * warps_per_block


def _entry_headers(ptx: str) -> dict[str, str]:
    """{entry name: its header up to the opening brace} (where .maxntid is declared)."""
    headers = {}
    for m in re.finditer(r"^\s*(?:\.visible\s+|\.weak\s+)?\.entry\s+([\w$]+)", ptx, re.M):
        headers[m.group(1)] = ptx[m.end():ptx.find("{", m.end())]
    return headers


def _strip_trailing_group(name: str, opening: str, closing: str) -> str:
    """name without its trailing bracketed group ('f<a<b>>' -> 'f'), when it ends with one."""
    if not name.endswith(closing):
        return name
    depth = 0
    for i in range(len(name) - 1, -1, -1):
        depth += (name[i] == closing) - (name[i] == opening)
        if depth == 0:
            return name[:i]
    return name


def _drop_return_type(name: str) -> str:
    """'float vgpa::f<float>' -> 'vgpa::f<float>' (spaces inside brackets kept)."""
    depth = 0
    for i in range(len(name) - 1, -1, -1):
        depth += (name[i] in ")>") - (name[i] in "(<")
        if name[i] == " " and depth == 0:
            return name[i + 1:]
    return name


def kernel_label(demangled: str) -> str:
    """'void vgpa::(anonymous namespace)::k<vgpa::Half>(vgpa::Args)' -> 'k<Half>'."""
    name = _drop_return_type(_strip_trailing_group(demangled, "(", ")"))
    return name.replace("(anonymous namespace)::", "").replace("vgpa::", "")


def function_name(demangled: str) -> str:
    """'float vgpa::out_of_line_log<float>(float)' -> 'vgpa::out_of_line_log'."""
    name = _strip_trailing_group(demangled, "(", ")")
    return _strip_trailing_group(_drop_return_type(name), "<", ">")


TABLE_COLUMNS = ["source", "kernel", "arch", "registers", "spill_stores", "spill_loads", "stack_frame",
                 "shared", "threads_per_block", "resident_warps", "max_warps", "nvcc"]


def resource_rows(compiled: list[CompiledSource], version: str) -> list[dict]:
    """One row per (kernel, arch), sorted by source, kernel and arch."""
    names = demangle(sorted({k.kernel for c in compiled for k in c.kernels}))
    rows = []
    for c in compiled:
        headers = _entry_headers(c.ptx)
        for k in c.kernels:
            threads = threads_per_block(headers.get(k.kernel, ""))
            warps = resident_warps(k, threads)
            limits = SM_LIMITS.get(k.arch)
            rows.append({
                "source": c.source, "kernel": kernel_label(names[k.kernel]), "arch": k.arch,
                "registers": k.registers, "spill_stores": k.spill_stores, "spill_loads": k.spill_loads,
                "stack_frame": k.stack_frame, "shared": k.shared,
                "threads_per_block": threads or "", "resident_warps": "" if warps is None else warps,
                "max_warps": limits.warps if limits else "", "nvcc": version,
            })
    rows.sort(key=lambda r: (r["source"], r["kernel"], r["arch"]))
    return rows


def table_text(rows: list[dict]) -> str:
    return resource_table.csv_text(TABLE_COLUMNS, rows)


_FUNCTION_FRAME = re.compile(r"Function properties for (\S+)\s*\n\s*(\d+) bytes stack frame, (\d+) bytes spill "
                             r"stores, (\d+) bytes spill loads")


def budget_problems(compiled: list[CompiledSource]) -> list[str]:
    """Every kernel or device function that spills or has a local-memory stack frame."""
    problems = []
    for c in compiled:
        for k in c.kernels:
            problems += [f"{c.source} {k.arch} {kernel_label(demangle([k.kernel])[k.kernel])}: {p}"
                         for p in k.problems()]
        entries = {k.kernel for k in c.kernels}
        for name, frame, stores, loads in _FUNCTION_FRAME.findall(c.ptxas_log):
            if name not in entries and (int(frame) or int(stores) or int(loads)):
                problems.append(f"{c.source} {c.arch} device function {demangle([name])[name]}: "
                                f"{frame}-byte stack frame, {stores}/{loads} bytes spilled (stores/loads)")
    return sorted(set(problems))


# ---------------------------------------------------------------------------------------------
# Decision paths


def decision_path_violations(compiled: list[CompiledSource],
                             exempt: tuple[str, ...] = EXEMPT_FUNCTIONS) -> dict[tuple[str, str, str], list]:
    """{(source, arch, function): [(rule, instruction), ...]} for every function of a decision
    source's PTX, but the ``exempt`` ones, that holds a forbidden floating-point instruction."""
    found = {}
    for c in compiled:
        if not BUILD.is_decision_source(c.source):
            continue
        for name, body in c.functions.values():
            if function_name(name) in exempt:
                continue
            bad = forbidden_float_ops(body)
            if bad:
                found[(c.source, c.arch, name)] = bad
    return found


def exempt_functions_found(compiled: list[CompiledSource]) -> dict[str, list]:
    """{exempt base name: forbidden instructions it holds across the decision sources}."""
    held = {name: [] for name in EXEMPT_FUNCTIONS}
    for c in compiled:
        if not BUILD.is_decision_source(c.source):
            continue
        for name, body in c.functions.values():
            base = function_name(name)
            if base in held:
                held[base] += forbidden_float_ops(body)
    return held


def contracted_compilations(arch: str) -> list[Compilation]:
    """The decision sources compiled to PTX with nvcc's default --fmad=true: the check must flag
    their contracted multiply-adds (the proof that it can fail)."""
    jobs = []
    for source in decision_sources():
        flags = [f for f in BUILD.nvcc_flags_for(str(source)) if not f.startswith("--fmad")]
        jobs.append(Compilation(source, (arch,), tuple(flags) + ("--fmad=true",), assemble=False))
    return jobs


# ---------------------------------------------------------------------------------------------


def format_violations(violations: dict) -> str:
    lines = []
    for (source, arch, function), bad in sorted(violations.items()):
        lines.append(f"{source} {arch} {function}:")
        lines += [f"    {rule}: {instruction}" for rule, instruction in bad[:5]]
        if len(bad) > 5:
            lines.append(f"    ... {len(bad) - 5} more")
    return "\n".join(lines)


def table_diff(committed: str, current: str) -> str:
    return resource_table.diff(TABLE, committed, current)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vgpa_tools.gpu_proof.cuda_kernels", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help=f"do not write {TABLE.relative_to(REPO)}; fail when it differs from the compiled code")
    args = parser.parse_args(argv)

    nvcc = find_nvcc()
    if nvcc is None:
        print("nvcc not found: the CUDA kernels cannot be compiled here", file=sys.stderr)
        return 2
    compiled = [c for per_job in compile_all(build_compilations(), nvcc) for c in per_job]
    text = table_text(resource_rows(compiled, nvcc_version(nvcc)))
    status = resource_table.write_or_check(TABLE, text, args.check, "python -m vgpa_tools.gpu_proof cuda",
                                             f"{text.count(chr(10)) - 1} rows (kernel, arch)")
    problems = budget_problems(compiled)
    if problems:
        print("resource budget broken:\n  " + "\n  ".join(problems), file=sys.stderr)
        status = 1
    violations = decision_path_violations(compiled)
    if violations:
        print("decision paths hold forbidden floating-point instructions:\n" + format_violations(violations),
              file=sys.stderr)
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
