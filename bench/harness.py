"""The pattern every bench entry follows (see bench/README.md): an ``Entry`` names the op, its
sizes, how to build inputs and the reference result, and its implementations (``Impl``: a peer
as users run it today, or vgpa itself). ``cases`` expands an entry into pytest parameters and
``run_case`` checks one implementation against the reference, measures its peak memory, then
times it with pytest-benchmark's ``benchmark`` fixture.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest
import torch

from . import timing

# "step": the call is a whole training step, its own backward pass included
MODES = ("fwd", "fwd+bwd", "step")


@dataclass(frozen=True)
class Size:
    """One problem size: ``dims`` as the entry's make_inputs takes them, ``x`` its magnitude on
    the entry's size axis (the x of the cost-versus-size plot)."""

    dims: tuple
    x: float
    graph: bool = False  # on a GPU, also timed as a CUDA-graph replay (small sizes: launch-bound)
    # in the default sweep (`vgpa bench` without --full): the entry's representative size, at
    # VideoGPA's settings where the bench has them; the headline is read at these sizes
    default: bool = False

    @property
    def label(self) -> str:
        return "x".join(map(str, self.dims))


@dataclass(frozen=True)
class Impl:
    """One implementation. ``make(inputs)`` returns a function of no arguments computing the
    compared output (differentiable where the entry has a fwd+bwd mode). ``peer``: something
    users run today (``what`` says exactly what: our statement of VideoGPA's formula, kornia,
    torch.compile of ...), else vgpa itself on ``backend``."""

    name: str
    make: Callable[[Any], Callable[[], Any]]
    what: str
    peer: bool = True
    backend: str | None = None  # vgpa backend; the case exists only where it can run
    compiled: bool = False  # torch.compile: left out of quick and default CPU runs (compiling takes minutes)
    capturable: bool = False  # can run inside a CUDA graph (no host sync, no CPU tensors)
    # a variant the headline does not need (e.g. a fused call split in two): timed in --full only
    full_only: bool = False
    # the peers this implementation is compared with in the headline (its own task's, where an
    # entry times several tasks); None: every peer
    versus: tuple | None = None
    # replaces the entry's check for a peer that computes a close variant of the op (its
    # docstring says why and how close)
    agree: Callable[[Any, Any], None] | None = None
    # inputs -> MiB it holds across calls besides the shared inputs (a reference model's copy), made
    # by ``make`` before the peak is measured: added to the call's peak memory
    held_mib: Callable[[Any], float] | None = None
    # a pipeline's breakdown: make(inputs)-like, returning a function of no arguments that runs
    # one call and returns {stage: seconds}; its per-stage medians go to the report's stage table
    stages: Callable[[Any], Callable[[], dict]] | None = None
    # the sizes it is timed at (None: every size of the sweep); e.g. a peer too slow for the largest
    at_size: Callable[[Size], bool] | None = None


@dataclass
class Entry:
    op: str
    x_label: str  # what the size axis counts, e.g. "latent elements per tensor"
    sizes: Callable[[torch.device, bool], list]  # (device, quick) -> [Size]
    make_inputs: Callable[[tuple, torch.device], Any]
    reference: Callable[[Any], Any]  # inputs -> the expected output
    agree: Callable[[Any, Any], None]  # (got, expected) -> raises AssertionError if they differ
    impls: list
    baseline: str  # the peer speedups are first reported against
    modes: tuple = ("fwd",)
    grad_input: Callable[[Any], torch.Tensor] | None = None  # inputs -> leaf whose .grad fwd+bwd resets
    loss_of: Callable[[Any], torch.Tensor] = field(default=lambda out: out.sum())  # output -> scalar
    bytes_moved: Callable[[Size, Any, str], int] | None = None  # (size, inputs, mode) -> bytes, for GB/s
    copy_roof: bool = False  # memory-bound: also measure the copy bandwidth it is compared with

    def __post_init__(self):
        names = [impl.name for impl in self.impls]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.op}: implementation names repeat: {names}")
        if self.baseline not in [impl.name for impl in self.impls if impl.peer]:
            raise ValueError(f"{self.op}: baseline {self.baseline!r} is not one of its peers")
        unknown = [mode for mode in self.modes if mode not in MODES]
        if unknown:
            raise ValueError(f"{self.op}: modes {unknown} are not among {MODES}")
        if "fwd+bwd" in self.modes and self.grad_input is None:
            raise ValueError(f"{self.op}: mode fwd+bwd needs grad_input (the leaf the backward differentiates)")
        peers = {impl.name for impl in self.impls if impl.peer}
        for impl in self.impls:
            if impl.versus is not None and not set(impl.versus) <= peers:
                raise ValueError(f"{self.op}: {impl.name} is compared with {sorted(set(impl.versus) - peers)}, "
                                 f"which are not its peers")

    def impl(self, name: str) -> Impl:
        for impl in self.impls:
            if impl.name == name:
                return impl
        raise KeyError(f"{self.op}: no implementation named {name!r}")


