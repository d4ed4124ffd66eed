"""Diffusion-DPO loss, forward + backward: vgpa's backends against the eager formula (as the
diffusers Diffusion-DPO example and VideoGPA write it) and torch.compile of that formula."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import vgpa
from vgpa import _backend

from .common import copy_bandwidth_gbs, peak_memory_mib, time_ms

BETA = 500.0  # diffusers' -0.5 * beta' form with beta' = 2 * BETA gives the same loss

# (pairs, frames, channels, height, width) of CogVideoX-layout latents
CPU_SIZES = {"quick": [(1, 4, 16, 30, 45)], "full": [(1, 13, 16, 60, 90), (2, 13, 16, 60, 90)]}
GPU_SIZES = {
    "quick": [(2, 13, 16, 60, 90)],
    "full": [(2, 13, 16, 60, 90), (8, 13, 16, 60, 90), (2, 13, 16, 240, 360)],  # 4.5M, 18M, 72M per tensor
}


def eager_dpo_loss(model_pred, ref_pred, target, beta_prime=2 * BETA):
    """The loss as the diffusers Diffusion-DPO training example writes it (our statement)."""
    dims = list(range(1, model_pred.dim()))
    model_losses = (model_pred.float() - target.float()).pow(2).mean(dim=dims)
    model_w, model_l = model_losses.chunk(2)
    with torch.no_grad():
        ref_losses = (ref_pred.float() - target.float()).pow(2).mean(dim=dims)
        ref_w, ref_l = ref_losses.chunk(2)
    inside = -0.5 * beta_prime * ((model_w - model_l) - (ref_w - ref_l))
    return -F.logsigmoid(inside).mean()


def _fwd_bwd(loss_fn, model_pred):
    def step():
        model_pred.grad = None
        loss_fn().backward()

    return step


def run(device: torch.device, quick: bool = False) -> list[dict]:
    sizes = (GPU_SIZES if device.type == "cuda" else CPU_SIZES)["quick" if quick else "full"]
    dtypes = [torch.bfloat16, torch.float32] if device.type == "cuda" else [torch.float32]
    backends = [b for b in ("cuda", "triton", "cpu", "torch") if _backend.why_unavailable(b, device) is None]
    if device.type == "cpu":
        backends = [b for b in backends if b != "triton"]  # the interpreter is not a CPU backend
    roof = copy_bandwidth_gbs(device, 1 << 30 if device.type == "cuda" else 1 << 26)
    repeat = 20 if device.type == "cuda" else 5
    rows = []
    for pairs, frames, channels, height, width in sizes:
        shape = (2 * pairs, frames, channels, height, width)
        for dtype in dtypes:
            model_pred = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
            ref_pred = torch.randn(shape, device=device, dtype=dtype)
            target = torch.randn(shape, device=device, dtype=dtype)
            # forward reads 3 tensors, backward reads 2 and writes 1
            bytes_moved = 6 * model_pred.numel() * model_pred.element_size()

            impls = {"eager": lambda: eager_dpo_loss(model_pred, ref_pred, target)}
            if device.type == "cuda":
                compiled = torch.compile(eager_dpo_loss)
                impls["torch.compile"] = lambda: compiled(model_pred, ref_pred, target)
            for backend in backends:
                impls[f"vgpa[{backend}]"] = (
                    lambda b=backend: vgpa.diffusion_dpo_loss(model_pred, ref_pred, target, beta=BETA, backend=b).loss
                )

            reference_loss = eager_dpo_loss(model_pred, ref_pred, target).item()
            eager_ms = None
            for name, fn in impls.items():
                loss = fn().item()
                if abs(loss - reference_loss) > 1e-3 * max(1.0, abs(reference_loss)):
                    raise RuntimeError(f"{name} disagrees with the eager loss: {loss} vs {reference_loss}")
                step = _fwd_bwd(fn, model_pred)
                ms = time_ms(step, device, warmup=3, repeat=repeat)
                eager_ms = ms if name == "eager" else eager_ms
                gbs = bytes_moved / (ms * 1e-3) / 1e9
                rows.append({
                    "shape": "x".join(map(str, shape)), "dtype": str(dtype).replace("torch.", ""), "impl": name,
                    "ms": ms, "speedup": eager_ms / ms, "peak_mib": peak_memory_mib(step, device),
                    "GB/s": gbs, "of_copy": gbs / roof,
                })
    return rows
