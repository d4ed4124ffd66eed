"""Inspection of a vgpa wheel: ``python -m vgpa_tools.wheels.inspect_wheel WHEEL [--archs "80;90"]``.

Fails (exit status 1, every problem listed) when

- the CUDA module does not hold SASS for exactly the requested architectures (every one of them
  in every CUDA object) and PTX for exactly the newest one (``cuobjdump --list-elf/--list-ptx``);
  without ``--archs``, the SASS found must be the same in every object and the PTX its newest;
- a compiled module needs a shared CUDA runtime or any torch library (its ELF NEEDED entries,
  ``readelf -d``), or auditwheel finds it inconsistent with a manylinux tag;
- the wheel lacks a Python file of the source tree (vgpa/**.py, kernels/**.py as vgpa/kernels,
  bench/**.py as vgpa/bench), vgpa._C, or vgpa._C_cuda_emu when ``--emulation`` is given;
- the local version label does not say what is inside (+cu<XY> with CUDA code, +cpu without).

The parsers and checks are pure functions of the tools' text (tests/test_wheel_inspection.py).
cuobjdump comes from CUOBJDUMP, PATH, CUDA_HOME/bin or the nvidia-cuda-cuobjdump package.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..build_config import BUILD

REPO = Path(__file__).resolve().parents[2]

# Shared libraries a vgpa module must not need: the CUDA runtime is linked statically, and the
# bindings take raw pointers, so no torch library either. libcuda.so.1 (the driver) is loaded
# by the static runtime at run time and is not a NEEDED entry either.
FORBIDDEN_NEEDED = re.compile(r"^(libcudart|libcuda\.|libnvrtc|libtorch|libc10|libshm|libcaffe2)")

_DEVICE_FILE = re.compile(r"^(ELF|PTX) file\s+\d+:\s*(\S+?)\.(?:sm|compute)_(\d+[af]?)\.(cubin|ptx)\s*$")


# ---------------------------------------------------------------------------------------------
# Parsers of the tools' output


def parse_cuobjdump_list(text: str) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """({object: SASS archs}, {object: PTX archs}) from ``cuobjdump --list-elf`` and
    ``--list-ptx`` output ("ELF file    1: render_points.sm_80.cubin" -> {"render_points": {"80"}});
    an index cuobjdump appends to a repeated object name ("t.3.sm_80.cubin") is dropped."""
    found = {"ELF": {}, "PTX": {}}
    for line in text.splitlines():
        m = _DEVICE_FILE.match(line.strip())
        if m:
            obj = re.sub(r"\.\d+$", "", m.group(2))
            found[m.group(1)].setdefault(obj, set()).add(m.group(3))
    return found["ELF"], found["PTX"]


def parse_needed(readelf_dynamic: str) -> list[str]:
    """The NEEDED entries of ``readelf -d`` output."""
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", readelf_dynamic)


def parse_auditwheel_show(text: str) -> tuple[str | None, list[str]]:
    """(the manylinux/musllinux tag auditwheel says the wheel is consistent with, or None;
    the lines that report a problem)."""
    flat = " ".join(text.split())
    m = re.search(r'consistent with the following platform tag: "?([a-z0-9_]+)"?', flat)
    problems = [line.strip() for line in text.splitlines()
                if re.search(r"is not|cannot|violat|error", line, re.I)]
    return (m.group(1) if m else None), problems


def wheel_version(wheel_name: str) -> str:
    """'0.1.0+cu130' from 'vgpa-0.1.0+cu130-cp311-cp311-manylinux_2_28_x86_64.whl'."""
    parts = os.path.basename(wheel_name).split("-")
    if len(parts) < 5 or not parts[-1].endswith(".whl"):
        raise ValueError(f"{wheel_name!r} is not a wheel file name")
    return parts[1]


# ---------------------------------------------------------------------------------------------
# Checks: each returns the list of problems it found (empty: passed)


def _by_capability(archs) -> list[str]:
    return sorted(archs, key=lambda a: (BUILD.arch_capability(a), a))


def check_device_code(sass: dict[str, set[str]], ptx: dict[str, set[str]], expected: list[str] | None) -> list[str]:
    """Every CUDA object holds SASS for exactly ``expected`` and PTX for exactly the newest of
    them (vgpa/_build_config.py: ptx_arch). Without ``expected``: the SASS of every object is
    the same set, and the PTX its newest."""
    if not sass and not ptx:
        return ["no CUDA device code in the module (built without nvcc?)"]
    objects = sorted(set(sass) | set(ptx))
    if expected is not None:
        want = _by_capability(set(expected))
    else:
        want = _by_capability(set().union(*sass.values())) if sass else []
    problems = []
    for obj in objects:
        have = _by_capability(sass.get(obj, set()))
        if have != want:
            missing = [a for a in want if a not in have]
            extra = [a for a in have if a not in want]
            problems.append(f"{obj}: SASS {';'.join(have) or 'none'}, "
                            + ("requested" if expected is not None else "other objects have") + f" {';'.join(want)}"
                            + (f" (missing {';'.join(missing)})" if missing else "")
                            + (f" (not requested {';'.join(extra)})" if extra and expected is not None else ""))
        if want:
            newest = BUILD.ptx_arch(want)
            if ptx.get(obj, set()) != {newest}:
                problems.append(f"{obj}: PTX {';'.join(_by_capability(ptx.get(obj, set()))) or 'none'}, expected "
                                f"exactly compute_{newest} (the newest arch)")
    return problems


def check_needed(module: str, needed: list[str]) -> list[str]:
    """A module must not need a shared CUDA runtime, the driver library or torch."""
    return [f"{module} needs {lib}: " + ("the CUDA runtime must be linked statically"
                                          if "cud" in lib or "nvrtc" in lib else "vgpa must not link torch")
            for lib in needed if FORBIDDEN_NEEDED.match(lib)]


def expected_python_files(root: Path) -> set[str]:
    """The wheel paths of every Python file of the source tree's packages: vgpa/**.py, and the
    folders of PACKAGE_DIRS under their package path. Symlinked folders inside vgpa/ (in-place
    conveniences) are skipped: their files come through PACKAGE_DIRS."""
    expected = set()
    for dirpath, dirnames, filenames in os.walk(root / "vgpa"):
        dirnames[:] = [d for d in dirnames if d != "__pycache__" and not os.path.islink(os.path.join(dirpath, d))]
        for name in filenames:
            if name.endswith(".py"):
                expected.add(Path(dirpath, name).relative_to(root).as_posix())
    for package_path, folder in BUILD.PACKAGE_DIRS.items():
        for path in (root / folder).rglob("*.py"):
            if "__pycache__" not in path.parts:
                expected.add(f"{package_path}/{path.relative_to(root / folder).as_posix()}")
    return expected


def check_files(names: list[str], expected_py: set[str], emulation: bool) -> list[str]:
    """Every expected Python file, vgpa._C, and vgpa._C_cuda_emu when ``emulation``."""
    present = set(names)
    problems = [f"missing {path}" for path in sorted(expected_py - present)]
    modules = {"_C": False, "_C_cuda_emu": False}
    for name in names:
        m = re.match(r"^vgpa/(_C|_C_cuda_emu)\.[^/]*\.so$", name)
        if m:
            modules[m.group(1)] = True
    if not modules["_C"]:
        problems.append("missing the compiled module vgpa/_C.*.so")
    if emulation and not modules["_C_cuda_emu"]:
        problems.append("missing vgpa/_C_cuda_emu.*.so (--emulation)")
    return problems


def check_version_label(version: str, has_cuda: bool, cuda_version: tuple[int, int] | None = None) -> list[str]:
    """+cu<XY> on a wheel with CUDA code (XY: ``cuda_version`` when known), +cpu on one without."""
    label = version.partition("+")[2]
    want = BUILD.local_version_label(cuda_version) if (has_cuda and cuda_version) else None
    if has_cuda and not (re.fullmatch(r"cu\d{3,}", label) and (want is None or label == want)):
        return [f"version {version}: a wheel with CUDA code is labelled +{want or 'cu<XY>'}"]
    if not has_cuda and label != "cpu":
        return [f"version {version}: a wheel without CUDA code is labelled +cpu"]
    return []


# ---------------------------------------------------------------------------------------------
# Running the tools


def find_cuobjdump() -> str | None:
    """CUOBJDUMP, cuobjdump on PATH or in CUDA_HOME/bin, else the one of the
    nvidia-cuda-cuobjdump package."""
    for candidate in (os.environ.get("CUOBJDUMP"), shutil.which("cuobjdump"),
                      os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "cuobjdump")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    try:
        files = importlib.metadata.files("nvidia-cuda-cuobjdump") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == "cuobjdump":
            path = str(file.locate())
            if os.access(path, os.X_OK):
                return path
    return None


def _run(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def _device_code(cuobjdump: str, module: str) -> tuple[list[str], list[str]]:
    outputs = []
    for flag in ("--list-elf", "--list-ptx"):
        result = subprocess.run([cuobjdump, flag, module], capture_output=True, text=True)
        # cuobjdump exits non-zero on a file without device code: that is a finding, not a failure.
        outputs.append(result.stdout)
    return parse_cuobjdump_list("\n".join(outputs))


def _archs_text(archs_by_object: dict[str, set[str]]) -> str:
    return ";".join(_by_capability(set().union(*archs_by_object.values()))) if archs_by_object else "none"


def inspect_wheel(wheel: str, archs: str | None, emulation: bool, source: Path = REPO,
                  auditwheel: bool = True) -> tuple[list[str], list[str]]:
    """(problems, findings) of ``wheel``; no problem: it passes. ``archs``: the VGPA_CUDA_ARCHS
    it was built with ("default" and family names are resolved against the nvcc at hand)."""
    problems, findings = [], []
    version = wheel_version(wheel)
    has_cuda = False
    with zipfile.ZipFile(wheel) as zf, tempfile.TemporaryDirectory() as tmp:
        names = zf.namelist()
        problems += check_files(names, expected_python_files(source), emulation)
        for name in [n for n in names if re.match(r"^vgpa/[^/]+\.so$", n)]:
            path = zf.extract(name, tmp)
            needed = parse_needed(_run(["readelf", "-d", path]))
            findings.append(f"{name} needs {', '.join(needed)}")
            problems += check_needed(name, needed)
            if not os.path.basename(name).startswith("_C."):
                continue
            # nvcc puts the device code of every object into the .nv_fatbin section.
            has_cuda = ".nv_fatbin" in _run(["readelf", "-S", "-W", path])
            if not has_cuda:
                findings.append(f"{name}: no CUDA device code")
                if "+cpu" not in version:
                    problems += check_device_code({}, {}, None)
                continue
            cuobjdump = find_cuobjdump()
            if cuobjdump is None:
                problems.append("cuobjdump not found (pip install nvidia-cuda-cuobjdump, or set CUOBJDUMP)")
                continue
            sass, ptx = _device_code(cuobjdump, path)
            findings.append(f"{name}: {len(set(sass) | set(ptx))} CUDA objects, SASS {_archs_text(sass)}, "
                            f"PTX {_archs_text(ptx)}")
            problems += check_device_code(sass, ptx, _expected_archs(archs) if archs else None)
    problems += check_version_label(version, has_cuda, _nvcc_version() if has_cuda else None)
    if auditwheel:
        tool = shutil.which("auditwheel")
        if tool is None:
            problems.append("auditwheel not found (pip install auditwheel)")
        else:
            result = subprocess.run([tool, "show", wheel], capture_output=True, text=True)
            tag, shown = parse_auditwheel_show(result.stdout + result.stderr)
            findings.append(f"auditwheel show: consistent with {tag}")
            if result.returncode != 0 or tag is None or not tag.startswith(("manylinux", "musllinux")) or shown:
                problems.append("auditwheel show: " + (" | ".join(shown) or (result.stdout + result.stderr).strip()))
            elif tag not in os.path.basename(wheel):
                problems.append(f"not repaired: auditwheel finds it consistent with {tag}, the file is not tagged so")
    return problems, findings


def _nvcc():
    nvcc = shutil.which("nvcc") or os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")
    return nvcc if os.access(nvcc, os.X_OK) else None


def _nvcc_version():
    nvcc = _nvcc()
    return BUILD.nvcc_cuda_version(nvcc) if nvcc else None


def _expected_archs(text: str) -> list[str]:
    nvcc = _nvcc()
    return BUILD.parse_cuda_archs(text, BUILD.nvcc_archs(nvcc) if nvcc else None)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vgpa_tools.wheels.inspect_wheel", description=__doc__.split("\n")[0])
    parser.add_argument("wheels", nargs="+", help="wheel files")
    parser.add_argument("--archs", help='the VGPA_CUDA_ARCHS the wheel was built for ("80;90", "default", ...); '
                                        "without it, the SASS must be consistent and the PTX its newest")
    parser.add_argument("--emulation", action="store_true", help="vgpa._C_cuda_emu must be in the wheel")
    parser.add_argument("--no-auditwheel", action="store_true", help="skip auditwheel show (an unrepaired wheel)")
    args = parser.parse_args(argv)
    failed = False
    for wheel in args.wheels:
        problems, findings = inspect_wheel(wheel, args.archs, args.emulation, auditwheel=not args.no_auditwheel)
        print(f"{os.path.basename(wheel)}: " + ("OK" if not problems else f"{len(problems)} problem(s)"))
        for finding in findings:
            print(f"  {finding}")
        for problem in problems:
            print(f"  - {problem}")
        failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
