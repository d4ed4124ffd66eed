#!/usr/bin/env python
"""Scores a small synthetic video dataset with `vgpa score` and trains a few DPO steps on the
pairs it yields; needs no download.

    python examples/score_demo.py --out /tmp/score_demo

A procedurally textured room (floor, walls, boxes: a dense coloured point cloud) is rendered
with vgpa.render_points along camera paths into mp4 files. Every prompt group holds rigid
videos and "wobbly" ones, whose scene deforms non-rigidly from frame to frame; each video's
geometry file (depth from the renderer's z-buffer, intrinsics, extrinsics) is written from the
scene it was rendered from, so the wobbly videos' geometry is really inconsistent. `vgpa score`
scores them, a table shows that the rigid videos win their groups, and the tiny random
CogVideoX model of examples/train_dpo.py trains a few steps on the pairs (random latents stand
in for the videos' latents).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
from pathlib import Path

import torch

import vgpa
from vgpa import _extras

RIGID, WOBBLY = "rigid", "wobbly"


# --------------------------------------------------------------------------------------------
# The scene and its videos


def _plane(origin, u_axis, v_axis, u_length, v_length, spacing):
    """Points of the rectangle origin + a u_axis + b v_axis, a in [0, u_length], b in [0, v_length]."""
    a = torch.arange(0.0, u_length + 1e-9, spacing)
    b = torch.arange(0.0, v_length + 1e-9, spacing)
    grid_a, grid_b = torch.meshgrid(a, b, indexing="ij")
    origin, u_axis, v_axis = (torch.tensor(x, dtype=torch.float32) for x in (origin, u_axis, v_axis))
    return (origin + grid_a.reshape(-1, 1) * u_axis + grid_b.reshape(-1, 1) * v_axis).reshape(-1, 3)


def _texture(points, palette):
    """RGB in [0, 1] from the position: a checkerboard in the palette's two colours, modulated by
    stripes and fine noise-like waves, so that every surface has detail at the pixel scale."""
    x, y, z = points.unbind(-1)
    checker = ((torch.floor(x * 4) + torch.floor(y * 4) + torch.floor(z * 4)) % 2).unsqueeze(-1)
    colour = palette[0] * checker + palette[1] * (1 - checker)
    waves = 0.5 + 0.5 * torch.sin(17 * x + 11 * y) * torch.sin(13 * z - 7 * y)
    return (colour * (0.55 + 0.45 * waves.unsqueeze(-1))).clamp(0, 1)


def textured_scene(generator: torch.Generator, spacing: float = 0.02):
    """A room as one coloured point cloud (points (N, 3), colours (N, 3)); world y points down.
    The palette and the boxes' places come from ``generator``."""
    surfaces = [
        ((-2.5, 1.0, 1.0), (1, 0, 0), (0, 0, 1), 5.0, 5.0),  # floor, y = 1
        ((-2.5, -1.5, 6.0), (1, 0, 0), (0, 1, 0), 5.0, 2.5),  # back wall, z = 6
        ((-2.5, -1.5, 1.0), (0, 0, 1), (0, 1, 0), 5.0, 2.5),  # left wall, x = -2.5
        ((2.5, -1.5, 1.0), (0, 0, 1), (0, 1, 0), 5.0, 2.5),  # right wall, x = 2.5
    ]
    for _ in range(2):  # two boxes standing on the floor
        size = 0.5 + 0.4 * torch.rand((), generator=generator).item()
        x0 = -1.5 + 2.0 * torch.rand((), generator=generator).item()
        z0 = 3.0 + 1.5 * torch.rand((), generator=generator).item()
        y0 = 1.0 - size
        surfaces += [
            ((x0, y0, z0), (1, 0, 0), (0, 1, 0), size, size),  # front face
            ((x0, y0, z0), (0, 0, 1), (0, 1, 0), size, size),  # left face
            ((x0 + size, y0, z0), (0, 0, 1), (0, 1, 0), size, size),  # right face
            ((x0, y0, z0), (1, 0, 0), (0, 0, 1), size, size),  # top face
        ]
    points = torch.cat([_plane(*surface, spacing) for surface in surfaces])
    colours = []
    for surface in surfaces:
        count = _plane(*surface, spacing).shape[0]
        colours.append(torch.rand(2, 1, 3, generator=generator).expand(2, count, 3))
    palette = torch.cat(colours, dim=1)
    return points, _texture(points, palette)


