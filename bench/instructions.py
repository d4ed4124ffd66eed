"""Instruction counts of the geometry kernels' CPU backend (C++/OpenMP in vgpa._C), per unit of
the bench's size axis, measured with valgrind's callgrind: a number that does not move with the
machine's load, so that two commits' kernels can be compared on a noisy machine.

    python -m vgpa.bench.instructions [--ops epipolar,normal_stability,render_points,reprojection_error]
                                      [--sizes small|quick] [--out bench/results/cpu-2-threads]
                                      [--valgrind PATH]
    python -m vgpa.bench.instructions --compare OLD.json NEW.json

One valgrind process runs the driver (``--driver``, a function of this module): for each op it
builds the bench entry's inputs (bench_<op>.make_inputs) at the entry's small sizes and calls the
op on backend "cpu", forward and, where the op is differentiable, forward and backward. Callgrind
collects only inside the C++ entry points (``vgpa::<name>_cpu``, callees included) and writes one
dump after each of them returns; the driver records which entry points each of its calls reached
(it wraps ``vgpa._backend.launch_compiled``), and the dumps are matched to that list in order,
each dump's trigger checked against the name expected there.

Counts are single-threaded (OMP_NUM_THREADS=1: the OpenMP bodies run on the calling thread) and
of the AVX2 (x86-64-v3) clone of functions compiled with target_clones: valgrind does not
emulate AVX-512, so the CPU it reports has none and the v4 clone never runs under it.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import glob
import hashlib
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

from ..ops import registry

# The ops counted and what is counted of each: the ``instructions`` of their specs
# (vgpa/ops/registry.py): the C++ entry points of the op's CPU backend (csrc/<op>.h) as vgpa._C binds
# them, the argument struct they take (vgpa::<name>(vgpa::<Args> const&)), and how many of the
# entry's CPU sizes (smallest first) "--sizes small" counts.
_COUNTED = {spec.name: spec.instructions for spec in registry.specs() if spec.instructions is not None}
OPS = tuple(_COUNTED)
KERNELS = {op: counts.kernels for op, counts in _COUNTED.items()}
ARGS = {op: counts.args for op, counts in _COUNTED.items()}
SMALL_SIZES = {op: counts.small_sizes for op, counts in _COUNTED.items()}

DEFAULT_OUT = os.path.join("bench", "results", "cpu-2-threads")
CLONE_NOTE = ("AVX2 (x86-64-v3) clone: valgrind does not emulate AVX-512; single-threaded "
              "(OMP_NUM_THREADS=1)")
FIELDS = ("op", "kernel", "call", "size", "unit", "pixels", "instructions", "instructions_per_unit",
          "valgrind", "commit", "torch", "clone")


class ValgrindNotFound(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------
# Callgrind's output


@dataclass(frozen=True)
class Dump:
    """One callgrind dump: its part number, what triggered it, and its event totals."""

    part: int
    trigger: str
    totals: dict

    @property
    def kernel(self) -> str | None:
        """The entry point whose --dump-after wrote this dump (``<name>_cpu``), else None."""
        match = re.match(r"--dump-after=(?:.*::)?(\w+)\(", self.trigger)
        return match.group(1) if match else None


def parse_dump(text: str) -> Dump:
    """The header of one callgrind output file: ``part:``, ``desc: Trigger:``, ``events:`` and
    the ``totals:`` line (``summary:`` where there is none)."""
    part, trigger, events, totals, summary = 1, "", None, None, None
    for line in text.splitlines():
        if line.startswith("part:"):
            part = int(line.split(":", 1)[1])
        elif line.startswith("desc: Trigger:"):
            trigger = line.split(":", 2)[2].strip()
        elif line.startswith("events:"):
            events = line.split(":", 1)[1].split()
        elif line.startswith("totals:"):
            totals = [int(v) for v in line.split(":", 1)[1].split()]
        elif line.startswith("summary:"):
            summary = [int(v) for v in line.split(":", 1)[1].split()]
    values = totals if totals is not None else summary
    if events is None or values is None:
        raise ValueError("not a callgrind output file: no 'events:' or no 'totals:'/'summary:' line")
    values = values + [0] * (len(events) - len(values))  # trailing zero events may be left out
    return Dump(part, trigger, dict(zip(events, values)))


def read_dumps(folder: str) -> list[Dump]:
    """The --dump-after dumps under ``folder``, in the order they were written (the final dump at
    program termination is left out)."""
    dumps = []
    for path in glob.glob(os.path.join(folder, "cg.out.*.*")):  # cg.out.<pid>.<n>; the final one has no .<n>
        if not re.fullmatch(r"cg\.out\.\d+\.\d+", os.path.basename(path)):
            continue
        with open(path) as f:
            dumps.append(parse_dump(f.read()))
    return sorted((d for d in dumps if d.trigger.startswith("--dump-after=")), key=lambda d: d.part)


def match_dumps(log: list, dumps: list[Dump]) -> list:
    """Pairs every kernel the driver's log says it reached, in order, with its dump; raises when
    the dumps' triggers are not exactly that sequence."""
    expected = [(i, kernel) for i, record in enumerate(log) for kernel in record["kernels"]]
    got = [d.kernel for d in dumps]
    if [k for _, k in expected] != got:
        raise RuntimeError("callgrind's dumps do not match the driver's calls:\n"
                           f"  expected {[k for _, k in expected]}\n  got      {got}")
    return [(log[i], kernel, dump) for (i, kernel), dump in zip(expected, dumps)]


