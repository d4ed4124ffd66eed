"""Fused surface normals from depth and normal stability between frames (docs/design.md 3.2).

depth_to_normals: one pass over the depth writes the camera-frame normal of every pixel.
normal_stability: one launch scores every pair of every video; each program recomputes the
normal of the source pixel p and of the target pixel q it warps to from the five depths
around each, so no normal map is ever written. Partial sums over fixed chunks of pixels are
reduced in a fixed order (bitwise reproducible). Only the tiny per-frame K^-1 (B*T, 9) and
per-pair rotations (B*P, 9) and warp matrices (B*P, 12) are built in torch before the launch.
The backward pass scatters d loss / d normal into a (B*T, 3, H, W) buffer, then every depth
pixel gathers its gradient from the four normals that use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from .. import _backend, _checks, _pairwise
from .._dtypes import accumulation_dtype as _acc
from ..torch_math import camera
from ..reference import normal_stability as reference
from .registry import InstructionCounts, OpSpec

OP = "normal_stability"
FLOAT_DTYPES = _checks.FLOAT_DTYPES

# Pixels reduced into one partial sum, per backend: fixed, so sums are bitwise reproducible.
CHUNK = {"cpu": 4096, "cuda": 4096, "triton": 4096}

# Raw addresses the C++ bindings take, in their order (csrc/normal_stability_bindings.cpp).
@dataclass
class DepthToNormalsResult:
    """Output of :func:`depth_to_normals`.

    normals: (..., 3, H, W) unit camera-frame normals facing the camera (n . X <= 0), in the
    depth's dtype; 0 where there is no normal. valid: (..., H, W) bool, where there is one.
    """

    normals: Tensor
    valid: Tensor


@dataclass
class NormalStabilityResult:
    """Output of :func:`normal_stability`.

    error: (B, P) mean of 1 - cos over the valid pixels of each (video, pair), in float32
    (float64 for float64 depth); 0 where the pair has no valid pixel. valid_count: (B, P) int64.
    error_map: (B, P, H, W) per-pixel error, 0 where invalid, and valid_mask: (B, P, H, W) bool,
    both only with ``return_map=True`` (None otherwise).
    """

    error: Tensor
    valid_count: Tensor
    error_map: Optional[Tensor] = None
    valid_mask: Optional[Tensor] = None


# --------------------------------------------------------------------------------------------
# Backend launches. depth is always (B, T, H, W) here (depth_to_normals: T = 1).


def _launch(backend, name, depth, *, sizes=(), **buffers):
    """Calls the compiled kernel ``<name>_cpu`` or ``<name>_cuda`` of csrc/normal_stability with its
    fields by name; ``buffers``: the kernel's tensors (None: absent), ``sizes``: its other fields."""
    batch, frames, height, width = depth.shape
    _backend.launch_compiled(backend, name, depth.device, dtype=_backend.dtype_code(depth.dtype), batch=batch,
                             frames=frames, height=height, width=width, depth=depth.data_ptr(),
                             depth_strides=list(depth.stride()), **dict(sizes),
                             **{field: t.data_ptr() for field, t in buffers.items() if t is not None})


def _pair_sizes(pairs, warp, occlusion_tol, **more) -> dict:
    """The fields of the pair kernels besides their tensors."""
    return dict(pairs=pairs.shape[0], warp=bool(warp), occlusion=occlusion_tol is not None,
                occlusion_tol=0.0 if occlusion_tol is None else float(occlusion_tol), **more)


def _normals_kernel(backend, depth, kinv):
    batch, frames, height, width = depth.shape
    normals = torch.empty((batch * frames, 3, height, width), dtype=depth.dtype, device=depth.device)
    valid = torch.empty((batch * frames, height, width), dtype=torch.uint8, device=depth.device)
    if backend == "triton":
        from ..kernels.normal_stability import depth_to_normals

        depth_to_normals(depth, kinv, normals, valid)
    else:
        _launch(backend, "depth_to_normals", depth, inverse_intrinsics=kinv, normals=normals, normals_valid=valid)
    return normals, valid.view(torch.bool)


