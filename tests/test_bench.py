"""The bench machinery (vgpa.bench), without timing anything: every entry's quick cases run and
agree with the reference, the statistics and GPU-timing helpers, the report's rows, tables, files
and plots, the command line. No assertion here depends on how fast anything ran."""

import importlib
import json
import math
import os
import re
import subprocess
import sys
from datetime import datetime, timezone

import pytest
import torch

import vgpa
from vgpa.bench import (bench_render_points, bench_reprojection_error, bench_score_dataset, bench_score_video, harness,
                        progress, report, run, timing)

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
    cases = harness.cases(entry, CPU, "quick")
    peers = {c.impl for c in cases if entry.impl(c.impl).peer}
    ours = {c.impl for c in cases if not entry.impl(c.impl).peer}
    assert entry.baseline in peers
    assert any(name.startswith("vgpa") for name in ours)
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


PIPELINES = ("score_video", "score_dataset")  # their outputs are scores per video, checked per implementation


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e.op not in PIPELINES], ids=lambda e: e.op)
def test_checks_reject_a_wrong_result(entry):
    size = entry.sizes(CPU, True)[0]
    inputs, expected = harness.inputs_for(entry, size, CPU)
    with pytest.raises(AssertionError, match="differs from the reference"):
        entry.agree(expected * 1.1 + 0.1, expected)


SCORES = {"consistency_score": 0.004, "3dcs": 0.004, "mvcs": 0.99, "normal_stability": 0.1,
          "reprojection_abs_rel": 0.01, "motion_norm": 0.02}


def test_pipeline_checks_reject_wrong_scores():
    """The score checks of the pipeline entries pass equal scores and fail a changed one, a
    missing key or a 3DCS beyond what VideoGPA's uint8 truncation allows."""
    check_vgpa, check_peer = bench_score_video.check_vgpa_scores, bench_score_video.check_peer_scores
    check_vgpa(dict(SCORES), SCORES, "v")
    check_peer({"3dcs": 0.004 + 1e-5, "mvcs": 0.99, "motion_norm": 0.02 + 5e-5}, SCORES, "v")  # within the bounds
    for key in SCORES:
        with pytest.raises(AssertionError, match="differs from the reference"):
            check_vgpa({**SCORES, key: SCORES[key] * 1.1 + 0.1}, SCORES, "v")
    with pytest.raises(AssertionError, match="keys"):
        check_vgpa({k: v for k, v in SCORES.items() if k != "mvcs"}, SCORES, "v")
    with pytest.raises(AssertionError, match="differs from the reference"):
        check_vgpa({**SCORES, "mvcs": None}, SCORES, "v")  # undefined where the reference has a score
    for key, wrong in (("3dcs", 0.006), ("mvcs", 0.985), ("motion_norm", 0.0205)):
        got = {"3dcs": 0.004, "mvcs": 0.99, "motion_norm": 0.02, key: wrong}
        with pytest.raises(AssertionError, match="differs from the reference"):
            check_peer(got, SCORES, "v")
    with pytest.raises(AssertionError, match="own layout"):
        bench_score_video.ENTRY.agree(SCORES, {"VGGT": SCORES})
    dataset_check = bench_score_dataset.ENTRY.agree
    dataset_check({"a": dict(SCORES)}, {"a": SCORES})
    with pytest.raises(AssertionError, match="scored videos"):
        dataset_check({"a": dict(SCORES)}, {"a": SCORES, "b": SCORES})


def test_dataset_videos_can_be_written_at_every_size():
    """mp4 (mp4v) stores even sides only: every full size's video files must have them."""
    for device, quick in ((torch.device(d), q) for d in ("cpu", "cuda") for q in (False, True)):
        for size in bench_score_dataset.ENTRY.sizes(device, quick):
            _, height, width = bench_score_dataset.source_shape(size.dims[3])
            assert height % 2 == 0 and width % 2 == 0, (size.dims, height, width)


