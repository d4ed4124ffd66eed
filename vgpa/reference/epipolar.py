"""Pure-PyTorch reference of the epipolar kernels (docs/design.md 3.6): every backend's oracle.

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

Gradient (every backend uses these formulas; g is the upstream gradient of d2, g / (2 d) for d):
with c_r = 2 g r / den and c_d = -g d2 / den,

    dF_ij = c_r x2_i x1_j + 2 c_d ([i < 2] a_i x1_j + [j < 2] b_j x2_i)    (x_2 = 1)
    dx1_k = c_r b_k + 2 c_d (a0 f_0k + a1 f_1k)
    dx2_k = c_r a_k + 2 c_d (b0 f_k0 + b1 f_k1)

A match contributes nothing (zero gradients) when its upstream gradient is 0, when den == 0
(the distance is the constant inf there), and, for d, when d == 0 (as kornia's zero gradient
at an exact match, where the square root's own is infinite). A pair's dF sums its matches.
"""

from __future__ import annotations

import torch
from torch import Tensor


def pair_rows(offsets: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """(rows, owners), both (sum(counts),) int64: the rows of every pair in pair order and the
    pair each belongs to."""
    owners = torch.repeat_interleave(torch.arange(counts.shape[0], device=counts.device), counts)
    first = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    rows = torch.repeat_interleave(offsets, counts) + torch.arange(owners.shape[0], device=counts.device) - first
    return rows, owners


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
    float64: torch's root or its neighbour whose square is nearest to x."""
    if x.dtype != torch.float64:
        return torch.sqrt(x.double()).to(x.dtype)
    root = torch.sqrt(x)
    best, miss = root, _square_minus(root, x).abs()
    for direction in (0.0, torch.inf):
        neighbour = torch.nextafter(root, torch.full_like(root, direction))
        off = _square_minus(neighbour, x).abs()
        best, miss = torch.where(off < miss, neighbour, best), torch.minimum(off, miss)
    return torch.where(torch.isfinite(root) & (x > 0), best, root)


def sampson_distance(fundamental: Tensor, x1: Tensor, x2: Tensor, offsets: Tensor, counts: Tensor,
                     squared: bool) -> Tensor:
    """fundamental (P, 3, 3), x1 and x2 (N, 2) -> (N,) Sampson distances (d2 with ``squared``),
    NaN on rows outside every pair."""
    rows, owners = pair_rows(offsets, counts)
    f = fundamental.reshape(-1, 9)[owners]
    u1, v1, u2, v2 = x1[rows, 0], x1[rows, 1], x2[rows, 0], x2[rows, 1]
    d2 = sampson_squared(*sampson_terms(f, u1, v1, u2, v2)[4:])
    out = torch.full((x1.shape[0],), torch.nan, dtype=x1.dtype, device=x1.device)
    out[rows] = d2 if squared else sqrt_rn(d2)
    return out


def sampson_distance_backward(grad: Tensor, fundamental: Tensor, x1: Tensor, x2: Tensor, offsets: Tensor,
                              counts: Tensor, squared: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (P, 3, 3), (N, 2), (N, 2) of sum(grad * sampson_distance(...)), by the formulas
    of the module docstring."""
    rows, owners = pair_rows(offsets, counts)
    f = fundamental.reshape(-1, 9)[owners]
    u1, v1, u2, v2 = x1[rows, 0], x1[rows, 1], x2[rows, 0], x2[rows, 1]
    a0, a1, b0, b1, r, den = sampson_terms(f, u1, v1, u2, v2)
    d2 = sampson_squared(r, den)
    g = grad[rows]
    if squared:
        active = (g != 0) & (den != 0)
    else:
        d = torch.sqrt(d2)
        active = (g != 0) & (den != 0) & (d != 0)
        g = g / (2 * torch.where(active, d, 1))
    safe_den = torch.where(active, den, 1)
    c_r = 2 * g * r / safe_den
    c_d = -g * torch.where(active, d2, 0) / safe_den
    one = torch.ones_like(u1)
    x1h, x2h, a, b = (u1, v1, one), (u2, v2, one), (a0, a1), (b0, b1)
    grad_f = []
    for i in range(3):
        for j in range(3):
            term = c_r * x2h[i] * x1h[j]
            if i < 2:
                term = term + 2 * c_d * a[i] * x1h[j]
            if j < 2:
                term = term + 2 * c_d * b[j] * x2h[i]
            grad_f.append(term)
    grad_x1 = [c_r * b[k] + 2 * c_d * (a0 * f[:, k] + a1 * f[:, 3 + k]) for k in range(2)]
    grad_x2 = [c_r * a[k] + 2 * c_d * (b0 * f[:, 3 * k] + b1 * f[:, 3 * k + 1]) for k in range(2)]
    zero = torch.zeros((), dtype=x1.dtype, device=x1.device)
    per_match = torch.where(active[:, None], torch.stack(grad_f, 1), zero)
    grad_fundamental = torch.segment_reduce(per_match, "sum", lengths=counts).view(-1, 3, 3)
    out_x1, out_x2 = torch.zeros_like(x1), torch.zeros_like(x2)
    out_x1[rows] = torch.where(active[:, None], torch.stack(grad_x1, 1), zero)
    out_x2[rows] = torch.where(active[:, None], torch.stack(grad_x2, 1), zero)
    return grad_fundamental, out_x1, out_x2


def threshold_squared(threshold: float, dtype: torch.dtype) -> float:
    """threshold^2 formed in double on the host, as ``d2 <= threshold ** 2`` forms it, then
    rounded once to the working dtype (where torch compares a tensor with a Python number)."""
    return torch.tensor(float(threshold) * float(threshold), dtype=torch.float64).to(dtype).item()


def ransac_inlier_count(hypotheses: Tensor, x1: Tensor, x2: Tensor, offsets: Tensor, counts: Tensor,
                        threshold: float) -> Tensor:
    """hypotheses (P, H, 3, 3), x1 and x2 (N, 2) -> (P, H) int64: per pair and hypothesis the
    number of the pair's matches with d2 <= threshold^2 (NaN never is)."""
    pairs, count = hypotheses.shape[:2]
    rows, owners = pair_rows(offsets, counts)
    f = hypotheses.reshape(pairs, count, 9)[owners]  # (K, H, 9)
    u1, v1, u2, v2 = (x[rows, k, None] for x, k in ((x1, 0), (x1, 1), (x2, 0), (x2, 1)))
    d2 = sampson_squared(*sampson_terms(f, u1, v1, u2, v2)[4:])  # (K, H)
    limit = torch.tensor(threshold_squared(threshold, x1.dtype), dtype=x1.dtype, device=x1.device)
    inlier = (d2 <= limit).to(torch.int64)
    return torch.zeros((pairs, count), dtype=torch.int64, device=x1.device).index_add_(0, owners, inlier)