def rows_from(log: list, dumps: list[Dump], meta: dict) -> list[dict]:
    """One row per kernel invocation of a measured call (warm-up and input building dropped)."""
    rows, seen = [], {}
    for record, kernel, dump in match_dumps(log, dumps):
        if record["phase"] != "measure":
            continue
        instructions = dump.totals["Ir"]
        # a kernel reached twice by one call (RANSAC's two Sampson passes) gets " #2"
        repeat = seen[id(record), kernel] = seen.get((id(record), kernel), 0) + 1
        rows.append({
            "op": record["op"], "kernel": f"vgpa::{kernel}" + (f" #{repeat}" if repeat > 1 else ""),
            "call": record["call"], "size": record["size"],
            "unit": record["unit"], "pixels": record["units"], "instructions": instructions,
            "instructions_per_unit": instructions / record["units"], **meta,
        })
    return rows


def write_results(rows: list[dict], out: str, meta: dict) -> tuple[str, str]:
    os.makedirs(out, exist_ok=True)
    csv_path, json_path = os.path.join(out, "instructions.csv"), os.path.join(out, "instructions.json")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    with open(json_path, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    return csv_path, json_path


def load_rows(json_path: str) -> list[dict]:
    with open(json_path) as f:
        return json.load(f)["rows"]


def format_table(rows: list[dict]) -> str:
    header = ("op", "call", "kernel", "size", "units", "instructions", "per unit")
    body = [(r["op"], r["call"], r["kernel"], r["size"], str(r["pixels"]), f"{r['instructions']:,}",
             f"{r['instructions_per_unit']:.2f}") for r in rows]
    widths = [max(len(x) for x in column) for column in zip(header, *body)]
    right = {4, 5, 6}
    line = lambda cells: "  ".join(c.rjust(w) if i in right else c.ljust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(b) for b in body])


def compare(old: list[dict], new: list[dict]) -> str:
    """Per-unit counts of two result files side by side (rows matched on op, call, kernel, size)."""
    key = lambda r: (r["op"], r["call"], r["kernel"], r["size"])  # noqa: E731
    before = {key(r): r for r in old}
    header = ("op", "call", "kernel", "size", "old/unit", "new/unit", "new/old")
    body = []
    for r in new:
        o = before.get(key(r))
        old_unit = o["instructions_per_unit"] if o else None
        body.append((r["op"], r["call"], r["kernel"], r["size"],
                     "-" if o is None else f"{old_unit:.2f}", f"{r['instructions_per_unit']:.2f}",
                     "-" if not old_unit else f"{r['instructions_per_unit'] / old_unit:.3f}"))
    widths = [max(len(x) for x in column) for column in zip(header, *body)]
    line = lambda cells: "  ".join(c.rjust(w) if i >= 4 else c.ljust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(b) for b in body])