def test_videogpa_unprojection_is_the_inverse_of_the_projection():
    """The peer's statement of Depth Anything 3's unprojection: each world point projects back to
    its pixel at its depth."""
    intrinsics = torch.tensor([[20.0, 0, 8], [0, 22.0, 6], [0, 0, 1]]).expand(2, 3, 3)
    angle = torch.tensor(0.1)
    rotation = torch.tensor([[angle.cos(), 0, angle.sin()], [0, 1, 0], [-angle.sin(), 0, angle.cos()]])
    extrinsics = torch.cat([rotation.expand(2, 3, 3), torch.tensor([[0.1, 0, 0], [0.3, -0.2, 0.5]])[..., None]], -1)
    depth = 2 + torch.rand(2, 12, 16, generator=torch.Generator().manual_seed(0))
    world = bench_score_video.videogpa_unproject(depth, intrinsics, extrinsics)
    camera = world @ extrinsics[:, None, :, :3].transpose(-1, -2) + extrinsics[:, None, None, :, 3]
    pixel = camera @ intrinsics[:, None].transpose(-1, -2)
    v, u = torch.meshgrid(torch.arange(12.0), torch.arange(16.0), indexing="ij")
    assert torch.allclose(camera[..., 2], depth, atol=1e-5)
    assert torch.allclose(pixel[..., 0] / pixel[..., 2], u.expand(2, -1, -1), atol=1e-4)
    assert torch.allclose(pixel[..., 1] / pixel[..., 2], v.expand(2, -1, -1), atol=1e-4)


def test_videogpa_cloud_keeps_finite_confident_points_and_the_top_share():
    points = torch.arange(24.0).reshape(1, 2, 4, 3)
    images = torch.full((1, 3, 2, 4), 0.5)
    conf = torch.tensor([[[5.0, 0.0, float("nan"), 2.0], [3.0, 3.0, 1e-6, 4.0]]])
    kept, colors = bench_score_video.videogpa_cloud(points, conf, images)
    assert kept[:, 0].tolist() == [0.0, 9.0, 12.0, 15.0, 21.0]  # confidence finite and > 1e-5
    assert torch.equal(colors, torch.full((5, 3), 127.5))
    kept, _ = bench_score_video.videogpa_cloud(points, conf, images, conf_threshold=50)  # k = 3: 5, 4, 3 (ties kept)
    assert kept[:, 0].tolist() == [0.0, 12.0, 15.0, 21.0]


def test_stage_breakdown_is_reported_per_stage_with_its_share(tmp_path):
    rows = [{"size": "s", "impl": "a", "_stages": {"x": 0.003, "y": 0.001}},
            {"size": "s", "impl": "b", "_stages": {"read": 0.004, "score": 0.002, "wall": 0.005}},
            {"size": "s", "impl": "c", "_stages": None}]
    stages = report.stage_rows(rows)
    assert [(r["impl"], r["stage"]) for r in stages] == [("a", "x"), ("a", "y"), ("b", "read"), ("b", "score"),
                                                         ("b", "wall")]
    assert [round(r["share"], 6) for r in stages] == [0.75, 0.25, 0.8, 0.4, 1.0]  # of the sum, or of the wall time
    assert stages[0]["median_ms"] == pytest.approx(3.0)
    harness_medians = harness.stage_medians(iter([{"x": 1.0}, {"x": 3.0, "y": 1.0}, {"x": 2.0}]).__next__, 3)
    assert harness_medians == {"x": 2.0, "y": 0.0}


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
    cases = harness.cases(bench_reprojection_error.ENTRY, CPU, "quick")
    names = {c.impl for c in cases}
    assert "torch.compile (reference)" not in names  # quick CPU runs do not compile
    assert not any(n.startswith(("vgpa[cuda]", "vgpa[triton]")) for n in names)  # test instruments, not CPU backends
    assert not any(c.graph for c in cases)
    full = {c.impl for c in harness.cases(bench_reprojection_error.ENTRY, CPU, "full")}
    assert "torch.compile (reference)" in full
    with_compile = {c.impl for c in harness.cases(bench_reprojection_error.ENTRY, CPU, "quick", compile_on_cpu=True)}
    assert "torch.compile (reference)" in with_compile
    with pytest.raises(ValueError, match="sweep"):
        harness.cases(bench_reprojection_error.ENTRY, CPU, "everything")


@pytest.mark.parametrize("device", [CPU, torch.device("cuda")], ids=["cpu", "cuda"])
def test_every_entry_has_one_default_size_among_its_full_sizes(device):
    """The default run times each op at one size of its full list (sizes() only reads the device's
    type, so the GPU's lists are checked here too): its rows are rows of a full run."""
    for entry in ENTRIES:
        full = entry.sizes(device, False)
        default = harness.sweep_sizes(entry, device, "default")
        assert len(default) == 1, f"{entry.op} on {device.type}: {[s.label for s in default]}"
        assert default[0] in full
        assert not any(s.default for s in entry.sizes(device, True)), f"{entry.op}: a quick size marked default"


