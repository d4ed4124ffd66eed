"""Epipolar kernels (docs/design.md 3.6): the Sampson distance of every match of every frame pair,
and the RANSAC inlier count of every hypothesis of every pair, each in one launch.

Matches (the ``x1``, ``x2`` and ``counts`` arguments), per frame pair p with fundamental matrix
F_p (x2^T F_p x1 = 0, pixel coordinates (u, v) as in docs/design.md 2):
- packed: x1, x2 (M_total, 2) and ``counts`` (P,) (required): pair p owns the counts[p] rows
  after those of the pairs before it. Nothing is padded to the largest pair.
- padded: x1, x2 (P, M, 2); with ``counts`` (P,) only the first counts[p] rows of pair p are
  matches, the rest is padding (never read; its distance is NaN, its gradient 0).

The Sampson expression, its evaluation order and its gradient are stated in
vgpa.reference.epipolar, which the "torch" backend runs (differentiated by autograd). Every
operation is rounded on its own in every backend, so a distance and the inlier decision
d^2 <= threshold^2 taken from it are the same bits on every backend.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from .. import _backend
from ..reference import epipolar as reference
from ..torch_math.epipolar import threshold_squared
from .registry import InstructionCounts, OpSpec

OP_SAMPSON = "sampson_distance"
OP_RANSAC = "ransac_inlier_count"
DTYPES = (torch.float32, torch.float64)
PACKED = -1  # the ``capacity`` of packed matches (padded ones pass their rows per pair, M)

# Matches per partial dF sum of the backward, per backend: fixed, so gradients are bitwise
# reproducible.
CHUNK = {"cpu": 4096, "cuda": 2048, "triton": 2048}

Counts = Optional[Union[Tensor, Sequence[int]]]


# --------------------------------------------------------------------------------------------
# Checks inside the custom ops (eager, also within a compiled graph and for a direct
# torch.ops.vgpa call): everything a kernel indexes with.


def _check_matches(op, fundamental, x1, x2, counts, capacity, f_dims):
    """fundamental (P, 3, 3) or (P, H, 3, 3) (``f_dims`` 3 or 4) and x1, x2 (N, 2) of one float dtype and device, counts (P,)
    int64 that place every pair inside the rows: a packed layout (``capacity`` PACKED) needs
    counts summing to N, a padded one (``capacity`` M) N = P M and counts <= M. Reads the
    counts on the host (one sync on a GPU). Returns (offsets (P,) int64, the largest count)."""
    dtype, device = fundamental.dtype, fundamental.device
    if dtype not in DTYPES or fundamental.dim() != f_dims or fundamental.shape[-2:] != (3, 3):
        what = "(P, 3, 3)" if f_dims == 3 else "(P, H, 3, 3)"
        raise ValueError(f"{op}: the kernels take F {what} in one of {DTYPES}, got {dtype} "
                         f"{tuple(fundamental.shape)}")
    pairs = fundamental.shape[0]
    for name, x in (("x1", x1), ("x2", x2)):
        if x.dim() != 2 or x.shape[1] != 2 or x.shape[0] != x1.shape[0] or x.dtype != dtype or x.device != device:
            raise ValueError(f"{op}: {name} must be a {dtype} (N, 2) tensor on {device} with N = {x1.shape[0]}, "
                             f"got {x.dtype} {tuple(x.shape)} on {x.device}")
    if counts.shape != (pairs,) or counts.dtype != torch.int64 or counts.device != device:
        raise ValueError(f"{op}: counts must be an int64 tensor of shape ({pairs},) on {device}, got {counts.dtype} "
                         f"{tuple(counts.shape)} on {counts.device}")
    rows = x1.shape[0]
    values = counts.tolist()
    for p, count in enumerate(values):
        if count < 0:
            raise ValueError(f"{op}: counts[{p}] = {count} is negative")
    if capacity == PACKED:
        if sum(values) != rows:
            raise ValueError(f"{op}: packed counts sum to {sum(values)} but x1 and x2 hold {rows} matches")
        offsets = torch.cumsum(counts, 0) - counts
    else:
        if capacity < 0 or pairs * capacity != rows:
            raise ValueError(f"{op}: padded matches of {pairs} pairs x {capacity} rows have {pairs * max(capacity, 0)} "
                             f"rows, got {rows}")
        for p, count in enumerate(values):
            if count > capacity:
                raise ValueError(f"{op}: counts[{p}] = {count} exceeds the {capacity} rows of a pair")
        offsets = torch.arange(pairs, dtype=torch.int64, device=device) * capacity
    return offsets, max(values, default=0)


def _launch(backend, name, fundamental, x1, x2, offsets, counts, max_count, *, sizes=(), **buffers):
    """Calls the compiled kernel ``<name>_cpu`` or ``<name>_cuda`` of csrc/epipolar with its fields
    by name: the matches' fields, ``sizes`` (the kernel's other numbers) and ``buffers`` (its own
    tensors)."""
    _backend.launch_compiled(backend, name, x1.device, dtype=_backend.dtype_code(x1.dtype), pairs=counts.shape[0],
                             hypotheses=fundamental.shape[1] if fundamental.dim() == 4 else 1, rows=x1.shape[0],
                             max_count=max_count, fundamental=fundamental.data_ptr(), x1=x1.data_ptr(),
                             x2=x2.data_ptr(), offsets=offsets.data_ptr(), counts=counts.data_ptr(), **dict(sizes),
                             **{field: t.data_ptr() for field, t in buffers.items()})


# --------------------------------------------------------------------------------------------
# torch.library registration: opaque to torch.compile; the Sampson distance is differentiable
# with respect to F, x1 and x2.


@torch.library.custom_op("vgpa::sampson_distance", mutates_args=())
def _sampson_op(fundamental: Tensor, x1: Tensor, x2: Tensor, counts: Tensor, capacity: int, squared: bool,
                backend: str) -> Tensor:
    backend = _backend.kernel_backend(OP_SAMPSON, backend)
    fundamental, x1, x2 = fundamental.contiguous(), x1.contiguous(), x2.contiguous()
    offsets, max_count = _check_matches(OP_SAMPSON, fundamental, x1, x2, counts, capacity, 3)
    out = torch.full((x1.shape[0],), torch.nan, dtype=x1.dtype, device=x1.device)
    if backend == "triton":
        from ..kernels.epipolar import sampson_distance_forward

        sampson_distance_forward(fundamental, x1, x2, offsets, counts, out, max_count, squared)
    else:
        _launch(backend, "sampson_distance_forward", fundamental, x1, x2, offsets, counts, max_count,
                sizes={"squared": squared}, distance=out)
    return out


@_sampson_op.register_fake
def _(fundamental, x1, x2, counts, capacity, squared, backend):
    return x1.new_empty((x1.shape[0],))


@torch.library.custom_op("vgpa::sampson_distance_backward", mutates_args=())
def _sampson_backward_op(grad: Tensor, fundamental: Tensor, x1: Tensor, x2: Tensor, counts: Tensor, capacity: int,
                         squared: bool, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    backend = _backend.kernel_backend(OP_SAMPSON, backend)
    fundamental, x1, x2 = fundamental.contiguous(), x1.contiguous(), x2.contiguous()
    offsets, max_count = _check_matches(OP_SAMPSON, fundamental, x1, x2, counts, capacity, 3)
    if grad.shape != (x1.shape[0],) or grad.dtype != x1.dtype or grad.device != x1.device:
        raise ValueError(f"{OP_SAMPSON}: the upstream gradient must be a {x1.dtype} ({x1.shape[0]},) tensor on "
                         f"{x1.device}, got {grad.dtype} {tuple(grad.shape)} on {grad.device}")
    grad = grad.contiguous()
    pairs, chunk = counts.shape[0], CHUNK[backend]
    chunks = -(-max_count // chunk)
    partials = torch.empty((pairs, chunks, 9), dtype=x1.dtype, device=x1.device)
    grad_x1, grad_x2 = torch.zeros_like(x1), torch.zeros_like(x2)
    if backend == "triton":
        from ..kernels.epipolar import sampson_distance_backward

        sampson_distance_backward(fundamental, x1, x2, offsets, counts, grad, partials, grad_x1, grad_x2, chunk,
                                  squared)
    else:
        _launch(backend, "sampson_distance_backward", fundamental, x1, x2, offsets, counts, max_count,
                sizes={"squared": squared, "chunk": chunk, "chunks": chunks}, grad_distance=grad, grad_partials=partials,
                grad_x1=grad_x1, grad_x2=grad_x2)
    return partials.sum(1).view(pairs, 3, 3), grad_x1, grad_x2


@_sampson_backward_op.register_fake
def _(grad, fundamental, x1, x2, counts, capacity, squared, backend):
    return (fundamental.new_empty((fundamental.shape[0], 3, 3)), torch.empty_like(x1, memory_format=torch.contiguous_format),
            torch.empty_like(x2, memory_format=torch.contiguous_format))


def _sampson_setup(ctx, inputs, output):
    fundamental, x1, x2, counts, capacity, squared, backend = inputs
    ctx.save_for_backward(fundamental, x1, x2, counts)
    ctx.capacity, ctx.squared, ctx.backend = capacity, squared, backend


def _sampson_backward(ctx, grad):
    fundamental, x1, x2, counts = ctx.saved_tensors
    if not any(ctx.needs_input_grad[:3]):
        return (None,) * 7
    grad_f, grad_x1, grad_x2 = _sampson_backward_op(grad, fundamental, x1, x2, counts, ctx.capacity, ctx.squared,
                                                    ctx.backend)
    wanted = ctx.needs_input_grad
    return (grad_f if wanted[0] else None, grad_x1 if wanted[1] else None, grad_x2 if wanted[2] else None,
            None, None, None, None)


_sampson_op.register_autograd(_sampson_backward, setup_context=_sampson_setup)


@torch.library.custom_op("vgpa::ransac_inlier_count", mutates_args=())
def _ransac_op(hypotheses: Tensor, x1: Tensor, x2: Tensor, counts: Tensor, capacity: int, threshold: float,
               backend: str) -> Tensor:
    backend = _backend.kernel_backend(OP_RANSAC, backend)
    hypotheses, x1, x2 = hypotheses.contiguous(), x1.contiguous(), x2.contiguous()
    offsets, max_count = _check_matches(OP_RANSAC, hypotheses, x1, x2, counts, capacity, 4)
    _check_threshold(threshold)
    limit = threshold_squared(threshold, x1.dtype)
    pairs, count = hypotheses.shape[:2]
    inliers = torch.zeros((pairs, count), dtype=torch.int64, device=x1.device)
    if backend == "triton":
        from ..kernels.epipolar import ransac_inlier_count

        ransac_inlier_count(hypotheses, x1, x2, offsets, counts, inliers, limit)
    else:
        _launch(backend, "ransac_inlier_count", hypotheses, x1, x2, offsets, counts, max_count,
                sizes={"threshold_squared": limit}, inliers=inliers)
    return inliers


@_ransac_op.register_fake
def _(hypotheses, x1, x2, counts, capacity, threshold, backend):
    return hypotheses.new_empty(hypotheses.shape[:2], dtype=torch.int64)


@torch.library.custom_op("vgpa::epipolar_match_layout", mutates_args=())
def _match_layout_op(fundamental: Tensor, x1: Tensor, x2: Tensor, counts: Tensor, capacity: int,
                     op: str) -> tuple[Tensor, Tensor]:
    """The kernels' match checks for the "torch" backend (plain torch code that torch.compile
    traces): as an op of its own they run when a compiled graph runs. Returns (offsets, a copy
    of counts), which the caller indexes with, so that the checks cannot be dropped."""
    offsets, _ = _check_matches(op, fundamental, x1, x2, counts, capacity, 3 if op == OP_SAMPSON else 4)
    return offsets, counts.clone()


@_match_layout_op.register_fake
def _(fundamental, x1, x2, counts, capacity, op):
    return torch.empty_like(counts), torch.empty_like(counts)


# --------------------------------------------------------------------------------------------
# Validation and the flat match layout


def _check_fundamental(op, name, fundamental, extra_dims):
    if not isinstance(fundamental, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(fundamental).__name__}")
    if fundamental.dtype not in DTYPES:
        raise TypeError(f"{op}: {name} has dtype {fundamental.dtype}; expected float32 or float64")
    what = "(P, " + "H, " * extra_dims + "3, 3)"
    if fundamental.dim() != 3 + extra_dims or fundamental.shape[-2:] != (3, 3):
        raise ValueError(f"{op}: {name} must be {what}, got {tuple(fundamental.shape)}")


def _check_threshold(threshold):
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"{OP_RANSAC}: threshold must be a number (pixels), got {type(threshold).__name__}")
    if not (math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"{OP_RANSAC}: threshold must be a finite number > 0 (pixels), got {threshold!r}")


def _counts_tensor(op, counts, pairs, device):
    if isinstance(counts, Tensor):
        if counts.dtype.is_floating_point or counts.dtype.is_complex or counts.dtype == torch.bool:
            raise TypeError(f"{op}: counts must be an integer tensor, got {counts.dtype}")
        if counts.device != device:
            raise ValueError(f"{op}: counts is on {counts.device} but F is on {device}")
        counts = counts.to(torch.int64)
    else:
        values = list(counts) if isinstance(counts, (list, tuple)) else None
        if values is None or not all(isinstance(c, int) and not isinstance(c, bool) for c in values):
            raise TypeError(f"{op}: counts must be an integer tensor or a list of ints, got {counts!r}")
        counts = torch.tensor(values, dtype=torch.int64, device=device)
    if counts.shape != (pairs,):
        raise ValueError(f"{op}: counts must have shape (P,) = ({pairs},), got {tuple(counts.shape)}")
    return counts.contiguous()  # non-negative, and summing to the rows, is checked inside the op


def _flat_matches(op, fundamental, x1, x2, counts):
    """(x1 (N, 2), x2 (N, 2), counts (P,) int64, capacity, padded) for the custom ops."""
    pairs, device, dtype = fundamental.shape[0], fundamental.device, fundamental.dtype
    for name, x in (("x1", x1), ("x2", x2)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype != dtype:
            raise TypeError(f"{op}: {name} has dtype {x.dtype} but F has {dtype}; cast them to one dtype")
        if x.device != device:
            raise ValueError(f"{op}: {name} is on {x.device} but F is on {device}")
    if x2.shape != x1.shape:
        raise ValueError(f"{op}: x2 must have the shape of x1, {tuple(x1.shape)}, got {tuple(x2.shape)}")
    if x1.dim() == 3 and x1.shape[0] == pairs and x1.shape[2] == 2:  # padded (P, M, 2)
        capacity = x1.shape[1]
        if counts is None:
            counts = torch.full((pairs,), capacity, dtype=torch.int64, device=device)
        else:  # counts <= M is checked inside the op
            counts = _counts_tensor(op, counts, pairs, device)
        return x1.reshape(-1, 2), x2.reshape(-1, 2), counts, capacity, True
    if x1.dim() == 2 and x1.shape[1] == 2:  # packed (M_total, 2)
        if counts is None:
            raise ValueError(f"{op}: packed matches (M_total, 2) need counts (P,), the matches of each pair")
        return x1, x2, _counts_tensor(op, counts, pairs, device), PACKED, False
    raise ValueError(f"{op}: x1 must be (M_total, 2) packed or (P, M, 2) = ({pairs}, M, 2) padded, "
                     f"got {tuple(x1.shape)}")


# --------------------------------------------------------------------------------------------
# Public API


def sampson_distance(F: Tensor, x1: Tensor, x2: Tensor, *, counts: Counts = None, squared: bool = False,
                     backend: str = "auto") -> Tensor:
    """Sampson distance of every match of every frame pair, in pixels (docs/design.md 3.6).

    F: (P, 3, 3) float32 or float64, mapping frame-1 points to frame-2 epipolar lines
    (x2^T F x1 = 0). x1, x2: the matches' pixel coordinates (u, v) in frame 1 and frame 2, of
    F's dtype and device, packed (M_total, 2) with ``counts`` (P,) (required), or padded
    (P, M, 2) with optional ``counts`` (P,) (rows past a pair's count are padding).
    Returns (M_total,) packed, or (P, M) padded with NaN at the padding:

        d^2 = (x2^T F x1)^2 / ((F x1)_1^2 + (F x1)_2^2 + (F^T x2)_1^2 + (F^T x2)_2^2)

    d (``squared=False``) or d^2 (``squared=True``), as kornia's sampson_epipolar_distance: no
    eps, and a match whose denominator is exactly 0 (both epipolar lines degenerate) is at
    distance inf. A NaN or inf coordinate makes its match's distance NaN, and no other.
    Computed in the input dtype, each operation rounded on its own in the order that
    vgpa.reference.epipolar states: bitwise the same on every backend.

    Differentiable with respect to F, x1 and x2 (an analytic backward, autograd on "torch"; each
    pair's dF is summed over fixed chunks of its matches in a fixed order, so gradients are
    deterministic).
    A match contributes no gradient where its upstream gradient is 0, its distance is the
    constant inf (denominator 0), or d == 0 for ``squared=False``.
    backend: "auto", "cuda", "triton", "cpu" or "torch".
    """
    op = OP_SAMPSON
    _check_fundamental(op, "F", F, 0)
    x1_flat, x2_flat, counts, capacity, padded = _flat_matches(op, F, x1, x2, counts)
    if not isinstance(squared, bool):
        raise TypeError(f"{op}: squared must be a bool, got {type(squared).__name__}")
    resolved = _backend.resolve(backend, F.device, op)
    if resolved == "torch":  # the reference, differentiated by autograd
        offsets, counts = _match_layout_op(F.detach(), x1_flat.detach(), x2_flat.detach(), counts, capacity, op)
        out = reference.sampson_distance(F, x1_flat, x2_flat, offsets, counts, squared)
    else:
        out = _sampson_op(F, x1_flat, x2_flat, counts, capacity, squared, resolved)
    return out.view(x1.shape[:2]) if padded else out


def ransac_inlier_count(F_hypotheses: Tensor, x1: Tensor, x2: Tensor, *, threshold: float, counts: Counts = None,
                        backend: str = "auto") -> Tensor:
    """Inlier count of every RANSAC hypothesis of every frame pair, in one fused launch.

    F_hypotheses: (P, H, 3, 3) float32 or float64, H candidate F per pair; a hypothesis with a
    NaN entry has 0 inliers. x1, x2, counts: the matches, packed or padded as for
    :func:`sampson_distance`. threshold: pixels, a finite number > 0.
    Returns (P, H) int64: the number of pair p's matches with

        sampson_distance(F_h, m, squared=True) <= threshold ** 2

    where threshold ** 2 is formed in double and rounded once to the input dtype, exactly as
    torch compares a tensor with that Python number: the count equals the masked count of
    :func:`sampson_distance` bit for bit, matches on the threshold included. NaN distances are
    never inliers. No gradient (an integer output).
    backend: "auto", "cuda", "triton", "cpu" or "torch".
    """
    op = OP_RANSAC
    _check_fundamental(op, "F_hypotheses", F_hypotheses, 1)
    x1_flat, x2_flat, counts, capacity, _ = _flat_matches(op, F_hypotheses, x1, x2, counts)
    _check_threshold(threshold)
    resolved = _backend.resolve(backend, F_hypotheses.device, op)
    hypotheses, x1_flat, x2_flat = F_hypotheses.detach(), x1_flat.detach(), x2_flat.detach()
    if resolved == "torch":
        offsets, counts = _match_layout_op(hypotheses, x1_flat, x2_flat, counts, capacity, op)
        return reference.ransac_inlier_count(hypotheses, x1_flat, x2_flat, offsets, counts, float(threshold))
    return _ransac_op(hypotheses, x1_flat, x2_flat, counts, capacity, float(threshold), resolved)


SPEC = OpSpec(
    "epipolar",
    exports={"epipolar": ("ransac_inlier_count", "sampson_distance"),
             "fundamental_matrix": ("FundamentalMatrixResult", "fundamental_matrix")},
    instructions=InstructionCounts(("sampson_distance_forward_cpu", "sampson_distance_backward_cpu",
                                    "ransac_inlier_count_cpu"), "EpipolarArgs", 1),
)
