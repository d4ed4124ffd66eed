"""Build of vgpa's compiled extension ``vgpa._C``.

The C++ CPU kernels are always built (OpenMP). The CUDA kernels are built whenever nvcc is
found, unless ``VGPA_BUILD_CUDA=0``; ``VGPA_BUILD_CUDA=1`` makes a missing nvcc an error.
``VGPA_CUDA_ARCHS`` ("80;90", "90a", "8.0 9.0", ...) picks the GPU architectures; PTX is
embedded for the newest one so newer GPUs can JIT it. ``VGPA_BUILD_JOBS`` caps the number of
parallel compiler processes (default: all cores).

The CUDA runtime is linked statically and the bindings take raw pointers, sizes and a
stream, so the module needs only the NVIDIA driver and does not depend on torch's C++ ABI.
"""

import glob
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension
from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHS = "80;90"  # A100 and H100/H200


def _env_flag(name):
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SystemExit(f"{name}={value!r}: expected 0, 1 or auto")


def _find_cuda_home():
    """The CUDA toolkit root: CUDA_HOME, CUDA_PATH, the toolkit of the nvcc on PATH, /usr/local/cuda."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    for home in candidates:
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")) \
                and os.path.exists(os.path.join(home, "include", "cuda_runtime.h")):
            return home
    return None


def parse_cuda_archs(text):
    """'80;90a' or '8.0 9.0+PTX' -> ['80', '90a'] (order kept, duplicates dropped)."""
    archs = []
    for item in text.replace(",", ";").replace(" ", ";").split(";"):
        item = item.strip().lower().replace("+ptx", "").replace("sm_", "").replace(".", "")
        if not item:
            continue
        if not (item.rstrip("af")).isdigit():
            raise SystemExit(f"VGPA_CUDA_ARCHS: cannot read architecture {item!r}")
        if item not in archs:
            archs.append(item)
    if not archs:
        raise SystemExit("VGPA_CUDA_ARCHS is empty")
    return archs


def gencode_flags(archs):
    flags = []
    for arch in archs:
        flags.append(f"-gencode=arch=compute_{arch},code=sm_{arch}")
    newest = max(archs, key=lambda a: int(a.rstrip("af")))
    flags.append(f"-gencode=arch=compute_{newest},code=compute_{newest}")
    return flags


def _cudart_static(cuda_home):
    for sub in ("lib64", "lib", os.path.join("targets", "x86_64-linux", "lib"),
                os.path.join("targets", "sbsa-linux", "lib")):
        path = os.path.join(cuda_home, sub, "libcudart_static.a")
        if os.path.exists(path):
            return path
    raise SystemExit(f"libcudart_static.a not found under {cuda_home}")


def _jobs():
    jobs = os.environ.get("VGPA_BUILD_JOBS")
    return int(jobs) if jobs else (os.cpu_count() or 1)


class BuildExtWithCuda(build_ext):
    """Compiles csrc/*.cu with nvcc (in parallel) and links the objects into vgpa._C."""

    def build_extension(self, ext):
        cuda_sources = getattr(ext, "cuda_sources", [])
        if cuda_sources:
            cuda_home = ext.cuda_home
            nvcc = os.path.join(cuda_home, "bin", "nvcc")
            obj_dir = os.path.join(self.build_temp, "cuda")
            os.makedirs(obj_dir, exist_ok=True)
            base = [
                nvcc, "-c", "-O3", "-std=c++17", "-lineinfo",
                "--expt-relaxed-constexpr", "-Xcompiler", "-fPIC", "--threads", "2",
                "-DVGPA_WITH_CUDA", f"-I{os.path.join(ROOT, 'csrc')}",
            ] + gencode_flags(ext.cuda_archs)

            def compile_one(src):
                obj = os.path.join(obj_dir, os.path.basename(src) + ".o")
                cmd = base + [src, "-o", obj]
                print(" ".join(cmd), flush=True)
                subprocess.check_call(cmd)
                return obj

            with ThreadPoolExecutor(max(1, min(len(cuda_sources), _jobs()))) as pool:
                objects = list(pool.map(compile_one, cuda_sources))
            ext.extra_objects = list(ext.extra_objects or []) + objects + [_cudart_static(cuda_home)]
        super().build_extension(ext)


def make_extension():
    csrc = os.path.join("csrc")
    sources = sorted(glob.glob(os.path.join(csrc, "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join(ROOT, csrc, "*.cu")))

    want_cuda = _env_flag("VGPA_BUILD_CUDA")
    cuda_home = _find_cuda_home() if want_cuda is not False else None
    if want_cuda and cuda_home is None:
        raise SystemExit("VGPA_BUILD_CUDA=1 but nvcc was not found: set CUDA_HOME or put nvcc on PATH")
    with_cuda = cuda_home is not None and bool(cuda_sources)

    archs = parse_cuda_archs(os.environ.get("VGPA_CUDA_ARCHS", DEFAULT_CUDA_ARCHS)) if with_cuda else []
    macros = [("VGPA_CUDA_ARCHS", '"' + ";".join(archs) + '"')]
    if with_cuda:
        macros.append(("VGPA_WITH_CUDA", "1"))
    print(f"vgpa: building vgpa._C with CUDA={'yes, archs ' + ';'.join(archs) if with_cuda else 'no'}",
          flush=True)

    ext = Pybind11Extension(
        "vgpa._C",
        sources,
        include_dirs=[csrc],
        define_macros=macros,
        cxx_std=17,
        extra_compile_args=["-O3", "-fopenmp"],
        extra_link_args=["-fopenmp"] + (["-lrt", "-ldl", "-lpthread"] if with_cuda else []),
    )
    ext.cuda_sources = cuda_sources if with_cuda else []
    ext.cuda_home = cuda_home
    ext.cuda_archs = archs
    return ext


ParallelCompile("VGPA_BUILD_JOBS", default=0).install()
setup(ext_modules=[make_extension()], cmdclass={"build_ext": BuildExtWithCuda})