@dataclass(frozen=True)
class Case:
    size: Size
    mode: str
    impl: str
    graph: bool = False

    @property
    def id(self) -> str:
        return f"{self.size.label}-{self.mode}-{self.impl}" + ("-graph" if self.graph else "")


def backends_for(device: torch.device) -> tuple:
    """vgpa backends that take tensors of this device natively (never the Triton interpreter or
    the CUDA emulation, which are test instruments, not CPU backends)."""
    return ("cuda", "triton", "torch") if device.type == "cuda" else ("cpu", "torch")


SWEEPS = ("quick", "default", "full")


def runnable(impl: Impl, device: torch.device) -> bool:
    """Whether the implementation can run on this device (a vgpa backend that is built and takes
    this device's tensors; every peer can)."""
    if impl.backend is not None:
        from vgpa import _backend

        return impl.backend in backends_for(device) and _backend.why_unavailable(impl.backend, device) is None
    return True


def sweep_sizes(entry: Entry, device: torch.device, sweep: str) -> list:
    """The entry's sizes of a sweep: "quick" its one small size, "full" every size, "default" the
    sizes of the full list marked ``default`` (so that a default run's rows are rows of a full run)."""
    if sweep not in SWEEPS:
        raise ValueError(f"sweep must be one of {SWEEPS}, got {sweep!r}")
    if sweep == "quick":
        return entry.sizes(device, True)
    sizes = entry.sizes(device, False)
    return sizes if sweep == "full" else [size for size in sizes if size.default]


def sweep_impls(entry: Entry, device: torch.device, sweep: str, compile_on_cpu: bool = False) -> list:
    """The implementations a sweep times here. torch.compile peers are left out of quick and
    default runs on the CPU (compiling takes minutes there) unless ``compile_on_cpu``. The default
    sweep leaves out ``full_only`` variants and vgpa's pure-PyTorch backend wherever a compiled
    vgpa backend runs (the torch backend is the reference, not what ``backend="auto"`` picks)."""
    if sweep not in SWEEPS:
        raise ValueError(f"sweep must be one of {SWEEPS}, got {sweep!r}")
    impls = [impl for impl in entry.impls if runnable(impl, device)]
    if device.type != "cuda" and sweep != "full" and not compile_on_cpu:
        impls = [impl for impl in impls if not impl.compiled]
    if sweep == "default":
        compiled_backend = any(impl.backend not in (None, "torch") for impl in impls)
        impls = [impl for impl in impls
                 if not impl.full_only and not (compiled_backend and impl.backend == "torch")]
    return impls


def cases(entry: Entry, device: torch.device, sweep: str = "full", compile_on_cpu: bool = False) -> list:
    """Every (size, mode, implementation) of the sweep to time, sizes outermost so that one size's
    inputs are built once; on a GPU, forward cases of capturable implementations at graph sizes
    are also timed as a CUDA-graph replay."""
    impls = sweep_impls(entry, device, sweep, compile_on_cpu)
    out = []
    for size in sweep_sizes(entry, device, sweep):
        for mode in entry.modes:
            for impl in impls:
                if impl.at_size is not None and not impl.at_size(size):
                    continue
                out.append(Case(size, mode, impl.name))
                if device.type == "cuda" and size.graph and mode == "fwd" and impl.capturable:
                    out.append(Case(size, mode, impl.name, graph=True))
    return out


_inputs_cache: dict = {}
_copy_roof: dict = {}


def copy_roof_gbs(device: torch.device) -> float:
    """Copy bandwidth of this device, measured once per run: 1 GiB on a GPU, 128 MiB on the CPU
    (both far above the caches)."""
    if str(device) not in _copy_roof:
        _copy_roof[str(device)] = timing.copy_bandwidth_gbs(device, 1 << 30 if device.type == "cuda" else 1 << 27)
    return _copy_roof[str(device)]


def inputs_for(entry: Entry, size: Size, device: torch.device):
    """(inputs, expected) of one size, kept until another size of any entry is asked for."""
    key = (entry.op, size, str(device))
    if key not in _inputs_cache:
        _inputs_cache.clear()
        inputs = entry.make_inputs(size.dims, device)
        with torch.no_grad():
            expected = entry.reference(inputs)
        _inputs_cache[key] = (inputs, expected)
    return _inputs_cache[key]


