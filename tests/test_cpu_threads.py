"""The C++ CPU backend gives the same bits whatever the number of threads: every op, forward and
backward, at sizes that split into many chunks, with 1, 2 and 3 threads (3 oversubscribes a
2-core machine, which reorders the chunks' completion). Each test names the ops it covers
(``pytest.mark.op``): tests/test_op_registry.py fails for a registered op that none covers."""

import dataclasses

import pytest
import torch
from geometry_inputs import random_cameras, random_depth

import vgpa

THREADS = (1, 2, 3)


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _tensors(value):
    """Every tensor of an op's result (a tensor, a tuple or a result dataclass), in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if dataclasses.is_dataclass(value):
        value = [getattr(value, f.name) for f in dataclasses.fields(value)]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


def _run_with_threads(make_inputs, call, grad_of):
    """Outputs and the gradients of grad_of(inputs) (the leaves) for every thread count."""
    runs = []
    for threads in THREADS:
        torch.set_num_threads(threads)
        inputs = make_inputs()
        out = call(*inputs)
        leaves = grad_of(inputs)
        grads = []
        if leaves:
            loss = sum((t.double() * torch.linspace(0.5, 1.5, t.numel(), dtype=torch.float64).view(t.shape))
                       .nansum() for t in _tensors(out) if t.is_floating_point() and t.requires_grad)
            grads = list(torch.autograd.grad(loss, leaves))
        runs.append([t.detach() for t in _tensors(out)] + grads)
    return runs


def _assert_same_bits(runs):
    for threads, run in zip(THREADS[1:], runs[1:]):
        assert len(run) == len(runs[0])
        for k, (got, want) in enumerate(zip(run, runs[0])):
            assert torch.equal(got.view(-1).view(torch.uint8) if got.is_floating_point() else got,
                               want.view(-1).view(torch.uint8) if want.is_floating_point() else want), (
                f"output {k} differs between 1 and {threads} threads")


def _scene(batch=2, frames=5, height=37, width=53, seed=0):
    g = torch.Generator().manual_seed(seed)
    intrinsics, extrinsics = random_cameras(batch, frames, height, width, g)
    depth = random_depth(batch, frames, height, width, g)
    image = torch.rand(batch, frames, 3, height, width, generator=g)
    return depth, intrinsics, extrinsics, image


@pytest.mark.op("reprojection_error")
@pytest.mark.parametrize("error", ["sq", "abs_rel", "log", "photometric"])
@pytest.mark.parametrize("validity", ["strict", "zeros"])
def test_reprojection_error(restore_threads, error, validity):
    def make():
        depth, k, e, image = _scene()
        return depth.requires_grad_(), k, e, image.requires_grad_()

    def call(depth, k, e, image):
        image = image if error == "photometric" else None
        return vgpa.reprojection_error(depth, k, e, [(0, 1), (1, 3), (4, 2)], image=image, error=error,
                                       validity=validity, occlusion_tol=0.1, return_map=True, backend="cpu")

    _assert_same_bits(_run_with_threads(make, call, lambda x: [x[0], x[3]] if error == "photometric" else [x[0]]))


@pytest.mark.op("normal_stability")
@pytest.mark.parametrize("warp", [True, False])
def test_normal_stability(restore_threads, warp):
    def make():
        depth, k, e, _ = _scene()
        return depth.requires_grad_(), k, e

    def call(depth, k, e):
        return vgpa.normal_stability(depth, k, e, None, warp=warp, occlusion_tol=0.1, return_map=True,
                                     backend="cpu")

    _assert_same_bits(_run_with_threads(make, call, lambda x: [x[0]]))


@pytest.mark.op("normal_stability", "reprojection_error")
def test_depth_to_normals_and_unproject_depth(restore_threads):
    def make():
        depth, k, e, _ = _scene()
        return depth.requires_grad_(), k, e

    def call(depth, k, e):
        return vgpa.depth_to_normals(depth, k, backend="cpu"), vgpa.unproject_depth(depth.detach(), k, e, backend="cpu")

    _assert_same_bits(_run_with_threads(make, call, lambda x: [x[0]]))


@pytest.mark.op("render_points")
def test_render_points_and_consistency(restore_threads):
    def make():
        depth, k, e, image = _scene(frames=4, height=61, width=67)
        depth = depth.nan_to_num(2.0, 2.0, 2.0).clamp_min(1.0)
        points = vgpa.unproject_depth(depth, k, e, backend="torch").reshape(2, -1, 3)
        colors = image.permute(0, 1, 3, 4, 2).reshape(2, -1, 3)
        # duplicate points: equal depths, decided by the lowest index
        points = torch.cat([points, points[:, ::7]], 1)
        colors = torch.cat([colors, 1 - colors[:, ::7]], 1)
        return points, colors, k, e, image

    def call(points, colors, k, e, image):
        return (vgpa.render_points(points, colors, k, e, 61, 67, backend="cpu"),
                vgpa.render_consistency(points, colors, k, e, image, backend="cpu"),
                vgpa.render_consistency(points, colors, k, e, image, masked=True, backend="cpu"))

    _assert_same_bits(_run_with_threads(make, call, lambda x: []))


@pytest.mark.op("epipolar")
def test_epipolar(restore_threads):
    def make():
        g = torch.Generator().manual_seed(1)
        counts = torch.tensor([300, 0, 1017, 9])
        F = torch.randn(4, 3, 3, generator=g, dtype=torch.float64).requires_grad_()
        x1 = (100 * torch.rand(int(counts.sum()), 2, generator=g, dtype=torch.float64)).requires_grad_()
        x2 = (100 * torch.rand(int(counts.sum()), 2, generator=g, dtype=torch.float64)).requires_grad_()
        hypotheses = torch.randn(4, 37, 3, 3, generator=g, dtype=torch.float64)
        return F, x1, x2, counts, hypotheses

    def call(F, x1, x2, counts, hypotheses):
        return (vgpa.sampson_distance(F, x1, x2, counts=counts, backend="cpu"),
                vgpa.ransac_inlier_count(hypotheses, x1.detach(), x2.detach(), threshold=3.0, counts=counts,
                                         backend="cpu"))

    _assert_same_bits(_run_with_threads(make, call, lambda x: list(x[:3])))


@pytest.mark.op("diffusion_dpo_loss")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_diffusion_dpo_loss(restore_threads, dtype):
    def make():
        g = torch.Generator().manual_seed(2)
        shape = (4, 5, 3, 41, 67)
        m, r, t = (torch.randn(shape, generator=g).to(dtype) for _ in range(3))
        weight = torch.rand(4, 5, 1, 41, 67, generator=g)
        return m.requires_grad_(), r, t, weight

    def call(m, r, t, weight):
        return vgpa.diffusion_dpo_loss(m, r, t, beta=5.0, weight=weight, segments=2, backend="cpu")

    _assert_same_bits(_run_with_threads(make, call, lambda x: [x[0]]))
