"""Host side of the pairwise scores (reprojection error, normal stability): the forward's
buffers, the fixed-order reduction of its partials, and the upstream gradients of the backward.

Every backend of both ops scores rows of (video, pair) in fixed chunks of pixels, one partial
(error sum, valid count) per chunk (csrc/geometry.h PairChunk, kernels/geometry.py pair_chunk).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ._dtypes import accumulation_dtype as _acc


@dataclass
class ScoreBuffers:
    """What a forward launch fills: partials (B * P, chunks, 2), and error_map (B, P, H, W) in
    the accumulation dtype and valid_mask (B, P, H, W) uint8 when a map is wanted (else None)."""

    chunk: int
    chunks: int
    partials: Tensor
    error_map: Optional[Tensor]
    valid_mask: Optional[Tensor]


def score_buffers(depth: Tensor, pairs: Tensor, chunk: int, return_map: bool) -> ScoreBuffers:
    """Buffers for scoring depth (B, T, H, W) over pairs (P, 2) in chunks of ``chunk`` pixels."""
    batch, _, height, width = depth.shape
    acc = _acc(depth.dtype)
    # A frame smaller than a chunk gets a chunk of its size (rounded up to 256): still a pure
    # function of the shape, so the partials stay reproducible.
    chunk = min(chunk, -(-height * width // 256) * 256)
    chunks = -(-height * width // chunk)
    partials = torch.empty((batch * pairs.shape[0], chunks, 2), dtype=acc, device=depth.device)
    error_map = valid_mask = None
    if return_map:
        error_map = torch.empty((batch, pairs.shape[0], height, width), dtype=acc, device=depth.device)
        valid_mask = torch.empty(error_map.shape, dtype=torch.uint8, device=depth.device)
    return ScoreBuffers(chunk, chunks, partials, error_map, valid_mask)


def empty_maps(depth: Tensor) -> tuple[Tensor, Tensor]:
    """The (error_map, valid_mask) placeholders of a call without return_map."""
    return depth.new_empty((0,), dtype=_acc(depth.dtype)), depth.new_empty((0,), dtype=torch.bool)


def reduce_scores(depth: Tensor, pairs: Tensor, buffers: ScoreBuffers) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(mean (B, P), valid count (B, P) int64, error_map, valid_mask bool) from filled buffers;
    the partials are summed in a fixed order, so the means are bitwise reproducible."""
    acc = _acc(depth.dtype)
    partials = buffers.partials
    # Chunk counts are exact integers; sum them as integers so large frames stay exact.
    count = partials[..., 1].to(torch.int64).sum(1)
    mean = partials[..., 0].sum(1) / count.clamp_min(1).to(acc)
    shape = (depth.shape[0], pairs.shape[0])
    if buffers.error_map is not None:
        return mean.view(shape), count.view(shape), buffers.error_map, buffers.valid_mask.view(torch.bool)
    return (mean.view(shape), count.view(shape)) + empty_maps(depth)


def fake_scores(depth: Tensor, pairs: Tensor, return_map: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """reduce_scores' outputs for torch.library fake (meta) registrations."""
    batch, _, height, width = depth.shape
    acc = _acc(depth.dtype)
    shape = (batch, pairs.shape[0])
    if return_map:
        maps = (depth.new_empty(shape + (height, width), dtype=acc),
                depth.new_empty(shape + (height, width), dtype=torch.bool))
    else:
        maps = empty_maps(depth)
    return (depth.new_empty(shape, dtype=acc), depth.new_empty(shape, dtype=torch.int64)) + maps


def upstream_grads(grad_mean: Optional[Tensor], grad_map: Optional[Tensor], count: Tensor, return_map: bool,
                   acc: torch.dtype) -> tuple[Tensor, Optional[Tensor]]:
    """What the backward kernels take: d loss / d mean divided by max(count, 1), flat (B * P,)
    (d mean / d e(p) = 1 / count for every valid pixel p), and d loss / d error_map, contiguous,
    or None when there is none; both in the accumulation dtype acc."""
    if grad_mean is None:
        grad_mean = torch.zeros(count.shape, dtype=acc, device=count.device)
    scaled = (grad_mean.to(acc) / count.clamp_min(1).to(acc)).contiguous().view(-1)
    grad_map = grad_map.to(acc).contiguous() if return_map and grad_map is not None else None
    return scaled, grad_map
