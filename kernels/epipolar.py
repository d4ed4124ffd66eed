"""Triton kernels of the epipolar ops (docs/design.md 3.6): the Sampson distance of every match of
every frame pair, its gradient, and the RANSAC inlier count of every hypothesis of every pair.

Matches are flat rows (N, 2) with per-pair ``offsets`` and ``counts`` (vgpa/reference/epipolar.py);
every pair is handled in one launch, its programs folded into grid axis x. The Sampson
expression is evaluated in the reference's order, rounded operation by operation (launched
with EXACT_ARITHMETIC, divisions through ``div_rn``), so distances and inlier decisions agree
bitwise with the other backends. The backward reduces each pair's dF into fixed-chunk partials
(no atomics): deterministic.
"""

import triton
import triton.language as tl

from ._common import EXACT_ARITHMETIC, accumulation_type, launch
from .geometry import div_rn, scalar_as, sqrt_rn

MATCH_BLOCK = 256      # matches per program of the Sampson kernels
HYPOTHESIS_TILE = 16   # hypotheses per inlier-count program, their F's in registers
COUNT_BLOCK = 32       # matches per step of an inlier-count program (16 x 32: 4 per thread, no spill in float64)


@triton.jit
def _load_f(f_ptr, mask):
    """The 9 entries of F (row-major) at f_ptr (a scalar pointer or a block of them)."""
    f0 = tl.load(f_ptr + 0, mask=mask, other=0.0)
    f1 = tl.load(f_ptr + 1, mask=mask, other=0.0)
    f2 = tl.load(f_ptr + 2, mask=mask, other=0.0)
    f3 = tl.load(f_ptr + 3, mask=mask, other=0.0)
    f4 = tl.load(f_ptr + 4, mask=mask, other=0.0)
    f5 = tl.load(f_ptr + 5, mask=mask, other=0.0)
    f6 = tl.load(f_ptr + 6, mask=mask, other=0.0)
    f7 = tl.load(f_ptr + 7, mask=mask, other=0.0)
    f8 = tl.load(f_ptr + 8, mask=mask, other=0.0)
    return f0, f1, f2, f3, f4, f5, f6, f7, f8


@triton.jit
def _sampson_terms(f0, f1, f2, f3, f4, f5, f6, f7, f8, u1, v1, u2, v2):
    """(a0, a1, b0, b1, r, den): a = F x1, b = F^T x2, r = x2^T F x1, den = |a_12|^2 + |b_12|^2."""
    a0 = (f0 * u1 + f1 * v1) + f2
    a1 = (f3 * u1 + f4 * v1) + f5
    a2 = (f6 * u1 + f7 * v1) + f8
    b0 = (f0 * u2 + f3 * v2) + f6
    b1 = (f1 * u2 + f4 * v2) + f7
    r = (u2 * a0 + v2 * a1) + a2
    den = ((a0 * a0 + a1 * a1) + b0 * b0) + b1 * b1
    return a0, a1, b0, b1, r, den


@triton.jit
def _sampson_squared(r, den):
    """r r / den, inf where den == 0."""
    singular = den == 0
    return tl.where(singular, float("inf"), div_rn(r * r, tl.where(singular, 1.0, den)))


@triton.jit
def _load_matches(x1_ptr, x2_ptr, m, mask):
    u1 = tl.load(x1_ptr + 2 * m, mask=mask, other=0.0)
    v1 = tl.load(x1_ptr + 2 * m + 1, mask=mask, other=0.0)
    u2 = tl.load(x2_ptr + 2 * m, mask=mask, other=0.0)
    v2 = tl.load(x2_ptr + 2 * m + 1, mask=mask, other=0.0)
    return u1, v1, u2, v2


