"""Triton kernels of surface normals from depth and of normal stability (docs/design.md 3.2).

Normals are never stored for the stability error: each program recomputes n_i(p) and n_j(q)
from the five depths around p and q. The warp helpers are kernels/geometry.py's.
Forward: one program reduces one fixed chunk of pixels of one (video, pair) into a partial
(error sum, valid count), summed in a fixed order afterwards: bitwise reproducible.
Backward, in two launches: d loss / d normal is scattered into a (B * T, 3, H, W) buffer with
floating-point atomics (the order of the additions is not fixed; relaxed, since nothing reads
the buffer before the launch ends), then each depth pixel gathers its gradient from the four
normals that use it (deterministic).
Decisions are rounded operation by operation (see kernels/geometry.py): every launch here uses
EXACT_ARITHMETIC.
"""

import torch
import triton
import triton.language as tl

from ._common import EXACT_ARITHMETIC, accumulation_type, launch
from .geometry import (PIXEL_BLOCK, PIXEL_WARPS, accumulate_scores, bilinear_depth_taps, depth_is_valid, div_rn,
                       frame_block, frame_grid, inside_image, occlusion_scale, pair_block, pair_chunk, scalar_as,
                       sqrt_rn, store_partial, unproject, used_taps_valid, warp_pixel)

BLOCK = PIXEL_BLOCK


@triton.jit
def round_half_even(x):
    """Nearest integer (int64) of x >= 0, ties to even; x - floor(x) is exact, unlike x + 0.5."""
    f = tl.floor(x)
    frac = x - f
    i = f.to(tl.int64)
    return tl.where(frac > 0.5, i + 1, tl.where(frac < 0.5, i, i + (i & 1)))


@triton.jit
def _cross(ax, ay, az, bx, by, bz):
    return ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx


@triton.jit
def _matvec3(m_ptr, x, y, z, TRANSPOSED: tl.constexpr):
    """M v, or M^T v, with M (3x3, row-major) at m_ptr."""
    m0, m1, m2 = tl.load(m_ptr + 0), tl.load(m_ptr + 1), tl.load(m_ptr + 2)
    m3, m4, m5 = tl.load(m_ptr + 3), tl.load(m_ptr + 4), tl.load(m_ptr + 5)
    m6, m7, m8 = tl.load(m_ptr + 6), tl.load(m_ptr + 7), tl.load(m_ptr + 8)
    if TRANSPOSED:
        return m0 * x + m3 * y + m6 * z, m1 * x + m4 * y + m7 * z, m2 * x + m5 * y + m8 * z
    else:
        return m0 * x + m1 * y + m2 * z, m3 * x + m4 * y + m5 * z, m6 * x + m7 * y + m8 * z


