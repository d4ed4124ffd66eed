"""The bench machinery (vgpa.bench), without timing anything: every entry's quick cases run and
agree with the reference, the statistics and GPU-timing helpers, the report's rows, tables, files
and plots, the command line. No assertion here depends on how fast anything ran."""

import importlib
import json
import os
import subprocess
import sys

import pytest
import torch

from vgpa.bench import bench_render_points, bench_reprojection_error, harness, report, run, timing

ENTRIES = [importlib.import_module(f"vgpa.bench.bench_{op}").ENTRY for op in run.OPS]
CPU = torch.device("cpu")


# --------------------------------------------------------------------------------------------
# Entries


def test_every_entry_file_is_an_op_of_the_command_line():
    files = sorted(f[len("bench_"):-len(".py")] for f in os.listdir(os.path.dirname(run.__file__))
                   if f.startswith("bench_") and f.endswith(".py"))
    assert files == sorted(run.OPS)
    assert [e.op for e in ENTRIES] == list(run.OPS)


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.op)
def test_quick_cases_agree_with_the_reference_and_run(entry):
    """Every quick CPU case: the implementation's output passes the entry's check and its timed
    step (forward, or forward and backward) runs once."""
    cases = harness.cases(entry, CPU, quick=True)
    peers = {c.impl for c in cases if entry.impl(c.impl).peer}
    ours = {c.impl for c in cases if not entry.impl(c.impl).peer}
    assert entry.baseline in peers
    assert {"vgpa[cpu]", "vgpa[torch]"} & ours
    for case in cases:
        impl = entry.impl(case.impl)
        inputs, expected = harness.inputs_for(entry, case.size, CPU)
        forward = impl.make(inputs)
        with torch.set_grad_enabled(case.mode != "fwd"):
            got = forward()
        (impl.agree or entry.agree)(got, expected)
        step = harness.make_step(entry, forward, inputs, case.mode)
        step()
        if case.mode == "fwd+bwd":
            grad = entry.grad_input(inputs).grad
            assert grad is not None and torch.isfinite(grad).all(), case.id


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.op)
def test_checks_reject_a_wrong_result(entry):
    size = entry.sizes(CPU, True)[0]
    inputs, expected = harness.inputs_for(entry, size, CPU)
    with pytest.raises(AssertionError, match="differs from the reference"):
        entry.agree(expected * 1.1 + 0.1, expected)


def test_entry_rejects_an_inconsistent_definition():
    peer = harness.Impl("loop", make=lambda x: x, what="w")
    common = dict(op="toy", x_label="n", sizes=lambda d, q: [], make_inputs=None, reference=None, agree=None)
    with pytest.raises(ValueError, match="baseline"):
        harness.Entry(**common, impls=[peer], baseline="kornia")
    with pytest.raises(ValueError, match="repeat"):
        harness.Entry(**common, impls=[peer, peer], baseline="loop")
    with pytest.raises(ValueError, match="grad_input"):
        harness.Entry(**common, impls=[peer], baseline="loop", modes=("fwd", "fwd+bwd"))
    with pytest.raises(ValueError, match="modes"):
        harness.Entry(**common, impls=[peer], baseline="loop", modes=("bwd",))


def test_cases_leave_out_what_cannot_run_here():
    cases = harness.cases(bench_reprojection_error.ENTRY, CPU, quick=True)
    names = {c.impl for c in cases}
    assert "torch.compile (reference)" not in names  # quick CPU runs do not compile
    assert not any(n.startswith(("vgpa[cuda]", "vgpa[triton]")) for n in names)  # test instruments, not CPU backends
    assert not any(c.graph for c in cases)
    full = {c.impl for c in harness.cases(bench_reprojection_error.ENTRY, CPU, quick=False)}
    assert "torch.compile (reference)" in full


