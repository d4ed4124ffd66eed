"""The Geometry record (per-frame depth, confidence and cameras of one video), adapters from the
outputs of VGGT and Depth Anything 3, and geometry providers (docs/design.md 1 step 2, 3.7).

Conventions (docs/design.md 2): OpenCV cameras (x right, y down, z forward), world-to-camera
extrinsics X_cam = R X_world + t, z-depth, pixel centres at integer coordinates. No model
package is imported here: the providers call a model the caller has loaded, and the
``from_pretrained`` helpers import the model's package when called.
"""

from __future__ import annotations

import codecs
import contextlib
import math
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from .video import _frames_to_uint8

__all__ = ["DepthAnything3Provider", "Geometry", "GeometryProvider", "VGGTProvider", "from_depth_anything_3",
           "from_vggt", "geometry_path_for", "load_geometry"]

# The .npz format version written by Geometry.save, stored under this key.
_FORMAT_KEY = "vgpa_geometry"
_FORMAT_VERSION = 1
_FIELDS = ("depth", "confidence", "intrinsics", "extrinsics", "frames", "point_map")
POINT_SOURCES = ("depth", "point_map")  # where 3DCS takes its points from


def _as_tensor(op, name, value):
    if isinstance(value, Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    raise TypeError(f"{op}: {name} must be a torch.Tensor or numpy array, got {type(value).__name__}")


def _float32(op, name, value, keep_float64=False):
    """``value`` as a detached float32 tensor, or float64 when it is float64 and ``keep_float64``."""
    value = _as_tensor(op, name, value)
    if not value.is_floating_point():
        raise TypeError(f"{op}: {name} must be floating point, got dtype {value.dtype}")
    keep = keep_float64 and value.dtype == torch.float64
    return value.detach().to(torch.float64 if keep else torch.float32)


# --------------------------------------------------------------------------------------------
# The record


@dataclass(eq=False)
class Geometry:
    """What a geometry model reconstructs from the T frames of one video.

    - ``depth`` (T, H, W) float32: z-depth in each frame's camera; a depth is valid iff finite
      and > 0.
    - ``confidence`` (T, H, W) float32 or None: larger = more confident.
    - ``intrinsics`` (T, 3, 3) float32: pinhole K in pixels at depth's resolution.
    - ``extrinsics`` (T, 4, 4) float32, or float64 when given in float64: world-to-camera
      [R | t; 0 0 0 1] (OpenCV camera); (T, 3, 4) is accepted and completed. World coordinates
      far from the origin need float64 (float32 holds a coordinate of 1e6 to 0.06).
    - ``frames`` (T, 3, H, W) uint8 RGB or None: the frames the geometry was computed from, at
      depth's resolution.
    - ``point_map`` (T, H, W, 3) float32 (float64 kept) or None: the world point of every
      pixel as a point head predicts it (VGGT's ``world_points``), when the model has one. vgpa
      builds its points from depth and cameras; VideoGPA builds 3DCS from this map
      (``score_videos(points="point_map")``).

    Other floating-point fields of another float dtype are converted to float32; numpy arrays are
    accepted. Construction checks the shapes, dtypes, devices, that K and the camera matrices
    are finite, that K is invertible and that the last row of the extrinsics is [0, 0, 0, 1];
    errors name the field.
    """

    depth: Tensor
    confidence: Tensor | None
    intrinsics: Tensor
    extrinsics: Tensor
    frames: Tensor | None = None
    point_map: Tensor | None = None

    def __post_init__(self):
        op = "Geometry"
        depth = _float32(op, "depth", self.depth)
        if depth.dim() != 3 or 0 in depth.shape:
            raise ValueError(f"{op}: depth must be (T, H, W) with T, H, W >= 1, got shape {tuple(depth.shape)}")
        steps, height, width = depth.shape
        device = depth.device

        def same_device(name, value):
            if value.device != device:
                raise ValueError(f"{op}: {name} is on {value.device} but depth is on {device}")
            return value

        confidence = None
        if self.confidence is not None:
            confidence = same_device("confidence", _float32(op, "confidence", self.confidence))
            if confidence.shape != depth.shape:
                raise ValueError(f"{op}: confidence must have depth's shape {tuple(depth.shape)}, "
                                 f"got {tuple(confidence.shape)}")

        intrinsics = same_device("intrinsics", _float32(op, "intrinsics", self.intrinsics))
        if intrinsics.shape != (steps, 3, 3):
            raise ValueError(f"{op}: intrinsics must be (T, 3, 3) = ({steps}, 3, 3) for depth of shape "
                             f"{tuple(depth.shape)}, got {tuple(intrinsics.shape)}")
        if not bool(intrinsics.isfinite().all()):
            raise ValueError(f"{op}: intrinsics must be finite")
        singular = torch.linalg.det(intrinsics.double()) == 0
        if bool(singular.any()):
            raise ValueError(f"{op}: intrinsics must be invertible; frame(s) "
                             f"{torch.nonzero(singular).flatten().tolist()} are singular")

        extrinsics = same_device("extrinsics", _float32(op, "extrinsics", self.extrinsics, keep_float64=True))
        if extrinsics.shape == (steps, 3, 4):
            bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=extrinsics.dtype, device=device).expand(steps, 1, 4)
            extrinsics = torch.cat([extrinsics, bottom], 1)
        if extrinsics.shape != (steps, 4, 4):
            raise ValueError(f"{op}: extrinsics must be (T, 4, 4) or (T, 3, 4) with T = {steps} (depth's frames), "
                             f"got {tuple(extrinsics.shape)}")
        if not bool(extrinsics.isfinite().all()):
            raise ValueError(f"{op}: extrinsics must be finite")
        bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], device=device)
        if not bool((extrinsics[:, 3] - bottom).abs().le(1e-6).all()):
            raise ValueError(f"{op}: extrinsics must be world-to-camera [R | t; 0 0 0 1]; a last row is "
                             f"{extrinsics[:, 3][(extrinsics[:, 3] - bottom).abs().gt(1e-6).any(1)][0].tolist()}")

        frames = None
        if self.frames is not None:
            frames = same_device("frames", _as_tensor(op, "frames", self.frames))
            if frames.dtype != torch.uint8:
                raise TypeError(f"{op}: frames must be uint8 RGB, got dtype {frames.dtype} "
                                "(the adapters convert frames in [0, 1])")
            if frames.dim() != 4 or frames.shape[1] != 3:
                raise ValueError(f"{op}: frames must be (T, 3, H, W), got shape {tuple(frames.shape)}")
            if frames.shape[0] != steps:
                raise ValueError(f"{op}: frames has {frames.shape[0]} frames but depth has {steps}")
            if tuple(frames.shape[2:]) != (height, width):
                raise ValueError(f"{op}: frames are {frames.shape[2]} x {frames.shape[3]} but depth is "
                                 f"{height} x {width}; frames must be at depth's resolution")

        point_map = None
        if self.point_map is not None:
            point_map = same_device("point_map", _float32(op, "point_map", self.point_map, keep_float64=True))
            if point_map.shape != (steps, height, width, 3):
                raise ValueError(f"{op}: point_map must be (T, H, W, 3) = ({steps}, {height}, {width}, 3) for depth "
                                 f"of shape {tuple(depth.shape)}, got {tuple(point_map.shape)}")

        self.depth, self.confidence, self.intrinsics = depth, confidence, intrinsics
        self.extrinsics, self.frames, self.point_map = extrinsics, frames, point_map

    def __repr__(self):
        def describe(value):
            return "None" if value is None else f"Tensor{tuple(value.shape)} {value.dtype}"
        fields = ", ".join(f"{name}={describe(getattr(self, name))}" for name in _FIELDS)
        return f"Geometry({fields}, device={self.device})"

    @property
    def num_frames(self) -> int:
        return self.depth.shape[0]

    @property
    def height(self) -> int:
        return self.depth.shape[1]

    @property
    def width(self) -> int:
        return self.depth.shape[2]

    @property
    def device(self) -> torch.device:
        return self.depth.device

    def to(self, device) -> Geometry:
        """A copy with every tensor on ``device``."""
        return Geometry(**{name: None if getattr(self, name) is None else getattr(self, name).to(device)
                           for name in _FIELDS})

    def world_points(self, backend: str = "auto", source: str = "depth") -> Tensor:
        """The world point of every pixel, (T, H, W, 3).

        source "depth": E^-1 (z K^-1 [u, v, 1]) through :func:`vgpa.unproject_depth` (invalid
        depths are unprojected as they are: mask them with ``depth.isfinite() & (depth > 0)``);
        float64 when the extrinsics are. "point_map": the record's point map as it is (VGGT's
        point head), which VideoGPA's 3DCS uses; a record without one raises ValueError."""
        from .ops.reprojection_error import unproject_depth

        if source not in POINT_SOURCES:
            raise ValueError(f"Geometry.world_points: source must be one of {POINT_SOURCES}, got {source!r}")
        if source == "point_map":
            if self.point_map is None:
                raise ValueError("Geometry.world_points: source='point_map', but this record has no point map "
                                 "(only VGGT's point head gives one, through from_vggt)")
            return self.point_map

        depth = self.depth.to(self.extrinsics.dtype)
        return unproject_depth(depth[None], self.intrinsics[None], self.extrinsics[None], backend=backend)[0]

    # ----------------------------------------------------------------------------------------
    # Files

    def save(self, path) -> Path:
        """Writes the record to ``path`` as an uncompressed .npz (exactly that path, whatever
        its suffix; parent folders are created; the file is replaced atomically). Keys:
        ``depth``, ``intrinsics``, ``extrinsics`` and, when present, ``confidence``, ``frames``
        and ``point_map``, as described on the class, plus ``vgpa_geometry`` = 1 (the format
        version; a file without a point map reads as one with ``point_map=None``). Returns the
        path."""
        path = Path(path)
        arrays = {_FORMAT_KEY: np.array(_FORMAT_VERSION)}
        for name in _FIELDS:
            value = getattr(self, name)
            if value is not None:
                arrays[name] = value.detach().cpu().numpy()
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        try:
            with open(partial, "wb") as f:  # a file object: np.savez would append ".npz" to a name
                np.savez(f, **arrays)
            os.replace(partial, path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path) -> Geometry:
        """Reads a record written by :meth:`save` (on the CPU), validating it as construction
        does. A file that is not one raises ``ValueError`` naming the file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Geometry.load: {path}: no such file")
        _check_archive_start(path)
        try:
            archive = np.load(path, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise ValueError(f"Geometry.load: {path} is not a vgpa Geometry file (a .npy array, not an .npz)")
            with archive:
                arrays = {key: archive[key] for key in archive.files}
        except (OSError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"Geometry.load: {path} is not a vgpa Geometry file (not a readable .npz: {exc})") from exc
        except ValueError as exc:
            if str(exc).startswith("Geometry.load"):
                raise
            raise ValueError(f"Geometry.load: {path} is not a vgpa Geometry file (not a readable .npz: {exc})") from exc
        if _FORMAT_KEY not in arrays:
            raise ValueError(f"Geometry.load: {path} is not a vgpa Geometry file (no {_FORMAT_KEY!r} key; it holds "
                             f"{sorted(arrays)}). Build a Geometry from a model's outputs with from_vggt or "
                             "from_depth_anything_3 and save it with Geometry.save")
        version = arrays[_FORMAT_KEY]
        version = version.item() if version.shape == () and version.dtype.kind in "iu" else repr(version.tolist())
        if version != _FORMAT_VERSION:
            raise ValueError(f"Geometry.load: {path} has format version {version}; this vgpa reads version "
                             f"{_FORMAT_VERSION}")
        missing = [name for name in ("depth", "intrinsics", "extrinsics") if name not in arrays]
        if missing:
            raise ValueError(f"Geometry.load: {path} lacks {missing}")
        try:
            return cls(**{name: torch.from_numpy(arrays[name]) if name in arrays else None for name in _FIELDS})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"Geometry.load: {path} holds an invalid Geometry: {exc}") from exc


# The first bytes of the files np.load reads: a zip archive (.npz; an empty one starts with its end
# record) and a .npy array. Anything else np.load would try to unpickle, and with
# allow_pickle=False say only that the file holds "pickled data".
_ARCHIVE_STARTS = (b"PK\x03\x04", b"PK\x05\x06")
_ARRAY_START = b"\x93NUMPY"


def _check_archive_start(path: Path) -> None:
    """Raises ValueError naming ``path`` when the file is neither an .npz nor a .npy file."""
    with open(path, "rb") as f:
        start = f.read(64)
    if start.startswith(_ARCHIVE_STARTS) or start.startswith(_ARRAY_START):
        return
    try:  # an incremental decoder accepts a character cut at the end of the 64 bytes
        text = codecs.getincrementaldecoder("utf-8")().decode(start, final=False)
    except UnicodeDecodeError:
        text = None
    if not start:
        what = "it is empty"
    elif text is not None and all(c.isprintable() or c.isspace() for c in text):
        what = f"it holds text, starting {text[:32]!r}"
    else:
        what = f"it starts with the bytes {start[:8]!r}"
    raise ValueError(f"Geometry.load: {path} is not a vgpa Geometry file (not a readable .npz: {what}); pass the "
                     ".npz file that Geometry.save wrote")


def load_geometry(path) -> Geometry:
    """:meth:`Geometry.load`."""
    return Geometry.load(path)


def geometry_path_for(video_path, folder) -> Path:
    """The geometry file of a video in ``folder``: ``<folder>/<video stem>.npz``."""
    return Path(folder) / f"{Path(video_path).stem}.npz"


# --------------------------------------------------------------------------------------------
# Adapters


def _frames_at(op, frames, steps, height, width, layout="chw"):
    """Frames (T, 3, H, W) (or (T, H, W, 3) with layout "hwc"), uint8 or float in [0, 1], as
    uint8 (T, 3, H, W) checked against depth's T, H, W."""
    frames = _as_tensor(op, "frames", frames).detach()
    if layout == "hwc" and frames.dim() == 4:
        frames = frames.permute(0, 3, 1, 2)
    if frames.dim() != 4 or frames.shape[1] != 3:
        want = "(T, H, W, 3)" if layout == "hwc" else "(T, 3, H, W)"
        raise ValueError(f"{op}: frames must be {want}, got shape {tuple(frames.shape)}")
    if frames.shape[0] != steps:
        raise ValueError(f"{op}: frames has {frames.shape[0]} frames but depth has {steps}")
    if tuple(frames.shape[2:]) != (height, width):
        raise ValueError(f"{op}: frames are {frames.shape[2]} x {frames.shape[3]} but the depth is {height} x {width}; "
                         "pass frames at the model's output resolution, or frames=None to use the model's own")
    return _frames_to_uint8(op, "frames", frames).contiguous()


