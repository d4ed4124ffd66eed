"""Depth-warp reprojection error of every consecutive frame pair (the MVCS configuration:
squared depth error, "zeros" validity), forward: vgpa's backends against

- "loop": a per-pair Python loop in the style of VideoGPA's MVCS evaluation. This is our own
  statement of that formula (DESIGN 3.1), not VideoGPA's code: for each video and each pair
  (t, t+1) unproject frame t, move it into camera t+1, project, grid_sample depth t+1
  (align_corners=True, zero padding), and average (z' - d)^2 over z' > 0 and in-image pixels;
- "kornia": kornia.geometry.depth.warp_frame_depth on all pairs stacked as one batch,
  followed by the same error (the transformed depth z' from depth_to_3d_v2 + transform_points);
- "torch.compile": torch.compile of vgpa's reference (GPU only).

Every implementation's per-pair errors are checked against the loop before it is timed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import vgpa
from vgpa.reference import reprojection_error as reference

from .common import orbiting_cameras, peak_memory_mib, plan, time_ms

# (videos, frames, height, width)
CPU_SIZES = {"quick": [(1, 4, 64, 64)], "full": [(1, 10, 259, 259), (1, 12, 240, 360)]}
GPU_SIZES = {"quick": [(1, 10, 518, 518)], "full": [(1, 10, 518, 518), (1, 49, 480, 720), (4, 49, 480, 720)]}


def make_inputs(videos, frames, height, width, device):
    g = torch.Generator().manual_seed(0)
    depth = 2 + torch.rand(videos, frames, height, width, generator=g)
    intrinsics, extrinsics = orbiting_cameras(videos, frames, height, width)  # every size has W >= H
    return depth.to(device), intrinsics.to(device), extrinsics.to(device)


def per_pair_loop(depth, intrinsics, extrinsics):
    """(B, T-1) mean squared depth error, one pair at a time (see the module docstring)."""
    videos, frames, height, width = depth.shape
    v, u = torch.meshgrid(torch.arange(height, device=depth.device, dtype=depth.dtype),
                          torch.arange(width, device=depth.device, dtype=depth.dtype), indexing="ij")
    pixels = torch.stack([u, v, torch.ones_like(u)], -1).reshape(-1, 3)
    out = torch.zeros(videos, frames - 1, device=depth.device)
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
            out[b, t] = ((z - sampled) ** 2)[mask].mean()
    return out


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


def run(device: torch.device, quick: bool = False) -> list[dict]:
    sizes, backends, repeat = plan(device, quick, CPU_SIZES, GPU_SIZES, backends=("cuda", "triton", "cpu"))
    rows = []
    for videos, frames, height, width in sizes:
        depth, intrinsics, extrinsics = make_inputs(videos, frames, height, width, device)
        pairs = vgpa.adjacent_pairs(frames).to(device)

        impls = {"loop": lambda: per_pair_loop(depth, intrinsics, extrinsics),
                 "kornia": lambda: kornia_pairs(depth, intrinsics, extrinsics)}
        if device.type == "cuda":
            compiled = torch.compile(reference.reprojection_error)
            impls["torch.compile"] = lambda: compiled(depth, intrinsics, extrinsics, pairs, None, "sq", "zeros")[0]
        for backend in backends:
            impls[f"vgpa[{backend}]"] = (lambda b=backend: vgpa.reprojection_error(
                depth, intrinsics, extrinsics, pairs, error="sq", validity="zeros", backend=b).error)

        expected = per_pair_loop(depth, intrinsics, extrinsics)
        loop_ms = None
        for name, fn in impls.items():
            got = fn()
            if not torch.allclose(got.float(), expected, rtol=1e-3, atol=1e-5):
                raise RuntimeError(f"{name} disagrees with the per-pair loop: {(got - expected).abs().max()}")
            ms = time_ms(fn, device, warmup=2 if device.type == "cuda" else 1, repeat=repeat)
            loop_ms = ms if name == "loop" else loop_ms
            rows.append({
                "shape": f"{videos}x{frames}x{height}x{width}", "pairs": videos * (frames - 1), "impl": name,
                "ms": ms, "speedup_vs_loop": loop_ms / ms, "peak_mib": peak_memory_mib(fn, device),
                "Mpix/s": videos * (frames - 1) * height * width / (ms * 1e-3) / 1e6,
            })
    return rows
