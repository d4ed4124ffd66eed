"""Fused depth-warp reprojection error (docs/design.md 3.1), MVCS and depth unprojection.

One launch scores every pair of every video: each source pixel is unprojected, moved into
the target camera, projected, and compared with the bilinear sample of the target depth (or
image), reduced per (video, pair) in fixed chunks whose partials are summed in a fixed order.
Only the tiny per-pair camera matrices (B, P, 12) are built in torch before the launch
(vgpa.torch_math.camera.pair_projection); nothing of size (B, P, H, W, 3) is materialised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from .. import _backend, _checks, _pairwise
from .._dtypes import accumulation_dtype as _acc
from ..torch_math import camera
from ..reference import reprojection_error as reference
from .registry import InstructionCounts, OpSpec

OP = "reprojection_error"
FLOAT_DTYPES = _checks.FLOAT_DTYPES
ERROR_CODES = {"abs_rel": 0, "abs": 1, "sq": 2, "log": 3, "photometric": 4}  # csrc ReprojectionErrorKind
VALIDITY_MODES = reference.VALIDITY_MODES

# Pixels reduced into one partial sum, per backend: fixed, so sums are bitwise reproducible.
CHUNK = {"cpu": 4096, "cuda": 4096, "triton": 4096}


@dataclass
class ReprojectionErrorResult:
    """Output of :func:`reprojection_error`.

    error: (B, P) mean error over the valid pixels of each (video, pair), in float32 (float64
    for float64 depth); 0 where the pair has no valid pixel. valid_count: (B, P) int64.
    error_map: (B, P, H, W) per-pixel error, 0 where invalid, and valid_mask: (B, P, H, W)
    bool, both only with ``return_map=True`` (None otherwise).
    """

    error: Tensor
    valid_count: Tensor
    error_map: Optional[Tensor] = None
    valid_mask: Optional[Tensor] = None


# --------------------------------------------------------------------------------------------
# Backend implementations


def _launch(backend, name, depth, image, pair_matrices, pairs, code, strict, occlusion_tol, *, sizes=(), **buffers):
    """Calls the compiled kernel ``<name>_cpu`` or ``<name>_cuda`` of csrc/reprojection_error with
    its fields by name; ``buffers``: the kernel's own tensors (None: absent), ``sizes``: its
    other numbers (the forward's chunking)."""
    b, t, h, w = depth.shape
    fields = dict(dtype=_backend.dtype_code(depth.dtype), batch=b, pairs=pairs.shape[0], frames=t, height=h, width=w,
                  channels=1 if image is None else image.shape[2], error=code, strict=strict,
                  occlusion=occlusion_tol is not None, occlusion_tol=0.0 if occlusion_tol is None else float(occlusion_tol),
                  depth=depth.data_ptr(), depth_strides=list(depth.stride()), pair_matrices=pair_matrices.data_ptr(),
                  pair_frames=pairs.data_ptr(), **dict(sizes),
                  **{name: tensor.data_ptr() for name, tensor in buffers.items() if tensor is not None})
    if image is not None:
        fields.update(image=image.data_ptr(), image_strides=list(image.stride()))
    _backend.launch_compiled(backend, name, depth.device, **fields)


def _forward_kernel(backend, depth, image, pair_matrices, pairs, error, validity, occlusion_tol, return_map):
    out = _pairwise.score_buffers(depth, pairs, CHUNK[backend], return_map)
    code, strict = ERROR_CODES[error], validity == "strict"
    if backend == "triton":
        from ..kernels.reprojection_error import reprojection_error_forward

        reprojection_error_forward(depth, image, pair_matrices, pairs, out.partials, out.error_map, out.valid_mask,
                                   code, strict, occlusion_tol, out.chunk)
    else:
        _launch(backend, "reprojection_error_forward", depth, image, pair_matrices, pairs, code, strict, occlusion_tol,
                sizes={"chunks": out.chunks, "chunk": out.chunk}, partials=out.partials, error_map=out.error_map,
                valid_mask=out.valid_mask)
    return _pairwise.reduce_scores(depth, pairs, out)


def _backward_kernel(backend, grad_error, grad_map, depth, image, pair_matrices, pairs, error, validity,
                     occlusion_tol, need_depth, need_image):
    acc = _acc(depth.dtype)
    grad_depth = torch.zeros(depth.shape, dtype=acc, device=depth.device) if need_depth else None
    grad_image = torch.zeros(image.shape, dtype=acc, device=depth.device) if need_image else None
    code, strict = ERROR_CODES[error], validity == "strict"
    if backend == "triton":
        from ..kernels.reprojection_error import reprojection_error_backward

        reprojection_error_backward(depth, image, pair_matrices, pairs, grad_error, grad_map, grad_depth, grad_image,
                                    code, strict, occlusion_tol)
    else:
        _launch(backend, "reprojection_error_backward", depth, image, pair_matrices, pairs, code, strict,
                occlusion_tol, grad_error=grad_error, grad_map=grad_map, grad_depth=grad_depth, grad_image=grad_image)
    return grad_depth, grad_image


def _kernel_inputs(depth, image, pairs, error, validity):
    """What the kernels index with, checked inside the custom ops (which run eagerly even within a
    compiled graph, and may be called directly): pairs in range, an image of depth's shape when
    the error is photometric and none otherwise. Returns the pairs, contiguous."""
    if error not in ERROR_CODES or validity not in VALIDITY_MODES:
        raise ValueError(f"{OP}: unknown error {error!r} or validity {validity!r}")
    if (error == "photometric") != (image is not None):
        raise ValueError(f"{OP}: the photometric error needs an image and the depth errors take none "
                         f"(error={error!r}, image {'given' if image is not None else 'None'})")
    if image is not None and (image.dim() != 5 or image.shape[:2] != depth.shape[:2] or image.shape[2] < 1
                              or image.shape[3:] != depth.shape[2:] or image.dtype != depth.dtype
                              or image.device != depth.device):
        raise ValueError(f"{OP}: image must be a {depth.dtype} (B, T, C, H, W) tensor on {depth.device} with "
                         f"(B, T, H, W) = {tuple(depth.shape)}; got {image.dtype} {tuple(image.shape)}")
    return _checks.pair_indices(OP, pairs, depth.shape[1], depth.device)


# --------------------------------------------------------------------------------------------
# torch.library registration: opaque to torch.compile, differentiable w.r.t. depth and image.


@torch.library.custom_op("vgpa::reprojection_error", mutates_args=())
def _reprojection_op(depth: Tensor, image: Optional[Tensor], intrinsics: Tensor, extrinsics: Tensor, pairs: Tensor,
                     error: str, validity: str, occlusion_tol: Optional[float], return_map: bool,
                     backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    backend = _backend.kernel_backend(OP, backend)
    # The pair-index and camera checks run here, eagerly, even inside a compiled graph.
    pairs = _kernel_inputs(depth, image, pairs, error, validity)
    pair_matrices = camera.pair_projection(intrinsics, extrinsics, pairs).to(_acc(depth.dtype))
    pair_matrices = _checks.buffer(OP, "the pair matrices from intrinsics and extrinsics", pair_matrices,
                                   (depth.shape[0], pairs.shape[0], 3, 4), _acc(depth.dtype), depth.device)
    out = _forward_kernel(backend, depth, image, pair_matrices.view(-1, 12), pairs, error, validity,
                          occlusion_tol, return_map)
    return tuple(x.contiguous() for x in out) + (pair_matrices,)


@_reprojection_op.register_fake
def _(depth, image, intrinsics, extrinsics, pairs, error, validity, occlusion_tol, return_map, backend):
    matrices = depth.new_empty((depth.shape[0], pairs.shape[0], 3, 4), dtype=_acc(depth.dtype))
    return _pairwise.fake_scores(depth, pairs, return_map) + (matrices,)


@torch.library.custom_op("vgpa::reprojection_error_backward", mutates_args=())
def _reprojection_backward_op(grad_error: Tensor, grad_map: Optional[Tensor], depth: Tensor, image: Optional[Tensor],
                              intrinsics: Tensor, extrinsics: Tensor, pair_matrices: Tensor, pairs: Tensor,
                              error: str, validity: str, occlusion_tol: Optional[float], need_depth: bool,
                              need_image: bool, backend: str) -> tuple[Tensor, Tensor]:
    backend = _backend.kernel_backend(OP, backend)
    pairs = _kernel_inputs(depth, image, pairs, error, validity)
    batch, count, acc = depth.shape[0], pairs.shape[0], _acc(depth.dtype)
    pair_matrices = _checks.buffer(OP, "pair_matrices", pair_matrices, (batch, count, 3, 4), acc, depth.device)
    grad_error = _checks.buffer(OP, "grad_error", grad_error, (batch * count,), acc, depth.device)
    if grad_map is not None:
        grad_map = _checks.buffer(OP, "grad_map", grad_map, (batch, count) + depth.shape[2:], acc, depth.device)
    if need_image and image is None:
        raise ValueError(f"{OP}: need_image=True without an image")
    gd, gi = _backward_kernel(backend, grad_error, grad_map, depth, image, pair_matrices.view(-1, 12), pairs,
                              error, validity, occlusion_tol, need_depth, need_image)
    gd = depth.new_empty((0,)) if gd is None else gd.to(depth.dtype)
    gi = depth.new_empty((0,)) if gi is None else gi.to(image.dtype)
    return gd, gi


@_reprojection_backward_op.register_fake
def _(grad_error, grad_map, depth, image, intrinsics, extrinsics, pair_matrices, pairs, error, validity,
      occlusion_tol, need_depth, need_image, backend):
    gd = torch.empty_like(depth, memory_format=torch.contiguous_format) if need_depth else depth.new_empty((0,))
    gi = torch.empty_like(image, memory_format=torch.contiguous_format) if need_image else depth.new_empty((0,))
    return gd, gi


def _setup_context(ctx, inputs, output):
    depth, image, intrinsics, extrinsics, pairs, error, validity, occlusion_tol, return_map, backend = inputs
    _, count, _, _, pair_matrices = output
    ctx.save_for_backward(depth, image, intrinsics, extrinsics, pairs, pair_matrices, count)
    ctx.error, ctx.validity, ctx.occlusion_tol = error, validity, occlusion_tol
    ctx.return_map, ctx.backend = return_map, backend


def _backward(ctx, grad_mean, grad_count, grad_map, grad_mask, grad_matrices):
    depth, image, intrinsics, extrinsics, pairs, pair_matrices, count = ctx.saved_tensors
    need_depth, need_image = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if not (need_depth or need_image):
        return (None,) * 10
    scaled, grad_map = _pairwise.upstream_grads(grad_mean, grad_map, count, ctx.return_map, _acc(depth.dtype))
    gd, gi = _reprojection_backward_op(scaled, grad_map, depth, image, intrinsics, extrinsics, pair_matrices, pairs,
                                       ctx.error, ctx.validity, ctx.occlusion_tol, need_depth, need_image,
                                       ctx.backend)
    return (gd if need_depth else None, gi if need_image else None) + (None,) * 8


_reprojection_op.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("vgpa::unproject_depth", mutates_args=())
def _unproject_op(depth: Tensor, intrinsics: Tensor, extrinsics: Tensor, backend: str) -> tuple[Tensor, Tensor]:
    backend = _backend.kernel_backend("unproject_depth", backend)
    acc = _acc(depth.dtype)
    ray_maps = _checks.buffer("unproject_depth", "the ray maps from intrinsics and extrinsics",
                              camera.frame_ray_maps(intrinsics, extrinsics).to(acc),
                              depth.shape[:2] + (3, 4), acc, depth.device)  # (B, T, 3, 4)
    points = torch.empty(depth.shape + (3,), dtype=depth.dtype, device=depth.device)
    maps = ray_maps.view(-1, 12)
    if backend == "triton":
        from ..kernels.reprojection_error import unproject_depth

        unproject_depth(depth, maps, points)
    else:
        b, t, h, w = depth.shape
        _backend.launch_compiled(backend, "unproject_depth", depth.device, dtype=_backend.dtype_code(depth.dtype),
                                 frames_total=b * t, frames_per_video=t, height=h, width=w, depth=depth.data_ptr(),
                                 depth_strides=list(depth.stride()), ray_maps=maps.data_ptr(),
                                 points=points.data_ptr())
    return points, ray_maps


@_unproject_op.register_fake
def _(depth, intrinsics, extrinsics, backend):
    acc = _acc(depth.dtype)
    return (depth.new_empty(depth.shape + (3,)), depth.new_empty(depth.shape[:2] + (3, 4), dtype=acc))


def _unproject_setup(ctx, inputs, output):
    ctx.save_for_backward(output[1])
    ctx.depth_shape, ctx.depth_dtype = inputs[0].shape, inputs[0].dtype


def _unproject_backward(ctx, grad_points, grad_maps):
    (ray_maps,) = ctx.saved_tensors
    if grad_points is None or not ctx.needs_input_grad[0]:
        return None, None, None, None
    # d X / d z = M [u, v, 1]: grad_z = <grad, M [u, v, 1]> = (grad^T M) . [u, v, 1]
    acc = ray_maps.dtype
    height, width = ctx.depth_shape[-2:]
    u, v = camera.pixel_grid(height, width, dtype=acc, device=ray_maps.device)
    pulled = torch.einsum("bthwk,btkl->bthwl", grad_points.to(acc), ray_maps[..., :3])
    grad = pulled[..., 0] * u + pulled[..., 1] * v + pulled[..., 2]
    return grad.to(ctx.depth_dtype), None, None, None


_unproject_op.register_autograd(_unproject_backward, setup_context=_unproject_setup)


# --------------------------------------------------------------------------------------------
# Public API


def _resolve_error(op, error, image):
    if error is None:
        return "abs_rel" if image is None else "photometric"
    if image is None and error not in reference.DEPTH_ERRORS:
        hint = " (the photometric error needs image=)" if error == "photometric" else ""
        raise ValueError(f"{op}: unknown error {error!r}{hint}; choose one of {reference.DEPTH_ERRORS}")
    if image is not None and error != "photometric":
        raise ValueError(f"{op}: with image= the error is photometric; leave error=None or pass 'photometric' "
                         f"(got {error!r})")
    return error


def reprojection_error(depth: Tensor, intrinsics: Tensor, extrinsics: Tensor,
                       pairs: Union[Tensor, Sequence[Sequence[int]], None] = None, *, image: Optional[Tensor] = None,
                       error: Optional[str] = None, validity: str = "strict", occlusion_tol: Optional[float] = None,
                       return_map: bool = False, backend: str = "auto") -> ReprojectionErrorResult:
    """Depth-warp reprojection error of every frame pair of every video (docs/design.md 3.1).

    depth: (B, T, H, W) z-depth (float32, float16, bfloat16 or float64; any strides); a depth
    is valid iff finite and > 0, invalid pixels are excluded. intrinsics: (B, T, 3, 3) or
    (B, 3, 3). extrinsics: world-to-camera (B, T, 4, 4) or (B, T, 3, 4). pairs: (P, 2)
    (source i, target j) frame indices shared by the batch, default consecutive frames (see
    vgpa.adjacent_pairs / window_pairs / all_pairs).
    error: "abs_rel" |z'-d|/d (the default), "abs", "sq" or "log" |log z' - log d|, where z' is
    the warped source depth and d the bilinear sample of the target depth; with ``image``
    (B, T, C, H, W, same dtype as depth) the photometric error mean_c |I_i(p) - I_j(u', v')|.
    validity: "strict" (the warped point and every used tap valid) or "zeros" (grid_sample
    semantics with zero padding). occlusion_tol: drop pixels with z' > (1 + tol) d.
    Pixels whose error is not finite (e.g. abs_rel against a sampled 0) are dropped too.

    Returns :class:`ReprojectionErrorResult`; a pair without any valid pixel has error 0 and
    valid_count 0 (so it does not turn a batch mean into NaN; weight by valid_count > 0).
    Differentiable with respect to depth (through the source point and the bilinear sample of
    the target) and image. The forward pass is bitwise deterministic on every backend; the
    backward pass is deterministic on "cpu" and "torch", while "cuda" and "triton" scatter into
    the gradient with floating-point atomics (results vary in the last bits run to run).
    backend: "auto", "cuda", "triton", "cpu" or "torch". Raises ValueError for a singular K
    (checked on the host: one tiny device sync per call).
    """
    return _reprojection_error(OP, depth, intrinsics, extrinsics, pairs, image, error, validity, occlusion_tol,
                               return_map, backend)


def _reprojection_error(op, depth, intrinsics, extrinsics, pairs, image, error, validity, occlusion_tol, return_map,
                        backend):
    """reprojection_error, its errors reported under the public op name ``op`` (mvcs uses it)."""
    try:
        return _reprojection_error_checked(op, depth, intrinsics, extrinsics, pairs, image, error, validity,
                                           occlusion_tol, return_map, backend)
    except camera.CameraError as exc:  # raised by the camera algebra, which does not know the op
        raise camera.named(op, exc) from None


def _reprojection_error_checked(op, depth, intrinsics, extrinsics, pairs, image, error, validity, occlusion_tol,
                                return_map, backend):
    _checks.depth(op, depth)
    batch, frames, height, width = depth.shape
    intrinsics, extrinsics = _checks.cameras(op, depth, intrinsics, extrinsics)
    if image is not None:
        _checks.tensor(op, "image", image, depth)
        if image.dtype != depth.dtype:
            raise TypeError(f"{op}: image has dtype {image.dtype} but depth has {depth.dtype}; cast them to one dtype")
        if image.dim() != 5 or image.shape[:2] != depth.shape[:2] or image.shape[3:] != depth.shape[2:] \
                or image.shape[2] == 0:
            raise ValueError(f"{op}: image must be (B, T, C, H, W) = ({batch}, {frames}, C, {height}, {width}), "
                             f"got {tuple(image.shape)}")
    error = _resolve_error(op, error, image)
    if not isinstance(return_map, bool):
        raise TypeError(f"{op}: return_map must be a bool, got {type(return_map).__name__}")
    if validity not in VALIDITY_MODES:
        raise ValueError(f"{op}: unknown validity {validity!r}; choose one of {VALIDITY_MODES}")
    occlusion_tol = _checks.occlusion_tol(op, occlusion_tol)
    pairs = _checks.pairs(op, pairs, frames, depth.device)
    resolved = _backend.resolve(backend, depth.device, op)
    if resolved == "torch":  # the reference, differentiated by autograd
        pairs = _checks.checked_pairs(pairs, frames, op)
        kind = "abs_rel" if error == "photometric" else error
        mean, count, error_map, valid_mask = reference.reprojection_error(depth, intrinsics, extrinsics, pairs, image,
                                                                          kind, validity, occlusion_tol)
        if return_map:
            return ReprojectionErrorResult(mean, count, error_map, valid_mask)
        return ReprojectionErrorResult(mean, count)
    mean, count, error_map, valid_mask, _ = _reprojection_op(depth, image, intrinsics, extrinsics, pairs, error,
                                                             validity, occlusion_tol, bool(return_map), resolved)
    if return_map:
        return ReprojectionErrorResult(mean, count, error_map, valid_mask)
    return ReprojectionErrorResult(mean, count)


def mvcs(depth: Tensor, intrinsics: Tensor, extrinsics: Tensor, backend: str = "auto") -> Tensor:
    """VideoGPA's Multi-View Consistency Score (docs/design.md 3.1), higher is better, in (0, 1].

    Consecutive pairs (t, t+1), squared depth error, "zeros" validity, no occlusion test:
    MVCS = exp(-mean over the pairs that have >= 1 valid pixel of the pair's mean error).
    depth (T, H, W) with intrinsics (T, 3, 3) or (3, 3) and extrinsics (T, 4|3, 4) gives a
    scalar; depth (B, T, H, W) with batched cameras gives (B,). A video where no pair has a
    valid pixel scores NaN (undefined).
    """
    op = "mvcs"
    _checks.tensor(op, "depth", depth)
    _checks.tensor(op, "intrinsics", intrinsics, depth)
    _checks.tensor(op, "extrinsics", extrinsics, depth)
    if depth.dim() == 3:
        if intrinsics.dim() not in (2, 3) or extrinsics.dim() != 3:
            raise ValueError(f"{op}: for (T, H, W) depth pass intrinsics (T, 3, 3) or (3, 3) and extrinsics "
                             f"(T, 4|3, 4); got {tuple(intrinsics.shape)} and {tuple(extrinsics.shape)}")
        return mvcs(depth[None], intrinsics[None], extrinsics[None], backend)[0]
    result = _reprojection_error(op, depth, intrinsics, extrinsics, None, None, "sq", "zeros", None, False, backend)
    has = result.valid_count > 0
    mean = torch.where(has, result.error, 0).sum(1) / has.sum(1)
    return torch.exp(-mean)


def unproject_depth(depth: Tensor, intrinsics: Tensor, extrinsics: Tensor, backend: str = "auto") -> Tensor:
    """World points X_w = E^-1 (z K^-1 [u, v, 1]^T) of every pixel, fused: depth (B, T, H, W),
    intrinsics (B, T, 3, 3) or (B, 3, 3), extrinsics (B, T, 4|3, 4) -> (B, T, H, W, 3) in the
    depth's dtype. Every pixel is unprojected as it is (mask invalid depths yourself).
    Differentiable with respect to depth."""
    return _unproject_depth("unproject_depth", depth, intrinsics, extrinsics, backend)


def _unproject_depth(op, depth, intrinsics, extrinsics, backend):
    """unproject_depth, its errors reported under the public op name ``op`` (point_cloud uses it)."""
    _checks.depth(op, depth)
    intrinsics, extrinsics = _checks.cameras(op, depth, intrinsics, extrinsics)
    resolved = _backend.resolve(backend, depth.device, op)
    try:
        if resolved == "torch":
            return reference.unproject_depth(depth, intrinsics, extrinsics)
        return _unproject_op(depth, intrinsics, extrinsics, resolved)[0]
    except camera.CameraError as exc:
        raise camera.named(op, exc) from None


SPEC = OpSpec(
    "reprojection_error",
    exports={"reprojection_error": ("ReprojectionErrorResult", "reprojection_error", "unproject_depth")},
    instructions=InstructionCounts(("reprojection_error_forward_cpu", "reprojection_error_backward_cpu"),
                                   "ReprojectionErrorArgs", 2),
)