def _normals_backward_kernel(backend, depth, kinv, grad_normals):
    """grad_normals (B*T, 3, H, W) contiguous accumulation dtype -> d loss / d depth (B*T, H, W)."""
    batch, frames, height, width = depth.shape
    grad_depth = torch.empty((batch * frames, height, width), dtype=grad_normals.dtype, device=depth.device)
    if backend == "triton":
        from ..kernels.normal_stability import depth_to_normals_backward

        depth_to_normals_backward(depth, kinv, grad_normals, grad_depth)
    else:
        _launch(backend, "depth_to_normals_backward", depth, inverse_intrinsics=kinv, grad_normals=grad_normals,
                grad_depth=grad_depth)
    return grad_depth


def _stability_kernel(backend, depth, kinv, rotations, pair_matrices, pairs, warp, occlusion_tol, return_map):
    out = _pairwise.score_buffers(depth, pairs, CHUNK[backend], return_map)
    if backend == "triton":
        from ..kernels.normal_stability import normal_stability_forward

        normal_stability_forward(depth, kinv, rotations, pair_matrices, pairs, out.partials, out.error_map,
                                 out.valid_mask, warp, occlusion_tol, out.chunk)
    else:
        _launch(backend, "normal_stability_forward", depth,
                sizes=_pair_sizes(pairs, warp, occlusion_tol, chunks=out.chunks, chunk=out.chunk), inverse_intrinsics=kinv, rotations=rotations, pair_matrices=pair_matrices, pair_frames=pairs,
                partials=out.partials, error_map=out.error_map, valid_mask=out.valid_mask)
    return _pairwise.reduce_scores(depth, pairs, out)


def _stability_backward_kernel(backend, grad_error, grad_map, depth, kinv, rotations, pair_matrices, pairs, warp,
                               occlusion_tol):
    batch, frames, height, width = depth.shape
    grad_normals = torch.zeros((batch * frames, 3, height, width), dtype=_acc(depth.dtype), device=depth.device)
    if backend == "triton":
        from ..kernels.normal_stability import normal_stability_backward

        normal_stability_backward(depth, kinv, rotations, pair_matrices, pairs, grad_error, grad_map, grad_normals,
                                  warp, occlusion_tol)
    else:
        _launch(backend, "normal_stability_backward", depth, sizes=_pair_sizes(pairs, warp, occlusion_tol),
                inverse_intrinsics=kinv, rotations=rotations, pair_matrices=pair_matrices, pair_frames=pairs,
                grad_error=grad_error, grad_map=grad_map, grad_normals=grad_normals)
    return _normals_backward_kernel(backend, depth, kinv, grad_normals).view(depth.shape)


def _pair_operators(intrinsics, extrinsics, pairs, warp, acc):
    """K^-1 per frame (B*T, 9), R_ji (B*P, 9) and the warp matrices (B*P, 12), contiguous in
    the accumulation dtype; identities without warp (the kernels then never read them)."""
    batch, frames = intrinsics.shape[:2]
    kinv = camera.inverse_intrinsics(intrinsics).to(acc).reshape(batch * frames, 9).contiguous()
    if warp:
        pair_matrices = camera.pair_projection(intrinsics, extrinsics, pairs).to(acc)
        rotations = camera.relative_transform(extrinsics, pairs)[..., :3, :3].to(acc)
    else:
        eye = torch.eye(3, 4, dtype=acc, device=intrinsics.device)
        pair_matrices = eye.expand(batch, pairs.shape[0], 3, 4)
        rotations = eye[:, :3].expand(batch, pairs.shape[0], 3, 3)
    return kinv, rotations.reshape(-1, 9).contiguous(), pair_matrices.reshape(-1, 12).contiguous()


