"""Point-cloud re-render consistency (the MSE part of 3DCS): the fused cloud of a video rendered
into each of its frames and compared with them, forward. Peers:

- "VideoGPA batch_reproject": our statement of VideoGPA's renderer as its 3DCS evaluation runs it
  (utils/projection_utils.py: project_points per frame, batch_reproject over the frames): for
  each frame project every point (u, v rounded after dividing by z + 1e-8), keep those in front
  and inside the image, sort them far to near, convert the colours to uint8 (after a host-side
  check of their maximum) and write them with one indexed assignment into an (H, W, 3) uint8
  canvas so that the nearest is written last; the stacked canvases are mapped to [-1, 1] floats.
  The MSE against the frames is then taken in torch on VideoGPA's [-1, 1] scale and divided by 4
  to be on vgpa's [0, 1] scale. On a GPU, duplicate indices in the assignment have no defined
  winner, and the uint8 conversion truncates, so its image differs from the z-buffer's by up to
  1/255 per channel;
- "torch.compile (reference)": torch.compile of vgpa's reference z-buffer (scatter_reduce amin over
  int64 keys, then the resolve and the error), compiled for each size.

Rows report the fused ``render_consistency`` ("vgpa[...]") and ``render_points`` followed by the
error in torch ("vgpa[...] render+mse"). The scene is the cloud of a textured, slanted plane seen
by 10 cameras (as VideoGPA samples them): H x W x 10 points.
"""

from __future__ import annotations

import torch

import vgpa
from vgpa.reference import render_points as reference_module

from .harness import Entry, Impl, Size, assert_close


def make_inputs(dims, device):
    """(cloud, intrinsics, extrinsics, frames): a slanted plane with a colour texture fixed in
    the world, cameras sliding sideways; the cloud fuses every pixel of every frame."""
    videos, frames, height, width = dims
    fx = 0.9 * width
    k = torch.tensor([[fx, 0, (width - 1) / 2], [0, fx, (height - 1) / 2], [0, 0, 1]], dtype=torch.float64)
    k = k.expand(videos, frames, 3, 3).clone()
    e = torch.eye(4, dtype=torch.float64).repeat(videos, frames, 1, 1)
    e[..., 0, 3] = torch.linspace(-0.5, 0.5, frames, dtype=torch.float64)
    v, u = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                          indexing="ij")
    ray_x, ray_y = (u - (width - 1) / 2) / fx, (v - (height - 1) / 2) / fx
    centre_x = -e[..., 0, 3, None, None]
    depth = (4 + 0.3 * centre_x) / (1 - 0.3 * ray_x)  # plane z = 4 + 0.3 x
    world_x, world_y = centre_x + depth * ray_x, depth * ray_y
    colors = torch.stack([0.5 + 0.4 * torch.sin(3 * world_x), 0.5 + 0.4 * torch.cos(2 * world_y),
                          0.5 + 0.2 * torch.sin(world_x + world_y)], 2)
    k, e, colors, depth = (x.float().to(device) for x in (k, e, colors, depth))
    return vgpa.point_cloud(depth, k, e, colors), k, e, colors


def project_points(pc, colors, K, E, H, W, bg=(0, 0, 0)):
    """One frame's (H, W, 3) uint8 render, as VideoGPA's project_points (module docstring)."""
    R = E[:3, :3]
    t = E[:3, 3]
    pc_cam = torch.matmul(pc, R.T) + t
    pc_proj = torch.matmul(pc_cam, K.T)
    z = pc_proj[:, 2]
    u = (pc_proj[:, 0] / (z + 1e-8)).round().long()
    v = (pc_proj[:, 1] / (z + 1e-8)).round().long()
    valid_mask = (u >= 0) & (u < W) & (v >= 0) & (v < H) & (z > 0)
    u, v, z, c = u[valid_mask], v[valid_mask], z[valid_mask], colors[valid_mask]
    canvas = torch.tensor(bg, device=pc.device, dtype=torch.uint8).view(1, 1, 3).repeat(H, W, 1)
    if len(u) == 0:
        return canvas
    sort_idx = torch.argsort(z, descending=True)
    u, v, c = u[sort_idx], v[sort_idx], c[sort_idx]
    if c.max() <= 1.0:  # a host sync per frame, as in VideoGPA
        c = (c * 255).clamp(0, 255).to(torch.uint8)
    else:
        c = c.clamp(0, 255).to(torch.uint8)
    canvas[v, u] = c
    return canvas


def batch_reproject(pc, colors, intrinsics, extrinsics, H, W):
    """(T, 3, H, W) renders in [-1, 1], one frame at a time, as VideoGPA's batch_reproject."""
    images = [project_points(pc, colors, intrinsics[i], extrinsics[i], H, W) for i in range(len(extrinsics))]
    stack = torch.stack(images).permute(0, 3, 1, 2).float()
    return (stack / 255.0) * 2.0 - 1.0


def videogpa_consistency(cloud, intrinsics, extrinsics, frames):
    """(B, T) MSE of VideoGPA's renders against the frames, on vgpa's [0, 1] scale."""
    height, width = frames.shape[-2:]
    mse = []
    for b, (points, colors) in enumerate(cloud.split()):
        rendered = batch_reproject(points, colors, intrinsics[b], extrinsics[b], height, width)
        mse.append((rendered - (frames[b] * 2 - 1)).square().mean((1, 2, 3)) / 4)
    return torch.stack(mse)


