"""What the bench measures besides pytest-benchmark's own clock: the GPU clock (CUDA events), the
L2 flush between timed GPU calls, CUDA-graph replay, peak memory on GPU and CPU, copy bandwidth.

The GPU parts run only where a GPU is; their logic that can be checked without one (buffer
sizing, the clock's start/stop pairing, the statistics) is factored into plain functions.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import math
import re
import statistics
import time

import torch

# A buffer this many times the L2 size evicts it whatever the replacement policy keeps.
L2_FLUSH_FACTOR = 2
# L2 size assumed when the device properties do not report one: above every current GPU's L2.
L2_FALLBACK_BYTES = 256 << 20


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_and_iqr(samples) -> tuple[float, float]:
    """(median, interquartile range) of the samples, the statistics the bench reports (robust to
    the odd slow round on a shared machine). Quartiles are the "inclusive" method of statistics."""
    samples = list(samples)
    if not samples:
        raise ValueError("median_and_iqr: samples is empty")
    if len(samples) == 1:
        return float(samples[0]), 0.0
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return float(statistics.median(samples)), float(q3 - q1)


def rounds_for(estimate_s: float, min_rounds: int, max_time_s: float, max_rounds: int = 1000) -> int:
    """Rounds to time a call that takes about estimate_s: enough to fill max_time_s, at least
    min_rounds, at most max_rounds (pytest-benchmark's --benchmark-min-rounds / --benchmark-max-time
    semantics, applied to the pedantic mode the bench uses)."""
    if min_rounds < 1:
        raise ValueError(f"rounds_for: min_rounds must be >= 1, got {min_rounds}")
    if not math.isfinite(estimate_s) or estimate_s <= 0:
        return max(min_rounds, 1)
    return int(min(max_rounds, max(min_rounds, math.ceil(max_time_s / estimate_s))))


# --------------------------------------------------------------------------------------------
# GPU clock and L2 flush


class EventClock:
    """A pytest-benchmark timer made of CUDA events. pytest-benchmark calls its timer once before
    and once after the timed call (pedantic mode, one iteration): the first call records a start
    event and returns 0; the second records an end event, waits for it and returns the GPU time
    between the two in seconds. So the duration the plugin computes, end - start, is the time the
    GPU took from the start event to the end event, host launch gaps included but no host
    synchronisation before the call. ``event_factory`` makes a timing event (tests pass a fake)."""

    def __init__(self, event_factory=None):
        self._event_factory = event_factory or (lambda: torch.cuda.Event(enable_timing=True))
        self._start = None
        self.__name__ = "cuda_event_clock"  # how pytest-benchmark names the timer in its JSON

    def __call__(self) -> float:
        if self._start is None:
            self._start = self._event_factory()
            self._start.record()
            return 0.0
        end = self._event_factory()
        end.record()
        end.synchronize()
        start, self._start = self._start, None
        return start.elapsed_time(end) / 1e3  # elapsed_time is in milliseconds


def l2_size_bytes(device: torch.device) -> int:
    """The device's L2 size as its properties report it, else L2_FALLBACK_BYTES."""
    size = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0)
    return int(size) if size and size > 0 else L2_FALLBACK_BYTES


def l2_flush_numel(l2_bytes: int, element_size: int = 4) -> int:
    """Elements of the flush buffer: L2_FLUSH_FACTOR times the L2, rounded up to whole elements."""
    if l2_bytes <= 0:
        raise ValueError(f"l2_flush_numel: l2_bytes must be positive, got {l2_bytes}")
    return -(-L2_FLUSH_FACTOR * l2_bytes // element_size)


class L2Flush:
    """Writing a buffer larger than L2 between timed calls, so that each call starts with a cold
    cache as in a training step (the inputs were written long before). Call it as the setup of
    pytest-benchmark's pedantic mode: it runs outside the timed region."""

    def __init__(self, device: torch.device):
        self.buffer = torch.empty(l2_flush_numel(l2_size_bytes(device)), dtype=torch.float32, device=device)

    def __call__(self):
        self.buffer.zero_()


def cuda_graph(fn, device: torch.device, warmup: int = 3):
    """fn captured in a CUDA graph: returns replay(), which reruns fn's kernels with no host launch
    work, so timing it next to fn shows the launch overhead apart from kernel time. Raises what
    capture raises (host synchronisation, CPU tensors, dynamic shapes cannot be captured)."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):  # warm-up on a side stream, as capture requires
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


# --------------------------------------------------------------------------------------------
# Peak memory


def gpu_peak_mib(fn, device: torch.device) -> float:
    """Peak GPU memory allocated by torch during one fn() above what was allocated before."""
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


_STATUS_FIELD = re.compile(r"^(Vm\w+):\s+(\d+) kB$", re.M)


def parse_proc_status(text: str) -> dict[str, int]:
    """The Vm* fields of /proc/<pid>/status in bytes."""
    return {name: int(kib) * 1024 for name, kib in _STATUS_FIELD.findall(text)}


def _libc():
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


def cpu_peak_mib(fn) -> float | None:
    """Peak resident memory of this process during one fn() above its resident memory just before
    (Linux): free heap pages are returned to the system first (malloc_trim), so memory the call
    takes counts even where the allocator reuses freed blocks; the kernel's high-water mark is
    reset (/proc/self/clear_refs, 5) and read back (VmHWM). This sees every allocation, torch's
    and the C++ backends' own, which torch's allocator statistics would not. None where the
    kernel interface is missing or refused."""
    try:
        libc = _libc()
        if libc is not None and hasattr(libc, "malloc_trim"):
            gc.collect()
            libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        with open("/proc/self/status") as f:
            before = parse_proc_status(f.read())["VmRSS"]
    except (OSError, KeyError):
        return None
    fn()
    with open("/proc/self/status") as f:
        peak = parse_proc_status(f.read())["VmHWM"]
    return max(peak - before, 0) / 2**20


def peak_mib(fn, device: torch.device) -> float | None:
    return gpu_peak_mib(fn, device) if device.type == "cuda" else cpu_peak_mib(fn)


# --------------------------------------------------------------------------------------------
# Bandwidth roof


def copy_bandwidth_gbs(device: torch.device, nbytes: int, repeat: int = 10) -> float:
    """Achieved copy bandwidth (bytes read + written per second) of a large tensor copy, median of
    ``repeat`` timed copies: the roof that memory-bound kernels are compared with."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    for _ in range(2):
        dst.copy_(src)
    samples = []
    for _ in range(repeat):
        if device.type == "cuda":
            clock = EventClock()
            clock()
            dst.copy_(src)
            samples.append(clock())
        else:
            start = time.perf_counter()
            dst.copy_(src)
            samples.append(time.perf_counter() - start)
    seconds, _ = median_and_iqr(samples)
    return 2 * src.numel() * 4 / seconds / 1e9