@triton.jit
def sampson_distance_forward_kernel(f_ptr, x1_ptr, x2_ptr, offsets_ptr, counts_ptr, out_ptr, blocks, squared,
                                    BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    p = pid // blocks  # pair p, its block of matches
    i = (pid - p * blocks) * BLOCK + tl.arange(0, BLOCK)
    inside = i < tl.load(counts_ptr + p)
    m = tl.load(offsets_ptr + p) + i
    f0, f1, f2, f3, f4, f5, f6, f7, f8 = _load_f(f_ptr + p * 9, True)
    u1, v1, u2, v2 = _load_matches(x1_ptr, x2_ptr, m, inside)
    _, _, _, _, r, den = _sampson_terms(f0, f1, f2, f3, f4, f5, f6, f7, f8, u1, v1, u2, v2)
    d2 = _sampson_squared(r, den)
    tl.store(out_ptr + m, tl.where(squared, d2, sqrt_rn(d2)), mask=inside)


@triton.jit
def sampson_distance_backward_kernel(f_ptr, x1_ptr, x2_ptr, offsets_ptr, counts_ptr, grad_ptr, partials_ptr,
                                     gx1_ptr, gx2_ptr, chunks, squared, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    p = pid // chunks  # pair p, its chunk of matches
    chunk = pid - p * chunks
    count = tl.load(counts_ptr + p)
    offset = tl.load(offsets_ptr + p)
    f0, f1, f2, f3, f4, f5, f6, f7, f8 = _load_f(f_ptr + p * 9, True)
    zero = tl.zeros([BLOCK], dtype=f0.dtype)
    g00, g01, g02, g10, g11, g12, g20, g21, g22 = zero, zero, zero, zero, zero, zero, zero, zero, zero
    for start in range(0, tl.minimum(count - chunk * CHUNK, CHUNK), BLOCK):  # the chunk's matches only
        i = chunk * CHUNK + start + tl.arange(0, BLOCK)
        inside = i < count
        m = offset + i
        u1, v1, u2, v2 = _load_matches(x1_ptr, x2_ptr, m, inside)
        g = tl.load(grad_ptr + m, mask=inside, other=0.0)
        a0, a1, b0, b1, r, den = _sampson_terms(f0, f1, f2, f3, f4, f5, f6, f7, f8, u1, v1, u2, v2)
        d2 = _sampson_squared(r, den)
        d = sqrt_rn(d2)
        # No contribution: padding, a zero upstream gradient, den == 0 (d2 is the constant inf)
        # and, for the distance, d == 0 (see vgpa/reference/epipolar.py).
        active = inside & (g != 0) & (den != 0) & (squared | (d != 0))
        g = tl.where(squared, g, div_rn(g, 2.0 * tl.where(active, d, 1.0)))
        # Inactive lanes may hold NaN or inf (a zero upstream gradient on a NaN match): zeroed, so
        # that 0 * NaN does not reach the sums.
        a0, a1, b0, b1 = tl.where(active, a0, 0.0), tl.where(active, a1, 0.0), tl.where(active, b0, 0.0), \
            tl.where(active, b1, 0.0)
        u1, v1, u2, v2 = tl.where(active, u1, 0.0), tl.where(active, v1, 0.0), tl.where(active, u2, 0.0), \
            tl.where(active, v2, 0.0)
        safe_den = tl.where(active, den, 1.0)
        c_r = tl.where(active, div_rn(2.0 * g * r, safe_den), 0.0)
        c_d2 = tl.where(active, 2.0 * div_rn(-g * tl.where(active, d2, 0.0), safe_den), 0.0)  # 2 c_d
        g00 += c_r * u2 * u1 + c_d2 * a0 * u1 + c_d2 * b0 * u2
        g01 += c_r * u2 * v1 + c_d2 * a0 * v1 + c_d2 * b1 * u2
        g02 += c_r * u2 + c_d2 * a0
        g10 += c_r * v2 * u1 + c_d2 * a1 * u1 + c_d2 * b0 * v2
        g11 += c_r * v2 * v1 + c_d2 * a1 * v1 + c_d2 * b1 * v2
        g12 += c_r * v2 + c_d2 * a1
        g20 += c_r * u1 + c_d2 * b0
        g21 += c_r * v1 + c_d2 * b1
        g22 += c_r
        tl.store(gx1_ptr + 2 * m, c_r * b0 + c_d2 * (a0 * f0 + a1 * f3), mask=active)
        tl.store(gx1_ptr + 2 * m + 1, c_r * b1 + c_d2 * (a0 * f1 + a1 * f4), mask=active)
        tl.store(gx2_ptr + 2 * m, c_r * a0 + c_d2 * (b0 * f0 + b1 * f1), mask=active)
        tl.store(gx2_ptr + 2 * m + 1, c_r * a1 + c_d2 * (b0 * f3 + b1 * f4), mask=active)
    out = partials_ptr + pid * 9
    tl.store(out + 0, tl.sum(g00, 0))
    tl.store(out + 1, tl.sum(g01, 0))
    tl.store(out + 2, tl.sum(g02, 0))
    tl.store(out + 3, tl.sum(g10, 0))
    tl.store(out + 4, tl.sum(g11, 0))
    tl.store(out + 5, tl.sum(g12, 0))
    tl.store(out + 6, tl.sum(g20, 0))
    tl.store(out + 7, tl.sum(g21, 0))
    tl.store(out + 8, tl.sum(g22, 0))


@triton.jit
def ransac_inlier_count_kernel(f_ptr, x1_ptr, x2_ptr, offsets_ptr, counts_ptr, inliers_ptr, H, tiles,
                               limit: tl.float64, ACC: tl.constexpr, TILE: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    p = pid // tiles  # pair p, its tile of hypotheses
    h = (pid - p * tiles) * TILE + tl.arange(0, TILE)
    has = h < H
    f0, f1, f2, f3, f4, f5, f6, f7, f8 = _load_f(f_ptr + (p * H + h) * 9, has)
    f0, f1, f2, f3, f4, f5 = f0[:, None], f1[:, None], f2[:, None], f3[:, None], f4[:, None], f5[:, None]
    f6, f7, f8 = f6[:, None], f7[:, None], f8[:, None]
    limit = scalar_as(limit, ACC)
    count = tl.load(counts_ptr + p)
    offset = tl.load(offsets_ptr + p)
    found = tl.zeros([TILE], dtype=tl.int64)
    for start in range(0, count, BLOCK):
        i = start + tl.arange(0, BLOCK)
        inside = i < count
        u1, v1, u2, v2 = _load_matches(x1_ptr, x2_ptr, offset + i, inside)
        _, _, _, _, r, den = _sampson_terms(f0, f1, f2, f3, f4, f5, f6, f7, f8, u1[None, :], v1[None, :],
                                            u2[None, :], v2[None, :])
        inlier = (_sampson_squared(r, den) <= limit) & inside[None, :]
        found += tl.sum(inlier.to(tl.int32), 1).to(tl.int64)
    tl.store(inliers_ptr + p * H + h, found, mask=has)


def sampson_distance_forward(fundamental, x1, x2, offsets, counts, out, max_count, squared):
    """Writes out[m] for every row m of every pair: d2 (``squared``) or d."""
    pairs = counts.shape[0]
    blocks = triton.cdiv(max_count, MATCH_BLOCK)
    if pairs * blocks == 0:
        return
    launch(sampson_distance_forward_kernel, (pairs * blocks,), fundamental, x1, x2, offsets, counts, out, blocks,
           squared, BLOCK=MATCH_BLOCK, **EXACT_ARITHMETIC)


def sampson_distance_backward(fundamental, x1, x2, offsets, counts, grad, partials, grad_x1, grad_x2, chunk,
                              squared):
    """Writes grad_x1 and grad_x2 (zero-filled) on the pairs' rows and each (pair, chunk)'s dF
    into partials (P, chunks, 9)."""
    pairs, chunks = partials.shape[:2]
    if pairs * chunks == 0:
        return
    launch(sampson_distance_backward_kernel, (pairs * chunks,), fundamental, x1, x2, offsets, counts, grad, partials,
           grad_x1, grad_x2, chunks, squared, CHUNK=chunk, BLOCK=min(MATCH_BLOCK, chunk), **EXACT_ARITHMETIC)


def ransac_inlier_count(hypotheses, x1, x2, offsets, counts, inliers, limit):
    """inliers (P, H) int64: matches of each pair with d2 <= limit under each hypothesis."""
    pairs, count = inliers.shape
    tiles = triton.cdiv(count, HYPOTHESIS_TILE)
    if pairs * tiles == 0:
        return
    launch(ransac_inlier_count_kernel, (pairs * tiles,), hypotheses, x1, x2, offsets, counts, inliers, count, tiles,
           limit, ACC=accumulation_type(x1.dtype), TILE=HYPOTHESIS_TILE, BLOCK=COUNT_BLOCK, **EXACT_ARITHMETIC)
