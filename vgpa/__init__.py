"""vgpa: fused kernels for geometry-preference alignment of video diffusion models."""

from ._backend import BACKENDS, BackendUnavailableError, available_backends
from .ops.diffusion_dpo_loss import DiffusionDPOLoss, DiffusionDPOLossResult, diffusion_dpo_loss

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "DiffusionDPOLoss",
    "DiffusionDPOLossResult",
    "available_backends",
    "diffusion_dpo_loss",
]
