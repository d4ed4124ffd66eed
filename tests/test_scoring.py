"""vgpa.scoring.score_videos: batched per-video scores equal the ops run on each video alone,
and rank the synthetic scenes of examples/score_demo.py (rigid above wobbly)."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
from geometry_inputs import rotation
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import vgpa
from vgpa import metrics, scoring
from vgpa.geometry import Geometry

DEMO = Path(__file__).resolve().parents[1] / "examples" / "score_demo.py"


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("score_demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _video(generator, steps, size, confidence=True):
    """A random but plausible video: depth 1.5-3.5, a moving camera, uint8 frames."""
    depth = 1.5 + 2 * torch.rand(steps, size, size, generator=generator)
    depth[:, 0, :3] = 0  # a few invalid pixels
    focal = 0.8 * size
    intrinsics = torch.tensor([[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1.0]]).expand(steps, 3, 3)
    extrinsics = torch.eye(4).repeat(steps, 1, 1)
    extrinsics[:, 0, 3] = 0.05 * torch.arange(steps) + 0.01 * torch.rand(steps, generator=generator)
    angle = 0.02 * torch.arange(steps)
    extrinsics[:, 0, 0], extrinsics[:, 0, 2] = angle.cos(), angle.sin()
    extrinsics[:, 2, 0], extrinsics[:, 2, 2] = -angle.sin(), angle.cos()
    frames = torch.randint(0, 256, (steps, 3, size, size), dtype=torch.uint8, generator=generator)
    conf = 0.5 + torch.rand(steps, size, size, generator=generator) if confidence else None
    return {"depth": depth, "confidence": conf, "intrinsics": intrinsics.clone(), "extrinsics": extrinsics,
            "frames": frames}


def _mixed_videos():
    generator = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ()).item()))
    # Two stacks of the same shape interleaved with videos of other frame counts and resolutions.
    specs = [(4, 24, True), (5, 16, True), (4, 24, True), (4, 24, False), (5, 16, True), (4, 24, True)]
    return [_video(generator, *spec) for spec in specs]


def test_batched_scores_equal_scores_of_each_video_alone():
    videos = _mixed_videos()
    batched = scoring.score_videos(videos, device="cpu")
    alone = [scoring.score_videos([video], device="cpu")[0] for video in videos]
    in_twos = scoring.score_videos(videos, device="cpu", batch_size=2)
    assert batched == alone == in_twos  # bitwise: stacking changes nothing
    confident = [video for video in videos if video["confidence"] is not None]
    thresholded = scoring.score_videos(confident, conf_threshold=20.0, device="cpu")
    assert thresholded == [scoring.score_videos([video], conf_threshold=20.0, device="cpu")[0] for video in confident]
    assert all(t["3dcs"] != b["3dcs"] for t, b in zip(thresholded, [s for v, s in zip(videos, batched)
                                                                    if v["confidence"] is not None]))
    keys = {"consistency_score", "3dcs", "mvcs", "normal_stability", "reprojection_abs_rel", "motion_norm"}
    assert all(set(scores) == keys for scores in batched)
    assert all(math.isfinite(v) for scores in batched for v in scores.values())
    assert all(scores["consistency_score"] == scores["3dcs"] for scores in batched)
    # Different videos score differently (a result scattered to the wrong video would show).
    assert len({scores["3dcs"] for scores in batched}) == len(videos)


def test_each_stack_runs_each_op_once(monkeypatch):
    videos = _mixed_videos()  # three stacks: (4, 24, 24) with confidence, (5, 16, 16), (4, 24, 24) without
    calls = {}

    def counting(name, function):
        def wrapper(depth, *args, **kwargs):
            calls.setdefault(name, []).append(depth.shape[0])
            return function(depth, *args, **kwargs)
        return wrapper

    monkeypatch.setattr(scoring, "point_cloud", counting("point_cloud", scoring.point_cloud))
    monkeypatch.setattr(scoring, "normal_stability", counting("normal_stability", scoring.normal_stability))
    monkeypatch.setattr(scoring, "reprojection_error", counting("reprojection_error", scoring.reprojection_error))
    monkeypatch.setattr(scoring._metrics, "mvcs", counting("mvcs", metrics.mvcs))
    scoring.score_videos(videos, device="cpu")
    assert {name: sorted(sizes) for name, sizes in calls.items()} == {
        name: [1, 2, 3] for name in ("point_cloud", "normal_stability", "reprojection_error", "mvcs")}


def test_scores_are_the_ops_results():
    videos = _mixed_videos()[:2]
    scores = scoring.score_videos(videos, conf_threshold=10.0, device="cpu")
    for video, got in zip(videos, scores):
        depth, conf = video["depth"][None], video["confidence"][None]
        K, E = video["intrinsics"][None], video["extrinsics"][None]
        frames = video["frames"][None].float() / 255
        cloud = vgpa.point_cloud(depth, K, E, frames, conf=conf, conf_threshold=10.0)
        three_dcs = metrics.consistency_score(cloud, None, K, E, frames, backend="torch")
        warp = vgpa.reprojection_error(depth, K, E, backend="torch")
        normals = vgpa.normal_stability(depth, K, E, backend="torch")
        expected = {
            "3dcs": three_dcs.item(),
            "mvcs": metrics.mvcs(depth, K, E, backend="torch").item(),
            # Mean over the pairs with a valid pixel (all of them here).
            "reprojection_abs_rel": warp.error[0][warp.valid_count[0] > 0].mean().item(),
            "normal_stability": normals.error[0][normals.valid_count[0] > 0].mean().item(),
            # Motion in the first camera's frame (the one score that depends on where the world is).
            "motion_norm": metrics.motion_score(E.double() @ torch.linalg.inv(E[:, :1].double())).item(),
        }
        assert bool((warp.valid_count > 0).all()) and bool((normals.valid_count > 0).all())
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key


def test_lpips_is_added_to_3dcs_and_reported():
    videos = _mixed_videos()[:3]
    seen = []

    def distance(render, frame):  # a stand-in for LPIPS: mean absolute difference per image
        seen.append(render.shape)
        return (render - frame).abs().mean((1, 2, 3))

    plain = scoring.score_videos(videos, metrics="3dcs,motion", device="cpu")
    with_lpips = scoring.score_videos(videos, metrics="3dcs,motion", lpips=distance, lpips_weight=0.5, device="cpu")
    assert seen and all(shape[1:] == (3, 24, 24) or shape[1:] == (3, 16, 16) for shape in seen)
    for p, w in zip(plain, with_lpips):
        assert w["3dcs_lpips"] > 0
        assert w["3dcs"] == pytest.approx(p["3dcs"] + 0.5 * w["3dcs_lpips"], rel=1e-6)
        assert set(p) == {"consistency_score", "3dcs", "motion_norm"}


def test_lpips_metric_needs_the_package_and_never_downloads(monkeypatch):
    monkeypatch.setitem(sys.modules, "lpips", None)  # as if the package were not installed
    with pytest.raises(ImportError, match="pip install lpips"):
        scoring.score_videos(_mixed_videos()[:1], metrics=("3dcs", "lpips"), device="cpu")


def test_undefined_scores_are_nan_not_numbers():
    video = _mixed_videos()[0]
    video["depth"] = torch.zeros_like(video["depth"])  # no valid depth at all
    scores = scoring.score_videos([video], device="cpu")[0]
    for key in ("mvcs", "normal_stability", "reprojection_abs_rel", "consistency_score", "3dcs"):
        assert math.isnan(scores[key]), key
    assert math.isfinite(scores["motion_norm"])  # the cameras still move


def _without_usable_geometry(video, how):
    """``video`` with dark frames and geometry that leaves no point to render."""
    video = dict(video, frames=torch.zeros_like(video["frames"]))  # what an empty render matches best
    if how == "nan depth":
        video["depth"] = torch.full_like(video["depth"], float("nan"))
    elif how == "no confident pixel":  # VideoGPA's filter keeps confidences > 1e-5 only
        video["confidence"] = torch.full_like(video["depth"], 1e-6)
    return video


@pytest.mark.parametrize("how", ["nan depth", "no confident pixel"])
@pytest.mark.parametrize("lpips", [False, True])
def test_a_video_without_usable_geometry_has_no_3dcs_and_never_wins(how, lpips):
    """An empty cloud used to score the mean square of the frames: dark frames scored about 0 and
    won their group. Its 3DCS is undefined, so the trainer's pair selection skips it."""
    generator = torch.Generator().manual_seed(3)
    videos = [_video(generator, 4, 16) for _ in range(3)]
    videos.insert(1, _without_usable_geometry(_video(generator, 4, 16), how))
    distance = (lambda render, frame: (render - frame).abs().mean((1, 2, 3))) if lpips else None
    scores = scoring.score_videos(videos, metrics="3dcs,motion", conf_threshold=10.0, lpips=distance, device="cpu")
    keys = ("consistency_score", "3dcs") + (("3dcs_lpips",) if lpips else ())
    assert all(math.isnan(scores[1][key]) for key in keys)
    assert all(math.isfinite(s[key]) for s in scores[:1] + scores[2:] for key in keys)
    assert math.isfinite(scores[1]["motion_norm"])
    from vgpa.training.data import select_videogpa_pair

    winner, _ = select_videogpa_pair(scores, min_gap=0.0)
    assert winner is not scores[1]
    assert winner["consistency_score"] == min(s["consistency_score"] for s in scores[:1] + scores[2:])


