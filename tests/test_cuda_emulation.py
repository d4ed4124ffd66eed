"""The host emulation of the CUDA execution model (csrc/emulation, vgpa._C_cuda_emu).

Three things are proven here: the emulation catches what it must (a race, a missing barrier, a
barrier some threads never reach, a shuffle naming an exited lane, launches beyond the hardware
limits; out-of-bounds reads in the sanitizer run), every deterministic CUDA kernel of vgpa gives
bitwise identical results whatever order its blocks and threads run in, and the emulated CUDA
kernels take the same discrete decisions as the C++ twin (masks, counts, z-buffer winners).
Every other test of backend "cuda" also runs through the emulation when there is no GPU. Each
test of vgpa's kernels names the ops it covers (``pytest.mark.op``): tests/test_op_registry.py
fails for a registered op that none covers.
"""

import os
import subprocess
import sys

import pytest
import torch

import vgpa
from vgpa import _backend

from geometry_inputs import random_cameras, random_depth

# (schedule, seed): blocks, threads and barrier releases ascending, descending, and in two
# seeded random orders.
SCHEDULES = [("ascending", 0), ("descending", 0), ("random", 1), ("random", 2)]
SANITIZER_RUN = os.environ.get("VGPA_SANITIZER_RUN") == "1"


@pytest.fixture
def emu():
    module = _backend.emulation_module()
    if module is None:
        if _backend.cuda_emulation_enabled():
            pytest.fail(f"VGPA_CUDA_EMULATION=1 but vgpa._C_cuda_emu is not importable: {_backend._load_emulation()[1]}")
        pytest.skip("the CUDA emulation is off (a GPU is present): the cuda tests run on the GPU")
    previous = module.schedule()
    yield module
    module.set_schedule(*previous)


def _selftest(emu, kernel, grid, block, inputs, outputs, dynamic_shared=0):
    emu.selftest_launch(kernel, grid, block, dynamic_shared, inputs.data_ptr(), outputs.data_ptr(), inputs.numel())
    return outputs


def _under_schedules(emu, run):
    """run() under every schedule of SCHEDULES: a list of its results (tensors or tuples)."""
    results = []
    for name, seed in SCHEDULES:
        emu.set_schedule(name, seed)
        out = run()
        results.append(tuple(out) if isinstance(out, (tuple, list)) else (out,))
    return results


def _bits(t):
    t = t.detach().contiguous()
    if t.dtype == torch.bool:
        return t.to(torch.uint8)
    return t.view({8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}[t.element_size()])


def _identical(results):
    """True when every schedule's results are bitwise equal to the first's (NaNs included)."""
    first = results[0]
    return all(len(r) == len(first) and all(torch.equal(_bits(a), _bits(b)) for a, b in zip(r, first))
               for r in results[1:])


# --------------------------------------------------------------------------------------------
# The emulation catches what it must


def test_block_reduction_is_exact_under_every_schedule(emu):
    values = torch.arange(1, 2 * 256 + 1, dtype=torch.float32)  # sums of integers: exact in float32
    results = _under_schedules(emu, lambda: _selftest(emu, "block_sum", (2, 1, 1), (256, 1, 1), values,
                                                      torch.zeros(2)))
    assert _identical(results)
    assert results[0][0].tolist() == [values[:256].sum().item(), values[256:].sum().item()]


def test_missing_barrier_is_caught_by_the_schedules(emu):
    values = torch.arange(1, 513, dtype=torch.float32)

    def run(kernel):
        return lambda: _selftest(emu, kernel, (2, 1, 1), (256, 1, 1), values, torch.zeros(512))

    with_barrier = _under_schedules(emu, run("neighbour_read"))
    assert _identical(with_barrier)
    assert torch.equal(with_barrier[0][0], values.view(2, 256).roll(-1, 1).view(-1))
    # The same kernel without its __syncthreads reads a neighbour that may not have written yet.
    assert not _identical(_under_schedules(emu, run("neighbour_read_without_barrier")))


