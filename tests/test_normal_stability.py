"""vgpa.depth_to_normals and vgpa.normal_stability on every backend against the pure-PyTorch
reference (forward and backward), on ray-cast scenes of known geometry (a tilted plane, a
sphere, rigid camera motion, a surface bent between frames), against kornia's
depth_to_normals, and on bad inputs and edge cases."""

import math

import pytest
import torch
from conftest import KERNEL_BACKENDS
from geometry_inputs import random_cameras, random_depth, rotation

import vgpa
from vgpa.torch_math import camera
from vgpa.reference import normal_stability as ref

# The Triton interpreter evaluates NaN/inf lanes of masked-out pixels with numpy, which warns.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

ALL_BACKENDS = KERNEL_BACKENDS + [pytest.param("torch", id="torch")]


# --------------------------------------------------------------------------------------------
# Inputs


def pinhole(focal, height, width, batch=1, frames=1):
    k = torch.tensor([[focal, 0.0, (width - 1) / 2], [0.0, focal, (height - 1) / 2], [0.0, 0.0, 1.0]])
    return k.expand(batch, frames, 3, 3).clone()


def random_inputs(batch=2, frames=3, height=7, width=9, dtype=torch.float32):
    """Fresh every run: a rough surface (2 + U[0, 1)) with ~6% invalid depths (0, < 0, NaN,
    inf), a general K (skew, off-centre) and poses near identity."""
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    depth = random_depth(batch, frames, height, width, g, invalid_share=16)
    intrinsics, extrinsics = random_cameras(batch, frames, height, width, g, focal=0.9)
    return depth.to(dtype), intrinsics, extrinsics


def rays(intrinsics, height, width):
    """K^-1 [u, v, 1] (..., H, W, 3) in float64, r_z = 1 for an upper-triangular K."""
    return camera.unproject(torch.ones(intrinsics.shape[:-2] + (height, width), dtype=torch.float64),
                              camera.inverse_intrinsics(intrinsics))


def plane_depth(r, normal, point):
    """z-depth of the plane through ``point`` with ``normal`` along rays r (..., H, W, 3)."""
    normal, point = torch.as_tensor(normal, dtype=torch.float64), torch.as_tensor(point, dtype=torch.float64)
    return (normal @ point) / (r @ normal)


def sphere_depth(r, centre, radius):
    """z-depth of the nearer intersection of rays r with a sphere (inf where they miss)."""
    centre = torch.as_tensor(centre, dtype=torch.float64)
    a, b, c = (r * r).sum(-1), -2 * (r @ centre), centre @ centre - radius**2
    disc = b * b - 4 * a * c
    t = (-b - disc.clamp_min(0).sqrt()) / (2 * a)
    return torch.where(disc > 0, t * r[..., 2], torch.full_like(t, float("inf")))


def pose(axis_angle, translation):
    e = torch.eye(4, dtype=torch.float64)
    e[:3, :3] = rotation(torch.as_tensor(axis_angle, dtype=torch.float64))
    e[:3, 3] = torch.as_tensor(translation, dtype=torch.float64)
    return e


def stability(depth, intrinsics, extrinsics, pairs, backend, device, map_weight=None, **kwargs):
    """Result and d/d depth of sum(error) + <map_weight, error_map>."""
    d = depth.detach().to(device).requires_grad_()
    e = None if extrinsics is None else extrinsics.to(device)
    out = vgpa.normal_stability(d, intrinsics.to(device), e, pairs, return_map=True, backend=backend, **kwargs)
    loss = out.error.sum()
    if map_weight is not None:
        loss = loss + (out.error_map * map_weight.to(device)).sum()
    (grad,) = torch.autograd.grad(loss, d, allow_unused=True)
    return out, grad


def reference_stability(depth, intrinsics, extrinsics, pairs, map_weight=None, warp=True, occlusion_tol=None):
    d = depth.detach().clone().requires_grad_()
    mean, count, error_map, mask = ref.normal_stability(d, intrinsics, extrinsics, torch.as_tensor(pairs), warp,
                                                        occlusion_tol)
    loss = mean.sum() + (0 if map_weight is None else (error_map * map_weight).sum())
    (grad,) = torch.autograd.grad(loss, d)
    return mean, count, error_map, mask, grad


