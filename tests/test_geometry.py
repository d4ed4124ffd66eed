"""vgpa.geometry: the Geometry record (validation, files), the VGGT and Depth Anything 3
adapters (their camera conventions turned into vgpa's), and the providers.

No model weights are available here: the adapters are tested on predictions built the way each
model encodes a known scene, and the providers on stand-in models that return such predictions.
"""

import math
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from geometry_inputs import rotation

import vgpa
from vgpa.geometry import (DepthAnything3Provider, Geometry, GeometryProvider, VGGTProvider,
                           from_depth_anything_3, from_vggt, geometry_path_for, load_geometry)


# --------------------------------------------------------------------------------------------
# Scenes and their encodings, stated independently of vgpa.geometry


def quaternion_xyzw(axis_angle):
    """(..., 3) axis-angle -> the unit quaternion (x, y, z, w) of the same rotation as
    geometry_inputs.rotation."""
    axis_angle = torch.as_tensor(axis_angle, dtype=torch.float64)
    angle = axis_angle.norm(dim=-1, keepdim=True)
    axis = axis_angle / angle.clamp_min(1e-300)
    return torch.cat([axis * (angle / 2).sin(), (angle / 2).cos()], -1)


def scene(steps=4, height=14, width=28, seed=0):
    """Random depth, an OpenCV camera moving along a known path (frame 0 = identity), and a
    principal point at the centre, as VGGT assumes. Returns depth, axis-angles (T, 3),
    translations (T, 3), fx, fy (T,), all float64."""
    g = torch.Generator().manual_seed(seed)
    depth = 1 + 3 * torch.rand(steps, height, width, generator=g, dtype=torch.float64)
    axis_angle = 0.3 * torch.randn(steps, 3, generator=g, dtype=torch.float64)
    translation = torch.randn(steps, 3, generator=g, dtype=torch.float64)
    axis_angle[0], translation[0] = 1e-20, 0  # (a zero axis-angle would have no axis)
    fx = width * (0.6 + torch.rand(steps, generator=g, dtype=torch.float64))
    fy = fx * (1 + 0.1 * torch.rand(steps, generator=g, dtype=torch.float64))
    return depth, axis_angle, translation, fx, fy


def cameras_of(axis_angle, translation, fx, fy, height, width):
    """The scene's K (T, 3, 3) and world-to-camera E (T, 4, 4)."""
    steps = fx.shape[0]
    intrinsics = torch.zeros(steps, 3, 3, dtype=torch.float64)
    intrinsics[:, 0, 0], intrinsics[:, 1, 1] = fx, fy
    intrinsics[:, 0, 2], intrinsics[:, 1, 2], intrinsics[:, 2, 2] = width / 2, height / 2, 1
    extrinsics = torch.eye(4, dtype=torch.float64).repeat(steps, 1, 1)
    extrinsics[:, :3, :3] = rotation(axis_angle)
    extrinsics[:, :3, 3] = translation
    return intrinsics, extrinsics


def unproject(depth, intrinsics, extrinsics):
    """X_w = R^T (z K^-1 [u, v, 1] - t), (T, H, W, 3), in float64."""
    steps, height, width = depth.shape
    v, u = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                          indexing="ij")
    pixels = torch.stack([u, v, torch.ones_like(u)], -1)
    rays = torch.einsum("tij,hwj->thwi", torch.linalg.inv(intrinsics.double()), pixels)
    camera = rays * depth.double()[..., None]
    rot, trans = extrinsics.double()[:, :3, :3], extrinsics.double()[:, :3, 3]
    return torch.einsum("tji,thwj->thwi", rot, camera - trans[:, None, None, :])


def vggt_predictions(depth, axis_angle, translation, fx, fy, batch=True, images=True, seed=0):
    """The scene as VGGT's forward returns it: pose_enc = [t, quaternion xyzw, fov_h, fov_w],
    depth (1, S, H, W, 1), depth_conf, world_points from depth and cameras, images in [0, 1]."""
    steps, height, width = depth.shape
    fov_h = 2 * torch.atan((height / 2) / fy)
    fov_w = 2 * torch.atan((width / 2) / fx)
    pose_enc = torch.cat([translation, quaternion_xyzw(axis_angle), fov_h[:, None], fov_w[:, None]], -1).float()
    intrinsics, extrinsics = cameras_of(axis_angle, translation, fx, fy, height, width)
    g = torch.Generator().manual_seed(seed)
    out = {
        "pose_enc": pose_enc,
        "depth": depth.float()[..., None],
        "depth_conf": 1 + torch.rand(steps, height, width, generator=g),
        "world_points": unproject(depth, intrinsics, extrinsics).float(),
        "world_points_conf": 1 + torch.rand(steps, height, width, generator=g),
    }
    if images:
        out["images"] = torch.randint(0, 256, (steps, 3, height, width), generator=g).float() / 255
    if batch:
        out = {key: value[None] for key, value in out.items()}
    return out


