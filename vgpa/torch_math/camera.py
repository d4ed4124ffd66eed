"""Camera algebra shared by the geometry ops, their references and scoring (docs/design.md 2).

Conventions: pixel (u, v) = (column, row) with centres at integers; OpenCV pinhole camera
(x right, y down, z forward); extrinsics E are world-to-camera, X_cam = R X_world + t,
(..., 4, 4) or (..., 3, 4). Camera algebra runs in float64: the matrices are tiny and the
kernels receive them already composed, cast to the accumulation dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Entries of a composed rotation or intrinsics product (R_j R_i^-1, K_j R K_i^-1, R^-1 K^-1)
# this close to an integer, relative to the sum of the absolute values of the terms that formed
# the entry (its float64 rounding error is a few ulps of that sum), are rounding residue; rounding
# them makes identical cameras map every pixel exactly onto itself (error exactly 0). The scale
# is the entry's own, never a neighbour's, and translations are never rounded, so no result
# depends on where the scene sits or how large it is.
SNAP_TOLERANCE = 1e-11


class CameraError(ValueError):
    """An intrinsics or extrinsics matrix that no camera can have. The public ops re-raise it
    with their name in front (:func:`named`)."""


class SingularCameraError(CameraError):
    """An intrinsics or extrinsics matrix cannot be inverted."""


def named(op: str, exc: CameraError) -> CameraError:
    """``exc`` as raised by the public op ``op``: the same class, the message prefixed by
    ``op``. These helpers are shared by many ops, so the name is added where the op is known."""
    return type(exc)(f"{op}: {exc}")


def as_pose_4x4(extrinsics: Tensor) -> Tensor:
    """(..., 3, 4) or (..., 4, 4) -> (..., 4, 4) with the last row [0, 0, 0, 1] appended."""
    if extrinsics.shape[-2:] == (4, 4):
        return extrinsics
    bottom = torch.zeros(extrinsics.shape[:-2] + (1, 4), dtype=extrinsics.dtype, device=extrinsics.device)
    bottom[..., 0, 3] = 1
    return torch.cat([extrinsics, bottom], dim=-2)


def _inverse_3x3(m: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse by the adjugate and the determinant (batched LAPACK calls on tiny matrices are
    slow on CPU); returns (inverse, determinant)."""
    a, b, c = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    d, e, f = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    g, h, i = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    cofactors = torch.stack([e * i - f * h, c * h - b * i, b * f - c * e,
                             f * g - d * i, a * i - c * g, c * d - a * f,
                             d * h - e * g, b * g - a * h, a * e - b * d], -1).view(m.shape)
    det = a * cofactors[..., 0, 0] + b * cofactors[..., 1, 0] + c * cofactors[..., 2, 0]
    return cofactors / det[..., None, None], det


def _inverse(matrix: Tensor, what: str, check: bool) -> Tensor:
    matrix = matrix.to(torch.float64)
    if matrix.shape[-1] == 3:
        inverse, det = _inverse_3x3(matrix)
    else:  # [[A, t], [0, 1]] -> [[A^-1, -A^-1 t], [0, 1]]
        linear, det = _inverse_3x3(matrix[..., :3, :3])
        inverse = torch.cat([torch.cat([linear, -linear @ matrix[..., :3, 3:]], -1), matrix[..., 3:, :]], -2)
    if check and not torch.compiler.is_compiling():
        bad = (det == 0) | ~torch.isfinite(inverse).flatten(-2).all(-1) | ~torch.isfinite(matrix).flatten(-2).all(-1)
        if bool(bad.any()):
            index = tuple(int(i) for i in bad.nonzero()[0])
            raise SingularCameraError(f"{what} at index {index} is singular or not finite: "
                                      f"{matrix[index].tolist()}")
    return inverse


def inverse_intrinsics(intrinsics: Tensor, check: bool = True) -> Tensor:
    """K^-1 in float64; raises SingularCameraError naming the first singular K."""
    return _inverse(intrinsics, "intrinsics matrix K", check)


def invert_pose(extrinsics: Tensor, check: bool = True) -> Tensor:
    """E^-1 (camera-to-world) in float64 as (..., 4, 4), for E = [[A, t], [0, 1]] with any
    invertible A, so similarity transforms (a scaled R) are inverted correctly too."""
    pose = as_pose_4x4(extrinsics)
    if check and not torch.compiler.is_compiling():
        bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=pose.dtype, device=pose.device)
        if not bool((pose[..., 3, :] == bottom).all()):
            raise CameraError("extrinsics matrix E must have the last row [0, 0, 0, 1]")
    return _inverse(pose, "extrinsics matrix E", check)