@pytest.fixture(params=ALL_BACKENDS)
def backend(request):
    return request.param


# --------------------------------------------------------------------------------------------
# depth_to_normals


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_depth_to_normals_matches_reference(backend, device, dtype):
    depth, intrinsics, _ = random_inputs(dtype=dtype)
    k = intrinsics[:, :1]  # (B, 1, 3, 3) broadcast over the frames
    d = depth.to(device).requires_grad_()
    out = vgpa.depth_to_normals(d, k.to(device), backend=backend)
    weight = torch.randn(out.normals.shape, dtype=dtype)
    (grad,) = torch.autograd.grad((out.normals * weight.to(device)).sum(), d)

    d_ref = depth.clone().requires_grad_()
    kinv = camera.inverse_intrinsics(k.expand(depth.shape[:2] + (3, 3))).to(dtype)
    normals, valid = ref.depth_to_normals(d_ref, kinv)
    (grad_ref,) = torch.autograd.grad((normals * weight).sum(), d_ref)

    assert out.normals.shape == depth.shape[:2] + (3,) + depth.shape[2:] and out.normals.dtype == dtype
    assert torch.equal(out.valid.cpu(), valid)
    assert 0 < int(valid.sum()) < valid.numel()  # some pixels of each kind
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(out.normals.cpu(), normals, atol=tol, rtol=0)
    assert torch.equal(out.normals.cpu()[~valid.unsqueeze(2).expand_as(normals)].abs().sum(), torch.tensor(0, dtype=dtype))
    torch.testing.assert_close(grad.cpu(), grad_ref, atol=50 * tol, rtol=50 * tol)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_depth_to_normals_reference_gradcheck():
    depth, intrinsics, _ = random_inputs(1, 1, 5, 6, dtype=torch.float64)
    depth = depth.abs().nan_to_num(2.0, 3.0).clamp_min(1.0)  # finite differences need valid depths
    kinv = camera.inverse_intrinsics(intrinsics)
    assert torch.autograd.gradcheck(lambda d: ref.depth_to_normals(d, kinv)[0], depth.requires_grad_())


def test_depth_to_normals_gradcheck_cpu_backend():
    depth, intrinsics, _ = random_inputs(1, 2, 5, 6, dtype=torch.float64)
    depth = depth.abs().nan_to_num(2.0, 3.0).clamp_min(1.0)
    assert torch.autograd.gradcheck(lambda d: vgpa.depth_to_normals(d, intrinsics, backend="cpu").normals,
                                    depth.requires_grad_())


def test_tilted_plane_normals_are_exact(backend, device):
    height, width = 12, 14
    k = pinhole(16.0, height, width)
    normal = torch.tensor([0.3, -0.2, -1.0], dtype=torch.float64)
    normal = normal / normal.norm()  # faces the camera: normal . X < 0 on the plane
    depth = plane_depth(rays(k, height, width), normal, [0.2, 0.1, 4.0]).float()
    out = vgpa.depth_to_normals(depth.to(device), k.to(device), backend=backend)
    interior = torch.zeros(height, width, dtype=torch.bool)
    interior[1:-1, 1:-1] = True
    assert torch.equal(out.valid.cpu()[0, 0], interior)
    n = out.normals.cpu()[0, 0].permute(1, 2, 0)[interior]
    torch.testing.assert_close(n, normal.float().expand_as(n), atol=2e-6, rtol=0)


def test_sphere_normals_follow_the_radius(backend, device):
    height, width = 20, 20
    k = pinhole(40.0, height, width)
    r = rays(k, height, width)
    centre, radius = torch.tensor([0.3, -0.2, 8.0], dtype=torch.float64), 4.0
    depth = sphere_depth(r, centre, radius)
    assert torch.isfinite(depth).all()  # the sphere fills the view
    out = vgpa.depth_to_normals(depth.float().to(device), k.to(device), backend=backend)
    assert out.valid.cpu()[0, 0, 1:-1, 1:-1].all()
    expected = (depth[0, 0, ..., None] * r[0, 0] - centre) / radius  # outward, toward the camera
    n = out.normals.cpu()[0, 0].permute(1, 2, 0)[1:-1, 1:-1].double()
    cosine = (n * expected[1:-1, 1:-1]).sum(-1)
    assert (1 - cosine).max() < 1e-4  # central differences: O(h^2) on a smooth surface
    assert (n * (depth[0, 0, 1:-1, 1:-1, None] * r[0, 0, 1:-1, 1:-1])).sum(-1).max() < 0  # n . X < 0


