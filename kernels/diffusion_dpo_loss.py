"""Triton kernels of the paired Diffusion-DPO loss (docs/design.md 3.4).

Every operand is seen as (N, F, A, B, C) with its own strides (see vgpa._layout). One
program reduces one fixed chunk of one (sample, segment) into a partial sum, so the result
does not depend on scheduling: the partials are summed in a fixed order afterwards. The
(sample, segment) rows are folded into grid axis x (axis y caps at 65535 programs).
"""

import triton
import triton.language as tl

from ._common import accumulation_type, launch

BLOCK = 1024


@triton.jit
def _segment_element_offsets(e, f0, A, B, C, sN, sF, sA, sB, sC, n, SINGLE_ROW: tl.constexpr):
    """Memory offset of element e (frame-major) of the segment starting at frame f0.
    SINGLE_ROW: every sample is one row (F = A = B = 1, e.g. contiguous latents without
    segments), so no division is needed."""
    if SINGLE_ROW:
        return n * sN + e * sC
    # In int64: B * C and A * B * C reach 2^31 for a large sample whose axes cannot be merged.
    row = tl.cast(B, tl.int64) * C
    inner = tl.cast(A, tl.int64) * row
    f = f0 + e // inner
    rem = e % inner
    a = rem // row
    rem = rem % row
    b = rem // C
    c = rem % C
    return n * sN + f * sF + a * sA + b * sB + c * sC


