"""Backend discovery and per-call dispatch.

Backends: "cuda" (CUDA C++ in vgpa._C), "triton" (vgpa.kernels), "cpu" (C++/OpenMP in
vgpa._C), "torch" (the pure-PyTorch reference). "auto" takes the first backend of
``AUTO_ORDER`` that can run on the tensors' device. ``VGPA_BACKEND`` replaces "auto".

The ops registered with torch.library hold the kernel backends only (``KERNEL_BACKENDS``);
"torch" runs the reference outside them, as plain torch code that autograd differentiates and
torch.compile traces.

A test instrument, not a user backend: with ``VGPA_CUDA_EMULATION=1`` and the module
vgpa._C_cuda_emu built (``VGPA_BUILD_CUDA_EMULATION=1``), backend "cuda" also accepts CPU tensors
and runs the CUDA kernels through the host emulation of the CUDA execution model
(csrc/emulation). "auto" never picks it.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import importlib
import importlib.util
import os
import sys

import torch

BACKENDS = ("cuda", "triton", "cpu", "torch")
KERNEL_BACKENDS = ("cuda", "triton", "cpu")
ENV_BACKEND = "VGPA_BACKEND"

# Preference per device type for backend="auto".
AUTO_ORDER = {
    "cuda": ("cuda", "triton", "torch"),
    "cpu": ("cpu", "torch"),
}


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run on these tensors; the message says why and what to do."""


ENV_EXTENSION_DIR = "VGPA_EXTENSION_DIR"