def test_3dcs_is_undefined_only_where_nothing_lands_in_any_frame():
    generator = torch.Generator().manual_seed(4)
    video = _video(generator, 3, 12)
    K, E = video["intrinsics"][None].expand(3, 3, 3, 3), video["extrinsics"][None].expand(3, 3, 4, 4)
    frames = video["frames"][None].expand(3, 3, 3, 12, 12).float() / 255
    ahead = torch.tensor([[0.0, 0.0, 2.0]])
    behind = torch.tensor([[0.0, 0.0, -2.0]])  # behind every camera: lands nowhere
    points = torch.cat([ahead, behind])  # video 0 one point ahead, video 1 one behind, video 2 none
    cloud = vgpa.PointCloud(points, torch.rand(2, 3, generator=generator), torch.tensor([1, 1, 0]))
    for masked in (False, True):
        score = metrics.consistency_score(cloud, None, K, E, frames, masked=masked, backend="torch")
        assert torch.isfinite(score[0]) and score[1:].isnan().all(), masked
    # A video whose points land in some frames only is scored (the empty frames count as VideoGPA counts them).
    only_first = E.clone()
    only_first[0, 1:, 2, 3] = -10.0  # frames 1 and 2 moved in front of the point
    render = vgpa.render_consistency(cloud, None, K, only_first, frames, backend="torch")
    assert render.coverage[0, 0] > 0 and (render.coverage[0, 1:] == 0).all()
    score = metrics.consistency_score(cloud, None, K, only_first, frames, backend="torch")
    assert score[0] == render.mse[0].mean()