def _drop_batch(op, name, value, rank):
    """``value`` with ``rank`` dimensions, or ``rank + 1`` with a leading batch of 1 dropped."""
    value = _as_tensor(op, name, value)
    if value.dim() == rank + 1:
        if value.shape[0] != 1:
            raise ValueError(f"{op}: {name} has a batch of {value.shape[0]} videos (shape {tuple(value.shape)}); "
                             "pass the predictions of one video")
        value = value[0]
    if value.dim() != rank:
        raise ValueError(f"{op}: {name} must have {rank} dimensions (or {rank + 1} with a batch of 1), "
                         f"got shape {tuple(value.shape)}")
    return value


def _rotation_from_quaternion_xyzw(quaternion: Tensor) -> Tensor:
    """(..., 4) quaternions (x, y, z, w), scalar last, any norm > 0 -> (..., 3, 3) rotations."""
    q = quaternion / quaternion.norm(dim=-1, keepdim=True)
    x, y, z, w = q.unbind(-1)
    rows = (1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
            2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
            2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y))
    return torch.stack(rows, -1).unflatten(-1, (3, 3))


def from_vggt(predictions: Mapping, frames=None, *, point_map: bool = True) -> Geometry:
    """A Geometry from the prediction dict of VGGT (``VGGT(images)``), for one video.

    VGGT's conventions, converted here:

    - ``"pose_enc"`` (1, S, 9) or (S, 9), VGGT's "absT_quaR_FoV" encoding: translation t (3),
      quaternion (4) in (x, y, z, w) order (scalar last), field of view (fov_h, fov_w) in
      radians. [R(q) | t] is camera-from-world in the OpenCV convention (the first camera is
      about the identity), i.e. vgpa's world-to-camera extrinsics as it is. The intrinsics
      follow from the FoV and the depth's size: fx = (W/2) / tan(fov_w/2),
      fy = (H/2) / tan(fov_h/2), cx = W/2, cy = H/2 (as vggt's
      ``pose_encoding_to_extri_intri``).
    - ``"depth"`` (1, S, H, W, 1), (S, H, W, 1) or (S, H, W): z-depth.
    - ``"depth_conf"`` (1, S, H, W) or (S, H, W), optional: the confidence.
    - ``"images"`` (1, S, 3, H, W) or (S, 3, H, W) in [0, 1], optional: the frames, used when
      ``frames`` is None.
    - ``"world_points"`` (1, S, H, W, 3) or (S, H, W, 3), optional: the point head's world
      points, kept as the record's ``point_map`` (unless ``point_map=False``, which keeps files
      smaller: the map is 3 floats per pixel). vgpa's 3DCS builds its points from depth and
      cameras (VGGT's authors report those give the more accurate points; see
      :meth:`Geometry.world_points`); VideoGPA's builds them from this map, which
      ``score_videos(points="point_map")`` reproduces.

    Values may be tensors or numpy arrays (the VGGT demo converts them to numpy and drops the
    batch). The cameras are computed in float64 and the result is float32, on the predictions'
    device.

    frames: (S, 3, H, W) uint8 or float in [0, 1], at the depth's resolution, or None.
    """
    op = "from_vggt"
    if not isinstance(predictions, Mapping):
        raise TypeError(f"{op}: predictions must be VGGT's prediction dict, got {type(predictions).__name__}")
    for key in ("pose_enc", "depth"):
        if key not in predictions:
            raise ValueError(f"{op}: predictions lacks {key!r} (it has {sorted(predictions)}); "
                             "run VGGT with its camera and depth heads")
    pose = _drop_batch(op, 'predictions["pose_enc"]', predictions["pose_enc"], 2)
    if pose.shape[-1] != 9:
        raise ValueError(f'{op}: predictions["pose_enc"] must be (S, 9) (absT_quaR_FoV), got {tuple(pose.shape)}')
    depth = _as_tensor(op, 'predictions["depth"]', predictions["depth"])
    if depth.dim() in (4, 5) and depth.shape[-1] == 1:
        depth = depth[..., 0]
    depth = _drop_batch(op, 'predictions["depth"]', depth, 3)
    steps, height, width = depth.shape
    if pose.shape[0] != steps:
        raise ValueError(f'{op}: predictions["pose_enc"] has {pose.shape[0]} frames but predictions["depth"] '
                         f"has {steps}")

    pose = pose.detach().to(torch.float64)
    translation, quaternion, fov_h, fov_w = pose[:, :3], pose[:, 3:7], pose[:, 7], pose[:, 8]
    if not bool(pose.isfinite().all()):
        raise ValueError(f'{op}: predictions["pose_enc"] must be finite')
    if bool((quaternion.norm(dim=-1) == 0).any()):
        raise ValueError(f'{op}: predictions["pose_enc"] holds a zero quaternion')
    if not bool(((fov_h > 0) & (fov_h < math.pi) & (fov_w > 0) & (fov_w < math.pi)).all()):
        raise ValueError(f'{op}: the fields of view in predictions["pose_enc"] must lie in (0, pi)')
    extrinsics = torch.eye(4, dtype=torch.float64, device=pose.device).repeat(steps, 1, 1)
    extrinsics[:, :3, :3] = _rotation_from_quaternion_xyzw(quaternion)
    extrinsics[:, :3, 3] = translation
    intrinsics = torch.zeros(steps, 3, 3, dtype=torch.float64, device=pose.device)
    intrinsics[:, 0, 0] = (width / 2) / torch.tan(fov_w / 2)
    intrinsics[:, 1, 1] = (height / 2) / torch.tan(fov_h / 2)
    intrinsics[:, 0, 2] = width / 2
    intrinsics[:, 1, 2] = height / 2
    intrinsics[:, 2, 2] = 1

    confidence = None
    if predictions.get("depth_conf") is not None:
        confidence = _drop_batch(op, 'predictions["depth_conf"]', predictions["depth_conf"], 3)
        if confidence.shape != depth.shape:
            raise ValueError(f'{op}: predictions["depth_conf"] has shape {tuple(confidence.shape)}, '
                             f"not the depth's {tuple(depth.shape)}")
    if frames is None and predictions.get("images") is not None:
        frames = _drop_batch(op, 'predictions["images"]', predictions["images"], 4)
    if frames is not None:
        frames = _frames_at(op, frames, steps, height, width).to(depth.device)
    points = None
    if point_map and predictions.get("world_points") is not None:
        points = _drop_batch(op, 'predictions["world_points"]', predictions["world_points"], 4)
        if points.shape != (steps, height, width, 3):
            raise ValueError(f'{op}: predictions["world_points"] has shape {tuple(points.shape)}, not (S, H, W, 3) = '
                             f"{(steps, height, width, 3)} as the depth")
        points = points.to(device=depth.device, dtype=torch.float32)
    # VGGT's world is its first camera: float32 holds it, as it holds the model's outputs.
    return Geometry(depth=depth, confidence=confidence, intrinsics=intrinsics.to(depth.device),
                    extrinsics=extrinsics.to(device=depth.device, dtype=torch.float32), frames=frames,
                    point_map=points)


