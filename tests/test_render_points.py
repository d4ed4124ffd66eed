"""Point cloud, z-buffered re-render and render consistency (docs/design.md 3.3): every backend
against the pure-PyTorch reference, bitwise for the render, plus scenes with known answers."""

import math

import pytest
import torch

import vgpa
from vgpa import metrics
from vgpa.reference import render_points as reference

from conftest import KERNEL_BACKENDS

ALL_BACKENDS = [pytest.param("torch", id="torch")] + KERNEL_BACKENDS


def _device_for(backend):
    """Device for the ALL_BACKENDS parametrisation (the conftest fixture covers kernel backends)."""
    if backend == "torch":
        return torch.device("cpu")
    return None


@pytest.fixture
def dev(request, backend):
    own = _device_for(backend)
    return own if own is not None else request.getfixturevalue("device")


def _cameras(videos, frames, height, width, device, dtype=torch.float32, seed=0, spread=0.3):
    """Pinhole cameras around the origin looking down +z, with small random rotations."""
    g = torch.Generator().manual_seed(seed)
    k = torch.zeros(videos, frames, 3, 3, dtype=torch.float64)
    k[..., 0, 0] = 1.2 * width
    k[..., 1, 1] = 1.1 * width
    k[..., 0, 1] = 0.01 * width  # a little skew: K is general
    k[..., 0, 2] = (width - 1) / 2
    k[..., 1, 2] = (height - 1) / 2
    k[..., 2, 2] = 1
    angles = (torch.rand(videos, frames, 3, generator=g, dtype=torch.float64) - 0.5) * spread
    e = torch.eye(4, dtype=torch.float64).repeat(videos, frames, 1, 1)
    e[..., :3, :3] = _rotation(angles)
    e[..., :3, 3] = (torch.rand(videos, frames, 3, generator=g, dtype=torch.float64) - 0.5) * spread
    return k.to(device, dtype), e.to(device, dtype)


def _rotation(angles):
    """Rotation matrices from (..., 3) Euler angles (x, then y, then z)."""
    cx, cy, cz = angles.cos().unbind(-1)
    sx, sy, sz = angles.sin().unbind(-1)
    one, zero = torch.ones_like(cx), torch.zeros_like(cx)
    rx = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], -1).unflatten(-1, (3, 3))
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).unflatten(-1, (3, 3))
    rz = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], -1).unflatten(-1, (3, 3))
    return rz @ ry @ rx


