"""Per-video geometric-consistency scores of many videos, batched (docs/design.md 3.7).

:func:`score_videos` takes one geometry record per video (depth, confidence, cameras, frames:
what :class:`vgpa.geometry.Geometry` holds), stacks the videos that share frame count and
resolution, runs each fused op once per stack, and returns one dict of scores per video in
input order. ``METRICS`` is the table of what can be asked for; each entry computes its keys
for a whole stack.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from . import metrics as _metrics
from .geometry import POINT_SOURCES
from .ops.normal_stability import normal_stability
from .ops.point_cloud import point_cloud, point_map_cloud
from .ops.reprojection_error import reprojection_error
from .pairs import MOTION_KEY, SCORE_KEY
from .torch_math import camera as _cameras
from .torch_math.point_cloud import CONF_TIES

OP = "score_videos"


@dataclass
class VideoBatch:
    """Videos of one frame count and resolution, stacked: depth (B, T, H, W) z-depth,
    confidence (B, T, H, W) or None, intrinsics (B, T, 3, 3), extrinsics (B, T, 4, 4)
    world-to-camera, frames (B, T, 3, H, W) RGB in [0, 1] float32 or None, point_map
    (B, T, H, W, 3) or None (read with ``points="point_map"`` only). On one device; the world is
    each video's first camera. matches: the frames' SIFT matches once an epipolar metric has
    asked for them (shared by both)."""

    depth: Tensor
    confidence: Optional[Tensor]
    intrinsics: Tensor
    extrinsics: Tensor
    frames: Optional[Tensor]
    point_map: Optional[Tensor] = None
    matches: Optional[object] = None


@dataclass
class ScoringOptions:
    """What the metric functions read besides the videos."""

    conf_threshold: float
    lpips: Optional[Callable]
    lpips_weight: float
    pairs: Optional[Tensor]
    backend: str
    points: str = "depth"
    conf_ties: str = "first"
    clock: Optional["StageClock"] = None


class StageClock:
    """Adds the seconds since the previous lap to ``timings[stage]`` at each ``lap(stage)``,
    the device synchronised first (asynchronous GPU work is counted in the stage that queued
    it). Without ``timings`` (None) it does nothing and never synchronises."""

    def __init__(self, timings: Optional[dict], device: torch.device):
        self.timings = timings
        self.device = device
        self.start = time.perf_counter()

    def lap(self, stage: str) -> None:
        if self.timings is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.timings[stage] = self.timings.get(stage, 0.0) + now - self.start
        self.start = now


@dataclass(frozen=True)
class Metric:
    """One entry of :data:`METRICS`.

    name: what ``metrics=`` takes. keys: the per-video keys it may write. lower_is_better: the
    direction of its main key (None: not a quality, e.g. the motion filter). needs_frames: it
    reads ``VideoBatch.frames``. compute: (VideoBatch, ScoringOptions) -> {key: (B,) tensor}.
    """

    name: str
    keys: tuple
    lower_is_better: Optional[bool]
    needs_frames: bool
    compute: Callable[[VideoBatch, ScoringOptions], dict]
    description: str


def _mean_over_valid_pairs(error: Tensor, valid_count: Tensor) -> Tensor:
    """Per video, the mean of the pair errors over the pairs with >= 1 valid pixel (as MVCS
    averages); NaN for a video where no pair has one."""
    has = valid_count > 0
    return torch.where(has, error, 0).sum(1) / has.sum(1)


def _three_dcs(batch: VideoBatch, options: ScoringOptions) -> dict:
    if options.points == "point_map":  # VideoGPA's cloud: the point head's map, filtered by the depth confidence
        cloud = point_map_cloud(batch.point_map, batch.frames, conf=batch.confidence,
                                conf_threshold=options.conf_threshold, conf_ties=options.conf_ties)
    else:
        cloud = point_cloud(batch.depth, batch.intrinsics, batch.extrinsics, batch.frames, conf=batch.confidence,
                            conf_threshold=options.conf_threshold, conf_ties=options.conf_ties)
    if options.clock is not None:
        options.clock.lap("3dcs cloud")
    distances = []

    def recorded_lpips(render, frame):  # keeps the distances, so that LPIPS is reported on its own too
        distance = options.lpips(render, frame)
        distances.append(torch.as_tensor(distance, device=frame.device))
        return distance

    score = _metrics.consistency_score(cloud, None, batch.intrinsics, batch.extrinsics, batch.frames,
                                       lpips=None if options.lpips is None else recorded_lpips,
                                       lpips_weight=options.lpips_weight, backend=options.backend)
    out = {SCORE_KEY: score, "3dcs": score}
    if distances:
        lpips_mean = distances[0].reshape(batch.depth.shape[:2]).to(score.dtype).mean(1)
        # Where 3DCS is undefined (nothing rendered) its LPIPS part is too.
        out["3dcs_lpips"] = torch.where(score.isnan(), score, lpips_mean)
    return out


def _mvcs(batch: VideoBatch, options: ScoringOptions) -> dict:
    return {"mvcs": _metrics.mvcs(batch.depth, batch.intrinsics, batch.extrinsics, backend=options.backend)}


def _normal_stability(batch: VideoBatch, options: ScoringOptions) -> dict:
    result = normal_stability(batch.depth, batch.intrinsics, batch.extrinsics, options.pairs, backend=options.backend)
    return {"normal_stability": _mean_over_valid_pairs(result.error, result.valid_count)}


def _reprojection(batch: VideoBatch, options: ScoringOptions) -> dict:
    result = reprojection_error(batch.depth, batch.intrinsics, batch.extrinsics, options.pairs, error="abs_rel",
                                backend=options.backend)
    return {"reprojection_abs_rel": _mean_over_valid_pairs(result.error, result.valid_count)}


def _motion(batch: VideoBatch, options: ScoringOptions) -> dict:
    return {MOTION_KEY: _metrics.motion_score(batch.extrinsics)}


def _frame_matches(batch: VideoBatch):
    """SIFT matches of the stack's consecutive frames, computed once for both epipolar metrics
    (on the host, per frame), with the coordinates on the stack's device so the fits run there.
    The frames here are [0, 1] floats, which VideoGPA maps to uint8 as x 255."""
    if batch.matches is None:
        from dataclasses import replace

        from .features import match_features

        found = match_features(batch.frames, value_range=(0.0, 1.0))
        device = batch.frames.device
        batch.matches = replace(found, x1=found.x1.to(device), x2=found.x2.to(device), counts=found.counts.to(device))
    return batch.matches


def _epipolar(batch: VideoBatch, options: ScoringOptions) -> dict:
    # The fit and the Sampson distances of the whole stack are one batched call each.
    result = _metrics.epipolar_score(matches=_frame_matches(batch), method="8point", backend=options.backend)
    return {"epipolar": result.score}


def _epipolar_robust(batch: VideoBatch, options: ScoringOptions) -> dict:
    result = _metrics.epipolar_score(matches=_frame_matches(batch), method="ransac", backend=options.backend)
    return {"epipolar_robust": result.score, "epipolar_inlier_ratio": result.inlier_ratio}


METRICS = {metric.name: metric for metric in (
    Metric("3dcs", (SCORE_KEY, "3dcs", "3dcs_lpips"), True, True, _three_dcs,
           "VideoGPA's 3DCS: re-render MSE of the fused point cloud (+ lpips_weight x LPIPS when LPIPS is on); "
           "also written as consistency_score, and 3dcs_lpips (the mean LPIPS) when LPIPS is on"),
    Metric("mvcs", ("mvcs",), False, False, _mvcs,
           "VideoGPA's multi-view consistency score exp(-mean squared depth-warp error), in (0, 1]"),
    Metric("normal_stability", ("normal_stability",), True, False, _normal_stability,
           "mean 1 - cos between warped surface normals of frame pairs"),
    Metric("reprojection", ("reprojection_abs_rel",), True, False, _reprojection,
           "mean |z' - d| / d depth-warp error of frame pairs"),
    Metric("motion", (MOTION_KEY,), None, False, _motion,
           "camera motion (the static-video filter: pairs drop videos below 0.001)"),
    Metric("epipolar", ("epipolar",), True, True, _epipolar,
           "VideoGPA's epipolar score: SIFT matches of consecutive frames, 8-point F on all matches, mean "
           "Sampson distance in pixels (NaN where VideoGPA gives -1); needs OpenCV"),
    Metric("epipolar_robust", ("epipolar_robust", "epipolar_inlier_ratio"), True, True, _epipolar_robust,
           "RANSAC F on the same matches: mean over pairs of the median Sampson distance, and the inlier ratio "
           "(higher is better); needs OpenCV"),
)}
# The epipolar metrics are asked for by name: they need OpenCV (the video extra) and run SIFT on the host.
DEFAULT_METRICS = ("3dcs", "mvcs", "normal_stability", "reprojection", "motion")
LPIPS = "lpips"  # also accepted in ``metrics``: adds LPIPS(VGG) from the lpips package to 3DCS
VGG16_CHECKPOINT = "vgg16-397923af.pth"  # torchvision's file, which lpips.LPIPS(net="vgg") loads


def package_lpips(device: Union[str, torch.device] = "cpu") -> Callable:
    """LPIPS(VGG) of the ``lpips`` package as a callable for :func:`score_videos` (frames in
    [0, 1]). Never downloads: the package must be installed and torchvision's VGG16 weights
    must already be in the torch hub cache (``torch.hub.get_dir()/checkpoints``)."""
    try:
        import lpips as lpips_package
    except ImportError as exc:
        raise ImportError(f"the 'lpips' metric needs the lpips package ({exc}); install it with "
                          "`pip install lpips`, or pass lpips= a callable of your own") from exc
    checkpoint = Path(torch.hub.get_dir()) / "checkpoints" / VGG16_CHECKPOINT
    if not checkpoint.is_file():
        raise FileNotFoundError(f"the 'lpips' metric needs torchvision's VGG16 weights at {checkpoint}, which vgpa "
                                "never downloads; put the file there (or set TORCH_HOME), or pass lpips= a callable")
    net = lpips_package.LPIPS(net="vgg", verbose=False).to(device).eval()

    def distance(render, frame):
        with torch.no_grad():
            return net(render, frame, normalize=True)

    return distance


def resolve_metrics(metrics: Union[str, Sequence[str]]) -> tuple:
    """The metric names in table order, checked; ``metrics`` a sequence or a comma-separated
    string. "lpips" is kept as a flag (it needs "3dcs")."""
    names = [m.strip() for m in metrics.split(",")] if isinstance(metrics, str) else list(metrics)
    if not names or not all(isinstance(m, str) and m for m in names):
        raise ValueError(f"{OP}: metrics must be non-empty names from {sorted(METRICS) + [LPIPS]}, got {metrics!r}")
    unknown = sorted(set(names) - set(METRICS) - {LPIPS})
    if unknown:
        raise ValueError(f"{OP}: unknown metric(s) {unknown}; choose from {sorted(METRICS) + [LPIPS]}")
    if LPIPS in names and "3dcs" not in names:
        raise ValueError(f"{OP}: metric 'lpips' is part of 3DCS; ask for '3dcs' too")
    return tuple(name for name in list(METRICS) + [LPIPS] if name in names)


def _field(geometry, name):
    if isinstance(geometry, dict):
        return geometry.get(name)
    return getattr(geometry, name, None)


def relative_to_first_camera(extrinsics: Tensor) -> Tensor:
    """World-to-camera poses (T, 4, 4) re-expressed with the first camera as the world, in
    float64: E_t E_0^-1. Every score is invariant to a rigid change of the world, so this
    changes none in exact arithmetic; it keeps the world coordinates that the float32 ops see
    near the cameras, so that a scene far from its world's origin scores as it would at it.
    A first camera at the origin (VGGT's convention) gives the poses unchanged, bit for bit."""
    steps = extrinsics.shape[0]
    pairs = torch.stack([torch.zeros(steps, dtype=torch.int64), torch.arange(steps)], 1).to(extrinsics.device)
    return _cameras.relative_transform(extrinsics[None].to(torch.float64), pairs)[0]


def _in_first_camera(point_map: Tensor, first: Tensor) -> Tensor:
    """World points (T, H, W, 3) in the frame of the first camera ``first`` (4, 4) float64, as
    the cameras are: X_0 = R_0 X + t_0, computed in float64 and rounded once to float32 (the
    dtype the ops take; float64 points stay float64). A first camera at the origin (VGGT's
    convention) leaves the map as it is, which the transform would give bit for bit."""
    dtype = torch.float64 if point_map.dtype == torch.float64 else torch.float32
    if torch.equal(first, torch.eye(4, dtype=first.dtype, device=first.device)):
        return point_map.to(dtype)
    moved = torch.addmm(first[:3, 3], point_map.reshape(-1, 3).to(device=first.device, dtype=torch.float64),
                        first[:3, :3].T)
    return moved.reshape(point_map.shape).to(dtype)


def _check_video(index, geometry, frames, needs_frames, conf_threshold, points="depth"):
    """(depth, confidence, intrinsics, extrinsics (T, 4, 4) float64 relative to the first
    camera, frames or None, point map in that frame or None) of one video, checked;
    errors name the video. ``needs_frames``: the names of the requested metrics that read
    frames; ``conf_threshold`` > 0 needs a confidence for 3DCS; ``points`` "point_map" with 3DCS
    needs the record's point map."""
    where = f"{OP}: video {index}"
    tensors = {name: _field(geometry, name) for name in ("depth", "confidence", "intrinsics", "extrinsics")}
    for name, value in tensors.items():
        if value is None and name == "confidence":
            continue
        if not isinstance(value, Tensor):
            raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(value).__name__}")
        if not value.is_floating_point():
            raise TypeError(f"{where}: {name} must be floating point, got {value.dtype}")
    depth, confidence, intrinsics, extrinsics = tensors.values()
    if depth.dim() != 3 or depth.numel() == 0:
        raise ValueError(f"{where}: depth must be a non-empty (T, H, W) tensor, got {tuple(depth.shape)}")
    steps, height, width = depth.shape
    if steps < 2:
        raise ValueError(f"{where}: needs at least 2 frames, got {steps}")
    if confidence is None and conf_threshold > 0 and "3dcs" in needs_frames:
        raise ValueError(f"{where}: conf_threshold={conf_threshold} keeps the most confident points, but the "
                         "video has no confidence")
    if confidence is not None and confidence.shape != depth.shape:
        raise ValueError(f"{where}: confidence must have the depth's shape {tuple(depth.shape)}, "
                         f"got {tuple(confidence.shape)}")
    if intrinsics.shape != (steps, 3, 3):
        raise ValueError(f"{where}: intrinsics must be (T, 3, 3) = ({steps}, 3, 3), got {tuple(intrinsics.shape)}")
    if extrinsics.shape == (steps, 3, 4):
        bottom = torch.tensor([0, 0, 0, 1], dtype=extrinsics.dtype, device=extrinsics.device).expand(steps, 1, 4)
        extrinsics = torch.cat([extrinsics, bottom], dim=1)
    if extrinsics.shape != (steps, 4, 4):
        raise ValueError(f"{where}: extrinsics must be (T, 4, 4) or (T, 3, 4) with T = {steps}, "
                         f"got {tuple(extrinsics.shape)}")
    point_map = None
    if points == "point_map" and "3dcs" in needs_frames:
        point_map = _field(geometry, "point_map")
        if point_map is None:
            raise ValueError(f"{where}: points='point_map' builds 3DCS from the record's point map (VGGT's "
                             "world_points), but the video has none; score it with points='depth'")
        if not isinstance(point_map, Tensor) or not point_map.is_floating_point():
            raise TypeError(f"{where}: point_map must be a floating-point torch.Tensor, got "
                            f"{point_map.dtype if isinstance(point_map, Tensor) else type(point_map).__name__}")
        if point_map.shape != (steps, height, width, 3):
            raise ValueError(f"{where}: point_map must be (T, H, W, 3) = ({steps}, {height}, {width}, 3), "
                             f"got {tuple(point_map.shape)}")
    first = extrinsics[0].to(torch.float64)
    try:
        extrinsics = relative_to_first_camera(extrinsics)
    except _cameras.CameraError as exc:
        raise ValueError(f"{where}: {exc}") from None
    if point_map is not None:
        point_map = _in_first_camera(point_map, first)
    if frames is None:
        frames = _field(geometry, "frames")
    if frames is None:
        if needs_frames:
            raise ValueError(f"{where}: {', '.join(needs_frames)} need(s) the video's frames; the geometry holds none "
                             "and none were passed")
        return depth, confidence, intrinsics, extrinsics, None, point_map
    if not isinstance(frames, Tensor):
        raise TypeError(f"{where}: frames must be a torch.Tensor, got {type(frames).__name__}")
    if frames.shape != (steps, 3, height, width):
        raise ValueError(f"{where}: frames must be (T, 3, H, W) = ({steps}, 3, {height}, {width}) to match the "
                         f"depth, got {tuple(frames.shape)}")
    if frames.dtype == torch.uint8:
        frames = frames.float() / 255
    elif not frames.is_floating_point():
        raise TypeError(f"{where}: frames must be uint8 or float in [0, 1], got {frames.dtype}")
    return depth, confidence, intrinsics, extrinsics, frames, point_map


