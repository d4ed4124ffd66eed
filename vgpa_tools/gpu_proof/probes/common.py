"""What the probes of every op share: the Probe itself, the probe sizes and the inputs that
several ops take (cameras, depth), each kept by the recorder so that it is never filled."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Probe:
    """How one public op is called over its option space.

    inputs: its data arguments (tensors, their shapes); options: probed axes, each with its full
    discrete domain (most taken from the op's own constants), including axes that are not
    parameters (dtype, which inputs need a gradient, layouts); host_only: parameters that never
    reach a launch (one value is enough). ``call(recorder, size, **option)`` runs one combination
    forward and backward."""

    function: object
    inputs: tuple
    options: dict
    host_only: tuple
    call: object

    def cases(self):
        keys = list(self.options)
        for values in itertools.product(*(self.options[k] for k in keys)):
            yield dict(zip(keys, values))


SIZES = {  # (height, width) of the geometry probes, elements per DPO sample, points per cloud
    "small": {"frame": (6, 7), "latent": (4, 5), "points": 50},
    # above every pixel chunk (4096) and point block (1024) of the kernels
    "large": {"frame": (66, 68), "latent": (24, 30), "points": 3000},
}
BATCH, FRAMES = 2, 3  # never 1: Triton would specialise such sizes as constants


def generator():
    return torch.Generator().manual_seed(0)


def probe_cameras(rec, batch, frames, height, width):
    intrinsics = torch.tensor([[1.2 * width, 0.0, (width - 1) / 2], [0.0, 1.2 * width, (height - 1) / 2],
                               [0.0, 0.0, 1.0]]).repeat(batch, frames, 1, 1)
    extrinsics = torch.eye(4).repeat(batch, frames, 1, 1)
    extrinsics[..., 0, 3] = 0.02 * torch.arange(frames)
    return rec.keep(intrinsics), rec.keep(extrinsics)


def probe_depth(rec, size, dtype, requires_grad=False):
    height, width = SIZES[size]["frame"]
    values = (2 + torch.rand(BATCH, FRAMES, height, width, generator=generator())).to(dtype)
    return rec.keep(values.requires_grad_(requires_grad))


def backward(*terms):
    loss = sum(t.float().sum() for t in terms if t is not None and t.requires_grad)
    if not isinstance(loss, int):
        loss.backward()


def gradients(*differentiable):
    """Every non-empty set of the differentiable inputs."""
    return [c for n in range(1, len(differentiable) + 1) for c in itertools.combinations(differentiable, n)]
