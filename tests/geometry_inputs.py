"""Random camera and depth builders shared by the geometry-op tests."""

import torch


def rotation(axis_angle):
    """Rodrigues: (..., 3) axis-angle -> (..., 3, 3), in the dtype of axis_angle."""
    axis_angle = torch.as_tensor(axis_angle)
    angle = axis_angle.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    k = axis_angle / angle
    zero = torch.zeros_like(k[..., 0])
    cross = torch.stack([zero, -k[..., 2], k[..., 1], k[..., 2], zero, -k[..., 0], -k[..., 1], k[..., 0], zero],
                        -1).view(k.shape[:-1] + (3, 3))
    angle = angle[..., None]
    eye = torch.eye(3, dtype=axis_angle.dtype)
    return eye + angle.sin() * cross + (1 - angle.cos()) * cross @ cross


def random_cameras(batch, frames, height, width, generator, motion=0.05, focal=0.8):
    """Random general K (B, T, 3, 3) (focal ~ focal * max(H, W), skew, off-centre principal
    point) and world-to-camera poses near identity (B, T, 4, 4)."""
    f = focal * max(height, width) * (1 + 0.2 * torch.rand(batch, frames, generator=generator))
    intrinsics = torch.zeros(batch, frames, 3, 3)
    intrinsics[..., 0, 0] = f
    intrinsics[..., 1, 1] = f * (1 + 0.05 * torch.rand(batch, frames, generator=generator))
    intrinsics[..., 0, 1] = 0.01 * f * torch.randn(batch, frames, generator=generator)  # skew: K is general
    intrinsics[..., 0, 2] = (width - 1) / 2 + torch.randn(batch, frames, generator=generator)
    intrinsics[..., 1, 2] = (height - 1) / 2 + torch.randn(batch, frames, generator=generator)
    intrinsics[..., 2, 2] = 1
    extrinsics = torch.eye(4).repeat(batch, frames, 1, 1)
    extrinsics[..., :3, :3] = rotation(motion * torch.randn(batch, frames, 3, generator=generator))
    extrinsics[..., :3, 3] = 2 * motion * torch.randn(batch, frames, 3, generator=generator)
    return intrinsics, extrinsics


def random_depth(batch, frames, height, width, generator, invalid=True, invalid_share=20):
    """2 + U[0, 1) with max(4, N // invalid_share) invalid depths (0, < 0, NaN, inf in turn)."""
    depth = 2 + torch.rand(batch, frames, height, width, generator=generator)
    if invalid:
        flat = depth.view(-1)
        index = torch.randperm(flat.numel(), generator=generator)[: max(4, flat.numel() // invalid_share)]
        bad = torch.tensor([0.0, -1.0, float("nan"), float("inf")])
        flat[index] = bad[torch.arange(index.numel()) % 4]
    return depth
