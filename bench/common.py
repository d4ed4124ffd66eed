"""Timing, memory, bandwidth and result files shared by the bench entries."""

from __future__ import annotations

import csv
import json
import os
import platform
import re
import statistics
import time

import torch


def device_label(device: torch.device) -> str:
    """A folder-safe name of the hardware, e.g. 'nvidia-h100-80gb-hbm3' or 'cpu-2-cores'."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu-{torch.get_num_threads()}-threads"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, device: torch.device, warmup: int = 3, repeat: int = 10) -> float:
    """Median wall time of fn() in milliseconds, the device synchronised around each call."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        synchronize(device)
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def peak_memory_mib(fn, device: torch.device) -> float | None:
    """Peak device memory allocated while fn() runs, above what was allocated before (CUDA only)."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def copy_bandwidth_gbs(device: torch.device, nbytes: int = 1 << 30) -> float:
    """Achieved device-to-device copy bandwidth (bytes read + written per second), the roof
    that memory-bound kernels are compared with."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, warmup=3, repeat=10)
    return 2 * nbytes / (ms * 1e-3) / 1e9


def environment(device: torch.device) -> dict:
    env = {"device": device_label(device), "torch": torch.__version__, "python": platform.python_version()}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    return env


def write_results(op: str, rows: list[dict], device: torch.device, out_dir: str) -> str:
    """Writes rows to <out_dir>/<device>/<op>.csv and .json; returns the folder."""
    folder = os.path.join(out_dir, device_label(device))
    os.makedirs(folder, exist_ok=True)
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(os.path.join(folder, f"{op}.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(folder, f"{op}.json"), "w") as f:
        json.dump({"environment": environment(device), "rows": rows}, f, indent=2)
    return folder


def print_table(title: str, rows: list[dict]):
    if not rows:
        return
    fields = list(dict.fromkeys(k for row in rows for k in row))

    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    table = [[fmt(row.get(k)) for k in fields] for row in rows]
    widths = [max(len(k), *(len(r[i]) for r in table)) for i, k in enumerate(fields)]
    print(f"\n{title}")
    print("  ".join(k.rjust(w) for k, w in zip(fields, widths)))
    for r in table:
        print("  ".join(v.rjust(w) for v, w in zip(r, widths)))


def plan(device: torch.device, quick: bool, cpu_sizes: dict, gpu_sizes: dict,
         backends=("cuda", "triton", "cpu", "torch")):
    """(sizes, backends, repeat) of one op's run: the quick or full sizes for the device, the
    vgpa backends usable there (never the Triton interpreter, which is not a CPU backend) and
    the timing repeats."""
    from vgpa import _backend

    sizes = (gpu_sizes if device.type == "cuda" else cpu_sizes)["quick" if quick else "full"]
    usable = [b for b in backends if _backend.why_unavailable(b, device) is None]
    if device.type == "cpu":
        usable = [b for b in usable if b != "triton"]
    return sizes, usable, 20 if device.type == "cuda" else 3


def orbiting_cameras(videos: int, frames: int, height: int, width: int, translation=(1.0, 0.0, 0.0)):
    """Pinhole K (focal 0.9 max(H, W), centred) and world-to-camera poses that turn 0.01 rad a
    frame about y and move 0.02 * translation a frame: (B, T, 3, 3), (B, T, 4, 4) float32."""
    focal = 0.9 * max(height, width)
    k = torch.tensor([[focal, 0.0, (width - 1) / 2], [0.0, focal, (height - 1) / 2], [0.0, 0.0, 1.0]])
    intrinsics = k.expand(videos, frames, 3, 3).contiguous()
    extrinsics = torch.eye(4).repeat(videos, frames, 1, 1)
    steps = torch.arange(frames, dtype=torch.float32)[None, :, None]
    extrinsics[..., :3, 3] = 0.02 * steps * torch.tensor(translation)
    angle = 0.01 * steps[..., 0]
    extrinsics[..., 0, 0], extrinsics[..., 0, 2] = angle.cos(), angle.sin()
    extrinsics[..., 2, 0], extrinsics[..., 2, 2] = -angle.sin(), angle.cos()
    return intrinsics, extrinsics
