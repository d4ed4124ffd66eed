"""vgpa.reprojection_error, vgpa.metrics.mvcs and vgpa.unproject_depth on every backend against
the pure-PyTorch reference (forward and backward), against independent formulas
(grid_sample, explicit unprojection), and on ray-cast scenes of known geometry."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import KERNEL_BACKENDS
from geometry_inputs import random_cameras, random_depth, rotation

import vgpa
from vgpa.metrics import mvcs
from vgpa.reference import reprojection_error as ref

DEPTH_ERRORS = ["abs_rel", "abs", "sq", "log"]

# The Triton interpreter evaluates NaN/inf lanes of masked-out pixels with numpy, which warns.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


# --------------------------------------------------------------------------------------------
# Inputs


def inputs(batch=2, frames=3, height=7, width=9, seed=0, invalid=True, channels=0):
    g = torch.Generator().manual_seed(seed)
    depth = random_depth(batch, frames, height, width, g, invalid)
    intrinsics, extrinsics = random_cameras(batch, frames, height, width, g)
    image = torch.rand(batch, frames, channels, height, width, generator=g) if channels else None
    return depth, intrinsics, extrinsics, image


PAIRS = vgpa.window_pairs(3, 2, symmetric=True)  # every ordered pair of 3 frames


def run(depth, intrinsics, extrinsics, pairs, backend, device, image=None, map_weight=True, **kwargs):
    """Result and gradients of sum(error) + <weight, error_map> with respect to depth and image."""
    d = depth.detach().to(device).requires_grad_()
    im = None if image is None else image.detach().to(device).requires_grad_()
    out = vgpa.reprojection_error(d, intrinsics.to(device), extrinsics.to(device), pairs, image=im,
                                  return_map=True, backend=backend, **kwargs)
    loss = (out.error.double() * torch.linspace(1, 2, out.error.numel(), device=device).view(out.error.shape)).sum()
    if map_weight:
        weight = torch.linspace(0, 1, out.error_map[0, 0].numel(), device=device).view(out.error_map.shape[-2:])
        loss = loss + (out.error_map.double() * weight).sum()
    loss.backward()
    return out, d.grad, None if im is None else im.grad


def assert_close_results(actual, expected, rtol=1e-4, atol=1e-5):
    (out, gd, gi), (ref_out, ref_gd, ref_gi) = actual, expected
    torch.testing.assert_close(out.valid_count.cpu(), ref_out.valid_count.cpu())
    torch.testing.assert_close(out.valid_mask.cpu(), ref_out.valid_mask.cpu())
    torch.testing.assert_close(out.error.cpu(), ref_out.error.cpu(), rtol=rtol, atol=atol)
    torch.testing.assert_close(out.error_map.cpu(), ref_out.error_map.cpu(), rtol=rtol, atol=atol)
    for g, r in ((gd, ref_gd), (gi, ref_gi)):
        if r is None:
            assert g is None
            continue
        assert torch.isfinite(g).all()
        scale = r.abs().max().item() + 1e-6
        torch.testing.assert_close(g.cpu().double(), r.cpu().double(), rtol=rtol * 10, atol=atol * 10 * scale)


def _skip_unsupported(backend, device, dtype):
    if backend == "triton" and device.type == "cpu" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter has no bfloat16")


# --------------------------------------------------------------------------------------------
# Against the reference


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("validity", ["strict", "zeros"])
@pytest.mark.parametrize("error", DEPTH_ERRORS)
def test_matches_reference(backend, device, error, validity):
    depth, intrinsics, extrinsics, _ = inputs(seed=DEPTH_ERRORS.index(error))
    expected = run(depth, intrinsics, extrinsics, PAIRS, "torch", "cpu", error=error, validity=validity)
    assert expected[0].valid_count.min() > 0 and (expected[0].valid_mask.sum() < expected[0].valid_mask.numel())
    actual = run(depth, intrinsics, extrinsics, PAIRS, backend, device, error=error, validity=validity)
    assert_close_results(actual, expected)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("validity", ["strict", "zeros"])
def test_occlusion_matches_reference(backend, device, validity):
    depth, intrinsics, extrinsics, _ = inputs(seed=7)
    depth[:, :, 2:5, 3:6] = 1.0  # a near box that hides the background behind it
    plain = run(depth, intrinsics, extrinsics, PAIRS, "torch", "cpu", validity=validity)[0]
    expected = run(depth, intrinsics, extrinsics, PAIRS, "torch", "cpu", validity=validity, occlusion_tol=0.02)
    assert expected[0].valid_count.sum() < plain.valid_count.sum()  # the test excludes pixels
    actual = run(depth, intrinsics, extrinsics, PAIRS, backend, device, validity=validity, occlusion_tol=0.02)
    assert_close_results(actual, expected)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("validity", ["strict", "zeros"])
def test_photometric_matches_reference(backend, device, validity):
    depth, intrinsics, extrinsics, image = inputs(seed=3, channels=3)
    expected = run(depth, intrinsics, extrinsics, PAIRS, "torch", "cpu", image=image, validity=validity)
    actual = run(depth, intrinsics, extrinsics, PAIRS, backend, device, image=image, validity=validity)
    assert_close_results(actual, expected)
    assert actual[2].abs().sum() > 0 and actual[1].abs().sum() > 0  # both gradients flow


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes_match_reference(backend, device, dtype):
    _skip_unsupported(backend, device, dtype)
    depth, intrinsics, extrinsics, _ = inputs(seed=11)
    depth = depth.to(dtype)
    expected = run(depth, intrinsics, extrinsics, PAIRS, "torch", "cpu")
    actual = run(depth, intrinsics, extrinsics, PAIRS, backend, device)
    accumulate = torch.float64 if dtype == torch.float64 else torch.float32
    assert actual[0].error.dtype == accumulate and actual[1].dtype == dtype
    tol = dict(rtol=1e-9, atol=1e-11) if dtype == torch.float64 else dict(rtol=2e-3, atol=2e-3)
    assert_close_results(actual, expected, **tol)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_non_contiguous_inputs(backend, device):
    depth, intrinsics, extrinsics, image = inputs(batch=2, frames=4, seed=5, channels=2)
    pairs = torch.tensor([[0, 1], [3, 1], [2, 2]])
    # (B, T, 2, W, H) storage seen transposed, one of two planes; (B, 3, 3) intrinsics; (3, 4) poses
    junk = torch.full_like(depth, float("nan"))
    wide = torch.stack([junk, depth], 2).transpose(-1, -2).contiguous().transpose(-1, -2)[:, :, 1]
    image_view = image.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    k_shared = intrinsics[:, 0]
    poses = extrinsics[..., :3, :]
    assert not wide.is_contiguous() and not image_view.is_contiguous()
    for img in (None, image_view):
        expected = run(depth, k_shared[:, None].expand_as(intrinsics), extrinsics, pairs, "torch", "cpu", image=img)
        actual = run(wide, k_shared, poses, pairs, backend, device, image=img)
        assert_close_results(actual, expected)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_forward_is_bitwise_deterministic(backend, device):
    depth, intrinsics, extrinsics, _ = inputs(seed=2, height=40, width=50)
    first = vgpa.reprojection_error(depth.to(device), intrinsics.to(device), extrinsics.to(device), PAIRS,
                                    backend=backend)
    again = vgpa.reprojection_error(depth.to(device), intrinsics.to(device), extrinsics.to(device), PAIRS,
                                    backend=backend)
    assert torch.equal(first.error, again.error) and torch.equal(first.valid_count, again.valid_count)


def test_cpu_backward_is_bitwise_deterministic():
    depth, intrinsics, extrinsics, _ = inputs(seed=2, height=20, width=24)
    grads = [run(depth, intrinsics, extrinsics, PAIRS, "cpu", "cpu")[1] for _ in range(2)]
    assert torch.equal(grads[0], grads[1])


# blocks of 64 pixels with tails, width 1; (61, 67): the backward's groups of 2^15 (row, pixel)
# items end inside a row
@pytest.mark.parametrize("size", [(37, 53), (3, 1), (1, 70), (61, 67)])
def test_cpu_is_bitwise_independent_of_the_thread_count(size):
    depth, intrinsics, extrinsics, _ = inputs(seed=5, height=size[0], width=size[1])
    depth[0, 1, : size[0] // 2] = float("nan")  # rows without a valid pixel
    strided = depth.transpose(2, 3).contiguous().transpose(2, 3)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            got = []
            for d in (depth, strided):
                for validity in ("zeros", "strict"):
                    out, grad, _ = run(d, intrinsics, extrinsics, PAIRS, "cpu", "cpu", validity=validity,
                                       occlusion_tol=0.1)
                    got += [out.error, out.error_map, out.valid_mask, grad]
            results.append(got)
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


# --------------------------------------------------------------------------------------------
# Edge cases


@pytest.mark.parametrize("backend", KERNEL_BACKENDS + ["torch"])
def test_identical_frames_identity_pose_give_exactly_zero(backend, device):
    depth, intrinsics, _, _ = inputs(frames=2, seed=4, invalid=False)
    depth[:, 1] = depth[:, 0]
    intrinsics[:, 1] = intrinsics[:, 0]
    pose = torch.eye(4).repeat(2, 2, 1, 1)
    pose[..., :3, :3] = rotation(torch.tensor([0.3, -0.2, 0.1]))  # the same (non-identity) pose in both frames
    pose[..., :3, 3] = torch.tensor([0.5, -1.0, 2.0])
    for error in DEPTH_ERRORS:
        out = vgpa.reprojection_error(depth.to(device), intrinsics.to(device), pose.to(device), error=error,
                                      backend=backend)
        assert (out.error == 0).all(), (error, out.error)
        assert (out.valid_count == 7 * 9).all()


@pytest.mark.parametrize("backend", KERNEL_BACKENDS + ["torch"])
def test_pair_without_valid_pixel_gives_zero_and_count_zero(backend, device):
    depth, intrinsics, extrinsics, _ = inputs(seed=8)
    depth[0, 0] = float("nan")          # no valid source pixel for pair (0, j) of video 0
    depth[1, 1] = torch.tensor([0.0, -2.0, float("inf")]).repeat(21)[:63].view(7, 9)
    behind = extrinsics.clone()
    behind[1, 2, :3, :3] = rotation(torch.tensor([0.0, math.pi, 0.0]))  # frame 2 looks the other way
    d = depth.to(device).requires_grad_()
    out = vgpa.reprojection_error(d, intrinsics.to(device), behind.to(device), PAIRS, backend=backend)
    count, err = out.valid_count.cpu(), out.error.detach().cpu()
    assert torch.isfinite(err).all()
    for p, (i, j) in enumerate(PAIRS.tolist()):
        if i == 0:
            assert count[0, p] == 0 and err[0, p] == 0
        if 1 in (i, j) or 2 in (i, j):  # every point behind camera 2 or with no valid target
            assert count[1, p] == 0 and err[1, p] == 0
    assert count.sum() > 0
    out.error.mean().backward()
    assert torch.isfinite(d.grad).all()


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("size", [(1, 9), (7, 1), (1, 1)])
def test_single_row_or_column(backend, device, size):
    height, width = size
    depth, intrinsics, extrinsics, _ = inputs(height=height, width=width, seed=9, invalid=False)
    identity = torch.eye(4).repeat(2, 3, 1, 1)
    for validity in ("strict", "zeros"):
        for poses in (extrinsics, identity):
            expected = run(depth, intrinsics, poses, PAIRS, "torch", "cpu", validity=validity)
            actual = run(depth, intrinsics, poses, PAIRS, backend, device, validity=validity)
            assert_close_results(actual, expected)
    same = depth[:, :1].expand(-1, 3, -1, -1)
    out = vgpa.reprojection_error(same.to(device), intrinsics[:, :1].to(device).expand(-1, 3, -1, -1),
                                  identity.to(device), backend=backend)
    assert (out.error == 0).all() and (out.valid_count == height * width).all()


# --------------------------------------------------------------------------------------------
# Scenes of known geometry: a box in front of a slanted wall with a sphere, seen by a moving camera


def _hit_plane(origin, direction, normal, offset):
    t = (offset - origin @ normal) / (direction @ normal)
    return torch.where(t > 0, t, torch.full_like(t, math.inf))


def _hit_sphere(origin, direction, centre, radius):
    oc = origin - centre
    b = direction @ oc
    c = oc @ oc - radius ** 2
    a = (direction * direction).sum(-1)
    disc = b * b - a * c
    t = (-b - disc.clamp_min(0).sqrt()) / a
    return torch.where((disc > 0) & (t > 0), t, torch.full_like(t, math.inf))


def _hit_box(origin, direction, low, high):
    inv = 1 / direction
    t0, t1 = (low - origin) * inv, (high - origin) * inv
    near = torch.minimum(t0, t1).amax(-1)
    far = torch.maximum(t0, t1).amin(-1)
    return torch.where((far >= near) & (near > 0), near, torch.full_like(near, math.inf))


def render_scene(intrinsics, extrinsics, height, width):
    """Ray-cast z-depth (T, H, W) of the scene for cameras K (T, 3, 3) and E (T, 4, 4), float64."""
    u, v = torch.meshgrid(torch.arange(width, dtype=torch.float64), torch.arange(height, dtype=torch.float64),
                          indexing="xy")
    pix = torch.stack([u, v, torch.ones_like(u)], -1)
    depths = []
    for k, e in zip(intrinsics.double(), extrinsics.double()):
        rays_cam = pix @ torch.linalg.inv(k).T           # z component 1: ray parameter = z-depth
        rot, trans = e[:3, :3], e[:3, 3]
        direction = rays_cam @ rot                         # R^T d for each ray
        origin = -rot.T @ trans
        t = torch.stack([
            _hit_plane(origin, direction, torch.tensor([0.1, -0.05, 1.0], dtype=torch.float64), 9.0),
            _hit_sphere(origin, direction, torch.tensor([1.2, 0.3, 6.0], dtype=torch.float64), 1.0),
            _hit_box(origin, direction, torch.tensor([-1.8, -0.6, 4.5], dtype=torch.float64),
                     torch.tensor([-0.6, 0.9, 5.5], dtype=torch.float64)),
        ]).amin(0)
        depths.append(t)
    return torch.stack(depths)


def scene(frames=4, height=48, width=64):
    intrinsics = torch.tensor([[50.0, 0, (width - 1) / 2], [0, 52.0, (height - 1) / 2], [0, 0, 1]]).repeat(frames, 1, 1)
    extrinsics = torch.eye(4).repeat(frames, 1, 1)
    for t in range(frames):
        extrinsics[t, :3, :3] = rotation(torch.tensor([0.01 * t, -0.02 * t, 0.005 * t]))
        extrinsics[t, :3, 3] = torch.tensor([0.08 * t, -0.03 * t, 0.05 * t])
    depth = render_scene(intrinsics, extrinsics, height, width).float()
    assert torch.isfinite(depth).all()
    return depth[None], intrinsics[None], extrinsics[None]


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_known_scene_rigid_motion_is_consistent_and_deformation_is_not(backend):
    depth, intrinsics, extrinsics = scene()
    pairs = vgpa.window_pairs(4, 2, symmetric=True)
    rigid = vgpa.reprojection_error(depth, intrinsics, extrinsics, pairs, occlusion_tol=0.05, return_map=True,
                                    backend=backend)
    assert (rigid.valid_count > 0.5 * 48 * 64).all()
    # Smooth surfaces agree to the bilinear interpolation error; pixels on silhouettes mix the
    # near and the far surface, a few percent of them.
    per_pixel = rigid.error_map[rigid.valid_mask]
    assert per_pixel.median() < 1e-5 and per_pixel.quantile(0.9) < 1e-3, per_pixel.quantile(0.5)
    assert rigid.error.max() < 5e-3, rigid.error
    previous = rigid.error.mean().item()
    for strength in (0.02, 0.05, 0.1, 0.2):
        bent = depth.clone()
        ramp = torch.linspace(0, 1, 64)
        bent[:, 2] = depth[:, 2] * (1 + strength * ramp)  # frame 2 stretched non-rigidly
        err = vgpa.reprojection_error(bent, intrinsics, extrinsics, pairs, occlusion_tol=0.05, backend=backend).error
        touches = torch.tensor([2 in pair for pair in pairs.tolist()])
        assert torch.equal(err[0, ~touches], rigid.error[0, ~touches])  # pairs without frame 2 are untouched
        mean = err[0, touches].mean().item()
        assert mean > previous, (strength, mean, previous)
        previous = mean
    assert previous > 0.02


@pytest.mark.parametrize("backend", ["triton"])
def test_known_scene_on_triton_matches_reference(backend, device):
    depth, intrinsics, extrinsics = scene(frames=2, height=24, width=32)
    cpu = vgpa.reprojection_error(depth, intrinsics, extrinsics, backend="torch", occlusion_tol=0.05)
    tri = vgpa.reprojection_error(depth.to(device), intrinsics.to(device), extrinsics.to(device), backend="triton",
                                  occlusion_tol=0.05)
    assert torch.equal(cpu.valid_count, tri.valid_count.cpu())
    torch.testing.assert_close(cpu.error, tri.error.cpu(), rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------------------------
# MVCS and unprojection


def mvcs_grid_sample(depth, intrinsics, extrinsics):
    """MVCS written independently, one pair at a time with grid_sample (align_corners=True,
    zero padding) as a VideoGPA-style loop would. depth (T, H, W) of valid depths."""
    frames, height, width = depth.shape
    u, v = torch.meshgrid(torch.arange(width, dtype=torch.float64), torch.arange(height, dtype=torch.float64),
                          indexing="xy")
    pix = torch.stack([u, v, torch.ones_like(u)], -1)
    errors = []
    for t in range(frames - 1):
        k_i, k_j = intrinsics[t].double(), intrinsics[t + 1].double()
        rel = extrinsics[t + 1].double() @ torch.linalg.inv(extrinsics[t].double())
        cam = depth[t].double()[..., None] * (pix @ torch.linalg.inv(k_i).T)
        y = cam @ rel[:3, :3].T + rel[:3, 3]
        proj = y @ k_j.T
        zt = y[..., 2]
        ut, vt = proj[..., 0] / zt, proj[..., 1] / zt
        grid = torch.stack([2 * ut / (width - 1) - 1, 2 * vt / (height - 1) - 1], -1)[None]
        sampled = F.grid_sample(depth[t + 1].double()[None, None], grid, align_corners=True, padding_mode="zeros")[0, 0]
        mask = (zt > 0) & (ut >= 0) & (ut < width) & (vt >= 0) & (vt < height)
        if mask.any():
            errors.append(((zt - sampled)[mask] ** 2).mean())
    return torch.exp(-torch.stack(errors).mean())


@pytest.mark.parametrize("backend", ["cpu", "torch", "triton"])
def test_mvcs_matches_a_per_pair_grid_sample_loop(backend, device):
    depth, intrinsics, extrinsics, _ = inputs(batch=2, frames=3, height=12, width=14, seed=12, invalid=False)
    scores = mvcs(depth.to(device), intrinsics.to(device), extrinsics.to(device), backend=backend).cpu()
    assert scores.shape == (2,)
    for b in range(2):
        expected = mvcs_grid_sample(depth[b], intrinsics[b], extrinsics[b])
        torch.testing.assert_close(scores[b].double(), expected, rtol=1e-5, atol=1e-6)
        single = mvcs(depth[b].to(device), intrinsics[b].to(device), extrinsics[b].to(device), backend=backend)
        assert single.shape == () and torch.equal(single.cpu(), scores[b])
    assert (scores > 0).all() and (scores < 1).all()


def test_mvcs_of_static_scene_is_one():
    depth, intrinsics, _, _ = inputs(batch=1, frames=3, seed=1, invalid=False)
    depth[:] = depth[:, :1]
    same_k = intrinsics[:, :1].expand_as(intrinsics)
    assert mvcs(depth[0], same_k[0, 0], torch.eye(4).repeat(3, 1, 1)).item() == 1.0


@pytest.mark.parametrize("backend", KERNEL_BACKENDS + ["torch"])
def test_unproject_depth(backend, device):
    depth, intrinsics, extrinsics, _ = inputs(seed=6, invalid=False)
    view = torch.stack([depth, -depth], -1)[..., 0]  # non-contiguous
    d = view.to(device).requires_grad_()
    points = vgpa.unproject_depth(d, intrinsics.to(device), extrinsics[..., :3, :].to(device), backend=backend)
    assert points.shape == (2, 3, 7, 9, 3) and points.dtype == depth.dtype
    # independent: E^-1 applied to z K^-1 [u, v, 1]
    u, v = torch.meshgrid(torch.arange(9.0), torch.arange(7.0), indexing="xy")
    pix = torch.stack([u, v, torch.ones_like(u)], -1).double()
    cam = depth.double()[..., None] * torch.einsum("btij,hwj->bthwi", torch.linalg.inv(intrinsics.double()), pix)
    world = torch.einsum("btij,bthwj->bthwi", torch.linalg.inv(extrinsics.double())[..., :3, :],
                         torch.cat([cam, torch.ones_like(cam[..., :1])], -1))
    torch.testing.assert_close(points.detach().cpu().double(), world, rtol=1e-5, atol=1e-5)
    # round trip: projecting the points back into their own camera gives the pixel grid
    weights = torch.randn(points.shape, generator=torch.Generator().manual_seed(0)).to(device)
    (points * weights).sum().backward()
    d64 = depth.double().requires_grad_()
    cam64 = d64[..., None] * torch.einsum("btij,hwj->bthwi", torch.linalg.inv(intrinsics.double()), pix)
    world64 = torch.einsum("btij,bthwj->bthwi", torch.linalg.inv(extrinsics.double())[..., :3, :],
                           torch.cat([cam64, torch.ones_like(cam64[..., :1])], -1))
    (world64 * weights.cpu().double()).sum().backward()
    torch.testing.assert_close(d.grad.cpu().double(), d64.grad, rtol=1e-4, atol=1e-4)


def test_pair_helpers():
    assert vgpa.adjacent_pairs(4).tolist() == [[0, 1], [1, 2], [2, 3]]
    assert vgpa.adjacent_pairs(3, symmetric=True).tolist() == [[0, 1], [1, 2], [1, 0], [2, 1]]
    assert vgpa.window_pairs(4, 2).tolist() == [[0, 1], [0, 2], [1, 2], [1, 3], [2, 3]]
    assert vgpa.all_pairs(4).shape == (6, 2) and vgpa.all_pairs(4, symmetric=True).shape == (12, 2)
    assert vgpa.adjacent_pairs(1).shape == (0, 2)
    with pytest.raises(ValueError, match="window"):
        vgpa.window_pairs(4, 0)


# --------------------------------------------------------------------------------------------
# Bad input, torch.compile, large frames


def test_bad_inputs_raise_clear_errors():
    depth, intrinsics, extrinsics, image = inputs(channels=3)
    call = vgpa.reprojection_error
    with pytest.raises(ValueError, match=r"\(B, T, H, W\)"):
        call(depth[0], intrinsics, extrinsics)
    with pytest.raises(TypeError, match="dtype"):
        call(depth.to(torch.int32), intrinsics, extrinsics)
    with pytest.raises(ValueError, match="intrinsics"):
        call(depth, intrinsics[..., :2, :], extrinsics)
    with pytest.raises(ValueError, match="extrinsics"):
        call(depth, intrinsics, extrinsics[:, :2])
    with pytest.raises(ValueError, match="is on meta"):
        call(depth, intrinsics.to("meta"), extrinsics)
    with pytest.raises(ValueError, match=r"frame indices in \[0, 3\]"):
        call(depth, intrinsics, extrinsics, [[0, 1], [2, 3]])
    with pytest.raises(ValueError, match=r"frame indices in \[-1, 1\]"):
        call(depth, intrinsics, extrinsics, torch.tensor([[0, -1], [1, 0]]))
    with pytest.raises(ValueError, match=r"\(P, 2\)"):
        call(depth, intrinsics, extrinsics, torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="integer"):
        call(depth, intrinsics, extrinsics, torch.tensor([[0.0, 1.0]]))
    with pytest.raises(ValueError, match="unknown error"):
        call(depth, intrinsics, extrinsics, error="l1")
    with pytest.raises(ValueError, match="needs image"):
        call(depth, intrinsics, extrinsics, error="photometric")
    with pytest.raises(ValueError, match="photometric"):
        call(depth, intrinsics, extrinsics, image=image, error="sq")
    with pytest.raises(ValueError, match="validity"):
        call(depth, intrinsics, extrinsics, validity="border")
    with pytest.raises(ValueError, match="occlusion_tol"):
        call(depth, intrinsics, extrinsics, occlusion_tol=-0.1)
    with pytest.raises(TypeError, match="image has dtype"):
        call(depth, intrinsics, extrinsics, image=image.double())
    with pytest.raises(ValueError, match="image must be"):
        call(depth, intrinsics, extrinsics, image=image[..., :4])
    with pytest.raises(ValueError, match="T >= 2"):
        call(depth[:, :1], intrinsics[:, :1], extrinsics[:, :1])
    with pytest.raises(ValueError, match="unknown backend"):
        call(depth, intrinsics, extrinsics, backend="metal")
    singular = intrinsics.clone()
    singular[1, 2, 0, 0] = 0.0
    singular[1, 2, 0, 1] = 0.0
    for backend in ("cpu", "torch"):
        with pytest.raises(ValueError, match=r"intrinsics matrix K at index \(1, 2\) is singular"):
            call(depth, singular, extrinsics, PAIRS, backend=backend)
    with pytest.raises(ValueError, match="singular"):
        vgpa.unproject_depth(depth, singular, extrinsics, backend="cpu")
    with pytest.raises(ValueError, match="extrinsics matrix E"):
        call(depth, intrinsics, torch.zeros_like(extrinsics), backend="cpu")


def test_mvcs_errors_name_mvcs():
    depth, intrinsics, extrinsics, _ = inputs()
    with pytest.raises(TypeError, match="^mvcs: depth must be a floating-point tensor"):
        mvcs(depth.to(torch.int32), intrinsics, extrinsics)
    with pytest.raises(ValueError, match="^mvcs: intrinsics"):
        mvcs(depth, intrinsics[..., :2, :], extrinsics)
    with pytest.raises(ValueError, match="^mvcs: extrinsics"):
        mvcs(depth[0], intrinsics[0], extrinsics[0, :, :2])
    with pytest.raises(ValueError, match="^mvcs: the default consecutive pairs need T >= 2"):
        mvcs(depth[:, :1], intrinsics[:, :1], extrinsics[:, :1])
    with pytest.raises(ValueError, match="^mvcs: unknown backend"):
        mvcs(depth, intrinsics, extrinsics, backend="metal")


def test_torch_compile_fullgraph():
    depth, intrinsics, extrinsics, _ = inputs(seed=13)

    def score(d):
        out = vgpa.reprojection_error(d, intrinsics, extrinsics, PAIRS, occlusion_tol=0.1, backend="cpu")
        return (out.error * (out.valid_count > 0)).sum()

    compiled = torch.compile(score, fullgraph=True, backend="aot_eager")
    d1 = depth.clone().requires_grad_()
    d2 = depth.clone().requires_grad_()
    eager = score(d1)
    traced = compiled(d2)
    eager.backward()
    traced.backward()
    assert torch.equal(eager, traced) and torch.equal(d1.grad, d2.grad)


def test_large_video_batch_on_cpu():
    """4 videos x 49 frames x 480 x 720, every adjacent pair, in one call (int64 indexing)."""
    batch, frames, height, width = 4, 49, 480, 720
    depth = torch.full((batch, frames, height, width), 3.0)
    depth[3, 48, 479, 719] = 4.0  # the very last pixel: its pair must see it
    intrinsics = torch.tensor([[500.0, 0, 359.5], [0, 500.0, 239.5], [0, 0, 1]]).expand(batch, 3, 3)
    extrinsics = torch.eye(4).expand(batch, frames, 4, 4)
    out = vgpa.reprojection_error(depth, intrinsics, extrinsics, error="abs", backend="cpu")
    assert out.error.shape == (batch, frames - 1)
    assert (out.valid_count == height * width).all()
    expected = torch.zeros(batch, frames - 1)
    expected[3, 47] = 1.0 / (height * width)
    torch.testing.assert_close(out.error, expected, rtol=1e-6, atol=0)
