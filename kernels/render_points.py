"""Triton kernels of the point-cloud re-render with an exact z-buffer (docs/design.md 3.3).

Pass 1 offers every landed point's key = (float32 bits of z) << 32 | index to its pixel with an
int64 atomic minimum (order-independent, so exact). Pass 2 decodes the keys into colour, depth
and coverage, or, fused, into fixed-chunk partial sums of the squared error against the real
frames (no float atomics: the sums do not depend on scheduling).

The projection must round exactly like the reference: the kernels are launched with
EXACT_ARITHMETIC (no FMA, no flush-to-zero) and divide with ``div_rn`` (IEEE, not the
approximate float32 division). Ties of rint go to even, written with floor so that the interpreter runs it.
Every batch axis is folded into grid axis x (axis y caps at 65535 programs).
"""

import triton
import triton.language as tl

from ._common import EXACT_ARITHMETIC, accumulation_type, launch
from .geometry import div_rn

EMPTY_KEY = tl.constexpr(2**63 - 1)  # no point landed; every real key is smaller
POINT_BLOCK = 1024
PIXEL_BLOCK = 1024


@triton.jit
def _row_dot(rows_ptr, x, y, z):
    """((r0 x + r1 y) + r2 z) + r3 with the row at rows_ptr."""
    r0 = tl.load(rows_ptr)
    r1 = tl.load(rows_ptr + 1)
    r2 = tl.load(rows_ptr + 2)
    r3 = tl.load(rows_ptr + 3)
    return ((r0 * x + r1 * y) + r2 * z) + r3


@triton.jit
def _round_half_even(v):
    """rint. Exact for |v| < 2^22 (v + 0.5 is exact); beyond, the result stays far outside any
    image, which is all the landing test needs."""
    r = tl.floor(v + 0.5)
    odd = (r - 2.0 * tl.floor(r * 0.5)) == 1.0
    return tl.where((r - v == 0.5) & odd, r - 1.0, r)


@triton.jit
def _is_finite(v):
    return (v - v) == 0.0  # inf - inf and NaN - NaN are NaN


@triton.jit
def _point_index(key):
    """The low 32 bits of a (non-negative) key, in int64 arithmetic only."""
    return key - ((key >> 32) << 32)


