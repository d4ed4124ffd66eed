"""Launcher-side helpers shared by every Triton kernel module."""

import torch
import triton.language as tl

# CUDA's grid limits: 2^31 - 1 blocks on x, 65535 on y and z. The kernels fold every batch axis
# into x (see kernels/geometry.py frame_block), so y and z stay 1.
GRID_LIMITS = (2**31 - 1, 65535, 65535)

# The GPU-proof check (vgpa_tools/gpu_proof/triton_variants.py recording) sets this to a function taking
# (kernel, grid, args, options) while it records which kernel variants the ops launch; a
# recorded launch does not run.
launch_recorder = None


# Compile options of the kernels that take discrete decisions (kernels/geometry.py): no FMA
# contraction, and libdevice without flush-to-zero (its float32 floor would otherwise be cvt.rmi.ftz).
EXACT_ARITHMETIC = {"enable_fp_fusion": False, "enable_reflect_ftz": False}


def accumulation_type(dtype):
    """The Triton twin of vgpa._dtypes.accumulation_dtype: tl.float64 for float64, else tl.float32."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def check_grid(kernel, grid):
    """Raises a ValueError naming the kernel when ``grid`` exceeds CUDA's limits."""
    for axis, (size, limit) in enumerate(zip(grid, GRID_LIMITS)):
        if size > limit:
            name = getattr(getattr(kernel, "fn", kernel), "__name__", str(kernel))
            raise ValueError(f"{name}: the launch needs {size} programs on grid axis {'xyz'[axis]}, more than "
                             f"CUDA's limit of {limit}; split the input into smaller calls")


def launch(kernel, grid, *args, **options):
    """kernel[grid](*args, **options) on the device of the first tensor argument: Triton launches
    on the current CUDA device, so tensors on cuda:1 while cuda:0 is current need the guard."""
    check_grid(kernel, grid)
    if launch_recorder is not None:
        launch_recorder(kernel, grid, args, options)
        return
    device = next((a.device for a in args if isinstance(a, torch.Tensor)), None)
    if device is not None and device.type == "cuda":
        with torch.cuda.device(device):
            kernel[grid](*args, **options)
    else:
        kernel[grid](*args, **options)