def _field(prediction, name):
    if isinstance(prediction, Mapping):
        return prediction.get(name)
    return getattr(prediction, name, None)


def from_depth_anything_3(prediction, frames=None) -> Geometry:
    """A Geometry from Depth Anything 3's ``Prediction`` (``DepthAnything3.inference``), or a
    mapping with the same fields (e.g. ``dict(numpy.load("exports/npz/results.npz"))``, whose
    frames are under ``"image"``).

    Depth Anything 3's conventions, which are vgpa's: ``depth`` (N, H, W) z-depth; ``conf``
    (N, H, W) or None, larger = more confident; ``extrinsics`` (N, 3, 4) or (N, 4, 4)
    world-to-camera in the OpenCV convention; ``intrinsics`` (N, 3, 3) in pixels at the depth's
    resolution (the model works at its processing resolution, 504 on the long side by
    default); ``processed_images`` (N, H, W, 3) uint8 RGB, the frames at that resolution, used
    when ``frames`` is None. Arrays may be numpy (as the package returns them) or tensors.
    Monocular models (no camera head) predict no extrinsics and are rejected.

    frames: (N, 3, H, W) uint8 or float in [0, 1], at the depth's resolution, or None.
    """
    op = "from_depth_anything_3"
    depth = _field(prediction, "depth")
    if depth is None:
        raise TypeError(f"{op}: prediction must be Depth Anything 3's Prediction (or a mapping with its fields); "
                        f"{type(prediction).__name__} has no depth")
    for name in ("extrinsics", "intrinsics"):
        if _field(prediction, name) is None:
            raise ValueError(f"{op}: prediction has no {name}: use a Depth Anything 3 model that predicts cameras "
                             "(e.g. DA3-LARGE, DA3-GIANT, DA3NESTED), not a monocular one")
    depth = _as_tensor(op, "prediction.depth", depth)
    if depth.dim() != 3:
        raise ValueError(f"{op}: prediction.depth must be (N, H, W), got shape {tuple(depth.shape)}")
    steps, height, width = depth.shape
    if frames is None:
        images = _field(prediction, "processed_images")
        if images is None and isinstance(prediction, Mapping):
            images = prediction.get("image")
        if images is not None:
            frames = _frames_at(op, images, steps, height, width, layout="hwc")
    else:
        frames = _frames_at(op, frames, steps, height, width)
    try:
        return Geometry(depth=depth, confidence=_field(prediction, "conf"),
                        intrinsics=_as_tensor(op, "prediction.intrinsics", _field(prediction, "intrinsics")),
                        extrinsics=_as_tensor(op, "prediction.extrinsics", _field(prediction, "extrinsics")),
                        frames=None if frames is None else frames.to(depth.device))
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{op}: {exc}") from exc


