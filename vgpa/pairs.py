"""Frame-pair lists for the multi-view ops: (P, 2) int64 tensors of (source i, target j)."""

from __future__ import annotations

import torch
from torch import Tensor


def _pairs(pairs: list[tuple[int, int]], symmetric: bool) -> Tensor:
    if symmetric:
        pairs = pairs + [(j, i) for i, j in pairs]
    return torch.tensor(pairs, dtype=torch.int64).view(-1, 2)


def _check_frames(frames: int) -> int:
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise ValueError(f"frames must be an int >= 1, got {frames!r}")
    return frames


def adjacent_pairs(frames: int, symmetric: bool = False) -> Tensor:
    """(t, t + 1) for t = 0 .. T-2 (VideoGPA's MVCS pairs); with ``symmetric`` also (t + 1, t)."""
    frames = _check_frames(frames)
    return _pairs([(t, t + 1) for t in range(frames - 1)], symmetric)


def window_pairs(frames: int, window: int, symmetric: bool = False) -> Tensor:
    """(i, j) with 0 < j - i <= window, ordered by i then j; with ``symmetric`` also (j, i)."""
    frames = _check_frames(frames)
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an int >= 1, got {window!r}")
    return _pairs([(i, j) for i in range(frames) for j in range(i + 1, min(frames, i + window + 1))], symmetric)


def all_pairs(frames: int, symmetric: bool = False) -> Tensor:
    """(i, j) with i < j; with ``symmetric`` every ordered pair i != j."""
    frames = _check_frames(frames)
    return window_pairs(frames, max(frames - 1, 1), symmetric)
