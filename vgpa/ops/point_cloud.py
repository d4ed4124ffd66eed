"""Coloured world point clouds from per-frame depth (docs/design.md 3.3), in the layout the
re-render ops take: one packed cloud for the whole batch plus per-video counts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .. import _checks
from .._dtypes import accumulation_dtype
from ..torch_math.point_cloud import CONF_TIES, point_cloud_selection
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
        _checks.tensor(OP, name, x, depth)
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
    _check_conf_threshold(OP, conf_threshold, conf)


def _check_conf_threshold(op, conf_threshold, conf):
    if isinstance(conf_threshold, bool) or not isinstance(conf_threshold, (int, float)) \
            or not math.isfinite(conf_threshold) or not 0 <= conf_threshold < 100:
        raise ValueError(f"{op}: conf_threshold is a percentage in [0, 100), got {conf_threshold!r}")
    if conf_threshold > 0 and conf is None:
        raise ValueError(f"{op}: conf_threshold={conf_threshold} needs conf")


def _check_ties(op, conf_ties):
    if conf_ties not in CONF_TIES:
        raise ValueError(f"{op}: conf_ties must be one of {CONF_TIES}, got {conf_ties!r}")


def point_cloud(depth: Tensor, intrinsics: Tensor, extrinsics: Tensor, colors: Tensor,
                conf: Optional[Tensor] = None, conf_threshold: float = 0.0, *,
                conf_ties: str = "first") -> PointCloud:
    """Fuses every frame of every video into one coloured world point cloud per video.

    depth: (B, T, H, W) z-depth; intrinsics: (B, T, 3, 3); extrinsics: (B, T, 4, 4) or
    (B, T, 3, 4) world-to-camera; colors: (B, T, C, H, W), e.g. RGB in [0, 1]; conf:
    (B, T, H, W) confidence (e.g. VGGT's depth confidence) or None.

    A pixel becomes a point X_w = E^-1 (z K^-1 [u, v, 1]^T) iff its depth is finite and > 0 and,
    with ``conf``, its confidence is finite and > 1e-5 (VideoGPA's filter). With
    ``conf_threshold`` c > 0 (a percentage) k = ceil(N (1 - c / 100)) of those N points are
    kept, those with the highest confidence. ``conf_ties`` decides equal confidences at the
    cut: "first" keeps exactly k, ties going to the earlier pixel; "all" keeps every point whose
    confidence is >= the k-th highest, as VideoGPA does (more than k when the k-th value
    repeats, e.g. with half-precision confidences). Points keep the (frame, row, column) order
    of their pixels.

    Returns a :class:`PointCloud`: points in float64 for float64 depth, else float32; colours
    in the dtype of ``colors``; per-video counts.
    """
    _check(depth, intrinsics, extrinsics, colors, conf, conf_threshold)
    _check_ties(OP, conf_ties)
    b, _, h, w = depth.shape
    # Unprojected in the accumulation dtype, so half-precision depth still gives float32 points.
    world = _unproject_depth(OP, depth.to(accumulation_dtype(depth.dtype)), intrinsics, extrinsics,
                             "auto").reshape(b, -1, 3)
    selection = point_cloud_selection(depth, conf, float(conf_threshold), conf_ties)
    return _gather(world, colors, selection)


def _gather(world, colors, selection) -> PointCloud:
    """The selected pixels' points (B, N, 3) and colours (B, T, C, H, W), packed."""
    b, pixels = world.shape[:2]
    pixel_colors = colors.permute(0, 1, 3, 4, 2).reshape(b, -1, colors.shape[2])

    def take(values):  # the selection is ascending: all pixels selected is every row as it is
        parts = [values[i] if index.numel() == pixels else values[i].index_select(0, index)
                 for i, index in enumerate(selection)]
        return parts[0] if b == 1 else torch.cat(parts)

    points, point_colors = take(world), take(pixel_colors)
    counts = torch.tensor([index.numel() for index in selection], dtype=torch.int64, device=world.device)
    return PointCloud(points.contiguous(), point_colors.contiguous(), counts)


OP_MAP = "point_map_cloud"


def point_map_cloud(points: Tensor, colors: Tensor, conf: Optional[Tensor] = None, conf_threshold: float = 0.0,
                    *, conf_ties: str = "first") -> PointCloud:
    """One coloured point cloud per video from a point map: the world point of every pixel,
    as a model's point head predicts it (VGGT's ``world_points``), instead of depth and cameras.

    points: (B, T, H, W, 3) world coordinates; colors: (B, T, C, H, W); conf: (B, T, H, W) or
    None, the confidence that filters the points (VideoGPA uses VGGT's depth confidence).

    A pixel becomes a point iff its three coordinates are finite and, with ``conf``, its
    confidence is finite and > 1e-5; its depth is not consulted. ``conf_threshold`` and
    ``conf_ties`` select among them as in :func:`point_cloud`. Returns a :class:`PointCloud`:
    points in float64 for float64 points, else float32.
    """
    for name, x in (("points", points), ("colors", colors)) + ((("conf", conf),) if conf is not None else ()):
        _checks.tensor(OP_MAP, name, x, points, ref_name="points")
    if points.dim() != 5 or points.shape[-1] != 3 or 0 in points.shape:
        raise ValueError(f"{OP_MAP}: points must be a non-empty (B, T, H, W, 3) tensor, got {tuple(points.shape)}")
    b, t, h, w, _ = points.shape
    if colors.dim() != 5 or colors.shape[:2] != (b, t) or colors.shape[3:] != (h, w) or colors.shape[2] < 1:
        raise ValueError(f"{OP_MAP}: colors must be (B, T, C, H, W) with B, T, H, W = {b}, {t}, {h}, {w} and "
                         f"C >= 1; got {tuple(colors.shape)}")
    if conf is not None and conf.shape != points.shape[:4]:
        raise ValueError(f"{OP_MAP}: conf must be (B, T, H, W) = {tuple(points.shape[:4])}, got {tuple(conf.shape)}")
    _check_conf_threshold(OP_MAP, conf_threshold, conf)
    _check_ties(OP_MAP, conf_ties)
    world = points.to(torch.float64 if points.dtype == torch.float64 else torch.float32)
    selection = point_cloud_selection(None, conf, float(conf_threshold), conf_ties, points=world)
    return _gather(world.reshape(b, -1, 3), colors, selection)
