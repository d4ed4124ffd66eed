"""Triton kernels of the depth-warp reprojection error (docs/design.md 3.1) and depth unprojection.

Forward: one program reduces one fixed chunk of pixels of one (video, pair) into a partial
(error sum, valid count); the partials are summed in a fixed order afterwards, so the result is
bitwise reproducible. Every pair of every video is scored in one launch.
Backward: one program per block of pixels of one (video, pair), scattering into the depth and
image gradients with floating-point atomics (the order of the additions is not fixed; relaxed,
since nothing reads the gradients before the launch ends).
Decisions are rounded operation by operation (see kernels/geometry.py): every launch here uses
EXACT_ARITHMETIC.
"""

import torch
import triton
import triton.language as tl

from ._common import EXACT_ARITHMETIC, accumulation_type, launch
from .geometry import (PIXEL_BLOCK, PIXEL_WARPS, accumulate_scores, affine_point, bilinear_depth_taps,
                       depth_is_valid, div_rn, frame_block, frame_grid, inside_image, occlusion_scale, pair_block,
                       pair_chunk, scalar_as, store_partial, used_taps_valid, warp_pixel)

BLOCK = PIXEL_BLOCK

# Mirrors vgpa.ops.reprojection_error.ERROR_CODES.
ABS_REL, ABS, SQ, LOG, PHOTOMETRIC = 0, 1, 2, 3, 4


@triton.jit
def _depth_score(warped, sampled, ok, ERROR: tl.constexpr):
    """(error, validity, the sample made safe) of the depth errors: a pixel whose error is not
    finite is invalid. The log error decides on its inputs instead (log z' - log d is finite iff
    z' and d are finite and > 0): on the GPU tl.log is libdevice's (fused multiply-adds, an
    approximate reciprocal seed), not the CPU's log, so it only makes the value once the decision
    is taken (the PTX check exempts exactly those instructions in the log variants)."""
    sampled = tl.where(ok, sampled, 1.0)
    diff = warped - sampled
    if ERROR == 3:
        ok = ok & depth_is_valid(warped) & depth_is_valid(sampled)
        err = tl.abs(tl.log(tl.where(ok, warped, 1.0)) - tl.log(tl.where(ok, sampled, 1.0)))
    else:
        if ERROR == 0:
            err = div_rn(tl.abs(diff), sampled)
        elif ERROR == 1:
            err = tl.abs(diff)
        else:
            err = diff * diff
        ok = ok & (err - err == 0)
    return err, ok, sampled


@triton.jit
def _sign(x):
    return (x > 0).to(x.dtype) - (x < 0).to(x.dtype)


