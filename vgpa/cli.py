"""Command line: `vgpa info`, `vgpa bench` and `vgpa score` (also `python -m vgpa ...`)."""

from __future__ import annotations

import argparse
import platform
import sys

import torch


def cuda_build_lines(sass_archs: str, ptx_arch: str, runtime_version: int,
                     gpus: list[tuple[str, tuple[int, int]]]) -> list[str]:
    """What ``vgpa info`` says about a CUDA build: its SASS and PTX, the CUDA runtime it bundles
    with the driver that runtime needs, and for each GPU (name, compute capability) whether the
    build covers it, and how (vgpa/_build_config.py: cuda_coverage). Pure: tested with fake GPUs."""
    from . import _build_config as build

    sass = [arch for arch in sass_archs.split(";") if arch]
    runtime = (runtime_version // 1000, runtime_version % 1000 // 10)
    driver = build.min_linux_driver(runtime)
    lines = [f"  SASS {' '.join('sm_' + arch for arch in sass) or 'none'}; "
             f"PTX {'compute_' + ptx_arch if ptx_arch else 'none'} (JIT-compiled on newer GPUs)",
             f"  CUDA runtime {runtime[0]}.{runtime[1]}, linked statically; needs an NVIDIA driver "
             + (f">= {driver} on Linux" if driver else f"supporting CUDA {runtime[0]}.{runtime[1]}")]
    for index, (name, capability) in enumerate(gpus):
        coverage = build.cuda_coverage(capability, sass, ptx_arch or None)
        lines.append(f"  GPU {index} {name}: {coverage.describe(capability)}")
    return lines


def _distribution_version() -> str | None:
    """The installed distribution's version (a wheel's carries the +cuXY/+cpu label), if any; a
    build's leftover vgpa.egg-info in the source tree is not an installation (it has no WHEEL)."""
    from importlib import metadata

    try:
        dist = metadata.distribution("vgpa")
    except metadata.PackageNotFoundError:
        return None
    return dist.version if dist.read_text("WHEEL") is not None else None


def version_line() -> str:
    """``vgpa 0.1.0``, with the installed wheel's version where it carries a +cuXY/+cpu label."""
    from . import __version__

    installed = _distribution_version()
    return f"vgpa {__version__}" + (f" (installed as {installed})" if installed and installed != __version__ else "")


def info() -> str:
    """Versions, the backends that can run here (and why not), the CUDA architectures compiled in
    and whether they cover the GPUs here."""
    from . import _backend

    lines = [version_line(), f"python {platform.python_version()}", f"torch {torch.__version__}"]
    triton = _backend.triton_module()
    lines.append(f"triton {triton.__version__ if triton else 'not installed'}"
                 + (" (interpreter: TRITON_INTERPRET=1)" if triton and _backend.triton_interpreted() else ""))
    gpu = torch.cuda.is_available()
    gpus = [(torch.cuda.get_device_name(i), torch.cuda.get_device_capability(i))
            for i in range(torch.cuda.device_count())] if gpu else []
    ext = _backend.extension()
    if ext is None:
        lines.append(f"vgpa._C: not importable ({_backend.extension_error()})")
    elif ext.with_cuda():
        lines.append(f"vgpa._C: C++ CPU + CUDA ({_backend.cuda_status()})")
        lines += cuda_build_lines(ext.cuda_archs(), ext.cuda_ptx_arch(), ext.cuda_runtime_version(), gpus)
    else:
        lines.append("vgpa._C: C++ CPU only (built without nvcc)")
    if _backend.emulation_module() is not None:
        lines.append("vgpa._C_cuda_emu: the CUDA kernels on the host emulation (a test instrument: backend 'cuda' "
                     f"takes CPU tensors when {_backend.ENV_CUDA_EMULATION}=1)")
    lines.append(f"GPU: {', '.join(name for name, _ in gpus) if gpu else 'none visible to torch'}")
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if gpu else [])
    for device in devices:
        lines.append(f"backends for {device.type} tensors (auto -> {_backend.resolve('auto', device, 'info')}):")
        for name, reason in _backend.available_backends(device).items():
            lines.append(f"  {name:7s} {'yes' if reason is None else 'no: ' + reason}")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="vgpa", description="vgpa: fused kernels for VideoGPA-style alignment")
    parser.add_argument("--version", action="version", version=version_line())
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, available backends, compiled CUDA architectures and GPU coverage")
    sub.add_parser("bench", add_help=False,
                   help="the bench: every op against the peers users run today, under pytest-benchmark, at "
                        "each op's default size (--full: every size); tables, the headline, CSV/JSON and plots "
                        "in a new folder of ~/.cache/vgpa/bench/ (see `vgpa bench --help`)")
    sub.add_parser("score", help="score videos for geometric consistency into meta_data.json "
                                 "(see `vgpa score --help`)", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "info":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        print(info())
        return 0
    if args.command == "score":
        from .score_command import main as score_main

        return score_main(rest)
    from .bench.run import main as bench_main

    return bench_main(rest)
