"""The input rules of the geometry ops (docs/backends.md, "Input rules"): bad input raises a clear error
before any kernel sees it, eagerly, under torch.compile and through a direct torch.ops.vgpa call;
a packed cloud may end with an empty video; results do not depend on where the scene sits."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import KERNEL_BACKENDS
from geometry_inputs import random_cameras, random_depth, rotation

import vgpa
from vgpa import metrics
from vgpa.torch_math import camera

ALL_BACKENDS = [pytest.param("torch", id="torch")] + KERNEL_BACKENDS
HERE = Path(__file__).resolve().parent

# The Triton interpreter evaluates NaN/inf lanes of masked-out pixels with numpy, which warns.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@pytest.fixture
def dev(request, backend):
    """The device of ``backend``: the conftest fixture for the kernel backends, the CPU for torch."""
    return torch.device("cpu") if backend == "torch" else request.getfixturevalue("device")


def _scene(batch=1, frames=3, height=8, width=8, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    depth = random_depth(batch, frames, height, width, g, invalid=False).to(dtype)
    intrinsics, extrinsics = random_cameras(batch, frames, height, width, g)
    return depth, intrinsics.to(dtype), extrinsics.to(dtype)


# --------------------------------------------------------------------------------------------
# Indices and counts a kernel would read with: checked in every mode


def test_out_of_range_inputs_raise_under_torch_compile():
    """Pairs >= T, far past T and negative, and counts that overrun a video, fed to functions
    compiled with fullgraph=True after a valid call: each raises ValueError on every backend. A
    kernel that read outside its buffers would crash the subprocess (or return garbage), which
    fails this test instead of the run."""
    from vgpa import _backend

    # The script's tensors live on the CPU: "cuda" joins where it runs on them (its emulation).
    backends = ["cpu", "triton", "torch"] + (["cuda"] if _backend.why_unavailable("cuda", torch.device("cpu")) is None
                                             else [])
    env = dict(os.environ, TRITON_INTERPRET=os.environ.get("TRITON_INTERPRET", "1"), PYTHONWARNINGS="ignore")
    run = subprocess.run([sys.executable, str(HERE / "compiled_input_checks.py"), *backends], capture_output=True,
                         text=True, timeout=600, env=env, cwd=HERE)
    lines = run.stdout.splitlines()
    started = [line.split(" ", 1)[1] for line in lines if line.startswith("start ")]
    if run.returncode != 0:
        last = started[-1] if started else "(before the first case)"
        pytest.fail(f"the compiled run died with exit code {run.returncode} during {last}:\n{run.stderr[-3000:]}")
    assert lines[-1] == "done"
    assert not [line for line in lines if line.startswith("mismatch")], "compiled and eager results differ"
    raised = {line.split(" ", 1)[1].split(" | ")[0]: line.split(" | ", 1)[1] for line in lines
              if line.startswith("raised ")}
    assert len(started) == len(backends) * (3 * 4 + 2 * 2 * 3)  # backends x (pair cases + cloud cases)
    for case in started:
        assert case in raised, f"{case} returned instead of raising"
        op = case.split(":")[1].removesuffix("-static")
        expected = "frame indices in" if ":pairs=" in case else r"counts"
        assert raised[case].startswith(f"{op}: ") and expected in raised[case], raised[case]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("bad", [[[0, 3], [3, 0]], [[0, -1], [-1, 0]], [[-3, 2]]], ids=["past-T", "-1", "-T"])
def test_out_of_range_pairs_raise_on_every_backend(backend, dev, bad):
    depth, intrinsics, extrinsics = (x.to(dev) for x in _scene())
    with pytest.raises(ValueError, match=r"^reprojection_error: pairs hold frame indices in \[-?\d+, \d+\] but depth "
                                         r"has 3 frames"):
        vgpa.reprojection_error(depth, intrinsics, extrinsics, bad, backend=backend)
    for extr, warp in ((extrinsics, True), (None, False)):
        with pytest.raises(ValueError, match=r"^normal_stability: pairs hold frame indices"):
            vgpa.normal_stability(depth, intrinsics, extr, bad, warp=warp, backend=backend)


def test_direct_custom_op_calls_check_what_the_kernels_index():
    """torch.ops.vgpa.* run the same checks as the public functions, so no input reaches a kernel
    that would make it read or write outside its tensors."""
    depth, intrinsics, extrinsics = _scene()
    ops = torch.ops.vgpa
    bad_pairs = torch.tensor([[0, 5]])
    with pytest.raises(ValueError, match="pairs hold frame indices in"):
        ops.reprojection_error(depth, None, intrinsics, extrinsics, bad_pairs, "abs_rel", "strict", None, False, "cpu")
    with pytest.raises(ValueError, match=r"pairs must be a \(P, 2\) int64 tensor"):
        ops.reprojection_error(depth, None, intrinsics, extrinsics, torch.tensor([[0, 1]], dtype=torch.int32),
                               "abs_rel", "strict", None, False, "cpu")
    with pytest.raises(ValueError, match="photometric error needs an image"):
        ops.reprojection_error(depth, None, intrinsics, extrinsics, torch.tensor([[0, 1]]), "photometric", "strict",
                               None, False, "cpu")
    with pytest.raises(ValueError, match="pair matrices"):  # cameras of another batch size
        ops.reprojection_error(depth, None, intrinsics.expand(2, 3, 3, 3), extrinsics.expand(2, 3, 4, 4),
                               torch.tensor([[0, 1]]), "abs_rel", "strict", None, False, "cpu")
    with pytest.raises(ValueError, match="pairs hold frame indices in"):
        ops.normal_stability(depth, intrinsics, None, bad_pairs, False, None, False, "cpu")
    with pytest.raises(ValueError, match="intrinsics must be"):
        ops.normal_stability(depth, intrinsics[:, :2], None, torch.tensor([[0, 1]]), False, None, False, "cpu")
    with pytest.raises(ValueError, match="intrinsics must be"):
        ops.depth_to_normals(depth.reshape(3, 1, 8, 8), intrinsics[0, :2], "cpu")
    count = torch.tensor([[0, 1]])
    with pytest.raises(ValueError, match="grad_error must be"):
        ops.normal_stability_backward(torch.ones(5), None, depth, torch.ones(3, 9), torch.ones(1, 9),
                                      torch.ones(1, 12), count, True, None, "cpu")

    points, colors = torch.rand(6, 3), torch.rand(6, 3)
    rows = torch.rand(2, 1, 12)
    background = torch.zeros(3)
    offsets, counts = torch.tensor([0, 3]), torch.tensor([3, 3])
    with pytest.raises(ValueError, match="packed counts sum to 7"):
        ops.render_points(points, colors, offsets, torch.tensor([3, 4]), rows, background, 4, 4, -1, "cpu")
    with pytest.raises(ValueError, match=r"offsets \[0, 4\] do not match"):
        ops.render_points(points, colors, torch.tensor([0, 4]), counts, rows, background, 4, 4, -1, "cpu")
    with pytest.raises(ValueError, match="exceed the 3 points per video"):
        ops.render_points(points, colors, offsets, torch.tensor([4, 0]), rows, background, 4, 4, 3, "cpu")
    with pytest.raises(ValueError, match="rows must be"):
        ops.render_points(points, colors, offsets, counts, rows.double(), background, 4, 4, -1, "cpu")
    with pytest.raises(ValueError, match="background must be"):
        ops.render_points(points, colors, offsets, counts, rows, background[:2], 4, 4, -1, "cpu")
    with pytest.raises(ValueError, match="frames must be"):
        ops.render_consistency(points, colors, offsets, counts, rows, torch.rand(2, 1, 2, 4, 4), background, False,
                               -1, "cpu")
    # "torch" is the reference, run outside the registered ops.
    with pytest.raises(ValueError, match="registered ops run the kernel backends"):
        ops.render_points(points, colors, offsets, counts, rows, background, 4, 4, -1, "torch")
    with pytest.raises(ValueError, match="registered ops run the kernel backends"):
        ops.reprojection_error(depth, None, intrinsics, extrinsics, torch.tensor([[0, 1]]), "abs_rel", "strict", None,
                               False, "torch")


# --------------------------------------------------------------------------------------------
# Empty videos in a cloud


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_a_cloud_whose_last_video_is_empty_renders_on_every_backend(backend, dev):
    height, width = 6, 7
    depth, intrinsics, extrinsics = _scene(batch=2, frames=2, height=height, width=width, seed=3)
    depth[1] = float("nan")  # the second video has no valid pixel, so no point
    frames = torch.rand(2, 2, 3, height, width, generator=torch.Generator().manual_seed(4))
    cloud = vgpa.point_cloud(depth, intrinsics, extrinsics, frames)
    assert cloud.counts.tolist() == [2 * height * width, 0]
    cloud = vgpa.PointCloud(cloud.points.to(dev), cloud.colors.to(dev), cloud.counts.to(dev))
    k, e, f = intrinsics.to(dev), extrinsics.to(dev), frames.to(dev)
    out = vgpa.render_points(cloud, None, k, e, height, width, background=0.5, backend=backend)
    assert out.coverage[0].any() and not out.coverage[1].any()
    assert (out.image[1] == 0.5).all() and (out.depth[1] == 0).all()
    reference = vgpa.render_points(cloud.points.cpu(), cloud.colors.cpu(), intrinsics, extrinsics, height, width,
                                   counts=cloud.counts.cpu(), background=0.5, backend="cpu")
    for got, want in zip((out.image, out.depth, out.coverage), (reference.image, reference.depth, reference.coverage)):
        assert torch.equal(got.cpu(), want)
    consistency = vgpa.render_consistency(cloud, None, k, e, f, backend=backend)
    torch.testing.assert_close(consistency.mse[1].cpu(), f[1].square().mean((1, 2, 3)).cpu())
    assert (consistency.coverage[1] == 0).all()
    score = metrics.consistency_score(cloud, None, k, e, f, backend=backend,
                                      lpips=lambda a, b: (a - b).abs().mean((1, 2, 3)))
    # 3DCS is undefined for the video without a point (nothing to compare), defined for the other.
    assert torch.isfinite(score[0]) and torch.isnan(score[1])
    # Padded, with the last video's count 0.
    padded = cloud.points[:4].reshape(1, 4, 3).expand(2, 4, 3)
    out = vgpa.render_points(padded, torch.rand(2, 4, 3, device=dev), k, e, height, width, counts=[4, 0],
                             backend=backend)
    assert not out.coverage[1].any()


# --------------------------------------------------------------------------------------------
# Where the scene sits: results do not depend on a global translation


def _translated(extrinsics, shift):
    """World-to-camera poses of the same cameras after the world moves by ``shift``: X' = X + c,
    so E' = E [[I, -c], [0, 1]]."""
    move = torch.eye(4, dtype=torch.float64)
    move[:3, 3] = -shift
    return camera.as_pose_4x4(extrinsics.double()) @ move


