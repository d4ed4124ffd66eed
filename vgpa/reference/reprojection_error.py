"""Pure-PyTorch reference of the depth-warp reprojection error (docs/design.md 3.1): the
oracle for tests.

For a pair (i, j) and a source pixel p = (u, v) of frame i with depth z:

    X = z K_i^-1 [u, v, 1];  Y = R_ji X + t_ji;  z' = Y_z;  (u', v') = (K_j Y)_xy / z'
    d = bilinear sample of D_j at (u', v')

and p is scored when it is valid: "strict": z valid, z' > 0, 0 <= u' <= W-1, 0 <= v' <= H-1,
every tap with a non-zero weight a valid depth; "zeros": z valid, z' > 0, 0 <= u' < W,
0 <= v' < H, taps outside the image read as 0, taps inside used as they are. Optionally
occluded pixels (z' > (1 + tol) d) are dropped, and so is any pixel whose error is not finite.
A depth is valid iff finite and > 0. Every (video, pair) is evaluated at once, with the
source and target frames gathered into (B, P, H, W) tensors.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._dtypes import accumulation_dtype
from ..pairs import adjacent_pairs
from ..torch_math import camera

DEPTH_ERRORS = ("abs_rel", "abs", "sq", "log")
VALIDITY_MODES = ("strict", "zeros")


def depth_is_valid(z: Tensor) -> Tensor:
    return torch.isfinite(z) & (z > 0)


def depth_error(kind: str, warped: Tensor, sampled: Tensor) -> Tensor:
    if kind == "abs_rel":
        return (warped - sampled).abs() / sampled
    if kind == "abs":
        return (warped - sampled).abs()
    if kind == "sq":
        return (warped - sampled).square()
    if kind == "log":
        return (warped.log() - sampled.log()).abs()
    raise ValueError(f"unknown error {kind!r}; choose one of {DEPTH_ERRORS} (or pass image=)")


def _bilinear_taps(u: Tensor, v: Tensor, height: int, width: int):
    """The four taps (x, y, weight, used) around (u, v), tap k = (x0 + k % 2, y0 + k // 2).
    A tap is used when inside the image with a non-zero weight."""
    x0, y0 = u.detach().floor(), v.detach().floor()
    wx, wy = u - x0, v - y0
    taps = []
    for k in range(4):
        dx, dy = k % 2, k // 2
        x, y = x0 + dx, y0 + dy
        weight = (wx if dx else 1 - wx) * (wy if dy else 1 - wy)
        used = (x >= 0) & (x < width) & (y >= 0) & (y < height) & (weight != 0)
        index = (y.clamp(0, height - 1) * width + x.clamp(0, width - 1)).long()
        taps.append((index, weight, used))
    return taps


def _gather(frames: Tensor, index: Tensor) -> Tensor:
    """frames (B, P, [C,] H, W) at flat pixel index (B, P, H, W) -> (B, P, [C,] H, W)."""
    if frames.dim() == 4:
        return frames.flatten(-2).gather(-1, index.flatten(-2)).view(index.shape)
    c = frames.shape[2]
    idx = index.flatten(-2).unsqueeze(2).expand(-1, -1, c, -1)
    return frames.flatten(-2).gather(-1, idx).view(frames.shape)


def reprojection_error(depth: Tensor, intrinsics: Tensor, extrinsics: Tensor, pairs: Tensor,
                       image: Tensor | None = None, error: str = "abs_rel", validity: str = "strict",
                       occlusion_tol: float | None = None):
    """depth (B, T, H, W); intrinsics (B, T, 3, 3); extrinsics (B, T, 3|4, 4); pairs (P, 2) int64;
    image (B, T, C, H, W) or None (then ``error`` is a depth error of DEPTH_ERRORS).

    Returns (error (B, P), valid_count (B, P) int64, error_map (B, P, H, W), valid_mask
    (B, P, H, W) bool). A pair without a valid pixel has error 0 (and count 0). Differentiable
    with respect to depth and image.
    """
    acc = accumulation_dtype(depth.dtype)
    height, width = depth.shape[-2:]
    strict = validity == "strict"
    src_frame, dst_frame = pairs[:, 0], pairs[:, 1]
    matrix = camera.pair_projection(intrinsics, extrinsics, pairs).to(acc)[..., None, None]  # (B,P,3,4,1,1)
    depth = depth.to(acc)
    source, target = depth[:, src_frame], depth[:, dst_frame]  # (B, P, H, W)
    u, v = camera.pixel_grid(height, width, dtype=acc, device=depth.device)

    # Warp (see vgpa.torch_math.camera.pair_projection); sanitised so that no NaN reaches the gradient.
    source_ok = depth_is_valid(source)
    z = torch.where(source_ok, source, torch.ones_like(source))
    inv_z = 1 / z
    q = [matrix[:, :, r, 0] * u + matrix[:, :, r, 1] * v + matrix[:, :, r, 2] + matrix[:, :, r, 3] * inv_z
         for r in range(3)]
    front = q[2] > 0
    qz = torch.where(front, q[2], torch.ones_like(q[2]))
    warped_depth = z * qz
    tu, tv = q[0] / qz, q[1] / qz
    if strict:
        inside = (tu >= 0) & (tu <= width - 1) & (tv >= 0) & (tv <= height - 1)
    else:
        inside = (tu >= 0) & (tu < width) & (tv >= 0) & (tv < height)
    ok = source_ok & front & inside
    tu = torch.where(ok, tu, torch.zeros_like(tu))
    tv = torch.where(ok, tv, torch.zeros_like(tv))
    taps = _bilinear_taps(tu, tv, height, width)

    values = [_gather(target, index) for index, _, _ in taps]
    with torch.no_grad():  # validity decisions use the raw values, NaN included
        sampled_raw = sum(torch.where(used, w * val, torch.zeros_like(val))
                          for (_, w, used), val in zip(taps, values))
        if strict:
            for (_, _, used), val in zip(taps, values):
                ok = ok & (~used | depth_is_valid(val))
        if occlusion_tol is not None:
            ok = ok & ~(warped_depth > (1 + occlusion_tol) * sampled_raw)
    sampled = sum(w * torch.where(used & torch.isfinite(val), val, torch.zeros_like(val))
                  for (_, w, used), val in zip(taps, values))

    if image is None:
        with torch.no_grad():
            ok = ok & torch.isfinite(depth_error(error, warped_depth, sampled_raw))
        one = torch.ones_like(sampled)
        e = depth_error(error, torch.where(ok, warped_depth, one), torch.where(ok, sampled, one))
    else:
        img = image.to(acc)
        src_img, dst_img = img[:, src_frame], img[:, dst_frame]  # (B, P, C, H, W)
        with torch.no_grad():
            raw = sum(torch.where(used.unsqueeze(2), w.unsqueeze(2) * _gather(dst_img, index), 0)
                      for index, w, used in taps)
            ok = ok & torch.isfinite((src_img - raw).abs().mean(2))
        okc = ok.unsqueeze(2)
        sampled_img = sum(w.unsqueeze(2) * torch.where(used.unsqueeze(2) & okc, _gather(dst_img, index), 0)
                          for index, w, used in taps)
        e = (torch.where(okc, src_img, 0) - sampled_img).abs().mean(2)
    error_map = torch.where(ok, e, torch.zeros_like(e))
    count = ok.sum((-2, -1))
    mean = error_map.sum((-2, -1)) / count.clamp_min(1).to(acc)
    return mean, count, error_map, ok


def mvcs(depth: Tensor, intrinsics: Tensor, extrinsics: Tensor) -> Tensor:
    """VideoGPA's Multi-View Consistency Score (docs/design.md 3.1): consecutive pairs, squared
    depth error, "zeros" validity, no occlusion test; exp(-mean over the pairs that have a valid
    pixel of the pair's mean error). depth (B, T, H, W) -> (B,); NaN for a video without any
    valid pair."""
    pairs = adjacent_pairs(depth.shape[1]).to(depth.device)
    err, count, _, _ = reprojection_error(depth, intrinsics, extrinsics, pairs, error="sq", validity="zeros")
    has = count > 0
    mean = torch.where(has, err, 0).sum(1) / has.sum(1)
    return torch.exp(-mean)


def unproject_depth(depth: Tensor, intrinsics: Tensor, extrinsics: Tensor) -> Tensor:
    """World points E^-1 (z K^-1 [u, v, 1]) of every pixel: (B, T, H, W) -> (B, T, H, W, 3)."""
    acc = accumulation_dtype(depth.dtype)
    in_camera = camera.unproject(depth.to(acc), camera.inverse_intrinsics(intrinsics))
    to_world = camera.invert_pose(extrinsics)[..., :3, :].to(acc)  # (B, T, 3, 4)
    world = torch.einsum("btij,bthwj->bthwi", to_world[..., :3], in_camera) + to_world[..., None, None, :, 3]
    return world.to(depth.dtype)


