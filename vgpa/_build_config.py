"""Build parameters of vgpa's compiled code, and the GPU-architecture rules, in one place.

Read by setup.py (loaded by path: it must not import torch or the rest of vgpa), by the CUDA
emulation build, by the GPU-proof checks (vgpa_tools/gpu_proof), by the wheel inspection
(vgpa_tools/wheels) and by ``vgpa info``, so that the PTX and the resource figures the checks read
come from exactly the flags the wheel is built with, and so that what a wheel is checked for and
what ``vgpa info`` says about a GPU follow the same arch rules.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from functools import lru_cache
from typing import NamedTuple

# A100; A10, RTX 30; L4, L40, RTX 40; H100, H200; B200; RTX 50. Restricted to what the nvcc at
# hand can build (resolve_cuda_archs says which were dropped).
DEFAULT_CUDA_ARCHS = "80;86;89;90;100;120"

# The architectures the GPU-proof resource table (docs/gpu_resources_cuda.csv) covers.
RESOURCE_TABLE_CUDA_ARCHS = "80;90"

# Names VGPA_CUDA_ARCHS accepts besides numbers: name -> (archs, the GPUs they are for).
# "default" is DEFAULT_CUDA_ARCHS; "all" is every architecture the installed nvcc lists.
CUDA_ARCH_NAMES = {
    "turing": ("75", "T4, RTX 20"),
    "ampere": ("80;86", "A100, A30; A10, A40, RTX 30"),
    "ada": ("89", "L4, L40, RTX 40"),
    "hopper": ("90", "H100, H200, GH200"),
    "blackwell": ("100;120", "B200, GB200; RTX 50, RTX PRO 6000"),
}

# Packages whose sources live outside vgpa/ (wheel path -> source folder); setup.py maps them, the
# wheel inspection expects their files. The folders hold no __init__.py, so that run from the
# checkout's root they never shadow an installed module of the same name (Hugging Face's
# `kernels`); in the checkout, the links vgpa/kernels and vgpa/bench make them vgpa.kernels and
# vgpa.bench, and the wheel installs them there.
PACKAGE_DIRS = {"vgpa/kernels": "kernels", "vgpa/bench": "bench"}

# Host C++ flags of every compiled module. No contraction of a * b + c into an FMA: the C++
# twin must round every operation as the CUDA geometry kernels do (see NVCC_SOURCE_FLAGS).
# -fno-trapping-math (no kernel reads the floating-point exception flags) lets GCC turn the
# per-pixel validity comparisons into SIMD masks, and -fno-math-errno (nothing reads errno) lets
# std::sqrt vectorise; neither changes a result.
HOST_CXX_FLAGS = ["-O3", "-fopenmp", "-ffp-contract=off", "-fno-trapping-math", "-fno-math-errno"]

# The AddressSanitizer build (VGPA_SANITIZE=address; python -m vgpa_tools.gpu_proof sanitize).
# -O1 after the build's -O3: what ASan recommends, and the build takes half the time.
SANITIZER_FLAGS = ["-fsanitize=address", "-fno-omit-frame-pointer", "-g", "-O1"]

# CPU flags (/proc/cpuinfo) of the x86-64 levels the SIMD clones are built for (csrc/common.h:
# VGPA_CPU_SIMD_CLONES), as the loader's choice among them tests them; the newest level the CPU
# has is the clone that runs.
X86_64_LEVELS = {
    "x86-64-v4": ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"),
    "x86-64-v3": ("avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"),
}


def running_simd_clone(cpuinfo: str | None = None) -> str | None:
    """The x86-64 level whose SIMD clone this CPU runs ("x86-64-v4", "x86-64-v3"), or None for
    the baseline clone (or a CPU that is not x86-64 Linux)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return None
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    have_v3 = set(X86_64_LEVELS["x86-64-v3"]) <= flags
    if have_v3 and set(X86_64_LEVELS["x86-64-v4"]) <= flags:
        return "x86-64-v4"
    return "x86-64-v3" if have_v3 else None


