"""Triton helpers for the pinhole warp shared by the geometry kernels (docs/design.md 2, 3.1, 3.2).

The twins of csrc/geometry.h: pixel centres at integer (u, v), u the column; OpenCV camera;
matrices row-major in memory. Every helper works on blocks of pixels.

The geometry kernels decide (validity, occlusion, the pixel a point rounds to) as the CPU twin
does, so their arithmetic is rounded operation by operation: they are launched with
_common.EXACT_ARITHMETIC (no FMA contraction, no flush-to-zero), divide with ``div_rn`` and take
square roots with ``sqrt_rn`` (IEEE, where float32 ``/`` and ``tl.sqrt`` are approximate on the
GPU). vgpa_tools/gpu_proof/triton_kernels.py checks the PTX of every variant for it.

Options that only switch a test or some work on or off (strict validity, the occlusion test,
writing the maps, which gradients are wanted) are runtime flags, not constexprs: each constexpr
doubles the kernels compiled (JIT time for users, compile time for the GPU-proof check) for a
uniform branch that costs next to nothing. The error kind, the warp and the types stay constexprs.
"""

import triton
import triton.language as tl

# Pixels per program and warps of the per-pixel kernels: one pixel per thread. The geometry of
# a pixel (and, backward, of its four neighbours' normals) holds many live values; at two pixels
# per thread the float64 kernels spill.
PIXEL_BLOCK = 256
PIXEL_WARPS = 8


@triton.jit
def div_rn(a, b):
    """a / b rounded to nearest (IEEE) in b's dtype: float32 ``/`` compiles to an approximate
    division; float64 ``/`` is already IEEE (and tl.div_rn takes float32 only)."""
    if b.dtype == tl.float64:
        return a / b
    else:
        return tl.div_rn(a, b)


@triton.jit
def sqrt_rn(x):
    """IEEE square root (float32 tl.sqrt is approximate; float64 tl.sqrt is IEEE)."""
    if x.dtype == tl.float64:
        return tl.sqrt(x)
    else:
        return tl.sqrt_rn(x)


def occlusion_scale(occlusion_tol):
    """The occlusion factor 1 + tol in double, as the CPU twin forms it, for a ``tl.float64``
    kernel argument that the kernel rounds once to its accumulation type (scalar_as). 0 when
    there is no occlusion test (the kernels do not read it then)."""
    return 0.0 if occlusion_tol is None else 1.0 + float(occlusion_tol)


@triton.jit
def scalar_as(x, ACC: tl.constexpr):
    """A host float (passed as float64) rounded once to the accumulation type, as the CPU twin's
    A(x) cast does; ``tl.full`` also takes the plain Python float the interpreter passes."""
    return tl.full([], x, ACC)


@triton.jit
def depth_is_valid(z):
    """Finite and > 0 (z - z is NaN for +-inf and NaN)."""
    return (z > 0) & (z - z == 0)


@triton.jit
def unproject(kinv_ptr, u, v, z):
    """X = z K^-1 [u, v, 1] with K^-1 (3x3) at kinv_ptr."""
    k0, k1, k2 = tl.load(kinv_ptr + 0), tl.load(kinv_ptr + 1), tl.load(kinv_ptr + 2)
    k3, k4, k5 = tl.load(kinv_ptr + 3), tl.load(kinv_ptr + 4), tl.load(kinv_ptr + 5)
    k6, k7, k8 = tl.load(kinv_ptr + 6), tl.load(kinv_ptr + 7), tl.load(kinv_ptr + 8)
    return z * (k0 * u + k1 * v + k2), z * (k3 * u + k4 * v + k5), z * (k6 * u + k7 * v + k8)


@triton.jit
def affine_point(m_ptr, u, v, z):
    """z M [u, v, 1] + t with [M | t] (3x4) at m_ptr: camera or world points from depth."""
    m0, m1, m2, m3 = tl.load(m_ptr + 0), tl.load(m_ptr + 1), tl.load(m_ptr + 2), tl.load(m_ptr + 3)
    m4, m5, m6, m7 = tl.load(m_ptr + 4), tl.load(m_ptr + 5), tl.load(m_ptr + 6), tl.load(m_ptr + 7)
    m8, m9, m10, m11 = tl.load(m_ptr + 8), tl.load(m_ptr + 9), tl.load(m_ptr + 10), tl.load(m_ptr + 11)
    return (z * (m0 * u + m1 * v + m2) + m3, z * (m4 * u + m5 * v + m6) + m7,
            z * (m8 * u + m9 * v + m10) + m11)


