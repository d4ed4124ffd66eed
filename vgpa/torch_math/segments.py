"""Flat rows split into consecutive ranges, one per item: the matches of each frame pair, the points
of each video. Item i owns rows [offsets[i], offsets[i] + counts[i]); offsets ascend (a packed
layout, cumsum(counts) - counts, or a padded one, i * capacity)."""

from __future__ import annotations

import torch
from torch import Tensor


def row_owners(offsets: Tensor, counts: Tensor, rows: int) -> tuple[Tensor, Tensor, Tensor]:
    """(owner, index, inside), each (rows,) int64 / bool: the item whose range holds each row
    (among items of equal offset the last, the only one that can be non-empty), the row's index
    within it, and whether the row lies inside that range (False on padding). No shape depends
    on the counts' values, so torch.compile traces this without a graph break."""
    row = torch.arange(rows, device=offsets.device)
    owner = (torch.searchsorted(offsets, row, right=True) - 1).clamp_min(0)
    index = row - offsets[owner]
    return owner, index, (index >= 0) & (index < counts[owner])
