"""Fundamental-matrix estimation, stated plainly (docs/design.md 3.6).

Everything here works on padded batches: points (..., M, 2) with weights (..., M) that are 0 on
padding (and on dropped matches), so one call solves every pair of every video, and every
RANSAC hypothesis, at once. F maps frame i to frame j: x2^T F x1 = 0, pixel coordinates.

- ``eight_point``: weighted Hartley normalisation, the 9x9 normal matrix A^T W A, its
  eigenvector of the smallest eigenvalue, rank 2 by zeroing the smallest singular value, then
  F = T2^T F_n T1, scaled to unit Frobenius norm with its largest-magnitude entry positive.
- ``ransac_samples``: the 8 distinct match indices of every hypothesis from a counter-based
  hash of (seed, pair, hypothesis, draw) in int64 arithmetic (Floyd's sampling), the same on
  every device and backend.
- ``select_hypothesis``: the most inliers, ties to the lowest hypothesis index, optionally
  stopped early by the standard adaptive-RANSAC rule.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

SAMPLE_SIZE = 8

# A system is rank-deficient (its solution not unique up to scale) when the second-smallest
# singular value of the weighted, Hartley-normalised design matrix is at most this fraction of
# the largest one. Above what rounding leaves of an exact degeneracy (matches on one homography
# stored in float32: ~3e-8; in float64: ~1e-16) and below what pixel noise gives (on a 320 x 240
# image, 0.01 px of noise on such matches already gives ~4e-5, 0.1 px ~4e-4): a noisy planar
# scene stays valid, with a poorly determined F.
RANK_TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-7}


def hartley_normalization(points: Tensor, weights: Tensor):
    """Weighted Hartley normalisation of points (..., M, 2) with weights (..., M) >= 0.

    Centroid c = sum w x / sum w; s = sqrt(2) / (sum w |x - c| / sum w). Returns the normalised
    points s (x - c), the (..., 3, 3) transform T = [[s, 0, -s c_x], [0, s, -s c_y], [0, 0, 1]]
    and whether the transform exists (a positive total weight and mean distance)."""
    total = weights.sum(-1)
    safe_total = torch.where(total > 0, total, torch.ones_like(total))
    centroid = (points * weights[..., None]).sum(-2) / safe_total[..., None]
    centred = points - centroid[..., None, :]
    mean_radius = (centred.norm(dim=-1) * weights).sum(-1) / safe_total
    ok = (total > 0) & (mean_radius > 0) & torch.isfinite(mean_radius)
    scale = math.sqrt(2.0) / torch.where(ok, mean_radius, torch.ones_like(mean_radius))
    transform = torch.zeros(points.shape[:-2] + (3, 3), dtype=points.dtype, device=points.device)
    transform[..., 0, 0] = scale
    transform[..., 1, 1] = scale
    transform[..., 0, 2] = -scale * centroid[..., 0]
    transform[..., 1, 2] = -scale * centroid[..., 1]
    transform[..., 2, 2] = 1.0
    return centred * scale[..., None, None], transform, ok


def design_rows(n1: Tensor, n2: Tensor) -> Tensor:
    """Rows [u2 u1, u2 v1, u2, v2 u1, v2 v1, v2, u1, v1, 1] (..., M, 9): row . vec(F) = x2^T F x1."""
    u1, v1 = n1.unbind(-1)
    u2, v2 = n2.unbind(-1)
    return torch.stack([u2 * u1, u2 * v1, u2, v2 * u1, v2 * v1, v2, u1, v1, torch.ones_like(u1)], -1)


def canonical_scale(F: Tensor) -> Tensor:
    """F / ||F||_F with the sign that makes its largest-magnitude entry positive (the first one
    in row-major order on ties). (..., 3, 3)."""
    flat = F.flatten(-2)
    flat = flat / flat.norm(dim=-1, keepdim=True)
    largest = flat.gather(-1, flat.abs().argmax(-1, keepdim=True))
    return (flat * torch.where(largest < 0, -1.0, 1.0).to(flat.dtype)).view(F.shape)


def eight_point(x1: Tensor, x2: Tensor, weights: Tensor, rank_tolerance: float):
    """The (weighted) normalised 8-point algorithm on every leading index at once.

    x1, x2: (..., M, 2) in float64; weights: (..., M) float64 >= 0, 0 on padding (points there
    must be finite). Returns F (..., 3, 3) float64 (unit Frobenius norm, largest entry positive;
    NaN where invalid) and valid (...,) bool: at least 8 matches of positive weight, a Hartley
    transform for both point sets, and a one-dimensional null space (``RANK_TOLERANCE``)."""
    n1, t1, ok1 = hartley_normalization(x1, weights)
    n2, t2, ok2 = hartley_normalization(x2, weights)
    rows = design_rows(n1, n2)
    total = weights.sum(-1)
    safe_total = torch.where(total > 0, total, torch.ones_like(total))
    # A^T W A / sum w, as a batched matrix product: deterministic on every device.
    normal = (rows * (weights / safe_total[..., None])[..., None]).transpose(-1, -2).contiguous() @ rows
    enough = (weights > 0).sum(-1) >= SAMPLE_SIZE
    ok = ok1 & ok2 & enough & torch.isfinite(normal).flatten(-2).all(-1)
    eye = torch.eye(9, dtype=normal.dtype, device=normal.device)
    # eigh of a non-finite matrix may fail to converge: solve a placeholder there.
    values, vectors = torch.linalg.eigh(torch.where(ok[..., None, None], normal, eye))
    ok = ok & (values[..., 1] > rank_tolerance ** 2 * values[..., 8])
    F_normalised = vectors[..., 0].reshape(vectors.shape[:-2] + (3, 3))
    U, S, Vh = torch.linalg.svd(F_normalised)
    S = torch.cat([S[..., :2], torch.zeros_like(S[..., 2:])], -1)
    rank2 = U @ torch.diag_embed(S) @ Vh
    F = canonical_scale(t2.transpose(-1, -2) @ rank2 @ t1)
    ok = ok & torch.isfinite(F).flatten(-2).all(-1)
    return torch.where(ok[..., None, None], F, torch.full_like(F, float("nan"))), ok


# --------------------------------------------------------------------------------------------
# RANSAC sampling and selection

_MASK64 = (1 << 64) - 1


def _signed(value: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)


def _shift_right(x: Tensor, bits: int) -> Tensor:
    """Logical right shift of int64 bits (torch's >> is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def mix64(x: Tensor) -> Tensor:
    """SplitMix64's finaliser on int64 tensors: integer multiplies wrap modulo 2^64 on every
    device, so the bits are the same everywhere."""
    x = x + _GOLDEN
    x = (x ^ _shift_right(x, 30)) * _MIX1
    x = (x ^ _shift_right(x, 27)) * _MIX2
    return x ^ _shift_right(x, 31)


def ransac_samples(counts: Tensor, iterations: int, seed: int) -> Tensor:
    """(P, iterations, 8) int64: 8 distinct indices in [0, counts[p]) for hypothesis h of pair p.

    Floyd's algorithm: for j = n - 8, ..., n - 1 draw t uniform in [0, j] and take t, or j when
    t was taken already; this gives 8 distinct indices without rejection. t = (r >> 1) mod
    (j + 1) with r = mix64(mix64(mix64(mix64(seed) + p) + h) + k), k the draw. Pairs with fewer
    than 8 matches get indices in [0, 8) (their hypotheses are invalid anyway)."""
    pairs = counts.shape[0]
    device = counts.device
    n = counts.clamp_min(SAMPLE_SIZE)[:, None]
    key = mix64(torch.full((pairs, 1), seed, dtype=torch.int64, device=device))
    key = mix64(key + torch.arange(pairs, dtype=torch.int64, device=device)[:, None])
    key = mix64(key + torch.arange(iterations, dtype=torch.int64, device=device)[None, :])
    chosen = []
    for draw in range(SAMPLE_SIZE):
        j = n - SAMPLE_SIZE + draw
        t = _shift_right(mix64(key + draw), 1) % (j + 1)
        if chosen:
            taken = (torch.stack(chosen, -1) == t[..., None]).any(-1)
            t = torch.where(taken, j.expand_as(t), t)
        chosen.append(t)
    return torch.stack(chosen, -1)


def select_hypothesis(inlier_counts: Tensor, counts: Tensor, confidence: float) -> Tensor:
    """Index (P,) of the chosen hypothesis of each pair from its inlier counts (P, H).

    Sequential adaptive RANSAC over the hypotheses in their order: after hypothesis h the best
    count so far c gives the number of draws N = ceil(log(1 - confidence) / log(1 - (c / n)^8))
    that find an all-inlier sample with that confidence; the search stops after the first h
    with h + 1 >= N. The chosen hypothesis is the one with the most inliers among those drawn,
    the lowest index on ties. confidence = 1 never stops early."""
    pairs, hypotheses = inlier_counts.shape
    index = torch.arange(hypotheses, device=inlier_counts.device)
    if confidence < 1.0:
        best_so_far = inlier_counts.cummax(-1).values.double()
        ratio = best_so_far / counts.clamp_min(1)[:, None].double()
        miss = 1.0 - ratio.clamp(0.0, 1.0) ** SAMPLE_SIZE
        # miss = 1 (no inlier yet): never enough draws; miss = 0 (all inliers): one is enough.
        needed = torch.where(miss < 1, torch.ceil(math.log1p(-confidence) / torch.log(miss)),
                             torch.full_like(miss, math.inf))
        done = (index[None, :] + 1) >= needed
        stop = torch.where(done, index[None, :], hypotheses - 1).amin(-1)
        drawn = index[None, :] <= stop[:, None]
    else:
        drawn = torch.ones_like(inlier_counts, dtype=torch.bool)
    # Most inliers first, then the lowest index: one integer key, its maximum is unique.
    key = torch.where(drawn, inlier_counts.long() * hypotheses + (hypotheses - 1 - index), -1)
    return key.argmax(-1)