def test_default_sizes_are_videogpas_settings_where_the_bench_has_them():
    labels = {e.op: harness.sweep_sizes(e, CPU, "default")[0].label for e in ENTRIES}
    assert labels["reprojection_error"] == labels["render_points"] == "1x10x518x518"  # 10 frames at VGGT's 518
    assert labels["diffusion_dpo_loss"] == "2x13x16x60x90xfloat32"  # CogVideoX latents of 49 x 480 x 720
    assert labels["epipolar"].startswith("4x10x")  # videos of 10 frames


def fake_impls(backends, **extra):
    return [harness.Impl(f"vgpa[{b}]", make=None, what="w", peer=False, backend=b, **extra) for b in backends]


def test_default_sweep_times_every_peer_against_vgpas_compiled_backend(monkeypatch):
    monkeypatch.setattr(harness, "runnable", lambda impl, device: impl.backend in (None, "cpu", "torch"))
    peers = [harness.Impl("loop", make=None, what="w"),
             harness.Impl("torch.compile (x)", make=None, what="w", compiled=True)]
    entry = harness.Entry(op="toy", x_label="n", sizes=None, make_inputs=None, reference=None, agree=None,
                          baseline="loop", impls=peers + fake_impls(("cuda", "cpu", "torch"))
                          + [harness.Impl("vgpa[cpu] split", make=None, what="w", peer=False, backend="cpu",
                                          full_only=True)])
    names = lambda *a, **k: [i.name for i in harness.sweep_impls(entry, *a, **k)]  # noqa: E731
    assert names(CPU, "default") == ["loop", "vgpa[cpu]"]
    assert names(CPU, "default", compile_on_cpu=True) == ["loop", "torch.compile (x)", "vgpa[cpu]"]
    assert names(CPU, "quick") == ["loop", "vgpa[cpu]", "vgpa[torch]", "vgpa[cpu] split"]
    assert names(CPU, "full") == ["loop", "torch.compile (x)", "vgpa[cpu]", "vgpa[torch]", "vgpa[cpu] split"]
    # where no compiled vgpa backend runs, the default keeps the pure-PyTorch one: never a run without vgpa
    monkeypatch.setattr(harness, "runnable", lambda impl, device: impl.backend in (None, "torch"))
    assert names(CPU, "default") == ["loop", "vgpa[torch]"]


def test_entry_rejects_a_comparison_with_something_not_a_peer():
    with pytest.raises(ValueError, match="not its peers"):
        harness.Entry(op="toy", x_label="n", sizes=None, make_inputs=None, reference=None, agree=None,
                      baseline="loop", impls=[harness.Impl("loop", make=None, what="w"),
                                              *fake_impls(("cpu",), versus=("kornia",))])


def test_cases_put_sizes_outermost_and_have_unique_ids():
    for entry in ENTRIES:
        cases = harness.cases(entry, CPU, "full")
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


def test_headline_reads_each_implementation_against_its_own_peers_at_the_default_size():
    benchmarks = [
        fake_benchmark("loop", True, 0.010, default_size=True),
        fake_benchmark("kornia", True, 0.004, default_size=True),
        fake_benchmark("cv2", True, 0.050, default_size=True),
        fake_benchmark("vgpa[cpu]", False, 0.002, default_size=True, versus=["loop", "kornia"]),
        fake_benchmark("vgpa[cpu] ransac", False, 0.025, default_size=True, versus=["cv2"]),
        fake_benchmark("sift", False, 0.1, default_size=True, versus=[]),
        fake_benchmark("loop", True, 0.040, size="1x8", x=400),  # not the default size: not in the headline
        fake_benchmark("vgpa[cpu]", False, 0.004, size="1x8", x=400),
    ]
    lines = report.headline(report.rows_from_benchmarks(benchmarks))
    assert [(h["vgpa"], h["size"], h["against its peers"]) for h in lines] == [
        ("vgpa[cpu]", "1x4", "5x loop, 2x kornia"),
        ("vgpa[cpu] ransac", "1x4", "2x cv2"),
        ("sift", "1x4", "no peer (for scale)")]
    assert lines[0]["median"] == "2 ms" and lines[2]["median"] == "100 ms"
    text = report.headline_table(report.rows_from_benchmarks(benchmarks))
    assert text.splitlines()[0].split() == ["op", "mode", "size", "vgpa", "median", "against", "its", "peers"]
    assert "5x loop, 2x kornia" in text


