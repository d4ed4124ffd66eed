"""Which pixels become points of a cloud (docs/design.md 3.3): the confidence filter and its exact
keep count, run by vgpa.point_cloud and vgpa.point_map_cloud on every backend (the unprojection
itself is vgpa.unproject_depth)."""

from __future__ import annotations

import torch
from torch import Tensor


def confidence_keep_count(valid_count: int, conf_threshold: float) -> int:
    """ceil(N (1 - c / 100)) evaluated exactly on the decimal value the caller wrote for c."""
    from fractions import Fraction

    if conf_threshold <= 0:
        return valid_count
    keep = Fraction(valid_count) * (100 - Fraction(repr(float(conf_threshold)))) / 100
    return -((-keep.numerator) // keep.denominator)


CONF_TIES = ("first", "all")  # equal confidences at the cut: vgpa's rule, VideoGPA's rule


def point_cloud_selection(depth: Tensor | None, conf: Tensor | None, conf_threshold: float, ties: str = "first",
                          points: Tensor | None = None) -> list[Tensor]:
    """Per video, the flat pixel indices (t, v, u order, ascending) that become points.

    A pixel qualifies when its depth is finite and > 0 (or, given ``points`` (B, T, H, W, 3)
    in place of the depth, when its point is finite) and, with ``conf``, its confidence is
    finite and > 1e-5. With ``conf_threshold`` c > 0, k = ceil(N (1 - c / 100)) of the N
    qualifying pixels are kept, those of highest confidence. ``ties`` "first" keeps exactly k,
    equal confidences going to the earlier pixel; "all" keeps every qualifying pixel whose
    confidence is >= the k-th highest (VideoGPA's rule: ties at the cut are all kept).
    """
    if points is not None:
        videos = points.shape[0]
        valid = torch.isfinite(points).all(-1).reshape(videos, -1)
    else:
        videos = depth.shape[0]
        flat_depth = depth.reshape(videos, -1)
        valid = torch.isfinite(flat_depth) & (flat_depth > 0)
    if conf is not None:
        flat_conf = conf.reshape(videos, -1)
        valid &= torch.isfinite(flat_conf) & (flat_conf > 1e-5)
    selection = []
    for b in range(videos):
        # every pixel qualifying (the common case: a model's confidence is positive) needs no search
        index = torch.arange(valid.shape[1], device=valid.device) if bool(valid[b].all()) \
            else valid[b].nonzero().squeeze(1)
        if conf is not None and conf_threshold > 0 and index.numel():
            keep = confidence_keep_count(index.numel(), conf_threshold)
            values = flat_conf[b, index]
            if ties == "all":
                kth = torch.topk(values, keep).values[-1]
                index = index[values >= kth]
            else:
                # Stable descending sort: among equal confidences the earlier pixel comes first.
                order = torch.sort(values, descending=True, stable=True).indices[:keep]
                index = index[order].sort().values
        selection.append(index)
    return selection
