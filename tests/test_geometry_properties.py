"""Property-based tests of the geometry ops (hypothesis): random shapes (odd sizes, one-pixel
sides), layouts (transposed, sliced, expanded), dtypes, shares of invalid depth, camera motions
and pair sets. Every kernel backend matches the reference (masks and counts equal, renders bit
for bit, values and gradients to float tolerance), and every op is invariant to a global scale of
the scene (a power of two: exactly) and to a global translation (to float tolerance), as its
math says.

The examples are derandomized (the same ones on every run) and few per backend, so that the
suite stays well under a minute; the Triton interpreter, at about a second per call, gets the
fewest.
"""

import math
from dataclasses import dataclass

import pytest
import torch
from conftest import KERNEL_BACKENDS
from geometry_inputs import random_cameras, rotation
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vgpa

ALL_BACKENDS = [pytest.param("torch", id="torch")] + KERNEL_BACKENDS
EXAMPLES = {"torch": 25, "cpu": 25, "cuda": 25, "triton": 3}
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
LAYOUTS = ("contiguous", "transposed", "sliced", "expanded")
DEPTH_ERRORS = ("abs_rel", "abs", "sq", "log")

# The Triton interpreter evaluates NaN/inf lanes of masked-out pixels with numpy, which warns.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _examples(backend, scale=1.0):
    """Hypothesis settings with the example budget of ``backend``."""
    return settings(max_examples=max(1, int(EXAMPLES[backend] * scale)), deadline=None, derandomize=True,
                    database=None, suppress_health_check=list(HealthCheck))


@pytest.fixture
def dev(request, backend):
    """The device of ``backend``: the conftest fixture for the kernel backends, the CPU for torch."""
    return torch.device("cpu") if backend == "torch" else request.getfixturevalue("device")


def _dtypes(backend, device):
    if backend == "triton" and device.type == "cpu":  # the interpreter has no bfloat16
        return DTYPES[:3]
    return DTYPES


def _tolerance(dtype):
    if dtype == torch.float64:
        return dict(rtol=1e-9, atol=1e-11)
    if dtype == torch.float32:
        return dict(rtol=1e-4, atol=1e-5)
    return dict(rtol=2e-3, atol=2e-3)


# --------------------------------------------------------------------------------------------
# Scenes


@dataclass
class Scene:
    depth: torch.Tensor       # (B, T, H, W), the values the ops see
    intrinsics: torch.Tensor  # (B, T, 3, 3)
    extrinsics: torch.Tensor  # (B, T, 4, 4)
    pairs: torch.Tensor       # (P, 2)
    layout: str

    def leaf_and_view(self, device):
        """(leaf, view): the view holds ``depth`` in the scene's layout; gradients land in leaf."""
        depth = self.depth.to(device)
        if self.layout == "transposed":  # stored (B, T, W, H)
            leaf = depth.transpose(-1, -2).contiguous().requires_grad_()
            return leaf, leaf.transpose(-1, -2)
        if self.layout == "sliced":  # every other column of a wider tensor, past a junk frame
            b, t, h, w = depth.shape
            wide = torch.full((b, t + 1, h, 2 * w), float("nan"), dtype=depth.dtype, device=device)
            wide[:, 1:, :, ::2] = depth
            leaf = wide.requires_grad_()
            return leaf, leaf[:, 1:, :, ::2]
        if self.layout == "expanded":  # one video read by every batch entry (stride 0)
            leaf = depth[:1].clone().requires_grad_()
            return leaf, leaf.expand(depth.shape)
        leaf = depth.clone().requires_grad_()
        return leaf, leaf


def _draw_scene(data, dtypes, min_side=1, max_side=9):
    draw = data.draw
    batch, frames = draw(st.integers(1, 2), label="B"), draw(st.integers(1, 3), label="T")
    height, width = draw(st.integers(min_side, max_side), label="H"), draw(st.integers(min_side, max_side), label="W")
    dtype = draw(st.sampled_from(dtypes), label="dtype")
    layout = draw(st.sampled_from(LAYOUTS), label="layout")
    invalid = draw(st.sampled_from((0.0, 0.1, 0.5, 1.0)), label="invalid share")
    motion = draw(st.sampled_from((0.0, 0.02, 0.1, 0.3)), label="motion")
    pairs = draw(st.lists(st.tuples(st.integers(0, frames - 1), st.integers(0, frames - 1)), min_size=1, max_size=4),
                 label="pairs")
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1), label="seed"))
    depth = 2 + torch.rand(batch, frames, height, width, generator=g, dtype=torch.float64)
    bad = torch.rand(depth.shape, generator=g, dtype=torch.float64) < invalid
    kinds = torch.tensor([0.0, -1.0, math.nan, math.inf], dtype=torch.float64)
    depth = torch.where(bad, kinds[torch.randint(0, 4, depth.shape, generator=g)], depth)
    if layout == "expanded":
        depth = depth[:1].expand(depth.shape)
    intrinsics, extrinsics = random_cameras(batch, frames, height, width, g, motion=motion)
    return Scene(depth.to(dtype), intrinsics, extrinsics, torch.tensor(pairs), layout)