# --------------------------------------------------------------------------------------------
# Providers


@runtime_checkable
class GeometryProvider(Protocol):
    """Anything that turns the prepared frames of one video, (T, 3, H, W) uint8 RGB, into a
    :class:`Geometry`: a built-in provider, or a function of your own."""

    def __call__(self, frames: Tensor) -> Geometry: ...


def _check_frames(op, frames):
    if not isinstance(frames, Tensor):
        raise TypeError(f"{op}: frames must be a torch.Tensor, got {type(frames).__name__}")
    if frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[1] != 3 or 0 in frames.shape:
        raise ValueError(f"{op}: frames must be non-empty (T, 3, H, W) uint8 RGB (e.g. from vgpa.video.read_video), "
                         f"got {tuple(frames.shape)} {frames.dtype}")


def _model_device(model):
    parameter = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return parameter.device if parameter is not None else None


class VGGTProvider:
    """Geometry from a loaded VGGT model (``vggt.models.vggt.VGGT``).

    Calls ``model(images)`` on the frames as float in [0, 1] (S, 3, H, W) on ``device`` (default:
    the model's), under ``torch.no_grad`` and, when ``dtype`` is a half type, autocast to it.
    ``dtype=None`` picks VGGT's recommendation on CUDA (bfloat16 from compute capability 8,
    float16 before) and float32 elsewhere. The sides must be multiples of 14 (VGGT's patch):
    ``read_video``'s default 518 x 518 is. Returns :func:`from_vggt` of the predictions, with
    the input frames and the point head's map, on ``device``.
    """

    PATCH = 14

    def __init__(self, model, device=None, dtype=None):
        if not callable(model):
            raise TypeError(f"VGGTProvider: model must be a callable VGGT model, got {type(model).__name__}")
        if dtype not in (None, torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"VGGTProvider: dtype must be None, float32, float16 or bfloat16, got {dtype!r}")
        self.model = model
        self.device = torch.device(device) if device is not None else None
        self.dtype = dtype

    @classmethod
    def from_pretrained(cls, name: str = "facebook/VGGT-1B", device=None, dtype=None) -> VGGTProvider:
        """Loads ``vggt.models.vggt.VGGT.from_pretrained(name)`` (downloads the weights) in eval
        mode on ``device``. Needs the vggt package."""
        try:
            from vggt.models.vggt import VGGT
        except ImportError as exc:
            raise ImportError("VGGTProvider.from_pretrained needs the vggt package: "
                              "pip install git+https://github.com/facebookresearch/vggt") from exc
        model = VGGT.from_pretrained(name).eval()
        if device is not None:
            model = model.to(device)
        return cls(model, device=device, dtype=dtype)

    def __call__(self, frames: Tensor) -> Geometry:
        op = "VGGTProvider"
        _check_frames(op, frames)
        height, width = frames.shape[2:]
        if height % self.PATCH or width % self.PATCH:
            raise ValueError(f"{op}: frame sides must be multiples of {self.PATCH} (VGGT's patch size), got "
                             f"{height} x {width}; read_video(..., size=518) prepares them as VideoGPA does")
        device = self.device if self.device is not None else _model_device(self.model)
        device = device if device is not None else frames.device
        dtype = self.dtype
        if dtype is None and device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16
        frames = frames.to(device)
        images = frames.float().div(255)
        half = dtype in (torch.float16, torch.bfloat16)
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype) if half else contextlib.nullcontext():
            predictions = self.model(images)
        return from_vggt(predictions, frames=frames)