def sanitizer_flags() -> list[str]:
    """The sanitizer build's flags: ASan, and the SIMD loops compiled once, for the clone this
    CPU runs (VGPA_CPU_SIMD_ONE_CLONE with its -march): the sanitizer's tests run on this machine,
    so the other clones would be compiled (two thirds of the build) and never run."""
    level = running_simd_clone()
    return SANITIZER_FLAGS + ["-DVGPA_CPU_SIMD_ONE_CLONE"] + ([f"-march={level}"] if level else [])


# Host C++ flags of the CUDA emulation module (vgpa._C_cuda_emu, a test instrument): no OpenMP
# (the emulation schedules the GPU threads itself), the same rounding rules.
EMULATION_CXX_FLAGS = ["-O2", "-ffp-contract=off", "-Wno-unknown-pragmas"]

# .cu files that talk to the CUDA runtime rather than hold kernels: not part of the emulation.
CUDA_HOST_ONLY_SOURCES = ("cuda_runtime_info.cu",)

# nvcc flags of every .cu file (the arch flags come from gencode_flags).
NVCC_FLAGS = ["-O3", "-std=c++17", "-lineinfo", "--expt-relaxed-constexpr", "-Xcompiler", "-fPIC",
              "-DVGPA_WITH_CUDA"]

# The decision rule (docs/design.md 5): every kernel source is a decision source (validity, the
# pixel a point lands on, the z-buffer winner, the inlier test), compiled without FMA contraction
# so that every multiply and add is rounded on its own, as on the CPU, and the GPU decides exactly
# as the C++ twin does; division and square root are IEEE without --use_fast_math, which vgpa
# never uses. A source leaves the rule only by being listed here with the reason it decides
# nothing (the GPU-proof tests fail on a stale entry).
NO_DECISION_SOURCES = {
    "diffusion_dpo_loss.cu": "weighted sums of squared errors and their gradient: nothing is decided from them "
                             "on the GPU",
}
DECISION_FLAGS = ["--fmad=false"]


def is_decision_source(source: str) -> bool:
    """Whether a .cu file (a path or a file name) is compiled and checked under the decision rule:
    every one that holds kernels, unless NO_DECISION_SOURCES lists it."""
    name = os.path.basename(source)
    return name not in NO_DECISION_SOURCES and name not in CUDA_HOST_ONLY_SOURCES

# Minimum Linux driver of each CUDA runtime (CUDA release notes, "CUDA Toolkit and Corresponding
# Driver Versions"): the statically linked runtime of a wheel needs at least this driver.
MIN_LINUX_DRIVER = {
    (11, 8): "520.61.05",
    (12, 0): "525.60.13",
    (12, 1): "530.30.02",
    (12, 2): "535.54.03",
    (12, 3): "545.23.06",
    (12, 4): "550.54.14",
    (12, 5): "555.42.02",
    (12, 6): "560.28.03",
    (12, 8): "570.26",
    (12, 9): "575.51.03",
    (13, 0): "580.65.06",
}


def nvcc_flags_for(source: str) -> list[str]:
    """The nvcc flags (without arch flags) that compile ``source`` (a path or a file name)."""
    return NVCC_FLAGS + (DECISION_FLAGS if is_decision_source(source) else [])


class ArchError(ValueError):
    """A VGPA_CUDA_ARCHS value that cannot be built; the message says why."""


_ARCH = re.compile(r"^(?:sm_|compute_)?(\d+)(?:\.(\d))?([af]?)$")


def normalize_arch(item: str) -> str:
    """'8.0' -> '80', 'sm_90a' -> '90a', '10.0' -> '100', '120' -> '120'."""
    m = _ARCH.match(item.strip().lower())
    if not m or (m.group(2) is None and len(m.group(1)) < 2) or (m.group(2) is not None and len(m.group(1)) > 2):
        raise ArchError(f"VGPA_CUDA_ARCHS: cannot read architecture {item!r} (expected e.g. 80, 8.0, sm_90a, "
                        f"or one of {', '.join(sorted(CUDA_ARCH_NAMES))}, default, all)")
    return m.group(1) + (m.group(2) or "") + m.group(3)


def arch_capability(arch: str) -> tuple[int, int]:
    """'86' -> (8, 6), '100' -> (10, 0), '90a' -> (9, 0)."""
    digits = arch.rstrip("af")
    return int(digits[:-1]), int(digits[-1])