def test_agrees_with_kornia_in_smooth_interiors():
    """kornia's normal is d/dx x d/dy of a Sobel-smoothed point cloud, pointing away from the camera,
    with replicated borders; vgpa's points toward the camera and has no normal on the border."""
    kornia_depth = pytest.importorskip("kornia.geometry.depth")
    height, width = 20, 22
    k = pinhole(40.0, height, width)
    r = rays(k, height, width)
    plane = plane_depth(r, torch.tensor([0.3, -0.2, -1.0]) / math.sqrt(1.13), [0.2, 0.1, 4.0])
    sphere = sphere_depth(r, [0.3, -0.2, 8.0], 4.0)
    depth = torch.cat([plane, sphere], 0).float()  # (2, 1, H, W)
    k2 = k.expand(2, 1, 3, 3)
    ours = vgpa.depth_to_normals(depth, k2, backend="cpu")
    theirs = kornia_depth.depth_to_normals(depth, k2[:, 0])  # (2, 3, H, W)
    interior = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    ours_n = ours.normals[:, 0]
    # Planes: every difference lies in the plane, so both are exact (up to the sign).
    torch.testing.assert_close(ours_n[0][interior[1:]], -theirs[0][interior[1:]], atol=1e-5, rtol=0)
    # Curved: the Sobel average and the central difference agree to O(h^2).
    cosine = -(ours_n[1] * theirs[1]).sum(0)[1:-1, 1:-1]
    assert (1 - cosine).max() < 1e-3
    # Borders: kornia extrapolates (replicate padding), vgpa has no normal there.
    assert not ours.valid[:, 0, 0].any() and not ours.valid[:, 0, :, -1].any()
    assert torch.equal(ours_n[:, :, 0], torch.zeros_like(ours_n[:, :, 0]))
    assert (theirs[:, :, 0].norm(dim=1) > 0.99).all()
    # Invalid depth: kornia's 3x3 neighbourhood turns NaN, vgpa marks the pixel and its 4 neighbours.
    holed = depth.clone()
    holed[:, :, 8, 9] = float("nan")
    theirs_holed = kornia_depth.depth_to_normals(holed, k2[:, 0])
    ours_holed = vgpa.depth_to_normals(holed, k2, backend="cpu")
    assert torch.isnan(theirs_holed[:, :, 7:10, 8:11]).all()
    assert not ours_holed.valid[:, 0, 8, 8:11].any() and not ours_holed.valid[:, 0, 7:10, 9].any()
    assert ours_holed.valid[:, 0, 7, 8].all() and torch.isfinite(ours_holed.normals).all()


# --------------------------------------------------------------------------------------------
# normal_stability against the reference


@pytest.mark.parametrize("warp,occlusion_tol", [(True, None), (True, 0.05), (False, None), (False, 0.1)])
def test_stability_matches_reference(backend, device, warp, occlusion_tol):
    depth, intrinsics, extrinsics = random_inputs()
    pairs = vgpa.window_pairs(3, 2, symmetric=True)  # every ordered pair
    weight = torch.rand(2, pairs.shape[0], 7, 9)
    out, grad = stability(depth, intrinsics, extrinsics, pairs, backend, device, weight, warp=warp,
                          occlusion_tol=occlusion_tol)
    mean, count, error_map, mask, grad_ref = reference_stability(depth, intrinsics, extrinsics, pairs, weight, warp,
                                                                 occlusion_tol)
    assert torch.equal(out.valid_mask.cpu(), mask)
    assert torch.equal(out.valid_count.cpu(), count) and count.dtype == torch.int64
    assert 0 < int(count.sum()) < mask.numel()
    torch.testing.assert_close(out.error.cpu(), mean, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.error_map.cpu(), error_map, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grad.cpu(), grad_ref, atol=1e-5, rtol=1e-4)
    assert grad.abs().sum() > 0