def test_bad_arguments_name_the_problem():
    videos = _mixed_videos()[:2]
    with pytest.raises(ValueError, match="unknown metric"):
        scoring.score_videos(videos, metrics="3dcs,epipolar_8point")
    with pytest.raises(ValueError, match="'lpips' is part of 3DCS"):
        scoring.score_videos(videos, metrics="mvcs,lpips")
    with pytest.raises(ValueError, match="batch_size"):
        scoring.score_videos(videos, batch_size=0)
    with pytest.raises(TypeError, match="lpips_weight"):
        scoring.score_videos(videos, lpips_weight=float("nan"))
    bad = dict(videos[1], frames=videos[1]["frames"][:, :, :-1])
    with pytest.raises(ValueError, match="video 1: frames must be"):
        scoring.score_videos([videos[0], bad])
    with pytest.raises(ValueError, match="video 0: 3dcs need\\(s\\) the video's frames"):
        scoring.score_videos([dict(videos[0], frames=None)])
    # Without 3DCS no frames are needed.
    assert "mvcs" in scoring.score_videos([dict(videos[0], frames=None)], metrics="mvcs", device="cpu")[0]
    one_frame = {k: None if v is None else v[:1] for k, v in videos[0].items()}
    with pytest.raises(ValueError, match="video 0: needs at least 2 frames"):
        scoring.score_videos([one_frame])
    with pytest.raises(ValueError, match="video 0: conf_threshold=5.0 keeps the most confident points"):
        scoring.score_videos([dict(videos[0], confidence=None)], conf_threshold=5.0)
    with pytest.raises(ValueError, match="conf_threshold is a percentage"):
        scoring.score_videos(videos, conf_threshold=100)
    with pytest.raises(ValueError, match="frames holds 1 entries for 2 videos"):
        scoring.score_videos(videos, frames=[None])