def test_headline_of_a_run_without_default_sizes_reads_every_size():
    """--quick sizes are not default sizes: its headline has every vgpa row, all compared with every peer."""
    lines = report.headline({"toy": toy_rows()})
    assert [(h["size"], h["against its peers"]) for h in lines] == [("1x4", "5x loop, 2x kornia"), ("1x8", "10x loop")]


def test_speedup_ticks_name_one_shape_each_and_do_not_overlap():
    pytest.importorskip("matplotlib")
    sizes = ["1x13x16x15x23xfloat32", "1x13x16x30x45xfloat32", "1x13x16x60x90xfloat32", "2x13x16x60x90xfloat32",
             "4x13x16x60x90xfloat32", "8x13x16x60x90xfloat32", "1x10x518x518", "4x49x480x720"]
    benchmarks = [fake_benchmark(impl, peer, t, size=size, x=i, mode=mode)
                  for i, size in enumerate(sizes) for mode in ("fwd", "fwd+bwd")
                  for impl, peer, t in (("loop", True, 0.01), ("kornia", True, 0.02), ("vgpa[cpu]", False, 0.001),
                                        ("vgpa[torch]", False, 0.004))]
    fig = report.speedup_figure("toy", report.rows_from_benchmarks(benchmarks)["toy"])
    fig.canvas.draw()
    bottom = fig.axes[1]  # two peers, two panels; the sizes are labelled under the last one
    labels = [t for t in bottom.get_xticklabels() if t.get_text()]
    assert [t.get_text() for t in labels] == [f"{s} {m}" for s in sizes for m in ("fwd", "fwd+bwd")]
    assert not any(t.get_text() for t in fig.axes[0].get_xticklabels())
    # Parallel labels rotated by angle a, anchored d pixels apart along the axis, are d * sin(a)
    # apart across their lines: they do not overlap when that exceeds the text's height.
    spacing = abs(bottom.transData.transform((1, 0))[0] - bottom.transData.transform((0, 0))[0])
    angle = math.radians(labels[0].get_rotation())
    height = labels[0].get_fontsize() * fig.dpi / 72
    assert 0 < angle < math.pi / 2 and spacing * math.sin(angle) > 1.5 * height
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_speedup_plot_draws_a_bar_only_against_the_implementations_own_peers():
    pytest.importorskip("matplotlib")
    benchmarks = [fake_benchmark("loop", True, 0.01), fake_benchmark("cv2", True, 0.05),
                  fake_benchmark("vgpa[cpu]", False, 0.002, versus=["loop"]),
                  fake_benchmark("vgpa[cpu] ransac", False, 0.02, versus=["cv2"])]
    fig = report.speedup_figure("toy", report.rows_from_benchmarks(benchmarks)["toy"])
    heights = [[bar.get_height() for bar in ax.patches] for ax in fig.axes[:2]]
    assert heights[0][0] == pytest.approx(5.0) and math.isnan(heights[0][1])  # vs loop: only vgpa[cpu]
    assert math.isnan(heights[1][0]) and heights[1][1] == pytest.approx(2.5)  # vs cv2: only the ransac row
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_roof_time():
    assert report.roof_ms(2e9, 100.0) == pytest.approx(20.0)


def test_device_label():
    assert report.device_label(CPU, threads=2) == "cpu-2-threads"


# --------------------------------------------------------------------------------------------
# Progress


class Stream:
    def __init__(self):
        self.text = ""

    def write(self, text):
        self.text += text

    def flush(self):
        pass


def fake_report(nodeid, when="call", outcome="passed", duration=0.5, longrepr=None, **properties):
    from types import SimpleNamespace

    text = longrepr if isinstance(longrepr, str) else ""
    return SimpleNamespace(nodeid=nodeid, when=when, failed=outcome == "failed", skipped=outcome == "skipped",
                           duration=duration, longrepr=longrepr, longreprtext=text,
                           user_properties=list(properties.items()))