def test_race_between_blocks_is_caught_by_the_schedules(emu):
    values = torch.arange(1, 9, dtype=torch.float32)
    racy = _under_schedules(emu, lambda: _selftest(emu, "unsynchronised_update", (8, 1, 1), (32, 1, 1), values,
                                                   torch.zeros(1)))
    assert not _identical(racy)
    atomic = _under_schedules(emu, lambda: _selftest(emu, "atomic_update", (1, 1, 1), (32, 1, 1), values,
                                                     torch.zeros(1)))
    assert _identical(atomic) and atomic[0][0].item() == values.sum().item()


def test_barrier_not_reached_by_every_thread_fails_instead_of_hanging(emu):
    with pytest.raises(RuntimeError, match=r"divergent_barrier.*__syncthreads\(\) reached by 32 of 64 threads"):
        _selftest(emu, "divergent_barrier", (1, 1, 1), (64, 1, 1), torch.ones(64), torch.zeros(64))


def test_shuffle_naming_an_exited_lane_fails(emu):
    with pytest.raises(RuntimeError, match=r"__shfl_down_sync\(mask 0xffffffff\) names lane 16 .* exited"):
        _selftest(emu, "shuffle_after_exit", (1, 1, 1), (32, 1, 1), torch.ones(32), torch.zeros(32))


@pytest.mark.parametrize("grid, block, shared, what", [
    ((1, 1, 1), (1025, 1, 1), 0, "1024 threads per block"),
    ((1, 1, 1), (1, 1, 65), 0, "1024 threads per block"),
    ((1, 65536, 1), (32, 1, 1), 0, "y and z <= 65535"),
    ((1, 1, 65536), (32, 1, 1), 0, "y and z <= 65535"),
    ((2 ** 31, 1, 1), (32, 1, 1), 0, "x <= 2\\^31 - 1"),
    ((1, 1, 1), (32, 1, 1), 48 * 1024 + 1, "48 KiB"),
    ((0, 1, 1), (32, 1, 1), 0, "dimension is 0"),
])
def test_launch_limits_raise_as_the_driver_does(emu, grid, block, shared, what):
    with pytest.raises(RuntimeError, match=f"invalid configuration argument.*{what}"):
        _selftest(emu, "atomic_update", grid, block, torch.ones(1), torch.zeros(1), shared)


def test_largest_legal_launch_runs(emu):
    out = _selftest(emu, "atomic_update", (1, 65535, 1), (1, 1, 1), torch.ones(1), torch.zeros(1), 48 * 1024)
    assert out.item() == 65535.0  # every block (blockIdx.x == 0) adds the first input once


@pytest.mark.skipif(not SANITIZER_RUN, reason="runs in the sanitizer pass (python -m vgpa_tools.gpu_proof sanitize; "
                                              "CI runs it), where the kernels are built with AddressSanitizer")