def compiled_reference(videos, frames):
    """torch.compile of the reference's z-buffer, resolve and error for packed clouds of
    ``videos`` videos (the loop over videos is unrolled at trace time)."""
    ref = reference_module

    def consistency(points, colors, offsets, counts, rows, target):
        height, width = target.shape[-2:]
        mse = []
        for b in range(videos):
            cloud = points.narrow(0, offsets[b], counts[b])
            depth, lands, pixel = ref.project(cloud, rows[b], height, width)
            index = torch.arange(cloud.shape[0], device=points.device)
            slot = torch.where(lands, pixel, height * width)
            key = torch.where(lands, ref.depth_keys(torch.where(lands, depth, 1.0), index), ref.EMPTY_KEY)
            keys = torch.full((frames, height * width + 1), ref.EMPTY_KEY, dtype=torch.int64,
                              device=points.device).scatter_reduce(1, slot, key, reduce="amin")[:, :-1]
            covered = keys != ref.EMPTY_KEY
            winner = torch.where(covered, keys & ref.INDEX_MASK, 0) + offsets[b]
            render = torch.where(covered[..., None], colors[winner], 0.0)  # (T, HW, C)
            truth = target[b].flatten(2).transpose(1, 2)
            mse.append((render - truth).square().mean((1, 2)))
        return torch.stack(mse)

    return torch.compile(consistency, dynamic=False)


def compiled_impl(inputs):
    cloud, k, e, frames = inputs
    compiled = compiled_reference(frames.shape[0], frames.shape[1])
    counts, offsets = cloud.counts.tolist(), cloud.offsets().tolist()
    table = reference_module.projection_rows(k, e, torch.float32)
    return lambda: compiled(cloud.points, cloud.colors, offsets, counts, table, frames)


def sizes(device, quick):
    """(videos, frames, height, width); x = points x frames projected. The default: VideoGPA's 3DCS
    setting, one video of 10 frames at 518 x 518."""
    if device.type == "cuda":
        dims = [(1, 10, 518, 518)] if quick else [
            (1, 10, 128, 128), (1, 10, 259, 259), (1, 10, 518, 518), (4, 10, 518, 518)]
    else:
        dims = [(1, 3, 32, 32)] if quick else [(1, 10, 64, 64), (1, 10, 128, 128), (1, 10, 259, 259), (1, 10, 518, 518)]
    return [Size(d, x=d[0] * d[1] * d[2] * d[3] * d[1], graph=d[2] * d[3] <= 259 * 259,
                 default=not quick and d == (1, 10, 518, 518)) for d in dims]


def reference(inputs):
    cloud, k, e, frames = inputs
    return vgpa.render_consistency(cloud, None, k, e, frames, backend="torch").mse


def agree(got, expected):
    assert_close(got, expected, rtol=1e-4, atol=1e-7, what="render MSE")


def videogpa_agree(got, expected):
    """Within what VideoGPA's uint8 truncation allows: each channel r is low by some d < 1/255, so
    each squared error moves by 2 d |r - f| + d^2 and the MSE by at most
    2/255 sqrt(MSE) + 1/255^2 (Cauchy-Schwarz: mean |r - f| <= sqrt(MSE))."""
    got, expected = got.detach().float().cpu(), expected.detach().float().cpu()
    if got.shape != expected.shape:
        raise AssertionError(f"VideoGPA render MSE: shape {tuple(got.shape)} differs from the reference's "
                             f"{tuple(expected.shape)}")
    bound = 2 / 255 * expected.clamp_min(0).sqrt() + 1 / 255**2
    excess = ((got - expected).abs() - bound).max()
    if excess > 0:
        raise AssertionError(f"VideoGPA render MSE differs from the reference by more than uint8 truncation allows "
                             f"(by {excess:.3g} beyond the bound)")


def vgpa_impls(backend):
    height_width = lambda frames: frames.shape[-2:]  # noqa: E731
    return [
        Impl(f"vgpa[{backend}]", peer=False, backend=backend, capturable=True,
             what="the library itself (fused render + MSE)",
             make=lambda x, b=backend: lambda: vgpa.render_consistency(x[0], None, x[1], x[2], x[3], backend=b).mse),
        Impl(f"vgpa[{backend}] render+mse", peer=False, backend=backend, capturable=True, full_only=True,
             what="the library's render_points, then the MSE in torch",
             make=lambda x, b=backend: lambda: (vgpa.render_points(x[0], None, x[1], x[2], *height_width(x[3]),
                                                                   backend=b).image - x[3]).square().mean((2, 3, 4))),
    ]


ENTRY = Entry(
    op="render_points",
    x_label="points x frames projected",
    sizes=sizes,
    make_inputs=make_inputs,
    reference=reference,
    agree=agree,
    baseline="VideoGPA batch_reproject",
    impls=[
        Impl("VideoGPA batch_reproject", what="our statement of VideoGPA's per-frame sort + uint8 scatter renderer",
             make=lambda x: lambda: videogpa_consistency(*x), agree=videogpa_agree),
        Impl("torch.compile (reference)", what="torch.compile of vgpa's reference z-buffer", compiled=True,
             make=compiled_impl),
        *[impl for b in ("cuda", "triton", "cpu", "torch") for impl in vgpa_impls(b)],
    ],
)


def test_render_points(bench, case):
    bench(ENTRY, case)