@triton.jit
def warp_pixel(pm_ptr, u, v, z):
    """Source pixel (u, v) with depth z (> 0) warped by the pair matrix at pm_ptr (3x4, see
    vgpa.torch_math.camera.pair_projection): q = M [u, v, 1, 1/z], z' = z q_z,
    (u', v') = q_xy / q_z. Returns (z', u', v', dz'/dz, du'/dz, dv'/dz, q_z); the caller
    checks q_z > 0 (u', v' are garbage otherwise)."""
    m0, m1, m2, m3 = tl.load(pm_ptr + 0), tl.load(pm_ptr + 1), tl.load(pm_ptr + 2), tl.load(pm_ptr + 3)
    m4, m5, m6, m7 = tl.load(pm_ptr + 4), tl.load(pm_ptr + 5), tl.load(pm_ptr + 6), tl.load(pm_ptr + 7)
    m8, m9, m10, m11 = tl.load(pm_ptr + 8), tl.load(pm_ptr + 9), tl.load(pm_ptr + 10), tl.load(pm_ptr + 11)
    inv_z = div_rn(1.0, z)
    qx = m0 * u + m1 * v + m2 + m3 * inv_z
    qy = m4 * u + m5 * v + m6 + m7 * inv_z
    qz = m8 * u + m9 * v + m10 + m11 * inv_z
    front = qz > 0
    qs = tl.where(front, qz, 1.0)
    tu = div_rn(qx, qs)
    tv = div_rn(qy, qs)
    inv_z2 = inv_z * inv_z
    dqz = -m11 * inv_z2
    du_dz = div_rn(-m3 * inv_z2 - tu * dqz, qs)
    dv_dz = div_rn(-m7 * inv_z2 - tv * dqz, qs)
    return z * qz, tu, tv, m8 * u + m9 * v + m10, du_dz, dv_dz, qz


@triton.jit
def inside_image(u, v, H, W, strict):
    """strict: 0 <= u <= W-1, 0 <= v <= H-1; else 0 <= u < W, 0 <= v < H. False for NaN."""
    if strict:
        inside = (u >= 0) & (u <= W - 1) & (v >= 0) & (v <= H - 1)
    else:
        inside = (u >= 0) & (u < W) & (v >= 0) & (v < H)
    return inside


@triton.jit
def bilinear_corner(u, v):
    """(x0, y0) as int64 and the fractional weights (wx, wy) of the taps around (u, v)."""
    fu = tl.floor(u)
    fv = tl.floor(v)
    return fu.to(tl.int64), fv.to(tl.int64), u - fu, v - fv


@triton.jit
def bilinear_tap(x0, y0, wx, wy, H, W, active, DX: tl.constexpr, DY: tl.constexpr):
    """Tap (x0 + DX, y0 + DY): its (x, y), weight, and whether it is used (inside the image,
    weight != 0, and the pixel active): unused taps are never read."""
    x = x0 + DX
    y = y0 + DY
    if DX == 1:
        weight_x = wx
    else:
        weight_x = 1.0 - wx
    if DY == 1:
        weight_y = wy
    else:
        weight_y = 1.0 - wy
    weight = weight_x * weight_y
    used = active & (x >= 0) & (x < W) & (y >= 0) & (y < H) & (weight != 0)
    return x, y, weight, used


@triton.jit
def used_taps_valid(u0, u1, u2, u3, d0, d1, d2, d3):
    """Every used tap holds a valid depth (the strict validity of docs/design.md 3.1)."""
    ok = (~u0 | depth_is_valid(d0)) & (~u1 | depth_is_valid(d1))
    return ok & (~u2 | depth_is_valid(d2)) & (~u3 | depth_is_valid(d3))


@triton.jit
def bilinear_depth_taps(frame_ptr, u, v, H, W, sH, sW, active, ACC: tl.constexpr):
    """The four taps around (u, v) (finite where active) of the depth frame at frame_ptr:
    corner (x0, y0), fractions (wx, wy), weights w0..w3, used flags u0..u3 and depths d0..d3
    (0 where unused, so that w0 d0 + ... + w3 d3 is the zero-padded bilinear sample)."""
    x0, y0, wx, wy = bilinear_corner(u, v)
    xa, ya, w0, u0 = bilinear_tap(x0, y0, wx, wy, H, W, active, 0, 0)
    xb, yb, w1, u1 = bilinear_tap(x0, y0, wx, wy, H, W, active, 1, 0)
    xc, yc, w2, u2 = bilinear_tap(x0, y0, wx, wy, H, W, active, 0, 1)
    xd, yd, w3, u3 = bilinear_tap(x0, y0, wx, wy, H, W, active, 1, 1)
    d0 = tl.load(frame_ptr + ya * sH + xa * sW, mask=u0, other=0.0).to(ACC)
    d1 = tl.load(frame_ptr + yb * sH + xb * sW, mask=u1, other=0.0).to(ACC)
    d2 = tl.load(frame_ptr + yc * sH + xc * sW, mask=u2, other=0.0).to(ACC)
    d3 = tl.load(frame_ptr + yd * sH + xd * sW, mask=u3, other=0.0).to(ACC)
    return x0, y0, wx, wy, w0, w1, w2, w3, u0, u1, u2, u3, d0, d1, d2, d3


