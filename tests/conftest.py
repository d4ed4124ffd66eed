"""Shared test set-up: Triton runs under its interpreter when there is no GPU, and GPU-only
tests carry the `gpu` marker and are skipped, with the reason shown, where CUDA is absent."""

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    # Must be set before triton is imported (vgpa imports it lazily, inside the kernels).
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Every compiled or JIT backend, with the device its tests run on; each is compared with "torch".
KERNEL_BACKENDS = [
    pytest.param("cpu", id="cpu"),
    pytest.param("triton", id="triton"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.gpu),
]


def backend_device(backend: str) -> torch.device:
    """Where a backend's test tensors live: "cpu" and "torch" on the CPU, "cuda" on the GPU,
    "triton" on the GPU when there is one and in the interpreter on the CPU otherwise."""
    if backend in ("cpu", "torch"):
        return torch.device("cpu")
    if backend == "cuda":
        return torch.device("cuda")
    return torch.device("cuda" if HAS_CUDA else "cpu")


@pytest.fixture
def device(backend):
    """The device for the test's ``backend``. Skips (reason shown) only where a GPU is needed
    and absent; any other reason a backend cannot run (the extension failed to build or
    import, triton missing) fails the test rather than hiding it."""
    from vgpa import _backend

    dev = backend_device(backend)
    if dev.type == "cuda" and not HAS_CUDA:
        pytest.skip("needs a CUDA GPU")
    reason = _backend.why_unavailable(backend, dev)
    if reason is not None:
        pytest.fail(f"backend {backend!r} cannot run on {dev}: {reason}")
    return dev


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (runs on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