def arch_variant(arch: str) -> str:
    """'' for a plain arch, 'a' for an arch-specific one (runs on exactly its GPU), 'f' for a
    family-specific one."""
    return arch[-1] if arch[-1] in "af" else ""


def _arch_order(arch: str):
    return arch_capability(arch), arch_variant(arch)


def parse_cuda_archs(text: str, supported: list[str] | None = None) -> list[str]:
    """'80;90a', '8.0 9.0', 'ampere;hopper', 'default' or 'all' -> ['80', '86', '90', ...]
    (order kept, duplicates dropped). ``supported``: the archs nvcc can build (nvcc_archs); it
    restricts "default" and "all" and is required for "all". A "+PTX" suffix is accepted on the
    newest arch only: PTX always goes with the newest."""
    return resolve_cuda_archs(text, supported)[0]


def resolve_cuda_archs(text: str, supported: list[str] | None = None) -> tuple[list[str], list[str]]:
    """(archs to build, archs of "default"/"all" dropped because the nvcc cannot build them).

    Explicitly named archs (numbers and family names) that ``supported`` lacks raise ArchError
    before anything is compiled; "default" is restricted to ``supported`` silently apart from the
    dropped list, which the caller reports."""
    archs, dropped, ptx_marked = [], [], []
    for raw in re.split(r"[;,\s]+", text.strip()):
        if not raw:
            continue
        item = raw.lower()
        marked = item.endswith("+ptx")
        item = item[:-4] if marked else item
        if item in ("default", "all"):
            if item == "all":
                if supported is None:
                    raise ArchError("VGPA_CUDA_ARCHS=all needs the nvcc's architecture list")
                names = list(supported)
            else:
                names = DEFAULT_CUDA_ARCHS.split(";")
            for arch in names:
                if supported is not None and arch not in supported:
                    dropped.append(arch)
                elif arch not in archs:
                    archs.append(arch)
            continue
        names = CUDA_ARCH_NAMES[item][0].split(";") if item in CUDA_ARCH_NAMES else [normalize_arch(item)]
        if marked:
            ptx_marked.append((raw, names))
        for arch in names:
            if supported is not None and arch.rstrip("af") not in supported:
                raise ArchError(f"VGPA_CUDA_ARCHS: this nvcc cannot build sm_{arch} (from {raw!r}); it builds "
                                f"{';'.join(supported)}. Use a CUDA toolkit that builds it, or leave {arch} out")
            if arch not in archs:
                archs.append(arch)
    if not archs:
        raise ArchError(f"VGPA_CUDA_ARCHS={text!r} names no architecture this nvcc can build"
                        + (f" (dropped: {';'.join(dropped)})" if dropped else ""))
    newest = ptx_arch(archs)
    for raw, names in ptx_marked:
        if newest not in [arch.rstrip("af") for arch in names]:
            raise ArchError(f"VGPA_CUDA_ARCHS: {raw!r}: PTX is embedded for the newest architecture only "
                            f"({newest}); drop the +PTX")
    return archs, dropped


def ptx_arch(archs: list[str]) -> str:
    """The arch whose PTX is embedded: the newest one, without an 'a'/'f' suffix, because
    arch-specific PTX cannot be JIT-compiled for any other GPU."""
    return max(archs, key=_arch_order).rstrip("af")


def gencode_flags(archs: list[str]) -> list[str]:
    """SASS for every arch and PTX for the newest, so newer GPUs can JIT it."""
    flags = [f"-gencode=arch=compute_{arch},code=sm_{arch}" for arch in archs]
    newest = ptx_arch(archs)
    flags.append(f"-gencode=arch=compute_{newest},code=compute_{newest}")
    return flags


def arch_report_defines(archs: list[str]) -> list[str]:
    """nvcc flags that compile into csrc/cuda_runtime_info.cu what it reports: the SASS archs
    and the PTX arch of this build (a subprocess argument each, not shell-quoted)."""
    return [f'-DVGPA_CUDA_SASS_ARCHS="{";".join(archs)}"', f'-DVGPA_CUDA_PTX_ARCH="{ptx_arch(archs)}"']