@triton.jit
def render_points_zbuffer_kernel(points_ptr, offsets_ptr, counts_ptr, rows_ptr, keys_ptr, T, H, W, HW, blocks,
                                 BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    b = pid // blocks  # video b, its block of points
    block = pid - b * blocks
    start = tl.load(offsets_ptr + b)
    count = tl.load(counts_ptr + b)
    index = block.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    in_cloud = index < count
    p = points_ptr + (start + index) * 3
    x = tl.load(p, mask=in_cloud, other=0.0)
    y = tl.load(p + 1, mask=in_cloud, other=0.0)
    z = tl.load(p + 2, mask=in_cloud, other=0.0)
    valid = in_cloud & _is_finite(x) & _is_finite(y) & _is_finite(z)
    # Ignored points become the origin, so no lane computes with inf or NaN.
    x = tl.where(valid, x, 0.0)
    y = tl.where(valid, y, 0.0)
    z = tl.where(valid, z, 0.0)
    for t in range(T):
        rows = rows_ptr + (b * T + t) * 12
        depth = _row_dot(rows + 8, x, y, z)
        in_front = valid & (depth > 0) & _is_finite(depth)
        divisor = tl.where(in_front, depth, 1.0)  # same value wherever the point can land
        u = _round_half_even(div_rn(_row_dot(rows, x, y, z), divisor))
        v = _round_half_even(div_rn(_row_dot(rows + 4, x, y, z), divisor))
        lands = in_front & (u >= 0) & (u < W) & (v >= 0) & (v < H)
        pixel = tl.where(lands, v, 0.0).to(tl.int64) * W + tl.where(lands, u, 0.0).to(tl.int64)
        bits = tl.where(lands, depth, 1.0).to(tl.float32).to(tl.int32, bitcast=True).to(tl.int64)
        key = (bits << 32) | index
        tl.atomic_min(keys_ptr + (b * T + t) * HW + pixel, key, mask=lands, sem="relaxed")


@triton.jit
def render_points_resolve_kernel(keys_ptr, points_ptr, colors_ptr, offsets_ptr, rows_ptr, background_ptr,
                                 image_ptr, depth_ptr, coverage_ptr, T, HW, C, blocks, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    bt = pid // blocks  # frame b * T + t, its block of pixels
    b = bt // T
    p = (pid - bt * blocks) * BLOCK + tl.arange(0, BLOCK)
    in_frame = p < HW
    key = tl.load(keys_ptr + bt * HW + p, mask=in_frame, other=EMPTY_KEY)
    covered = key != EMPTY_KEY
    winner = tl.where(covered, tl.load(offsets_ptr + b) + _point_index(key), 0)
    q = points_ptr + winner * 3
    x = tl.load(q, mask=covered, other=0.0)
    y = tl.load(q + 1, mask=covered, other=0.0)
    z = tl.load(q + 2, mask=covered, other=0.0)
    depth = _row_dot(rows_ptr + bt * 12 + 8, x, y, z)
    tl.store(depth_ptr + bt * HW + p, tl.where(covered, depth, 0.0), mask=in_frame)
    tl.store(coverage_ptr + bt * HW + p, covered.to(tl.uint8), mask=in_frame)
    image = image_ptr + bt * C * HW + p
    for c in range(C):
        color = tl.load(colors_ptr + winner * C + c, mask=covered)
        background = tl.load(background_ptr + c)
        tl.store(image + c * HW, tl.where(covered, color, background), mask=in_frame)


@triton.jit
def render_consistency_kernel(keys_ptr, colors_ptr, offsets_ptr, background_ptr, target_ptr, squared_ptr,
                              covered_ptr, T, HW, C, chunks, ACC: tl.constexpr, MASKED: tl.constexpr,
                              CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    bt = pid // chunks  # frame b * T + t, its chunk of pixels
    chunk = pid - bt * chunks
    offset = tl.load(offsets_ptr + bt // T)
    squared = tl.zeros([BLOCK], dtype=ACC)
    n_covered = tl.zeros([BLOCK], dtype=tl.int64)
    for i in range(0, CHUNK, BLOCK):
        p = chunk * CHUNK + i + tl.arange(0, BLOCK)
        in_frame = p < HW
        key = tl.load(keys_ptr + bt * HW + p, mask=in_frame, other=EMPTY_KEY)
        covered = key != EMPTY_KEY
        winner = tl.where(covered, offset + _point_index(key), 0)
        counted = in_frame & covered if MASKED else in_frame
        for c in range(C):
            color = tl.load(colors_ptr + winner * C + c, mask=covered)
            render = tl.where(covered, color, tl.load(background_ptr + c)).to(ACC)
            frame = tl.load(target_ptr + (bt * C + c) * HW + p, mask=in_frame, other=0.0).to(ACC)
            d = render - frame
            squared += tl.where(counted, d * d, 0.0)
        n_covered += covered.to(tl.int64)
    out = bt * chunks + chunk
    tl.store(squared_ptr + out, tl.sum(squared, 0))
    tl.store(covered_ptr + out, tl.sum(n_covered, 0))


def render_points_zbuffer(points, offsets, counts, rows, keys, max_count):
    """Fills keys (B, T, H, W) int64, EMPTY-initialised, with the per-pixel minimum key."""
    videos, frames, height, width = keys.shape
    if max_count == 0:
        return
    blocks = triton.cdiv(max_count, POINT_BLOCK)
    launch(render_points_zbuffer_kernel, (videos * blocks,), points, offsets, counts, rows, keys, frames, height, width,
           height * width, blocks, BLOCK=POINT_BLOCK, **EXACT_ARITHMETIC)


def render_points_resolve(keys, points, colors, offsets, rows, background, image, depth, coverage):
    """Writes image (B, T, C, H, W), depth (B, T, H, W) and coverage (uint8) from the keys."""
    videos, frames, height, width = keys.shape
    hw = height * width
    blocks = triton.cdiv(hw, PIXEL_BLOCK)
    launch(render_points_resolve_kernel, (videos * frames * blocks,), keys, points, colors, offsets, rows, background,
           image, depth, coverage, frames, hw, colors.shape[1], blocks, BLOCK=PIXEL_BLOCK, **EXACT_ARITHMETIC)


def render_consistency(keys, colors, offsets, background, target, squared, covered, chunk, masked):
    """Partial sums per (frame, chunk of pixels): squared error (B * T, chunks) and covered
    pixel count (B * T, chunks) int64."""
    videos, frames, height, width = keys.shape
    chunks = squared.shape[1]
    acc = accumulation_type(squared.dtype)
    launch(render_consistency_kernel, (videos * frames * chunks,), keys, colors, offsets, background, target, squared,
           covered, frames, height * width, colors.shape[1], chunks, ACC=acc, MASKED=masked, CHUNK=chunk,
           BLOCK=min(PIXEL_BLOCK, chunk), **EXACT_ARITHMETIC)