def _moving_cameras(frames=3, height=12, width=10):
    """float64 depth and cameras that rotate by ~0.03 rad per frame (entries near, but not at, 1
    and 0) and translate a little."""
    g = torch.Generator().manual_seed(5)
    depth = 2 + torch.rand(1, frames, height, width, generator=g, dtype=torch.float64)
    intrinsics, _ = random_cameras(1, frames, height, width, g)
    extrinsics = torch.eye(4, dtype=torch.float64).repeat(1, frames, 1, 1)
    axis = torch.tensor([0.3, 1.0, 0.2], dtype=torch.float64)
    for t in range(frames):
        extrinsics[0, t, :3, :3] = rotation(0.03 * t * axis)
        extrinsics[0, t, :3, 3] = torch.tensor([0.02 * t, -0.01 * t, 0.015 * t], dtype=torch.float64)
    return depth, intrinsics.double(), extrinsics


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("distance", [1e6, 1e8, 1e9, 1e10])
def test_results_do_not_depend_on_where_the_scene_sits(backend, dev, distance):
    depth, intrinsics, extrinsics = _moving_cameras()
    shift = distance * torch.tensor([0.6, -0.8, 0.3], dtype=torch.float64)
    moved = _translated(extrinsics, shift)
    pairs = vgpa.window_pairs(3, 2, symmetric=True)
    d, k = depth.to(dev), intrinsics.to(dev)
    # float64 holds a camera 1e10 away to ~1e-6: allow that rounding of the inputs, nothing more.
    rtol = 1e-9 + distance * 1e-15
    for error in ("abs_rel", "abs"):
        near = vgpa.reprojection_error(d, k, extrinsics.to(dev), pairs, error=error, backend=backend)
        far = vgpa.reprojection_error(d, k, moved.to(dev), pairs, error=error, backend=backend)
        assert torch.equal(near.valid_count, far.valid_count) and near.valid_count.min() > 0
        torch.testing.assert_close(far.error, near.error, rtol=rtol, atol=1e-12)
    near = vgpa.normal_stability(d, k, extrinsics.to(dev), pairs, backend=backend)
    far = vgpa.normal_stability(d, k, moved.to(dev), pairs, backend=backend)
    assert torch.equal(near.valid_count, far.valid_count) and near.valid_count.min() > 0
    torch.testing.assert_close(far.error, near.error, rtol=rtol, atol=1e-12)
    if backend != "torch":  # unproject_depth and point_cloud take no backend="torch" path of their own
        near_points = vgpa.unproject_depth(d, k, extrinsics.to(dev), backend=backend)
        far_points = vgpa.unproject_depth(d, k, moved.to(dev), backend=backend)
        # float64 resolves 1e10 to ~2e-6: the rounding of the inputs, nothing more.
        torch.testing.assert_close((far_points - shift.to(dev)).cpu(), near_points.cpu(), rtol=0,
                                   atol=distance * 4e-16 + 1e-12)
    colors = torch.rand(1, 3, 3, 12, 10, dtype=torch.float64)
    near_cloud = vgpa.point_cloud(depth, intrinsics, extrinsics, colors)
    far_cloud = vgpa.point_cloud(depth, intrinsics, moved, colors)
    torch.testing.assert_close(far_cloud.points - shift, near_cloud.points, rtol=0, atol=distance * 4e-16 + 1e-12)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_identical_cameras_far_from_the_origin_give_exactly_zero(backend, dev):
    """The rounding of rotation and K K^-1 residue makes equal cameras map every pixel onto
    itself wherever they are; translations are never rounded, so nothing else changes."""
    depth, intrinsics, extrinsics = _moving_cameras()
    depth = depth[:, :1].expand(1, 3, 12, 10)
    same = _translated(extrinsics[:, 1:2].expand(1, 3, 4, 4), torch.tensor([3e9, -1e9, 2e9], dtype=torch.float64))
    intrinsics = intrinsics[:, :1].expand(1, 3, 3, 3)
    out = vgpa.reprojection_error(depth.to(dev), intrinsics.to(dev), same.to(dev), vgpa.all_pairs(3, True),
                                  backend=backend)
    assert (out.valid_count == 12 * 10).all() and (out.error == 0).all()
    stability = vgpa.normal_stability(depth.to(dev), intrinsics.to(dev), same.to(dev), backend=backend)
    # Each normal meets itself: 1 - cos is the float64 rounding of normalising it, a few ulps.
    assert (stability.error.abs() < 1e-15).all() and (stability.valid_count == 10 * 8).all()