def _check_depth(op, depth, frames=None):
    """Inside the custom ops: depth is (B, T, H, W) in a kernel dtype (T = ``frames`` when given)."""
    if depth.dim() != 4 or depth.dtype not in FLOAT_DTYPES or (frames is not None and depth.shape[1] != frames):
        raise ValueError(f"{op}: the kernels take a (B, {'T' if frames is None else frames}, H, W) depth in one of "
                         f"{FLOAT_DTYPES}, got {depth.dtype} {tuple(depth.shape)}")


def _pair_buffers(depth, pairs, kinv, rotations, pair_matrices):
    """K^-1 (B*T, 9), R_ji (B*P, 9) and the warp matrices (B*P, 12): the sizes the kernels index."""
    batch, frames = depth.shape[:2]
    rows, acc = batch * pairs.shape[0], _acc(depth.dtype)
    return (_checks.buffer(OP, "kinv", kinv, (batch * frames, 9), acc, depth.device),
            _checks.buffer(OP, "rotations", rotations, (rows, 9), acc, depth.device),
            _checks.buffer(OP, "pair_matrices", pair_matrices, (rows, 12), acc, depth.device))


# --------------------------------------------------------------------------------------------
# torch.library registration: opaque to torch.compile, differentiable w.r.t. depth.


@torch.library.custom_op("vgpa::depth_to_normals", mutates_args=())
def _normals_op(depth: Tensor, intrinsics: Tensor, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    backend = _backend.kernel_backend("depth_to_normals", backend)
    # depth (N, 1, H, W), intrinsics (N, 3, 3); K is checked here, eagerly, even when compiled.
    _check_depth("depth_to_normals", depth, 1)
    kinv = _checks.buffer("depth_to_normals", "intrinsics", intrinsics, (depth.shape[0], 3, 3), intrinsics.dtype,
                          depth.device)
    kinv = camera.inverse_intrinsics(kinv).to(_acc(depth.dtype)).reshape(-1, 9).contiguous()
    normals, valid = _normals_kernel(backend, depth, kinv)
    return normals, valid, kinv


@_normals_op.register_fake
def _(depth, intrinsics, backend):
    n, _, height, width = depth.shape
    return (depth.new_empty((n, 3, height, width)), depth.new_empty((n, height, width), dtype=torch.bool),
            depth.new_empty((n, 9), dtype=_acc(depth.dtype)))


@torch.library.custom_op("vgpa::depth_to_normals_backward", mutates_args=())
def _normals_backward_op(grad_normals: Tensor, depth: Tensor, kinv: Tensor, backend: str) -> Tensor:
    backend = _backend.kernel_backend("depth_to_normals", backend)
    _check_depth("depth_to_normals", depth, 1)
    n, _, height, width = depth.shape
    kinv = _checks.buffer("depth_to_normals", "kinv", kinv, (n, 9), _acc(depth.dtype), depth.device)
    grad_normals = _checks.buffer("depth_to_normals", "grad_normals", grad_normals.to(kinv.dtype),
                                  (n, 3, height, width), kinv.dtype, depth.device)
    grad = _normals_backward_kernel(backend, depth, kinv, grad_normals)
    return grad.view(depth.shape).to(depth.dtype)


@_normals_backward_op.register_fake
def _(grad_normals, depth, kinv, backend):
    return torch.empty_like(depth, memory_format=torch.contiguous_format)


def _normals_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], output[2])
    ctx.backend = inputs[2]


def _normals_backward(ctx, grad_normals, grad_valid, grad_kinv):
    depth, kinv = ctx.saved_tensors
    if grad_normals is None or not ctx.needs_input_grad[0]:
        return None, None, None
    return _normals_backward_op(grad_normals, depth, kinv, ctx.backend), None, None


_normals_op.register_autograd(_normals_backward, setup_context=_normals_setup)


