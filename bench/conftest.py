"""pytest set-up of the bench (collected by `vgpa bench`, or by pytest from a checkout with
`python -m pytest vgpa/bench --benchmark-only -o consider_namespace_packages=true`): the options,
the ``case`` parameters of each entry module (its ENTRY) and the ``bench`` fixture that runs one.
"""

from __future__ import annotations

import os

import pytest
import torch

from .harness import cases, run_case

QUICK_ROUNDS = 3
QUICK_MAX_TIME_S = 0.1

# torch deprecates torch.jit.script_method, which kornia's modules use at import: the warning says
# nothing about what the bench measures.
JIT_DEPRECATION_FILTER = "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"


def pytest_addoption(parser):
    group = parser.getgroup("vgpa bench")
    group.addoption("--quick", action="store_true", default=os.environ.get("VGPA_BENCH_QUICK") == "1",
                    help="one small size per op, no torch.compile peers on the CPU, at most 3 rounds and 0.1 s of "
                         "timing per case (CI smoke run; or VGPA_BENCH_QUICK=1)")
    group.addoption("--full", action="store_true", default=False,
                    help="every size and implementation of every op; without it (and without --quick) each op "
                         "runs at its default size(s) against its peers")
    group.addoption("--bench-compile", action="store_true", default=False,
                    help="also time the torch.compile peers on the CPU in quick and default runs")
    group.addoption("--bench-device", default="auto", help="cuda, cpu or auto (cuda when available)")
    group.addoption("--bench-threads", type=int, default=None, help="torch.set_num_threads for CPU runs")


def pytest_configure(config):
    config.addinivalue_line("filterwarnings", JIT_DEPRECATION_FILTER)
    if config.getoption("quick", False) and config.getoption("full", False):
        raise pytest.UsageError("--quick (or VGPA_BENCH_QUICK=1) and --full exclude each other")
    threads = config.getoption("bench_threads", None)
    if threads is not None:
        if threads < 1:
            raise pytest.UsageError(f"--bench-threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)


def bench_sweep(config) -> str:
    """quick, default or full (harness.SWEEPS)."""
    if config.getoption("quick"):
        return "quick"
    return "full" if config.getoption("full") else "default"


def bench_device(config) -> torch.device:
    choice = config.getoption("bench_device")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice not in ("cuda", "cpu"):
        raise pytest.UsageError(f"--bench-device must be cuda, cpu or auto, got {choice!r}")
    if choice == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--bench-device cuda: torch sees no GPU here")
    return torch.device(choice)


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        entry = metafunc.module.ENTRY
        config = metafunc.config
        params = cases(entry, bench_device(config), bench_sweep(config), config.getoption("bench_compile"))
        metafunc.parametrize("case", params, ids=[c.id for c in params])


@pytest.fixture
def bench(benchmark, request):
    """bench(entry, case): check the case's implementation against the reference, measure its peak
    memory and time it (pytest-benchmark's --benchmark-min-rounds and --benchmark-max-time apply)."""
    config = request.config
    device = bench_device(config)
    min_rounds = int(config.getoption("benchmark_min_rounds"))
    max_time = float(config.getoption("benchmark_max_time"))
    if config.getoption("quick"):
        min_rounds, max_time = min(min_rounds, QUICK_ROUNDS), min(max_time, QUICK_MAX_TIME_S)

    def run(entry, case):
        run_case(benchmark, entry, case, device, min_rounds, max_time)
        if benchmark.stats is not None:  # for the progress line of `vgpa bench` (bench/progress.py)
            stats = benchmark.stats.stats
            request.node.user_properties += [("median_s", stats.median), ("rounds", stats.rounds)]

    return run