def test_cases_put_sizes_outermost_and_have_unique_ids():
    for entry in ENTRIES:
        cases = harness.cases(entry, CPU, quick=False)
        ids = [c.id for c in cases]
        assert len(ids) == len(set(ids))
        runs = [size for i, size in enumerate(c.size for c in cases) if i == 0 or cases[i - 1].size != size]
        assert len(runs) == len(set(runs)), f"{entry.op}: one size's cases are not contiguous"
        xs = [s.x for s in entry.sizes(CPU, False)]
        assert len(set(xs)) >= 3, f"{entry.op}: a cost curve needs at least 3 sizes"


def test_videogpa_renderer_quantises_to_uint8_and_maps_to_minus_one_one():
    pc = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 1.0]])
    colors = torch.tensor([[1.0, 0.0, 0.5], [0.2, 0.4, 0.6]])
    k = torch.tensor([[2.0, 0, 1], [0, 2.0, 1], [0, 0, 1]])
    image = bench_render_points.project_points(pc, colors, k, torch.eye(4), 3, 3)
    assert image.dtype == torch.uint8
    # both points land on pixel (1, 1); the nearer (z = 1) is written last and wins
    assert image[1, 1].tolist() == [int(0.2 * 255), int(0.4 * 255), int(0.6 * 255)]
    assert image.sum() == image[1, 1].sum()
    stack = bench_render_points.batch_reproject(pc, colors, k[None], torch.eye(4)[None], 3, 3)
    assert stack.shape == (1, 3, 3, 3) and stack.min() >= -1 and stack.max() <= 1


def test_videogpa_render_check_allows_uint8_truncation_only():
    expected = torch.tensor([[1e-4, 4e-4]])
    bound = 2 / 255 * expected.sqrt() + 1 / 255**2
    bench_render_points.videogpa_agree(expected - 0.9 * bound, expected)
    with pytest.raises(AssertionError, match="uint8 truncation"):
        bench_render_points.videogpa_agree(expected + 1.1 * bound, expected)
    with pytest.raises(AssertionError, match="shape"):
        bench_render_points.videogpa_agree(expected[:, :1], expected)


def test_mvcs_loop_reads_back_each_pair():
    depth, k, e, pairs = bench_reprojection_error.make_inputs((1, 3, 8, 8), CPU)
    out = bench_reprojection_error.per_pair_loop(depth, k, e)
    assert out.shape == (1, 2)
    harness.assert_close(out, bench_reprojection_error.reference_error(depth, k, e, pairs), 1e-3, 1e-5)


# --------------------------------------------------------------------------------------------
# Statistics and GPU-timing helpers


def test_median_and_iqr():
    assert timing.median_and_iqr([5.0, 1.0, 3.0, 2.0, 4.0]) == (3.0, 2.0)
    assert timing.median_and_iqr([7.0]) == (7.0, 0.0)
    assert timing.median_and_iqr([1.0, 2.0]) == (1.5, 0.5)
    with pytest.raises(ValueError, match="empty"):
        timing.median_and_iqr([])


def test_rounds_for():
    assert timing.rounds_for(0.1, min_rounds=5, max_time_s=1.0) == 10
    assert timing.rounds_for(2.0, min_rounds=5, max_time_s=1.0) == 5
    assert timing.rounds_for(1e-9, min_rounds=5, max_time_s=1.0, max_rounds=1000) == 1000
    assert timing.rounds_for(0.0, min_rounds=3, max_time_s=1.0) == 3
    assert timing.rounds_for(float("nan"), min_rounds=3, max_time_s=1.0) == 3
    with pytest.raises(ValueError, match="min_rounds"):
        timing.rounds_for(0.1, min_rounds=0, max_time_s=1.0)


def test_l2_flush_buffer_is_twice_the_l2():
    assert timing.l2_flush_numel(50 << 20) == 2 * (50 << 20) // 4
    assert timing.l2_flush_numel(6) == 3  # 12 bytes -> 3 float32
    assert timing.l2_flush_numel(7, element_size=4) == 4  # rounded up: never smaller than asked
    with pytest.raises(ValueError, match="l2_bytes"):
        timing.l2_flush_numel(0)


