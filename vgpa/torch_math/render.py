"""What every backend of the point-cloud render shares (docs/design.md 3.3): the projection rows
composed in float64, and the layout of the z-buffer's int64 keys."""

from __future__ import annotations

import torch
from torch import Tensor

# Key of a pixel no point landed on; every real key is smaller (the float32 bits of a finite
# z > 0 are below 0x7f800000).
EMPTY_KEY = 2**63 - 1
INDEX_BITS = 32
INDEX_MASK = (1 << INDEX_BITS) - 1


def projection_rows(intrinsics: Tensor, extrinsics: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, T, 12) rows [P0 | P1 | Z] in ``dtype`` from K (B, T, 3, 3) and E (B, T, 3|4, 4).

    Computed in float64 with explicit elementwise products (no matmul, whose summation order
    varies by device and library), then rounded once to ``dtype``.
    """
    k = intrinsics.to(torch.float64)
    rt = extrinsics[..., :3, :].to(torch.float64)  # (B, T, 3, 4)
    rows = []
    for i in range(2):
        rows.append(k[..., i, 0, None] * rt[..., 0, :] + k[..., i, 1, None] * rt[..., 1, :]
                    + k[..., i, 2, None] * rt[..., 2, :])
    rows.append(rt[..., 2, :])
    return torch.cat(rows, dim=-1).to(dtype).contiguous()
