"""Triton kernels of vgpa (installed as ``vgpa.kernels``); import triton lazily through these modules."""
