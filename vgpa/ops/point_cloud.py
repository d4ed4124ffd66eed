"""Coloured world point clouds from per-frame depth (docs/design.md 3.3), in the layout the
re-render ops take: one packed cloud for the whole batch plus per-video counts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .._dtypes import accumulation_dtype
from ..reference import render_points as reference
from .reprojection_error import _unproject_depth

OP = "point_cloud"


@dataclass
class PointCloud:
    """Packed point clouds of B videos.

    points: (N_total, 3) world coordinates; colors: (N_total, C); counts: (B,) int64. Video b
    owns the rows ``offsets[b] : offsets[b] + counts[b]`` with ``offsets = cumsum(counts) -
    counts`` (``offsets()``). Pass it to :func:`vgpa.render_points` or
    :func:`vgpa.render_consistency` in place of ``points`` (with ``colors=None``).
    """

    points: Tensor
    colors: Tensor
    counts: Tensor

    def offsets(self) -> Tensor:
        return torch.cumsum(self.counts, 0) - self.counts

    def split(self) -> list[tuple[Tensor, Tensor]]:
        """[(points (n_b, 3), colors (n_b, C))] per video (views, no copies)."""
        sizes = self.counts.tolist()
        return list(zip(self.points.split(sizes), self.colors.split(sizes)))


def _check(depth, intrinsics, extrinsics, colors, conf, conf_threshold):
    tensors = {"depth": depth, "intrinsics": intrinsics, "extrinsics": extrinsics, "colors": colors}
    if conf is not None:
        tensors["conf"] = conf
    for name, x in tensors.items():
        if not isinstance(x, Tensor):
            raise TypeError(f"{OP}: {name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{OP}: {name} must be floating point, got {x.dtype}")
        if x.device != depth.device:
            raise ValueError(f"{OP}: {name} is on {x.device} but depth is on {depth.device}")
    if depth.dim() != 4:
        raise ValueError(f"{OP}: depth must be (B, T, H, W), got shape {tuple(depth.shape)}")
    b, t, h, w = depth.shape
    if intrinsics.shape != (b, t, 3, 3):
        raise ValueError(f"{OP}: intrinsics must be (B, T, 3, 3) = {(b, t, 3, 3)}, got {tuple(intrinsics.shape)}")
    if extrinsics.shape not in ((b, t, 4, 4), (b, t, 3, 4)):
        raise ValueError(f"{OP}: extrinsics must be (B, T, 4, 4) or (B, T, 3, 4) with B, T = {b}, {t}; "
                         f"got {tuple(extrinsics.shape)}")
    if colors.dim() != 5 or colors.shape[:2] != (b, t) or colors.shape[3:] != (h, w):
        raise ValueError(f"{OP}: colors must be (B, T, C, H, W) with B, T, H, W = {b}, {t}, {h}, {w}; "
                         f"got {tuple(colors.shape)}")
    if conf is not None and conf.shape != depth.shape:
        raise ValueError(f"{OP}: conf must have the shape of depth {tuple(depth.shape)}, got {tuple(conf.shape)}")
    if isinstance(conf_threshold, bool) or not isinstance(conf_threshold, (int, float)) \
            or not math.isfinite(conf_threshold) or not 0 <= conf_threshold < 100:
        raise ValueError(f"{OP}: conf_threshold is a percentage in [0, 100), got {conf_threshold!r}")
    if conf_threshold > 0 and conf is None:
        raise ValueError(f"{OP}: conf_threshold={conf_threshold} needs conf")


def point_cloud(depth: Tensor, intrinsics: Tensor, extrinsics: Tensor, colors: Tensor,
                conf: Optional[Tensor] = None, conf_threshold: float = 0.0) -> PointCloud:
    """Fuses every frame of every video into one coloured world point cloud per video.

    depth: (B, T, H, W) z-depth; intrinsics: (B, T, 3, 3); extrinsics: (B, T, 4, 4) or
    (B, T, 3, 4) world-to-camera; colors: (B, T, C, H, W), e.g. RGB in [0, 1]; conf:
    (B, T, H, W) confidence (e.g. VGGT's depth confidence) or None.

    A pixel becomes a point X_w = E^-1 (z K^-1 [u, v, 1]^T) iff its depth is finite and > 0 and,
    with ``conf``, its confidence is finite and > 1e-5 (VideoGPA's filter). With
    ``conf_threshold`` c > 0 (a percentage) only the ceil(N (1 - c / 100)) of those N points
    with the highest confidence are kept; equal confidences go to the earlier pixel. Points
    keep the (frame, row, column) order of their pixels.

    Returns a :class:`PointCloud`: points in float64 for float64 depth, else float32; colours
    in the dtype of ``colors``; per-video counts.
    """
    _check(depth, intrinsics, extrinsics, colors, conf, conf_threshold)
    b, _, h, w = depth.shape
    # Unprojected in the accumulation dtype, so half-precision depth still gives float32 points.
    world = _unproject_depth(OP, depth.to(accumulation_dtype(depth.dtype)), intrinsics, extrinsics,
                             "auto").reshape(b, -1, 3)
    pixel_colors = colors.permute(0, 1, 3, 4, 2).reshape(b, -1, colors.shape[2])
    selection = reference.point_cloud_selection(depth, conf, float(conf_threshold))
    points = torch.cat([world[i, index] for i, index in enumerate(selection)])
    point_colors = torch.cat([pixel_colors[i, index] for i, index in enumerate(selection)])
    counts = torch.tensor([index.numel() for index in selection], dtype=torch.int64, device=depth.device)
    return PointCloud(points.contiguous(), point_colors.contiguous(), counts)
