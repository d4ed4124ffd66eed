"""Normal stability (DESIGN 3.2), forward and forward + backward with respect to depth: vgpa's
backends against what a user would write with kornia (depth_to_normals of every frame, then
per pair: rotate the source normals, warp the target normals with warp_frame_depth, 1 - cos;
our statement of it) and torch.compile of vgpa's pure-PyTorch reference (GPU only)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import vgpa
from vgpa.reference import geometry
from vgpa.reference import normal_stability as reference

from .common import orbiting_cameras, peak_memory_mib, plan, time_ms

# (videos, frames, height, width): VideoGPA's 10 x 518 x 518 and CogVideoX's 49 x 480 x 720
GPU_SIZES = {"quick": [(1, 10, 128, 128)], "full": [(1, 10, 518, 518), (1, 49, 480, 720)]}
CPU_SIZES = {"quick": [(1, 4, 48, 64)], "full": [(1, 10, 128, 128), (1, 10, 259, 259)]}


def scene(videos, frames, height, width, device, seed=0):
    """A smooth random surface around depth 3 seen by a slowly moving camera."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(videos * frames, 1, 8, 8, generator=g)
    depth = 3 + 0.5 * F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)
    depth = depth.view(videos, frames, height, width)
    intrinsics, extrinsics = orbiting_cameras(videos, frames, height, width, translation=(1.0, 0.3, 0.1))
    return depth.to(device), intrinsics.to(device), extrinsics.to(device)


def kornia_normal_stability(depth, intrinsics, extrinsics, pairs):
    """kornia normals of every frame; per pair the target normals are resampled at the warped
    source pixels (bilinear warp_frame_depth) and compared with the rotated source normals."""
    from kornia.geometry.depth import depth_to_normals, warp_frame_depth

    videos, frames, height, width = depth.shape
    normals = depth_to_normals(depth.reshape(-1, 1, height, width), intrinsics.reshape(-1, 3, 3))
    normals = normals.view(videos, frames, 3, height, width)
    i, j = pairs[:, 0], pairs[:, 1]
    relative = extrinsics[:, j] @ torch.linalg.inv(extrinsics[:, i])  # (B, P, 4, 4): frame i -> frame j
    source_depth = depth[:, i].reshape(-1, 1, height, width)
    sampled = warp_frame_depth(normals[:, j].flatten(0, 1), source_depth, relative.flatten(0, 1),
                               intrinsics[:, i].flatten(0, 1))  # (B * P, 3, H, W)
    rotated = torch.einsum("nij,njhw->nihw", relative.flatten(0, 1)[:, :3, :3], normals[:, i].flatten(0, 1))
    cosine = F.cosine_similarity(rotated, sampled, dim=1)
    valid = torch.isfinite(source_depth[:, 0]) & (source_depth[:, 0] > 0)
    error = torch.where(valid, 1 - cosine.clamp(-1, 1), torch.zeros_like(cosine))
    return (error.sum((-2, -1)) / valid.sum((-2, -1)).clamp_min(1)).view(videos, -1)


def reference_normal_stability(depth, intrinsics, extrinsics, pairs):
    return reference.normal_stability(depth, intrinsics, extrinsics, pairs)[0]


def run(device: torch.device, quick: bool = False) -> list[dict]:
    sizes, backends, repeat = plan(device, quick, CPU_SIZES, GPU_SIZES)
    rows = []
    for videos, frames, height, width in sizes:
        depth, intrinsics, extrinsics = scene(videos, frames, height, width, device)
        pairs = vgpa.adjacent_pairs(frames).to(device)
        depth_grad = depth.clone().requires_grad_()

        impls = {"kornia": lambda d: kornia_normal_stability(d, intrinsics, extrinsics, pairs)}
        if device.type == "cuda":
            compiled = torch.compile(reference_normal_stability)
            impls["torch.compile(reference)"] = lambda d: compiled(d, intrinsics, extrinsics, pairs)
        for backend in backends:
            impls[f"vgpa[{backend}]"] = (
                lambda d, b=backend: vgpa.normal_stability(d, intrinsics, extrinsics, pairs, backend=b).error)

        expected = reference_normal_stability(depth, intrinsics, extrinsics, pairs)
        for name, fn in impls.items():
            if name.startswith("vgpa"):
                got = fn(depth)
                if not torch.allclose(got, expected, atol=1e-4, rtol=1e-3):
                    raise RuntimeError(f"{name} disagrees with the reference: {got} vs {expected}")
        base = {}
        for mode in ("fwd", "fwd+bwd"):
            for name, fn in impls.items():
                if mode == "fwd":
                    def step(fn=fn):
                        with torch.no_grad():
                            fn(depth)
                else:
                    def step(fn=fn):
                        depth_grad.grad = None
                        fn(depth_grad).sum().backward()
                ms = time_ms(step, device, warmup=2, repeat=repeat)
                base.setdefault(mode, ms)  # kornia comes first
                rows.append({
                    "shape": "x".join(map(str, (videos, frames, height, width))), "pairs": pairs.shape[0],
                    "mode": mode, "impl": name, "ms": ms, "speedup_vs_kornia": base[mode] / ms,
                    "peak_mib": peak_memory_mib(step, device),
                })
    return rows
