"""Probes of the diffusion_dpo_loss op."""

import torch

import vgpa
from vgpa.ops import diffusion_dpo_loss as dpo
from vgpa.reference import diffusion_dpo_loss as reference

from .common import BATCH, FRAMES, SIZES, Probe, backward, generator


def _call_diffusion_dpo_loss(rec, size, dtype, loss_type, weight, layout, segments):
    height, width = SIZES[size]["latent"]
    shape = (2 * BATCH, FRAMES, 2, height, width)  # (2B, F, C, H, W), CogVideoX
    frame_dim = 1

    def tensor():
        x = torch.randn(shape, generator=generator()).to(dtype)
        if layout == "permuted":  # (2B, C, F, H, W) seen as a view of (2B, F, C, ...): Wan
            x = torch.randn((shape[0], shape[2], shape[1]) + shape[3:], generator=generator()).to(dtype)
            x = x.transpose(1, 2)
        return rec.keep(x)

    model_pred = tensor().requires_grad_(True)
    reference_free = loss_type in getattr(reference, "REFERENCE_FREE_LOSS_TYPES", ())
    ref_pred = None if reference_free else tensor()
    target = tensor()
    w = None
    if weight == "per element":
        w = rec.keep(torch.rand(shape, generator=generator()) + 0.5)
    elif weight == "broadcast":  # (2B, F, 1, H, W): read in place with a zero stride
        w = rec.keep(torch.rand(shape[:2] + (1,) + shape[3:], generator=generator()) + 0.5)
    result = vgpa.diffusion_dpo_loss(model_pred, ref_pred, target, beta=1.0, loss_type=loss_type, weight=w,
                                     segments=segments, frame_dim=frame_dim, backend="triton")
    backward(result.loss)


def probes() -> list[Probe]:
    return [
        Probe(dpo.diffusion_dpo_loss, ("model_pred", "ref_pred", "target", "frame_dim"),
              {"dtype": tuple(dpo.FLOAT_DTYPES), "loss_type": tuple(reference.LOSS_TYPES),
               "weight": (None, "per element", "broadcast"), "layout": ("contiguous", "permuted"),
               "segments": (1, 2)},
              ("beta", "label_smoothing", "pair_weight", "sft_weight", "backend"), _call_diffusion_dpo_loss),
    ]
