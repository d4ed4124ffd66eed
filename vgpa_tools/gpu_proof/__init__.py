"""Checks that prove vgpa's GPU code on a machine without a GPU (docs/gpu_proof.md: "How the GPU code is
tested without a GPU"): the Triton kernels compiled for sm_80/sm_90, the resource budget read
from the compiled code of both GPU backends, and the PTX of the decision paths."""
