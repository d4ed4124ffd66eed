"""Pairs: the frame-pair lists of the multi-view ops ((P, 2) int64 tensors of (source i,
target j)), and VideoGPA's preference pair of a scored prompt group (docs/design.md 1 step 4),
which `vgpa score` counts and the trainer loads; neither needs the training extras."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

# VideoGPA's pair selection (docs/design.md 1 step 4).
SCORE_KEY = "consistency_score"  # what the trainer ranks by: 3DCS, lower is better
MOTION_KEY = "motion_norm"  # what the trainer filters static videos by
MIN_MOTION = 1e-3
MIN_GAP = 0.05


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


# ---------------------------------------------------------------------------------------------
# Preference pairs


def _number(value) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def unusable_video(video, score_key: str = SCORE_KEY, motion_key: str = MOTION_KEY) -> Optional[str]:
    """Why a group's video entry cannot be ranked although it is there, or None.

    A video without the score or motion (absent or null) is simply not ranked; one that carries
    them as something other than a finite number (a string, NaN, inf, a bool) is unusable, and so
    is an entry that is not an object. The loaders report unusable videos (see
    :func:`load_videogpa_pairs`) instead of dropping them silently."""
    if not isinstance(video, dict):
        return f"is a {type(video).__name__}, not an object"
    bad = [f"{key}={video[key]!r}" for key in (score_key, motion_key)
           if video.get(key) is not None and _number(video[key]) is None]
    return f"has {' and '.join(bad)}, not a finite number" if bad else None


def select_videogpa_pair(videos: list, *, score_key: str = SCORE_KEY, motion_key: str = MOTION_KEY,
                         min_motion: float = MIN_MOTION, min_gap: float = MIN_GAP,
                         strict: bool = False) -> Optional[tuple[dict, dict]]:
    """VideoGPA's pair from one prompt group, or None.

    Videos without a finite score or motion, or with motion < ``min_motion``, are dropped;
    the winner has the lowest score, the loser the highest; the pair is kept when the gap
    (loser - winner) is >= ``min_gap``. Ties go to the earlier video. With ``strict``, a video
    whose score or motion is there but not a finite number (:func:`unusable_video`) raises
    ValueError instead of being dropped.
    """
    if strict:
        for index, video in enumerate(videos):
            reason = unusable_video(video, score_key, motion_key)
            if reason is not None:
                raise ValueError(f"video {index} {reason}")
    eligible = [v for v in videos if isinstance(v, dict) and _number(v.get(score_key)) is not None
                and _number(v.get(motion_key)) is not None and v[motion_key] >= min_motion]
    if len(eligible) < 2:
        return None
    scores = [float(v[score_key]) for v in eligible]
    best, worst = scores.index(min(scores)), scores.index(max(scores))
    if best == worst or scores[worst] - scores[best] < min_gap:
        return None
    return eligible[best], eligible[worst]