def _random_cloud(videos, points, channels, device, dtype=torch.float32, color_dtype=torch.float32, seed=1,
                  collisions=False):
    """Points mostly in front of the cameras, some behind and some off-image. With collisions,
    a few distinct points are repeated many times (equal depths, different indices) and depths
    are quantised so that different points tie."""
    g = torch.Generator().manual_seed(seed)
    xyz = torch.randn(videos, points, 3, generator=g, dtype=torch.float64)
    xyz[..., :2] *= 0.6
    xyz[..., 2] = xyz[..., 2] * 1.5 + 3.0  # about 2% behind the cameras
    if collisions:
        base = xyz[:, : max(1, points // 3)]
        pick = torch.randint(0, base.shape[1], (videos, points), generator=g)
        xyz = torch.gather(base, 1, pick[..., None].expand(-1, -1, 3)).clone()
        xyz[..., 2] = (xyz[..., 2] * 4).round() / 4
    colors = torch.rand(videos, points, channels, generator=g, dtype=torch.float64)
    return xyz.to(device, dtype), colors.to(device, color_dtype)


def _reference_render(points, colors, k, e, height, width, background=0.0):
    return vgpa.render_points(points, colors, k, e, height, width, background=background, backend="torch")


def _assert_same_render(got, want):
    assert torch.equal(got.coverage, want.coverage)
    assert torch.equal(got.depth, want.depth)
    assert torch.equal(got.image, want.image)


# --------------------------------------------------------------------------------------------
# Render: every backend equals the reference bit for bit


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("collisions", [False, True], ids=["spread", "collisions"])
@pytest.mark.parametrize("dtypes", [(torch.float32, torch.float32), (torch.float64, torch.float16)],
                         ids=["f32", "f64-f16"])
def test_render_matches_reference(backend, device, collisions, dtypes):
    videos, frames, height, width = 2, 3, 11, 14
    points, colors = _random_cloud(videos, 400, 3, device, *dtypes, seed=len(backend), collisions=collisions)
    k, e = _cameras(videos, frames, height, width, device, seed=3)
    want = _reference_render(points.cpu(), colors.cpu(), k.cpu(), e.cpu(), height, width, background=0.25)
    got = vgpa.render_points(points, colors, k, e, height, width, background=0.25, backend=backend)
    assert got.image.dtype == dtypes[1] and got.depth.dtype == dtypes[0] and got.coverage.dtype == torch.bool
    assert 0.2 < want.coverage.float().mean() < 1.0  # some pixels covered, some empty
    _assert_same_render(_cpu(got), want)
    again = vgpa.render_points(points, colors, k, e, height, width, background=0.25, backend=backend)
    _assert_same_render(again, got)  # bitwise reproducible


def _cpu(result):
    return type(result)(*(getattr(result, f).cpu() for f in result.__dataclass_fields__))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_nearest_wins_and_ties_go_to_smallest_index(backend, dev):
    k, e = _cameras(1, 2, 4, 5, dev, spread=0.0)
    # All points on the optical axis of the identity camera, pixel (u, v) = (2, 1.5 -> 2).
    z = torch.tensor([5.0, 3.0, 4.0, 3.0, 3.0, 7.0])
    points = torch.stack([torch.zeros(6), torch.zeros(6), z], -1)[None].to(dev)
    colors = torch.arange(6, dtype=torch.float32).view(1, 6, 1).to(dev)
    e[:, 1, 2, 3] = -3.5  # frame 1 moves the camera forward: z - 3.5, only 5, 4 and 7 in front
    out = vgpa.render_points(points, colors, k, e, 4, 5, background=-1.0, backend=backend)
    pixel = (2, 2)
    assert out.coverage[0, :, pixel[0], pixel[1]].tolist() == [True, True]
    assert out.coverage[0].sum().item() == 2
    assert out.image[0, 0, 0, pixel[0], pixel[1]].item() == 1.0  # depth 3 at indices 1, 3, 4 -> index 1
    assert out.depth[0, 0, pixel[0], pixel[1]].item() == 3.0
    assert out.image[0, 1, 0, pixel[0], pixel[1]].item() == 2.0  # nearest in front: z = 4 - 3.5
    assert out.depth[0, 1, pixel[0], pixel[1]].item() == 0.5
    assert (out.image[out.coverage[:, :, None].logical_not()] == -1.0).all()


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_projection_rounds_half_to_even_and_bounds(backend, dev):
    """u = x / z * f + c exactly on .5 boundaries: rint half to even; -0.5 lands on 0,
    W - 0.5 rounds to W (outside) when W is even."""
    width, height = 4, 1
    k = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1]]).view(1, 1, 3, 3).to(dev)
    e = torch.eye(4).view(1, 1, 4, 4).to(dev)
    u = torch.tensor([-0.51, -0.5, 0.5, 1.5, 2.5, 3.49, 3.5])
    points = torch.stack([u, torch.zeros(7), torch.ones(7)], -1)[None].to(dev)
    colors = torch.arange(10, 17, dtype=torch.float32).view(1, 7, 1).to(dev)
    out = vgpa.render_points(points, colors, k, e, height, width, background=-1.0, backend=backend)
    # -0.5 -> 0 (index 1), 0.5 -> 0 (index 2, loses the tie), 1.5 -> 2, 2.5 -> 2, 3.49 -> 3, 3.5 -> 4 out
    assert out.image[0, 0, 0, 0].tolist() == [11.0, -1.0, 13.0, 15.0]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, in the interpreter
