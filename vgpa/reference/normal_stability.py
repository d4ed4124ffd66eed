"""Pure-PyTorch reference of surface normals from depth and of normal stability
(docs/design.md 3.2): the oracle for tests.

Normals. Unproject every pixel, X(u, v) = z K^-1 [u, v, 1]. With central differences
d_u = X(u+1, v) - X(u-1, v) and d_v = X(u, v+1) - X(u, v-1), c = d_u x d_v and

    n = c / |c|, negated when c . X(u, v) > 0 (so that n . X <= 0: facing the camera).

A pixel has a normal iff it and its four neighbours lie inside the image with valid depths
(finite and > 0) and |c| is > 0 and finite; other pixels hold n = 0. So the one-pixel border
never has a normal, and neither does any pixel next to an invalid depth.

Stability. For a pair (i, j) and a source pixel p with a normal, p is warped into frame j as in
docs/design.md 3.1 with "strict" validity (z' > 0, (u', v') inside [0, W-1] x [0, H-1], every
bilinear tap with a non-zero weight a valid depth; optionally not occluded: z' <= (1 + tol) d), then
q = (round-half-even(u'), round-half-even(v')) and

    e(p) = 1 - clamp(<R_ji n_i(p), n_j(q)>, -1, 1)

over the pixels where n_j(q) exists too. Without warp (static camera), q = p and R = I (the
occlusion test, if any, compares z_i(p) with z_j(p)). Per (video, pair): the mean of e over
the valid pixels (0 when there is none) and their count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..torch_math import camera
from .._dtypes import accumulation_dtype
from .reprojection_error import depth_is_valid


def depth_to_normals(depth: Tensor, intrinsics_inverse: Tensor) -> tuple[Tensor, Tensor]:
    """depth (..., H, W), K^-1 (..., 3, 3) (the same leading shape) -> normals (..., 3, H, W) in
    the accumulation dtype (float32, float64 for float64 depth) and valid (..., H, W) bool.
    Differentiable with respect to depth."""
    acc = accumulation_dtype(depth.dtype)
    height, width = depth.shape[-2:]
    z = depth.to(acc)
    ok = depth_is_valid(z)
    if height < 3 or width < 3:  # no pixel has four neighbours inside the image
        none = torch.zeros_like(ok)
        # zeros still attached to depth, so that a loss built on them back-propagates (zeros)
        normals = torch.where(none, z, torch.zeros_like(z)).unsqueeze(-3).expand(z.shape[:-2] + (3, height, width))
        return normals, none
    # Invalid depths are replaced by 1 before any arithmetic so that no NaN reaches the gradient.
    points = camera.unproject(torch.where(ok, z, torch.ones_like(z)), intrinsics_inverse)  # (..., H, W, 3)
    centre = points[..., 1:-1, 1:-1, :]
    d_u = points[..., 1:-1, 2:, :] - points[..., 1:-1, :-2, :]
    d_v = points[..., 2:, 1:-1, :] - points[..., :-2, 1:-1, :]
    valid = (ok[..., 1:-1, 1:-1] & ok[..., 1:-1, 2:] & ok[..., 1:-1, :-2] & ok[..., 2:, 1:-1]
             & ok[..., :-2, 1:-1])
    c = torch.linalg.cross(d_u, d_v, dim=-1)
    squared = (c * c).sum(-1)
    with torch.no_grad():
        valid = valid & (squared > 0) & torch.isfinite(squared)
        sign = torch.where((c * centre).sum(-1) > 0, -1.0, 1.0).to(acc)
    length = torch.where(valid, squared, torch.ones_like(squared)).sqrt()
    n = torch.where(valid[..., None], c * (sign / length)[..., None], torch.zeros_like(c))
    n = F.pad(n.movedim(-1, -3), (1, 1, 1, 1))  # (..., 3, H, W), zero border
    return n, F.pad(valid, (1, 1, 1, 1))


def _strict_warp(source_depth: Tensor, target_depth: Tensor, matrix: Tensor, source_ok: Tensor,
                 occlusion_tol: float | None):
    """docs/design.md 3.1 "strict" warp of every source pixel: (u', v') and its validity.

    source_depth, target_depth, source_ok: (B, P, H, W); matrix: (B, P, 3, 4) pair matrices
    (vgpa.torch_math.camera.pair_projection) in the accumulation dtype. No gradient: q is discrete."""
    height, width = source_depth.shape[-2:]
    u, v = camera.pixel_grid(height, width, dtype=source_depth.dtype, device=source_depth.device)
    m = matrix[..., None, None]
    z = torch.where(source_ok, source_depth, torch.ones_like(source_depth))
    inv_z = 1 / z
    q = [m[:, :, r, 0] * u + m[:, :, r, 1] * v + m[:, :, r, 2] + m[:, :, r, 3] * inv_z for r in range(3)]
    front = q[2] > 0
    qz = torch.where(front, q[2], torch.ones_like(q[2]))
    warped_depth = z * qz
    tu, tv = q[0] / qz, q[1] / qz
    ok = source_ok & front & (tu >= 0) & (tu <= width - 1) & (tv >= 0) & (tv <= height - 1)
    tu = torch.where(ok, tu, torch.zeros_like(tu))
    tv = torch.where(ok, tv, torch.zeros_like(tv))
    x0, y0 = tu.floor(), tv.floor()
    wx, wy = tu - x0, tv - y0
    sampled = torch.zeros_like(tu)
    flat_target = target_depth.flatten(-2)
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        x, y = x0 + dx, y0 + dy
        weight = (wx if dx else 1 - wx) * (wy if dy else 1 - wy)
        used = (x < width) & (y < height) & (weight != 0)  # x, y >= 0 already
        index = (y.clamp(max=height - 1) * width + x.clamp(max=width - 1)).long().flatten(-2)
        value = flat_target.gather(-1, index).view(tu.shape)
        ok = ok & (~used | depth_is_valid(value))
        sampled = sampled + torch.where(used, weight * value, torch.zeros_like(value))
    if occlusion_tol is not None:
        ok = ok & ~(warped_depth > (1 + occlusion_tol) * sampled)
    return tu, tv, ok


def normal_stability(depth: Tensor, intrinsics: Tensor, extrinsics: Tensor | None, pairs: Tensor,
                     warp: bool = True, occlusion_tol: float | None = None):
    """depth (B, T, H, W); intrinsics (B, T, 3, 3); extrinsics (B, T, 3|4, 4) (unused without
    warp); pairs (P, 2) int64 (source i, target j).

    Returns (error (B, P), valid_count (B, P) int64, error_map (B, P, H, W), valid_mask
    (B, P, H, W) bool), differentiable with respect to depth (through both normals)."""
    acc = accumulation_dtype(depth.dtype)
    height, width = depth.shape[-2:]
    normals, has_normal = depth_to_normals(depth, camera.inverse_intrinsics(intrinsics).to(acc))  # (B,T,3,H,W)
    src, dst = pairs[:, 0], pairs[:, 1]
    source_n, ok = normals[:, src], has_normal[:, src]  # (B, P, 3, H, W), (B, P, H, W)
    target_all, target_has = normals[:, dst], has_normal[:, dst]
    z = depth.to(acc).detach()
    if warp:
        with torch.no_grad():
            matrix = camera.pair_projection(intrinsics, extrinsics, pairs).to(acc)
            tu, tv, ok = _strict_warp(z[:, src], z[:, dst], matrix, ok, occlusion_tol)
            index = (tv.round() * width + tu.round()).long()  # torch.round: half to even
            index = torch.where(ok, index, torch.zeros_like(index)).flatten(-2)  # (B, P, HW)
            target_has = target_has.flatten(-2).gather(-1, index).view(ok.shape)
        target_n = target_all.flatten(-2).gather(-1, index[:, :, None].expand(-1, -1, 3, -1)).view(source_n.shape)
        rotation = camera.relative_transform(extrinsics, pairs)[..., :3, :3].to(acc)  # (B, P, 3, 3)
        source_n = torch.einsum("bpij,bpjhw->bpihw", rotation, source_n)
    else:
        target_n = target_all
        if occlusion_tol is not None:
            ok = ok & ~(z[:, src] > (1 + occlusion_tol) * z[:, dst])
    ok = ok & target_has
    cosine = (source_n * target_n).sum(2)
    error_map = torch.where(ok, 1 - cosine.clamp(-1, 1), torch.zeros_like(cosine))
    count = ok.sum((-2, -1))
    mean = error_map.sum((-2, -1)) / count.clamp_min(1).to(acc)
    return mean, count, error_map, ok