def look_at(eye, target) -> torch.Tensor:
    """World-to-camera (4, 4), OpenCV axes (x right, y down, z forward), world y down."""
    eye, target = torch.as_tensor(eye, dtype=torch.float32), torch.as_tensor(target, dtype=torch.float32)
    forward = torch.nn.functional.normalize(target - eye, dim=0)
    right = torch.nn.functional.normalize(torch.linalg.cross(forward, torch.tensor([0.0, -1.0, 0.0])), dim=0)
    down = torch.linalg.cross(forward, right)
    rotation = torch.stack([right, down, forward])
    extrinsics = torch.eye(4)
    extrinsics[:3, :3], extrinsics[:3, 3] = rotation, -rotation @ eye
    return extrinsics


def camera_path(generator: torch.Generator, frames: int) -> torch.Tensor:
    """(T, 4, 4) world-to-camera: a sideways dolly with a slow pan, from a random start."""
    start = torch.tensor([-0.8, -0.1, 0.2]) + 0.3 * (torch.rand(3, generator=generator) - 0.5)
    step = torch.tensor([0.08, 0.0, 0.05]) * (0.8 + 0.4 * torch.rand((), generator=generator))
    target = torch.tensor([0.0, 0.3, 4.5])
    return torch.stack([look_at(start + t * step, target + torch.tensor([0.1 * t, 0.0, 0.0]))
                        for t in range(frames)])


def wobble(points: torch.Tensor, generator: torch.Generator, amplitude: float) -> torch.Tensor:
    """A smooth non-rigid deformation of the scene with fresh random phases: a different one
    for each call (frame)."""
    phase = 2 * math.pi * torch.rand(3, generator=generator)
    frequency = 1.5 + torch.rand(3, generator=generator)
    shift = torch.stack([torch.sin(frequency[0] * points[:, 1] + phase[0]),
                         torch.sin(frequency[1] * points[:, 2] + phase[1]),
                         torch.sin(frequency[2] * points[:, 0] + phase[2])], dim=-1)
    return points + amplitude * shift


def render_video(points, colours, extrinsics, size, *, wobble_amplitude=0.0, generator=None):
    """Frames (T, 3, size, size) in [0, 1], depth (T, size, size) (0 where nothing landed) and
    intrinsics (T, 3, 3) of the scene seen along ``extrinsics`` (T, 4, 4). With a wobble
    amplitude every frame sees its own deformation of the scene."""
    steps = extrinsics.shape[0]
    focal = 0.9 * size
    intrinsics = torch.tensor([[focal, 0, (size - 1) / 2], [0, focal, (size - 1) / 2], [0, 0, 1]]).expand(steps, 3, 3)
    if wobble_amplitude > 0:  # one cloud per frame: a batch of T one-frame videos (padded clouds)
        clouds = torch.stack([wobble(points, generator, wobble_amplitude) for _ in range(steps)])
        out = vgpa.render_points(clouds, colours.expand(steps, -1, -1), intrinsics[:, None], extrinsics[:, None],
                                 size, size)
        return out.image[:, 0], out.depth[:, 0], intrinsics.clone()
    out = vgpa.render_points(points, colours, intrinsics[None], extrinsics[None], size, size)
    return out.image[0], out.depth[0], intrinsics.clone()


def make_group(seed: int, videos_per_kind: int = 2, frames: int = 8, size: int = 64, spacing: float = 0.02,
               wobble_amplitude: float = 0.1):
    """One prompt group: ``videos_per_kind`` rigid and as many wobbly videos of one scene, each
    on its own camera path. Returns [(kind, frames (T, 3, H, W) float, depth, intrinsics,
    extrinsics)], rigid and wobbly alternating."""
    generator = torch.Generator().manual_seed(seed)
    points, colours = textured_scene(generator, spacing)
    videos = []
    for index in range(2 * videos_per_kind):
        kind = RIGID if index % 2 == 0 else WOBBLY
        extrinsics = camera_path(generator, frames)
        image, depth, intrinsics = render_video(points, colours, extrinsics, size, generator=generator,
                                                wobble_amplitude=wobble_amplitude if kind == WOBBLY else 0.0)
        videos.append((kind, image, depth, intrinsics, extrinsics))
    return videos


# --------------------------------------------------------------------------------------------
# The dataset on disk