def test_ignores_nan_inf_behind_and_offimage_points(backend, dev):
    k, e = _cameras(1, 2, 6, 7, dev, spread=0.0)
    nan, inf = float("nan"), float("inf")
    bad = torch.tensor([[nan, 0, 3], [0, nan, 3], [0, 0, nan], [inf, 0, 3], [0, -inf, 3], [0, 0, inf],
                        [0, 0, -inf], [0, 0, -2.0], [0, 0, 0.0], [50.0, 0, 1.0], [0, -50.0, 1.0]])
    good = torch.tensor([[0.0, 0.0, 4.0]])
    points = torch.cat([bad, good])[None].to(dev)
    colors = torch.rand(1, points.shape[1], 3).to(dev)
    out = vgpa.render_points(points, colors, k, e, 6, 7, backend=backend)
    assert out.coverage.sum().item() == 2  # the one good point, in both frames
    assert torch.isfinite(out.depth).all() and torch.isfinite(out.image).all()
    assert torch.equal(out.image[0, 0][:, out.coverage[0, 0]], colors[0, -1:].T)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_empty_cloud_renders_background(backend, dev):
    k, e = _cameras(2, 2, 5, 6, dev)
    points, colors = torch.zeros(0, 3, device=dev), torch.zeros(0, 3, device=dev)
    out = vgpa.render_points(points, colors, k, e, 5, 6, counts=[0, 0], background=(0.1, 0.2, 0.3),
                             backend=backend)
    assert not out.coverage.any() and (out.depth == 0).all()
    assert torch.equal(out.image, torch.tensor([0.1, 0.2, 0.3], device=dev).view(1, 1, 3, 1, 1).expand_as(out.image))
    frames = torch.rand(2, 2, 3, 5, 6, device=dev)
    cons = vgpa.render_consistency(points, colors, k, e, frames, counts=[0, 0], background=(0.1, 0.2, 0.3),
                                   backend=backend)
    assert (cons.coverage == 0).all()
    torch.testing.assert_close(cons.mse, (frames - out.image).square().mean((2, 3, 4)))
    masked = vgpa.render_consistency(points, colors, k, e, frames, counts=[0, 0], masked=True, backend=backend)
    assert masked.mse.isnan().all()


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_many_points_on_one_pixel(backend, dev):
    g = torch.Generator().manual_seed(7)
    n = 3000
    depth = (torch.rand(n, generator=g) * 8 + 1).round()  # 9 distinct depths: heavy ties
    points = torch.stack([torch.zeros(n), torch.zeros(n), depth], -1)[None].to(dev)
    colors = torch.arange(n, dtype=torch.float64).view(1, n, 1).to(dev)
    k, e = _cameras(1, 1, 3, 3, dev, spread=0.0)
    out = vgpa.render_points(points, colors, k, e, 3, 3, backend=backend)
    nearest = depth.min()
    first = int((depth == nearest).nonzero()[0])
    assert out.coverage[0, 0].sum().item() == 1 and out.coverage[0, 0, 1, 1]
    assert out.image[0, 0, 0, 1, 1].item() == first
    assert out.depth[0, 0, 1, 1].item() == nearest


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_variable_point_counts(backend, device):
    """Packed clouds with different counts (one empty) render like each video alone, and like
    the padded layout with counts."""
    frames, height, width = 2, 9, 10
    counts = [37, 0, 180]
    clouds = [_random_cloud(1, n, 3, device, seed=10 + i) if n else
              (torch.zeros(1, 0, 3, device=device), torch.zeros(1, 0, 3, device=device))
              for i, n in enumerate(counts)]
    k, e = _cameras(3, frames, height, width, device, seed=5)
    packed = vgpa.render_points(torch.cat([p[0] for p, _ in clouds]), torch.cat([c[0] for _, c in clouds]), k, e,
                                height, width, counts=torch.tensor(counts), backend=backend)
    padded_points = torch.full((3, max(counts), 3), float("nan"), device=device)
    padded_colors = torch.zeros(3, max(counts), 3, device=device)
    for b, (p, c) in enumerate(clouds):
        padded_points[b, : counts[b]], padded_colors[b, : counts[b]] = p[0], c[0]
    padded = vgpa.render_points(padded_points, padded_colors, k, e, height, width, counts=counts, backend=backend)
    _assert_same_render(padded, packed)
    for b, (p, c) in enumerate(clouds):
        alone = _reference_render(p.cpu(), c.cpu(), k[b:b + 1].cpu(), e[b:b + 1].cpu(), height, width)
        _assert_same_render(_cpu(type(packed)(packed.image[b:b + 1], packed.depth[b:b + 1],
                                              packed.coverage[b:b + 1])), alone)
    cloud = vgpa.PointCloud(torch.cat([p[0] for p, _ in clouds]), torch.cat([c[0] for _, c in clouds]),
                            torch.tensor(counts, device=device))
    _assert_same_render(vgpa.render_points(cloud, None, k, e, height, width, backend=backend), packed)


@pytest.mark.parametrize("backend", [pytest.param("cpu", id="cpu"),
                                     pytest.param("cuda", id="cuda", marks=pytest.mark.gpu(
                                         reason="2.7 million points: a size test for real hardware"))])