@triton.jit
def surface_normal(frame_ptr, kinv_ptr, x, y, H, W, sH, sW, active, ACC: tl.constexpr):
    """Normal of pixels (x, y) by central differences of the unprojected points, oriented toward
    the camera (csrc/normal_stability.h surface_normal). Returns (valid, n, d_u, d_v, sign,
    |c|, centre depth); every value is finite where valid is false."""
    ok = active & (x >= 1) & (y >= 1) & (x <= W - 2) & (y <= H - 2)
    centre = frame_ptr + y * sH + x * sW
    zc = tl.load(centre, mask=ok, other=1.0).to(ACC)
    zl = tl.load(centre - sW, mask=ok, other=1.0).to(ACC)
    zr = tl.load(centre + sW, mask=ok, other=1.0).to(ACC)
    zu = tl.load(centre - sH, mask=ok, other=1.0).to(ACC)
    zd = tl.load(centre + sH, mask=ok, other=1.0).to(ACC)
    ok = ok & depth_is_valid(zc) & depth_is_valid(zl) & depth_is_valid(zr) & depth_is_valid(zu)
    ok = ok & depth_is_valid(zd)
    zc = tl.where(ok, zc, 1.0)
    zl = tl.where(ok, zl, 1.0)
    zr = tl.where(ok, zr, 1.0)
    zu = tl.where(ok, zu, 1.0)
    zd = tl.where(ok, zd, 1.0)
    u = x.to(ACC)
    v = y.to(ACC)
    rx, ry, rz = unproject(kinv_ptr, u + 1.0, v, zr)
    lx, ly, lz = unproject(kinv_ptr, u - 1.0, v, zl)
    dx, dy, dz = unproject(kinv_ptr, u, v + 1.0, zd)
    ux, uy, uz = unproject(kinv_ptr, u, v - 1.0, zu)
    dux, duy, duz = rx - lx, ry - ly, rz - lz
    dvx, dvy, dvz = dx - ux, dy - uy, dz - uz
    cx, cy, cz = _cross(dux, duy, duz, dvx, dvy, dvz)
    length = sqrt_rn(cx * cx + cy * cy + cz * cz)
    ok = ok & (length > 0) & (length - length == 0)
    length = tl.where(ok, length, 1.0)
    px, py, pz = unproject(kinv_ptr, u, v, zc)
    sign = tl.where(cx * px + cy * py + cz * pz > 0, -1.0, 1.0).to(ACC)
    f = div_rn(sign, length)
    return ok, f * cx, f * cy, f * cz, dux, duy, duz, dvx, dvy, dvz, sign, length, zc


@triton.jit
def _neighbour_pullback(frame_ptr, kinv_ptr, grad_ptr, x, y, H, W, sH, sW, pixels, active,
                        DX: tl.constexpr, DY: tl.constexpr, ACC: tl.constexpr):
    """What pixel (x, y) receives from the normal of its neighbour (x + DX, y + DY): + a for the
    left neighbour, - a for the right one, + b for the upper one, - b for the lower one, with
    a, b = d loss / d d_u, d loss / d d_v of that neighbour's normal."""
    nx = x + DX
    ny = y + DY
    inb = active & (nx >= 0) & (nx < W) & (ny >= 0) & (ny < H)
    e = ny * W + nx
    gx = tl.load(grad_ptr + e, mask=inb, other=0.0)
    gy = tl.load(grad_ptr + pixels + e, mask=inb, other=0.0)
    gz = tl.load(grad_ptr + 2 * pixels + e, mask=inb, other=0.0)
    ok, n_x, n_y, n_z, dux, duy, duz, dvx, dvy, dvz, sign, length, _ = surface_normal(
        frame_ptr, kinv_ptr, nx, ny, H, W, sH, sW, inb, ACC)
    # h = d loss / d c = sign (g - n (n . g)) / |c|
    ng = n_x * gx + n_y * gy + n_z * gz
    f = div_rn(sign, length)
    hx = f * (gx - ng * n_x)
    hy = f * (gy - ng * n_y)
    hz = f * (gz - ng * n_z)
    if DY == 0:
        px, py, pz = _cross(dvx, dvy, dvz, hx, hy, hz)  # a = d_v x h
    else:
        px, py, pz = _cross(hx, hy, hz, dux, duy, duz)  # b = h x d_u
    if DX + DY > 0:
        px, py, pz = -px, -py, -pz
    return tl.where(ok, px, 0.0), tl.where(ok, py, 0.0), tl.where(ok, pz, 0.0)