def test_every_metric_states_its_direction():
    assert set(scoring.METRICS) == {"3dcs", "mvcs", "normal_stability", "reprojection", "motion", "epipolar",
                                    "epipolar_robust"}
    directions = {name: metric.lower_is_better for name, metric in scoring.METRICS.items()}
    assert directions == {"3dcs": True, "mvcs": False, "normal_stability": True, "reprojection": True, "motion": None,
                          "epipolar": True, "epipolar_robust": True}


def test_rigid_scenes_score_better_than_wobbly_ones(demo):
    seed = int(torch.randint(0, 10_000, ()).item())  # a fresh scene and camera paths every run
    videos = demo.make_group(seed, frames=6, size=48)
    geometries = [{"depth": depth, "confidence": None, "intrinsics": K, "extrinsics": E,
                   "frames": (image * 255).round().to(torch.uint8)} for _, image, depth, K, E in videos]
    scores = scoring.score_videos(geometries, device="cpu")
    rigid = [s for (kind, *_), s in zip(videos, scores) if kind == demo.RIGID]
    wobbly = [s for (kind, *_), s in zip(videos, scores) if kind == demo.WOBBLY]
    assert len(rigid) == len(wobbly) == 2
    for key in ("3dcs", "normal_stability", "reprojection_abs_rel"):  # lower is better
        assert max(s[key] for s in rigid) < min(s[key] for s in wobbly), (key, seed)
    assert min(s["mvcs"] for s in rigid) > max(s["mvcs"] for s in wobbly), seed
    assert all(s["motion_norm"] > 0.001 for s in scores)


def test_epipolar_metrics_are_the_epipolar_scores_of_the_frames():
    cv2 = pytest.importorskip("cv2")
    import numpy as np

    rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))
    size, steps = 96, 3
    videos = []
    for _ in range(2):  # one stack of two videos: a blurred random texture sliding 3 px a frame
        texture = cv2.GaussianBlur(rng.random((size, size + 3 * steps)).astype(np.float32), (0, 0), 1.5)
        texture = (texture - texture.min()) / (texture.max() - texture.min())
        frames = np.stack([np.repeat(texture[None, :, 3 * t: 3 * t + size], 3, 0) for t in range(steps)])
        video = _video(torch.Generator().manual_seed(0), steps, size)
        video["frames"] = torch.from_numpy((frames * 255).round().astype(np.uint8))
        videos.append(video)
    scores = scoring.score_videos(videos, metrics=("3dcs", "motion", "epipolar", "epipolar_robust"), device="cpu")
    stacked = torch.stack([video["frames"] for video in videos]).float() / 255
    parity = metrics.epipolar_score(stacked, method="8point", value_range=(0.0, 1.0))
    robust = metrics.epipolar_score(stacked, method="ransac", value_range=(0.0, 1.0))
    assert bool(parity.valid.all()) and bool(robust.valid.all())
    for b, got in enumerate(scores):
        assert got["epipolar"] == parity.score[b].item()
        assert got["epipolar_robust"] == robust.score[b].item()
        assert got["epipolar_inlier_ratio"] == robust.inlier_ratio[b].item() > 0.5
    assert "epipolar" not in scoring.DEFAULT_METRICS  # asked for by name: it needs OpenCV


# --------------------------------------------------------------------------------------------
# Where the world is: scores do not depend on its origin or orientation


