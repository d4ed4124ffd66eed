"""Point-cloud re-render with an exact, deterministic z-buffer, and the fused render-vs-frame
consistency behind VideoGPA's 3DCS (docs/design.md 3.3).

Two passes on the chosen backend: a z-buffer pass offers every landed point's int64 key
(float32 bits of its depth << 32 | its index) to its pixel with an integer atomic minimum, so
the nearest point wins and equal depths go to the smallest index whatever the thread order;
then a resolve pass turns the keys into image, depth and coverage, or (``render_consistency``)
straight into per-chunk squared-error partial sums without writing the render. The math is
stated in vgpa.reference.render_points, which the "torch" backend runs; every backend gets the
projection rows of vgpa.torch_math.render.

Point clouds (``points`` argument):
- a :class:`vgpa.PointCloud` (what :func:`vgpa.point_cloud` returns), with ``colors=None``;
- packed: points (N_total, 3), colors (N_total, C) and ``counts`` (B,): video b owns the next
  counts[b] rows (``counts`` may be omitted when B = 1);
- padded: points (B, N, 3), colors (B, N, C); with ``counts`` (B,) only the first counts[b]
  points of video b are used.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from .. import _backend, _checks
from .._dtypes import accumulation_dtype
from ..reference import render_points as reference
from ..torch_math import render
from .point_cloud import PointCloud
from .registry import InstructionCounts, OpSpec

OP_RENDER = "render_points"
OP_CONSISTENCY = "render_consistency"
POINT_DTYPES = (torch.float32, torch.float64)
COLOR_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
MAX_SIDE = 1 << 22  # image sides up to this size keep every rounding step exact (see kernels)
MAX_POINTS_PER_VIDEO = (1 << render.INDEX_BITS) - 1  # a point's index fills 32 key bits

# Pixels reduced into one partial sum, per backend: fixed, so sums are bitwise reproducible.
CHUNK = {"cpu": 16384, "cuda": 4096, "triton": 4096}


@dataclass
class RenderPointsResult:
    """Output of :func:`render_points`.

    image: (B, T, C, H, W) in the colours' dtype, the background where nothing landed.
    depth: (B, T, H, W) camera z of the winning point in the points' dtype, 0 where empty.
    coverage: (B, T, H, W) bool, True where a point landed.
    """

    image: Tensor
    depth: Tensor
    coverage: Tensor


@dataclass
class RenderConsistencyResult:
    """Output of :func:`render_consistency`.

    mse: (B, T) mean over pixels and channels of (render - frame)^2 (with ``masked``, over the
    covered pixels only; NaN for a frame nothing landed on). coverage: (B, T) covered fraction
    of the pixels. float32, or float64 for float64 frames.
    """

    mse: Tensor
    coverage: Tensor


# --------------------------------------------------------------------------------------------
# Backend implementations (eager: inside the custom ops)


PACKED = -1  # the ``capacity`` of a packed cloud (a padded one passes its points per video)


def _check_cloud(op, points, colors, offsets, counts, rows, background, capacity):
    """Checks, inside the custom ops (eagerly, also within a compiled graph, and for a direct
    torch.ops.vgpa call), everything the kernels index with, and returns the largest count.

    points (M, 3) and colors (M, C); offsets and counts (B,) int64, which must place each video
    inside the cloud: a padded cloud (``capacity`` N >= 0 points per video) has offsets b N and
    counts <= N, a packed one (``capacity`` PACKED) consecutive ranges covering all M points.
    rows (B, T, 12) in the points' dtype; background (C,) in the colours' dtype. Reads the (B,)
    offsets and counts on the host (one sync on a GPU)."""
    device = points.device
    if points.dim() != 2 or points.shape[1] != 3 or points.dtype not in POINT_DTYPES:
        raise ValueError(f"{op}: the kernels take points (M, 3) in one of {POINT_DTYPES}, got {points.dtype} "
                         f"{tuple(points.shape)}")
    total, videos = points.shape[0], offsets.shape[0] if offsets.dim() == 1 else -1
    if colors.dim() != 2 or colors.shape[0] != total or colors.shape[1] < 1 or colors.device != device:
        raise ValueError(f"{op}: colors must be (M, C) = ({total}, C >= 1) on {device}, got {tuple(colors.shape)}")
    for name, x in (("offsets", offsets), ("counts", counts)):
        _checks.buffer(op, name, x, (videos,), torch.int64, device)
    _checks.buffer(op, "rows", rows, (videos, rows.shape[1] if rows.dim() == 3 else 1, 12), points.dtype, device)
    _checks.buffer(op, "background", background, (colors.shape[1],), colors.dtype, device)
    offsets_list, counts_list = offsets.tolist(), counts.tolist()
    for b, count in enumerate(counts_list):
        if count < 0:
            raise ValueError(f"{op}: counts[{b}] = {count} is negative")
        if count > MAX_POINTS_PER_VIDEO:
            raise ValueError(f"{op}: video {b} has {count} points; at most {MAX_POINTS_PER_VIDEO} per video")
    if capacity == PACKED:
        if sum(counts_list) != total:
            raise ValueError(f"{op}: packed counts sum to {sum(counts_list)} but there are {total} points")
        starts = [0] + list(itertools.accumulate(counts_list))[:-1] if counts_list else []
    else:
        if capacity < 0 or videos * capacity != total:
            raise ValueError(f"{op}: a padded cloud of {videos} videos x {capacity} points has {videos * capacity} "
                             f"rows, got {total}")
        if any(count > capacity for count in counts_list):
            raise ValueError(f"{op}: padded counts {counts_list} exceed the {capacity} points per video")
        starts = [b * capacity for b in range(videos)]
    if offsets_list != starts:
        raise ValueError(f"{op}: offsets {offsets_list} do not match the cloud layout (expected {starts})")
    return max(counts_list, default=0)


def _zbuffer(backend, points, offsets, counts, rows, height, width, max_count):
    videos, frames = rows.shape[:2]
    keys = torch.full((videos, frames, height, width), render.EMPTY_KEY, dtype=torch.int64, device=points.device)
    if backend == "triton":
        from ..kernels.render_points import render_points_zbuffer

        render_points_zbuffer(points, offsets, counts, rows, keys, max_count)
    else:
        _backend.launch_compiled(backend, "render_points_zbuffer", points.device, videos=videos, frames=frames,
                                 height=height, width=width, max_count=max_count,
                                 points_dtype=_backend.dtype_code(points.dtype), points=points.data_ptr(),
                                 offsets=offsets.data_ptr(), counts=counts.data_ptr(), rows=rows.data_ptr(),
                                 keys=keys.data_ptr())
    return keys


def _render_kernel(backend, points, colors, offsets, counts, rows, background, height, width, max_count):
    keys = _zbuffer(backend, points, offsets, counts, rows, height, width, max_count)
    videos, frames = rows.shape[:2]
    channels = colors.shape[1]
    image = torch.empty((videos, frames, channels, height, width), dtype=colors.dtype, device=points.device)
    depth = torch.empty((videos, frames, height, width), dtype=points.dtype, device=points.device)
    coverage = torch.empty((videos, frames, height, width), dtype=torch.uint8, device=points.device)
    if backend == "triton":
        from ..kernels.render_points import render_points_resolve

        render_points_resolve(keys, points, colors, offsets, rows, background, image, depth, coverage)
    else:
        _backend.launch_compiled(backend, "render_points_resolve", points.device, videos=videos, frames=frames,
                                 height=height, width=width, max_count=max_count, channels=channels,
                                 points_dtype=_backend.dtype_code(points.dtype),
                                 colors_dtype=_backend.dtype_code(colors.dtype), keys=keys.data_ptr(),
                                 points=points.data_ptr(), colors=colors.data_ptr(), offsets=offsets.data_ptr(),
                                 rows=rows.data_ptr(), background=background.data_ptr(), image=image.data_ptr(),
                                 depth=depth.data_ptr(), coverage=coverage.data_ptr())
    return image, depth, coverage.view(torch.bool)


def _consistency_kernel(backend, points, colors, offsets, counts, rows, frames, background, masked, max_count):
    videos, steps, channels, height, width = frames.shape
    keys = _zbuffer(backend, points, offsets, counts, rows, height, width, max_count)
    hw = height * width
    chunk = CHUNK[backend]
    chunks = -(-hw // chunk)
    acc = accumulation_dtype(frames.dtype)
    squared = torch.empty((videos * steps, chunks), dtype=acc, device=points.device)
    covered = torch.empty((videos * steps, chunks), dtype=torch.int64, device=points.device)
    if backend == "triton":
        from ..kernels.render_points import render_consistency

        render_consistency(keys, colors, offsets, background, frames, squared, covered, chunk, masked)
    else:
        _backend.launch_compiled(backend, "render_consistency", points.device, videos=videos, frames=steps,
                                 height=height, width=width, max_count=max_count, channels=channels,
                                 colors_dtype=_backend.dtype_code(colors.dtype), keys=keys.data_ptr(),
                                 colors=colors.data_ptr(), offsets=offsets.data_ptr(),
                                 background=background.data_ptr(), target=frames.data_ptr(),
                                 squared_partials=squared.data_ptr(), covered_partials=covered.data_ptr(),
                                 chunks=chunks, chunk=chunk, masked=masked)
    squared = squared.sum(1).view(videos, steps)
    n_covered = covered.sum(1).view(videos, steps).to(acc)
    mse = squared / (n_covered * channels if masked else hw * channels)
    return mse, n_covered / hw


# --------------------------------------------------------------------------------------------
# torch.library registration: opaque to torch.compile. No gradient (a z-buffer is piecewise
# constant in the geometry); inputs are detached by the public functions.


@torch.library.custom_op("vgpa::render_points", mutates_args=())
def _render_op(points: Tensor, colors: Tensor, offsets: Tensor, counts: Tensor, rows: Tensor, background: Tensor,
               height: int, width: int, capacity: int, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    # The cloud checks run here, eagerly, even inside a compiled graph.
    backend = _backend.kernel_backend(OP_RENDER, backend)
    points, colors, rows, background = (x.contiguous() for x in (points, colors, rows, background))
    max_count = _check_cloud(OP_RENDER, points, colors, offsets, counts, rows, background, capacity)
    _check_size(OP_RENDER, "height", height)
    _check_size(OP_RENDER, "width", width)
    return _render_kernel(backend, points, colors, offsets, counts, rows, background, height, width, max_count)


@_render_op.register_fake
def _(points, colors, offsets, counts, rows, background, height, width, capacity, backend):
    videos, frames = rows.shape[:2]
    return (colors.new_empty((videos, frames, colors.shape[1], height, width)),
            points.new_empty((videos, frames, height, width)),
            points.new_empty((videos, frames, height, width), dtype=torch.bool))


@torch.library.custom_op("vgpa::render_consistency", mutates_args=())
def _consistency_op(points: Tensor, colors: Tensor, offsets: Tensor, counts: Tensor, rows: Tensor, frames: Tensor,
                    background: Tensor, masked: bool, capacity: int, backend: str) -> tuple[Tensor, Tensor]:
    # The cloud checks run here, eagerly, even inside a compiled graph.
    backend = _backend.kernel_backend(OP_CONSISTENCY, backend)
    points, colors, rows, frames, background = (x.contiguous() for x in (points, colors, rows, frames, background))
    max_count = _check_cloud(OP_CONSISTENCY, points, colors, offsets, counts, rows, background, capacity)
    if frames.dim() != 5 or frames.shape[:3] != rows.shape[:2] + colors.shape[1:] or frames.dtype != colors.dtype \
            or frames.device != points.device:
        raise ValueError(f"{OP_CONSISTENCY}: frames must be {colors.dtype} (B, T, C, H, W) with B, T, C = "
                         f"{tuple(rows.shape[:2] + colors.shape[1:])}, got {frames.dtype} {tuple(frames.shape)}")
    _check_size(OP_CONSISTENCY, "frame height", frames.shape[3])
    _check_size(OP_CONSISTENCY, "frame width", frames.shape[4])
    return _consistency_kernel(backend, points, colors, offsets, counts, rows, frames, background, masked, max_count)


@_consistency_op.register_fake
def _(points, colors, offsets, counts, rows, frames, background, masked, capacity, backend):
    acc = accumulation_dtype(frames.dtype)
    shape = frames.shape[:2]
    return frames.new_empty(shape, dtype=acc), frames.new_empty(shape, dtype=acc)


@torch.library.custom_op("vgpa::render_cloud_layout", mutates_args=())
def _cloud_layout_op(points: Tensor, colors: Tensor, offsets: Tensor, counts: Tensor, rows: Tensor,
                     background: Tensor, capacity: int, op: str) -> tuple[Tensor, Tensor]:
    """The kernels' cloud checks for the "torch" backend (plain torch code that torch.compile
    traces): as an op of its own they run when a compiled graph runs. Returns copies of offsets
    and counts, which the caller renders with, so that the checks cannot be dropped."""
    _check_cloud(op, points, colors, offsets, counts, rows, background, capacity)
    return offsets.clone(), counts.clone()


@_cloud_layout_op.register_fake
def _(points, colors, offsets, counts, rows, background, capacity, op):
    return torch.empty_like(offsets), torch.empty_like(counts)


# --------------------------------------------------------------------------------------------
# Validation and the flat cloud layout


def _check_tensor(op, name, x, device, dtypes=None):
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if dtypes is not None and x.dtype not in dtypes:
        raise TypeError(f"{op}: {name} has dtype {x.dtype}; expected one of {dtypes}")
    if device is not None and x.device != device:
        raise ValueError(f"{op}: {name} is on {x.device} but points are on {device}")


def _check_cameras(op, intrinsics, extrinsics, device):
    _check_tensor(op, "intrinsics", intrinsics, device, COLOR_DTYPES)
    _check_tensor(op, "extrinsics", extrinsics, device, COLOR_DTYPES)
    if intrinsics.dim() != 4 or intrinsics.shape[2:] != (3, 3):
        raise ValueError(f"{op}: intrinsics must be (B, T, 3, 3), got {tuple(intrinsics.shape)}")
    videos, frames = intrinsics.shape[:2]
    if extrinsics.shape not in ((videos, frames, 4, 4), (videos, frames, 3, 4)):
        raise ValueError(f"{op}: extrinsics must be (B, T, 4, 4) or (B, T, 3, 4) matching intrinsics "
                         f"(B, T) = {(videos, frames)}; got {tuple(extrinsics.shape)}")
    if videos < 1 or frames < 1:
        raise ValueError(f"{op}: need at least one video and one frame, got intrinsics {tuple(intrinsics.shape)}")
    return videos, frames


def _counts_tensor(op, counts, videos, device):
    if isinstance(counts, Tensor):
        if counts.dtype.is_floating_point or counts.dtype.is_complex or counts.dtype == torch.bool:
            raise TypeError(f"{op}: counts must be an integer tensor, got {counts.dtype}")
        counts = counts.to(device=device, dtype=torch.int64)
    else:
        values = list(counts) if isinstance(counts, (list, tuple)) else None
        if values is None or not all(isinstance(c, int) and not isinstance(c, bool) for c in values):
            raise TypeError(f"{op}: counts must be an int tensor or a list of ints, got {counts!r}")
        counts = torch.tensor(values, dtype=torch.int64, device=device)
    if counts.shape != (videos,):
        raise ValueError(f"{op}: counts must have shape (B,) = ({videos},), got {tuple(counts.shape)}")
    return counts


def _flat_cloud(op, points, colors, counts, videos):
    """(points (M, 3), colors (M, C), offsets (B,), counts (B,)), contiguous, detached."""
    if isinstance(points, PointCloud):
        if colors is not None or counts is not None:
            raise ValueError(f"{op}: a PointCloud carries its colours and counts; pass colors=None "
                             "and no counts")
        points, colors, counts = points.points, points.colors, points.counts
    _check_tensor(op, "points", points, None, POINT_DTYPES)
    device = points.device
    _check_tensor(op, "colors", colors, device, COLOR_DTYPES)
    if points.dim() == 3:  # padded (B, N, 3)
        if points.shape[0] != videos or points.shape[2] != 3:
            raise ValueError(f"{op}: padded points must be (B, N, 3) with B = {videos} (from intrinsics), "
                             f"got {tuple(points.shape)}")
        if colors.dim() != 3 or colors.shape[:2] != points.shape[:2] or colors.shape[2] < 1:
            raise ValueError(f"{op}: colors must be (B, N, C) = {tuple(points.shape[:2])} + (C,) with C >= 1, "
                             f"got {tuple(colors.shape)}")
        capacity = points.shape[1]
        offsets = torch.arange(videos, dtype=torch.int64, device=device) * capacity
        if counts is None:
            counts = torch.full((videos,), capacity, dtype=torch.int64, device=device)
        else:  # counts <= N is checked inside the op
            counts = _counts_tensor(op, counts, videos, device)
        points, colors = points.reshape(-1, 3), colors.reshape(-1, colors.shape[2])
    elif points.dim() == 2:  # packed (N_total, 3)
        if points.shape[1] != 3:
            raise ValueError(f"{op}: packed points must be (N_total, 3), got {tuple(points.shape)}")
        if colors.dim() != 2 or colors.shape[0] != points.shape[0] or colors.shape[1] < 1:
            raise ValueError(f"{op}: colors must be (N_total, C) with N_total = {points.shape[0]} and C >= 1, "
                             f"got {tuple(colors.shape)}")
        capacity = PACKED
        if counts is None:
            if videos != 1:
                raise ValueError(f"{op}: packed points (N_total, 3) of {videos} videos need counts (B,)")
            counts = torch.full((1,), points.shape[0], dtype=torch.int64, device=device)
        else:  # the sum of the counts is checked inside the op
            counts = _counts_tensor(op, counts, videos, device)
        offsets = torch.cumsum(counts, 0) - counts
    else:
        raise ValueError(f"{op}: points must be (N_total, 3) packed or (B, N, 3) padded, got {tuple(points.shape)}")
    return points.detach().contiguous(), colors.detach().contiguous(), offsets, counts, capacity


def _background(op, background, channels, dtype, device):
    if isinstance(background, Tensor):
        value = background.detach().to(device=device, dtype=dtype)
    elif isinstance(background, (int, float)) and not isinstance(background, bool):
        value = torch.full((channels,), float(background), dtype=dtype, device=device)
    else:
        try:
            if isinstance(background, str) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                      for v in background):
                raise TypeError
            value = torch.tensor([float(v) for v in background], dtype=dtype, device=device)
        except TypeError:
            raise TypeError(f"{op}: background must be a number or {channels} numbers, got {background!r}") from None
    if value.dim() == 0:
        value = value.expand(channels)
    if value.shape != (channels,):
        raise ValueError(f"{op}: background must be a number or hold C = {channels} values, "
                         f"got shape {tuple(value.shape)}")
    return value.contiguous()


def _check_size(op, name, value):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{op}: {name} must be an int, got {type(value).__name__}")
    if not 1 <= value <= MAX_SIDE:
        raise ValueError(f"{op}: {name} must lie in [1, {MAX_SIDE}], got {value}")


# --------------------------------------------------------------------------------------------
# Public API

Cloud = Union[Tensor, PointCloud]


def render_points(points: Cloud, colors: Optional[Tensor], intrinsics: Tensor, extrinsics: Tensor, height: int,
                  width: int, *, counts: Optional[Union[Tensor, Sequence[int]]] = None,
                  background: Union[float, Sequence[float], Tensor] = 0.0,
                  backend: str = "auto") -> RenderPointsResult:
    """Renders each video's coloured point cloud into each of its frames' cameras.

    points / colors / counts: a point cloud in one of the formats of the module docstring.
    intrinsics: (B, T, 3, 3); extrinsics: (B, T, 4, 4) or (B, T, 3, 4), world-to-camera.
    Points are float32 or float64; colours any float dtype.

    A point lands on pixel (rint(u), rint(v)) (half to even) iff its coordinates are finite,
    its camera z is finite and > 0 and the pixel is inside the image; NaN, inf, behind-camera
    and off-image points are ignored. Each pixel shows the landed point with the smallest z
    (compared at float32 precision), equal depths going to the smallest point index within its
    video; empty pixels show ``background`` (a number or C numbers). The result is exact and
    bitwise reproducible on every backend. Returns a :class:`RenderPointsResult`; no gradient.
    """
    videos, _ = _check_cameras(OP_RENDER, intrinsics, extrinsics, _device_of(points))
    _check_size(OP_RENDER, "height", height)
    _check_size(OP_RENDER, "width", width)
    points, colors, offsets, counts, capacity = _flat_cloud(OP_RENDER, points, colors, counts, videos)
    resolved = _backend.resolve(backend, points.device, OP_RENDER)
    rows = render.projection_rows(intrinsics.detach(), extrinsics.detach(), points.dtype)
    bg = _background(OP_RENDER, background, colors.shape[1], colors.dtype, points.device)
    if resolved == "torch":  # the reference
        offsets, counts = _cloud_layout_op(points, colors, offsets, counts, rows, bg, capacity, OP_RENDER)
        image, depth, coverage = reference.render_points(points, colors, offsets, counts, rows, height, width, bg)
    else:
        image, depth, coverage = _render_op(points, colors, offsets, counts, rows, bg, height, width, capacity,
                                            resolved)
    return RenderPointsResult(image, depth, coverage)


def render_consistency(points: Cloud, colors: Optional[Tensor], intrinsics: Tensor, extrinsics: Tensor,
                       frames: Tensor, *, counts: Optional[Union[Tensor, Sequence[int]]] = None,
                       masked: bool = False, background: Union[float, Sequence[float], Tensor] = 0.0,
                       backend: str = "auto") -> RenderConsistencyResult:
    """Re-render error of each frame: the render of :func:`render_points` compared with the
    real ``frames`` (B, T, C, H, W) without writing the render out.

    mse: mean over pixels and channels of (render - frame)^2, empty pixels (holding
    ``background``) included as VideoGPA counts them; with ``masked`` only covered pixels
    count. coverage: the covered fraction. Colours are cast to the frames' dtype first; sums
    run in float32 (float64 for float64 frames) over fixed chunks, so results are bitwise
    reproducible on a given backend. Returns a :class:`RenderConsistencyResult`.
    """
    videos, steps = _check_cameras(OP_CONSISTENCY, intrinsics, extrinsics, _device_of(points))
    points, colors, offsets, counts, capacity = _flat_cloud(OP_CONSISTENCY, points, colors, counts, videos)
    _check_tensor(OP_CONSISTENCY, "frames", frames, points.device, COLOR_DTYPES)
    if frames.dim() != 5 or frames.shape[:3] != (videos, steps, colors.shape[1]):
        raise ValueError(f"{OP_CONSISTENCY}: frames must be (B, T, C, H, W) with B, T, C = {videos}, {steps}, "
                         f"{colors.shape[1]} (from the cameras and colours), got {tuple(frames.shape)}")
    _check_size(OP_CONSISTENCY, "frame height", frames.shape[3])
    _check_size(OP_CONSISTENCY, "frame width", frames.shape[4])
    if not isinstance(masked, bool):
        raise TypeError(f"{OP_CONSISTENCY}: masked must be a bool, got {type(masked).__name__}")
    resolved = _backend.resolve(backend, points.device, OP_CONSISTENCY)
    rows = render.projection_rows(intrinsics.detach(), extrinsics.detach(), points.dtype)
    colors = colors.to(frames.dtype)
    bg = _background(OP_CONSISTENCY, background, colors.shape[1], frames.dtype, points.device)
    frames = frames.detach().contiguous()
    if resolved == "torch":  # the reference
        offsets, counts = _cloud_layout_op(points, colors, offsets, counts, rows, bg, capacity, OP_CONSISTENCY)
        mse, coverage = reference.render_consistency(points, colors, offsets, counts, rows, frames, bg, masked)
    else:
        mse, coverage = _consistency_op(points, colors, offsets, counts, rows, frames, bg, masked, capacity, resolved)
    return RenderConsistencyResult(mse, coverage)


def _device_of(points):
    if isinstance(points, PointCloud):
        return points.points.device
    return points.device if isinstance(points, Tensor) else None


SPEC = OpSpec(
    "render_points",
    exports={"render_points": ("RenderConsistencyResult", "RenderPointsResult", "render_consistency", "render_points"),
             "point_cloud": ("PointCloud", "point_cloud", "point_map_cloud")},
    instructions=InstructionCounts(("render_points_zbuffer_cpu", "render_points_resolve_cpu", "render_consistency_cpu"),
                                   "RenderPointsArgs", 2),
)