@triton.jit
def _reproject(depth_ptr, pm_ptr, b, i, j, e, active, H, W, sdB, sdT, sdH, sdW, occlusion_scale, occlusion,
               strict, ACC: tl.constexpr):
    """Warps pixels e (flat, int64) of frame i into frame j. Returns validity (before the
    finiteness test of the error), the warp, the tap corner and weights, and the four tap
    depths (0 unused)."""
    y = e // W
    x = e % W
    z = tl.load(depth_ptr + b * sdB + i * sdT + y * sdH + x * sdW, mask=active, other=0.0).to(ACC)
    ok = active & depth_is_valid(z)
    z = tl.where(ok, z, 1.0)
    warped, tu, tv, dwarped_dz, du_dz, dv_dz, qz = warp_pixel(pm_ptr, x.to(ACC), y.to(ACC), z)
    ok = ok & (qz > 0) & inside_image(tu, tv, H, W, strict)
    tu = tl.where(ok, tu, 0.0)
    tv = tl.where(ok, tv, 0.0)
    x0, y0, wx, wy, w0, w1, w2, w3, u0, u1, u2, u3, d0, d1, d2, d3 = bilinear_depth_taps(
        depth_ptr + b * sdB + j * sdT, tu, tv, H, W, sdH, sdW, ok, ACC)
    if strict:
        ok = ok & used_taps_valid(u0, u1, u2, u3, d0, d1, d2, d3)
    sampled = w0 * d0 + w1 * d1 + w2 * d2 + w3 * d3
    if occlusion:
        ok = ok & ~(warped > scalar_as(occlusion_scale, ACC) * sampled)
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
    P, H, W, C, chunks, chunk, strict, occlusion_scale: tl.float64, occlusion, write_map,
    sdB, sdT, sdH, sdW, siB, siT, siC, siH, siW,
    ERROR: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    job, row, b, i, j, pixels, start, end = pair_chunk(frames_ptr, P, H, W, chunks, chunk)
    pm = pm_ptr + row * 12
    acc_sum = tl.zeros([BLOCK], dtype=ACC)
    acc_count = tl.zeros([BLOCK], dtype=ACC)
    for off in range(0, chunk, BLOCK):
        e = start + off + tl.arange(0, BLOCK)
        active = e < end
        (ok, y, x, warped, sampled, _, _, _, x0, y0, wx, wy, _, _, _, _,
         _, _, _, _, u0, u1, u2, u3) = _reproject(depth_ptr, pm, b, i, j, e, active, H, W, sdB, sdT, sdH, sdW,
                                                  occlusion_scale, occlusion, strict, ACC)
        if ERROR == 4:
            err = div_rn(_photometric_sum(image_ptr, b, i, j, y, x, x0, y0, wx, wy, u0, u1, u2, u3, ok, H, W, C,
                                          siB, siT, siC, siH, siW, ACC, BLOCK), tl.cast(C, ACC))
            ok = ok & (err - err == 0)
        else:
            err, ok, _ = _depth_score(warped, sampled, ok, ERROR)
        acc_sum, acc_count = accumulate_scores(acc_sum, acc_count, err, ok, map_ptr, mask_ptr, row, pixels, e, active,
                                               write_map, ACC)
    store_partial(part_ptr, job, acc_sum, acc_count)