def write_dataset(root: Path, groups: int, seed: int, frames: int = 8, size: int = 64, latents: bool = True) -> Path:
    """Videos (mp4), geometry files, conditioning files and (with ``latents``) random latents of
    ``groups`` prompt groups under ``root``, and the groups file `vgpa score` reads. Returns its
    path."""
    from vgpa.geometry import Geometry
    from vgpa.video import write_video

    generator = torch.Generator().manual_seed(seed)
    listing = []
    for g in range(groups):
        condition = f"conditions/g{g}.pt"
        (root / condition).parent.mkdir(parents=True, exist_ok=True)
        # The tiny model's text width (examples/train_dpo.py): 8 tokens x 16.
        torch.save({"encoder_hidden_states": torch.randn(8, 16, generator=generator)}, root / condition)
        videos = []
        for v, (kind, image, depth, intrinsics, extrinsics) in enumerate(make_group(seed + 1000 * g, frames=frames,
                                                                                    size=size)):
            name = f"g{g}_v{v}"
            write_video(root / "videos" / f"{name}.mp4", image)
            covered = depth > 0
            Geometry(depth=depth, confidence=covered.float(), intrinsics=intrinsics,
                     extrinsics=extrinsics).save(root / "geometry" / f"{name}.npz")
            video = {"video_path": f"videos/{name}.mp4", "kind": kind, "condition_path": condition}
            latent = torch.randn(4, 4, 8, 8, generator=generator)  # drawn either way: the same videos
            if latents:
                from safetensors.torch import save_file

                video["latent_path"] = f"latents/{name}.safetensors"
                (root / video["latent_path"]).parent.mkdir(parents=True, exist_ok=True)
                save_file({"latents": latent}, str(root / video["latent_path"]))
            videos.append(video)
        listing.append({"group_id": f"scene{g}", "prompt": f"a camera moving through textured room {g}",
                        "videos": videos})
    groups_file = root / "groups.json"
    groups_file.write_text(json.dumps({"groups": listing}, indent=1))
    return groups_file


def print_table(meta: dict, min_gap: float) -> bool:
    """Prints each video's scores and its role in its group's pair; returns whether a rigid
    video won and a wobbly one lost in every group."""
    from vgpa.pairs import select_videogpa_pair

    columns = {"consistency_score": "3DCS", "mvcs": "MVCS", "normal_stability": "normals", "reprojection_abs_rel":
               "reproj", "motion_norm": "motion"}
    print(f"{'group':8s} {'video':12s} {'kind':7s} " + " ".join(f"{c:>8s}" for c in columns.values()) + "  pair")
    all_won = True
    for group in meta["groups"]:
        pair = select_videogpa_pair(group["videos"], min_gap=min_gap)
        all_won &= pair is not None and pair[0]["kind"] == RIGID and pair[1]["kind"] == WOBBLY
        for video in group["videos"]:
            role = "" if pair is None else "winner" if video is pair[0] else "loser" if video is pair[1] else ""
            values = " ".join(f"{video.get(c, float('nan')):8.4f}" for c in columns)
            print(f"{group['group_id']:8s} {Path(video['video_path']).name:12s} {video['kind']:7s} {values}  {role}")
    return all_won


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the dataset, meta_data.json and the run go here")
    parser.add_argument("--steps", type=int, default=10, help="DPO steps of the tiny model (0: no training)")
    parser.add_argument("--groups", type=int, default=3, help="prompt groups (2 rigid and 2 wobbly videos each)")
    parser.add_argument("--frames", type=int, default=8, help="frames per video")
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels (even: mp4)")
    parser.add_argument("--min-gap", type=float, default=0.003,
                        help="pair threshold; the synthetic scenes' 3DCS gaps are smaller than VideoGPA's 0.05")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    # The videos need OpenCV; the DPO steps (and the latents they read) the train extra.
    _extras.require("video", "examples/score_demo.py")
    if args.steps > 0:
        _extras.require("train", "examples/score_demo.py --steps N (--steps 0 only scores)")

    from vgpa.cli import main as vgpa_main

    data = args.out / "data"
    groups_file = write_dataset(data, args.groups, args.seed, args.frames, args.size, latents=args.steps > 0)
    meta_path = data / "meta_data.json"
    command = ["score", str(groups_file), "--geometry", str(data / "geometry"), "--out", str(meta_path),
               "--num-frames", str(args.frames), "--size", str(args.size), "--min-gap", str(args.min_gap)]
    print("vgpa " + " ".join(command))
    vgpa_main(command)
    meta = json.loads(meta_path.read_text())
    rigid_won = print_table(meta, args.min_gap)
    print(f"rigid videos win every group: {'yes' if rigid_won else 'NO'}")

    if args.steps > 0:
        spec = importlib.util.spec_from_file_location("train_dpo", Path(__file__).with_name("train_dpo.py"))
        train_dpo = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(train_dpo)
        train_dpo.main(train_dpo.parse_args([
            "--tiny", "--pairs", str(meta_path), "--min-gap", str(args.min_gap), "--output-dir",
            str(args.out / "train"), "--max-train-steps", str(args.steps), "--checkpointing-steps",
            str(args.steps), "--logging-steps", "1", "--seed", str(args.seed)]))
        print(f"trained {args.steps} DPO steps; LoRA weights in {args.out / 'train'}")
    return 0 if rigid_won else 1


if __name__ == "__main__":
    raise SystemExit(main())
