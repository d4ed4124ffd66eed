"""Fundamental-matrix estimation in plain PyTorch (docs/design.md 3.6): vgpa.fundamental_matrix runs
it on every backend; only its RANSAC scoring (vgpa.ransac_inlier_count) dispatches.

Everything here works on padded batches: points (..., M, 2) with weights (..., M) that are 0 on
padding (and on dropped matches), so one call solves every pair of every video, and every
RANSAC hypothesis, at once. F maps frame i to frame j: x2^T F x1 = 0, pixel coordinates.

- ``eight_point``: weighted Hartley normalisation, the 9x9 normal matrix A^T W A, its
  eigenvector of the smallest eigenvalue, rank 2 by zeroing the smallest singular value, then
  F = T2^T F_n T1, scaled to unit Frobenius norm with its largest-magnitude entry positive.
- ``seven_point``: the up to 3 fundamental matrices of a minimal sample of 7 matches: the 2-D
  null space of its 7x9 system by Gaussian elimination with pivoting (no eigen-decomposition),
  then the real roots of the cubic det(F) = 0 on that pencil in closed form.
- ``ransac_samples``: the 7 distinct match indices of every sample from a counter-based hash of
  (seed, pair, sample, draw) in int64 arithmetic (Floyd's sampling), the same on every device
  and backend.
- ``select_hypothesis``: the most inliers, ties to the lowest hypothesis index, optionally
  stopped early by the standard adaptive-RANSAC rule.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

SAMPLE_SIZE = 8  # matches the 8-point algorithm needs
MINIMAL_SAMPLE = 7  # matches of a RANSAC sample (the 7-point solver)
ROOTS = 3  # at most 3 fundamental matrices per minimal sample

# A system is rank-deficient (its solution not unique up to scale) when the second-smallest
# singular value of the weighted, Hartley-normalised design matrix is at most this fraction of
# the largest one. Above what rounding leaves of an exact degeneracy (matches on one homography
# stored in float32: ~3e-8; in float64: ~1e-16) and below what pixel noise gives (on a 320 x 240
# image, 0.01 px of noise on such matches already gives ~4e-5, 0.1 px ~4e-4): a noisy planar
# scene stays valid, with a poorly determined F.
RANK_TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-7}


def hartley_normalization(points: Tensor, weights: Tensor):
    """Weighted Hartley normalisation of points (..., 2, M) (the u row and the v row) with
    weights (..., M) >= 0 (weights broadcast over the leading dimensions: one set of weights
    serves both frames of a pair).

    Centroid c = sum w x / sum w; s = sqrt(2) / (sum w |x - c| / sum w). Returns the normalised
    points s (x - c), the (..., 3, 3) transform T = [[s, 0, -s c_x], [0, s, -s c_y], [0, 0, 1]]
    and whether the transform exists (a positive total weight and mean distance)."""
    total = weights.sum(-1)
    safe_total = torch.where(total > 0, total, torch.ones_like(total))
    centroid = (points * weights[..., None, :]).sum(-1) / safe_total[..., None]
    centred = points - centroid[..., None]
    u, v = centred.unbind(-2)
    mean_radius = (torch.sqrt(u * u + v * v) * weights).sum(-1) / safe_total
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
    """The design matrix, transposed, of points (..., 2, M) of frame 1 and frame 2: (..., 9, M),
    column m = [u2 u1, u2 v1, u2, v2 u1, v2 v1, v2, u1, v1, 1], whose dot product with vec(F)
    (row-major) is x2^T F x1."""
    u1, v1 = n1.unbind(-2)
    u2, v2 = n2.unbind(-2)
    return torch.stack([u2 * u1, u2 * v1, u2, v2 * u1, v2 * v1, v2, u1, v1, torch.ones_like(u1)], -2)


def canonical_scale(F: Tensor) -> Tensor:
    """F / ||F||_F with the sign that makes its largest-magnitude entry positive (the first one
    in row-major order on ties). (..., 3, 3)."""
    flat = F.flatten(-2)
    flat = flat / flat.norm(dim=-1, keepdim=True)
    largest = flat.gather(-1, flat.abs().argmax(-1, keepdim=True))
    return (flat * torch.where(largest < 0, -1.0, 1.0).to(flat.dtype)).view(F.shape)


def _monomials(points: Tensor) -> Tensor:
    """(..., 2, M) -> (..., 6, M): u^2, u v, v^2, u, v, 1, the distinct products x_i x_k of
    x = (u, v, 1)."""
    u, v = points.unbind(-2)
    out = points.new_empty(points.shape[:-2] + (6, points.shape[-1]))
    torch.mul(u, u, out=out[..., 0, :])
    torch.mul(u, v, out=out[..., 1, :])
    torch.mul(v, v, out=out[..., 2, :])
    out[..., 3:5, :] = points
    out[..., 5, :] = 1.0
    return out


# x_i x_k as an index into ``_monomials``.
_PRODUCT = ((0, 1, 3), (1, 2, 4), (3, 4, 5))
# Entry (3 i + j, 3 k + l) of the normal matrix, sum w x2_i x1_j x2_k x1_l, is entry
# (x2_i x2_k, x1_j x1_l) of the 6x6 moment matrix: its row-major position.
_NORMAL_INDEX = torch.tensor([_PRODUCT[r // 3][c // 3] * 6 + _PRODUCT[r % 3][c % 3] for r in range(9) for c in range(9)])


def normal_matrix(points: Tensor, weights: Tensor) -> Tensor:
    """The normal matrix A^T W A / sum w (..., 9, 9) of the design rows (``design_rows``) of
    both frames' points (..., 2, 2, M) with weights (..., M): row r = 3 i + j of A is
    x2_i x1_j, so its entries are sums of w x2_i x2_k x1_j x1_l, which take only the 36 moments
    sum w m2 m1 of the monomials m of each point (``_monomials``): one batched (6 x M) (M x 6)
    product, deterministic on every device."""
    total = weights.sum(-1)
    safe_total = torch.where(total > 0, total, torch.ones_like(total))
    monomials = _monomials(points)  # (..., 2, 6, M)
    moments = (monomials[..., 1, :, :] * (weights / safe_total[..., None])[..., None, :]) \
        @ monomials[..., 0, :, :].transpose(-1, -2)
    index = _NORMAL_INDEX.to(moments.device)
    return moments.flatten(-2)[..., index].view(moments.shape[:-2] + (9, 9))


def eight_point(points: Tensor, weights: Tensor, rank_tolerance: float):
    """The (weighted) normalised 8-point algorithm on every leading index at once.

    points: both frames' points (..., 2, 2, M) (frame 1, frame 2; the u row, the v row) in
    float64; weights: (..., M)
    float64 >= 0, 0 on padding (points there must be finite). Returns F (..., 3, 3) float64
    (unit Frobenius norm, largest entry positive; NaN where invalid) and valid (...,) bool: at
    least 8 matches of positive weight, a Hartley transform for both point sets, and a
    one-dimensional null space (``RANK_TOLERANCE``)."""
    normalised, transforms, ok = hartley_normalization(points, weights[..., None, :])
    normal = normal_matrix(normalised, weights)
    enough = (weights > 0).sum(-1) >= SAMPLE_SIZE
    ok = ok.all(-1) & enough & torch.isfinite(normal).flatten(-2).all(-1)
    eye = torch.eye(9, dtype=normal.dtype, device=normal.device)
    # eigh of a non-finite matrix may fail to converge: solve a placeholder there.
    values, vectors = torch.linalg.eigh(torch.where(ok[..., None, None], normal, eye))
    ok = ok & (values[..., 1] > rank_tolerance ** 2 * values[..., 8])
    F_normalised = vectors[..., 0].reshape(vectors.shape[:-2] + (3, 3))
    U, S, Vh = torch.linalg.svd(F_normalised)
    S = torch.cat([S[..., :2], torch.zeros_like(S[..., 2:])], -1)
    rank2 = U @ torch.diag_embed(S) @ Vh
    t1, t2 = transforms.unbind(-3)
    F = canonical_scale(t2.transpose(-1, -2) @ rank2 @ t1)
    ok = ok & torch.isfinite(F).flatten(-2).all(-1)
    return torch.where(ok[..., None, None], F, torch.full_like(F, float("nan"))), ok


# --------------------------------------------------------------------------------------------
# The 7-point minimal solver

# A pair of complex roots whose discriminant is within this fraction of its terms' size is a
# double real root that rounding pushed off the real line (the cubic's coefficients carry
# relative errors of a few float64 ulps).
DOUBLE_ROOT_TOLERANCE = 1e-12


def pencil_cubic(A: Tensor, B: Tensor):
    """Coefficients (c3, c2, c1, c0) of det(t A + B) = c3 t^3 + c2 t^2 + c1 t + c0 for 3x3
    matrices stored row-major as (..., 9). With rows a_i, b_i and det[r0; r1; r2] =
    r0 . (r1 x r2), coefficient c_k sums the determinants that take k rows from A."""
    a0, a1, a2 = A[..., 0:3], A[..., 3:6], A[..., 6:9]
    b0, b1, b2 = B[..., 0:3], B[..., 3:6], B[..., 6:9]
    a12 = torch.linalg.cross(a1, a2)
    b12 = torch.linalg.cross(b1, b2)
    mixed = torch.linalg.cross(a1, b2) + torch.linalg.cross(b1, a2)
    c3 = (a0 * a12).sum(-1)
    c2 = (b0 * a12).sum(-1) + (a0 * mixed).sum(-1)
    c1 = (a0 * b12).sum(-1) + (b0 * mixed).sum(-1)
    c0 = (b0 * b12).sum(-1)
    return c3, c2, c1, c0


def cubic_real_roots(c3: Tensor, c2: Tensor, c1: Tensor, c0: Tensor):
    """The real roots of c3 t^3 + c2 t^2 + c1 t + c0 (c3 != 0, not small against the others:
    the caller's choice of basis ensures it), in closed form on every element at once.

    Returns roots (..., 3) and real (..., 3) bool. With t = x - b/3 the monic cubic becomes
    x^3 + p x + q; D = (q/2)^2 + (p/3)^3. D <= DOUBLE_ROOT_TOLERANCE ((q/2)^2 + |p/3|^3):
    three real roots x_k = 2 r cos(phi/3 - 2 pi k/3), r = sqrt(-p/3), cos(phi) = -q / (2 r^3)
    clamped to [-1, 1] (a double root is returned twice, a triple root three times). Otherwise
    one real root x = u - p / (3 u), u = cbrt(-q/2 - sign(q) sqrt(D)) (no cancellation), and
    the other two are not real. Each root then takes two Newton steps on the monic cubic, a step
    kept only where it lowers |residual| (so a double root, where the derivative vanishes,
    cannot be thrown off)."""
    b, c, d = c2 / c3, c1 / c3, c0 / c3
    third_p = (c - b * b / 3) / 3
    half_q = ((2 * b * b * b / 27 - b * c / 3) + d) / 2
    cube = third_p * third_p * third_p
    disc = half_q * half_q + cube
    three = disc <= DOUBLE_ROOT_TOLERANCE * (half_q * half_q + cube.abs())
    r = torch.sqrt((-third_p).clamp_min(0))
    r3 = r * r * r
    cos_phi = torch.where(r3 > 0, -half_q / torch.where(r3 > 0, r3, 1.0), 0.0).clamp(-1.0, 1.0)
    angles = torch.arange(3, dtype=b.dtype, device=b.device) * (2 * math.pi / 3)
    trig = 2 * r[..., None] * torch.cos(torch.acos(cos_phi)[..., None] / 3 - angles)
    w = -half_q - torch.copysign(torch.sqrt(disc.clamp_min(0)), half_q)
    u = torch.copysign(w.abs().pow(1.0 / 3.0), w)
    single = u - torch.where(u != 0, third_p / torch.where(u != 0, u, 1.0), 0.0)
    nan = torch.full_like(single, float("nan"))
    x = torch.where(three[..., None], trig, torch.stack([single, nan, nan], -1))
    t = x - (b / 3)[..., None]
    b, c, d = b[..., None], c[..., None], d[..., None]
    for _ in range(2):
        value = ((t + b) * t + c) * t + d
        step = value / ((3 * t + 2 * b) * t + c)
        moved = t - step
        better = torch.isfinite(moved) & ((((moved + b) * moved + c) * moved + d).abs() < value.abs())
        t = torch.where(better, moved, t)
    return t, torch.isfinite(t)


def _pivot_permutation(pivots: Tensor, size: int) -> Tensor:
    """LAPACK's row interchanges (n, k) (1-based: row i swapped with row pivots[i], in order) as
    the permutation (n, size): row i of the factors is row perm[i] of the factored matrix."""
    perm = torch.arange(size, device=pivots.device).repeat(pivots.shape[0], 1)
    for i in range(pivots.shape[1]):
        j = pivots[:, i:i + 1].long() - 1
        here = perm[:, i:i + 1].clone()
        perm[:, i:i + 1] = perm.gather(1, j)
        perm.scatter_(1, j, here)
    return perm


def null_space_7x9(system: Tensor, rank_tolerance: float):
    """An orthonormal basis (n, 9, 2) of the null space of each 7x9 matrix A (given as A^T,
    (n, 9, 7)) and whether A has rank 7.

    Gaussian elimination with partial pivoting on A^T (LU, one LAPACK call per matrix) is
    elimination on A with column pivoting: A^T[perm] = L U, L unit lower trapezoidal 9x7, U
    upper triangular 7x7, so A[:, perm] = U^T L^T and, with U invertible, A f = 0 exactly when
    g = f[perm] solves L^T g = 0. L^T is unit upper trapezoidal: back substitution from
    g[7:9] = e_1 and e_2 gives two independent solutions. A has rank 7 when the smallest pivot
    |U_kk| is above ``rank_tolerance`` times the largest (a repeated match, collinear points
    or points on one homography leave a zero pivot up to rounding); NaN input is rank-deficient.
    The two vectors are then orthonormalised (Gram-Schmidt: their g parts e_1, e_2 keep them
    well apart)."""
    n = system.shape[0]
    lu, pivots, _ = torch.linalg.lu_factor_ex(system)
    pivot_size = lu.diagonal(dim1=-2, dim2=-1).abs()
    full_rank = pivot_size.amin(-1) > rank_tolerance * pivot_size.amax(-1)
    g = system.new_zeros(n, 9, 2)
    g[:, 7, 0] = 1.0
    g[:, 8, 1] = 1.0
    for i in range(6, -1, -1):
        g[:, i] = -(lu[:, i + 1:, i, None] * g[:, i + 1:]).sum(1)
    perm = _pivot_permutation(pivots, 9)
    null = torch.zeros_like(g).scatter_(1, perm[..., None].expand(-1, -1, 2), g)
    first = null[..., 0] / null[..., 0].norm(dim=-1, keepdim=True)
    second = null[..., 1] - (first * null[..., 1]).sum(-1, keepdim=True) * first
    second = second / second.norm(dim=-1, keepdim=True)
    return torch.stack([first, second], -1), full_rank


def seven_point(x1: Tensor, x2: Tensor, rank_tolerance: float):
    """The fundamental matrices of minimal samples of 7 matches, every leading index at once.

    x1, x2: (..., 2, 7) float64, the u row and the v row (normalised coordinates: the solutions
    transform with the points, so one Hartley normalisation per pair serves all its samples). Returns F
    (..., 3, 3, 3): up to 3 unit-Frobenius-norm solutions of x2^T F x1 = 0 with det F = 0 per
    sample, NaN where absent, and valid (..., 3) bool.

    1. The 7x9 system's null space (``null_space_7x9``): an orthonormal pair Q1, Q2, or no
       solution when the sample is degenerate (rank below 7).
    2. det(y1 Q1 + y2 Q2) is a cubic form on the pencil. Of the four directions
       y = (cos a, sin a), a = 0, pi/4, pi/2, 3pi/4, the one with the largest |det| becomes V
       and its perpendicular W: a cubic form vanishes on at most 3 directions, so det(t V + W)
       has a leading coefficient det(V) bounded away from 0 against the others (no root at
       infinity, whatever F1 = Q1, F2 = Q2 are) and its coefficients come in closed form
       (``pencil_cubic``). Where every direction gives |det| <= ``rank_tolerance``, det vanishes
       on the whole pencil (no isolated solution): no hypothesis.
    3. Each real root t (``cubic_real_roots``: 1 or 3, a double root twice) gives
       F = (t V + W) / sqrt(t^2 + 1)."""
    batch = x1.shape[:-2]
    system = design_rows(x1, x2).reshape(-1, 9, 7)
    basis, full_rank = null_space_7x9(system, rank_tolerance)
    q1, q2 = basis.unbind(-1)
    k3, k2, k1, k0 = pencil_cubic(q1, q2)  # det(y1 Q1 + y2 Q2) = k3 y1^3 + k2 y1^2 y2 + k1 y1 y2^2 + k0 y2^3
    angles = torch.arange(4, dtype=x1.dtype, device=x1.device) * (math.pi / 4)
    cos, sin = torch.cos(angles), torch.sin(angles)
    form = ((k3[:, None] * cos + k2[:, None] * sin) * cos + k1[:, None] * sin * sin) * cos \
        + k0[:, None] * sin * sin * sin
    largest, pick = form.abs().max(-1)
    cos, sin = cos[pick][:, None], sin[pick][:, None]
    lead = cos * q1 + sin * q2
    rest = cos * q2 - sin * q1
    roots, real = cubic_real_roots(*pencil_cubic(lead, rest))
    F = (roots[..., None] * lead[:, None] + rest[:, None]) / torch.sqrt(roots * roots + 1)[..., None]
    valid = real & (full_rank & (largest > rank_tolerance))[:, None] & torch.isfinite(F).all(-1)
    F = torch.where(valid[..., None], F, float("nan"))
    return F.view(batch + (ROOTS, 3, 3)), valid.view(batch + (ROOTS,))


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


def ransac_samples(counts: Tensor, iterations: int, seed: int, first: int = 0, pair_index=None) -> Tensor:
    """(P, iterations, 7) int64: 7 distinct indices in [0, counts[p]) for samples h = first, ...,
    first + iterations - 1 of pair p. ``pair_index`` (P,) int64 names the pairs whose counts are
    given (default 0, ..., P - 1): sample h of a pair is the same whatever range and whatever
    other pairs it is drawn with.

    Floyd's algorithm: for j = n - 7, ..., n - 1 draw t uniform in [0, j] and take t, or j when
    t was taken already; this gives 7 distinct indices without rejection. t = (r >> 1) mod
    (j + 1) with r = mix64(mix64(mix64(mix64(seed) + p) + h) + k), k the draw. Pairs with fewer
    than 7 matches get indices in [0, 7) (their samples are invalid anyway)."""
    pairs = counts.shape[0]
    device = counts.device
    n = counts.clamp_min(MINIMAL_SAMPLE)[:, None]
    key = mix64(torch.full((pairs, 1), seed, dtype=torch.int64, device=device))
    if pair_index is None:
        pair_index = torch.arange(pairs, dtype=torch.int64, device=device)
    key = mix64(key + pair_index[:, None])
    key = mix64(key + torch.arange(first, first + iterations, dtype=torch.int64, device=device)[None, :])
    chosen = []
    for draw in range(MINIMAL_SAMPLE):
        j = n - MINIMAL_SAMPLE + draw
        t = _shift_right(mix64(key + draw), 1) % (j + 1)
        if chosen:
            taken = (torch.stack(chosen, -1) == t[..., None]).any(-1)
            t = torch.where(taken, j.expand_as(t), t)
        chosen.append(t)
    return torch.stack(chosen, -1)


def adaptive_stop(inlier_counts: Tensor, counts: Tensor, confidence: float) -> Tensor:
    """Where sequential adaptive RANSAC stops, from the inlier counts (P, S, 3) of the up to 3
    hypotheses of each of S samples (0 for an absent one): (P,) the first sample s after which
    s + 1 >= N, N = ceil(log(1 - confidence) / log(1 - (c / n)^7)) the number of samples that
    draw an all-inlier sample with that confidence, c the best count so far and n the pair's
    matches; S where no s < S qualifies (always for confidence = 1). The stop depends on the
    samples up to it only, so a prefix of the samples decides it whenever it stops inside."""
    pairs, samples, _ = inlier_counts.shape
    if confidence >= 1.0:
        return torch.full((pairs,), samples, dtype=torch.int64, device=inlier_counts.device)
    index = torch.arange(samples, device=inlier_counts.device)
    best_so_far = inlier_counts.amax(-1).cummax(-1).values.double()
    ratio = best_so_far / counts.clamp_min(1)[:, None].double()
    miss = 1.0 - ratio.clamp(0.0, 1.0) ** MINIMAL_SAMPLE
    # miss = 1 (no inlier yet): never enough samples; miss = 0 (all inliers): one is enough.
    needed = torch.where(miss < 1, torch.ceil(math.log1p(-confidence) / torch.log(miss)),
                         torch.full_like(miss, math.inf))
    done = (index[None, :] + 1) >= needed
    return torch.where(done, index[None, :], samples).amin(-1)


def select_hypothesis(inlier_counts: Tensor, counts: Tensor, confidence: float) -> Tensor:
    """Index (P,) of the chosen hypothesis of each pair from the inlier counts (P, S, 3) of the
    up to 3 hypotheses of each of its S samples (0 for an absent one), as a flat index s * 3 + r:
    the most inliers among the hypotheses of the samples up to ``adaptive_stop`` (all of them
    for confidence = 1), the lowest flat index on ties."""
    pairs, samples, roots = inlier_counts.shape
    stop = adaptive_stop(inlier_counts, counts, confidence)
    total = samples * roots
    position = torch.arange(total, device=inlier_counts.device)
    drawn = position[None, :] // roots <= stop[:, None]
    # Most inliers first, then the lowest index: one integer key, its maximum is unique.
    flat = inlier_counts.reshape(pairs, total).long()
    key = torch.where(drawn, flat * total + (total - 1 - position), -1)
    return key.argmax(-1)