def test_videogpa_scale_cloud(backend, device):
    """2.7 million points (10 frames x 518 x 518 pixels) into 10 frames, against the reference."""
    depth, k, e, colors = _scene(1, 10, 518, 518, device)
    cloud = vgpa.point_cloud(depth, k, e, colors)
    assert cloud.points.shape == (10 * 518 * 518, 3)
    got = vgpa.render_points(cloud, None, k, e, 518, 518, backend=backend)
    want = _reference_render(cloud.points.cpu(), cloud.colors.cpu(), k.cpu(), e.cpu(), 518, 518)
    _assert_same_render(_cpu(got), want)
    assert got.coverage.float().mean() > 0.95


# --------------------------------------------------------------------------------------------
# Render consistency (fused) and 3DCS


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("masked", [False, True], ids=["all", "masked"])
def test_consistency_matches_reference(backend, device, masked):
    videos, frames, height, width = 2, 3, 10, 13
    points, colors = _random_cloud(videos, 300, 3, device, seed=4, collisions=True)
    k, e = _cameras(videos, frames, height, width, device, seed=6)
    target = torch.rand(videos, frames, 3, height, width, generator=torch.Generator().manual_seed(0)).to(device)
    want = vgpa.render_consistency(points.cpu(), colors.cpu(), k.cpu(), e.cpu(), target.cpu(), masked=masked,
                                   background=0.5, backend="torch")
    got = vgpa.render_consistency(points, colors, k, e, target, masked=masked, background=0.5, backend=backend)
    assert torch.equal(got.coverage.cpu(), want.coverage)
    torch.testing.assert_close(got.mse.cpu(), want.mse, rtol=1e-5, atol=1e-7)
    render = vgpa.render_points(points, colors, k, e, height, width, background=0.5, backend=backend)
    assert torch.equal(got.coverage, render.coverage.float().mean((2, 3)))
    again = vgpa.render_consistency(points, colors, k, e, target, masked=masked, background=0.5, backend=backend)
    assert torch.equal(again.mse, got.mse)  # fixed-order sums: bitwise reproducible


def _scene(videos, frames, height, width, device, deform=None, shift=0.5):
    """A textured, slanted plane seen by cameras translating sideways; colours are a function of
    the world position, so every view of the plane agrees. ``deform`` scales the depth of frame
    1 (a geometrically inconsistent video)."""
    fx = 0.9 * width
    k = torch.tensor([[fx, 0, (width - 1) / 2], [0, fx, (height - 1) / 2], [0, 0, 1]], dtype=torch.float64)
    k = k.expand(videos, frames, 3, 3).clone()
    e = torch.eye(4, dtype=torch.float64).repeat(videos, frames, 1, 1)
    e[..., 0, 3] = torch.linspace(-shift, shift, frames, dtype=torch.float64)
    # Plane z = 4 + 0.3 x_world; camera at (-t, 0, 0): ray d = K^-1 [u, v, 1], z d_x ... solve z.
    v, u = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                          indexing="ij")
    dx = (u - k[0, 0, 0, 2]) / fx
    cam_x = -e[..., 0, 3]  # camera centre x in the world
    z = (4 + 0.3 * cam_x[..., None, None]) / (1 - 0.3 * dx)  # (B, T, H, W)
    world_x = cam_x[..., None, None] + z * dx
    world_y = z * (v - k[0, 0, 1, 2]) / fx
    colors = torch.stack([0.5 + 0.4 * torch.sin(3 * world_x), 0.5 + 0.4 * torch.cos(2 * world_y),
                          0.5 + 0.2 * torch.sin(world_x + world_y)], 2)
    if deform is not None:
        z = z.clone()
        z[:, 1] *= deform
    return z.float().to(device), k.float().to(device), e.float().to(device), colors.float().to(device)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_scene_rerenders_its_own_frames(backend, dev):
    depth, k, e, colors = _scene(2, 3, 16, 20, dev)
    cloud = vgpa.point_cloud(depth, k, e, colors)
    result = vgpa.render_consistency(cloud, None, k, e, colors, masked=True, backend=backend)
    assert (result.coverage > 0.8).all()
    assert (result.mse < 2e-3).all()
    render = vgpa.render_points(cloud, None, k, e, 16, 20, backend=backend)
    torch.testing.assert_close(render.depth[render.coverage], depth[render.coverage], rtol=0.05, atol=0)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_3dcs_higher_for_deformed_scene(backend, dev):
    lpips_calls = []

    def fake_lpips(render, frame):  # stands in for a perceptual distance: mean absolute error
        lpips_calls.append(render.shape)
        return (render - frame).abs().mean((1, 2, 3))

    scores = {}
    for name, deform in (("consistent", None), ("deformed", 0.6)):
        depth, k, e, colors = _scene(1, 3, 16, 20, dev, deform=deform)
        cloud = vgpa.point_cloud(depth, k, e, colors)
        scores[name] = metrics.consistency_score(cloud, None, k, e, colors, lpips=fake_lpips, backend=backend)
        mse_only = metrics.consistency_score(cloud, None, k, e, colors, backend=backend)
        assert scores[name].shape == (1,) and (scores[name] > mse_only).all()
    assert lpips_calls == [(3, 3, 16, 20)] * 2
    assert scores["deformed"].item() > 5 * scores["consistent"].item()