def progress_plugin(loads, cores=2):
    ticks = iter(range(0, 10000, 65))  # the clock advances 65 s at each reading
    loads = iter(loads)
    plugin = progress.Progress(Stream(), clock=lambda: float(next(ticks)), loadavg=lambda: (next(loads), 0, 0),
                               cores=cores)
    case = harness.Case(harness.Size((1, 10, 518, 518), x=1), "fwd", "kornia")
    items = [SimpleItem("bench_toy.py::test_toy[a]", case), SimpleItem("bench_toy.py::test_toy[b]", None)]
    plugin.pytest_sessionstart(None)
    plugin.pytest_collection_finish(type("Session", (), {"items": items}))
    return plugin


class SimpleItem:
    def __init__(self, nodeid, case):
        self.nodeid = nodeid
        if case is not None:
            self.callspec = type("CallSpec", (), {"params": {"case": case}})
            self.module = type("Module", (), {"ENTRY": bench_reprojection_error.ENTRY})


def test_progress_line_per_case_with_count_elapsed_time_and_result():
    plugin = progress_plugin(loads=[0.5, 1.0])
    plugin.pytest_runtest_logstart("bench_toy.py::test_toy[a]", None)
    for when, duration in (("setup", 0.25), ("call", 1.5), ("teardown", 0.25)):
        props = {"median_s": 0.00861, "rounds": 59} if when == "call" else {}
        plugin.pytest_runtest_logreport(fake_report("bench_toy.py::test_toy[a]", when, duration=duration, **props))
    plugin.pytest_runtest_logfinish("bench_toy.py::test_toy[a]", None)
    plugin.pytest_runtest_logstart("bench_toy.py::test_toy[b]", None)
    plugin.pytest_runtest_logreport(fake_report("bench_toy.py::test_toy[b]", "call", "failed",
                                                longrepr="def f():\n>   agree()\nE   AssertionError: differs\n"))
    plugin.pytest_runtest_logfinish("bench_toy.py::test_toy[b]", None)
    assert plugin.stream.text.splitlines() == [
        "[1/2  1:05] reprojection_error fwd 1x10x518x518: kornia 8.61 ms (median of 59 rounds), 2 s in all",
        "[2/2  2:10] bench_toy.py::test_toy[b] FAILED: AssertionError: differs"]
    assert plugin.failures == [("bench_toy.py::test_toy[b]", "def f():\n>   agree()\nE   AssertionError: differs\n")]
    assert "--- FAILED: bench_toy.py::test_toy[b]" in plugin.failure_report()


def test_progress_reports_skips_and_setup_failures():
    plugin = progress_plugin(loads=[0.0, 0.0])
    plugin.pytest_runtest_logstart("bench_toy.py::test_toy[a]", None)
    plugin.pytest_runtest_logreport(fake_report("bench_toy.py::test_toy[a]", "setup", "skipped",
                                                longrepr=("f.py", 3, "Skipped: cannot be captured")))
    plugin.pytest_runtest_logfinish("bench_toy.py::test_toy[a]", None)
    plugin.pytest_runtest_logstart("bench_toy.py::test_toy[b]", None)
    plugin.pytest_runtest_logreport(fake_report("bench_toy.py::test_toy[b]", "setup", "failed",
                                                longrepr="E   OSError: x"))
    plugin.pytest_runtest_logfinish("bench_toy.py::test_toy[b]", None)
    lines = plugin.stream.text.splitlines()
    assert lines[0].endswith("kornia skipped: cannot be captured")
    assert lines[1].endswith("test_toy[b] FAILED in setup: OSError: x")