def _import_compiled(name: str):
    """vgpa.<name>, from ``VGPA_EXTENSION_DIR`` when set (the sanitizer run loads its
    AddressSanitizer builds from there), else from the package."""
    directory = os.environ.get(ENV_EXTENSION_DIR)
    if not directory:
        return importlib.import_module(f"vgpa.{name}")
    paths = sorted(glob.glob(os.path.join(directory, f"{name}.*.so")))
    if not paths:
        raise ImportError(f"{ENV_EXTENSION_DIR}={directory!r} holds no {name}.*.so")
    spec = importlib.util.spec_from_file_location(f"vgpa.{name}", paths[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[f"vgpa.{name}"] = module
    return module


@functools.lru_cache(maxsize=None)
def _load_extension():
    try:
        return _import_compiled("_C"), ""
    except ImportError as exc:  # not built, or built for another Python
        return None, f"{type(exc).__name__}: {exc}"


def extension():
    """The compiled module vgpa._C, or None (``extension_error()`` says why)."""
    return _load_extension()[0]


def extension_error() -> str:
    return _load_extension()[1]


ENV_CUDA_EMULATION = "VGPA_CUDA_EMULATION"


@functools.lru_cache(maxsize=None)
def _load_emulation():
    try:
        return _import_compiled("_C_cuda_emu"), ""
    except ImportError as exc:
        return None, f"{type(exc).__name__}: {exc}"


def emulation_module():
    """vgpa._C_cuda_emu (the CUDA kernels built against the host emulation), or None."""
    return _load_emulation()[0]


def cuda_emulation_enabled() -> bool:
    return os.environ.get(ENV_CUDA_EMULATION, "0") == "1"


@functools.lru_cache(maxsize=None)
def cuda_status() -> str:
    """What vgpa info says of the CUDA code: driver and device count, or why it cannot run."""
    return cuda_status_with_reason(extension().cuda_driver_status(), extension().cuda_runtime_version(),
                                   nvidia_driver_cuda_version())


@functools.lru_cache(maxsize=None)
def nvidia_driver_cuda_version() -> int | None:
    """The CUDA version the installed NVIDIA driver supports (cuDriverGetVersion, e.g. 12040), or
    None when there is no driver (libcuda.so.1 does not load)."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int(0)
    return version.value if libcuda.cuDriverGetVersion(ctypes.byref(version)) == 0 else None


def cuda_status_with_reason(status: str, runtime_version: int, driver_version: int | None) -> str:
    """The CUDA runtime's status of vgpa._C, with its cause where the runtime cannot tell: it
    reports "driver version is insufficient" both when no NVIDIA driver is installed and when the
    driver is older than the runtime. Versions as CUDA encodes them (13000 is 13.0)."""
    if not status.startswith("unusable"):
        return status
    from . import _build_config as build

    runtime = (runtime_version // 1000, runtime_version % 1000 // 10)
    if driver_version is None:
        return "unusable: no NVIDIA driver on this machine (libcuda.so.1 not found)"
    driver = (driver_version // 1000, driver_version % 1000 // 10)
    if driver < runtime:
        needed = build.min_linux_driver(runtime)
        return (f"unusable: the NVIDIA driver supports CUDA {driver[0]}.{driver[1]}, older than the CUDA "
                f"{runtime[0]}.{runtime[1]} runtime of this build"
                + (f" (it needs a driver >= {needed} on Linux)" if needed else ""))
    return status


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def triton_module():
    """The triton package, or None (with the reason from ``why_unavailable``)."""
    try:
        return importlib.import_module("triton")
    except ImportError:
        return None


def why_unavailable(backend: str, device: torch.device) -> str | None:
    """None when ``backend`` can run on tensors of ``device``, else the reason and the remedy."""
    kind = device.type
    if backend == "torch":
        return None
    if backend == "cpu":
        if kind != "cpu":
            return f"backend 'cpu' runs on CPU tensors, these are on {device}"
        if extension() is None:
            return ("the compiled extension vgpa._C is not importable "
                    f"({extension_error()}); reinstall the package (`pip install .`) where a C++ compiler is available")
        return None
    if backend == "cuda":
        if kind == "cpu" and cuda_emulation_enabled():
            if emulation_module() is None:
                return (f"{ENV_CUDA_EMULATION}=1 but the CUDA emulation module vgpa._C_cuda_emu is not importable "
                        f"({_load_emulation()[1]}); rebuild with VGPA_BUILD_CUDA_EMULATION=1")
            return None
        if kind != "cuda":
            return f"backend 'cuda' runs on CUDA tensors, these are on {device}"
        ext = extension()
        if ext is None:
            return ("the compiled extension vgpa._C is not importable "
                    f"({extension_error()}); reinstall the package (`pip install .`) where a C++ compiler is available")
        if not ext.with_cuda():
            return ("vgpa._C was built without CUDA (nvcc was not found at build time); "
                    "rebuild with nvcc on PATH and VGPA_BUILD_CUDA=1")
        status = cuda_status()
        if status.startswith("unusable"):
            remedy = ("install the NVIDIA driver" if nvidia_driver_cuda_version() is None
                      else "update the driver, or rebuild with an nvcc no newer than the driver supports")
            return f"the CUDA runtime linked into vgpa._C cannot run here ({status}); {remedy}"
        return None
    if backend == "triton":
        if triton_module() is None:
            return "triton is not installed: `pip install triton`"
        if kind == "cuda":
            return None
        if kind == "cpu":
            if triton_interpreted():
                return None
            return ("backend 'triton' needs CUDA tensors; on CPU tensors it runs only under the "
                    "Triton interpreter (set TRITON_INTERPRET=1 before importing triton)")
        return f"backend 'triton' does not run on {device}"
    raise ValueError(f"unknown backend {backend!r}; choose one of {('auto',) + BACKENDS}")


# Host-side logic with a constant answer: torch.compile evaluates it once while tracing
# instead of tracing into the import machinery.
@torch.compiler.assume_constant_result
def resolve(backend: str, device: torch.device, op: str) -> str:
    """Map the user's ``backend`` argument to a backend that runs on ``device`` or raise."""
    if not isinstance(backend, str):
        raise TypeError(f"{op}: backend must be a string, got {type(backend).__name__}")
    if backend == "auto":
        backend = os.environ.get(ENV_BACKEND, "auto").strip().lower() or "auto"
        source = f"{ENV_BACKEND}={backend!r}"
    else:
        source = f"backend={backend!r}"
    if backend == "auto":
        for candidate in AUTO_ORDER.get(device.type, ("torch",)):
            if why_unavailable(candidate, device) is None:
                return candidate
        return "torch"
    if backend not in BACKENDS:
        raise ValueError(f"{op}: unknown backend in {source}; choose one of {('auto',) + BACKENDS}")
    reason = why_unavailable(backend, device)
    if reason is not None:
        raise BackendUnavailableError(f"{op}: {source} cannot run here: {reason}")
    return backend


def kernel_backend(op: str, backend: str) -> str:
    """``backend`` as a registered op takes it: one of ``KERNEL_BACKENDS``, already resolved."""
    if backend not in KERNEL_BACKENDS:
        raise ValueError(f"{op}: the registered ops run the kernel backends {KERNEL_BACKENDS}, got {backend!r}; "
                         "backend 'torch' is the reference, which the public function calls directly")
    return backend


def available_backends(device: torch.device) -> dict[str, str | None]:
    """{backend: None if it runs on ``device`` else why not}."""
    return {name: why_unavailable(name, device) for name in BACKENDS}


# Dtype codes shared with csrc/common.h (enum class Dtype).
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}


def dtype_code(dtype: torch.dtype) -> int:
    return DTYPE_CODES[dtype]


def launch_compiled(backend: str, name: str, device: torch.device, **fields) -> None:
    """Calls the compiled kernel ``<name>_<backend>`` with its argument fields by name (raw
    addresses, sizes, options; csrc/bindings.h: a missing or unknown field is a TypeError).

    "cpu": vgpa._C. "cuda": vgpa._C with the tensors' device current and torch's current stream
    on it (tensors on cuda:1 work whatever device is current), or, for CPU tensors under
    ``VGPA_CUDA_EMULATION=1``, the same kernels in vgpa._C_cuda_emu.
    """
    if backend == "cpu":
        getattr(extension(), f"{name}_cpu")(**fields)
    elif backend != "cuda":
        raise ValueError(f"no compiled kernels for backend {backend!r}")
    elif device.type == "cpu":
        getattr(emulation_module(), f"{name}_cuda")(stream=0, **fields)
    else:
        with torch.cuda.device(device):
            getattr(extension(), f"{name}_cuda")(stream=torch.cuda.current_stream(device).cuda_stream, **fields)
