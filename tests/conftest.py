"""Shared test set-up.

Without a GPU, Triton runs under its interpreter and the "cuda" backend runs through the host
emulation of the CUDA execution model (vgpa._C_cuda_emu, built with
VGPA_BUILD_CUDA_EMULATION=1): the very CUDA kernels, on CPU tensors. Only tests that need real
GPU hardware (size, timing, memory) carry the `gpu` marker and are skipped there, each with its
reason shown.
"""

import importlib.metadata
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    # Both must be set before the first kernel call (vgpa imports triton lazily).
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("VGPA_CUDA_EMULATION", "1")

# Every compiled or JIT backend, with the device its tests run on; each is compared with "torch".
KERNEL_BACKENDS = [
    pytest.param("cpu", id="cpu"),
    pytest.param("triton", id="triton"),
    pytest.param("cuda", id="cuda"),
]


def backend_device(backend: str) -> torch.device:
    """Where a backend's test tensors live: "cpu" and "torch" on the CPU; "cuda" and "triton" on
    the GPU when there is one, else on the CPU (CUDA emulation, Triton interpreter)."""
    if backend in ("cpu", "torch"):
        return torch.device("cpu")
    return torch.device("cuda" if HAS_CUDA else "cpu")


@pytest.fixture
def device(backend):
    """The device for the test's ``backend``. A backend that cannot run (the extension or the
    emulation module failed to build or import, triton missing) fails the test rather than
    hiding it."""
    from vgpa import _backend

    dev = backend_device(backend)
    reason = _backend.why_unavailable(backend, dev)
    if reason is not None:
        pytest.fail(f"backend {backend!r} cannot run on {dev}: {reason}")
    return dev


# The dependencies whose newest releases CI installs on purpose: their versions head every run.
REPORTED_DISTRIBUTIONS = ("torch", "triton", "diffusers", "transformers", "kernels", "peft", "accelerate",
                          ("opencv-python-headless", "opencv-python"), "numpy")


def _installed_version(names) -> str:
    for name in (names,) if isinstance(names, str) else names:
        try:
            return f"{name} {importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:
            pass
    return f"{names if isinstance(names, str) else names[0]} not installed"


def pytest_report_header(config):
    return "versions: " + ", ".join(_installed_version(names) for names in REPORTED_DISTRIBUTIONS)


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    for item in items:
        marker = item.get_closest_marker("gpu")
        if marker is not None:
            why = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "needs a CUDA GPU")
            item.add_marker(pytest.mark.skip(reason=f"needs real GPU hardware: {why}"))