def test_camera_rounding_is_relative_to_each_entry():
    """A rotation entry 0.9996 next to a translation of 1e9 stays as it is (the rounding used to
    take the row's largest entry, the translation, as the scale of every entry)."""
    extrinsics = torch.eye(4, dtype=torch.float64).repeat(1, 2, 1, 1)
    extrinsics[0, 1, :3, :3] = rotation(torch.tensor([0.0, 0.0, 0.03], dtype=torch.float64))
    extrinsics[0, :, :3, 3] = 1e9
    relative = camera.relative_transform(extrinsics, torch.tensor([[0, 1]]))
    torch.testing.assert_close(relative[0, 0, :3, :3], extrinsics[0, 1, :3, :3], rtol=0, atol=1e-15)
    intrinsics = torch.tensor([[500.0, 0, 300], [0, 500, 200], [0, 0, 1]], dtype=torch.float64).expand(1, 2, 3, 3)
    maps = camera.frame_ray_maps(intrinsics, extrinsics)
    torch.testing.assert_close(maps[0, 0, :, :3], torch.linalg.inv(intrinsics[0, 0]), rtol=1e-14, atol=0)
    assert maps[0, 0, 0, 0] == 1 / 500  # not rounded to 0


# --------------------------------------------------------------------------------------------
# Error messages name the argument and what is wrong


