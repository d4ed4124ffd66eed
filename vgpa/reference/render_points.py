"""Pure-PyTorch reference of the point-cloud re-render and its consistency (docs/design.md 3.3): the
oracle for every backend, and the "torch" backend of vgpa.render_points and
vgpa.render_consistency.

Point clouds are flat: ``points`` (M, 3), ``colors`` (M, C) and per video ``offsets`` (B,) and
``counts`` (B,) int64; video b owns rows ``offsets[b] : offsets[b] + counts[b]``. A packed cloud
has ``offsets = cumsum(counts) - counts``; a padded (B, N, 3) cloud viewed as (B * N, 3) has
``offsets[b] = b * N``. A point's index is its row within its video.

Projection into frame t uses three rows per frame (``projection_rows``):
``P0 = (K [R | t])_0``, ``P1 = (K [R | t])_1`` and ``Z = [R | t]_2``, so that

    z = ((Z0 x + Z1 y) + Z2 z) + Z3,  u = rint(((P00 x + P01 y) + P02 z) + P03) / z),  v likewise

with one rounding per operation in exactly this order (no fused multiply-add) and rint
rounding half to even. Every backend evaluates the same expression in the same order, so
pixel assignments agree bitwise. A point lands iff its coordinates are finite, z is finite and
> 0, and 0 <= u < W, 0 <= v < H. Each pixel keeps the landed point with the smallest
key = (float32 bits of z) << 32 | index: the nearest point, ties (equal float32 z) to the
smallest index. Non-negative float bits order like integers, so one int64 minimum is exact.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._dtypes import accumulation_dtype
from ..torch_math.point_cloud import CONF_TIES, confidence_keep_count, point_cloud_selection  # noqa: F401
from ..torch_math.render import EMPTY_KEY, INDEX_BITS, INDEX_MASK, projection_rows  # noqa: F401
from ..torch_math.segments import row_owners


def _row_dot(row: Tensor, x: Tensor, y: Tensor, z: Tensor) -> Tensor:
    """((r0 x + r1 y) + r2 z) + r3 for rows (..., 4) broadcast against points x, y, z."""
    return row[..., 0] * x + row[..., 1] * y + row[..., 2] * z + row[..., 3]


def _project(x: Tensor, y: Tensor, z: Tensor, rows: Tensor, height: int, width: int):
    """(depth, lands, pixel) of points x, y, z with rows (..., 12) broadcast against them."""
    depth = _row_dot(rows[..., 8:12], x, y, z)
    u = torch.round(_row_dot(rows[..., 0:4], x, y, z) / depth)  # torch.round: half to even
    v = torch.round(_row_dot(rows[..., 4:8], x, y, z) / depth)
    finite_point = torch.isfinite(x) & torch.isfinite(y) & torch.isfinite(z)
    lands = (finite_point & torch.isfinite(depth) & (depth > 0)
             & (u >= 0) & (u < width) & (v >= 0) & (v < height))
    # Convert only landed coordinates (NaN and huge values do not fit an integer).
    zero = torch.zeros_like(u)
    pixel = torch.where(lands, v, zero).to(torch.int64) * width + torch.where(lands, u, zero).to(torch.int64)
    return depth, lands, pixel


def project(points: Tensor, rows: Tensor, height: int, width: int):
    """Points (n, 3) into T frames with rows (T, 12).

    Returns (z, lands, pixel), each (T, n): camera depth, whether the point lands, and its
    pixel v * W + u (meaningful where it lands).
    """
    return _project(points[:, 0], points[:, 1], points[:, 2], rows[:, None], height, width)


def depth_keys(depth: Tensor, index: Tensor) -> Tensor:
    """(float32 bits of depth) << 32 | index, int64; depth must be > 0 where used."""
    bits = depth.to(torch.float32).view(torch.int32).to(torch.int64)
    return (bits << INDEX_BITS) | index


def zbuffer(points: Tensor, offsets: Tensor, counts: Tensor, rows: Tensor, height: int, width: int) -> Tensor:
    """(B, T, H, W) int64 keys: per pixel the smallest key among the points that land there,
    ``EMPTY_KEY`` where none does (scatter_reduce with amin: an integer minimum, exact)."""
    videos, frames = rows.shape[:2]
    hw = height * width
    keys = torch.full((videos * frames * (hw + 1),), EMPTY_KEY, dtype=torch.int64, device=points.device)
    video, index, inside = row_owners(offsets, counts, points.shape[0])
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    for t in range(frames):
        depth, lands, pixel = _project(x, y, z, rows[video, t], height, width)
        lands = lands & inside
        # Points that do not land go to their frame's spare slot hw, dropped below.
        slot = (video * frames + t) * (hw + 1) + torch.where(lands, pixel, hw)
        key = torch.where(lands, depth_keys(torch.where(lands, depth, torch.ones_like(depth)), index),
                          torch.full_like(pixel, EMPTY_KEY))
        keys.scatter_reduce_(0, slot, key, reduce="amin")
    return keys.view(videos, frames, hw + 1)[..., :hw].reshape(videos, frames, height, width)


def resolve(keys: Tensor, points: Tensor, colors: Tensor, offsets: Tensor, rows: Tensor, background: Tensor):
    """Image (B, T, C, H, W), depth (B, T, H, W) and coverage (B, T, H, W) from the keys."""
    videos, frames, height, width = keys.shape
    channels = colors.shape[1]
    covered = keys != EMPTY_KEY
    if points.shape[0] == 0:  # nothing to gather from
        image = background.view(1, 1, channels, 1, 1).expand(videos, frames, channels, height, width)
        # A copy even when the expansion is already contiguous (one pixel): never the background itself.
        return image.clone(memory_format=torch.contiguous_format), \
            torch.zeros(keys.shape, dtype=points.dtype, device=keys.device), covered
    # Row of each pixel's winner in the flat cloud; row 0 for empty pixels, whose gathered values
    # are replaced below (offsets[b] itself may be one past the last row when video b is empty).
    winner = torch.where(covered, offsets.view(-1, 1, 1, 1) + (keys & INDEX_MASK), torch.zeros_like(keys)).reshape(-1)
    p = points[winner].view(videos, frames, height * width, 3)
    z_row = rows[..., 8:12]  # (B, T, 4)
    depth = (z_row[..., 0:1] * p[..., 0] + z_row[..., 1:2] * p[..., 1] + z_row[..., 2:3] * p[..., 2]
             + z_row[..., 3:4]).view(videos, frames, height, width)
    depth = torch.where(covered, depth, torch.zeros_like(depth))
    color = colors[winner].view(videos, frames, height, width, channels).permute(0, 1, 4, 2, 3)
    image = torch.where(covered[:, :, None], color, background.view(1, 1, channels, 1, 1))
    return image.contiguous(), depth, covered


def render_points(points: Tensor, colors: Tensor, offsets: Tensor, counts: Tensor, rows: Tensor,
                  height: int, width: int, background: Tensor):
    """(image, depth, coverage) of the flat cloud rendered into every frame (module docstring)."""
    keys = zbuffer(points, offsets, counts, rows, height, width)
    return resolve(keys, points, colors, offsets, rows, background)


def render_consistency(points: Tensor, colors: Tensor, offsets: Tensor, counts: Tensor, rows: Tensor,
                       frames: Tensor, background: Tensor, masked: bool = False):
    """(mse, coverage), each (B, T): mean over pixels and channels of (render - frame)^2 (empty
    pixels hold the background and count, as in VideoGPA), or with ``masked`` the mean over
    covered pixels only (NaN for a frame with none); coverage is the covered fraction."""
    height, width = frames.shape[-2:]
    image, _, covered = render_points(points, colors.to(frames.dtype), offsets, counts, rows, height, width,
                                      background.to(frames.dtype))
    acc = accumulation_dtype(frames.dtype)
    err = (image.to(acc) - frames.to(acc)).square().sum(2)  # (B, T, H, W)
    n_covered = covered.sum((2, 3))
    if masked:
        err = torch.where(covered, err, torch.zeros_like(err))
        mse = err.sum((2, 3)) / (n_covered.to(acc) * frames.shape[2])
    else:
        mse = err.sum((2, 3)) / (height * width * frames.shape[2])
    return mse, n_covered.to(acc) / (height * width)
