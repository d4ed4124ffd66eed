"""Launcher-side helpers shared by every Triton kernel module."""

import torch
import triton.language as tl


def accumulation_type(dtype):
    """The Triton twin of vgpa._dtypes.accumulation_dtype: tl.float64 for float64, else tl.float32."""
    return tl.float64 if dtype == torch.float64 else tl.float32