def _smooth_scene(steps=4, size=24):
    """A float64 record: a smooth wavy surface, smooth colours (so that float rounding never
    moves a point onto a pixel of another colour by much), a camera turning and sliding from a
    first pose away from the origin, and a confidence."""
    generator = torch.Generator().manual_seed(11)
    v, u = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                          indexing="ij")
    depth = torch.stack([2.5 + 0.4 * torch.sin(u / 5 + t) + 0.3 * torch.cos(v / 7 - t) for t in range(steps)])
    depth += 0.01 * torch.rand(depth.shape, generator=generator, dtype=torch.float64)
    focal = 0.9 * size
    intrinsics = torch.tensor([[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1]], dtype=torch.float64)
    extrinsics = torch.eye(4, dtype=torch.float64).repeat(steps, 1, 1)
    step = torch.arange(steps, dtype=torch.float64)[:, None]
    extrinsics[:, :3, :3] = rotation(step * torch.tensor([0.01, 0.03, 0.005], dtype=torch.float64))
    extrinsics[:, :3, 3] = step * torch.tensor([-0.06, 0.01, 0.02], dtype=torch.float64) + torch.tensor(
        [0.3, -0.2, 0.1], dtype=torch.float64)
    frames = torch.stack([128 + 100 * torch.sin(u / 6 + 0.3 * t + c) for t in range(steps) for c in range(3)])
    # A point map that nearly agrees with depth and cameras, as a point head's would.
    rays = torch.stack([(u - size / 2) / focal, (v - size / 2) / focal, torch.ones_like(u)], -1)
    camera = depth[..., None] * rays
    point_map = torch.einsum("tji,thwj->thwi", extrinsics[:, :3, :3], camera - extrinsics[:, None, None, :3, 3])
    point_map += 0.005 * torch.randn(point_map.shape, generator=generator, dtype=torch.float64)
    return {"depth": depth, "confidence": 1 + torch.rand(depth.shape, generator=generator, dtype=torch.float64),
            "intrinsics": intrinsics.expand(steps, 3, 3), "extrinsics": extrinsics,
            "frames": frames.view(steps, 3, size, size).round().to(torch.uint8), "point_map": point_map}


def _world_change(axis_angle, direction, distance):
    """(T, T^-1) of the rigid change X' = Q X + o, (4, 4) float64, with |o| = ``distance``."""
    change = torch.eye(4, dtype=torch.float64)
    change[:3, :3] = rotation(torch.tensor(axis_angle, dtype=torch.float64))
    direction = torch.tensor(direction, dtype=torch.float64)
    change[:3, 3] = distance * direction / direction.norm()
    return change, torch.linalg.inv(change)


WORLD_CHANGES = dict(
    axis_angle=st.tuples(*[st.floats(-3.0, 3.0)] * 3),
    direction=st.tuples(*[st.floats(-1.0, 1.0)] * 3).filter(lambda d: sum(x * x for x in d) > 1e-2),
    exponent=st.floats(0.0, 1.0))
# Every score but the epipolar ones, which read the frames alone.
ALL_SCORES = ",".join(scoring.DEFAULT_METRICS)


def test_a_first_camera_at_the_origin_leaves_every_pose_as_it_is():
    """VGGT's first camera is the world: re-expressing the poses relative to it changes no bit,
    so no score of such a video changes. Another first camera becomes the identity exactly."""
    generator = torch.Generator().manual_seed(12)
    extrinsics = torch.eye(4).repeat(5, 1, 1)
    extrinsics[1:, :3, :3] = rotation(0.1 * torch.randn(4, 3, generator=generator))
    extrinsics[1:, :3, 3] = torch.randn(4, 3, generator=generator)
    relative = scoring.relative_to_first_camera(extrinsics)
    assert relative.dtype == torch.float64 and torch.equal(relative, extrinsics.double())
    moved = extrinsics.double() @ torch.linalg.inv(extrinsics[3].double())
    relative = scoring.relative_to_first_camera(moved)
    assert torch.equal(relative[0], torch.eye(4, dtype=torch.float64))
    torch.testing.assert_close(relative, extrinsics.double(), rtol=0, atol=1e-12)  # E_t T^-1 (E_0 T^-1)^-1
    singular = extrinsics.clone()
    singular[0, :3, :3] = 0
    with pytest.raises(ValueError, match=r"score_videos: video 0: extrinsics matrix E .* is singular"):
        scoring.score_videos([dict(_video(generator, 5, 8), extrinsics=singular)], device="cpu")


