"""Depth-warp reprojection error of every consecutive frame pair (the MVCS configuration: squared
depth error, "zeros" validity), forward and forward + backward (gradient w.r.t. the depth). Peers:

- "VideoGPA MVCS loop": our statement of VideoGPA's MVCS formula (docs/design.md 3.1) as its
  evaluation runs it, one pair at a time with the pair's error read back to the host (``.item()``)
  before the next pair: unproject frame t, move it into camera t+1, project, grid_sample depth t+1
  (align_corners=True, zero padding) and average (z' - d)^2 over z' > 0 and in-image pixels;
- "kornia": kornia.geometry.depth.warp_frame_depth on all pairs stacked as one batch, then the
  same error (the transformed depth z' from depth_to_3d_v2 + transform_points);
- "torch.compile (reference)": torch.compile of vgpa's pure-PyTorch reference (dynamic shapes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import vgpa
from vgpa.reference import reprojection_error as reference_module

from .harness import Entry, Impl, Size, assert_close
from .scenes import orbiting_cameras


def per_pair_loop(depth, intrinsics, extrinsics):
    """(B, T-1) mean squared depth error, one pair at a time, each read back to the host."""
    videos, frames, height, width = depth.shape
    v, u = torch.meshgrid(torch.arange(height, device=depth.device, dtype=depth.dtype),
                          torch.arange(width, device=depth.device, dtype=depth.dtype), indexing="ij")
    pixels = torch.stack([u, v, torch.ones_like(u)], -1).reshape(-1, 3)
    scores = []
    for b in range(videos):
        for t in range(frames - 1):
            k_i, k_j = intrinsics[b, t], intrinsics[b, t + 1]
            relative = extrinsics[b, t + 1] @ torch.linalg.inv(extrinsics[b, t])
            points = depth[b, t].reshape(-1, 1) * (pixels @ torch.linalg.inv(k_i).T)
            moved = points @ relative[:3, :3].T + relative[:3, 3]
            z = moved[:, 2]
            projected = moved @ k_j.T
            pu, pv = projected[:, 0] / z, projected[:, 1] / z
            grid = torch.stack([2 * pu / (width - 1) - 1, 2 * pv / (height - 1) - 1], -1).view(1, height, width, 2)
            sampled = F.grid_sample(depth[b, t + 1][None, None], grid, align_corners=True,
                                    padding_mode="zeros")[0, 0].reshape(-1)
            mask = (z > 0) & (pu >= 0) & (pu < width) & (pv >= 0) & (pv < height)
            score = ((z - sampled) ** 2)[mask].mean()
            score.item()  # the evaluation's host read-back, kept differentiable for fwd+bwd
            scores.append(score)
    return torch.stack(scores).view(videos, frames - 1)


def kornia_pairs(depth, intrinsics, extrinsics):
    """(B, T-1) via kornia.geometry.depth.warp_frame_depth on all pairs as one batch."""
    from kornia.geometry.depth import depth_to_3d_v2, warp_frame_depth
    from kornia.geometry.linalg import transform_points

    videos, frames, height, width = depth.shape
    source = depth[:, :-1].reshape(-1, 1, height, width)
    target = depth[:, 1:].reshape(-1, 1, height, width)
    relative = (extrinsics[:, 1:] @ torch.linalg.inv(extrinsics[:, :-1])).reshape(-1, 4, 4)
    k = intrinsics[:, :-1].reshape(-1, 3, 3)  # kornia warps with one K per pair
    sampled = warp_frame_depth(target, source, relative, k)[:, 0]
    points = depth_to_3d_v2(source[:, 0], k)  # (N, H, W, 3)
    moved = transform_points(relative[:, None], points)
    z = moved[..., 2]
    projected = moved @ k[:, None].transpose(-1, -2)
    pu, pv = projected[..., 0] / z, projected[..., 1] / z
    mask = (z > 0) & (pu >= 0) & (pu < width) & (pv >= 0) & (pv < height)
    err = torch.where(mask, (z - sampled) ** 2, 0).sum((-2, -1)) / mask.sum((-2, -1))
    return err.view(videos, frames - 1)


def reference_error(depth, intrinsics, extrinsics, pairs):
    return reference_module.reprojection_error(depth, intrinsics, extrinsics, pairs, None, "sq", "zeros")[0]


compiled_reference = torch.compile(reference_error, dynamic=True)


def sizes(device, quick):
    """(videos, frames, height, width), W >= H; x = pixels warped (pairs x H x W). The default:
    VideoGPA's MVCS setting, one video of 10 frames at 518 x 518 (VGGT's input size)."""
    if device.type == "cuda":
        dims = [(1, 10, 518, 518)] if quick else [
            (1, 10, 128, 128), (1, 10, 259, 259), (1, 10, 518, 518), (1, 49, 480, 720), (4, 49, 480, 720)]
    else:
        dims = [(1, 4, 64, 64)] if quick else [
            (1, 10, 64, 64), (1, 10, 128, 128), (1, 10, 259, 259), (1, 12, 240, 360), (1, 10, 518, 518)]
    return [Size(d, x=d[0] * (d[1] - 1) * d[2] * d[3], graph=d[2] * d[3] <= 259 * 259,
                 default=not quick and d == (1, 10, 518, 518)) for d in dims]


def make_inputs(dims, device):
    videos, frames, height, width = dims
    g = torch.Generator().manual_seed(0)
    depth = 2 + torch.rand(videos, frames, height, width, generator=g)
    intrinsics, extrinsics = orbiting_cameras(videos, frames, height, width)
    pairs = vgpa.adjacent_pairs(frames)
    return depth.to(device).requires_grad_(), intrinsics.to(device), extrinsics.to(device), pairs.to(device)


def agree(got, expected):
    assert_close(got, expected, rtol=1e-3, atol=1e-5, what="reprojection error")


def vgpa_impl(backend):
    return Impl(f"vgpa[{backend}]", peer=False, backend=backend, capturable=True, what="the library itself",
                make=lambda x, b=backend: lambda: vgpa.reprojection_error(
                    *x, error="sq", validity="zeros", backend=b).error)


ENTRY = Entry(
    op="reprojection_error",
    x_label="pixels warped (pairs x H x W)",
    sizes=sizes,
    make_inputs=make_inputs,
    reference=lambda x: reference_error(*x),
    agree=agree,
    modes=("fwd", "fwd+bwd"),
    grad_input=lambda inputs: inputs[0],
    baseline="VideoGPA MVCS loop",
    impls=[
        Impl("VideoGPA MVCS loop", what="our statement of VideoGPA's MVCS formula (per-pair loop, host sync per pair)",
             make=lambda x: lambda: per_pair_loop(*x[:3])),
        Impl("kornia", what="kornia warp_frame_depth on all pairs + the error",
             make=lambda x: lambda: kornia_pairs(*x[:3])),
        Impl("torch.compile (reference)", what="torch.compile of vgpa's reference", compiled=True, capturable=True,
             make=lambda x: lambda: compiled_reference(*x)),
        *[vgpa_impl(b) for b in ("cuda", "triton", "cpu")],
    ],
)


def test_reprojection_error(bench, case):
    bench(ENTRY, case)