def _error_cases():
    depth, intrinsics, extrinsics = _scene()
    k_list = intrinsics[0, 0].tolist()
    frames = torch.rand(1, 3, 3, 8, 8)
    points, colors = torch.rand(1, 5, 3) + torch.tensor([0.0, 0.0, 2.0]), torch.rand(1, 5, 3)
    model = torch.randn(2, 3, 4)
    nan_weight = torch.ones(2, 3, 1)
    nan_weight[1, 0, 0] = float("nan")
    return [
        ("NaN weight", lambda: vgpa.diffusion_dpo_loss(model, model, model, beta=1.0, weight=nan_weight),
         ValueError, r"^diffusion_dpo_loss: weight holds NaN"),
        ("frame_dim=1.0", lambda: vgpa.diffusion_dpo_loss(model, model, model, beta=1.0, frame_dim=1.0),
         TypeError, r"^diffusion_dpo_loss: frame_dim must be an int"),
        ("label_smoothing=None", lambda: vgpa.diffusion_dpo_loss(model, model, model, beta=1.0, label_smoothing=None),
         TypeError, r"^diffusion_dpo_loss: label_smoothing must be a number"),
        ("unproject_depth prefix", lambda: vgpa.unproject_depth(depth[0], intrinsics, extrinsics),
         ValueError, r"^unproject_depth: depth must be"),
        ("unproject_depth K list", lambda: vgpa.unproject_depth(depth, k_list, extrinsics),
         TypeError, r"^unproject_depth: intrinsics must be a torch.Tensor"),
        ("point_cloud prefix", lambda: vgpa.point_cloud(depth[:, :, :0], intrinsics, extrinsics, frames[..., :0, :]),
         ValueError, r"^point_cloud: depth must be a non-empty"),
        ("padded colours C = 0", lambda: vgpa.render_points(points, colors[..., :0], intrinsics, extrinsics, 8, 8),
         ValueError, r"^render_points: colors must be \(B, N, C\) .* C >= 1"),
        ("packed colours C = 0", lambda: vgpa.render_points(points[0], colors[0, :, :0], intrinsics, extrinsics, 8, 8),
         ValueError, r"^render_points: colors must be \(N_total, C\) .* C >= 1"),
        ("lpips output shape", lambda: metrics.consistency_score(points, colors, intrinsics, extrinsics, frames,
                                                                  lpips=lambda a, b: torch.zeros(2)),
         ValueError, r"^consistency_score: lpips must return one distance per image, shape \(3,\)"),
        ("lpips not callable", lambda: metrics.consistency_score(points, colors, intrinsics, extrinsics, frames,
                                                                  lpips="vgg"),
         TypeError, r"^consistency_score: lpips must be None or a callable"),
        ("lpips_weight", lambda: metrics.consistency_score(points, colors, intrinsics, extrinsics, frames,
                                                            lpips_weight="1"),
         TypeError, r"^consistency_score: lpips_weight must be a finite number"),
        ("mvcs K list", lambda: metrics.mvcs(depth[0], k_list, extrinsics[0]),
         TypeError, r"^mvcs: intrinsics must be a torch.Tensor"),
        ("mvcs E list", lambda: metrics.mvcs(depth[0], intrinsics[0], extrinsics[0].tolist()),
         TypeError, r"^mvcs: extrinsics must be a torch.Tensor"),
        ("reprojection K list", lambda: vgpa.reprojection_error(depth, k_list, extrinsics),
         TypeError, r"^reprojection_error: intrinsics must be a torch.Tensor"),
        ("normal_stability K list", lambda: vgpa.normal_stability(depth, k_list, extrinsics),
         TypeError, r"^normal_stability: intrinsics must be a torch.Tensor"),
        ("depth_to_normals K list", lambda: vgpa.depth_to_normals(depth, k_list),
         TypeError, r"^depth_to_normals: intrinsics must be a torch.Tensor"),
        ("point_cloud K list", lambda: vgpa.point_cloud(depth, k_list, extrinsics, frames),
         TypeError, r"^point_cloud: intrinsics must be a torch.Tensor"),
        ("render K list", lambda: vgpa.render_points(points, colors, k_list, extrinsics, 8, 8),
         TypeError, r"^render_points: intrinsics must be a torch.Tensor"),
        ("fractional pair index", lambda: vgpa.normal_stability(depth, intrinsics, extrinsics, [[0, 1.5]]),
         TypeError, r"^normal_stability: pairs must hold integer frame indices"),
        ("return_map not bool", lambda: vgpa.reprojection_error(depth, intrinsics, extrinsics, return_map="yes"),
         TypeError, r"^reprojection_error: return_map must be a bool"),
        ("background string", lambda: vgpa.render_points(points, colors, intrinsics, extrinsics, 8, 8,
                                                         background="red"),
         TypeError, r"^render_points: background must be a number or 3 numbers"),
    ] + _singular_camera_cases(depth, intrinsics, extrinsics, frames) + _point_map_cases(frames)