def test_motion_score():
    e = torch.eye(4).repeat(2, 4, 1, 1)
    assert torch.equal(metrics.motion_score(e), torch.zeros(2))
    e[1, :, 0, 3] = torch.tensor([0.0, 0.1, 0.3, 0.6])  # steps 0.1, 0.2, 0.3
    angle = torch.tensor([0.0, 0.2, 0.4, 0.6])  # steps of 0.2 rad about z
    e[1, :, :3, :3] = _rotation(torch.stack([torch.zeros(4), torch.zeros(4), angle], -1))
    torch.testing.assert_close(metrics.motion_score(e), torch.tensor([0.0, 0.2 + 0.1 * 0.2]))
    torch.testing.assert_close(metrics.motion_score(e[1, :, :3]), torch.tensor(0.22))
    with pytest.raises(ValueError, match="two frames"):
        metrics.motion_score(e[:, :1])


# --------------------------------------------------------------------------------------------
# Point cloud


def test_point_cloud_unprojects_to_pixels():
    depth, k, e, colors = _scene(1, 2, 6, 7, "cpu")
    depth[0, 0, 0, 0] = float("nan")
    depth[0, 1, 2, 3] = -1.0
    cloud = vgpa.point_cloud(depth, k, e, colors)
    assert cloud.counts.tolist() == [2 * 6 * 7 - 2]
    # Point 0 comes from pixel (t=0, v=0, u=1) (u=0 has no depth): it projects back there at
    # its depth; the last point comes from (t=1, v=5, u=6).
    rows = reference.projection_rows(k, e, torch.float32)
    z, lands, pixel = reference.project(cloud.points[[0, -1]], rows[0], 6, 7)
    assert lands[0, 0] and pixel[0, 0] == 1 and lands[1, 1] and pixel[1, 1] == 6 * 7 - 1
    torch.testing.assert_close(z[0, 0], depth[0, 0, 0, 1])
    torch.testing.assert_close(z[1, 1], depth[0, 1, 5, 6])
    torch.testing.assert_close(cloud.colors[0], colors[0, 0, :, 0, 1])


def test_point_cloud_confidence_filter():
    depth = torch.ones(2, 1, 2, 5)
    k = torch.eye(3).expand(2, 1, 3, 3)
    e = torch.eye(4).expand(2, 1, 4, 4)
    colors = torch.arange(20.0).view(2, 1, 1, 2, 5)
    conf = torch.tensor([[[0.5, 0.9, 0.9, 1e-6, float("nan")], [0.9, 0.2, 0.3, 0.9, 0.7]],
                         [[1.0, 1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0, 1.0]]]).view(2, 1, 2, 5)
    cloud = vgpa.point_cloud(depth, k, e, colors, conf=conf)
    assert cloud.counts.tolist() == [8, 10]  # 1e-6 and NaN dropped
    # 70%: ceil(8 * 0.3) = 3 of video 0: three of its four 0.9 tie, the earliest pixels win;
    # ceil(10 * 0.3) = 3 of video 1, where all tie. Points keep pixel order.
    cloud = vgpa.point_cloud(depth, k, e, colors, conf=conf, conf_threshold=70)
    assert cloud.counts.tolist() == [3, 3]
    assert cloud.colors[:, 0].tolist() == [1.0, 2.0, 5.0, 10.0, 11.0, 12.0]
    # ceil exactly: 10 * (1 - 0.1) = 9, not 10 through float rounding
    cloud = vgpa.point_cloud(depth, k, e, colors, conf=conf, conf_threshold=10)
    assert cloud.counts.tolist() == [math.ceil(8 * 0.9), 9]


