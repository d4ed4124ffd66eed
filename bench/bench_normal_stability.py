"""Normal stability (docs/design.md 3.2) of consecutive pairs, forward and forward + backward with
respect to depth. Peers:

- "kornia": what a user would write with kornia (our statement): depth_to_normals of every frame,
  then per pair rotate the source normals, resample the target normals at the warped source
  pixels with warp_frame_depth (bilinear) and take 1 - cos;
- "torch.compile (reference)": torch.compile of vgpa's pure-PyTorch reference (dynamic shapes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import vgpa
from vgpa.reference import normal_stability as reference_module

from .harness import Entry, Impl, Size, assert_close
from .scenes import orbiting_cameras


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


def reference_error(depth, intrinsics, extrinsics, pairs):
    return reference_module.normal_stability(depth, intrinsics, extrinsics, pairs)[0]


compiled_reference = torch.compile(reference_error, dynamic=True)


def sizes(device, quick):
    """(videos, frames, height, width); x = pixels compared (pairs x H x W). The default: 10 frames
    (VideoGPA's) at 518 x 518 on a GPU; on the CPU at 259 x 259, the largest CPU size (kornia's
    forward + backward takes about 2 s a call at 518 x 518 there)."""
    if device.type == "cuda":
        dims = [(1, 10, 128, 128)] if quick else [
            (1, 10, 128, 128), (1, 10, 259, 259), (1, 10, 518, 518), (1, 49, 480, 720)]
    else:
        dims = [(1, 4, 48, 64)] if quick else [(1, 10, 64, 64), (1, 10, 128, 128), (1, 10, 259, 259)]
    default = (1, 10, 518, 518) if device.type == "cuda" else (1, 10, 259, 259)
    return [Size(d, x=d[0] * (d[1] - 1) * d[2] * d[3], graph=d[2] * d[3] <= 259 * 259,
                 default=not quick and d == default) for d in dims]


def make_inputs(dims, device):
    """A smooth random surface around depth 3 seen by a slowly moving camera."""
    videos, frames, height, width = dims
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(videos * frames, 1, 8, 8, generator=g)
    depth = 3 + 0.5 * F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)
    depth = depth.view(videos, frames, height, width)
    intrinsics, extrinsics = orbiting_cameras(videos, frames, height, width, translation=(1.0, 0.3, 0.1))
    pairs = vgpa.adjacent_pairs(frames)
    return (depth.to(device).requires_grad_(), intrinsics.to(device), extrinsics.to(device), pairs.to(device))


def agree(got, expected):
    assert_close(got, expected, rtol=1e-3, atol=1e-4, what="normal stability")


def kornia_agree(got, expected):
    """kornia's normals differ from vgpa's at the border and its warp is bilinear where vgpa's
    follows docs/design.md 3.2, so its error is checked to be within 10% of the reference, not
    equal."""
    assert_close(got, expected, rtol=0.1, atol=1e-3, what="kornia normal stability")


def vgpa_impl(backend):
    return Impl(f"vgpa[{backend}]", peer=False, backend=backend, capturable=True, what="the library itself",
                make=lambda x, b=backend: lambda: vgpa.normal_stability(*x, backend=b).error)


ENTRY = Entry(
    op="normal_stability",
    x_label="pixels compared (pairs x H x W)",
    sizes=sizes,
    make_inputs=make_inputs,
    reference=lambda x: reference_error(*x),
    agree=agree,
    modes=("fwd", "fwd+bwd"),
    grad_input=lambda inputs: inputs[0],
    baseline="kornia",
    impls=[
        Impl("kornia", what="our statement of the kornia pipeline (depth_to_normals + warp_frame_depth + 1 - cos)",
             make=lambda x: lambda: kornia_normal_stability(*x), agree=kornia_agree),
        Impl("torch.compile (reference)", what="torch.compile of vgpa's reference", compiled=True, capturable=True,
             make=lambda x: lambda: compiled_reference(*x)),
        *[vgpa_impl(b) for b in ("cuda", "triton", "cpu", "torch")],
    ],
)


def test_normal_stability(bench, case):
    bench(ENTRY, case)