class FakeEvent:
    """Stands in for torch.cuda.Event: record() stamps the next time of a fake GPU clock (ms)."""

    clock = []

    def __init__(self):
        self.time = None
        self.synchronized = False

    def record(self):
        self.time = FakeEvent.clock.pop(0)

    def synchronize(self):
        self.synchronized = True

    def elapsed_time(self, end):
        assert end.synchronized, "the end event is waited for before its time is read"
        return end.time - self.time


def test_event_clock_pairs_start_and_end():
    FakeEvent.clock = [10.0, 12.5, 20.0, 21.0]
    clock = timing.EventClock(FakeEvent)
    assert clock() == 0.0
    assert clock() == pytest.approx(2.5e-3)
    assert clock() == 0.0
    assert clock() == pytest.approx(1.0e-3)


def test_event_clock_times_pytest_benchmark_rounds(benchmark):
    """pytest-benchmark's pedantic runner calls its timer once before and once after each round:
    the durations it records are the fake GPU times between the events."""
    if benchmark.disabled:
        pytest.skip("pytest-benchmark is disabled in this run (--benchmark-disable)")
    FakeEvent.clock = [0.0, 4.0, 10.0, 12.0, 20.0, 23.0, 30.0, 31.0]
    benchmark._timer = timing.EventClock(FakeEvent)
    calls = []
    benchmark.pedantic(lambda: calls.append(1), rounds=3, warmup_rounds=1)
    assert len(calls) == 4
    assert benchmark.stats.stats.data == pytest.approx([2e-3, 3e-3, 1e-3])


def test_parse_proc_status():
    text = "Name:\tpython\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nThreads:\t3\n"
    assert timing.parse_proc_status(text) == {"VmHWM": 2048 * 1024, "VmRSS": 1024 * 1024}


def test_cpu_peak_memory_sees_a_fresh_allocation():
    def allocate():
        x = torch.ones(16 << 20)  # 64 MiB, written so that every page is resident
        del x

    peak = timing.cpu_peak_mib(allocate)
    if peak is None:
        pytest.skip("this kernel does not let a process reset its peak RSS (/proc/self/clear_refs)")
    assert 60 <= peak < 64 + 32
    assert timing.cpu_peak_mib(lambda: None) < 8


# --------------------------------------------------------------------------------------------
# Report


def fake_benchmark(impl, peer, median_s, size="1x4", x=100, mode="fwd", **extra):
    info = {"op": "toy", "size": size, "x": x, "x_label": "things", "mode": mode, "impl": impl, "peer": peer,
            "what": "w", "baseline": "loop", "peak_mib": 1.5, "device": "cpu", "threads": 2, **extra}
    stats = {"median": median_s, "iqr": median_s / 10, "min": median_s * 0.9, "rounds": 5}
    return {"extra_info": info, "stats": stats}


def toy_rows():
    benchmarks = [
        fake_benchmark("loop", True, 0.010), fake_benchmark("kornia", True, 0.004),
        fake_benchmark("vgpa[cpu]", False, 0.002, bytes=8_000_000, copy_gbs=10.0),
        fake_benchmark("loop", True, 0.040, size="1x8", x=400),
        fake_benchmark("vgpa[cpu]", False, 0.004, size="1x8", x=400),
        {"extra_info": {}, "stats": {}},  # a benchmark of something else is left out
    ]
    return report.rows_from_benchmarks(benchmarks)["toy"]


def test_rows_carry_speedups_against_every_peer_of_their_size():
    rows = toy_rows()
    ours = [r for r in rows if r["impl"] == "vgpa[cpu]"]
    assert ours[0]["x vs loop"] == pytest.approx(5.0)
    assert ours[0]["x vs kornia"] == pytest.approx(2.0)
    assert ours[0]["median_ms"] == pytest.approx(2.0)
    assert ours[0]["GB/s"] == pytest.approx(4.0) and ours[0]["of_copy"] == pytest.approx(0.4)
    assert ours[1]["x vs loop"] == pytest.approx(10.0) and "x vs kornia" not in ours[1]
    assert list(k for k in ours[0] if k.startswith("x vs")) == ["x vs loop", "x vs kornia"]  # baseline first
    assert [r["x"] for r in rows] == sorted(r["x"] for r in rows)