# --------------------------------------------------------------------------------------------
# from_vggt


@pytest.mark.parametrize("batch", [True, False])
def test_from_vggt_recovers_the_encoded_cameras(batch):
    depth, axis_angle, translation, fx, fy = scene()
    steps, height, width = depth.shape
    geometry = from_vggt(vggt_predictions(depth, axis_angle, translation, fx, fy, batch=batch))
    intrinsics, extrinsics = cameras_of(axis_angle, translation, fx, fy, height, width)
    assert geometry.num_frames == steps and (geometry.height, geometry.width) == (height, width)
    for field in ("depth", "intrinsics", "extrinsics", "confidence"):
        assert getattr(geometry, field).dtype == torch.float32
    torch.testing.assert_close(geometry.extrinsics.double(), extrinsics, atol=1e-6, rtol=0)
    torch.testing.assert_close(geometry.intrinsics.double(), intrinsics, atol=1e-4, rtol=1e-6)
    torch.testing.assert_close(geometry.depth, depth.float())
    assert geometry.frames.dtype == torch.uint8 and geometry.frames.shape == (steps, 3, height, width)


def test_from_vggt_depth_and_cameras_reproduce_world_points():
    """Unprojecting the adapter's depth with its K and E gives VGGT's world points of the
    scene, through vgpa's op and through this file's own formula."""
    depth, axis_angle, translation, fx, fy = scene(steps=3, height=28, width=14, seed=1)
    predictions = vggt_predictions(depth, axis_angle, translation, fx, fy)
    geometry = from_vggt(predictions)
    expected = predictions["world_points"][0]
    torch.testing.assert_close(geometry.world_points(), expected, atol=2e-4, rtol=1e-5)
    own = unproject(geometry.depth, geometry.intrinsics, geometry.extrinsics).float()
    torch.testing.assert_close(own, expected, atol=2e-4, rtol=1e-5)


def test_from_vggt_keeps_the_point_heads_map():
    """VideoGPA's 3DCS is built from VGGT's point head (world_points): the record carries it,
    through its file too, and world_points(source="point_map") returns it."""
    depth, axis_angle, translation, fx, fy = scene(steps=3, height=14, width=28, seed=2)
    predictions = vggt_predictions(depth, axis_angle, translation, fx, fy)
    predictions["world_points"] = predictions["world_points"] + 0.02  # a point head that disagrees
    geometry = from_vggt(predictions)
    assert geometry.point_map.dtype == torch.float32
    assert torch.equal(geometry.point_map, predictions["world_points"][0])
    assert torch.equal(geometry.world_points(source="point_map"), geometry.point_map)
    torch.testing.assert_close(geometry.world_points(), predictions["world_points"][0] - 0.02, atol=2e-4, rtol=1e-5)
    assert from_vggt(predictions, point_map=False).point_map is None
    unbatched = {key: value[0].numpy() for key, value in predictions.items()}  # the VGGT demo's layout
    assert torch.equal(from_vggt(unbatched).point_map, geometry.point_map)
    without = {key: value for key, value in predictions.items() if key != "world_points"}
    assert from_vggt(without).point_map is None
    with pytest.raises(ValueError, match="source='point_map', but this record has no point map"):
        from_vggt(without).world_points(source="point_map")
    with pytest.raises(ValueError, match="source must be one of"):
        geometry.world_points(source="pointmap")
    wrong = dict(predictions, world_points=predictions["world_points"][:, :, :7])
    with pytest.raises(ValueError, match=r'from_vggt: predictions\["world_points"\] has shape \(3, 7, 28, 3\)'):
        from_vggt(wrong)