def make_step(entry: Entry, forward: Callable, inputs, mode: str) -> Callable[[], object]:
    """The timed call: the forward under no_grad, or forward and backward of loss_of(output)
    with the input gradient reset first, or (mode "step") the call itself, which runs its own
    backward. It returns the output (and the input gradient), which the timing ignores and the
    instruction counter's output check reads."""
    if mode == "fwd":
        def step():
            with torch.no_grad():
                return forward()
        return step
    if mode == "step":
        return forward
    if mode != "fwd+bwd":
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    leaf = entry.grad_input(inputs)

    def step():
        leaf.grad = None
        out = forward()
        entry.loss_of(out).backward()
        return out, leaf.grad

    return step


def run_case(benchmark, entry: Entry, case: Case, device: torch.device, min_rounds: int, max_time_s: float):
    """Check, measure and time one case; what the report needs goes to benchmark.extra_info."""
    impl = entry.impl(case.impl)
    inputs, expected = inputs_for(entry, case.size, device)
    forward = impl.make(inputs)
    with torch.set_grad_enabled(case.mode != "fwd"):
        got = forward()
    (impl.agree or entry.agree)(got, expected)  # a wrong result fails the case; it is never timed

    step = make_step(entry, forward, inputs, case.mode)
    if case.graph:
        try:
            step = timing.cuda_graph(step, device)
        except Exception as error:  # what capture refuses is a property of the implementation, not a failure
            torch.cuda.synchronize(device)
            pytest.skip(f"{impl.name} cannot be captured in a CUDA graph: {type(error).__name__}: {error}")
    step()
    timing.synchronize(device)
    start = time.perf_counter()
    step()
    timing.synchronize(device)
    estimate = time.perf_counter() - start
    peak = timing.peak_mib(step, device)
    if peak is not None and impl.held_mib is not None:
        peak += impl.held_mib(inputs)

    benchmark.group = f"{entry.op} {case.mode} {case.size.label}"
    benchmark.extra_info.update({
        "op": entry.op, "size": case.size.label, "x": case.size.x, "x_label": entry.x_label,
        "mode": case.mode, "impl": impl.name + (" [graph]" if case.graph else ""), "peer": impl.peer,
        "what": impl.what, "baseline": entry.baseline, "peak_mib": peak, "device": str(device),
        "threads": torch.get_num_threads(), "default_size": case.size.default,
    })
    if impl.versus is not None:
        benchmark.extra_info["versus"] = list(impl.versus)
    if entry.bytes_moved is not None:
        benchmark.extra_info["bytes"] = int(entry.bytes_moved(case.size, inputs, case.mode))
    if entry.copy_roof:
        benchmark.extra_info["copy_gbs"] = copy_roof_gbs(device)
    if impl.stages is not None:
        benchmark.extra_info["stages"] = stage_medians(impl.stages(inputs), min(min_rounds, STAGE_ROUNDS))
    rounds = timing.rounds_for(estimate, min_rounds, max_time_s)
    if device.type == "cuda":
        benchmark._timer = timing.EventClock()  # the plugin's runner reads its timer from here
        benchmark.pedantic(step, setup=timing.L2Flush(device), rounds=rounds, warmup_rounds=3)
    else:
        benchmark.pedantic(step, rounds=rounds, warmup_rounds=1)


STAGE_ROUNDS = 3  # calls of a stage breakdown (its medians): outside the timed rounds, so few


def stage_medians(run: Callable[[], dict], rounds: int) -> dict:
    """{stage: median seconds} over ``rounds`` calls of ``run`` (each returns {stage: seconds}),
    in the order the stages first ran."""
    calls = [run() for _ in range(max(1, rounds))]
    names = list(dict.fromkeys(name for call in calls for name in call))
    return {name: statistics.median(call.get(name, 0.0) for call in calls) for name in names}


def assert_close(got, expected, rtol: float, atol: float, what: str = "result"):
    """AssertionError naming the largest difference where got and expected differ."""
    got, expected = torch.as_tensor(got).detach().float().cpu(), torch.as_tensor(expected).detach().float().cpu()
    if got.shape != expected.shape:
        raise AssertionError(f"{what}: shape {tuple(got.shape)} differs from the reference's {tuple(expected.shape)}")
    if not torch.allclose(got, expected, rtol=rtol, atol=atol, equal_nan=True):
        diff = (got - expected).abs()
        worst = int(torch.nan_to_num(diff, nan=math.inf).argmax())
        got_worst, expected_worst = got.flatten()[worst], expected.flatten()[worst]
        raise AssertionError(f"{what} differs from the reference: largest |difference| {diff.flatten()[worst]:.3g} "
                             f"({got_worst:.6g} vs {expected_worst:.6g}; rtol {rtol}, atol {atol})")