@triton.jit
def _segment_span(ns, S, F, A, B, C):
    """(sample, first frame, element count) of program row ns = sample * S + segment."""
    n = (ns // S).to(tl.int64)
    k = ns % S
    base = F // S
    extra = F % S
    f0 = k * base + tl.minimum(k, extra)
    frames = base + (k < extra).to(tl.int32)
    return n, f0.to(tl.int64), frames.to(tl.int64) * A * B * C


@triton.jit
def diffusion_dpo_loss_forward_kernel(
    m_ptr, r_ptr, t_ptr, w_ptr, part_ptr, S, chunks, F, A, B, C,
    smN, smF, smA, smB, smC, srN, srF, srA, srB, srC,
    stN, stF, stA, stB, stC, swN, swF, swA, swB, swC,
    ACC: tl.constexpr, HAS_WEIGHT: tl.constexpr, SINGLE_ROW: tl.constexpr, CHUNK: tl.constexpr,
    BLOCK: tl.constexpr, HAS_REF: tl.constexpr = True,
):
    pid = tl.program_id(0).to(tl.int64)
    ns = pid // chunks  # row sample * S + segment, its chunk
    chunk = pid - ns * chunks
    n, f0, seg_len = _segment_span(ns, S, F, A, B, C)
    start = chunk * CHUNK
    acc_m = tl.zeros([BLOCK], dtype=ACC)
    acc_r = tl.zeros([BLOCK], dtype=ACC)
    acc_w = tl.zeros([BLOCK], dtype=ACC)
    for i in range(0, CHUNK, BLOCK):
        e = start + i + tl.arange(0, BLOCK)
        mask = e < seg_len
        m = tl.load(m_ptr + _segment_element_offsets(e, f0, A, B, C, smN, smF, smA, smB, smC, n, SINGLE_ROW),
                    mask=mask, other=0.0).to(ACC)
        t = tl.load(t_ptr + _segment_element_offsets(e, f0, A, B, C, stN, stF, stA, stB, stC, n, SINGLE_ROW),
                    mask=mask, other=0.0).to(ACC)
        dm = m - t
        if HAS_WEIGHT:
            w = tl.load(w_ptr + _segment_element_offsets(e, f0, A, B, C, swN, swF, swA, swB, swC, n, SINGLE_ROW),
                        mask=mask, other=0.0).to(ACC)
            acc_m += w * dm * dm
            acc_w += w
        else:
            acc_m += dm * dm
        if HAS_REF:  # reference-free losses ("dro") never read ref_pred
            r = tl.load(r_ptr + _segment_element_offsets(e, f0, A, B, C, srN, srF, srA, srB, srC, n, SINGLE_ROW),
                        mask=mask, other=0.0).to(ACC)
            dr = r - t
            if HAS_WEIGHT:
                acc_r += w * dr * dr
            else:
                acc_r += dr * dr
    out = part_ptr + pid * 3
    tl.store(out, tl.sum(acc_m, 0))
    tl.store(out + 1, tl.sum(acc_r, 0))
    tl.store(out + 2, tl.sum(acc_w, 0))


@triton.jit
def diffusion_dpo_loss_backward_kernel(
    scale_ptr, m_ptr, t_ptr, w_ptr, g_ptr, S, blocks, F, A, B, C,
    smN, smF, smA, smB, smC, sgN, sgF, sgA, sgB, sgC,
    stN, stF, stA, stB, stC, swN, swF, swA, swB, swC,
    ACC: tl.constexpr, HAS_WEIGHT: tl.constexpr, SINGLE_ROW: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    ns = pid // blocks  # row sample * S + segment, its block
    n, f0, seg_len = _segment_span(ns, S, F, A, B, C)
    e = (pid - ns * blocks) * BLOCK + tl.arange(0, BLOCK)
    mask = e < seg_len
    scale = tl.load(scale_ptr + ns)
    m = tl.load(m_ptr + _segment_element_offsets(e, f0, A, B, C, smN, smF, smA, smB, smC, n, SINGLE_ROW),
                mask=mask, other=0.0).to(ACC)
    t = tl.load(t_ptr + _segment_element_offsets(e, f0, A, B, C, stN, stF, stA, stB, stC, n, SINGLE_ROW),
                mask=mask, other=0.0).to(ACC)
    g = scale * (m - t)
    if HAS_WEIGHT:
        g *= tl.load(w_ptr + _segment_element_offsets(e, f0, A, B, C, swN, swF, swA, swB, swC, n, SINGLE_ROW),
                     mask=mask, other=0.0).to(ACC)
    g_off = _segment_element_offsets(e, f0, A, B, C, sgN, sgF, sgA, sgB, sgC, n, SINGLE_ROW)
    tl.store(g_ptr + g_off, g.to(g_ptr.dtype.element_ty), mask=mask)


def _single_row(sizes):
    frames, a, b, _ = sizes
    return frames == 1 and a == 1 and b == 1


def _num_warps(dtype, single_row):
    """Warps of a BLOCK: one 128-bit load per operand and thread where a row is contiguous (4 warps
    for 16-bit types, 8 for float32, 16 for float64), which also keeps registers low (at 4 warps,
    8 float64 elements per thread took 127). Strided layouts load element by element and carry
    int64 (f, a, b, c) index math per element: at least 8 warps (4 elements per thread; 128
    registers at 4 warps). Every choice keeps ~30 KB or more in flight per SM, above what the
    memory bandwidth needs (docs/gpu_resources_triton.csv has the registers)."""
    return max(BLOCK * dtype.itemsize // (32 * 16), 4 if single_row else 8)


def diffusion_dpo_loss_forward(m, r, t, w, partials, sizes, strides, segments, chunk):
    """Writes (model, ref, weight) partial sums into partials (N * S, chunks, 3); r None: the
    reference sums are 0 and no reference is read."""
    rows, chunks, _ = partials.shape
    launch(diffusion_dpo_loss_forward_kernel, (rows * chunks,),
           m, m if r is None else r, t, m if w is None else w, partials, segments, chunks, *sizes,
           *strides[0], *strides[1], *strides[2], *strides[3],
           ACC=accumulation_type(m.dtype), HAS_WEIGHT=w is not None, SINGLE_ROW=_single_row(sizes), CHUNK=chunk,
           BLOCK=min(BLOCK, chunk), HAS_REF=r is not None, num_warps=_num_warps(m.dtype, _single_row(sizes)))


def diffusion_dpo_loss_backward(scale, m, t, w, g, sizes, strides, segments):
    """g = scale[sample, segment] * w * (m - t), written with g's strides."""
    frames, a, b, c = sizes
    longest = -(-frames // segments) * a * b * c
    blocks = triton.cdiv(longest, BLOCK)
    # strides order: model_pred, grad, target, weight (as laid out by the caller)
    launch(diffusion_dpo_loss_backward_kernel, (m.shape[0] * segments * blocks,),
           scale, m, t, m if w is None else w, g, segments, blocks, *sizes,
           *strides[0], *strides[1], *strides[2], *strides[3],
           ACC=accumulation_type(m.dtype), HAS_WEIGHT=w is not None, SINGLE_ROW=_single_row(sizes), BLOCK=BLOCK,
           num_warps=_num_warps(m.dtype, _single_row(sizes)))
