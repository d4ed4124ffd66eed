"""Input checks shared by the geometry ops. Every function takes the public op's name, which
starts its messages, so a user sees which call failed."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .pairs import adjacent_pairs

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def tensor(op, name, x, ref=None, ref_name="depth"):
    """A floating-point tensor, on the device of ``ref`` (the depth, or what ``ref_name`` says)
    when given."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got dtype {x.dtype}")
    if ref is not None and x.device != ref.device:
        raise ValueError(f"{op}: {name} is on {x.device} but {ref_name} is on {ref.device}")


def depth(op, depth, batched=True):
    """A non-empty depth of a supported dtype: (B, T, H, W) when ``batched``, else (..., H, W)."""
    tensor(op, "depth", depth)
    if depth.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: depth has dtype {depth.dtype}; expected one of {FLOAT_DTYPES}")
    shape_ok = depth.dim() == 4 if batched else depth.dim() >= 2
    if depth.numel() == 0 or not shape_ok:
        what = "(B, T, H, W)" if batched else "(..., H, W)"
        raise ValueError(f"{op}: depth must be a non-empty {what} tensor, got shape {tuple(depth.shape)}")


def intrinsics_shape(op, depth, intrinsics):
    """(B, T, 3, 3), or (B, 3, 3) expanded to it without a copy, for depth (B, T, H, W)."""
    batch, frames = depth.shape[:2]
    if intrinsics.shape == (batch, 3, 3):
        intrinsics = intrinsics.unsqueeze(1).expand(batch, frames, 3, 3)
    if intrinsics.shape != (batch, frames, 3, 3):
        raise ValueError(f"{op}: intrinsics must be (B, T, 3, 3) or (B, 3, 3) = ({batch}, {frames}, 3, 3) or "
                         f"({batch}, 3, 3) for depth of shape {tuple(depth.shape)}; got {tuple(intrinsics.shape)}")
    return intrinsics


def extrinsics_shape(op, depth, extrinsics):
    batch, frames = depth.shape[:2]
    if extrinsics.shape not in ((batch, frames, 4, 4), (batch, frames, 3, 4)):
        raise ValueError(f"{op}: extrinsics must be (B, T, 4, 4) or (B, T, 3, 4) = ({batch}, {frames}, 4|3, 4) "
                         f"for depth of shape {tuple(depth.shape)}; got {tuple(extrinsics.shape)}")


def cameras(op, depth, intrinsics, extrinsics):
    """Returns intrinsics (B, T, 3, 3) and extrinsics (B, T, 3|4, 4), expanded without copies."""
    tensor(op, "intrinsics", intrinsics, depth)
    tensor(op, "extrinsics", extrinsics, depth)
    intrinsics = intrinsics_shape(op, depth, intrinsics)
    extrinsics_shape(op, depth, extrinsics)
    return intrinsics, extrinsics


def occlusion_tol(op, value):
    """None, or a finite number >= 0 as a float."""
    if value is None:
        return None
    if isinstance(value, (bool, Tensor)) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value < 0:
        raise ValueError(f"{op}: occlusion_tol must be None or a finite number >= 0, got {value!r}")
    return float(value)


def pairs(op, pairs, frames, device):
    """(P, 2) int64 frame pairs on ``device``; None means consecutive frames."""
    if pairs is None:
        if frames < 2:
            raise ValueError(f"{op}: the default consecutive pairs need T >= 2 frames, got T = {frames}")
        pairs = adjacent_pairs(frames)
    if not isinstance(pairs, Tensor):
        try:  # no dtype: a float index must fail below, not be truncated
            pairs = torch.tensor(pairs) if len(pairs) else torch.empty((0, 2), dtype=torch.int64)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"{op}: pairs must be a (P, 2) integer tensor or a sequence of (i, j), got {pairs!r}") \
                from exc
    if pairs.dtype.is_floating_point or pairs.dtype.is_complex or pairs.dtype == torch.bool:
        raise TypeError(f"{op}: pairs must hold integer frame indices, got dtype {pairs.dtype}")
    if pairs.dim() != 2 or pairs.shape[1] != 2 or pairs.shape[0] == 0:
        raise ValueError(f"{op}: pairs must have shape (P, 2) with P >= 1, got {tuple(pairs.shape)}")
    # The index range is checked where the pairs are used, inside the custom ops (see
    # pair_indices), so that it holds under torch.compile too.
    return pairs.to(device=device, dtype=torch.int64).contiguous()


def pair_indices(op, pairs, frames, device, source="depth"):
    """The (P, 2) int64 pairs a kernel may index frames with: every index in [0, frames).
    ``source``: the argument whose frames the pairs index, named in the messages.

    Called inside the custom ops, which run eagerly even within a compiled graph, before any
    kernel (or torch indexing, which would wrap negative indices) sees the pairs: an index out
    of range would make a kernel read outside the depth. Reads two numbers back from the
    device (one sync on a GPU)."""
    if not isinstance(pairs, Tensor) or pairs.dtype != torch.int64 or pairs.dim() != 2 or pairs.shape[1] != 2:
        what = f"{pairs.dtype} tensor of shape {tuple(pairs.shape)}" if isinstance(pairs, Tensor) else pairs
        raise ValueError(f"{op}: pairs must be a (P, 2) int64 tensor, got {what}")
    if pairs.device != device:
        raise ValueError(f"{op}: pairs are on {pairs.device} but {source} is on {device}")
    if pairs.numel():
        low, high = torch.stack(torch.aminmax(pairs)).tolist()
        if low < 0 or high >= frames:
            raise ValueError(f"{op}: pairs hold frame indices in [{low}, {high}] but {source} has {frames} frames")
    return pairs.contiguous()


@torch.library.custom_op("vgpa::checked_pairs", mutates_args=())
def checked_pairs(pairs: Tensor, frames: int, op: str) -> Tensor:
    """pair_indices as an op of its own, for the "torch" backend (plain torch code that
    torch.compile traces): the check then runs when the compiled graph runs. Returns a copy,
    which the caller uses in place of ``pairs`` so that the check cannot be dropped."""
    return pair_indices(op, pairs, frames, pairs.device).clone()


@checked_pairs.register_fake
def _(pairs, frames, op):
    return torch.empty_like(pairs, memory_format=torch.contiguous_format)


def buffer(op, name, x, shape, dtype, device):
    """A tensor a kernel reads or writes through a raw pointer: exactly ``shape``, ``dtype``
    and ``device``, returned contiguous. Guards the custom ops against inputs that did not come
    through the public functions (a direct torch.ops.vgpa call, or a compiled graph)."""
    if not isinstance(x, Tensor) or tuple(x.shape) != tuple(shape) or x.dtype != dtype or x.device != device:
        got = f"{x.dtype} tensor of shape {tuple(x.shape)} on {x.device}" if isinstance(x, Tensor) else repr(x)
        raise ValueError(f"{op}: {name} must be a {dtype} tensor of shape {tuple(shape)} on {device}, got {got}")
    return x.contiguous()
