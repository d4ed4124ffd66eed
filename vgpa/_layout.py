"""Strided views that kernels can index without copying.

Elementwise-with-reduction kernels see every operand as (N, F, A, B, C): N the batch, F the
axis that temporal segments split (or simply the outermost remaining axis), A, B, C the
rest. Each operand keeps its own strides (0 for broadcast axes), so non-contiguous inputs
and broadcast weights are read in place.
"""

from __future__ import annotations

MAX_INNER_DIMS = 4  # F, A, B, C


def coalesce_per_sample(shape, strides_list, frame_dim=None):
    """Canonical per-sample layout shared by the operands.

    shape: the common logical shape (N, d1, ..., dk). strides_list: one stride tuple per
    operand for that shape. frame_dim: the axis that must stay whole and outermost (segments),
    or None. Returns (sizes, strides) with sizes = (F, A, B, C) and, per operand,
    (sN, sF, sA, sB, sC); or None when the operands cannot share 4 inner axes.
    """
    ndim = len(shape)
    inner = [d for d in range(1, ndim) if d != frame_dim]
    # Walk the other axes from the largest to the smallest stride of the first operand so the
    # innermost axis is the one that is contiguous in memory.
    lead = strides_list[0]
    inner.sort(key=lambda d: -abs(lead[d]))
    inner = [d for d in inner if shape[d] != 1]

    merged = []  # [size, [stride per operand]]
    for d in inner:
        size, strides = shape[d], [s[d] for s in strides_list]
        if merged:
            prev_size, prev_strides = merged[-1]
            if all(ps == st * size for ps, st in zip(prev_strides, strides)):
                merged[-1] = [prev_size * size, strides]
                continue
        merged.append([size, strides])

    if frame_dim is not None:
        head = [[shape[frame_dim], [s[frame_dim] for s in strides_list]]]
    elif len(merged) == MAX_INNER_DIMS:
        head, merged = merged[:1], merged[1:]
    else:  # keep the merged axes innermost: long contiguous rows for the kernels
        head = [[1, [0] * len(strides_list)]]
    rest_slots = MAX_INNER_DIMS - 1
    if len(merged) > rest_slots:
        return None
    pad = [[1, [0] * len(strides_list)]] * (rest_slots - len(merged))
    dims = head + pad + merged
    sizes = tuple(int(size) for size, _ in dims)
    strides = tuple(
        (int(strides_list[i][0]),) + tuple(int(st[i]) for _, st in dims) for i in range(len(strides_list))
    )
    return sizes, strides