def _point_map_cases(frames):
    world = torch.rand(1, 3, 8, 8, 3)
    conf = torch.rand(1, 3, 8, 8)
    depth, intrinsics, extrinsics = _scene()
    return [
        ("point_cloud conf_ties", lambda: vgpa.point_cloud(depth, intrinsics, extrinsics, frames, conf=conf,
                                                           conf_threshold=10.0, conf_ties="last"),
         ValueError, r"^point_cloud: conf_ties must be one of \('first', 'all'\), got 'last'"),
        ("point_map_cloud points shape", lambda: vgpa.point_map_cloud(world[..., :2], frames),
         ValueError, r"^point_map_cloud: points must be a non-empty \(B, T, H, W, 3\) tensor"),
        ("point_map_cloud empty", lambda: vgpa.point_map_cloud(world[:, :, :0], frames[..., :0, :]),
         ValueError, r"^point_map_cloud: points must be a non-empty"),
        ("point_map_cloud colours", lambda: vgpa.point_map_cloud(world, frames[..., :7]),
         ValueError, r"^point_map_cloud: colors must be \(B, T, C, H, W\) with B, T, H, W = 1, 3, 8, 8"),
        ("point_map_cloud conf shape", lambda: vgpa.point_map_cloud(world, frames, conf=conf[0]),
         ValueError, r"^point_map_cloud: conf must be \(B, T, H, W\) = \(1, 3, 8, 8\)"),
        ("point_map_cloud int points", lambda: vgpa.point_map_cloud(world.long(), frames),
         TypeError, r"^point_map_cloud: points must be a floating-point tensor"),
        ("point_map_cloud threshold without conf", lambda: vgpa.point_map_cloud(world, frames, conf_threshold=5.0),
         ValueError, r"^point_map_cloud: conf_threshold=5.0 needs conf"),
        ("point_map_cloud threshold 100", lambda: vgpa.point_map_cloud(world, frames, conf, conf_threshold=100),
         ValueError, r"^point_map_cloud: conf_threshold is a percentage in \[0, 100\)"),
        ("point_map_cloud conf_ties", lambda: vgpa.point_map_cloud(world, frames, conf, 10.0, conf_ties=None),
         ValueError, r"^point_map_cloud: conf_ties must be one of"),
    ]