# --------------------------------------------------------------------------------------------
# Input errors, torch.compile


def test_bad_inputs_raise_clear_errors():
    k, e = _cameras(2, 3, 5, 6, "cpu")
    points, colors = _random_cloud(2, 10, 3, "cpu")
    frames = torch.rand(2, 3, 3, 5, 6)
    cases = [
        (dict(height=-1), ValueError, "height must lie in"),
        (dict(width=0), ValueError, "width must lie in"),
        (dict(height=5.0), TypeError, "height must be an int"),
        (dict(points=points.half()), TypeError, "points has dtype"),
        (dict(colors=colors.int()), TypeError, "colors has dtype"),
        (dict(points=points[..., :2]), ValueError, r"\(B, N, 3\)"),
        (dict(points=points[:1]), ValueError, "B = 2"),
        (dict(colors=colors[:, :5]), ValueError, "colors must be"),
        (dict(intrinsics=k[..., :2, :]), ValueError, "intrinsics must be"),
        (dict(extrinsics=e[:, :2]), ValueError, "extrinsics must be"),
        (dict(intrinsics=k.to("meta")), ValueError, "intrinsics is on meta"),
        (dict(colors=colors.to("meta")), ValueError, "colors is on meta"),
        (dict(points=points.reshape(-1, 3), colors=colors.reshape(-1, 3)), ValueError, "need counts"),
        (dict(points=points.reshape(-1, 3), colors=colors.reshape(-1, 3), counts=[10, 11]), ValueError,
         "sum to 21"),
        (dict(counts=[3, -1]), ValueError, "negative"),
        (dict(counts=[3, 11]), ValueError, "exceed the 10 points per video"),
        (dict(points=points.reshape(-1, 3), colors=colors.reshape(-1, 3), counts=torch.tensor([25, -5])),
         ValueError, "negative"),
        (dict(counts=[3.0, 1.0]), TypeError, "counts must be an int"),
        (dict(counts=[3]), ValueError, r"counts must have shape \(B,\)"),
        (dict(background=(0.0, 1.0)), ValueError, "background"),
        (dict(backend="vulkan"), ValueError, "unknown backend"),
    ]
    for change, error, match in cases:
        args = dict(points=points, colors=colors, intrinsics=k, extrinsics=e, height=5, width=6)
        args.update(change)
        with pytest.raises(error, match=match):
            vgpa.render_points(**args)
    with pytest.raises(ValueError, match="frames must be"):
        vgpa.render_consistency(points, colors, k, e, frames[:, :2])
    with pytest.raises(TypeError, match="frames has dtype"):
        vgpa.render_consistency(points, colors, k, e, frames.to(torch.uint8))
    cloud = vgpa.PointCloud(points.reshape(-1, 3), colors.reshape(-1, 3), torch.tensor([10, 10]))
    with pytest.raises(ValueError, match="carries its colours"):
        vgpa.render_points(cloud, colors, k, e, 5, 6)
    depth = torch.ones(2, 3, 5, 6)
    with pytest.raises(ValueError, match="conf_threshold"):
        vgpa.point_cloud(depth, k, e, frames, conf=depth, conf_threshold=100)
    with pytest.raises(ValueError, match="needs conf"):
        vgpa.point_cloud(depth, k, e, frames, conf_threshold=10)
    with pytest.raises(ValueError, match="colors must be"):
        vgpa.point_cloud(depth, k, e, frames[..., :4])


def test_torch_compile_fullgraph_render_consistency():
    points, colors = _random_cloud(2, 200, 3, "cpu", seed=9)
    k, e = _cameras(2, 2, 8, 9, "cpu", seed=2)
    frames = torch.rand(2, 2, 3, 8, 9)

    def score(points, colors, k, e, frames):
        result = vgpa.render_consistency(points, colors, k, e, frames, backend="cpu")
        return result.mse.mean(1) + result.coverage.mean(1)

    compiled = torch.compile(score, fullgraph=True)
    torch.testing.assert_close(compiled(points, colors, k, e, frames), score(points, colors, k, e, frames),
                               rtol=0, atol=0)