@pytest.mark.parametrize("points", ["depth", "point_map"])
@pytest.mark.parametrize("dtype, farthest", [(torch.float32, 1e6), (torch.float64, 1e9)], ids=["float32", "float64"])
@settings(max_examples=20, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(**WORLD_CHANGES)
@example(axis_angle=(0.5, -2.0, 1.0), direction=(0.6, -0.8, 0.3), exponent=1.0)  # always the farthest
def test_scores_do_not_depend_on_where_the_world_is(points, dtype, farthest, axis_angle, direction, exponent):
    """The same scene in a world rotated and moved by up to 1e6 (float32 cameras and point map)
    or 1e9 (float64) scores as at the origin, to 1e-5 relative: the float32 rounding of the
    cameras and points once they are re-expressed relative to the first camera. With float32
    geometry the reference is the same float32 values moved back (in float64): float32 holds a
    coordinate of 1e6 to 0.06 only, so the geometry itself differs from the scene at the origin
    by that much. Before the fix, 3DCS moved by 28% and more at such distances."""
    scene = _smooth_scene()
    change, inverse = _world_change(axis_angle, direction, farthest ** exponent)
    moved = scene["extrinsics"] @ inverse  # E' = E T^-1 sees X' = T X where E saw X
    moved_map = scene["point_map"] @ change[:3, :3].T + change[:3, 3]
    if dtype == torch.float32:
        moved, moved_map = moved.float(), moved_map.float()
        at_origin = moved.double() @ change
        map_at_origin = (moved_map.double() - change[:3, 3]) @ change[:3, :3]
    else:
        at_origin, map_at_origin = scene["extrinsics"], scene["point_map"]
    far = Geometry(**dict(scene, extrinsics=moved, point_map=moved_map))
    near = Geometry(**dict(scene, extrinsics=at_origin, point_map=map_at_origin))
    assert far.extrinsics.dtype == far.point_map.dtype == dtype
    got, want = scoring.score_videos([far, near], metrics=ALL_SCORES, conf_threshold=20.0, points=points,
                                     device="cpu")
    assert set(got) == set(want) == {"consistency_score", "3dcs", "mvcs", "normal_stability",
                                     "reprojection_abs_rel", "motion_norm"}
    for key, value in want.items():
        assert math.isfinite(value) and got[key] == pytest.approx(value, rel=1e-5, abs=1e-9), key


# --------------------------------------------------------------------------------------------
# VideoGPA's choices, restated here from its described behaviour, as options


def _videogpa_cloud(world_points, conf, colors, conf_threshold):
    """VideoGPA's 3DCS cloud: the pixels whose confidence is finite and > 1e-5 (their depth is
    not looked at); with a threshold c > 0, k = max(1, ceil(N (1 - c / 100))) of those N and
    every one whose confidence is >= the k-th largest. world_points (T, H, W, 3), conf (T, H, W),
    colors (T, 3, H, W) -> points (M, 3), colours (M, 3), in pixel order."""
    values = conf.reshape(-1)
    keep = torch.isfinite(values) & (values > 1e-5)
    if conf_threshold > 0 and bool(keep.any()):
        k = max(1, math.ceil(int(keep.sum()) * max(0.0, min(1.0, 1.0 - conf_threshold / 100.0))))
        keep &= values >= values[keep].sort(descending=True).values[k - 1]
    return world_points.reshape(-1, 3)[keep], colors.permute(0, 2, 3, 1).reshape(-1, 3)[keep]


def _videogpa_render_mse(points, colors, intrinsics, extrinsics, frames):
    """Mean over frames of the MSE between each frame and the cloud painted into its camera:
    p = K (R X + t), pixel (round(p_x / p_z), round(p_y / p_z)) half to even, kept when p_z > 0
    and inside the image, painted from the farthest point to the nearest (the nearest wins) on
    a background of 0. In float64, point by point. frames (T, 3, H, W) in [0, 1]."""
    steps, _, height, width = frames.shape
    errors = []
    for t in range(steps):
        camera = points.double() @ extrinsics[t, :3, :3].double().T + extrinsics[t, :3, 3].double()
        pixel = camera @ intrinsics[t].double().T
        z = pixel[:, 2]
        u, v = (pixel[:, 0] / z).round(), (pixel[:, 1] / z).round()
        lands = (z > 0) & (u >= 0) & (u < width) & (v >= 0) & (v < height)
        canvas = torch.zeros(height, width, 3, dtype=torch.float64)
        for i in sorted(lands.nonzero().flatten().tolist(), key=lambda i: (-z[i].item(), -i)):
            canvas[int(v[i]), int(u[i])] = colors[i].double()
        errors.append((canvas.permute(2, 0, 1) - frames[t].double()).square().mean())
    return torch.stack(errors).mean().item()


def _rigid_scene(steps=3, size=16, seed=5):
    """A rigid textured surface seen by a camera that starts at the world's origin (VGGT's
    convention) and slides: depth, the exact world points, frames coloured by the surface, and a
    confidence quantised to bfloat16 (as VGGT's comes under autocast), which repeats values."""
    generator = torch.Generator().manual_seed(seed)
    v, u = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                          indexing="ij")
    focal = 0.9 * size
    intrinsics = torch.tensor([[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1]], dtype=torch.float64)
    extrinsics = torch.eye(4, dtype=torch.float64).repeat(steps, 1, 1)
    extrinsics[:, 0, 3] = -0.04 * torch.arange(steps)
    depth, world = [], []
    for t in range(steps):  # a plane tilted in x, z = 2 + 0.05 X, seen from (0.04 t, 0, 0)
        ray_x, ray_y = (u - size / 2) / focal, (v - size / 2) / focal
        z = (2 + 0.05 * 0.04 * t) / (1 - 0.05 * ray_x)
        depth.append(z)
        world.append(torch.stack([ray_x * z + 0.04 * t, ray_y * z, z], -1))
    depth, world = torch.stack(depth), torch.stack(world)
    colour = torch.stack([0.5 + 0.4 * torch.sin(3 * world[..., 0] + c) * torch.cos(2 * world[..., 1] - c)
                          for c in range(3)], 1)  # (T, 3, H, W)
    frames = (colour * 255).round().to(torch.uint8)
    confidence = (1 + 4 * torch.rand(depth.shape, generator=generator)).to(torch.bfloat16).float()
    return {"depth": depth.float(), "confidence": confidence, "intrinsics": intrinsics.float().expand(steps, 3, 3),
            "extrinsics": extrinsics.float(), "frames": frames, "point_map": world.float()}