def _weights(shape, device):
    return torch.linspace(0.5, 1.5, math.prod(shape), dtype=torch.float64, device=device).view(shape)


def _assert_grads_close(got, want, tol):
    assert (got is None) == (want is None)
    if want is None:
        return
    got, want = got.cpu().double(), want.cpu().double()
    finite = torch.isfinite(want)
    assert torch.equal(torch.isfinite(got), finite)
    scale = want[finite].abs().max().item() if finite.any() else 0.0
    torch.testing.assert_close(got[finite], want[finite], rtol=tol["rtol"] * 10, atol=tol["atol"] * 10 * (1 + scale))


# --------------------------------------------------------------------------------------------
# Every backend against the reference


def _reprojection(scene, backend, device, image=None, **options):
    leaf, view = scene.leaf_and_view(device)
    im = None if image is None else image.to(device).requires_grad_()
    out = vgpa.reprojection_error(view, scene.intrinsics.to(device), scene.extrinsics.to(device),
                                  scene.pairs.to(device), image=im, return_map=True, backend=backend, **options)
    loss = (out.error.double() * _weights(out.error.shape, device)).sum() \
        + (out.error_map.double() * _weights(out.error_map.shape, device)).sum()
    loss.backward()
    return out, leaf.grad, None if im is None else im.grad


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_reprojection_error_matches_reference(backend, device):
    @_examples(backend)
    @given(data=st.data())
    def check(data):
        scene = _draw_scene(data, _dtypes(backend, device))
        photometric = data.draw(st.booleans(), label="photometric")
        options = dict(validity=data.draw(st.sampled_from(("strict", "zeros")), label="validity"),
                       occlusion_tol=data.draw(st.sampled_from((None, 0.05)), label="occlusion_tol"))
        image = None
        if photometric:
            channels = data.draw(st.integers(1, 3), label="C")
            image = torch.rand(scene.depth.shape[:2] + (channels,) + scene.depth.shape[2:],
                               generator=torch.Generator().manual_seed(channels)).to(scene.depth.dtype)
        else:
            options["error"] = data.draw(st.sampled_from(DEPTH_ERRORS), label="error")
        want, want_depth, want_image = _reprojection(scene, "torch", torch.device("cpu"), image, **options)
        got, got_depth, got_image = _reprojection(scene, backend, device, image, **options)
        tol = _tolerance(scene.depth.dtype)
        assert torch.equal(got.valid_count.cpu(), want.valid_count)
        assert torch.equal(got.valid_mask.cpu(), want.valid_mask)
        torch.testing.assert_close(got.error.detach().cpu(), want.error.detach(), **tol)
        torch.testing.assert_close(got.error_map.detach().cpu(), want.error_map.detach(), **tol)
        _assert_grads_close(got_depth, want_depth, tol)
        _assert_grads_close(got_image, want_image, tol)

    check()


def _stability(scene, backend, device, warp, occlusion_tol):
    leaf, view = scene.leaf_and_view(device)
    out = vgpa.normal_stability(view, scene.intrinsics.to(device), scene.extrinsics.to(device) if warp else None,
                                scene.pairs.to(device), warp=warp, occlusion_tol=occlusion_tol, return_map=True,
                                backend=backend)
    normals = vgpa.depth_to_normals(view, scene.intrinsics.to(device), backend=backend)
    loss = (out.error.double() * _weights(out.error.shape, device)).sum() \
        + (out.error_map.double() * _weights(out.error_map.shape, device)).sum() \
        + (normals.normals.double() * _weights(normals.normals.shape, device)).sum()
    loss.backward()
    return out, normals, leaf.grad


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_normal_stability_and_normals_match_reference(backend, device):
    @_examples(backend)
    @given(data=st.data())
    def check(data):
        scene = _draw_scene(data, _dtypes(backend, device))
        warp = data.draw(st.booleans(), label="warp")
        occlusion_tol = data.draw(st.sampled_from((None, 0.05)), label="occlusion_tol")
        want, want_normals, want_grad = _stability(scene, "torch", torch.device("cpu"), warp, occlusion_tol)
        got, got_normals, got_grad = _stability(scene, backend, device, warp, occlusion_tol)
        tol = _tolerance(scene.depth.dtype)
        assert torch.equal(got.valid_count.cpu(), want.valid_count)
        assert torch.equal(got.valid_mask.cpu(), want.valid_mask)
        assert torch.equal(got_normals.valid.cpu(), want_normals.valid)
        torch.testing.assert_close(got.error.detach().cpu(), want.error.detach(), **tol)
        torch.testing.assert_close(got.error_map.detach().cpu(), want.error_map.detach(), **tol)
        torch.testing.assert_close(got_normals.normals.detach().cpu(), want_normals.normals.detach(), **tol)
        _assert_grads_close(got_grad, want_grad, tol)

    check()