@triton.jit
def reprojection_error_backward_kernel(
    depth_ptr, image_ptr, pm_ptr, frames_ptr, gerr_ptr, gmap_ptr, gdepth_ptr, gimage_ptr,
    P, T, H, W, C, blocks_per_row, strict, occlusion_scale: tl.float64, occlusion, has_map_grad, grad_depth,
    grad_image, sdB, sdT, sdH, sdW, siB, siT, siC, siH, siW,
    ERROR: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    row, b, i, j, pixels, e, active, g = pair_block(frames_ptr, gerr_ptr, gmap_ptr, P, H, W, blocks_per_row,
                                                    has_map_grad, ACC, BLOCK)
    (ok, y, x, warped, sampled, dwarped_dz, du_dz, dv_dz, x0, y0, wx, wy, w0, w1, w2, w3,
     d0, d1, d2, d3, u0, u1, u2, u3) = _reproject(depth_ptr, pm_ptr + row * 12, b, i, j, e, active & (g != 0),
                                                  H, W, sdB, sdT, sdH, sdW, occlusion_scale, occlusion, strict,
                                                  ACC)
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
            s = div_rn(tl.where(ok, _sign(src - _bilinear(c0, c1, c2, c3, wx, wy)), 0.0), tl.cast(C, ACC))
            if grad_image:
                gs = g * s
                plane_grad = gimage_ptr + ((b * T + i) * C + c) * pixels
                tl.atomic_add(plane_grad + e, gs, mask=ok & (gs != 0), sem="relaxed")
                target_grad = gimage_ptr + ((b * T + j) * C + c) * pixels
                tl.atomic_add(target_grad + y0 * W + x0, -gs * w0, mask=u0 & ok & (gs != 0), sem="relaxed")
                tl.atomic_add(target_grad + y0 * W + x0 + 1, -gs * w1, mask=u1 & ok & (gs != 0), sem="relaxed")
                tl.atomic_add(target_grad + (y0 + 1) * W + x0, -gs * w2, mask=u2 & ok & (gs != 0), sem="relaxed")
                tl.atomic_add(target_grad + (y0 + 1) * W + x0 + 1, -gs * w3, mask=u3 & ok & (gs != 0),
                              sem="relaxed")
            d_u -= s * ((1.0 - wy) * (c1 - c0) + wy * (c3 - c2))
            d_v -= s * ((1.0 - wx) * (c2 - c0) + wx * (c3 - c1))
        d_z = tl.zeros([BLOCK], dtype=ACC)
    else:
        _, ok, sampled_safe = _depth_score(warped, sampled, ok, ERROR)
        diff = warped - sampled_safe
        s = _sign(diff)
        if ERROR == 0:
            d_warped = div_rn(s, sampled_safe)
            d_sampled = -div_rn(s, sampled_safe) - div_rn(tl.abs(diff), sampled_safe * sampled_safe)
        elif ERROR == 1:
            d_warped = s
            d_sampled = -s
        elif ERROR == 2:
            d_warped = 2.0 * diff
            d_sampled = -2.0 * diff
        else:  # sign(log z' - log d) = sign(z' - d): no log needed
            d_warped = div_rn(s, tl.where(ok, warped, 1.0))
            d_sampled = -div_rn(s, sampled_safe)
        d_z = d_warped * dwarped_dz
        d_u = d_sampled * ((1.0 - wy) * (d1 - d0) + wy * (d3 - d2))
        d_v = d_sampled * ((1.0 - wx) * (d2 - d0) + wx * (d3 - d1))
        if grad_depth:
            gs = tl.where(ok, g * d_sampled, 0.0)
            tl.atomic_add(gdepth_ptr + dst_frame + y0 * W + x0, gs * w0, mask=u0 & ok & (gs != 0), sem="relaxed")
            tl.atomic_add(gdepth_ptr + dst_frame + y0 * W + x0 + 1, gs * w1, mask=u1 & ok & (gs != 0), sem="relaxed")
            tl.atomic_add(gdepth_ptr + dst_frame + (y0 + 1) * W + x0, gs * w2, mask=u2 & ok & (gs != 0),
                          sem="relaxed")
            tl.atomic_add(gdepth_ptr + dst_frame + (y0 + 1) * W + x0 + 1, gs * w3, mask=u3 & ok & (gs != 0),
                          sem="relaxed")
    if grad_depth:
        gz = tl.where(ok, g * (d_z + d_u * du_dz + d_v * dv_dz), 0.0)
        tl.atomic_add(gdepth_ptr + src_frame, gz, mask=ok & (gz != 0), sem="relaxed")


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
    write_map = error_map is not None  # else the partials stand in for the maps, the mask as bytes (one variant)
    launch(reprojection_error_forward_kernel, (rows * chunks,),
           depth, depth if image is None else image, pair_matrices, pair_frames, partials,
           error_map if write_map else partials, valid_mask if write_map else partials.view(torch.uint8),
           pairs, height, width, channels, chunks, chunk, bool(strict), occlusion_scale(occlusion_tol),
           occlusion_tol is not None, write_map, *_strides(depth, image), ERROR=error_code,
           ACC=accumulation_type(depth.dtype), BLOCK=BLOCK, num_warps=PIXEL_WARPS, **EXACT_ARITHMETIC)


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
    launch(reprojection_error_backward_kernel, (batch * pairs * blocks,),
           depth, depth if image is None else image, pair_matrices, pair_frames, grad_error,
           dummy if grad_map is None else grad_map, dummy if grad_depth is None else grad_depth,
           dummy if grad_image is None else grad_image,
           pairs, frames, height, width, channels, blocks, bool(strict), occlusion_scale(occlusion_tol),
           occlusion_tol is not None, grad_map is not None, grad_depth is not None, grad_image is not None,
           *_strides(depth, image), ERROR=error_code, ACC=accumulation_type(depth.dtype), BLOCK=BLOCK,
           num_warps=PIXEL_WARPS, **EXACT_ARITHMETIC)


def unproject_depth(depth, ray_maps, points):
    """points (B, T, H, W, 3) contiguous = z M [u, v, 1] + t per frame, [M | t] = ray_maps (B * T, 12)."""
    batch, frames, height, width = depth.shape
    launch(unproject_depth_kernel, frame_grid(batch * frames, height, width, BLOCK),
           depth, ray_maps, points, frames, height, width, *depth.stride(),
           ACC=accumulation_type(depth.dtype), BLOCK=BLOCK, num_warps=PIXEL_WARPS, **EXACT_ARITHMETIC)