def test_out_of_bounds_read_is_caught():
    """A kernel reading one element past its input stops the process with an ASan report."""
    script = ("import torch; from vgpa import _backend; emu = _backend.emulation_module(); "
              "x = torch.ones(64); y = torch.zeros(64); "
              "emu.selftest_launch('read_past_end', (1, 1, 1), (64, 1, 1), 0, x.data_ptr(), y.data_ptr(), 64)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "heap-buffer-overflow" in done.stderr and "read_past_end" in done.stderr, done.stderr[-3000:]


# --------------------------------------------------------------------------------------------
# vgpa's kernels under every schedule


def _geometry_inputs(dtype=torch.float32, batch=2, frames=3, height=13, width=17, seed=0):
    g = torch.Generator().manual_seed(seed)
    k, e = random_cameras(batch, frames, height, width, g, motion=0.08)
    depth = random_depth(batch, frames, height, width, g).to(dtype)
    return depth, k.to(dtype), e.to(dtype)


@pytest.mark.op("reprojection_error")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reprojection_forward_is_bitwise_identical_under_every_schedule(emu, dtype):
    depth, k, e = _geometry_inputs(dtype)
    image = torch.rand(depth.shape[:2] + (3,) + depth.shape[2:], dtype=dtype)

    def run():
        out = vgpa.reprojection_error(depth, k, e, vgpa.all_pairs(3), occlusion_tol=0.05, return_map=True,
                                      backend="cuda")
        photo = vgpa.reprojection_error(depth, k, e, image=image, validity="zeros", backend="cuda")
        points = vgpa.unproject_depth(depth, k, e, backend="cuda")
        return out.error, out.valid_count, out.error_map, out.valid_mask, photo.error, points

    assert _identical(_under_schedules(emu, run))


@pytest.mark.op("normal_stability")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_normals_forward_and_gather_are_bitwise_identical_under_every_schedule(emu, dtype):
    depth, k, e = _geometry_inputs(dtype)
    upstream = torch.randn(depth.shape[:2] + (3,) + depth.shape[2:], dtype=dtype)

    def run():
        d = depth.clone().requires_grad_(True)
        normals = vgpa.depth_to_normals(d, k, backend="cuda")
        (grad,) = torch.autograd.grad((normals.normals * upstream).sum(), d)  # a gather: no atomics
        out = vgpa.normal_stability(depth, k, e, vgpa.all_pairs(3), occlusion_tol=0.1, return_map=True,
                                    backend="cuda")
        return normals.normals, normals.valid, grad, out.error, out.valid_count, out.error_map, out.valid_mask

    assert _identical(_under_schedules(emu, run))


@pytest.mark.op("render_points")
def test_render_is_bitwise_identical_under_every_schedule(emu):
    g = torch.Generator().manual_seed(3)
    points = torch.randn(2, 900, 3, generator=g, dtype=torch.float64)
    points[..., 2] = (points[..., 2] * 4).round() / 4 + 3  # quantised depths: many ties
    points = torch.cat([points, points[:, :300]], 1).float()  # exact duplicates: ties on the index
    colors = torch.rand(2, 1200, 3, generator=g)
    k, e = random_cameras(2, 3, 11, 13, g, motion=0.1)
    frames = torch.rand(2, 3, 3, 11, 13, generator=g)

    def run():
        r = vgpa.render_points(points, colors, k, e, 11, 13, backend="cuda")
        c = vgpa.render_consistency(points, colors, k, e, frames, backend="cuda")
        return r.image, r.depth, r.coverage, c.mse, c.coverage

    assert _identical(_under_schedules(emu, run))


@pytest.mark.op("diffusion_dpo_loss")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_dpo_loss_forward_and_backward_are_bitwise_identical_under_every_schedule(emu, dtype):
    g = torch.Generator().manual_seed(4)
    model, ref, target = (torch.randn(4, 5, 3, 9, 11, generator=g).to(dtype) for _ in range(3))
    weight = torch.rand(4, 5, 1, 9, 11, generator=g)

    def run():
        m = model.clone().requires_grad_(True)
        out = vgpa.diffusion_dpo_loss(m, ref, target, beta=50.0, weight=weight, segments=2, backend="cuda")
        (grad,) = torch.autograd.grad(out.loss, m)
        return out.loss, out.model_err, out.ref_err, grad

    assert _identical(_under_schedules(emu, run))


def _epipolar_inputs(dtype, seed=5):
    """Matches of three pairs (one empty; one above a block of matches) and 130 hypotheses per
    pair (above one tile), about their pair's F."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.tensor([300, 0, 7])
    x1 = torch.rand(307, 2, generator=g, dtype=torch.float64) * 64
    x2 = x1 + torch.randn(307, 2, generator=g, dtype=torch.float64)
    fundamental = torch.randn(3, 3, 3, generator=g, dtype=torch.float64)
    hypotheses = fundamental[:, None] + 0.05 * torch.randn(3, 130, 3, 3, generator=g, dtype=torch.float64)
    return tuple(t.to(dtype) for t in (fundamental, hypotheses, x1, x2)) + (counts,)


@pytest.mark.op("epipolar")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_epipolar_kernels_are_bitwise_identical_under_every_schedule(emu, dtype):
    fundamental, hypotheses, x1, x2, counts = _epipolar_inputs(dtype)

    def run():
        f = fundamental.clone().requires_grad_(True)
        a = x1.clone().requires_grad_(True)
        d = vgpa.sampson_distance(f, a, x2, counts=counts, backend="cuda")
        grad_f, grad_x1 = torch.autograd.grad(d.sum(), (f, a))  # fixed-order block sums: no atomics
        inliers = vgpa.ransac_inlier_count(hypotheses, x1, x2, counts=counts, threshold=2.0, backend="cuda")
        return d, grad_f, grad_x1, inliers

    assert _identical(_under_schedules(emu, run))


@pytest.mark.op("epipolar")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_epipolar_cuda_decides_as_the_cpu_twin(emu, dtype):
    fundamental, hypotheses, x1, x2, counts = _epipolar_inputs(dtype, seed=6)
    for threshold in (0.5, 2.0, 8.0):
        got, want = (vgpa.ransac_inlier_count(hypotheses, x1, x2, counts=counts, threshold=threshold, backend=b)
                     for b in ("cuda", "cpu"))
        assert torch.equal(got, want)
    got, want = (vgpa.sampson_distance(fundamental, x1, x2, counts=counts, squared=True, backend=b)
                 for b in ("cuda", "cpu"))
    assert torch.equal(_bits(got), _bits(want))


@pytest.mark.op("reprojection_error", "normal_stability")
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_atomic_backwards_agree_under_every_schedule_within_rounding(emu, dtype, tolerance):
    """The reprojection and normal-stability backwards scatter with float atomics: the order of
    the additions, and so the last bits, may change with the schedule, nothing more."""
    depth, k, e = _geometry_inputs(dtype)

    def run():
        d = depth.clone().requires_grad_(True)
        a = vgpa.reprojection_error(d, k, e, vgpa.all_pairs(3), backend="cuda").error.sum()
        b = vgpa.normal_stability(d, k, e, vgpa.all_pairs(3), backend="cuda").error.sum()
        return torch.autograd.grad(a + b, d)

    results = _under_schedules(emu, run)
    for (grad,) in results[1:]:
        torch.testing.assert_close(grad, results[0][0], rtol=tolerance, atol=tolerance)


# --------------------------------------------------------------------------------------------
# The emulated CUDA kernels decide as the C++ twin does


@pytest.mark.op("reprojection_error", "normal_stability", "render_points")
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_decides_as_the_cpu_twin(emu, seed, dtype):
    depth, k, e = _geometry_inputs(dtype, batch=2, frames=4, height=19, width=23, seed=seed)
    pairs = vgpa.all_pairs(4)
    for kwargs in (dict(), dict(validity="zeros", error="sq"), dict(occlusion_tol=0.02)):
        got, want = (vgpa.reprojection_error(depth, k, e, pairs, return_map=True, backend=b, **kwargs)
                     for b in ("cuda", "cpu"))
        assert torch.equal(got.valid_mask, want.valid_mask) and torch.equal(got.valid_count, want.valid_count)
    for kwargs in (dict(), dict(occlusion_tol=0.05), dict(warp=False)):
        got, want = (vgpa.normal_stability(depth, k, e, pairs, return_map=True, backend=b, **kwargs)
                     for b in ("cuda", "cpu"))
        assert torch.equal(got.valid_mask, want.valid_mask) and torch.equal(got.valid_count, want.valid_count)
    got, want = (vgpa.depth_to_normals(depth, k, backend=b) for b in ("cuda", "cpu"))
    assert torch.equal(got.valid, want.valid)
    # Re-rendering the scene's own cloud: every z-buffer winner, depth and colour bit for bit.
    colors = torch.rand(depth.shape[:2] + (3,) + depth.shape[2:], generator=torch.Generator().manual_seed(seed))
    cloud = vgpa.point_cloud(depth, k, e, colors)
    got, want = (vgpa.render_points(cloud, None, k, e, 19, 23, backend=b) for b in ("cuda", "cpu"))
    for a, b in zip((got.image, got.depth, got.coverage), (want.image, want.depth, want.coverage)):
        assert torch.equal(_bits(a), _bits(b))