def _draw_cloud(data, videos, point_dtype, color_dtype, channels):
    """(points, colors, counts) in a drawn layout: packed or padded, stored transposed or sliced,
    with some NaN, inf, behind-camera and repeated (equal-depth) points, and empty videos."""
    counts = data.draw(st.lists(st.integers(0, 30), min_size=videos, max_size=videos), label="counts")
    padded = data.draw(st.booleans(), label="padded")
    storage = data.draw(st.sampled_from(("contiguous", "transposed", "sliced")), label="point storage")
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1), label="cloud seed"))
    total = max(counts) * videos if padded else sum(counts)
    xyz = torch.randn(total, 3, generator=g, dtype=torch.float64) * torch.tensor([0.6, 0.6, 1.5]) \
        + torch.tensor([0.0, 0.0, 3.0])
    if total:
        repeats = torch.randint(0, total, (total // 3,), generator=g)
        xyz[repeats] = xyz[torch.randint(0, total, (repeats.numel(),), generator=g)]  # equal depths: ties
        xyz[torch.randint(0, total, (2,), generator=g), torch.randint(0, 3, (2,), generator=g)] = math.nan
        xyz[torch.randint(0, total, (1,), generator=g), 2] = math.inf
    colors = torch.rand(total, channels, generator=g, dtype=torch.float64).to(color_dtype)
    xyz = xyz.to(point_dtype)
    if padded:
        xyz, colors = xyz.view(videos, max(counts), 3), colors.view(videos, max(counts), channels)
    if storage == "transposed":
        xyz = xyz.transpose(-1, -2).contiguous().transpose(-1, -2)
    elif storage == "sliced":
        xyz = torch.cat([xyz, torch.zeros_like(xyz)], -1)[..., :3]
    return xyz, colors, counts


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_render_and_consistency_match_reference(backend, device):
    @_examples(backend, 2)
    @given(data=st.data())
    def check(data):
        videos, frames = data.draw(st.integers(1, 2), label="B"), data.draw(st.integers(1, 2), label="T")
        height, width = data.draw(st.integers(1, 9), label="H"), data.draw(st.integers(1, 9), label="W")
        point_dtype = data.draw(st.sampled_from((torch.float32, torch.float64)), label="points dtype")
        color_dtype = data.draw(st.sampled_from(_dtypes(backend, device)), label="colours dtype")
        channels = data.draw(st.integers(1, 3), label="C")
        points, colors, counts = _draw_cloud(data, videos, point_dtype, color_dtype, channels)
        background = data.draw(st.sampled_from((0.0, 0.25, "per channel")), label="background")
        if background == "per channel":
            background = [0.1 * (c + 1) for c in range(channels)]
        g = torch.Generator().manual_seed(videos * 10 + frames)
        intrinsics, extrinsics = random_cameras(videos, frames, height, width, g, motion=0.1)
        args = (intrinsics.to(device), extrinsics.to(device))
        want = vgpa.render_points(points, colors, intrinsics, extrinsics, height, width, counts=counts,
                                  background=background, backend="torch")
        got = vgpa.render_points(points.to(device), colors.to(device), *args, height, width, counts=counts,
                                 background=background, backend=backend)
        for field in ("image", "depth", "coverage"):
            assert torch.equal(getattr(got, field).cpu(), getattr(want, field)), field
        masked = data.draw(st.booleans(), label="masked")
        frames_in = torch.rand(videos, frames, channels, height, width, generator=g).to(color_dtype)
        want = vgpa.render_consistency(points, colors, intrinsics, extrinsics, frames_in, counts=counts,
                                       masked=masked, background=background, backend="torch")
        got = vgpa.render_consistency(points.to(device), colors.to(device), *args, frames_in.to(device),
                                      counts=counts, masked=masked, background=background, backend=backend)
        assert torch.equal(got.coverage.cpu(), want.coverage)
        torch.testing.assert_close(got.mse.cpu(), want.mse, equal_nan=True, **_tolerance(torch.float32))

    check()


# --------------------------------------------------------------------------------------------
# Invariance to the scene's scale and position


def _rigid_scene(data, dtype):
    """A valid float64 scene with moving cameras (rotations of up to ~0.1 rad, translations of
    up to ~0.1 units), cast to ``dtype``."""
    draw = data.draw
    batch, frames = draw(st.integers(1, 2), label="B"), draw(st.integers(2, 3), label="T")
    height, width = draw(st.integers(3, 9), label="H"), draw(st.integers(3, 9), label="W")
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1), label="seed"))
    depth = (2 + torch.rand(batch, frames, height, width, generator=g, dtype=torch.float64)).to(dtype)
    intrinsics, _ = random_cameras(batch, frames, height, width, g)
    extrinsics = torch.eye(4, dtype=torch.float64).repeat(batch, frames, 1, 1)
    extrinsics[..., :3, :3] = rotation(0.05 * torch.randn(batch, frames, 3, generator=g, dtype=torch.float64))
    extrinsics[..., :3, 3] = 0.05 * torch.randn(batch, frames, 3, generator=g, dtype=torch.float64)
    return depth, intrinsics.double(), extrinsics, vgpa.all_pairs(frames, symmetric=True)