def test_table_and_files(tmp_path):
    rows = toy_rows()
    text = report.table(rows)
    assert "x vs loop" in text and "vgpa[cpu]" in text and "_baseline" not in text
    env = {"device": "cpu-2-threads", "commit": "abc"}
    csv_path, json_path = report.write_results("toy", rows, str(tmp_path), env)
    header = open(csv_path).readline().strip().split(",")
    assert "median_ms" in header and not any(h.startswith("_") for h in header)
    saved = json.load(open(json_path))
    assert saved["environment"] == env and len(saved["rows"]) == len(rows)


def test_plots_are_png(tmp_path):
    pytest.importorskip("matplotlib")
    paths = report.write_plots("toy", toy_rows(), str(tmp_path))
    assert [os.path.basename(p) for p in paths] == ["toy_speedup.png", "toy_scaling.png"]
    for path in paths:
        assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_roof_time():
    assert report.roof_ms(2e9, 100.0) == pytest.approx(20.0)


def test_device_label():
    assert report.device_label(CPU, threads=2) == "cpu-2-threads"


# --------------------------------------------------------------------------------------------
# Command line


def test_command_line_arguments():
    args, extra = run.parse_args(["--quick", "--ops", "render_points", "--threads", "2", "--", "--benchmark-save=x"])
    assert args.ops == ["render_points"] and extra == ["--benchmark-save=x"]
    argv = run.pytest_arguments(args, "out.json", "pytest.ini")
    assert argv[0].endswith("bench_render_points.py")
    assert "--quick" in argv and "--benchmark-only" in argv and "--benchmark-json=out.json" in argv
    assert argv[argv.index("--bench-threads") + 1] == "2"
    for bad in (["--ops", "nope"], ["--threads", "0"], ["--stray"]):
        with pytest.raises(SystemExit):
            run.parse_args(bad)


def test_report_from_a_saved_run(tmp_path, capsys):
    data = {"benchmarks": [fake_benchmark("loop", True, 0.01), fake_benchmark("vgpa[cpu]", False, 0.002)]}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(data))
    assert run.main(["--from-json", str(path), "--out", str(tmp_path / "results"), "--no-plots"]) == 0
    assert "x vs loop" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / "results" / "cpu-2-threads")) == ["toy.csv", "toy.json"]


def test_pytest_collects_the_entries_as_benchmarks(tmp_path):
    """The bench as `vgpa bench` runs it under pytest: collected from the installed package with
    its own configuration, one case per size, mode and implementation."""
    ini = tmp_path / "pytest.ini"
    ini.write_text(run.PYTEST_INI)
    args, _ = run.parse_args(["--quick", "--device", "cpu"])
    argv = [a for a in run.pytest_arguments(args, str(tmp_path / "b.json"), str(ini)) if a != "-q"]
    # A fresh pytest: not a worker of this run's pytest-xdist (pytest-benchmark disables itself there)
    env = {k: v for k, v in os.environ.items()
           if k not in ("TRITON_INTERPRET", "VGPA_CUDA_EMULATION") and not k.startswith("PYTEST_")}
    out = subprocess.run([sys.executable, "-m", "pytest", *argv, "--collect-only", "-q"], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "test_reprojection_error[1x4x64x64-fwd-VideoGPA MVCS loop]" in out.stdout
    assert "test_normal_stability[1x4x48x64-fwd+bwd-vgpa[cpu]]" in out.stdout
    expected = sum(len(harness.cases(e, CPU, quick=True)) for e in ENTRIES)
    assert f"{expected} tests collected" in out.stdout