def nvcc_archs(nvcc: str) -> list[str]:
    """The real architectures this nvcc can build, from ``nvcc --list-gpu-arch`` ('75', '80', ...)."""
    out = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True, check=True).stdout
    return sorted({m.group(1) for m in re.finditer(r"compute_(\d+)\b", out)}, key=lambda a: arch_capability(a))


def nvcc_cuda_version(nvcc: str) -> tuple[int, int]:
    """(13, 0) from ``nvcc --version``."""
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"release (\d+)\.(\d+)", out)
    if not m:
        raise RuntimeError(f"cannot read the CUDA version from `{nvcc} --version`: {out.strip()!r}")
    return int(m.group(1)), int(m.group(2))


def local_version_label(cuda_version: tuple[int, int] | None) -> str:
    """'cu130' for a wheel with the CUDA 13.0 runtime, 'cpu' for one without CUDA."""
    return "cpu" if cuda_version is None else f"cu{cuda_version[0]}{cuda_version[1]}"


def min_linux_driver(cuda_version: tuple[int, int]) -> str | None:
    """The minimum Linux driver for a CUDA runtime version, None when the table lacks it."""
    return MIN_LINUX_DRIVER.get(tuple(cuda_version))


class Coverage(NamedTuple):
    """How a build's code runs on a GPU: ``kind`` "sass" (native code of ``arch``), "ptx" (the
    driver JIT-compiles the PTX of ``arch`` on first launch) or "none" (``remedy`` says how to
    build for it). A NamedTuple, not a dataclass: setup.py loads this file outside any package."""

    kind: str
    arch: str | None
    remedy: str | None = None

    def describe(self, capability: tuple[int, int]) -> str:
        cc = f"{capability[0]}.{capability[1]}"
        if self.kind == "sass":
            return f"compute capability {cc}: covered by SASS sm_{self.arch}"
        if self.kind == "ptx":
            return (f"compute capability {cc}: no SASS for it; runs the PTX of compute_{self.arch}, "
                    f"JIT-compiled by the driver (slower first launch)")
        return f"compute capability {cc}: NOT covered; {self.remedy}"


def sass_runs_on(arch: str, capability: tuple[int, int]) -> bool:
    """CUDA's binary compatibility: SASS of sm_XY runs on X.Z for Z >= Y (same major); an
    arch-specific sm_XYa only on X.Y."""
    major, minor = arch_capability(arch)
    if arch_variant(arch) == "a":
        return (major, minor) == tuple(capability)
    return major == capability[0] and minor <= capability[1]


def ptx_runs_on(arch: str, capability: tuple[int, int]) -> bool:
    """PTX of compute_XY is JIT-compiled for any GPU of capability >= X.Y (arch-specific PTX:
    exactly X.Y)."""
    if arch_variant(arch) == "a":
        return arch_capability(arch) == tuple(capability)
    return tuple(capability) >= arch_capability(arch)


def cuda_coverage(capability: tuple[int, int], sass_archs: list[str], ptx: str | None) -> Coverage:
    """Whether code built with SASS ``sass_archs`` and PTX ``ptx`` runs on a GPU of compute
    capability ``capability`` (major, minor), and how. The closest SASS wins over the PTX."""
    capability = tuple(capability)
    native = [arch for arch in sass_archs if sass_runs_on(arch, capability)]
    if native:
        return Coverage("sass", max(native, key=_arch_order))
    if ptx and ptx_runs_on(ptx, capability):
        return Coverage("ptx", ptx)
    wanted = f"{capability[0]}{capability[1]}"
    return Coverage("none", None, f"rebuild with VGPA_CUDA_ARCHS=\"{wanted}\" (or add {wanted} to the list), "
                                  f"with a CUDA toolkit whose nvcc --list-gpu-arch lists compute_{wanted}")


# ---------------------------------------------------------------------------------------------
# Compile cache: ccache or sccache when on PATH, else a content-addressed object cache.