def _scaled(extrinsics, scale):
    out = extrinsics.clone()
    out[..., :3, 3] *= scale
    return out


def _moved(extrinsics, shift):
    """The cameras of a world moved by ``shift`` (X' = X + shift)."""
    move = torch.eye(4, dtype=torch.float64)
    move[:3, 3] = -shift
    return extrinsics @ move


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_scaling_the_scene_by_a_power_of_two_scales_results_exactly(backend, dev):
    """depth and camera translations times 2^k: every rounding step scales exactly, so the
    scale-free results (abs_rel, normals, renders, coverage) keep their bits and the others scale
    by 2^k (abs, depths, points) or 4^k (sq); log differences agree to rounding."""
    @_examples(backend, 0.4)
    @given(data=st.data())
    def check(data):
        dtype = data.draw(st.sampled_from((torch.float32, torch.float64)), label="dtype")
        depth, intrinsics, extrinsics, pairs = _rigid_scene(data, dtype)
        scale = 2.0 ** data.draw(st.integers(-6, 6), label="log2 scale")
        k = intrinsics.to(dev)
        near, far = (depth.to(dev), extrinsics.to(dev)), ((depth * scale).to(dev), _scaled(extrinsics, scale).to(dev))
        for error, power in (("abs_rel", 0), ("abs", 1), ("sq", 2), ("log", 0)):
            one = vgpa.reprojection_error(near[0], k, near[1], pairs, error=error, return_map=True, backend=backend)
            two = vgpa.reprojection_error(far[0], k, far[1], pairs, error=error, return_map=True, backend=backend)
            assert torch.equal(two.valid_mask, one.valid_mask) and one.valid_count.sum() > 0
            if error == "log":  # log(s z') - log(s d) is rounded differently from log z' - log d
                torch.testing.assert_close(two.error_map, one.error_map, **_tolerance(dtype))
            else:
                assert torch.equal(two.error_map, one.error_map * scale**power)
        one = vgpa.normal_stability(near[0], k, near[1], pairs, return_map=True, backend=backend)
        two = vgpa.normal_stability(far[0], k, far[1], pairs, return_map=True, backend=backend)
        assert torch.equal(two.valid_mask, one.valid_mask) and torch.equal(two.error_map, one.error_map)
        assert torch.equal(vgpa.depth_to_normals(far[0], k, backend=backend).normals,
                           vgpa.depth_to_normals(near[0], k, backend=backend).normals)
        colors = torch.rand(depth.shape[:2] + (3,) + depth.shape[2:], dtype=torch.float64).to(dtype)
        cloud_one = vgpa.point_cloud(depth, intrinsics, extrinsics, colors)
        cloud_two = vgpa.point_cloud(depth * scale, intrinsics, _scaled(extrinsics, scale), colors)
        assert torch.equal(cloud_two.points, cloud_one.points * scale)
        height, width = depth.shape[-2:]
        render_one = vgpa.render_points(cloud_one.points.to(dev), cloud_one.colors.to(dev), k, near[1], height, width,
                                        counts=cloud_one.counts, backend=backend)
        render_two = vgpa.render_points(cloud_two.points.to(dev), cloud_two.colors.to(dev), k, far[1], height, width,
                                        counts=cloud_two.counts, backend=backend)
        assert render_one.coverage.any()
        assert torch.equal(render_two.image, render_one.image) and torch.equal(render_two.coverage,
                                                                                render_one.coverage)
        assert torch.equal(render_two.depth, render_one.depth * scale)

    check()


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_moving_the_scene_leaves_results_unchanged(backend, dev):
    """World and cameras moved together by up to 1e4 units (float64): the same valid pixels and
    coverage, and values equal to float64 rounding of the moved inputs."""
    @_examples(backend, 0.4)
    @given(data=st.data())
    def check(data):
        depth, intrinsics, extrinsics, pairs = _rigid_scene(data, torch.float64)
        distance = 10.0 ** data.draw(st.integers(0, 4), label="log10 distance")
        direction = torch.tensor(data.draw(st.tuples(*[st.floats(-1, 1)] * 3), label="direction"),
                                 dtype=torch.float64)
        shift = distance * direction
        moved = _moved(extrinsics, shift)
        # Moving by d rounds the cameras' translations by about d * 2^-52: the tolerance grows with d.
        tol = dict(rtol=1e-9, atol=1e-12 * (1 + distance / 100))
        d, k = depth.to(dev), intrinsics.to(dev)
        for error in DEPTH_ERRORS:
            one = vgpa.reprojection_error(d, k, extrinsics.to(dev), pairs, error=error, return_map=True,
                                          backend=backend)
            two = vgpa.reprojection_error(d, k, moved.to(dev), pairs, error=error, return_map=True, backend=backend)
            assert torch.equal(two.valid_mask, one.valid_mask) and one.valid_count.sum() > 0
            torch.testing.assert_close(two.error_map, one.error_map, **tol)
        one = vgpa.normal_stability(d, k, extrinsics.to(dev), pairs, return_map=True, backend=backend)
        two = vgpa.normal_stability(d, k, moved.to(dev), pairs, return_map=True, backend=backend)
        assert torch.equal(two.valid_mask, one.valid_mask)
        torch.testing.assert_close(two.error_map, one.error_map, **tol)
        colors = torch.rand(depth.shape[:2] + (3,) + depth.shape[2:], dtype=torch.float64)
        cloud_one = vgpa.point_cloud(depth, intrinsics, extrinsics, colors)
        cloud_two = vgpa.point_cloud(depth, intrinsics, moved, colors)
        torch.testing.assert_close(cloud_two.points - shift, cloud_one.points, rtol=0, atol=1e-12 * (1 + distance))
        height, width = depth.shape[-2:]
        render_one = vgpa.render_points(cloud_one.points.to(dev), cloud_one.colors.to(dev), k,
                                        extrinsics.to(dev), height, width, counts=cloud_one.counts, backend=backend)
        render_two = vgpa.render_points(cloud_two.points.to(dev), cloud_two.colors.to(dev), k, moved.to(dev),
                                        height, width, counts=cloud_two.counts, backend=backend)
        assert torch.equal(render_two.coverage, render_one.coverage) and render_one.coverage.any()
        assert torch.equal(render_two.image, render_one.image)
        torch.testing.assert_close(render_two.depth, render_one.depth, rtol=1e-9, atol=1e-9)

    check()