# ---------------------------------------------------------------------------------------------
# Work split (the twins of csrc/geometry.h's). Per-frame kernels run on a grid (pixel blocks,
# B * T frames); the pairwise ops (reprojection error, normal stability) on rows, one row per
# (video, pair), row = b * P + p, with pair_frames (P, 2) holding (source i, target j).


@triton.jit
def frame_block(H, W, BLOCK: tl.constexpr):
    """This program's frame (b * T + t), the frame's pixel count, its block of pixels e (flat),
    which of them lie in the frame, and their (y, x); all int64. Program pid = frame * blocks +
    block on the 1-D grid of frame_grid (grid axis y would cap B * T at 65535)."""
    pixels = tl.cast(H, tl.int64) * W
    blocks = (pixels + BLOCK - 1) // BLOCK
    pid = tl.program_id(0).to(tl.int64)
    frame = pid // blocks
    e = (pid - frame * blocks) * BLOCK + tl.arange(0, BLOCK)
    return frame, pixels, e, e < pixels, e // W, e % W


def frame_grid(frames, height, width, block):
    """The 1-D grid of frame_block: every block of pixels of every frame."""
    return (frames * triton.cdiv(height * width, block),)


@triton.jit
def pair_row(frames_ptr, row, P):
    """(b, i, j) of a row: its video, source frame and target frame."""
    p = row % P
    return row // P, tl.load(frames_ptr + 2 * p), tl.load(frames_ptr + 2 * p + 1)


@triton.jit
def pair_chunk(frames_ptr, P, H, W, chunks, chunk):
    """Forward: program job = row * chunks + k reduces pixels [start, end) of its row.
    Returns (job, row, b, i, j, pixels, start, end); the chunks are a pure function of the
    shape, so the partial sums are bitwise reproducible. The chunk size is a runtime value: a
    constexpr would compile one kernel per frame size below the largest chunk."""
    job = tl.program_id(0).to(tl.int64)
    row = job // chunks
    b, i, j = pair_row(frames_ptr, row, P)
    pixels = tl.cast(H, tl.int64) * W
    start = (job % chunks) * chunk
    return job, row, b, i, j, pixels, start, tl.minimum(start + chunk, pixels)


@triton.jit
def accumulate_scores(acc_sum, acc_count, err, ok, map_ptr, mask_ptr, row, pixels, e, active,
                      write_map, ACC: tl.constexpr):
    """Adds the valid errors of a block of pixels and their count to the running sums, and
    writes the error map (0 where invalid) and the validity mask when they are wanted."""
    err = tl.where(ok, err, 0.0)
    if write_map:
        tl.store(map_ptr + row * pixels + e, err, mask=active)
        tl.store(mask_ptr + row * pixels + e, ok.to(tl.uint8), mask=active)
    return acc_sum + err, acc_count + ok.to(ACC)


@triton.jit
def store_partial(part_ptr, job, acc_sum, acc_count):
    """The job's partial (error sum, valid count)."""
    out = part_ptr + job * 2
    tl.store(out, tl.sum(acc_sum, 0))
    tl.store(out + 1, tl.sum(acc_count, 0))


@triton.jit
def pair_block(frames_ptr, gerr_ptr, gmap_ptr, P, H, W, blocks_per_row, has_map_grad,
               ACC: tl.constexpr, BLOCK: tl.constexpr):
    """Backward: program pid = row * blocks_per_row + block takes one block of pixels of its
    row. Returns (row, b, i, j, pixels, e, active, g) with g = d loss / d e(p): the row's share
    of the mean (already divided by the count) plus the map's, when a map gradient is given."""
    pid = tl.program_id(0).to(tl.int64)
    row = pid // blocks_per_row
    b, i, j = pair_row(frames_ptr, row, P)
    pixels = tl.cast(H, tl.int64) * W
    e = (pid % blocks_per_row) * BLOCK + tl.arange(0, BLOCK)
    active = e < pixels
    g = tl.load(gerr_ptr + row) + tl.zeros([BLOCK], dtype=ACC)
    if has_map_grad:
        g += tl.load(gmap_ptr + row * pixels + e, mask=active, other=0.0)
    return row, b, i, j, pixels, e, active, g
