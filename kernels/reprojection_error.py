"""Triton kernels of the depth-warp reprojection error (DESIGN 3.1) and depth unprojection.

Forward: one program reduces one fixed chunk of pixels of one (video, pair) into a partial
(error sum, valid count); the partials are summed in a fixed order afterwards, so the result is
bitwise reproducible. Every pair of every video is scored in one launch.
Backward: one program per block of pixels of one (video, pair), scattering into the depth and
image gradients with floating-point atomics (the order of the additions is not fixed).
"""

import triton
import triton.language as tl

from ._common import accumulation_type
from .geometry import (accumulate_scores, affine_point, bilinear_depth_taps, depth_is_valid, frame_block, inside_image,
                       pair_block, pair_chunk, store_partial, used_taps_valid, warp_pixel)

BLOCK = 256

# Mirrors vgpa.ops.reprojection_error.ERROR_CODES.
ABS_REL, ABS, SQ, LOG, PHOTOMETRIC = 0, 1, 2, 3, 4


@triton.jit
def _depth_error(warped, sampled, ERROR: tl.constexpr):
    diff = warped - sampled
    if ERROR == 0:
        e = tl.abs(diff) / sampled
    elif ERROR == 1:
        e = tl.abs(diff)
    elif ERROR == 2:
        e = diff * diff
    else:
        e = tl.abs(tl.log(warped) - tl.log(sampled))
    return e


@triton.jit
def _sign(x):
    return (x > 0).to(x.dtype) - (x < 0).to(x.dtype)


@triton.jit
def _reproject(depth_ptr, pm_ptr, b, i, j, e, active, H, W, sdB, sdT, sdH, sdW, occlusion_tol,
               STRICT: tl.constexpr, OCCLUSION: tl.constexpr, ACC: tl.constexpr):
    """Warps pixels e (flat, int64) of frame i into frame j. Returns validity (before the
    finiteness test of the error), the warp, the tap corner and weights, and the four tap
    depths (0 unused)."""
    y = e // W
    x = e % W
    z = tl.load(depth_ptr + b * sdB + i * sdT + y * sdH + x * sdW, mask=active, other=0.0).to(ACC)
    ok = active & depth_is_valid(z)
    z = tl.where(ok, z, 1.0)
    warped, tu, tv, dwarped_dz, du_dz, dv_dz, qz = warp_pixel(pm_ptr, x.to(ACC), y.to(ACC), z)
    ok = ok & (qz > 0) & inside_image(tu, tv, H, W, STRICT)
    tu = tl.where(ok, tu, 0.0)
    tv = tl.where(ok, tv, 0.0)
    x0, y0, wx, wy, w0, w1, w2, w3, u0, u1, u2, u3, d0, d1, d2, d3 = bilinear_depth_taps(
        depth_ptr + b * sdB + j * sdT, tu, tv, H, W, sdH, sdW, ok, ACC)
    if STRICT:
        ok = ok & used_taps_valid(u0, u1, u2, u3, d0, d1, d2, d3)
    sampled = w0 * d0 + w1 * d1 + w2 * d2 + w3 * d3
    if OCCLUSION:
        ok = ok & ~(warped > (1.0 + occlusion_tol) * sampled)
    return (ok, y, x, warped, sampled, dwarped_dz, du_dz, dv_dz, x0, y0, wx, wy,
            w0, w1, w2, w3, d0, d1, d2, d3, u0, u1, u2, u3)


@triton.jit
def _image_taps(plane, x0, y0, H, W, siH, siW, u0, u1, u2, u3, ACC: tl.constexpr):
    c0 = tl.load(plane + y0 * siH + x0 * siW, mask=u0, other=0.0).to(ACC)
    c1 = tl.load(plane + y0 * siH + (x0 + 1) * siW, mask=u1, other=0.0).to(ACC)
    c2 = tl.load(plane + (y0 + 1) * siH + x0 * siW, mask=u2, other=0.0).to(ACC)
    c3 = tl.load(plane + (y0 + 1) * siH + (x0 + 1) * siW, mask=u3, other=0.0).to(ACC)
    return c0, c1, c2, c3


@triton.jit
def _bilinear(c0, c1, c2, c3, wx, wy):
    return (1.0 - wy) * ((1.0 - wx) * c0 + wx * c1) + wy * ((1.0 - wx) * c2 + wx * c3)


