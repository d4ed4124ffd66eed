"""Pure-PyTorch reference of the epipolar kernels (docs/design.md 3.6): every backend's oracle, and
the "torch" backend of vgpa.sampson_distance and vgpa.ransac_inlier_count.

Matches are flat: ``x1`` and ``x2`` (N, 2) pixel coordinates (u, v) and per frame pair
``offsets`` (P,) and ``counts`` (P,) int64; pair p owns rows ``offsets[p] : offsets[p] +
counts[p]``. A packed layout has ``offsets = cumsum(counts) - counts``; a padded (P, M, 2)
layout viewed as (P * M, 2) has ``offsets[p] = p * M``. Rows outside every pair (padding) are
never read: their distance is NaN and their gradient 0.

F (row-major f0..f8) maps frame-1 points to frame-2 epipolar lines, x2^T F x1 = 0. With
x1 = (u1, v1, 1) and x2 = (u2, v2, 1), the squared Sampson distance is evaluated as

    a0 = (f0 u1 + f1 v1) + f2     a1 = (f3 u1 + f4 v1) + f5     a2 = (f6 u1 + f7 v1) + f8
    b0 = (f0 u2 + f3 v2) + f6     b1 = (f1 u2 + f4 v2) + f7          (a = F x1, b = F^T x2)
    r  = (u2 a0 + v2 a1) + a2                                         (x2^T F x1)
    den = ((a0 a0 + a1 a1) + b0 b0) + b1 b1
    d2 = (r r) / den, and inf where den == 0 (as kornia's sampson_epipolar_distance: no eps)

with one rounding per operation in exactly this order (no fused multiply-add) in the working
dtype: float32, or float64 for float64 input. Every backend evaluates the same expression in
the same order, so distances, and the inlier decisions d2 <= threshold^2 made from them, agree
bitwise. The distance is d = sqrt(d2), correctly rounded (``sqrt_rn``).

Gradient. The "torch" backend differentiates the expression above with autograd; the kernels'
analytic backward is its derivative written out (g is the upstream gradient of d2, g / (2 d)
for d): with c_r = 2 g r / den and c_d = -g d2 / den,

    dF_ij = c_r x2_i x1_j + 2 c_d ([i < 2] a_i x1_j + [j < 2] b_j x2_i)    (x_2 = 1)
    dx1_k = c_r b_k + 2 c_d (a0 f_0k + a1 f_1k)
    dx2_k = c_r a_k + 2 c_d (b0 f_k0 + b1 f_k1)

A match contributes nothing (zero gradients) when its upstream gradient is 0, when den == 0
(the distance is the constant inf there), and, for d, when d == 0 (as kornia's zero gradient
at an exact match, where the square root's own is infinite). A pair's dF sums its matches.
In the "torch" backend a match with a NaN or inf coordinate or F entry (distance NaN) gets a
zero gradient too, whatever its upstream gradient; the kernels give NaN there unless the
upstream gradient is 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..torch_math.epipolar import threshold_squared
from ..torch_math.segments import row_owners


def sampson_terms(f: Tensor, u1: Tensor, v1: Tensor, u2: Tensor, v2: Tensor):
    """(a0, a1, b0, b1, r, den) of the module docstring; f (..., 9) broadcast against the points."""
    f0, f1, f2, f3, f4, f5, f6, f7, f8 = f.unbind(-1)
    a0 = (f0 * u1 + f1 * v1) + f2
    a1 = (f3 * u1 + f4 * v1) + f5
    a2 = (f6 * u1 + f7 * v1) + f8
    b0 = (f0 * u2 + f3 * v2) + f6
    b1 = (f1 * u2 + f4 * v2) + f7
    r = (u2 * a0 + v2 * a1) + a2
    den = ((a0 * a0 + a1 * a1) + b0 * b0) + b1 * b1
    return a0, a1, b0, b1, r, den


def sampson_squared(r: Tensor, den: Tensor) -> Tensor:
    """d2 = r r / den, inf where den == 0."""
    return torch.where(den == 0, torch.inf, (r * r) / torch.where(den == 0, 1, den))


def _square_minus(c: Tensor, x: Tensor) -> Tensor:
    """c c - x with the product's rounding error added back (Dekker's exact product, no FMA)."""
    p = c * c
    split = c * 134217729.0  # 2^27 + 1: c = high + low, each with at most 26 significant bits
    high = split - (split - c)
    low = c - high
    error = ((high * high - p) + 2 * high * low) + low * low  # c c = p + error exactly
    return (p - x) + error


def sqrt_rn(x: Tensor) -> Tensor:
    """The correctly rounded square root, as the kernels' IEEE sqrt. torch's vectorised CPU sqrt
    is accurate to about half an ulp but not correctly rounded. float32: the float64 root rounded
    once (a float32 root is never close enough to a midpoint for the float64 error to matter);
    float64: torch's root or its neighbour whose square is nearest to x. Differentiable: the
    choice of neighbour is a constant to autograd."""
    if x.dtype != torch.float64:
        return torch.sqrt(x.double()).to(x.dtype)
    root = torch.sqrt(x)
    with torch.no_grad():
        best, miss = root, _square_minus(root, x).abs()
        for direction in (0.0, torch.inf):
            neighbour = torch.nextafter(root, torch.full_like(root, direction))
            off = _square_minus(neighbour, x).abs()
            best, miss = torch.where(off < miss, neighbour, best), torch.minimum(off, miss)
        adjust = torch.isfinite(root) & (x > 0)
        step = torch.where(adjust, best - root, 0)  # exact: best and root are equal or neighbours
    return torch.where(adjust, root + step, root)


def sampson_distance(fundamental: Tensor, x1: Tensor, x2: Tensor, offsets: Tensor, counts: Tensor,
                     squared: bool) -> Tensor:
    """fundamental (P, 3, 3), x1 and x2 (N, 2) -> (N,) Sampson distances (d2 with ``squared``),
    NaN on rows outside every pair. Differentiable with respect to fundamental, x1 and x2."""
    owner, _, inside = row_owners(offsets, counts, x1.shape[0])
    f = fundamental.reshape(-1, 9)[owner]
    # Rows that are padding or hold a non-finite input are NaN; they are evaluated on zeros, so
    # that no NaN reaches the gradient of the others (through dF) or their own.
    usable = inside & torch.isfinite(f).all(1) & torch.isfinite(x1).all(1) & torch.isfinite(x2).all(1)
    f = torch.where(usable[:, None], f, 0)
    a, b = torch.where(usable[:, None], x1, 0), torch.where(usable[:, None], x2, 0)
    d2 = sampson_squared(*sampson_terms(f, a[:, 0], a[:, 1], b[:, 0], b[:, 1])[4:])
    if not squared:
        # d == 0 has the zero gradient of the formulas above, not the square root's infinite one.
        zero = d2 == 0
        d2 = torch.where(zero, 0, sqrt_rn(torch.where(zero, 1, d2)))
    return torch.where(usable, d2, torch.nan)


def ransac_inlier_count(hypotheses: Tensor, x1: Tensor, x2: Tensor, offsets: Tensor, counts: Tensor,
                        threshold: float) -> Tensor:
    """hypotheses (P, H, 3, 3), x1 and x2 (N, 2) -> (P, H) int64: per pair and hypothesis the
    number of the pair's matches with d2 <= threshold^2 (NaN never is)."""
    pairs, count = hypotheses.shape[:2]
    owner, _, inside = row_owners(offsets, counts, x1.shape[0])
    f = hypotheses.reshape(pairs, count, 9)[owner]  # (N, H, 9)
    u1, v1, u2, v2 = (x[:, k, None] for x, k in ((x1, 0), (x1, 1), (x2, 0), (x2, 1)))
    d2 = sampson_squared(*sampson_terms(f, u1, v1, u2, v2)[4:])  # (N, H)
    limit = torch.tensor(threshold_squared(threshold, x1.dtype), dtype=x1.dtype, device=x1.device)
    inlier = ((d2 <= limit) & inside[:, None]).to(torch.int64)
    return torch.zeros((pairs, count), dtype=torch.int64, device=x1.device).index_add_(0, owner, inlier)