def test_progress_warns_once_when_the_load_exceeds_the_cores():
    plugin = progress_plugin(loads=[2.0, 2.5, 9.0], cores=2)
    for nodeid in ("bench_toy.py::test_toy[a]", "bench_toy.py::test_toy[b]", "bench_toy.py::test_toy[b]"):
        plugin.pytest_runtest_logstart(nodeid, None)
        plugin.pytest_runtest_logfinish(nodeid, None)
    warnings = [line for line in plugin.stream.text.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "load average (2.5) exceeds this machine's 2 cores" in warnings[0]
    assert plugin.stream.text.splitlines()[0].startswith("[1/2")  # at 2.0 (= the cores): no warning yet


def test_progress_without_lines_still_keeps_failures_and_warns():
    plugin = progress_plugin(loads=[5.0])
    plugin.lines = False
    plugin.pytest_runtest_logstart("bench_toy.py::test_toy[a]", None)
    plugin.pytest_runtest_logreport(fake_report("bench_toy.py::test_toy[a]", "call", "failed", longrepr="E   boom"))
    plugin.pytest_runtest_logfinish("bench_toy.py::test_toy[a]", None)
    assert plugin.stream.text.startswith("\nvgpa bench: warning") and "[1/2" not in plugin.stream.text
    assert len(plugin.failures) == 1


def test_durations_read_well():
    assert progress.elapsed_text(65) == "1:05" and progress.elapsed_text(3725) == "1:02:05"
    assert [progress.duration_text(t) for t in (7.3e-4, 0.00861, 4.04)] == ["730 us", "8.61 ms", "4.04 s"]


# --------------------------------------------------------------------------------------------
# Command line


def test_command_line_arguments():
    args, extra = run.parse_args(["--quick", "--ops", "render_points", "--threads", "2", "--", "--benchmark-save=x"])
    assert args.ops == ["render_points"] and extra == ["--benchmark-save=x"] and args.sweep == "quick"
    argv = run.pytest_arguments(args, "out.json", "pytest.ini")
    assert argv[0].endswith("bench_render_points.py")
    assert "--quick" in argv and "--benchmark-only" in argv and "--benchmark-json=out.json" in argv
    assert "--full" not in argv and "--bench-compile" not in argv and "-q" in argv
    assert argv[argv.index("--bench-threads") + 1] == "2"
    # pytest-benchmark's storage: the run's temporary folder, unless the user saves or compares runs
    assert f"--benchmark-storage=file://{os.path.abspath('.benchmarks')}" in argv
    saving = run.pytest_arguments(args, "out.json", "tmp/pytest.ini", ["--benchmark-save=x"])
    assert not any(a.startswith("--benchmark-storage") for a in saving)
    for bad in (["--ops", "nope"], ["--ops", ","], ["--threads", "0"], ["--rounds", "0"], ["--max-time", "0"],
                ["--stray"], ["--quick", "--full"], ["--out", "x", "--no-save"]):
        with pytest.raises(SystemExit):
            run.parse_args(bad)


def test_command_line_sweeps():
    default, _ = run.parse_args([])
    assert default.sweep == "default" and default.out is None and not default.verbose
    argv = run.pytest_arguments(default, "out.json", "pytest.ini")
    assert not {"--quick", "--full", "--bench-compile"} & set(argv)
    assert [os.path.basename(a) for a in argv[:len(run.OPS)]] == [f"bench_{op}.py" for op in run.OPS]
    full, _ = run.parse_args(["--full", "-v"])
    assert full.sweep == "full" and full.verbose
    argv = run.pytest_arguments(full, "out.json", "pytest.ini")
    assert "--full" in argv and "-v" in argv and "-q" not in argv
    compiled, _ = run.parse_args(["--compile", "--out", "bench/results"])
    assert compiled.out == "bench/results" and "--bench-compile" in run.pytest_arguments(compiled, "o", "i")


def test_a_default_run_says_what_it_left_out_and_how_to_run_it():
    args, _ = run.parse_args([])
    ran = sum(len(harness.cases(e, CPU, "default")) for e in ENTRIES)
    full = sum(len(harness.cases(e, CPU, "full")) for e in ENTRIES)
    note = run.sweep_note(args, CPU)
    assert f"({ran} cases)" in note and f"`vgpa bench --full` runs all {full} cases, {run.FULL_CPU_MINUTES}" in note
    assert "torch.compile peers (--compile adds them)" in note
    args, _ = run.parse_args(["--ops", "epipolar", "--compile"])
    note = run.sweep_note(args, CPU)
    assert "`vgpa bench --full --ops epipolar` runs all" in note and "torch.compile" not in note
    assert run.sweep_note(run.parse_args(["--full"])[0], CPU) is None
    assert run.sweep_note(run.parse_args(["--quick"])[0], CPU) is None


def test_a_benchmark_json_of_the_users_is_the_one_reported():
    assert run.user_json_path(["-x", "--benchmark-json=/tmp/a.json"]) == "/tmp/a.json"
    assert run.user_json_path(["--benchmark-json", "/tmp/b.json", "-x"]) == "/tmp/b.json"
    assert run.user_json_path(["--benchmark-save=x"]) is None


def test_results_go_to_a_new_folder_of_the_users_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert run.cache_root() == str(tmp_path / "xdg" / "vgpa" / "bench")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # not absolute: ignored, as the XDG rule says
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert run.cache_root() == str(tmp_path / "home" / ".cache" / "vgpa" / "bench")
    started = datetime(2025, 3, 4, 5, 6, 7, tzinfo=timezone.utc)
    first = run.new_run_folder(str(tmp_path / "root"), started, "cpu-2-threads")
    second = run.new_run_folder(str(tmp_path / "root"), started, "cpu-2-threads")
    assert os.path.basename(first) == "20250304T050607Z-cpu-2-threads"
    assert os.path.basename(second) == "20250304T050607Z-cpu-2-threads-2"
    assert os.path.isdir(first) and os.path.isdir(second)


def saved_run(tmp_path):
    data = {"benchmarks": [fake_benchmark("loop", True, 0.01), fake_benchmark("vgpa[cpu]", False, 0.002)]}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_report_from_a_saved_run(tmp_path, capsys):
    path = saved_run(tmp_path)
    assert run.main(["--from-json", path, "--out", str(tmp_path / "results"), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "x vs loop" in out and "Headline" in out and "5x loop" in out
    assert sorted(os.listdir(tmp_path / "results" / "cpu-2-threads")) == ["toy.csv", "toy.json"]
    assert f"Results (2 files): {tmp_path / 'results' / 'cpu-2-threads'}" in out


def test_default_output_is_outside_the_working_folder_and_new_per_run(tmp_path, monkeypatch, capsys):
    work, cache = tmp_path / "checkout", tmp_path / "cache"
    work.mkdir()
    (work / "bench" / "results" / "cpu-2-threads").mkdir(parents=True)
    (work / "bench" / "results" / "cpu-2-threads" / "toy.csv").write_text("committed\n")
    monkeypatch.chdir(work)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    path = saved_run(tmp_path)
    folders = []
    for _ in range(2):
        assert run.main(["--from-json", path, "--no-plots"]) == 0
        line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("Results")][-1]
        folders.append(line.split(": ", 1)[1])
    assert folders[0] != folders[1]
    for folder in folders:
        assert os.path.dirname(folder) == str(cache / "vgpa" / "bench")
        assert re.fullmatch(r"\d{8}T\d{6}Z-cpu-2-threads(-\d+)?", os.path.basename(folder))
        assert sorted(os.listdir(folder)) == ["toy.csv", "toy.json"]
    assert (work / "bench" / "results" / "cpu-2-threads" / "toy.csv").read_text() == "committed\n"
    assert sorted(str(p.relative_to(work)) for p in work.rglob("*")) == [
        "bench", "bench/results", "bench/results/cpu-2-threads", "bench/results/cpu-2-threads/toy.csv"]


def test_replot_draws_a_results_folder_again_from_its_json(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = saved_run(tmp_path)
    data = json.loads(open(path).read())
    data["benchmarks"] = [dict(b, extra_info=dict(b["extra_info"], op="epipolar")) for b in data["benchmarks"]]
    data["benchmarks"] += [fake_benchmark("vgpa[cpu]", False, 0.004, size="1x8", x=400, op="epipolar"),
                           fake_benchmark("loop", True, 0.040, size="1x8", x=400, op="epipolar")]
    open(path, "w").write(json.dumps(data))
    assert run.main(["--from-json", path, "--out", str(tmp_path), "--no-plots"]) == 0
    folder = tmp_path / "cpu-2-threads"
    assert sorted(os.listdir(folder)) == ["epipolar.csv", "epipolar.json"]
    rows = run.rows_of_results("epipolar", json.load(open(folder / "epipolar.json"))["rows"])
    assert {r["_x_label"] for r in rows} == {"matches in all pairs"}
    assert {r["impl"]: r["_versus"] for r in rows} == {"loop": None, "vgpa[cpu]": ["kornia loop"]}
    assert run.main(["--replot", str(folder)]) == 0
    assert sorted(os.listdir(folder)) == ["epipolar.csv", "epipolar.json", "epipolar_scaling.png",
                                          "epipolar_speedup.png"]
    assert run.main(["--replot", str(tmp_path)]) == 1


def test_no_save_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = saved_run(tmp_path)
    assert run.main(["--from-json", path, "--no-save"]) == 0
    assert "--no-save: nothing written" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ["run.json"]


def bench_environment():
    """A fresh pytest: not a worker of this run's pytest-xdist (pytest-benchmark disables itself
    there), without the test instruments' switches."""
    return {k: v for k, v in os.environ.items()
            if k not in ("TRITON_INTERPRET", "VGPA_CUDA_EMULATION") and not k.startswith("PYTEST_")}


@pytest.mark.parametrize("sweep", ["default", "full"])
def test_pytest_collects_the_entries_as_benchmarks(tmp_path, sweep):
    """The bench as `vgpa bench` runs it under pytest: collected from the installed package with
    its own configuration, one case per size, mode and implementation of the sweep."""
    ini = tmp_path / "pytest.ini"
    ini.write_text(run.PYTEST_INI)
    args, _ = run.parse_args(["--device", "cpu"] + (["--full"] if sweep == "full" else []))
    argv = [a for a in run.pytest_arguments(args, str(tmp_path / "b.json"), str(ini)) if a != "-q"]
    out = subprocess.run([sys.executable, "-m", "pytest", *argv, "--collect-only", "-q"], capture_output=True,
                         text=True, env=bench_environment(), timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    collected = [line.split("::", 1)[1] for line in out.stdout.splitlines() if "::" in line]
    expected = [f"test_{e.op}[{c.id}]" for e in ENTRIES for c in harness.cases(e, CPU, sweep)]
    assert collected == expected
    if sweep == "default":
        assert "test_render_points[1x10x518x518-fwd-VideoGPA batch_reproject]" in collected
    else:
        assert "test_reprojection_error[1x10x64x64-fwd-torch.compile (reference)]" in collected


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """`vgpa bench --quick --ops render_points` run from a folder of its own, with its own cache:
    (working folder, cache folder, the finished process). One op's smoke sizes: seconds."""
    work, cache = tmp_path_factory.mktemp("work"), tmp_path_factory.mktemp("cache")
    # the vgpa under test, wherever the subprocess starts
    root = os.path.dirname(os.path.dirname(os.path.abspath(vgpa.__file__)))
    paths = [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = dict(bench_environment(), XDG_CACHE_HOME=str(cache), PYTHONPATH=os.pathsep.join(paths))
    out = subprocess.run([sys.executable, "-m", "vgpa", "bench", "--quick", "--ops", "render_points", "--no-plots"],
                         cwd=work, capture_output=True, text=True, env=env, timeout=600)
    return work, cache, out


def test_a_run_shows_one_progress_line_per_case_and_no_pytest_output(quick_run):
    _, _, out = quick_run
    assert out.returncode == 0, out.stdout + out.stderr
    cases = harness.cases(bench_render_points.ENTRY, CPU, "quick")
    progress = [line for line in out.stderr.splitlines() if line.startswith("[")]
    assert len(progress) == len(cases)
    for n, (line, case) in enumerate(zip(progress, cases), 1):
        assert re.match(rf"\[ *{n}/{len(cases)} +\d+:\d\d\] render_points fwd 1x3x32x32: "
                        rf"{re.escape(case.impl)} [\d.]+ (us|ms|s) \(median of \d+ rounds\), [\d.]+ (us|ms|s) in all$",
                        line), line
    assert out.stderr.startswith("vgpa bench: quick run of render_points on cpu")
    # pytest's dots and summary, pytest-benchmark's tables and notes, warnings: none of them
    for noise in ("passed", "Name (time in", "Wrote benchmark data", "Warning", "....."):
        assert noise not in out.stdout + out.stderr
    assert "render_points on cpu-" in out.stdout and "Headline" in out.stdout


def test_a_run_writes_only_to_a_new_folder_of_the_cache(quick_run):
    work, cache, out = quick_run
    assert out.returncode == 0, out.stdout + out.stderr
    assert os.listdir(work) == []
    folders = os.listdir(cache / "vgpa" / "bench")
    assert len(folders) == 1 and re.fullmatch(r"\d{8}T\d{6}Z-cpu-\d+-threads", folders[0])
    assert sorted(os.listdir(cache / "vgpa" / "bench" / folders[0])) == ["render_points.csv", "render_points.json"]
    assert out.stdout.rstrip().endswith(f"Results (2 files): {cache / 'vgpa' / 'bench' / folders[0]}")