@triton.jit
def depth_to_normals_kernel(depth_ptr, kinv_ptr, normals_ptr, valid_ptr, T, H, W, sdB, sdT, sdH, sdW,
                            ACC: tl.constexpr, BLOCK: tl.constexpr):
    frame, pixels, e, active, y, x = frame_block(H, W, BLOCK)
    frame_ptr = depth_ptr + (frame // T) * sdB + (frame % T) * sdT
    ok, nx, ny, nz, _, _, _, _, _, _, _, _, _ = surface_normal(frame_ptr, kinv_ptr + frame * 9, x, y, H, W, sdH, sdW,
                                                               active, ACC)
    out = normals_ptr + frame * 3 * pixels + e
    ty = normals_ptr.dtype.element_ty
    tl.store(out, tl.where(ok, nx, 0.0).to(ty), mask=active)
    tl.store(out + pixels, tl.where(ok, ny, 0.0).to(ty), mask=active)
    tl.store(out + 2 * pixels, tl.where(ok, nz, 0.0).to(ty), mask=active)
    tl.store(valid_ptr + frame * pixels + e, ok.to(tl.uint8), mask=active)


@triton.jit
def depth_to_normals_backward_kernel(depth_ptr, kinv_ptr, gnormals_ptr, gdepth_ptr, T, H, W, sdB, sdT, sdH, sdW,
                                     ACC: tl.constexpr, BLOCK: tl.constexpr):
    frame, pixels, e, active, y, x = frame_block(H, W, BLOCK)
    frame_ptr = depth_ptr + (frame // T) * sdB + (frame % T) * sdT
    kinv = kinv_ptr + frame * 9
    grad = gnormals_ptr + frame * 3 * pixels
    tx, ty, tz = _neighbour_pullback(frame_ptr, kinv, grad, x, y, H, W, sdH, sdW, pixels, active, -1, 0, ACC)
    px, py, pz = _neighbour_pullback(frame_ptr, kinv, grad, x, y, H, W, sdH, sdW, pixels, active, 1, 0, ACC)
    tx, ty, tz = tx + px, ty + py, tz + pz
    px, py, pz = _neighbour_pullback(frame_ptr, kinv, grad, x, y, H, W, sdH, sdW, pixels, active, 0, -1, ACC)
    tx, ty, tz = tx + px, ty + py, tz + pz
    px, py, pz = _neighbour_pullback(frame_ptr, kinv, grad, x, y, H, W, sdH, sdW, pixels, active, 0, 1, ACC)
    tx, ty, tz = tx + px, ty + py, tz + pz
    rx, ry, rz = unproject(kinv, x.to(ACC), y.to(ACC), 1.0)  # d X / d z
    tl.store(gdepth_ptr + frame * pixels + e, rx * tx + ry * ty + rz * tz, mask=active)


@triton.jit
def _stability_pixel(depth_ptr, kinv_ptr, rot_ptr, pm_ptr, b, i, j, e, active, T, H, W, sdB, sdT, sdH, sdW,
                     occlusion_scale, occlusion, WARP: tl.constexpr, ACC: tl.constexpr):
    """Scores source pixels e of frame i against frame j (csrc/normal_stability.h
    normal_stability_pixel). Returns validity, the cosine, the rotated source normal, the target
    normal and the target pixel q."""
    y = e // W
    x = e % W
    source = depth_ptr + b * sdB + i * sdT
    target = depth_ptr + b * sdB + j * sdT
    ok, snx, sny, snz, _, _, _, _, _, _, _, _, z = surface_normal(source, kinv_ptr + (b * T + i) * 9, x, y, H, W,
                                                                  sdH, sdW, active, ACC)
    if WARP:
        warped, tu, tv, _, _, _, qz = warp_pixel(pm_ptr, x.to(ACC), y.to(ACC), z)
        ok = ok & (qz > 0) & inside_image(tu, tv, H, W, True)
        tu = tl.where(ok, tu, 0.0)
        tv = tl.where(ok, tv, 0.0)
        _, _, _, _, w0, w1, w2, w3, u0, u1, u2, u3, d0, d1, d2, d3 = bilinear_depth_taps(
            target, tu, tv, H, W, sdH, sdW, ok, ACC)
        ok = ok & used_taps_valid(u0, u1, u2, u3, d0, d1, d2, d3)
        if occlusion:
            sampled = (tl.where(u0, w0 * d0, 0.0) + tl.where(u1, w1 * d1, 0.0) + tl.where(u2, w2 * d2, 0.0)
                       + tl.where(u3, w3 * d3, 0.0))
            ok = ok & ~(warped > scalar_as(occlusion_scale, ACC) * sampled)
        qx = round_half_even(tu)
        qy = round_half_even(tv)
    else:
        qx = x
        qy = y
        if occlusion:  # the identity warp: z' = z, d = D_j(p)
            d = tl.load(target + y * sdH + x * sdW, mask=ok, other=1.0).to(ACC)
            ok = ok & ~(z > scalar_as(occlusion_scale, ACC) * d)
    ok_t, tnx, tny, tnz, _, _, _, _, _, _, _, _, _ = surface_normal(target, kinv_ptr + (b * T + j) * 9, qx, qy, H, W,
                                                                    sdH, sdW, ok, ACC)
    ok = ok & ok_t
    if WARP:
        rnx, rny, rnz = _matvec3(rot_ptr, snx, sny, snz, False)
    else:
        rnx, rny, rnz = snx, sny, snz
    cosine = rnx * tnx + rny * tny + rnz * tnz
    return ok, cosine, rnx, rny, rnz, tnx, tny, tnz, qx, qy


@triton.jit
def normal_stability_forward_kernel(
    depth_ptr, kinv_ptr, rot_ptr, pm_ptr, frames_ptr, part_ptr, map_ptr, mask_ptr,
    P, T, H, W, chunks, chunk, occlusion_scale: tl.float64, occlusion, write_map, sdB, sdT, sdH, sdW,
    WARP: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    job, row, b, i, j, pixels, start, end = pair_chunk(frames_ptr, P, H, W, chunks, chunk)
    acc_sum = tl.zeros([BLOCK], dtype=ACC)
    acc_count = tl.zeros([BLOCK], dtype=ACC)
    for off in range(0, chunk, BLOCK):
        e = start + off + tl.arange(0, BLOCK)
        active = e < end
        ok, cosine, _, _, _, _, _, _, _, _ = _stability_pixel(
            depth_ptr, kinv_ptr, rot_ptr + row * 9, pm_ptr + row * 12, b, i, j, e, active, T, H, W,
            sdB, sdT, sdH, sdW, occlusion_scale, occlusion, WARP, ACC)
        err = 1.0 - tl.minimum(tl.maximum(cosine, -1.0), 1.0)
        acc_sum, acc_count = accumulate_scores(acc_sum, acc_count, err, ok, map_ptr, mask_ptr, row, pixels, e, active,
                                               write_map, ACC)
    store_partial(part_ptr, job, acc_sum, acc_count)


@triton.jit
def normal_stability_backward_kernel(
    depth_ptr, kinv_ptr, rot_ptr, pm_ptr, frames_ptr, gerr_ptr, gmap_ptr, gnormals_ptr,
    P, T, H, W, blocks_per_row, occlusion_scale: tl.float64, occlusion, has_map_grad, sdB, sdT, sdH, sdW,
    WARP: tl.constexpr, ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row, b, i, j, pixels, e, active, g = pair_block(frames_ptr, gerr_ptr, gmap_ptr, P, H, W, blocks_per_row,
                                                    has_map_grad, ACC, BLOCK)
    rot = rot_ptr + row * 9
    ok, cosine, rnx, rny, rnz, tnx, tny, tnz, qx, qy = _stability_pixel(
        depth_ptr, kinv_ptr, rot, pm_ptr + row * 12, b, i, j, e, active & (g != 0), T, H, W,
        sdB, sdT, sdH, sdW, occlusion_scale, occlusion, WARP, ACC)
    # d e / d cosine = -1 where the clamp passes the gradient
    d = tl.where(ok & (cosine >= -1.0) & (cosine <= 1.0), -g, 0.0)
    if WARP:  # d cosine / d n_i = R^T n_j
        sx, sy, sz = _matvec3(rot, tnx, tny, tnz, True)
    else:
        sx, sy, sz = tnx, tny, tnz
    mask = ok & (d != 0)
    source = gnormals_ptr + (b * T + i) * 3 * pixels + e
    tl.atomic_add(source, d * sx, mask=mask, sem="relaxed")
    tl.atomic_add(source + pixels, d * sy, mask=mask, sem="relaxed")
    tl.atomic_add(source + 2 * pixels, d * sz, mask=mask, sem="relaxed")
    target = gnormals_ptr + (b * T + j) * 3 * pixels + qy * W + qx
    tl.atomic_add(target, d * rnx, mask=mask, sem="relaxed")
    tl.atomic_add(target + pixels, d * rny, mask=mask, sem="relaxed")
    tl.atomic_add(target + 2 * pixels, d * rnz, mask=mask, sem="relaxed")


def depth_to_normals(depth, inverse_intrinsics, normals, valid):
    """depth (B, T, H, W) any strides, K^-1 (B * T, 9) -> normals (B * T, 3, H, W) in their
    dtype and valid (B * T, H, W) uint8, both contiguous."""
    batch, frames, height, width = depth.shape
    launch(depth_to_normals_kernel, frame_grid(batch * frames, height, width, BLOCK),
           depth, inverse_intrinsics, normals, valid, frames, height, width, *depth.stride(),
           ACC=accumulation_type(depth.dtype), BLOCK=BLOCK, num_warps=PIXEL_WARPS, **EXACT_ARITHMETIC)


def depth_to_normals_backward(depth, inverse_intrinsics, grad_normals, grad_depth):
    """grad_normals (B * T, 3, H, W) -> grad_depth (B * T, H, W), contiguous accumulation dtype."""
    batch, frames, height, width = depth.shape
    launch(depth_to_normals_backward_kernel, frame_grid(batch * frames, height, width, BLOCK),
           depth, inverse_intrinsics, grad_normals, grad_depth, frames, height, width, *depth.stride(),
           ACC=accumulation_type(depth.dtype), BLOCK=BLOCK, num_warps=PIXEL_WARPS, **EXACT_ARITHMETIC)


def normal_stability_forward(depth, inverse_intrinsics, rotations, pair_matrices, pair_frames, partials, error_map,
                             valid_mask, warp, occlusion_tol, chunk):
    """Fills partials (B * P, chunks, 2) and, when given, error_map / valid_mask (B, P, H, W)."""
    batch, frames, height, width = depth.shape
    rows, chunks, _ = partials.shape
    write_map = error_map is not None  # else the partials stand in for the maps, the mask as bytes (one variant)
    launch(normal_stability_forward_kernel, (rows * chunks,),
           depth, inverse_intrinsics, rotations, pair_matrices, pair_frames, partials,
           error_map if write_map else partials, valid_mask if write_map else partials.view(torch.uint8),
           pair_frames.shape[0], frames, height, width, chunks, chunk, occlusion_scale(occlusion_tol),
           occlusion_tol is not None, write_map, *depth.stride(), WARP=warp, ACC=accumulation_type(depth.dtype),
           BLOCK=BLOCK, num_warps=PIXEL_WARPS, **EXACT_ARITHMETIC)


def normal_stability_backward(depth, inverse_intrinsics, rotations, pair_matrices, pair_frames, grad_error, grad_map,
                              grad_normals, warp, occlusion_tol):
    """Adds d loss / d normal into grad_normals (B * T, 3, H, W), a zeroed accumulation-dtype
    buffer. grad_error (B * P,) is d loss / d mean error divided by max(count, 1); grad_map
    (B, P, H, W) or None."""
    batch, frames, height, width = depth.shape
    pairs = pair_frames.shape[0]
    blocks = triton.cdiv(height * width, BLOCK)
    launch(normal_stability_backward_kernel, (batch * pairs * blocks,),
           depth, inverse_intrinsics, rotations, pair_matrices, pair_frames, grad_error,
           grad_error if grad_map is None else grad_map, grad_normals,
           pairs, frames, height, width, blocks, occlusion_scale(occlusion_tol), occlusion_tol is not None,
           grad_map is not None, *depth.stride(), WARP=warp, ACC=accumulation_type(depth.dtype), BLOCK=BLOCK,
           num_warps=PIXEL_WARPS, **EXACT_ARITHMETIC)
