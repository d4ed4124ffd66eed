"""The RANSAC inlier limit every backend of vgpa.ransac_inlier_count compares with (docs/design.md 3.6)."""

from __future__ import annotations

import torch


def threshold_squared(threshold: float, dtype: torch.dtype) -> float:
    """threshold^2 formed in double on the host, as ``d2 <= threshold ** 2`` forms it, then
    rounded once to the working dtype (where torch compares a tensor with a Python number)."""
    return torch.tensor(float(threshold) * float(threshold), dtype=torch.float64).to(dtype).item()