def score_videos(geometries: Sequence, *, frames: Optional[Sequence[Optional[Tensor]]] = None,
                 metrics: Union[str, Sequence[str]] = DEFAULT_METRICS, conf_threshold: float = 0.0,
                 lpips: Optional[Callable] = None, lpips_weight: float = 1.0,
                 pairs: Union[Tensor, Sequence[Sequence[int]], None] = None, backend: str = "auto",
                 device: Union[str, torch.device, None] = None, batch_size: Optional[int] = None,
                 points: str = "depth", conf_ties: str = "first", timings: Optional[dict] = None) -> list:
    """Geometric-consistency scores of each video; returns one dict {key: float} per video, in
    the order of ``geometries``.

    geometries: one record per video with ``depth`` (T, H, W) z-depth, ``confidence`` (T, H, W)
    or None, ``intrinsics`` (T, 3, 3) in pixels, ``extrinsics`` (T, 4, 4) or (T, 3, 4)
    world-to-camera, ``frames`` (T, 3, H, W) uint8 or float in [0, 1], or None (a
    :class:`vgpa.geometry.Geometry`, or a dict with those keys). frames: per video, frames that
    replace the record's (e.g. the video read from disk). Videos may differ in T, H and W.

    metrics (names of :data:`METRICS`, or a comma-separated string):
    - "3dcs" -> ``consistency_score`` and ``3dcs`` (equal; lower is better): mean re-render
      MSE of the video's fused point cloud (:func:`vgpa.point_cloud` with ``conf_threshold``,
      :func:`vgpa.metrics.consistency_score`) + ``lpips_weight`` x mean LPIPS when LPIPS is on,
      which also writes ``3dcs_lpips``. LPIPS is on when ``lpips`` (a callable (renders,
      frames) -> one distance per image) is given, or when "lpips" is in ``metrics`` (LPIPS(VGG)
      of the lpips package, see :func:`package_lpips`; never downloaded).
    - "mvcs" -> ``mvcs`` (higher is better, in (0, 1]).
    - "normal_stability" -> ``normal_stability`` (lower is better, in [0, 2]).
    - "reprojection" -> ``reprojection_abs_rel`` (lower is better).
    - "motion" -> ``motion_norm`` (camera motion relative to the first camera; not a quality:
      pairs drop videos below 0.001).
    normal_stability and reprojection average over ``pairs`` (default consecutive frames) that
    have at least one valid pixel. A score that is undefined for a video (e.g. no pair with a
    valid pixel, or no point of the cloud landing in any frame) is NaN, never a stand-in number.

    points: where 3DCS takes its points from. "depth" (vgpa's default): each pixel's depth
    unprojected with its camera. "point_map": the record's ``point_map`` (VGGT's point head,
    kept by :func:`vgpa.geometry.from_vggt`) as VideoGPA builds its cloud, filtered by the
    record's confidence; every video then needs one. conf_ties: equal confidences at the
    ``conf_threshold`` cut, "first" (keep exactly k, ties to the earlier pixel) or "all" (keep
    every point >= the k-th confidence, VideoGPA's rule); see :func:`vgpa.point_cloud`.

    Each video's cameras are first re-expressed relative to its first camera, in float64
    (:func:`relative_to_first_camera`): no score depends on where the world's origin is, and
    ``motion_norm`` is measured in the first camera's frame.

    Videos with the same frame count, resolution and confidence presence are stacked, at most
    ``batch_size`` at a time (default all), and each op runs once per stack on ``device``
    (default: the GPU when there is one, else the CPU), in float32; stacking does not change
    any score. Raises ValueError / TypeError naming the video for a record that cannot be
    scored (shapes that do not match, fewer than 2 frames, no frames for 3DCS, no confidence
    with ``conf_threshold`` > 0).

    timings: a dict to which the seconds of each stage are added: "checks" (the records checked,
    the cameras made relative), "to device" (stacking and the copy to ``device`` in float32),
    "3dcs cloud" (the point cloud with its confidence filter), "3dcs" (render and error), each
    other metric by name, and "read back" (the scores to Python floats). A GPU is synchronised
    at the end of each stage, which only a timed call pays.
    """
    clock = StageClock(timings, torch.device("cpu"))
    names = resolve_metrics(metrics)
    if isinstance(lpips_weight, bool) or not isinstance(lpips_weight, (int, float)) or not math.isfinite(lpips_weight):
        raise TypeError(f"{OP}: lpips_weight must be a finite number, got {lpips_weight!r}")
    if lpips is not None and not callable(lpips):
        raise TypeError(f"{OP}: lpips must be None or a callable (renders, frames) -> distances, "
                        f"got {type(lpips).__name__}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"{OP}: batch_size must be None or an int >= 1, got {batch_size!r}")
    geometries = list(geometries)
    if frames is not None:
        frames = list(frames)
        if len(frames) != len(geometries):
            raise ValueError(f"{OP}: frames holds {len(frames)} entries for {len(geometries)} videos")
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if isinstance(conf_threshold, bool) or not isinstance(conf_threshold, (int, float)) \
            or not 0 <= conf_threshold < 100:
        raise ValueError(f"{OP}: conf_threshold is a percentage in [0, 100), got {conf_threshold!r}")
    if points not in POINT_SOURCES:
        raise ValueError(f"{OP}: points must be one of {POINT_SOURCES}, got {points!r}")
    if conf_ties not in CONF_TIES:
        raise ValueError(f"{OP}: conf_ties must be one of {CONF_TIES}, got {conf_ties!r}")
    if LPIPS in names and lpips is None:
        lpips = package_lpips(device)
    table = [METRICS[name] for name in names if name in METRICS]
    needs_frames = [metric.name for metric in table if metric.needs_frames]
    videos = [_check_video(i, g, None if frames is None else frames[i], needs_frames, conf_threshold, points)
              for i, g in enumerate(geometries)]
    if pairs is not None and not isinstance(pairs, Tensor):
        pairs = torch.as_tensor(pairs, dtype=torch.int64)
    clock.device = device
    options = ScoringOptions(float(conf_threshold), lpips, float(lpips_weight),
                             None if pairs is None else pairs.to(device), backend, points, conf_ties,
                             None if timings is None else clock)
    clock.lap("checks")

    stacks = {}
    for index, (depth, confidence, _, _, video_frames, _) in enumerate(videos):
        key = (tuple(depth.shape), confidence is not None, video_frames is not None)
        stacks.setdefault(key, []).append(index)
    results = [dict() for _ in videos]
    for indices in stacks.values():
        step = batch_size or len(indices)
        for start in range(0, len(indices), step):
            chunk = indices[start:start + step]
            batch = _stack([videos[i] for i in chunk], device)
            clock.lap("to device")
            for metric in table:
                computed = metric.compute(batch, options)
                clock.lap(metric.name)
                for key, values in computed.items():
                    for i, value in zip(chunk, values.double().tolist()):
                        results[i][key] = value
                clock.lap("read back")
    return results


def _stack(videos, device) -> VideoBatch:
    def stack(position, dtype=torch.float32):
        if videos[0][position] is None:
            return None
        parts = [video[position].to(device=device, dtype=dtype) for video in videos]
        # one video: a view, not a copy (the common case of a pipeline scoring videos one by one)
        return parts[0].unsqueeze(0) if len(parts) == 1 else torch.stack(parts)

    return VideoBatch(stack(0), stack(1), stack(2), stack(3), stack(4), stack(5))