def cache_launcher():
    """ccache or sccache (first found on PATH), which then caches every compile; None otherwise.
    VGPA_BUILD_CACHE=off disables every cache."""
    if cache_dir() is None:
        return None
    for name in ("sccache", "ccache"):
        path = shutil.which(name)
        if path:
            return path
    return None


def cache_dir(environ=os.environ):
    """VGPA_BUILD_CACHE, default ~/.cache/vgpa/build; None when it is "off"."""
    value = environ.get("VGPA_BUILD_CACHE", "").strip()
    if value.lower() in ("0", "off", "no", "false"):
        return None
    return os.path.expanduser(value or os.path.join("~", ".cache", "vgpa", "build"))


@lru_cache(maxsize=None)
def _compiler_identity(executable):
    """The compiler's resolved path and its --version text: a new compiler is a new cache key."""
    path = shutil.which(executable) or executable
    out = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    return os.path.realpath(path) + "\n" + out


def _file_digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _dependencies(dep_command):
    """Every file a compile reads (the source and the headers it includes), from the compiler's
    -M output."""
    out = subprocess.run(dep_command, capture_output=True, text=True, check=True).stdout
    text = out.replace("\\\n", " ")
    files = text.split(":", 1)[1].split() if ":" in text else []
    return sorted(set(os.path.abspath(f) for f in files))


def _has_debug_info(command: list[str]) -> bool:
    """Whether a compile writes debug info: the last -g flag wins (pybind11 adds -g0, the
    sanitizer build -g after it); nvcc's -G is device debug info."""
    debug = False
    for arg in command:
        if arg in ("-g", "-ggdb", "-G") or re.fullmatch(r"-g[1-3]", arg):
            debug = True
        elif arg == "-g0":
            debug = False
    return debug


def cache_key_command(command: list[str], obj: str) -> list[str]:
    """The compile command as the cache key holds it: the compiler (its identity is keyed apart),
    the object and every file-system path left out. The content of every file the compile reads
    is keyed already, so where a build stands (pip's temporary build environment, an unpacked
    sdist, another clone) must not split the cache. A compile with debug info (-g) keeps its
    paths: the debugger finds the sources through them."""
    if _has_debug_info(command):
        return [arg if arg != obj else "<obj>" for arg in command[1:]]
    key = []
    for arg in command[1:]:
        if arg == obj:
            key.append("<obj>")
        elif os.path.isabs(arg) or os.path.exists(arg):
            key.append("<path>")
        elif arg[:2] in ("-I", "-L") and len(arg) > 2:
            key.append(arg[:2] + "<path>")
        else:
            key.append(arg)
    return key


def cached_compile(command: list[str], obj: str, dep_command: list[str], cache: str | None) -> bool:
    """Runs ``command`` (which writes ``obj``) unless the object cache holds an object made by the
    same compiler from the same sources and headers with the same flags; then copies it.

    The key hashes the compiler identity, the command without its paths (cache_key_command) and
    the content of every file the compile reads. Entries are written to a temporary file and
    renamed into place, so concurrent builds never see half an object. ``cache`` None: no cache.
    Returns whether the object came from the cache."""
    if cache is None:
        subprocess.check_call(command)
        return False
    # File names and digests, not paths (but with debug info): the same files read from another
    # folder are the same compile.
    name = os.path.abspath if _has_debug_info(command) else os.path.basename
    key_parts = {
        "compiler": _compiler_identity(command[0]),
        "command": cache_key_command(command, obj),
        "inputs": sorted((name(path), _file_digest(path)) for path in _dependencies(dep_command)),
    }
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()
    entry = os.path.join(cache, key[:2], key + ".o")
    hit = os.path.exists(entry)
    log = os.environ.get("VGPA_BUILD_CACHE_LOG")
    if log:  # why an object was compiled again: compare the key parts of two builds
        with open(log, "a") as f:
            f.write(json.dumps({"object": os.path.basename(obj), "hit": hit, "key": key, **key_parts}) + "\n")
    if hit:
        shutil.copyfile(entry, obj)
        return True
    subprocess.check_call(command)
    os.makedirs(os.path.dirname(entry), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(entry), suffix=".tmp")
    os.close(fd)
    shutil.copyfile(obj, tmp)
    os.replace(tmp, entry)
    return False