# --------------------------------------------------------------------------------------------
# The driver (runs under valgrind; also runs natively in the tests)


@dataclass
class Call:
    name: str  # e.g. "fwd", "fwd+bwd", "ransac fwd"
    run: Callable[[], object]  # returns the call's outputs (and gradients)


def digest(value) -> str:
    """SHA-256 of the bytes of every tensor in value (tensors, sequences, dicts, dataclasses and
    result objects, in order): equal digests mean bitwise equal outputs."""
    import torch

    h = hashlib.sha256()

    def add(v):
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif dataclasses.is_dataclass(v) and not isinstance(v, type):
            for field in dataclasses.fields(v):
                add(getattr(v, field.name))
        elif isinstance(v, dict):
            for key in sorted(v):
                add(v[key])
        elif isinstance(v, (tuple, list)):
            for item in v:
                add(item)
        elif hasattr(v, "__dict__"):
            for key in sorted(vars(v)):
                add(vars(v)[key])

    add(value)
    return h.hexdigest()


def entry_of(op: str):
    return importlib.import_module(f"vgpa.bench.bench_{op}").ENTRY


def sizes_of(op: str, which: str) -> list:
    """The entry's CPU sizes to count: "small" (its smallest SMALL_SIZES[op]) or "quick"."""
    import torch

    entry, cpu = entry_of(op), torch.device("cpu")
    if which == "quick":
        return entry.sizes(cpu, True)[:1]
    if which != "small":
        raise ValueError(f"sizes must be 'small' or 'quick', got {which!r}")
    return entry.sizes(cpu, False)[:SMALL_SIZES[op]]


def calls_for(op: str, inputs) -> list[Call]:
    """What the driver runs on one size's inputs, in a fixed order: every vgpa[cpu] implementation
    of the entry in each of its modes (the bench's own timed step), then the backward of the
    differentiable ops that the entry times forward only."""
    import torch

    import vgpa

    from . import harness

    entry = entry_of(op)
    calls = []
    for impl in entry.impls:
        if impl.backend != "cpu":
            continue
        label = impl.name[len("vgpa[cpu]"):].strip()
        for mode in entry.modes:
            step = harness.make_step(entry, impl.make(inputs), inputs, mode)
            calls.append(Call(f"{label} {mode}".strip(), step))
    if op == "reprojection_error" and "fwd+bwd" not in entry.modes:
        depth, intrinsics, extrinsics, pairs = inputs
        leaf = depth.detach().clone().requires_grad_()

        def reprojection_backward():
            leaf.grad = None
            out = vgpa.reprojection_error(leaf, intrinsics, extrinsics, pairs, error="sq", validity="zeros",
                                          backend="cpu")
            out.error.sum().backward()
            return out, leaf.grad

        calls.append(Call("fwd+bwd", reprojection_backward))
    if op == "epipolar":
        m = inputs.matches
        with torch.no_grad():
            fit = vgpa.fundamental_matrix(m.x1, m.x2, counts=m.counts, method="8point", backend="cpu")
        leaf = fit.F.detach().clone().requires_grad_()

        def sampson_backward():
            leaf.grad = None
            out = vgpa.sampson_distance(leaf, m.x1, m.x2, counts=m.counts, squared=True, backend="cpu")
            out.sum().backward()
            return out, leaf.grad

        calls.append(Call("sampson fwd+bwd", sampson_backward))
    return calls


class KernelRecorder:
    """Records the compiled CPU entry points reached (``<name>_cpu``), in order, by wrapping
    vgpa._backend.launch_compiled, through which every op calls vgpa._C."""

    def __init__(self):
        from vgpa import _backend

        self._backend, self._original, self.reached = _backend, _backend.launch_compiled, []

        def launch(backend, name, device, **fields):
            if backend == "cpu":
                self.reached.append(f"{name}_cpu")
            return self._original(backend, name, device, **fields)

        _backend.launch_compiled = launch

    def take(self) -> list[str]:
        reached, self.reached = self.reached, []
        return reached

    def close(self):
        self._backend.launch_compiled = self._original