@pytest.mark.parametrize("conf_threshold", [0.0, 25.0, 60.0])
def test_point_map_option_scores_videogpas_cloud(conf_threshold):
    """points="point_map" with conf_ties="all" builds VideoGPA's cloud (the point head's map,
    filtered by the depth confidence, ties kept) and scores its render: the cloud equal point
    for point, the 3DCS equal to the restated render's to float32 rounding."""
    video = _rigid_scene()
    noise = 0.02 * torch.randn(video["point_map"].shape, generator=torch.Generator().manual_seed(6))
    video["point_map"] = video["point_map"] + noise  # a 2 cm disagreement between the two heads
    video["depth"][0, 0, :4] = float("nan")  # VideoGPA keeps these pixels' points: it reads no depth
    colors = video["frames"].float() / 255
    points, point_colors = _videogpa_cloud(video["point_map"], video["confidence"], colors, conf_threshold)
    cloud = vgpa.point_map_cloud(video["point_map"][None], colors[None], conf=video["confidence"][None],
                                 conf_threshold=conf_threshold, conf_ties="all")
    assert torch.equal(cloud.points, points) and torch.equal(cloud.colors, point_colors)
    assert cloud.counts.tolist() == [points.shape[0]]
    got = scoring.score_videos([Geometry(**video)], metrics="3dcs,motion", conf_threshold=conf_threshold,
                               points="point_map", conf_ties="all", device="cpu")[0]
    want = _videogpa_render_mse(points, point_colors, video["intrinsics"], video["extrinsics"], colors)
    assert got["3dcs"] == pytest.approx(want, rel=1e-5)


def test_point_map_option_follows_the_point_head_and_depth_does_not():
    """With the point head off by about two pixels' footprint (what 2 cm is at 518 x 518),
    VideoGPA's cloud (points="point_map") scores a rigid video much worse, while vgpa's (depth
    and cameras, the default) does not move."""
    video = _rigid_scene()
    exact = scoring.score_videos([Geometry(**video)], metrics="3dcs,motion", device="cpu")[0]
    exact_map = scoring.score_videos([Geometry(**video)], metrics="3dcs,motion", points="point_map",
                                     device="cpu")[0]
    assert exact_map["3dcs"] == pytest.approx(exact["3dcs"], rel=1e-3)  # the same points, to rounding
    footprint = 2.0 / video["intrinsics"][0, 0, 0]  # a pixel's width on the surface, 2 away
    noise = 2 * footprint * torch.randn(video["point_map"].shape, generator=torch.Generator().manual_seed(7))
    perturbed = Geometry(**dict(video, point_map=video["point_map"] + noise))
    depth_based = scoring.score_videos([perturbed], metrics="3dcs,motion", device="cpu")[0]
    map_based = scoring.score_videos([perturbed], metrics="3dcs,motion", points="point_map", device="cpu")[0]
    assert depth_based == exact
    assert map_based["3dcs"] > 3 * exact["3dcs"]