def test_point_map_in_the_record_and_its_file(tmp_path):
    good = record(steps=2, height=4, width=6, seed=8)
    points = torch.randn(2, 4, 6, 3, dtype=torch.float64) + 1e8  # float64 kept, as for the cameras
    geometry = Geometry(**good, point_map=points)
    assert geometry.point_map.dtype == torch.float64 and torch.equal(geometry.point_map, points)
    assert "point_map=Tensor(2, 4, 6, 3) torch.float64" in repr(geometry)
    assert torch.equal(geometry.to("cpu").point_map, points)
    path = geometry.save(tmp_path / "with_map.npz")
    with np.load(path) as archive:
        assert "point_map" in archive.files and archive["vgpa_geometry"] == 1
    assert torch.equal(Geometry.load(path).point_map, points)
    # A file written before the point map existed (no such key) loads, without one.
    old = tmp_path / "old.npz"
    np.savez(old, vgpa_geometry=np.array(1), **{k: v.numpy() for k, v in good.items()})
    assert Geometry.load(old).point_map is None
    with pytest.raises(ValueError, match=r"Geometry: point_map must be \(T, H, W, 3\) = \(2, 4, 6, 3\)"):
        Geometry(**good, point_map=points[:, :3])
    with pytest.raises(TypeError, match="Geometry: point_map must be floating point"):
        Geometry(**good, point_map=points.long())


def test_from_vggt_known_motion_projects_as_opencv():
    """Camera 1 is turned 90 degrees about its optical axis (quaternion (0, 0, sin 45, cos 45) in
    VGGT's x, y, z, w order) and its pose_enc translation is (-1, 0, 0): as camera-from-world,
    its centre is -R^T t = (0, -1, 0) (1 up, y pointing down), and a world point
    5 ahead of that centre lands on camera 1's principal point (W/2, H/2)."""
    s = math.sqrt(0.5)
    pose_enc = torch.tensor([[0, 0, 0, 0, 0, 0, 1, 1.0, 1.2],
                             [-1, 0, 0, 0, 0, s, s, 1.0, 1.2]])
    geometry = from_vggt({"pose_enc": pose_enc[None], "depth": torch.full((1, 2, 6, 8, 1), 5.0)})
    turn = torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])  # R x = y, R y = -x
    torch.testing.assert_close(geometry.extrinsics[0], torch.eye(4))
    torch.testing.assert_close(geometry.extrinsics[1, :3, :3], turn, atol=1e-6, rtol=0)
    torch.testing.assert_close(geometry.extrinsics[1, :3, 3], torch.tensor([-1.0, 0, 0]))

    def project(frame, point):
        camera = geometry.extrinsics[frame] @ torch.tensor([*point, 1.0])
        pixel = geometry.intrinsics[frame] @ camera[:3]
        return pixel[:2] / pixel[2], camera[2].item()

    uv, z = project(1, (0.0, -1.0, 5.0))
    assert z == pytest.approx(5.0)
    torch.testing.assert_close(uv, torch.tensor([4.0, 3.0]), atol=1e-5, rtol=0)
    # The turn takes world x (camera 0's right) to camera 1's y (down in its image): a point
    # moved along world x appears below the principal point.
    uv, _ = project(1, (1.0, -1.0, 5.0))
    assert uv[0] == pytest.approx(4.0, abs=1e-5) and uv[1] > 3.5
    # fx = (W/2) / tan(fov_w/2), fy = (H/2) / tan(fov_h/2)
    torch.testing.assert_close(geometry.intrinsics[0, 0, 0], torch.tensor(4 / math.tan(0.6)))
    torch.testing.assert_close(geometry.intrinsics[0, 1, 1], torch.tensor(3 / math.tan(0.5)))


def test_from_vggt_quaternion_order_is_scalar_last_and_any_norm():
    axis_angle = torch.tensor([[0.0, 0.0, 1e-20], [0.4, -0.2, 0.7], [math.pi / 2, 0, 0]], dtype=torch.float64)
    q = quaternion_xyzw(axis_angle)
    q[1] *= 3.0  # VGGT's quat_to_mat normalises: so must the adapter
    q[2] *= -1.0  # q and -q are the same rotation
    pose_enc = torch.cat([torch.zeros(3, 3, dtype=torch.float64), q, torch.ones(3, 2, dtype=torch.float64)], -1)
    geometry = from_vggt({"pose_enc": pose_enc, "depth": torch.ones(3, 4, 4, 1)})
    torch.testing.assert_close(geometry.extrinsics[:, :3, :3].double(), rotation(axis_angle), atol=1e-6, rtol=0)