def run_driver(ops: list[str], sizes: str = "small", log_path: str | None = None, verbose: bool = True) -> list:
    """Runs every op's calls and returns (and writes to ``log_path`` as JSON) the list of what ran,
    in order: one record per input building ("setup"), warm-up call (at the entry's quick size:
    first calls pay one-time initialisation) and measured call, each with the collected entry
    points it reached."""
    import torch

    torch.set_num_threads(1)
    collected = {k for op in ops for k in KERNELS[op]}
    cpu = torch.device("cpu")
    recorder = KernelRecorder()
    log = []

    def record(phase, op, call, size, unit, units, outputs=""):
        log.append({"phase": phase, "op": op, "call": call, "size": size.label, "unit": unit, "units": units,
                    "kernels": [k for k in recorder.take() if k in collected], "digest": outputs})

    try:
        for op in ops:
            entry = entry_of(op)
            plan = [("warm-up", size) for size in entry.sizes(cpu, True)[:1]]
            plan += [("measure", size) for size in sizes_of(op, sizes)]
            for phase, size in plan:
                recorder.take()
                inputs = entry.make_inputs(size.dims, cpu)
                calls = calls_for(op, inputs)
                record("setup", op, "", size, entry.x_label, int(size.x))
                for call in calls:
                    start = time.perf_counter()
                    outputs = call.run()
                    record(phase, op, call.name, size, entry.x_label, int(size.x), digest(outputs))
                    if verbose:
                        print(f"  {phase:8s} {op} {size.label} {call.name}: {log[-1]['kernels']} "
                              f"({time.perf_counter() - start:.1f} s)", flush=True)
    finally:
        recorder.close()
    if log_path is not None:
        with open(log_path, "w") as f:
            json.dump(log, f, indent=1)
    return log


# --------------------------------------------------------------------------------------------
# The command


def find_valgrind(path: str | None = None) -> str:
    """The valgrind binary: ``path`` (a file or a name on PATH), else ``valgrind`` on PATH."""
    name = path or "valgrind"
    found = name if os.path.sep in name and os.access(name, os.X_OK) and os.path.isfile(name) else shutil.which(name)
    if found is None:
        raise ValgrindNotFound(f"valgrind not found ({name!r}): install it (e.g. apt-get install valgrind) or pass "
                               f"--valgrind PATH")
    return found


def valgrind_version(valgrind: str) -> str:
    return subprocess.run([valgrind, "--version"], capture_output=True, text=True, check=True).stdout.strip()


def is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def real_python() -> str:
    """The interpreter binary itself: valgrind cannot run a launcher script such as a pyenv shim."""
    for candidate in (getattr(sys, "_base_executable", None), sys.executable):
        if candidate and is_elf(os.path.realpath(candidate)):
            return os.path.realpath(candidate)
    raise RuntimeError(f"no python binary found behind {sys.executable!r} (valgrind needs the ELF binary, "
                       f"not a launcher script)")


def signature(op: str, kernel: str) -> str:
    """An entry point's name as callgrind shows it (demangled)."""
    return f"vgpa::{kernel}(vgpa::{ARGS[op]} const&)"


def defined_functions(library: str) -> set | None:
    """The demangled names of the functions defined in ``library`` (``nm -C``), or None without nm."""
    nm = shutil.which("nm")
    if nm is None:
        return None
    out = subprocess.run([nm, "-C", "--defined-only", library], capture_output=True, text=True, check=True).stdout
    return {parts[2] for parts in (line.split(" ", 2) for line in out.splitlines())
            if len(parts) == 3 and parts[1] in "tTiW"}


def entry_functions(ops: list[str], defined: set | None) -> list[str]:
    """The exact names to collect in: each entry point, or, where it was compiled with
    target_clones, its clones (the plain name is then the ifunc resolver, which runs once when
    the library is loaded). Without a symbol list (no nm), the plain names."""
    names = []
    for op in ops:
        for kernel in KERNELS[op]:
            plain = signature(op, kernel)
            if defined is None:
                names.append(plain)
                continue
            clone = re.compile(re.escape(plain) + r" \[clone \.(default|arch_\w+)\]")
            clones = sorted(n for n in defined if clone.fullmatch(n))
            if not clones and plain not in defined:
                raise RuntimeError(f"{plain} is not defined in vgpa._C: has its signature changed? (see KERNELS and "
                                   f"ARGS in {__name__})")
            names.extend(clones or [plain])
    return names