def test_point_map_cloud_drops_points_that_are_not_finite():
    video = _rigid_scene(steps=2, size=6)
    world = video["point_map"].clone()
    world[0, 1, 2, 0], world[1, 0, 0, 2] = float("nan"), float("inf")
    colors = video["frames"].float() / 255
    cloud = vgpa.point_map_cloud(world[None], colors[None], conf=video["confidence"][None])
    keep = torch.ones(2 * 6 * 6, dtype=torch.bool)
    keep[1 * 6 + 2], keep[36] = False, False
    assert cloud.counts.tolist() == [70] and torch.equal(cloud.points, world.reshape(-1, 3)[keep])
    assert torch.equal(cloud.colors, colors.permute(0, 2, 3, 1).reshape(-1, 3)[keep])


def test_point_map_option_needs_a_point_map():
    video = _rigid_scene()
    with pytest.raises(ValueError, match="video 1: points='point_map' builds 3DCS from the record's point map"):
        scoring.score_videos([video, dict(video, point_map=None)], points="point_map", device="cpu")
    with pytest.raises(ValueError, match=r"video 0: point_map must be \(T, H, W, 3\)"):
        scoring.score_videos([dict(video, point_map=video["point_map"][:, :4])], points="point_map", device="cpu")
    with pytest.raises(ValueError, match="points must be one of"):
        scoring.score_videos([video], points="world_points")
    # Without 3DCS the point map is not read.
    assert "mvcs" in scoring.score_videos([dict(video, point_map=None)], metrics="mvcs", points="point_map",
                                          device="cpu")[0]


@pytest.mark.parametrize("source", ["depth", "point_map"])
def test_conf_ties_all_keeps_videogpas_points(source):
    """Half-precision confidences repeat values: at the cut VideoGPA keeps every point whose
    confidence is >= the k-th (more than k), vgpa's default exactly k, ties to earlier pixels."""
    video = _rigid_scene(steps=3, size=16)
    colors = video["frames"].float() / 255
    conf, threshold = video["confidence"], 40.0
    if source == "depth":
        world = vgpa.unproject_depth(video["depth"][None], video["intrinsics"][None], video["extrinsics"][None])[0]
        build = lambda ties: vgpa.point_cloud(video["depth"][None], video["intrinsics"][None],  # noqa: E731
                                              video["extrinsics"][None], colors[None], conf=conf[None],
                                              conf_threshold=threshold, conf_ties=ties)
    else:
        world = video["point_map"]
        build = lambda ties: vgpa.point_map_cloud(world[None], colors[None], conf=conf[None],  # noqa: E731
                                                  conf_threshold=threshold, conf_ties=ties)
    points, _ = _videogpa_cloud(world, conf, colors, threshold)
    k = math.ceil(conf.numel() * (1 - threshold / 100))
    assert points.shape[0] > k  # the k-th confidence repeats
    assert torch.equal(build("all").points, points)
    first = build("first")
    assert first.counts.item() == k
    # Exactly k: all above the k-th value, then the earliest pixels holding it.
    kth = conf.reshape(-1).sort(descending=True).values[k - 1]
    above = (conf.reshape(-1) > kth).nonzero().flatten()
    tied = (conf.reshape(-1) == kth).nonzero().flatten()[:k - above.numel()]
    assert torch.equal(first.points, world.reshape(-1, 3)[torch.cat([above, tied]).sort().values])
    with pytest.raises(ValueError, match="conf_ties must be one of"):
        build("last")
    scores = {ties: scoring.score_videos([Geometry(**video)], metrics="3dcs,motion", conf_threshold=threshold,
                                         conf_ties=ties, points=source, device="cpu")[0]["3dcs"]
              for ties in ("first", "all")}
    assert scores["first"] != scores["all"]


def test_timings_report_each_stage_and_change_no_score():
    videos = _mixed_videos()
    timings = {}
    timed = scoring.score_videos(videos, device="cpu", timings=timings)
    assert timed == scoring.score_videos(videos, device="cpu")
    assert set(timings) == {"checks", "to device", "3dcs cloud", *scoring.DEFAULT_METRICS, "read back"}
    assert all(seconds >= 0 for seconds in timings.values())
