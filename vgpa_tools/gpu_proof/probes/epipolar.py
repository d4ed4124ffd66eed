"""Probes of the epipolar op: sampson_distance, ransac_inlier_count and fundamental_matrix, which
launches both."""

import torch

import vgpa
from vgpa.ops import epipolar
from vgpa.ops import fundamental_matrix as fundamental

from . import common
from .common import BATCH, SIZES, Probe, generator


def _matches(rec, size, dtype):
    """Two pairs of matches, packed, with F (P, 3, 3): pixel coordinates on a 64-pixel frame."""
    count = SIZES[size]["points"]
    x1 = rec.keep((64 * torch.rand(2 * count - 1, 2, generator=generator())).to(dtype))
    x2 = rec.keep((x1 + torch.rand(x1.shape, generator=generator())).to(dtype))
    fundamental = rec.keep(torch.randn(BATCH, 3, 3, generator=generator()).to(dtype))
    return fundamental, x1, x2, [count, count - 1]


def _call_sampson_distance(rec, size, dtype, squared, backward):
    fundamental, x1, x2, counts = _matches(rec, size, dtype)
    for x in (fundamental, x1, x2):  # one backward kernel makes every gradient
        x.requires_grad_(backward)
    common.backward(vgpa.sampson_distance(fundamental, x1, x2, counts=counts, squared=squared, backend="triton"))


def _call_ransac_inlier_count(rec, size, dtype):
    fundamental, x1, x2, counts = _matches(rec, size, dtype)
    hypotheses = rec.keep(fundamental[:, None] + torch.randn(BATCH, 20, 3, 3, generator=generator()).to(dtype))
    vgpa.ransac_inlier_count(hypotheses, x1, x2, threshold=1.0, counts=counts, backend="triton")


def _call_fundamental_matrix(rec, size, dtype, method):
    _, x1, x2, counts = _matches(rec, size, dtype)
    # weights belong to the 8-point fit; RANSAC makes its own (the inlier mask) for the refit
    weights = rec.keep(torch.rand(x1.shape[0], generator=generator()).to(dtype)) if method == "8point" else None
    vgpa.fundamental_matrix(x1, x2, counts=counts, weights=weights, method=method, iterations=16, backend="triton")


def probes() -> list[Probe]:
    return [
        Probe(epipolar.sampson_distance, ("F", "x1", "x2", "counts"),
              {"dtype": epipolar.DTYPES, "squared": (False, True), "backward": (False, True)},
              ("backend",), _call_sampson_distance),
        Probe(epipolar.ransac_inlier_count, ("F_hypotheses", "x1", "x2", "counts"), {"dtype": epipolar.DTYPES},
              ("threshold", "backend"), _call_ransac_inlier_count),
        Probe(fundamental.fundamental_matrix, ("x1", "x2", "counts", "weights"),
              {"dtype": fundamental.POINT_DTYPES, "method": fundamental.METHODS},
              ("threshold", "iterations", "confidence", "seed", "backend"), _call_fundamental_matrix),
    ]
