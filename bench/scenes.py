"""Synthetic scenes shared by the geometry entries."""

from __future__ import annotations

import torch


def orbiting_cameras(videos: int, frames: int, height: int, width: int, translation=(1.0, 0.0, 0.0)):
    """Pinhole K (focal 0.9 max(H, W), centred) and world-to-camera poses that turn 0.01 rad a
    frame about y and move 0.02 * translation a frame: (B, T, 3, 3), (B, T, 4, 4) float32."""
    focal = 0.9 * max(height, width)
    k = torch.tensor([[focal, 0.0, (width - 1) / 2], [0.0, focal, (height - 1) / 2], [0.0, 0.0, 1.0]])
    intrinsics = k.expand(videos, frames, 3, 3).contiguous()
    extrinsics = torch.eye(4).repeat(videos, frames, 1, 1)
    steps = torch.arange(frames, dtype=torch.float32)[None, :, None]
    extrinsics[..., :3, 3] = 0.02 * steps * torch.tensor(translation)
    angle = 0.01 * steps[..., 0]
    extrinsics[..., 0, 0], extrinsics[..., 0, 2] = angle.cos(), angle.sin()
    extrinsics[..., 2, 0], extrinsics[..., 2, 2] = -angle.sin(), angle.cos()
    return intrinsics, extrinsics
