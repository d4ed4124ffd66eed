"""Kernels the Triton decision-path check must flag (vgpa_tools/gpu_proof/triton_kernels.py): they show
that the check can fail. Not part of vgpa; compiled only by the check's workers and tests."""

import triton
import triton.language as tl


@triton.jit
def approximate_division_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    """float32 ``/`` and ``tl.sqrt``: the approximate division and square root the geometry
    kernels replace with div_rn and sqrt_rn."""
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    x = tl.load(x_ptr + offsets, mask=mask, other=1.0)
    tl.store(y_ptr + offsets, x / (x + 1.0) + tl.sqrt(x), mask=mask)


@triton.jit
def ordered_atomic_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    """tl.atomic_add in its default acquire-release order, where the gradient scatters use relaxed."""
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    tl.atomic_add(y_ptr + offsets % 4, tl.load(x_ptr + offsets, mask=mask, other=0.0), mask=mask)
