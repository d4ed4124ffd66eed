"""The sanitizer pass: the C++ CPU kernels and the emulated CUDA kernels built with
AddressSanitizer, and a representative set of tests run against them, so a kernel that reads or
writes outside the tensors it was given stops the run with a report.

    python -m vgpa_tools.gpu_proof sanitize [-- extra pytest arguments]

Builds into build/sanitize (VGPA_SANITIZE=address, no nvcc) and runs pytest with the ASan runtime
preloaded and vgpa loading its compiled modules from there (VGPA_EXTENSION_DIR). Needs a C++
compiler with libasan, pybind11 and setuptools (the `test` extra has them).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(ROOT, "build", "sanitize")

# The cpu and cuda cases, but those that call the same kernels at the same shapes again for
# another purpose, with no index path the others miss: gradcheck's finite differences, and the
# emulation tests that rerun each kernel under every schedule or compare its decisions with the
# C++ twin's (the emulation's own tests of faults, launch limits and the out-of-bounds proof stay).
# Together they took half of the run.
SELECTION = "(cpu or cuda) and not gradcheck and not under_every_schedule and not decides_as_the_cpu_twin"


def op_tests() -> list[str]:
    """tests/test_<op>.py of every op with compiled kernels (a csrc/<op>.cpp), found rather than
    listed, so a new op is sanitized from its first test; its cpu and cuda cases run each kernel on
    odd sizes, invalid inputs and non-contiguous layouts."""
    ops = sorted(os.path.basename(path)[:-len(".cpp")] for path in glob.glob(os.path.join(ROOT, "csrc", "*.cpp"))
                 if not path.endswith("_bindings.cpp") and os.path.basename(path) != "bindings.cpp")
    missing = [op for op in ops if not os.path.exists(os.path.join(ROOT, "tests", f"test_{op}.py"))]
    if missing:
        raise SystemExit(f"sanitize: no tests/test_<op>.py for the compiled op(s) {missing}")
    return [f"tests/test_{op}.py" for op in ops]


def tests() -> list[str]:
    """Every test of the emulation itself, then every op's tests."""
    return ["tests/test_cuda_emulation.py"] + op_tests()


def _runtime_library(name: str) -> str:
    compiler = os.environ.get("CXX", "c++")
    path = subprocess.run([compiler, f"-print-file-name={name}"], capture_output=True, text=True,
                          check=True).stdout.strip()
    if not os.path.isabs(path) or not os.path.exists(path):
        raise SystemExit(f"{compiler} has no {name}; install its AddressSanitizer runtime (e.g. libasan8)")
    return path


def preload() -> str:
    """The ASan runtime first, then libstdc++: python itself does not link libstdc++, and ASan
    must find the real __cxa_throw when it starts, or the first C++ exception aborts."""
    return f"{_runtime_library('libasan.so')} {_runtime_library('libstdc++.so')}"


def build() -> None:
    env = dict(os.environ, VGPA_SANITIZE="address", VGPA_BUILD_CUDA_EMULATION="1", VGPA_BUILD_CUDA="0")
    log = BUILD + ".log"
    os.makedirs(os.path.dirname(log), exist_ok=True)
    print(f"building the AddressSanitizer modules into {BUILD} (log: {log})", flush=True)
    with open(log, "w") as out:
        done = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "-b", BUILD, "-t", BUILD + "-tmp"],
                              cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        with open(log) as f:
            print(f.read()[-6000:], file=sys.stderr)
        raise SystemExit(f"the sanitizer build failed (exit {done.returncode})")


def run_tests(extra: list[str]) -> int:
    env = dict(os.environ,
               LD_PRELOAD=preload(),
               # torch's own allocations mix new[] and free in places: not vgpa's to report.
               ASAN_OPTIONS="detect_leaks=0:alloc_dealloc_mismatch=0:abort_on_error=0",
               VGPA_EXTENSION_DIR=os.path.join(BUILD, "vgpa"),
               VGPA_SANITIZER_RUN="1")
    # One pytest worker per core (pytest-xdist, in the test extra): the workers inherit the preload.
    workers = ["-n", "auto"] if importlib.util.find_spec("xdist") else []
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *workers, *tests(), "-k", SELECTION, *extra]
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


def main(argv: list[str]) -> int:
    extra = argv[1:] if argv and argv[0] == "--" else argv
    build()
    return run_tests(extra)