# --------------------------------------------------------------------------------------------
# Empty dimensions


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("axis", range(4), ids=["B=0", "T=0", "H=0", "W=0"])
def test_an_empty_dimension_raises_the_same_error_on_every_backend(backend, dev, axis):
    shape = [2, 3, 5, 4]
    shape[axis] = 0
    depth = torch.ones(shape, device=dev)
    k = torch.eye(3, device=dev).expand(shape[0], shape[1], 3, 3)
    e = torch.eye(4, device=dev).expand(shape[0], shape[1], 4, 4)
    pairs = [[0, 1]]
    for op, call in (("reprojection_error", lambda: vgpa.reprojection_error(depth, k, e, pairs, backend=backend)),
                     ("normal_stability", lambda: vgpa.normal_stability(depth, k, e, pairs, backend=backend)),
                     ("depth_to_normals", lambda: vgpa.depth_to_normals(depth, k, backend=backend))):
        with pytest.raises(ValueError, match=rf"^{op}: depth must be a non-empty"):
            call()
    if backend != "torch":
        with pytest.raises(ValueError, match=r"^unproject_depth: depth must be a non-empty"):
            vgpa.unproject_depth(depth, k, e, backend=backend)
    if axis >= 2:  # an image side of 0
        size = dict(height=shape[2], width=shape[3])
        with pytest.raises(ValueError, match=r"^render_points: (height|width) must lie in \[1, "):
            vgpa.render_points(torch.ones(1, 3, device=dev), torch.ones(1, 3, device=dev), k[:1], e[:1],
                               backend=backend, **size)
