"""Build of vgpa's compiled extensions.

``vgpa._C``: the C++ CPU kernels (OpenMP), always; the CUDA kernels whenever nvcc is found,
unless ``VGPA_BUILD_CUDA=0``; ``VGPA_BUILD_CUDA=1`` makes a missing nvcc an error.
``VGPA_CUDA_ARCHS`` ("80;90", "90a", "8.0 9.0", "ampere;hopper", "default", "all") picks the
GPU architectures (vgpa/_build_config.py: resolve_cuda_archs); PTX is embedded for the newest
one so newer GPUs can JIT it. ``VGPA_BUILD_JOBS`` caps the number of parallel compiler processes
(default: all cores), ``VGPA_NVCC_THREADS`` the threads of one nvcc. ``VGPA_BUILD_CACHE`` is the
compile cache (default ~/.cache/vgpa/build; ``off`` disables it; ccache or sccache on PATH
replaces it). A wheel built from the source tree is versioned <version>+cu<XY> or +cpu.

``vgpa._C_cuda_emu`` (``VGPA_BUILD_CUDA_EMULATION=1``; a test instrument): the same CUDA
kernel sources compiled by the host C++ compiler against csrc/emulation, vgpa's emulation of the
CUDA execution model, so the CUDA kernels run in tests on a machine without a GPU.

``VGPA_SANITIZE=address`` builds both modules with AddressSanitizer (and no nvcc objects), for
the sanitizer run of ``python -m vgpa_tools.gpu_proof sanitize``.

The CUDA runtime is linked statically and the bindings take raw pointers, sizes and a
stream, so the module needs only the NVIDIA driver and does not depend on torch's C++ ABI.
All compiler flags come from vgpa/_build_config.py, which the GPU-proof checks read too.
"""

import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension
from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))