def valgrind_command(valgrind: str, python: str, functions: list[str], ops: list[str], sizes: str,
                     folder: str) -> list[str]:
    """Collection toggled by exact names, dumps by '*' + the exact name. Callgrind 3.19's pattern
    tree is unreliable otherwise: one string given to both options, or a trailing '*' (which
    would also take the OpenMP bodies, "[clone ._omp_fn.0]", and split a kernel's count), loses
    the toggle or the dump."""
    return [valgrind, "--tool=callgrind", "--collect-atstart=no",
            *[f"--toggle-collect={f}" for f in functions], *[f"--dump-after=*{f}" for f in functions],
            f"--callgrind-out-file={os.path.join(folder, 'cg.out.%p')}",
            f"--log-file={os.path.join(folder, 'valgrind.log')}",
            python, "-m", "vgpa.bench.instructions", "--driver", "--ops", ",".join(ops), "--sizes", sizes,
            "--calls-json", os.path.join(folder, "calls.json")]


def git_commit() -> str:
    here = os.path.dirname(os.path.realpath(__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""
    return commit + ("-dirty" if dirty else "")


def native_clone() -> str:
    """The SIMD clone this CPU runs (the resolver's choice, from the CPU's flags)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        return "unknown"
    if {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"} <= flags:
        return "x86-64-v4 (AVX-512)"
    if {"avx2", "fma", "bmi2"} <= flags:
        return "x86-64-v3 (AVX2)"
    return "baseline x86-64"


# Calls whose outputs pass through torch's own CPU math, which picks its kernels by the CPU it
# sees (so differs under valgrind for reasons outside vgpa): not compared.
OUTSIDE_VGPA = {("epipolar", "fwd"): "the 8-point fit's matrix products and eigh run in MKL"}


def check_outputs(under_valgrind: list, native: list) -> str:
    """Every call's outputs under valgrind (the AVX2 clone) against the same calls run natively
    (this CPU's clone): the SIMD clones must give the same bits. Raises on any difference."""
    key = lambda r: (r["phase"], r["op"], r["call"], r["size"])  # noqa: E731
    got = [(key(r), r["digest"]) for r in under_valgrind if r["phase"] != "setup"]
    want = [(key(r), r["digest"]) for r in native if r["phase"] != "setup"]
    if [k for k, _ in got] != [k for k, _ in want]:
        raise RuntimeError("the native run made other calls than the run under valgrind")
    compared = [(k, a, b) for (k, a), (_, b) in zip(got, want) if (k[1], k[2]) not in OUTSIDE_VGPA]
    differ = [k for k, a, b in compared if a != b]
    if differ:
        raise RuntimeError(f"outputs of the AVX2 clone (under valgrind) differ from this CPU's clone "
                           f"({native_clone()}) in {len(differ)} call(s): {differ}")
    skipped = sorted({(k[1], k[2]) for k, _ in got} & set(OUTSIDE_VGPA))
    note = "".join(f"; not compared: {op} {call} ({OUTSIDE_VGPA[op, call]})" for op, call in skipped)
    return (f"outputs of {len(compared)} calls bitwise equal between the AVX2 clone (under valgrind) and "
            f"this CPU's clone ({native_clone()}) run natively{note}")


def measure(ops: list[str], sizes: str, valgrind: str, folder: str) -> dict:
    """Runs the driver under callgrind, writing the dumps, the driver's calls.json and meta.json
    into ``folder``; returns the metadata of the run."""
    import torch

    import vgpa
    from vgpa import _backend

    extension = _backend.extension()
    if extension is None:
        raise RuntimeError(f"vgpa._C is not importable: {_backend.extension_error()}")
    functions = entry_functions(ops, defined_functions(extension.__file__))
    meta = {"valgrind": valgrind_version(valgrind), "commit": git_commit(), "torch": torch.__version__,
            "clone": CLONE_NOTE}
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="passive", MKL_NUM_THREADS="1")
    root = os.path.dirname(os.path.dirname(os.path.realpath(vgpa.__file__)))  # the driver imports this vgpa
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    for old in glob.glob(os.path.join(folder, "cg.out.*")):
        os.remove(old)
    command = valgrind_command(valgrind, real_python(), functions, ops, sizes, folder)
    print("valgrind: " + shlex.join(command), flush=True)
    print("(importing torch under valgrind takes several minutes)", flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, env=env)
    if done.returncode != 0:
        with open(os.path.join(folder, "valgrind.log")) as f:
            tail = f.read()[-4000:]
        raise RuntimeError(f"the driver under valgrind exited with {done.returncode}; valgrind's log:\n{tail}")
    meta["valgrind_seconds"] = round(time.perf_counter() - start)
    print(f"valgrind run: {meta['valgrind_seconds']} s", flush=True)
    with open(os.path.join(folder, "calls.json")) as f:
        under_valgrind = json.load(f)
    native = run_driver(ops, sizes, verbose=False)
    meta["outputs"] = check_outputs(under_valgrind, native)
    print(meta["outputs"], flush=True)
    with open(os.path.join(folder, "meta.json"), "w") as f:
        json.dump(meta, f)
    return meta


def results_of(folder: str) -> tuple[list[dict], dict]:
    """The rows and metadata of a run's folder (callgrind dumps, calls.json, meta.json)."""
    with open(os.path.join(folder, "calls.json")) as f:
        log = json.load(f)
    with open(os.path.join(folder, "meta.json")) as f:
        meta = json.load(f)
    row_meta = {k: meta.get(k, "") for k in ("valgrind", "commit", "torch", "clone")}
    return rows_from(log, read_dumps(folder), row_meta), meta


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m vgpa.bench.instructions", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", default=",".join(OPS), help=f"comma-separated subset of {', '.join(OPS)}")
    parser.add_argument("--sizes", default="small", choices=("small", "quick"),
                        help="small: the entry's smallest CPU bench sizes (default); quick: its --quick size")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"results folder (default {DEFAULT_OUT})")
    parser.add_argument("--no-save", action="store_true", help="print the table only")
    parser.add_argument("--valgrind", default=None, help="valgrind binary (default: valgrind on PATH)")
    parser.add_argument("--compare", nargs=2, metavar=("OLD_JSON", "NEW_JSON"),
                        help="no run: per-unit counts of two instructions.json files side by side")
    parser.add_argument("--raw-dir", default=None,
                        help="keep callgrind's dumps and the driver's call list in this folder (default: a "
                             "temporary one, removed)")
    parser.add_argument("--from-raw", default=None, metavar="DIR",
                        help="no run: the results of a folder kept with --raw-dir")
    parser.add_argument("--driver", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--calls-json", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.ops = [op.strip() for op in args.ops.split(",") if op.strip()]
    unknown = [op for op in args.ops if op not in OPS]
    if unknown:
        parser.error(f"--ops: unknown op(s) {unknown}; choose from {list(OPS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.compare:
        old, new = (load_rows(path) for path in args.compare)
        print(compare(old, new))
        return 0
    if args.driver:
        run_driver(args.ops, args.sizes, args.calls_json)
        return 0
    if args.from_raw:
        folder = args.from_raw
    else:
        try:
            valgrind = find_valgrind(args.valgrind)
        except ValgrindNotFound as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        folder = args.raw_dir or tempfile.mkdtemp(prefix="vgpa-callgrind-")
        os.makedirs(folder, exist_ok=True)
    try:
        if not args.from_raw:
            measure(args.ops, args.sizes, valgrind, folder)
        rows, meta = results_of(folder)
    finally:
        if not args.raw_dir and not args.from_raw:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"\nInstructions per unit, {meta['valgrind']}, {meta['clone']}, commit {meta['commit'] or '?'}\n")
    print(format_table(rows))
    if meta.get("outputs"):
        print(f"\n{meta['outputs']}")
    if not args.no_save:
        for path in write_results(rows, args.out, meta):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