def test_from_vggt_accepts_numpy_and_the_demo_layout():
    """The VGGT demo converts predictions to numpy and drops the batch."""
    depth, axis_angle, translation, fx, fy = scene(seed=2)
    predictions = vggt_predictions(depth, axis_angle, translation, fx, fy, batch=False)
    as_numpy = {key: value.numpy() for key, value in predictions.items()}
    a, b = from_vggt(predictions), from_vggt(as_numpy)
    for field in ("depth", "confidence", "intrinsics", "extrinsics", "frames"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    # depth without its trailing 1, and no optional keys
    plain = from_vggt({"pose_enc": predictions["pose_enc"], "depth": predictions["depth"][..., 0]})
    assert torch.equal(plain.depth, a.depth) and plain.confidence is None and plain.frames is None


def test_from_vggt_frames():
    depth, axis_angle, translation, fx, fy = scene(seed=3)
    predictions = vggt_predictions(depth, axis_angle, translation, fx, fy)
    geometry = from_vggt(predictions)
    assert torch.equal(geometry.frames, (predictions["images"][0] * 255).round().to(torch.uint8))
    mine = torch.randint(0, 256, geometry.frames.shape, dtype=torch.uint8)
    assert torch.equal(from_vggt(predictions, frames=mine).frames, mine)
    assert torch.equal(from_vggt(predictions, frames=mine.float() / 255).frames, mine)
    with pytest.raises(ValueError, match="frames are 7 x 7 but the depth is 14 x 28"):
        from_vggt(predictions, frames=torch.zeros(4, 3, 7, 7, dtype=torch.uint8))
    with pytest.raises(ValueError, match="frames has 3 frames but depth has 4"):
        from_vggt(predictions, frames=mine[:3])
    with pytest.raises(ValueError, match=r"frames.*\[0, 1\]"):
        from_vggt(predictions, frames=mine.float())


def test_from_vggt_errors_name_the_key():
    depth, axis_angle, translation, fx, fy = scene(seed=4)
    good = vggt_predictions(depth, axis_angle, translation, fx, fy)

    def with_(**changes):
        return {**good, **changes}

    cases = [
        ({k: v for k, v in good.items() if k != "pose_enc"}, "lacks 'pose_enc'"),
        ({k: v for k, v in good.items() if k != "depth"}, "lacks 'depth'"),
        (with_(pose_enc=good["pose_enc"].repeat(2, 1, 1)), r'pose_enc"\] has a batch of 2'),
        (with_(depth=good["depth"].repeat(2, 1, 1, 1, 1)), r'depth"\] has a batch of 2'),
        (with_(pose_enc=good["pose_enc"][..., :8]), r"\(S, 9\)"),
        (with_(pose_enc=good["pose_enc"][:, :3]), "has 3 frames"),
        (with_(depth_conf=good["depth_conf"][..., :5]), "depth_conf"),
        (with_(pose_enc=good["pose_enc"].clone().index_fill_(2, torch.tensor([3, 4, 5, 6]), 0.0)), "zero quaternion"),
        (with_(pose_enc=good["pose_enc"].clone().index_fill_(2, torch.tensor([8]), 0.0)), "fields of view"),
        (with_(pose_enc=good["pose_enc"].clone().index_fill_(2, torch.tensor([0]), float("nan"))), "finite"),
    ]
    for predictions, match in cases:
        with pytest.raises(ValueError, match=match):
            from_vggt(predictions)
    with pytest.raises(TypeError, match="prediction dict"):
        from_vggt([1, 2])


# --------------------------------------------------------------------------------------------
# from_depth_anything_3


@dataclass
class DA3Prediction:
    """The fields of depth_anything_3.specs.Prediction that the adapter reads."""

    depth: np.ndarray
    is_metric: int = 0
    sky: np.ndarray | None = None
    conf: np.ndarray | None = None
    extrinsics: np.ndarray | None = None
    intrinsics: np.ndarray | None = None
    processed_images: np.ndarray | None = None


def da3_prediction(steps=3, height=12, width=18, seed=0, square=False):
    depth, axis_angle, translation, fx, fy = scene(steps, height, width, seed)
    intrinsics, extrinsics = cameras_of(axis_angle, translation, fx, fy, height, width)
    intrinsics[:, 0, 2] += 0.7  # DA3's principal point need not be the centre
    g = np.random.default_rng(seed)
    prediction = DA3Prediction(
        depth=depth.float().numpy(), conf=g.random((steps, height, width), dtype=np.float32) + 1,
        extrinsics=(extrinsics if square else extrinsics[:, :3]).float().numpy(),
        intrinsics=intrinsics.float().numpy(),
        processed_images=g.integers(0, 256, (steps, height, width, 3), dtype=np.uint8))
    return prediction, unproject(depth, intrinsics, extrinsics)


@pytest.mark.parametrize("square", [False, True])
def test_from_depth_anything_3_keeps_its_opencv_world_to_camera(square):
    prediction, world_points = da3_prediction(square=square)
    geometry = from_depth_anything_3(prediction)
    steps = prediction.depth.shape[0]
    assert geometry.extrinsics.shape == (steps, 4, 4)
    torch.testing.assert_close(geometry.extrinsics[:, :3], torch.from_numpy(prediction.extrinsics[:, :3]))
    torch.testing.assert_close(geometry.extrinsics[:, 3], torch.tensor([0.0, 0, 0, 1]).expand(steps, 4))
    assert torch.equal(geometry.intrinsics, torch.from_numpy(prediction.intrinsics))
    assert torch.equal(geometry.depth, torch.from_numpy(prediction.depth))
    assert torch.equal(geometry.confidence, torch.from_numpy(prediction.conf))
    assert torch.equal(geometry.frames, torch.from_numpy(prediction.processed_images).permute(0, 3, 1, 2))
    torch.testing.assert_close(geometry.world_points(), world_points.float(), atol=2e-4, rtol=1e-5)


def test_from_depth_anything_3_npz_export_and_optional_fields():
    prediction, _ = da3_prediction(seed=1)
    exported = {"image": prediction.processed_images, "depth": prediction.depth, "conf": prediction.conf,
                "extrinsics": prediction.extrinsics, "intrinsics": prediction.intrinsics}
    a, b = from_depth_anything_3(prediction), from_depth_anything_3(exported)
    for field in ("depth", "confidence", "intrinsics", "extrinsics", "frames"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    bare = DA3Prediction(depth=prediction.depth, extrinsics=prediction.extrinsics, intrinsics=prediction.intrinsics)
    geometry = from_depth_anything_3(bare)
    assert geometry.confidence is None and geometry.frames is None
    mine = torch.randint(0, 256, (3, 3, 12, 18), dtype=torch.uint8)
    assert torch.equal(from_depth_anything_3(prediction, frames=mine).frames, mine)


def test_from_depth_anything_3_errors():
    prediction, _ = da3_prediction(seed=2)
    with pytest.raises(ValueError, match="no extrinsics.*monocular"):
        from_depth_anything_3(DA3Prediction(depth=prediction.depth, intrinsics=prediction.intrinsics))
    with pytest.raises(ValueError, match="no intrinsics"):
        from_depth_anything_3(DA3Prediction(depth=prediction.depth, extrinsics=prediction.extrinsics))
    with pytest.raises(TypeError, match="has no depth"):
        from_depth_anything_3(object())
    with pytest.raises(ValueError, match=r"depth must be \(N, H, W\)"):
        from_depth_anything_3(DA3Prediction(depth=prediction.depth[None], extrinsics=prediction.extrinsics,
                                            intrinsics=prediction.intrinsics))
    with pytest.raises(ValueError, match="frames are 6 x 6 but the depth is 12 x 18"):
        from_depth_anything_3(prediction, frames=torch.zeros(3, 3, 6, 6, dtype=torch.uint8))
    short = DA3Prediction(depth=prediction.depth, extrinsics=prediction.extrinsics[:2],
                          intrinsics=prediction.intrinsics)
    with pytest.raises(ValueError, match="from_depth_anything_3: Geometry: extrinsics"):
        from_depth_anything_3(short)


# --------------------------------------------------------------------------------------------
# The record


def record(steps=3, height=5, width=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    intrinsics = torch.tensor([[6.0, 0, 3], [0, 6, 2], [0, 0, 1]]).repeat(steps, 1, 1)
    extrinsics = torch.eye(4).repeat(steps, 1, 1)
    extrinsics[:, :3, 3] = torch.randn(steps, 3, generator=g)
    return dict(depth=1 + torch.rand(steps, height, width, generator=g),
                confidence=torch.rand(steps, height, width, generator=g),
                intrinsics=intrinsics, extrinsics=extrinsics,
                frames=torch.randint(0, 256, (steps, 3, height, width), generator=g, dtype=torch.uint8))


def test_geometry_validation_names_the_field():
    good = record()
    cases = [
        (dict(depth=good["depth"][0]), ValueError, r"depth must be \(T, H, W\)"),
        (dict(depth=good["depth"][:0]), ValueError, "depth must be"),
        (dict(depth=good["depth"].long()), TypeError, "depth must be floating point"),
        (dict(depth=[1.0]), TypeError, "depth must be a torch.Tensor or numpy array"),
        (dict(confidence=good["confidence"][:, :4]), ValueError, "confidence must have depth's shape"),
        (dict(intrinsics=good["intrinsics"][:2]), ValueError, r"intrinsics must be \(T, 3, 3\)"),
        (dict(intrinsics=good["intrinsics"].clone().index_fill_(0, torch.tensor([1]), float("inf"))),
         ValueError, "intrinsics must be finite"),
        (dict(intrinsics=good["intrinsics"].clone().index_fill_(0, torch.tensor([2]), 0.0)),
         ValueError, r"intrinsics must be invertible; frame\(s\) \[2\]"),
        (dict(extrinsics=good["extrinsics"][:, :2]), ValueError, r"extrinsics must be \(T, 4, 4\)"),
        (dict(extrinsics=good["extrinsics"][:2]), ValueError, "extrinsics must be"),
        (dict(extrinsics=good["extrinsics"] * 2), ValueError, r"extrinsics must be world-to-camera.*last row"),
        (dict(extrinsics=good["extrinsics"].clone().index_fill_(0, torch.tensor([0]), float("nan"))),
         ValueError, "extrinsics must be finite"),
        (dict(frames=good["frames"][:2]), ValueError, "frames has 2 frames but depth has 3"),
        (dict(frames=good["frames"][:, :, :4]), ValueError, "frames are 4 x 7 but depth is 5 x 7"),
        (dict(frames=good["frames"].float() / 255), TypeError, "frames must be uint8"),
        (dict(frames=good["frames"][:, :1]), ValueError, r"frames must be \(T, 3, H, W\)"),
        (dict(confidence=good["confidence"].to("meta")), ValueError, "confidence is on meta but depth is on cpu"),
    ]
    for change, error, match in cases:
        with pytest.raises(error, match=match):
            Geometry(**{**good, **change})


def test_geometry_conversions_and_properties():
    good = record(steps=2, height=4, width=6)
    as_numpy = {key: value.numpy().astype(np.float64) if value.is_floating_point() else value.numpy()
                for key, value in good.items()}
    as_numpy["extrinsics"] = as_numpy["extrinsics"][:, :3]  # (T, 3, 4) is completed
    geometry = Geometry(**as_numpy)
    for field in ("depth", "confidence", "intrinsics"):
        value = getattr(geometry, field)
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, good[field])
    # The cameras place the world: float64 is kept (a float32 coordinate of 1e6 is off by 0.06).
    assert geometry.extrinsics.dtype == torch.float64
    torch.testing.assert_close(geometry.extrinsics, good["extrinsics"].double())
    half = Geometry(**{**good, "extrinsics": good["extrinsics"].half()})
    assert half.extrinsics.dtype == torch.float32
    assert torch.equal(geometry.frames, good["frames"])
    assert (geometry.num_frames, geometry.height, geometry.width) == (2, 4, 6)
    assert geometry.device == torch.device("cpu")
    assert "depth=Tensor(2, 4, 6)" in repr(geometry)
    moved = geometry.to("cpu")
    assert moved is not geometry and all(torch.equal(getattr(moved, f), getattr(geometry, f))
                                         for f in ("depth", "confidence", "intrinsics", "extrinsics", "frames"))
    optional = Geometry(depth=good["depth"], confidence=None, intrinsics=good["intrinsics"],
                        extrinsics=good["extrinsics"])
    assert optional.frames is None and optional.to("cpu").confidence is None


def test_world_points_match_the_unprojection_formula():
    good = record(seed=5)
    geometry = Geometry(**good)
    expected = unproject(geometry.depth, geometry.intrinsics, geometry.extrinsics).float()
    torch.testing.assert_close(geometry.world_points(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(geometry.world_points(backend="torch"), expected, atol=1e-5, rtol=1e-5)
    # float64 cameras 1e9 from the origin: the points in float64, to its rounding of the cameras.
    far = good["extrinsics"].double()
    far[:, :3, 3] += 1e9
    geometry = Geometry(**{**good, "extrinsics": far})
    points = geometry.world_points()
    assert points.dtype == torch.float64
    torch.testing.assert_close(points, unproject(geometry.depth, geometry.intrinsics, far), atol=1e-6, rtol=0)


def test_float64_cameras_survive_a_file(tmp_path):
    good = record(seed=7)
    far = good["extrinsics"].double()
    far[:, :3, 3] += 1e9 + 0.125  # not a float32 number
    geometry = Geometry(**{**good, "extrinsics": far})
    loaded = Geometry.load(geometry.save(tmp_path / "far.npz"))
    assert loaded.extrinsics.dtype == torch.float64 and torch.equal(loaded.extrinsics, far)


# --------------------------------------------------------------------------------------------
# Files


@pytest.mark.parametrize("optional", [True, False])
def test_save_load_round_trip(tmp_path, optional):
    good = record(seed=6)
    if not optional:
        good.update(confidence=None, frames=None)
    geometry = Geometry(**good)
    path = geometry.save(tmp_path / "deep" / "er" / "clip.npz")
    assert path == tmp_path / "deep" / "er" / "clip.npz" and not list(path.parent.glob("*.partial"))
    for loaded in (Geometry.load(path), load_geometry(str(path))):
        for field in ("depth", "confidence", "intrinsics", "extrinsics", "frames"):
            a, b = getattr(loaded, field), getattr(geometry, field)
            assert (a is None and b is None) or (a.dtype == b.dtype and torch.equal(a, b)), field
    with np.load(path) as archive:
        expected = {"vgpa_geometry", "depth", "intrinsics", "extrinsics"}
        expected |= {"confidence", "frames"} if optional else set()
        assert set(archive.files) == expected
    # exactly the path given, whatever its suffix (np.savez alone would append ".npz")
    other = geometry.save(tmp_path / "clip.geometry")
    assert other.is_file() and not (tmp_path / "clip.geometry.npz").exists()
    assert torch.equal(Geometry.load(other).depth, geometry.depth)


def test_load_rejects_files_that_are_not_a_geometry(tmp_path):
    missing = tmp_path / "missing.npz"
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        Geometry.load(missing)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 not really a zip")
    other = tmp_path / "other.npz"
    np.savez(other, depth=np.ones((2, 3, 3), np.float32), image=np.zeros((2, 3, 3, 3), np.uint8))
    array = tmp_path / "array.npy"
    np.save(array, np.ones(3))
    text = tmp_path / "text.npz"
    text.write_text("hello")
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    binary = tmp_path / "binary.npz"
    binary.write_bytes(b"\x00\xff\x10 other bytes")
    for path, match in [(garbage, "not a readable .npz"), (array, "a .npy array"),
                        (text, "not a readable .npz: it holds text, starting 'hello'"),
                        (empty, "not a readable .npz: it is empty"),
                        (binary, "not a readable .npz: it starts with the bytes"),
                        (other, "no 'vgpa_geometry' key; it holds \\['depth', 'image'\\]")]:
        with pytest.raises(ValueError, match=f"^Geometry.load: .*{path.name} is not a vgpa Geometry file.*{match}") \
                as raised:
            Geometry.load(path)
        assert "pickle" not in str(raised.value)  # numpy's guess for a file that is neither .npz nor .npy
    good = record()
    newer = tmp_path / "newer.npz"
    np.savez(newer, vgpa_geometry=np.array(2), **{k: v.numpy() for k, v in good.items()})
    with pytest.raises(ValueError, match="format version 2"):
        Geometry.load(newer)
    np.savez(newer, vgpa_geometry=np.array(["1"]), **{k: v.numpy() for k, v in good.items()})
    with pytest.raises(ValueError, match=r"format version \['1'\]"):
        Geometry.load(newer)
    lacking = tmp_path / "lacking.npz"
    np.savez(lacking, vgpa_geometry=np.array(1), depth=good["depth"].numpy())
    with pytest.raises(ValueError, match=r"lacking.npz lacks \['intrinsics', 'extrinsics'\]"):
        Geometry.load(lacking)
    mismatched = tmp_path / "mismatched.npz"
    np.savez(mismatched, vgpa_geometry=np.array(1), **{k: v.numpy() for k, v in good.items() if k != "frames"},
             frames=good["frames"][:2].numpy())
    with pytest.raises(ValueError, match="mismatched.npz holds an invalid Geometry: .*frames has 2 frames"):
        Geometry.load(mismatched)


def test_geometry_path_for():
    assert geometry_path_for("videos/prompt_3/seed 7.mp4", "geo") == geometry_path_for("x/seed 7.avi", "geo")
    assert str(geometry_path_for("videos/prompt_3/seed 7.mp4", "geo")) == "geo/seed 7.npz"
    assert str(geometry_path_for("clip.tar.mp4", "/data/geometry")) == "/data/geometry/clip.tar.npz"


# --------------------------------------------------------------------------------------------
# Providers


class StandInVGGT(torch.nn.Module):
    """Takes (S, 3, H, W) float images in [0, 1], as VGGT does, and returns the predictions of
    a fixed scene (batched)."""

    def __init__(self, seed=0):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seed = seed
        self.calls = []

    def forward(self, images):
        self.calls.append((images.dtype, tuple(images.shape), float(images.min()), float(images.max()),
                           torch.is_grad_enabled()))
        self.autocast = (torch.is_autocast_enabled(images.device.type), torch.get_autocast_dtype(images.device.type))
        steps, _, height, width = images.shape
        depth, axis_angle, translation, fx, fy = scene(steps, height, width, self.seed)
        predictions = vggt_predictions(depth, axis_angle, translation, fx, fy, images=False)
        predictions["images"] = images[None]
        return predictions


def test_vggt_provider_runs_the_model_and_adapts():
    model = StandInVGGT(seed=7)
    provider = VGGTProvider(model)
    assert isinstance(provider, GeometryProvider)
    frames = torch.randint(0, 256, (3, 3, 14, 28), dtype=torch.uint8)
    geometry = provider(frames)
    assert model.calls == [(torch.float32, (3, 3, 14, 28), frames.min().item() / 255, frames.max().item() / 255, False)]
    assert torch.equal(geometry.frames, frames)
    depth, axis_angle, translation, fx, fy = scene(3, 14, 28, 7)
    expected = from_vggt(vggt_predictions(depth, axis_angle, translation, fx, fy, images=False))
    for field in ("depth", "confidence", "intrinsics", "extrinsics"):
        assert torch.equal(getattr(geometry, field), getattr(expected, field)), field


def test_vggt_provider_autocast():
    """Autocast only when a half dtype is asked for (or on CUDA by default)."""
    frames = torch.randint(0, 256, (2, 3, 14, 14), dtype=torch.uint8)
    model = StandInVGGT()
    VGGTProvider(model)(frames)
    assert model.autocast[0] is False
    VGGTProvider(model, dtype=torch.bfloat16)(frames)
    assert model.autocast == (True, torch.bfloat16)
    VGGTProvider(model, device="cpu", dtype=torch.float32)(frames)
    assert model.autocast[0] is False


def test_vggt_provider_errors():
    provider = VGGTProvider(StandInVGGT())
    with pytest.raises(ValueError, match="multiples of 14"):
        provider(torch.zeros(2, 3, 14, 20, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        provider(torch.zeros(2, 3, 14, 14))
    with pytest.raises(ValueError, match=r"\(T, 3, H, W\)"):
        provider(torch.zeros(3, 14, 14, dtype=torch.uint8))
    with pytest.raises(ValueError, match="dtype"):
        VGGTProvider(StandInVGGT(), dtype=torch.int8)
    with pytest.raises(TypeError, match="model"):
        VGGTProvider("facebook/VGGT-1B")


class StandInDA3:
    """depth_anything_3.api.DepthAnything3.inference's interface: a list of (H, W, 3) uint8
    RGB images in, a Prediction at a processing resolution out."""

    def __init__(self):
        self.calls = []

    def inference(self, image, process_res=504, **kwargs):
        self.calls.append(([(a.dtype, a.shape) for a in image], process_res, kwargs))
        prediction, _ = da3_prediction(steps=len(image), height=process_res // 2, width=process_res)
        return prediction


def test_depth_anything_3_provider_passes_frames_and_options():
    model = StandInDA3()
    provider = DepthAnything3Provider(model, process_res=14, ref_view_strategy="first")
    assert isinstance(provider, GeometryProvider)
    frames = torch.randint(0, 256, (2, 3, 10, 10), dtype=torch.uint8)
    geometry = provider(frames)
    assert model.calls == [([(np.dtype(np.uint8), (10, 10, 3))] * 2, 14, {"ref_view_strategy": "first"})]
    expected = from_depth_anything_3(da3_prediction(steps=2, height=7, width=14)[0])
    for field in ("depth", "confidence", "intrinsics", "extrinsics", "frames"):
        assert torch.equal(getattr(geometry, field), getattr(expected, field)), field
    with pytest.raises(TypeError, match="inference"):
        DepthAnything3Provider(lambda frames: None)


def test_model_packages_are_imported_only_when_asked(monkeypatch):
    monkeypatch.setitem(sys.modules, "vggt", None)
    monkeypatch.setitem(sys.modules, "depth_anything_3", None)
    with pytest.raises(ImportError, match="vggt package"):
        VGGTProvider.from_pretrained()
    with pytest.raises(ImportError, match="depth_anything_3 package: pip install depth-anything-3"):
        DepthAnything3Provider.from_pretrained()


def test_a_function_is_a_geometry_provider():
    def constant_depth(frames):
        steps, _, height, width = frames.shape
        return Geometry(depth=torch.ones(steps, height, width), confidence=None,
                        intrinsics=torch.eye(3).repeat(steps, 1, 1), extrinsics=torch.eye(4).repeat(steps, 1, 1),
                        frames=frames)

    assert isinstance(constant_depth, GeometryProvider)
    assert vgpa.geometry.GeometryProvider is GeometryProvider