def _load_build_config():
    # By path: importing the vgpa package would import torch, which a build need not have.
    spec = importlib.util.spec_from_file_location("vgpa_build_config", os.path.join(ROOT, "vgpa", "_build_config.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


config = _load_build_config()


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
    """Compiles csrc/*.cu with nvcc (in parallel, each with nvcc --threads) and links the objects
    into vgpa._C; every compile, nvcc and host C++, goes through the compile cache."""

    def build_extensions(self):
        # Always compile (the cache makes an unchanged file cheap): setuptools' up-to-date test
        # looks at file times only, and would keep a module built for other archs or flags.
        self.force = True
        launcher = config.cache_launcher()
        if launcher:
            print(f"vgpa: compile cache {launcher}", flush=True)
            for attr in ("compiler_so", "compiler_so_cxx"):
                if getattr(self.compiler, attr, None):
                    setattr(self.compiler, attr, [launcher] + list(getattr(self.compiler, attr)))
        elif config.cache_dir():
            print(f"vgpa: compile cache {config.cache_dir()} (VGPA_BUILD_CACHE)", flush=True)
            self._cache_host_compiles()
        self._kernels_without_cuda_macro()  # outermost: the cache keys the filtered command
        self.cache_hits = []  # one bool per cached compile, host and nvcc
        super().build_extensions()
        if self.cache_hits:
            reused = sum(self.cache_hits)
            print(f"vgpa: compile cache: {reused} of {len(self.cache_hits)} objects reused, "
                  f"{len(self.cache_hits) - reused} compiled", flush=True)

    def _kernels_without_cuda_macro(self):
        """Compiles the C++ kernels of vgpa._C (csrc/<op>.cpp) without VGPA_WITH_CUDA: only the
        bindings depend on whether CUDA is compiled in (the kernels' headers merely declare the
        CUDA entry points under it), so a CUDA and a CPU-only build make the same kernel objects
        and the compile cache hands them from one to the other (an sdist installed CPU-only)."""
        compiler = self.compiler
        compile_one = compiler._compile
        macro = "-DVGPA_WITH_CUDA=1"

        def _compile(obj, src, ext, cc_args, extra_postargs, pp_opts):
            if os.path.dirname(os.path.normpath(src)) == "csrc" and not src.endswith("bindings.cpp"):
                cc_args = [arg for arg in cc_args if arg != macro]
            compile_one(obj, src, ext, cc_args, extra_postargs, pp_opts)

        compiler._compile = _compile

    def _cache_host_compiles(self):
        compiler = self.compiler
        compile_one = compiler._compile

        def _compile(obj, src, ext, cc_args, extra_postargs, pp_opts):
            cxx = getattr(compiler, "compiler_so_cxx", None) and compiler.detect_language(src) == "c++"
            compiler_so = list(compiler.compiler_so_cxx if cxx else compiler.compiler_so)
            command = compiler_so + cc_args + [src, "-o", obj] + extra_postargs
            dep_command = compiler_so + [a for a in cc_args if a != "-c"] + [src] + extra_postargs + ["-M"]
            os.makedirs(os.path.dirname(obj), exist_ok=True)
            try:
                self.cache_hits.append(config.cached_compile(command, obj, dep_command, config.cache_dir()))
            except subprocess.CalledProcessError:
                compile_one(obj, src, ext, cc_args, extra_postargs, pp_opts)  # the compiler's own error report

        compiler._compile = _compile

    def build_extension(self, ext):
        cuda_sources = getattr(ext, "cuda_sources", [])
        if cuda_sources:
            cuda_home = ext.cuda_home
            nvcc = os.path.join(cuda_home, "bin", "nvcc")
            launcher = config.cache_launcher()
            obj_dir = os.path.join(self.build_temp, "cuda")
            os.makedirs(obj_dir, exist_ok=True)
            workers = max(1, min(len(cuda_sources), _jobs()))
            # nvcc --threads compiles the architectures of one file in parallel: the cores the
            # per-file workers leave.
            threads = os.environ.get("VGPA_NVCC_THREADS") or str(max(1, _jobs() // workers))

            def compile_one(src):
                obj = os.path.join(obj_dir, os.path.basename(src) + ".o")
                flags = ([f"-I{os.path.join(ROOT, 'csrc')}"] + config.nvcc_flags_for(src)
                         + config.arch_report_defines(ext.cuda_archs) + config.gencode_flags(ext.cuda_archs))
                cmd = [nvcc, "-c", "--threads", threads] + flags + [src, "-o", obj]
                print(" ".join(cmd), flush=True)
                if launcher:
                    subprocess.check_call([launcher] + cmd)
                else:
                    self.cache_hits.append(config.cached_compile(cmd, obj, [nvcc, "-M"] + flags + [src],
                                                                 config.cache_dir()))
                return obj

            with ThreadPoolExecutor(workers) as pool:
                objects = list(pool.map(compile_one, cuda_sources))
            ext.extra_objects = list(ext.extra_objects or []) + objects + [_cudart_static(cuda_home)]
        super().build_extension(ext)


def _sanitizer_flags():
    value = os.environ.get("VGPA_SANITIZE", "").strip().lower()
    if value in ("", "0", "none"):
        return []
    if value != "address":
        raise SystemExit(f"VGPA_SANITIZE={value!r}: expected 'address' or nothing")
    return config.sanitizer_flags()


def _cuda_archs(nvcc):
    """VGPA_CUDA_ARCHS resolved against what this nvcc can build: an arch it cannot build is an
    error here, before anything compiles; "default"/"all" drop those and say so."""
    text = os.environ.get("VGPA_CUDA_ARCHS", "").strip() or "default"
    supported = config.nvcc_archs(nvcc)
    try:
        archs, dropped = config.resolve_cuda_archs(text, supported)
    except config.ArchError as exc:
        raise SystemExit(str(exc)) from None
    if dropped:
        print(f"vgpa: VGPA_CUDA_ARCHS={text!r}: dropped {';'.join(dropped)}, which {nvcc} cannot build "
              f"(it builds {';'.join(supported)})", flush=True)
    return archs


def _cuda_version():
    """(major, minor) of the CUDA toolkit the wheel would bundle, None for a CPU-only build."""
    ext = extensions[0]
    return config.nvcc_cuda_version(os.path.join(ext.cuda_home, "bin", "nvcc")) if ext.cuda_sources else None


def _version():
    """The project version of vgpa/__init__.py; a wheel built from the source tree gets the CUDA
    runtime as local label (0.1.0+cu130, 0.1.0+cpu). An sdist, and a build from an sdist
    (PKG-INFO present), keep the plain version: pip requires an sdist's metadata to match its
    file name."""
    with open(os.path.join(ROOT, "vgpa", "__init__.py")) as f:
        version = re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)
    if "sdist" in sys.argv[1:] or os.path.exists(os.path.join(ROOT, "PKG-INFO")):
        return version
    return f"{version}+{config.local_version_label(_cuda_version())}"


def _packages():
    """vgpa and every subpackage, vgpa.kernels (kernels/) and vgpa.bench (bench/) with theirs: found,
    never listed, so a new module or subpackage is in the wheel without a change here. kernels/ and
    bench/ have no __init__.py (vgpa/_build_config.py: PACKAGE_DIRS), so they install as namespace
    subpackages of vgpa; the links vgpa/kernels and vgpa/bench are skipped by find_packages."""
    mapped = {path.replace("/", "."): folder for path, folder in config.PACKAGE_DIRS.items()}
    own = [p for p in find_packages(ROOT, include=["vgpa", "vgpa.*"])
           if not any(p == m or p.startswith(m + ".") for m in mapped)]
    for package, folder in mapped.items():
        own += [package] + [f"{package}.{sub}" for sub in find_packages(os.path.join(ROOT, folder))]
    return own, mapped


def make_extension():
    csrc = os.path.join("csrc")
    sources = sorted(glob.glob(os.path.join(csrc, "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join(ROOT, csrc, "*.cu")))
    sanitize = _sanitizer_flags()

    want_cuda = _env_flag("VGPA_BUILD_CUDA")
    if sanitize:
        want_cuda = False  # sanitizer builds exercise the host code only
    cuda_home = _find_cuda_home() if want_cuda is not False else None
    if want_cuda and cuda_home is None:
        raise SystemExit("VGPA_BUILD_CUDA=1 but nvcc was not found: set CUDA_HOME or put nvcc on PATH")
    with_cuda = cuda_home is not None and bool(cuda_sources)

    archs = _cuda_archs(os.path.join(cuda_home, "bin", "nvcc")) if with_cuda else []
    macros = [("VGPA_WITH_CUDA", "1")] if with_cuda else []
    print(f"vgpa: building vgpa._C with CUDA={'yes, SASS ' + ';'.join(archs) if with_cuda else 'no'}"
          + (f", PTX {config.ptx_arch(archs)}" if with_cuda else ""), flush=True)

    ext = Pybind11Extension(
        "vgpa._C",
        sources,
        include_dirs=[csrc],
        define_macros=macros,
        cxx_std=17,
        extra_compile_args=config.HOST_CXX_FLAGS + sanitize,
        extra_link_args=["-fopenmp"] + sanitize + (["-lrt", "-ldl", "-lpthread"] if with_cuda else []),
    )
    ext.cuda_sources = cuda_sources if with_cuda else []
    ext.cuda_home = cuda_home
    ext.cuda_archs = archs
    return ext


def make_emulation_extension(build_dir):
    """vgpa._C_cuda_emu: every kernel source of csrc/*.cu and the emulation's self-test kernels,
    each compiled as C++ through a one-line wrapper that includes it, with the op bindings (CUDA
    functions only) and the scheduler."""
    csrc = os.path.join(ROOT, "csrc")
    emulation = os.path.join(csrc, "emulation")
    kernel_sources = [path for path in sorted(glob.glob(os.path.join(csrc, "*.cu")))
                      if os.path.basename(path) not in config.CUDA_HOST_ONLY_SOURCES]
    kernel_sources.append(os.path.join(emulation, "selftest.cu"))
    wrapper_dir = os.path.join(build_dir, "cuda_emulation_sources")
    os.makedirs(wrapper_dir, exist_ok=True)
    wrappers = []
    for path in kernel_sources:
        wrapper = os.path.join(wrapper_dir, os.path.basename(path)[:-3] + "_emulated.cpp")
        # By name, found through the include folders: the wrapper's text, which the compile cache
        # keys, holds no path of this checkout.
        text = f'#include "{os.path.basename(path)}"\n'
        if not os.path.exists(wrapper) or open(wrapper).read() != text:
            with open(wrapper, "w") as f:
                f.write(text)
        wrappers.append(os.path.relpath(wrapper, ROOT))
    bindings = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(csrc, "*_bindings.cpp")))
    sanitize = _sanitizer_flags()
    return Pybind11Extension(
        "vgpa._C_cuda_emu",
        wrappers + bindings + ["csrc/emulation/scheduler.cpp", "csrc/emulation/module.cpp"],
        # csrc/emulation first: its cuda_runtime.h is the one the kernels include.
        include_dirs=["csrc/emulation", "csrc"],
        define_macros=[("VGPA_WITH_CUDA", "1"), ("VGPA_CUDA_EMULATION_MODULE", "1")],
        cxx_std=17,
        extra_compile_args=config.EMULATION_CXX_FLAGS + sanitize,
        extra_link_args=sanitize,
        depends=sorted(glob.glob(os.path.join(csrc, "*.h")) + glob.glob(os.path.join(csrc, "*.cuh"))
                       + glob.glob(os.path.join(csrc, "*.cu")) + glob.glob(os.path.join(emulation, "*"))),
    )


ParallelCompile("VGPA_BUILD_JOBS", default=0).install()
extensions = [make_extension()]
if _env_flag("VGPA_BUILD_CUDA_EMULATION"):
    print("vgpa: building vgpa._C_cuda_emu (the CUDA kernels on the host emulation)", flush=True)
    extensions.append(make_emulation_extension(os.path.join(ROOT, "build")))
packages, package_dir = _packages()
setup(version=_version(), packages=packages, package_dir=package_dir, ext_modules=extensions,
      cmdclass={"build_ext": BuildExtWithCuda})
