"""Accumulation dtype of every reduction (docs/design.md 2): float32; float64 for float64 input."""

from __future__ import annotations

import torch


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Reductions run in float32, or float64 for float64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32
