"""Point-cloud re-render consistency (the MSE part of 3DCS): the fused cloud of a video
rendered into each of its frames and compared with them. vgpa's backends against

- "sort+scatter": a per-frame renderer in the style of VideoGPA's 3DCS evaluation. This is our
  own statement of that approach (DESIGN 3.3), not VideoGPA's code: for each video and frame,
  project every point, keep those in front and inside the image, sort them by depth from far to
  near and write their colours with one indexed assignment so that the nearest is written
  last, then take the MSE against the frame. On a GPU, duplicate indices in that assignment
  have no defined winner, so its image is not reproducible where points collide;
- "torch.compile": torch.compile of vgpa's reference z-buffer (scatter_reduce amin over int64
  keys, then the resolve and the error), GPU only.

Rows report the fused ``render_consistency`` ("vgpa[...]") and ``render_points`` followed by
the error in torch ("vgpa[...] render+mse"). The scene is the cloud of a textured, slanted
plane seen by 10 cameras (as VideoGPA samples them, 518 x 518: 2.7M points). Every vgpa
backend's per-frame MSE is checked against the reference before it is timed.
"""

from __future__ import annotations

import torch

import vgpa
from vgpa.reference import render_points as reference

from .common import peak_memory_mib, plan, time_ms

# (videos, frames, height, width)
CPU_SIZES = {"quick": [(1, 3, 32, 32)], "full": [(1, 10, 128, 128), (2, 10, 128, 128)]}
GPU_SIZES = {"quick": [(1, 10, 518, 518)], "full": [(1, 10, 518, 518), (4, 10, 518, 518)]}


def make_scene(videos, frames, height, width, device):
    """(cloud, intrinsics, extrinsics, frames): a slanted plane with a colour texture fixed in
    the world, cameras sliding sideways; the cloud fuses every pixel of every frame."""
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


def sort_and_scatter(cloud, intrinsics, extrinsics, frames):
    """(B, T) MSE with a per-frame sort-by-depth + indexed assignment (module docstring)."""
    videos, steps, channels, height, width = frames.shape
    out = torch.zeros(videos, steps, device=frames.device)
    for b, (points, colors) in enumerate(cloud.split()):
        homogeneous = torch.cat([points, torch.ones_like(points[:, :1])], 1)
        for t in range(steps):
            camera = homogeneous @ extrinsics[b, t, :3].T
            z = camera[:, 2]
            projected = camera @ intrinsics[b, t].T
            u = torch.round(projected[:, 0] / z).long()
            v = torch.round(projected[:, 1] / z).long()
            keep = (z > 0) & (u >= 0) & (u < width) & (v >= 0) & (v < height)
            order = torch.argsort(z[keep], descending=True)
            image = torch.zeros(channels, height * width, device=frames.device)
            image[:, (v[keep] * width + u[keep])[order]] = colors[keep][order].T
            out[b, t] = (image.view(channels, height, width) - frames[b, t]).square().mean()
    return out


def compiled_reference(videos, frames):
    """torch.compile of the reference's z-buffer, resolve and error for packed clouds of
    ``videos`` videos (the loop over videos is unrolled at trace time)."""

    def consistency(points, colors, offsets, counts, rows, target):
        height, width = target.shape[-2:]
        mse = []
        for b in range(videos):
            cloud = points.narrow(0, offsets[b], counts[b])
            depth, lands, pixel = reference.project(cloud, rows[b], height, width)
            index = torch.arange(cloud.shape[0], device=points.device)
            slot = torch.where(lands, pixel, height * width)
            key = torch.where(lands, reference.depth_keys(torch.where(lands, depth, 1.0), index), reference.EMPTY_KEY)
            keys = torch.full((frames, height * width + 1), reference.EMPTY_KEY, dtype=torch.int64,
                              device=points.device).scatter_reduce(1, slot, key, reduce="amin")[:, :-1]
            covered = keys != reference.EMPTY_KEY
            winner = torch.where(covered, keys & reference.INDEX_MASK, 0) + offsets[b]
            render = torch.where(covered[..., None], colors[winner], 0.0)  # (T, HW, C)
            truth = target[b].flatten(2).transpose(1, 2)
            mse.append((render - truth).square().mean((1, 2)))
        return torch.stack(mse)

    return torch.compile(consistency, dynamic=False)


def run(device: torch.device, quick: bool = False) -> list[dict]:
    sizes, backends, repeat = plan(device, quick, CPU_SIZES, GPU_SIZES)
    rows = []
    for videos, steps, height, width in sizes:
        cloud, k, e, frames = make_scene(videos, steps, height, width, device)
        want = vgpa.render_consistency(cloud, None, k, e, frames, backend="torch").mse

        impls = {"sort+scatter": lambda: sort_and_scatter(cloud, k, e, frames)}
        if device.type == "cuda":
            compiled = compiled_reference(videos, steps)
            counts = cloud.counts.tolist()
            offsets = cloud.offsets().tolist()
            table = reference.projection_rows(k, e, torch.float32)
            impls["torch.compile"] = lambda: compiled(cloud.points, cloud.colors, offsets, counts, table, frames)
        for backend in backends:
            impls[f"vgpa[{backend}]"] = (
                lambda b=backend: vgpa.render_consistency(cloud, None, k, e, frames, backend=b).mse)
            impls[f"vgpa[{backend}] render+mse"] = (
                lambda b=backend: (vgpa.render_points(cloud, None, k, e, height, width, backend=b).image
                                   - frames).square().mean((2, 3, 4)))

        baseline_ms = None
        for name, fn in impls.items():
            got = fn()
            if name.startswith("vgpa") or name == "torch.compile":
                if not torch.allclose(got, want, rtol=1e-4, atol=1e-7):
                    raise RuntimeError(f"{name} disagrees with the reference: {got} vs {want}")
            ms = time_ms(fn, device, warmup=2, repeat=repeat)
            baseline_ms = ms if name == "sort+scatter" else baseline_ms
            rows.append({
                "shape": f"{videos}x{steps}x{height}x{width}", "points": cloud.points.shape[0], "impl": name,
                "ms": ms, "speedup": baseline_ms / ms, "Mpoints*frames/s": cloud.points.shape[0] * steps / ms / 1e3,
                "peak_mib": peak_memory_mib(fn, device),
            })
    return rows