def _singular_camera_cases(depth, intrinsics, extrinsics, frames):
    """A singular K or E, and an E whose last row is not [0, 0, 0, 1], through every op that
    inverts cameras: the message names the op, the argument and the frame."""
    singular_k, singular_e, bad_row = intrinsics.clone(), extrinsics.clone(), extrinsics.clone()
    singular_k[0, 1] = 0
    singular_e[0, 2, :3, :3] = 0
    bad_row[0, 1, 3, 0] = 1
    k_message = r"intrinsics matrix K at index \(0, 1\) is singular or not finite"
    cases = []
    for backend in ("cpu", "torch"):
        cases += [
            (f"reprojection singular K {backend}", lambda b=backend: vgpa.reprojection_error(depth, singular_k,
                                                                                             extrinsics, backend=b),
             camera.SingularCameraError, r"^reprojection_error: " + k_message),
            (f"normal_stability singular K {backend}", lambda b=backend: vgpa.normal_stability(depth, singular_k,
                                                                                               extrinsics, backend=b),
             camera.SingularCameraError, r"^normal_stability: " + k_message),
            (f"depth_to_normals singular K {backend}", lambda b=backend: vgpa.depth_to_normals(depth, singular_k,
                                                                                               backend=b),
             camera.SingularCameraError, r"^depth_to_normals: intrinsics matrix K at index \(1,\) is singular"),
            (f"mvcs singular E {backend}", lambda b=backend: metrics.mvcs(depth, intrinsics, singular_e, backend=b),
             camera.SingularCameraError, r"^mvcs: extrinsics matrix E at index \(0, 2\) is singular"),
            (f"unproject_depth E last row {backend}",
             lambda b=backend: vgpa.unproject_depth(depth, intrinsics, bad_row, backend=b),
             ValueError, r"^unproject_depth: extrinsics matrix E must have the last row \[0, 0, 0, 1\]"),
        ]
    return cases + [
        ("point_cloud singular K", lambda: vgpa.point_cloud(depth, singular_k, extrinsics, frames),
         camera.SingularCameraError, r"^point_cloud: " + k_message),
        ("point_cloud singular E", lambda: vgpa.point_cloud(depth, intrinsics, singular_e, frames),
         camera.SingularCameraError, r"^point_cloud: extrinsics matrix E at index \(0, 2\) is singular"),
        ("SingularCameraError is a ValueError", lambda: vgpa.reprojection_error(depth, singular_k, extrinsics),
         ValueError, r"^reprojection_error: " + k_message),
    ]


@pytest.mark.parametrize("case", range(len(_error_cases())), ids=[c[0] for c in _error_cases()])
def test_bad_input_names_the_argument(case):
    _, call, error, match = _error_cases()[case]
    with pytest.raises(error, match=match):
        call()
