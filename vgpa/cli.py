"""Command line: `vgpa info`, `vgpa bench` and `vgpa score` (also `python -m vgpa ...`)."""

from __future__ import annotations

import argparse
import platform
import sys

import torch


def info() -> str:
    """Versions, the backends that can run here (and why not), the CUDA architectures compiled in."""
    from . import __version__, _backend

    lines = [f"vgpa {__version__}", f"python {platform.python_version()}", f"torch {torch.__version__}"]
    triton = _backend.triton_module()
    lines.append(f"triton {triton.__version__ if triton else 'not installed'}"
                 + (" (interpreter: TRITON_INTERPRET=1)" if triton and _backend.triton_interpreted() else ""))
    ext = _backend.extension()
    if ext is None:
        lines.append(f"vgpa._C: not importable ({_backend.extension_error()})")
    elif ext.with_cuda():
        lines.append(f"vgpa._C: C++ CPU + CUDA (archs {ext.cuda_archs()}, CUDA runtime "
                     f"{ext.cuda_runtime_version() // 1000}.{ext.cuda_runtime_version() % 1000 // 10} static; "
                     f"{ext.cuda_driver_status()})")
    else:
        lines.append("vgpa._C: C++ CPU only (built without nvcc)")
    if _backend.emulation_module() is not None:
        lines.append("vgpa._C_cuda_emu: the CUDA kernels on the host emulation (a test instrument: backend 'cuda' "
                     f"takes CPU tensors when {_backend.ENV_CUDA_EMULATION}=1)")
    gpu = torch.cuda.is_available()
    lines.append(f"GPU: {torch.cuda.get_device_name(0) if gpu else 'none visible to torch'}")
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if gpu else [])
    for device in devices:
        lines.append(f"backends for {device.type} tensors (auto -> {_backend.resolve('auto', device, 'info')}):")
        for name, reason in _backend.available_backends(device).items():
            lines.append(f"  {name:7s} {'yes' if reason is None else 'no: ' + reason}")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="vgpa", description="vgpa: fused kernels for VideoGPA-style alignment")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, available backends and compiled CUDA architectures")
    sub.add_parser("bench", add_help=False,
                   help="the bench: every op against the peers users run today, under pytest-benchmark; tables, "
                        "CSV/JSON and plots in bench/results/<device>/ (see `vgpa bench --help`)")
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