def test_stability_float64_and_default_pairs(backend, device):
    depth, intrinsics, extrinsics = random_inputs(1, 3, 6, 7, dtype=torch.float64)
    out, grad = stability(depth, intrinsics[:, 0], extrinsics[:, :, :3], None, backend, device)  # (B, 3, 3) K, 3x4 E
    shared = intrinsics[:, :1].expand_as(intrinsics)
    mean, count, _, _, grad_ref = reference_stability(depth, shared, extrinsics, vgpa.adjacent_pairs(3))
    assert out.error.dtype == torch.float64 and out.error.shape == (1, 2)
    assert torch.equal(out.valid_count.cpu(), count)
    torch.testing.assert_close(out.error.cpu(), mean, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(grad.cpu(), grad_ref, atol=1e-10, rtol=1e-9)


def test_stability_half_precision_cpu():
    depth, intrinsics, extrinsics = random_inputs(1, 2, 6, 7)
    for dtype in (torch.float16, torch.bfloat16):
        low = depth.to(dtype)
        out, grad = stability(low, intrinsics, extrinsics, [(0, 1), (1, 0)], "cpu", "cpu")
        mean, count, _, _, grad_ref = reference_stability(low, intrinsics, extrinsics, [(0, 1), (1, 0)])
        assert out.error.dtype == torch.float32 and grad.dtype == dtype
        assert torch.equal(out.valid_count, count)
        torch.testing.assert_close(out.error, mean, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(grad.float(), grad_ref.float(), atol=1e-2, rtol=1e-2)


def test_stability_gradcheck_cpu_backend():
    depth, intrinsics, extrinsics = random_inputs(1, 2, 5, 6, dtype=torch.float64)
    depth = depth.abs().nan_to_num(2.0, 3.0).clamp_min(1.0)

    def f(d):
        out = vgpa.normal_stability(d, intrinsics, extrinsics, [(0, 1), (1, 0)], return_map=True, backend="cpu")
        return out.error, out.error_map

    # Finite differences may move a warped pixel across a rounding boundary; small steps stay put.
    assert torch.autograd.gradcheck(f, depth.requires_grad_(), eps=1e-7, atol=1e-5)


def test_forward_is_bitwise_deterministic(backend, device):
    depth, intrinsics, extrinsics = random_inputs()
    pairs = vgpa.window_pairs(3, 2, symmetric=True)
    first, grad_first = stability(depth, intrinsics, extrinsics, pairs, backend, device)
    second, grad_second = stability(depth, intrinsics, extrinsics, pairs, backend, device)
    assert torch.equal(first.error, second.error) and torch.equal(first.error_map, second.error_map)
    if backend in ("cpu", "torch"):  # cuda and triton scatter the gradient with atomics
        assert torch.equal(grad_first, grad_second)


# --------------------------------------------------------------------------------------------
# normal_stability on scenes of known geometry


def _two_views(depth_fn, height, width, focal, motion):
    """Depth of one scene seen from the identity camera and from pose ``motion``, (1, 2, H, W)."""
    k = pinhole(focal, height, width, frames=2)
    r = rays(k[:, :1], height, width)[0, 0]
    rot, t = motion[:3, :3], motion[:3, 3]
    # In camera 1 the scene's points are R X + t: ray-cast the moved scene.
    first = depth_fn(r, torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    second = depth_fn(r, rot, t)
    extrinsics = torch.stack([torch.eye(4, dtype=torch.float64), motion]).float()[None]
    return torch.stack([first, second])[None].float(), k, extrinsics


def test_rigid_motion_of_a_plane_is_stable(backend, device):
    normal = torch.tensor([0.2, -0.3, -1.0], dtype=torch.float64)
    normal = normal / normal.norm()
    point = torch.tensor([0.0, 0.0, 5.0], dtype=torch.float64)
    motion = pose([0.05, 0.15, -0.05], [0.2, -0.1, 0.1])  # about 9 degrees

    def plane(r, rot, t):
        return plane_depth(r, rot @ normal, rot @ point + t)

    depth, k, extrinsics = _two_views(plane, 14, 16, 18.0, motion)
    out, _ = stability(depth, k, extrinsics, [(0, 1), (1, 0)], backend, device)
    assert (out.valid_count > 100).all()
    assert out.error.max() < 1e-5  # the exact normals agree once rotated by R_ji
    # Without the rotation the same frames disagree by 1 - cos(9 degrees): the check has teeth.
    static, _ = stability(depth, k, extrinsics, [(0, 1)], backend, device, warp=False)
    assert static.error.min() > 5e-3


def test_rigid_motion_of_a_sphere_is_stable(backend, device):
    centre, radius = torch.tensor([0.2, -0.1, 8.0], dtype=torch.float64), 4.0
    motion = pose([0.0, 0.04, 0.02], [0.3, 0.1, 0.2])

    def sphere(r, rot, t):
        return sphere_depth(r, rot @ centre + t, radius)

    depth, k, extrinsics = _two_views(sphere, 20, 20, 40.0, motion)
    out, grad = stability(depth, k, extrinsics, [(0, 1), (1, 0)], backend, device, occlusion_tol=0.01)
    assert (out.valid_count > 150).all()
    # Only the rounding of q to a pixel (and O(h^2) differences) is left.
    assert out.error.max() < 1e-3
    assert torch.isfinite(grad).all()


def test_stability_rises_with_a_bend(backend, device):
    """Frame 1 folds the right half of frame 0's fronto-parallel plane by theta about the
    vertical line x = 0, z = 4; the static camera maps every pixel onto itself."""
    height, width = 10, 14
    k = pinhole(14.0, height, width, frames=2)
    r = rays(k[:, :1], height, width)[0, 0]
    extrinsics = torch.eye(4).expand(1, 2, 4, 4)
    flat = torch.full((height, width), 4.0, dtype=torch.float64)
    right = r[..., 0] > 0
    errors = []
    for degrees in (0, 5, 10, 20, 40):
        slope = math.tan(math.radians(degrees))
        bent = torch.where(right, 4.0 / (1 - slope * r[..., 0]), flat)
        depth = torch.stack([flat, bent])[None].float()
        out, _ = stability(depth, k, extrinsics, [(0, 1)], backend, device)
        error_map = out.error_map.cpu()[0, 0]
        far_right = right.clone()
        far_right[:, : width // 2 + 2] = False
        far_right[[0, -1]] = False
        far_right[:, -1] = False
        expected = 1 - math.cos(math.radians(degrees))
        torch.testing.assert_close(error_map[far_right], torch.full_like(error_map[far_right], expected),
                                   atol=2e-6, rtol=1e-4)
        errors.append(float(out.error.detach()))
    assert errors[0] < 1e-6
    assert all(a < b for a, b in zip(errors, errors[1:])), errors


def test_rounding_ties_go_to_even(backend, device):
    """A pure sideways camera shift of exactly half a pixel: u' = u + 0.5 for every pixel, so
    q = u for even u and u + 1 for odd u (round half to even)."""
    height, width = 7, 10
    k = torch.tensor([[4.0, 0.0, 4.5], [0.0, 4.0, 3.0], [0.0, 0.0, 1.0]]).expand(1, 2, 3, 3)
    extrinsics = torch.eye(4).repeat(1, 2, 1, 1)
    extrinsics[0, 1, 0, 3] = 0.25  # f * t_x / z = 4 * 0.25 / 2 = 0.5 pixel
    x = torch.arange(width, dtype=torch.float32)
    bumpy = 2 + 0.3 * torch.sin(1.7 * x)[None] + 0.1 * torch.cos(1.3 * torch.arange(height, dtype=torch.float32))[:, None]
    depth = torch.stack([torch.full((height, width), 2.0), bumpy])[None]
    out, _ = stability(depth, k, extrinsics, [(0, 1)], backend, device)
    target = vgpa.depth_to_normals(depth[0, 1], k[0, 1], backend="torch")  # (3, H, W)
    columns = torch.arange(width)
    even_q, up_q = (columns + columns % 2).clamp(max=width - 1), (columns + 1).clamp(max=width - 1)
    expected_even = 1 + target.normals[2][:, even_q]  # 1 - <(0, 0, -1), n_j(q)>
    expected_up = 1 + target.normals[2][:, up_q]
    mask = out.valid_mask.cpu()[0, 0]
    assert torch.equal(mask, target.valid[:, even_q] & (columns < width - 1))
    torch.testing.assert_close(out.error_map.cpu()[0, 0][mask], expected_even[mask], atol=1e-6, rtol=0)
    assert (expected_even[mask] - expected_up[mask]).abs().max() > 1e-2  # half-up would fail


# --------------------------------------------------------------------------------------------
# Edge cases


def test_all_invalid_depth(backend, device):
    depth, intrinsics, extrinsics = random_inputs(1, 2, 5, 6)
    depth[:] = float("nan")
    out, grad = stability(depth, intrinsics, extrinsics, [(0, 1)], backend, device)
    assert torch.equal(out.error.cpu(), torch.zeros(1, 1)) and torch.equal(out.valid_count.cpu(), torch.zeros(1, 1,
                                                                                                             dtype=torch.int64))
    assert not out.valid_mask.any() and torch.equal(grad.cpu(), torch.zeros_like(depth))
    normals = vgpa.depth_to_normals(depth.to(device), intrinsics.to(device), backend=backend)
    assert not normals.valid.any() and not normals.normals.abs().sum()


@pytest.mark.parametrize("height,width", [(2, 6), (6, 2), (1, 1)])
def test_too_small_images_have_no_normals(backend, device, height, width):
    depth, intrinsics, extrinsics = random_inputs(1, 2, height, width)
    depth = depth.abs().nan_to_num(2.0, 3.0).clamp_min(1.0)
    normals = vgpa.depth_to_normals(depth.to(device), intrinsics.to(device), backend=backend)
    assert normals.normals.shape == (1, 2, 3, height, width) and not normals.valid.any()
    out, grad = stability(depth, intrinsics, extrinsics, [(0, 1)], backend, device)
    assert int(out.valid_count) == 0 and float(out.error) == 0 and not grad.abs().sum()


def test_non_contiguous_inputs(backend, device):
    depth, intrinsics, extrinsics = random_inputs(2, 3, 9, 7)
    strided = depth.transpose(-1, -2).contiguous().transpose(-1, -2)  # column-major frames
    every_other = torch.stack([depth, depth], 2).flatten(1, 2)[:, ::2]  # frame stride 2 * H * W
    pairs = torch.tensor([[0, 2], [2, 1], [1, 0]]).t().contiguous().t()  # (P, 2) with strides (1, 3)
    expected, grad_expected = stability(depth, intrinsics, extrinsics, pairs.contiguous(), backend, device)
    for variant in (strided, every_other):
        assert not variant.is_contiguous()
        out, grad = stability(variant, intrinsics.transpose(-1, -2).contiguous().transpose(-1, -2),
                              extrinsics, pairs, backend, device)
        assert torch.equal(out.valid_mask, expected.valid_mask)
        torch.testing.assert_close(out.error, expected.error, atol=1e-7, rtol=1e-6)
        torch.testing.assert_close(grad, grad_expected, atol=1e-6, rtol=1e-5)
    normals = vgpa.depth_to_normals(strided.to(device), intrinsics.to(device), backend=backend)
    torch.testing.assert_close(normals.normals,
                               vgpa.depth_to_normals(depth.to(device), intrinsics.to(device), backend=backend).normals)


@pytest.mark.parametrize("height,width", [(5, 1), (1, 7), (3, 3), (9, 17), (11, 63), (6, 65), (13, 130)])
def test_cpu_lane_loops_edge_shapes(height, width):
    """Widths around the CPU lane blocks (16 and 64 pixels), width and height 1, rows with only
    invalid depths and column-strided depth, against the reference; every thread count gives
    the same bits."""
    depth, intrinsics, extrinsics = random_inputs(1, 3, height, width)
    depth[:, :, height // 2] = float("nan")  # an all-invalid row
    pairs = vgpa.window_pairs(3, 2, symmetric=True)
    weight = torch.rand(1, pairs.shape[0], height, width)
    mean, count, error_map, mask, grad_ref = reference_stability(depth, intrinsics, extrinsics, pairs, weight)
    strided = depth.transpose(-1, -2).contiguous().transpose(-1, -2)
    runs = []
    threads = torch.get_num_threads()
    try:
        for n, d in ((1, depth), (2, depth), (3, depth), (2, strided)):
            torch.set_num_threads(n)
            runs.append(stability(d, intrinsics, extrinsics, pairs, "cpu", "cpu", weight))
    finally:
        torch.set_num_threads(threads)
    for out, grad in runs:
        assert torch.equal(out.valid_mask, mask) and torch.equal(out.valid_count, count)
        torch.testing.assert_close(out.error, mean, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(out.error_map, error_map, atol=1e-6, rtol=1e-5)
        # float32 gradients of 1 - cos at a nearly grazing normal amplify rounding: on fresh
        # inputs one element in thousands differs from the float32 reference by ~3e-4 relative.
        torch.testing.assert_close(grad, grad_ref, atol=1e-4, rtol=1e-3)
    for out, grad in runs[1:3]:
        assert torch.equal(out.error, runs[0][0].error) and torch.equal(grad, runs[0][1])


def test_torch_compile_fullgraph():
    depth, intrinsics, extrinsics = random_inputs(1, 3, 6, 7)

    def loss(d, k, e):
        out = vgpa.normal_stability(d, k, e, occlusion_tol=0.1, backend="cpu")
        return (out.error * out.valid_count).sum()

    compiled = torch.compile(loss, fullgraph=True)
    d1, d2 = depth.clone().requires_grad_(), depth.clone().requires_grad_()
    value = compiled(d1, intrinsics, extrinsics)
    value.backward()
    expected = loss(d2, intrinsics, extrinsics)
    expected.backward()
    assert torch.equal(value, expected) and torch.equal(d1.grad, d2.grad)


# --------------------------------------------------------------------------------------------
# Bad input


def test_bad_inputs_raise_clear_errors():
    depth, intrinsics, extrinsics = random_inputs(1, 3, 6, 7)
    ns, dn = vgpa.normal_stability, vgpa.depth_to_normals
    with pytest.raises(ValueError, match=r"\(B, T, H, W\)"):
        ns(depth[0], intrinsics[0], extrinsics[0])
    with pytest.raises(TypeError, match="dtype"):
        ns(depth.to(torch.int32), intrinsics, extrinsics)
    with pytest.raises(TypeError, match="torch.Tensor"):
        ns(depth.numpy(), intrinsics, extrinsics)
    with pytest.raises(ValueError, match="intrinsics"):
        ns(depth, intrinsics[..., :2, :], extrinsics)
    with pytest.raises(ValueError, match="extrinsics"):
        ns(depth, intrinsics, extrinsics[:, :2])
    with pytest.raises(ValueError, match="extrinsics are needed"):
        ns(depth, intrinsics, None)
    with pytest.raises(ValueError, match="on meta"):
        ns(depth, intrinsics.to("meta"), extrinsics)
    with pytest.raises(ValueError, match=r"frame indices in \[0, 3\]"):
        ns(depth, intrinsics, extrinsics, [(0, 3)])
    with pytest.raises(ValueError, match=r"frame indices in \[-1, 0\]"):
        ns(depth, intrinsics, extrinsics, [(-1, 0)])
    with pytest.raises(TypeError, match="integer frame indices"):
        ns(depth, intrinsics, extrinsics, torch.tensor([[0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"\(P, 2\)"):
        ns(depth, intrinsics, extrinsics, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="occlusion_tol"):
        ns(depth, intrinsics, extrinsics, occlusion_tol=-0.1)
    with pytest.raises(ValueError, match="T >= 2"):
        ns(depth[:, :1], intrinsics[:, :1], extrinsics[:, :1])
    with pytest.raises(ValueError, match="unknown backend"):
        ns(depth, intrinsics, extrinsics, backend="tpu")
    singular = intrinsics.clone()
    singular[0, 1] = 0
    for backend in ("cpu", "torch"):
        with pytest.raises(camera.SingularCameraError, match=r"intrinsics matrix K at index \(0, 1\)"):
            ns(depth, singular, extrinsics, backend=backend)
        with pytest.raises(camera.SingularCameraError, match="intrinsics"):
            dn(depth, singular, backend=backend)
    with pytest.raises(ValueError, match="broadcastable"):
        dn(depth, intrinsics[:, :2])
    with pytest.raises(ValueError, match="non-empty"):
        dn(depth[:, :0], intrinsics[:, :0])
    with pytest.raises(TypeError, match="dtype"):
        dn(depth.to(torch.int64), intrinsics)