@triton.jit
def _photometric_sum(image_ptr, b, i, j, y, x, x0, y0, wx, wy, u0, u1, u2, u3, ok, H, W, C, siB, siT, siC, siH, siW,
                     ACC: tl.constexpr, BLOCK: tl.constexpr):
    """sum_c |I_i(p) - I_j(u', v')| (the photometric error times C)."""
    err = tl.zeros([BLOCK], dtype=ACC)
    for c in range(0, C):
        src = tl.load(image_ptr + b * siB + i * siT + c * siC + y * siH + x * siW, mask=ok, other=0.0).to(ACC)
        plane = image_ptr + b * siB + j * siT + c * siC
        c0, c1, c2, c3 = _image_taps(plane, x0, y0, H, W, siH, siW, u0, u1, u2, u3, ACC)
        err += tl.abs(src - _bilinear(c0, c1, c2, c3, wx, wy))
    return err


@triton.jit
def reprojection_error_forward_kernel(
    depth_ptr, image_ptr, pm_ptr, frames_ptr, part_ptr, map_ptr, mask_ptr,
    P, H, W, C, chunks, occlusion_tol,
    sdB, sdT, sdH, sdW, siB, siT, siC, siH, siW,
    ERROR: tl.constexpr, STRICT: tl.constexpr, OCCLUSION: tl.constexpr, WRITE_MAP: tl.constexpr,
    ACC: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr,
):
    job, row, b, i, j, pixels, start, end = pair_chunk(frames_ptr, P, H, W, chunks, CHUNK)
    pm = pm_ptr + row * 12
    acc_sum = tl.zeros([BLOCK], dtype=ACC)
    acc_count = tl.zeros([BLOCK], dtype=ACC)
    for off in range(0, CHUNK, BLOCK):
        e = start + off + tl.arange(0, BLOCK)
        active = e < end
        (ok, y, x, warped, sampled, _, _, _, x0, y0, wx, wy, _, _, _, _,
         _, _, _, _, u0, u1, u2, u3) = _reproject(depth_ptr, pm, b, i, j, e, active, H, W, sdB, sdT, sdH, sdW,
                                                  occlusion_tol, STRICT, OCCLUSION, ACC)
        if ERROR == 4:
            err = _photometric_sum(image_ptr, b, i, j, y, x, x0, y0, wx, wy, u0, u1, u2, u3, ok, H, W, C,
                                   siB, siT, siC, siH, siW, ACC, BLOCK) / C
        else:
            err = _depth_error(warped, tl.where(ok, sampled, 1.0), ERROR)
        ok = ok & (err - err == 0)
        acc_sum, acc_count = accumulate_scores(acc_sum, acc_count, err, ok, map_ptr, mask_ptr, row, pixels, e, active,
                                               WRITE_MAP, ACC)
    store_partial(part_ptr, job, acc_sum, acc_count)