@torch.library.custom_op("vgpa::normal_stability", mutates_args=())
def _stability_op(depth: Tensor, intrinsics: Tensor, extrinsics: Optional[Tensor], pairs: Tensor, warp: bool,
                  occlusion_tol: Optional[float], return_map: bool,
                  backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    backend = _backend.kernel_backend(OP, backend)
    # The pair-index and camera checks run here, eagerly, even inside a compiled graph.
    _check_depth(OP, depth)
    pairs = _checks.pair_indices(OP, pairs, depth.shape[1], depth.device)
    if warp and extrinsics is None:
        raise ValueError(f"{OP}: extrinsics are needed with warp=True")
    intrinsics = _checks.buffer(OP, "intrinsics", intrinsics, depth.shape[:2] + (3, 3), intrinsics.dtype,
                                depth.device)
    kinv, rotations, pair_matrices = _pair_operators(intrinsics, extrinsics, pairs, warp, _acc(depth.dtype))
    kinv, rotations, pair_matrices = _pair_buffers(depth, pairs, kinv, rotations, pair_matrices)
    out = _stability_kernel(backend, depth, kinv, rotations, pair_matrices, pairs, warp, occlusion_tol, return_map)
    return tuple(x.contiguous() for x in out) + (kinv, rotations, pair_matrices)


@_stability_op.register_fake
def _(depth, intrinsics, extrinsics, pairs, warp, occlusion_tol, return_map, backend):
    batch, frames = depth.shape[:2]
    acc = _acc(depth.dtype)
    return _pairwise.fake_scores(depth, pairs, return_map) + (
        depth.new_empty((batch * frames, 9), dtype=acc), depth.new_empty((batch * pairs.shape[0], 9), dtype=acc),
        depth.new_empty((batch * pairs.shape[0], 12), dtype=acc))


@torch.library.custom_op("vgpa::normal_stability_backward", mutates_args=())
def _stability_backward_op(grad_error: Tensor, grad_map: Optional[Tensor], depth: Tensor, kinv: Tensor,
                           rotations: Tensor, pair_matrices: Tensor, pairs: Tensor, warp: bool,
                           occlusion_tol: Optional[float], backend: str) -> Tensor:
    backend = _backend.kernel_backend(OP, backend)
    _check_depth(OP, depth)
    pairs = _checks.pair_indices(OP, pairs, depth.shape[1], depth.device)
    kinv, rotations, pair_matrices = _pair_buffers(depth, pairs, kinv, rotations, pair_matrices)
    batch, count, acc = depth.shape[0], pairs.shape[0], _acc(depth.dtype)
    grad_error = _checks.buffer(OP, "grad_error", grad_error, (batch * count,), acc, depth.device)
    if grad_map is not None:
        grad_map = _checks.buffer(OP, "grad_map", grad_map, (batch, count) + depth.shape[2:], acc, depth.device)
    grad = _stability_backward_kernel(backend, grad_error, grad_map, depth, kinv, rotations, pair_matrices, pairs,
                                      warp, occlusion_tol)
    return grad.to(depth.dtype)


@_stability_backward_op.register_fake
def _(grad_error, grad_map, depth, kinv, rotations, pair_matrices, pairs, warp, occlusion_tol, backend):
    return torch.empty_like(depth, memory_format=torch.contiguous_format)


def _stability_setup(ctx, inputs, output):
    depth, _, _, pairs, warp, occlusion_tol, return_map, backend = inputs
    _, count, _, _, kinv, rotations, pair_matrices = output
    ctx.save_for_backward(depth, pairs, count, kinv, rotations, pair_matrices)
    ctx.warp, ctx.occlusion_tol, ctx.return_map, ctx.backend = warp, occlusion_tol, return_map, backend


def _stability_backward(ctx, grad_mean, grad_count, grad_map, grad_mask, grad_kinv, grad_rotations, grad_matrices):
    depth, pairs, count, kinv, rotations, pair_matrices = ctx.saved_tensors
    if not ctx.needs_input_grad[0]:
        return (None,) * 8
    scaled, grad_map = _pairwise.upstream_grads(grad_mean, grad_map, count, ctx.return_map, kinv.dtype)
    grad = _stability_backward_op(scaled, grad_map, depth, kinv, rotations, pair_matrices, pairs, ctx.warp,
                                  ctx.occlusion_tol, ctx.backend)
    return (grad,) + (None,) * 7


_stability_op.register_autograd(_stability_backward, setup_context=_stability_setup)


# --------------------------------------------------------------------------------------------
# Public API


def depth_to_normals(depth: Tensor, intrinsics: Tensor, backend: str = "auto") -> DepthToNormalsResult:
    """Camera-frame surface normals from z-depth by central differences (docs/design.md 3.2).

    depth: (..., H, W) (float32, float16, bfloat16 or float64; any strides); a depth is valid
    iff finite and > 0. intrinsics: (..., 3, 3), broadcastable to depth's leading shape (e.g.
    (3, 3) for every frame). With X(u, v) = z K^-1 [u, v, 1], d_u = X(u+1, v) - X(u-1, v),
    d_v = X(u, v+1) - X(u, v-1): n = normalize(d_u x d_v), flipped so that n . X <= 0 (toward
    the camera). A pixel has a normal iff it and its four neighbours are inside the image with
    valid depths and |d_u x d_v| > 0 (finite): the one-pixel border never has one. Pixels
    without a normal hold 0.

    Returns :class:`DepthToNormalsResult` (normals (..., 3, H, W) in depth's dtype, valid
    (..., H, W) bool). Differentiable with respect to depth; forward and backward are bitwise
    deterministic on every backend (the backward is a gather). backend: "auto", "cuda",
    "triton", "cpu" or "torch". Raises ValueError for a singular K.
    """
    op = "depth_to_normals"
    _checks.depth(op, depth, batched=False)
    _checks.tensor(op, "intrinsics", intrinsics, depth)
    lead, (height, width) = depth.shape[:-2], depth.shape[-2:]
    try:
        broadcast = torch.broadcast_shapes(intrinsics.shape[:-2], lead) if intrinsics.dim() >= 2 else None
    except RuntimeError:
        broadcast = None
    if intrinsics.shape[-2:] != (3, 3) or broadcast != lead:
        raise ValueError(f"{op}: intrinsics must be (..., 3, 3) broadcastable to depth's leading shape "
                         f"{tuple(lead)}; got {tuple(intrinsics.shape)}")
    resolved = _backend.resolve(backend, depth.device, op)
    flat = depth.reshape(-1, 1, height, width)  # a view unless the leading axes cannot merge
    k = intrinsics.expand(lead + (3, 3)).reshape(-1, 3, 3)
    try:
        if resolved == "torch":
            normals, valid = reference.depth_to_normals(flat[:, 0],
                                                        camera.inverse_intrinsics(k).to(_acc(depth.dtype)))
            normals = normals.to(depth.dtype)
        else:
            normals, valid, _ = _normals_op(flat, k, resolved)
    except camera.CameraError as exc:  # raised by the camera algebra, which does not know the op
        raise camera.named(op, exc) from None
    return DepthToNormalsResult(normals.view(lead + (3, height, width)), valid.view(depth.shape))


def normal_stability(depth: Tensor, intrinsics: Tensor, extrinsics: Optional[Tensor],
                     pairs: Union[Tensor, Sequence[Sequence[int]], None] = None, *, warp: bool = True,
                     occlusion_tol: Optional[float] = None, return_map: bool = False,
                     backend: str = "auto") -> NormalStabilityResult:
    """Surface-normal stability of every frame pair of every video (docs/design.md 3.2).

    depth: (B, T, H, W) z-depth (float32, float16, bfloat16 or float64; any strides).
    intrinsics: (B, T, 3, 3) or (B, 3, 3). extrinsics: world-to-camera (B, T, 4, 4) or
    (B, T, 3, 4); may be None when ``warp=False``. pairs: (P, 2) (source i, target j) frame
    indices shared by the batch, default consecutive frames (vgpa.adjacent_pairs etc.).

    For a source pixel p with a normal n_i(p) (see :func:`depth_to_normals`), p is warped into
    frame j with the "strict" validity of :func:`vgpa.reprojection_error` (z' > 0, inside
    [0, W-1] x [0, H-1], every used bilinear tap a valid depth), q = round-half-even(u', v'),
    and e(p) = 1 - clamp(<R_ji n_i(p), n_j(q)>, -1, 1) where n_j(q) exists. ``warp=False``
    compares n_i(p) with n_j(p), no rotation (static camera). occlusion_tol: drop p when
    z' > (1 + tol) d, d the bilinear sample of D_j at (u', v') (without warp: z_i(p) against
    z_j(p)). Normals are recomputed inside the kernel, never stored.

    Returns :class:`NormalStabilityResult`; a pair without any valid pixel has error 0 and
    valid_count 0 (as :func:`vgpa.reprojection_error`). Differentiable with respect to depth,
    through both normals (the warp only picks q, a discrete choice). The forward pass is
    bitwise deterministic on every backend; the backward pass is deterministic on "cpu" and
    "torch", while "cuda" and "triton" scatter d loss / d normal with floating-point atomics
    (results vary in the last bits run to run). backend: "auto", "cuda", "triton", "cpu" or
    "torch". Raises ValueError for a singular K (checked on the host).
    """
    op = "normal_stability"
    _checks.depth(op, depth)
    frames = depth.shape[1]
    _checks.tensor(op, "intrinsics", intrinsics, depth)
    intrinsics = _checks.intrinsics_shape(op, depth, intrinsics)
    for name, flag in (("warp", warp), ("return_map", return_map)):
        if not isinstance(flag, bool):
            raise TypeError(f"{op}: {name} must be a bool, got {type(flag).__name__}")
    if extrinsics is None:
        if warp:
            raise ValueError(f"{op}: extrinsics are needed with warp=True (pass warp=False for a static camera)")
    else:
        _checks.tensor(op, "extrinsics", extrinsics, depth)
        _checks.extrinsics_shape(op, depth, extrinsics)
    occlusion_tol = _checks.occlusion_tol(op, occlusion_tol)
    pairs = _checks.pairs(op, pairs, frames, depth.device)
    resolved = _backend.resolve(backend, depth.device, op)
    try:
        if resolved == "torch":  # the reference, differentiated by autograd
            pairs = _checks.checked_pairs(pairs, frames, op)
            mean, count, error_map, valid_mask = reference.normal_stability(depth, intrinsics, extrinsics, pairs,
                                                                            warp, occlusion_tol)
        else:
            mean, count, error_map, valid_mask, _, _, _ = _stability_op(depth, intrinsics,
                                                                        extrinsics if warp else None, pairs, warp,
                                                                        occlusion_tol, bool(return_map), resolved)
    except camera.CameraError as exc:  # raised by the camera algebra, which does not know the op
        raise camera.named(op, exc) from None
    if return_map:
        return NormalStabilityResult(mean, count, error_map, valid_mask)
    return NormalStabilityResult(mean, count)


SPEC = OpSpec(
    "normal_stability",
    exports={"normal_stability": ("DepthToNormalsResult", "NormalStabilityResult", "depth_to_normals",
                                  "normal_stability")},
    instructions=InstructionCounts(("depth_to_normals_cpu", "depth_to_normals_backward_cpu",
                                    "normal_stability_forward_cpu", "normal_stability_backward_cpu"),
                                   "NormalStabilityArgs", 2),
)