def relative_transform(extrinsics: Tensor, pairs: Tensor, check: bool = True) -> Tensor:
    """T_ji = E_j E_i^-1 for every pair (i, j): (B, T, 4|3, 4) -> (B, P, 4, 4) float64.

    R_ji = A_j A_i^-1 is snapped (see SNAP_TOLERANCE) before t_ji = t_j - R_ji t_i is formed, so
    two equal poses give exactly [I | 0] wherever they are, and the translation is never rounded."""
    pose = as_pose_4x4(extrinsics).to(torch.float64)
    inverse = invert_pose(pose, check)[..., :3, :3]
    linear_j, linear_i_inv = pose[:, pairs[:, 1], :3, :3], inverse[:, pairs[:, 0]]
    rotation = _snap(linear_j @ linear_i_inv, linear_j.abs() @ linear_i_inv.abs())
    translation = pose[:, pairs[:, 1], :3, 3:] - rotation @ pose[:, pairs[:, 0], :3, 3:]
    bottom = pose[:, pairs[:, 1], 3:, :]  # [0, 0, 0, 1]
    return torch.cat([torch.cat([rotation, translation], -1), bottom], -2)


def pixel_grid(height: int, width: int, dtype=torch.float32, device=None) -> tuple[Tensor, Tensor]:
    """(u, v) pixel coordinates of shape (H, W): u the column, v the row."""
    v, u = torch.meshgrid(torch.arange(height, dtype=dtype, device=device),
                          torch.arange(width, dtype=dtype, device=device), indexing="ij")
    return u, v


def unproject(depth: Tensor, intrinsics_inverse: Tensor) -> Tensor:
    """Camera-frame points X = z K^-1 [u, v, 1]^T: depth (..., H, W), K^-1 (..., 3, 3)
    -> (..., H, W, 3)."""
    u, v = pixel_grid(*depth.shape[-2:], dtype=depth.dtype, device=depth.device)
    rays = torch.stack([u, v, torch.ones_like(u)], -1)  # (H, W, 3)
    kinv = intrinsics_inverse.to(depth.dtype)
    return depth.unsqueeze(-1) * torch.einsum("...ij,hwj->...hwi", kinv, rays)


def _snap(matrix: Tensor, magnitude: Tensor) -> Tensor:
    """``matrix`` with the entries within SNAP_TOLERANCE * ``magnitude`` of an integer rounded to
    it; ``magnitude`` (same shape) is, per entry, the sum of the absolute values of its terms."""
    rounded = matrix.round()
    return torch.where((matrix - rounded).abs() <= SNAP_TOLERANCE * magnitude, rounded, matrix)


def pair_projection(intrinsics: Tensor, extrinsics: Tensor, pairs: Tensor, check: bool = True) -> Tensor:
    """The (B, P, 3, 4) float64 matrix that warps a source pixel into the target camera.

    With q = M [u, v, 1, 1/z]^T: the target depth is z' = z q_z and the target pixel is
    (u', v') = q_xy / q_z, i.e. rows 0-1 are K_j [R_ji K_i^-1 | t_ji] and row 2 is
    [R_ji K_i^-1 | t_ji]_z (a general K_j need not keep the depth in its last row).
    intrinsics (B, T, 3, 3); extrinsics (B, T, 3|4, 4); pairs (P, 2) of (source i, target j).
    """
    kinv = inverse_intrinsics(intrinsics, check)[:, pairs[:, 0]]
    relative = relative_transform(extrinsics, pairs, check)[..., :3, :]  # (B, P, 3, 4)
    rotation, translation = relative[..., :3], relative[..., 3:]
    k_target = intrinsics.to(torch.float64)[:, pairs[:, 1]][..., :2, :]  # (B, P, 2, 3)
    linear = rotation @ kinv  # R_ji K_i^-1, then K_j R_ji K_i^-1 for rows 0-1
    linear_magnitude = rotation.abs() @ kinv.abs()
    linear = torch.cat([k_target @ linear, linear[..., 2:, :]], -2)
    linear_magnitude = torch.cat([k_target.abs() @ linear_magnitude, linear_magnitude[..., 2:, :]], -2)
    shift = torch.cat([k_target @ translation, translation[..., 2:, :]], -2)
    return torch.cat([_snap(linear, linear_magnitude), shift], -1)


def frame_ray_maps(intrinsics: Tensor, extrinsics: Tensor, check: bool = True) -> Tensor:
    """(B, T, 3, 4) float64 [M | t] with world points X_w = z M [u, v, 1]^T + t, i.e.
    E^-1 applied to the camera point z K^-1 [u, v, 1]^T."""
    kinv = inverse_intrinsics(intrinsics, check)
    to_world = invert_pose(extrinsics, check)[..., :3, :]
    rays = _snap(to_world[..., :3] @ kinv, to_world[..., :3].abs() @ kinv.abs())
    return torch.cat([rays, to_world[..., 3:]], -1)