@triton.jit
def reprojection_error_backward_kernel(
    depth_ptr, image_ptr, pm_ptr, frames_ptr, gerr_ptr, gmap_ptr, gdepth_ptr, gimage_ptr,
    P, T, H, W, C, blocks_per_row, occlusion_tol,
    sdB, sdT, sdH, sdW, siB, siT, siC, siH, siW,
    ERROR: tl.constexpr, STRICT: tl.constexpr, OCCLUSION: tl.constexpr, HAS_MAP_GRAD: tl.constexpr,
    GRAD_DEPTH: tl.constexpr, GRAD_IMAGE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    row, b, i, j, pixels, e, active, g = pair_block(frames_ptr, gerr_ptr, gmap_ptr, P, H, W, blocks_per_row,
                                                    HAS_MAP_GRAD, ACC, BLOCK)
    (ok, y, x, warped, sampled, dwarped_dz, du_dz, dv_dz, x0, y0, wx, wy, w0, w1, w2, w3,
     d0, d1, d2, d3, u0, u1, u2, u3) = _reproject(depth_ptr, pm_ptr + row * 12, b, i, j, e, active & (g != 0),
                                                  H, W, sdB, sdT, sdH, sdW, occlusion_tol, STRICT, OCCLUSION, ACC)
    src_frame = (b * T + i) * pixels + e            # flat pixel of the source frame
    dst_frame = (b * T + j) * pixels                # first pixel of the target frame
    if ERROR == 4:
        # validity needs the finished error first (the sum is finite iff the mean is)
        err = _photometric_sum(image_ptr, b, i, j, y, x, x0, y0, wx, wy, u0, u1, u2, u3, ok, H, W, C,
                               siB, siT, siC, siH, siW, ACC, BLOCK)
        ok = ok & (err - err == 0)
        d_u = tl.zeros([BLOCK], dtype=ACC)
        d_v = tl.zeros([BLOCK], dtype=ACC)
        for c in range(0, C):
            src = tl.load(image_ptr + b * siB + i * siT + c * siC + y * siH + x * siW, mask=ok, other=0.0).to(ACC)
            plane = image_ptr + b * siB + j * siT + c * siC
            c0, c1, c2, c3 = _image_taps(plane, x0, y0, H, W, siH, siW, u0 & ok, u1 & ok, u2 & ok, u3 & ok, ACC)
            s = tl.where(ok, _sign(src - _bilinear(c0, c1, c2, c3, wx, wy)), 0.0) / C
            if GRAD_IMAGE:
                gs = g * s
                plane_grad = gimage_ptr + ((b * T + i) * C + c) * pixels
                tl.atomic_add(plane_grad + e, gs, mask=ok & (gs != 0))
                target_grad = gimage_ptr + ((b * T + j) * C + c) * pixels
                tl.atomic_add(target_grad + y0 * W + x0, -gs * w0, mask=u0 & ok & (gs != 0))
                tl.atomic_add(target_grad + y0 * W + x0 + 1, -gs * w1, mask=u1 & ok & (gs != 0))
                tl.atomic_add(target_grad + (y0 + 1) * W + x0, -gs * w2, mask=u2 & ok & (gs != 0))
                tl.atomic_add(target_grad + (y0 + 1) * W + x0 + 1, -gs * w3, mask=u3 & ok & (gs != 0))
            d_u -= s * ((1.0 - wy) * (c1 - c0) + wy * (c3 - c2))
            d_v -= s * ((1.0 - wx) * (c2 - c0) + wx * (c3 - c1))
        d_z = tl.zeros([BLOCK], dtype=ACC)
    else:
        sampled_safe = tl.where(ok, sampled, 1.0)
        err = _depth_error(warped, sampled_safe, ERROR)
        ok = ok & (err - err == 0)
        diff = warped - sampled_safe
        s = _sign(diff)
        if ERROR == 0:
            d_warped = s / sampled_safe
            d_sampled = -s / sampled_safe - tl.abs(diff) / (sampled_safe * sampled_safe)
        elif ERROR == 1:
            d_warped = s
            d_sampled = -s
        elif ERROR == 2:
            d_warped = 2.0 * diff
            d_sampled = -2.0 * diff
        else:
            ls = _sign(tl.log(tl.where(ok, warped, 1.0)) - tl.log(sampled_safe))
            d_warped = ls / tl.where(ok, warped, 1.0)
            d_sampled = -ls / sampled_safe
        d_z = d_warped * dwarped_dz
        d_u = d_sampled * ((1.0 - wy) * (d1 - d0) + wy * (d3 - d2))
        d_v = d_sampled * ((1.0 - wx) * (d2 - d0) + wx * (d3 - d1))
        if GRAD_DEPTH:
            gs = tl.where(ok, g * d_sampled, 0.0)
            tl.atomic_add(gdepth_ptr + dst_frame + y0 * W + x0, gs * w0, mask=u0 & ok & (gs != 0))
            tl.atomic_add(gdepth_ptr + dst_frame + y0 * W + x0 + 1, gs * w1, mask=u1 & ok & (gs != 0))
            tl.atomic_add(gdepth_ptr + dst_frame + (y0 + 1) * W + x0, gs * w2, mask=u2 & ok & (gs != 0))
            tl.atomic_add(gdepth_ptr + dst_frame + (y0 + 1) * W + x0 + 1, gs * w3, mask=u3 & ok & (gs != 0))
    if GRAD_DEPTH:
        gz = tl.where(ok, g * (d_z + d_u * du_dz + d_v * dv_dz), 0.0)
        tl.atomic_add(gdepth_ptr + src_frame, gz, mask=ok & (gz != 0))


@triton.jit
def unproject_depth_kernel(depth_ptr, maps_ptr, out_ptr, T, H, W, sdB, sdT, sdH, sdW, ACC: tl.constexpr,
                           BLOCK: tl.constexpr):
    frame, pixels, e, active, y, x = frame_block(H, W, BLOCK)
    z = tl.load(depth_ptr + (frame // T) * sdB + (frame % T) * sdT + y * sdH + x * sdW, mask=active,
                other=0.0).to(ACC)
    px, py, pz = affine_point(maps_ptr + frame * 12, x.to(ACC), y.to(ACC), z)
    out = out_ptr + (frame * pixels + e) * 3
    ty = out_ptr.dtype.element_ty
    tl.store(out, px.to(ty), mask=active)
    tl.store(out + 1, py.to(ty), mask=active)
    tl.store(out + 2, pz.to(ty), mask=active)


def _strides(depth, image):
    image_strides = image.stride() if image is not None else (0,) * 5
    return (*depth.stride(), *image_strides)


def reprojection_error_forward(depth, image, pair_matrices, pair_frames, partials, error_map, valid_mask,
                               error_code, strict, occlusion_tol, chunk):
    """Fills partials (B * P, chunks, 2) and, when given, error_map / valid_mask (B, P, H, W)."""
    batch, frames, height, width = depth.shape
    pairs = pair_frames.shape[0]
    rows, chunks, _ = partials.shape
    channels = image.shape[2] if image is not None else 1
    write_map = error_map is not None
    reprojection_error_forward_kernel[(rows * chunks,)](
        depth, depth if image is None else image, pair_matrices, pair_frames, partials,
        error_map if write_map else partials, valid_mask if write_map else partials,
        pairs, height, width, channels, chunks, 0.0 if occlusion_tol is None else float(occlusion_tol),
        *_strides(depth, image),
        ERROR=error_code, STRICT=strict, OCCLUSION=occlusion_tol is not None, WRITE_MAP=write_map,
        ACC=accumulation_type(depth.dtype), CHUNK=chunk, BLOCK=min(BLOCK, chunk),
    )


def reprojection_error_backward(depth, image, pair_matrices, pair_frames, grad_error, grad_map, grad_depth,
                                grad_image, error_code, strict, occlusion_tol):
    """Adds the gradients into grad_depth (B, T, H, W) and grad_image (B, T, C, H, W), contiguous
    accumulation-dtype buffers (None: not wanted). grad_error (B * P,) is d loss / d mean error
    divided by max(count, 1); grad_map (B, P, H, W) or None."""
    batch, frames, height, width = depth.shape
    pairs = pair_frames.shape[0]
    channels = image.shape[2] if image is not None else 1
    blocks = triton.cdiv(height * width, BLOCK)
    dummy = grad_error
    reprojection_error_backward_kernel[(batch * pairs * blocks,)](
        depth, depth if image is None else image, pair_matrices, pair_frames, grad_error,
        dummy if grad_map is None else grad_map, dummy if grad_depth is None else grad_depth,
        dummy if grad_image is None else grad_image,
        pairs, frames, height, width, channels, blocks, 0.0 if occlusion_tol is None else float(occlusion_tol),
        *_strides(depth, image),
        ERROR=error_code, STRICT=strict, OCCLUSION=occlusion_tol is not None, HAS_MAP_GRAD=grad_map is not None,
        GRAD_DEPTH=grad_depth is not None, GRAD_IMAGE=grad_image is not None, ACC=accumulation_type(depth.dtype), BLOCK=BLOCK,
    )


def unproject_depth(depth, ray_maps, points):
    """points (B, T, H, W, 3) contiguous = z M [u, v, 1] + t per frame, [M | t] = ray_maps (B * T, 12)."""
    batch, frames, height, width = depth.shape
    grid = (triton.cdiv(height * width, BLOCK), batch * frames)
    unproject_depth_kernel[grid](depth, ray_maps, points, frames, height, width, *depth.stride(),
                                 ACC=accumulation_type(depth.dtype), BLOCK=BLOCK)