class DepthAnything3Provider:
    """Geometry from a loaded Depth Anything 3 model (``depth_anything_3.api.DepthAnything3``)
    that predicts cameras.

    Calls ``model.inference(images, **inference_kwargs)`` with the frames as a list of
    (H, W, 3) uint8 RGB numpy arrays; Depth Anything 3 resizes them to its processing
    resolution (``process_res``, 504 by default), and the record holds the depth, cameras and
    ``processed_images`` at that resolution. Returns :func:`from_depth_anything_3` of the
    prediction, on the CPU (where Depth Anything 3 returns it).
    """

    def __init__(self, model, **inference_kwargs):
        if not callable(getattr(model, "inference", None)):
            raise TypeError("DepthAnything3Provider: model must have an inference method "
                            f"(depth_anything_3.api.DepthAnything3), got {type(model).__name__}")
        self.model = model
        self.inference_kwargs = inference_kwargs

    @classmethod
    def from_pretrained(cls, name: str = "depth-anything/DA3-LARGE", device=None,
                        **inference_kwargs) -> DepthAnything3Provider:
        """Loads ``DepthAnything3.from_pretrained(name)`` (downloads the weights) on ``device``.
        Needs the depth_anything_3 package."""
        try:
            from depth_anything_3.api import DepthAnything3
        except ImportError as exc:
            raise ImportError("DepthAnything3Provider.from_pretrained needs the depth_anything_3 package: "
                              "pip install depth-anything-3") from exc
        model = DepthAnything3.from_pretrained(name)
        if device is not None:
            model = model.to(device)
        return cls(model, **inference_kwargs)

    def __call__(self, frames: Tensor) -> Geometry:
        _check_frames("DepthAnything3Provider", frames)
        images = list(frames.detach().cpu().permute(0, 2, 3, 1).contiguous().numpy())
        prediction = self.model.inference(images, **self.inference_kwargs)
        return from_depth_anything_3(prediction)

