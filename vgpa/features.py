"""Keypoint matching between video frames with OpenCV (the matching of VideoGPA's epipolar
score, docs/design.md 3.6): SIFT on the grey uint8 frame, brute-force kNN (k = 2, L2) and Lowe's
ratio test. Matching runs on the host, per frame; the fitting and scoring that follow are batched
(:func:`vgpa.fundamental_matrix`, :func:`vgpa.metrics.epipolar_score`).

Needs OpenCV: ``pip install "vgpa[video]"`` (opencv-python-headless), imported on first use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from . import _checks
from .video import import_cv2

OP = "match_features"


@dataclass
class MatchFeaturesResult:
    """Output of :func:`match_features`: the matches of P_total frame pairs, packed.

    x1, x2: (M_total, 2) float32 pixel coordinates (u = column, v = row) in the first and the
    second frame of each pair; pair p owns the next counts[p] rows.
    counts: (P_total,) int64, 0 for a pair below ``min_matches``.
    found: (P_total,) int64, the matches that passed the ratio test (kept or not).
    valid: (P_total,) bool, found >= max(min_matches, 1): the pair kept its matches.
    pairs: (P_total, 2) int64 frame indices (i, j) within the video.
    video: (P_total,) int64 video index.
    videos: the number of videos B.
    """

    x1: Tensor
    x2: Tensor
    counts: Tensor
    found: Tensor
    valid: Tensor
    pairs: Tensor
    video: Tensor
    videos: int


def _video_batch(op, frames):
    """frames -> a numpy array (B, T, H, W, C)."""
    if isinstance(frames, Tensor):
        array = frames.detach().cpu()
        array = array.float().numpy() if array.dtype in (torch.float16, torch.bfloat16) else array.numpy()
    elif isinstance(frames, np.ndarray):
        array = frames
    else:
        raise TypeError(f"{op}: frames must be a torch.Tensor or a numpy array, got {type(frames).__name__}")
    if not (array.dtype == np.uint8 or np.issubdtype(array.dtype, np.floating)):
        raise TypeError(f"{op}: frames must be uint8 or floating-point, got dtype {array.dtype}")
    shape = tuple(array.shape)
    if array.ndim == 5 and shape[2] in (1, 3):
        video = array.transpose(0, 1, 3, 4, 2)
    elif array.ndim == 4 and shape[1] in (1, 3):
        video = array.transpose(0, 2, 3, 1)[None]
    elif array.ndim == 4 and shape[3] in (1, 3):
        video = array[None]
    else:
        raise ValueError(f"{op}: frames must be (B, T, C, H, W), (T, C, H, W) or (T, H, W, C) with C = 1 or 3 "
                         f"channels, got shape {shape}")
    if 0 in video.shape:  # OpenCV and numpy's reductions would fail on it with messages of their own
        raise ValueError(f"{op}: frames must be non-empty (B, T, H, W >= 1), got shape {shape}")
    return video


def _value_range(video: np.ndarray, value_range):
    if value_range is not None:
        return value_range
    return (-1.0, 1.0) if float(np.nanmin(video)) < 0 else (0.0, 1.0)


def to_grey_uint8(video: np.ndarray, value_range=None) -> np.ndarray:
    """One video (T, H, W, C) -> grey uint8 frames (T, H, W), as VideoGPA prepares them.

    uint8 is used as it is. Floats in [-1, 1] become (x + 1) / 2 * 255, floats in [0, 1]
    become x * 255; then clipped to [0, 255] and cast to uint8 (truncation, as numpy's astype).
    ``value_range`` None decides per video: [-1, 1] when its minimum is below 0, else [0, 1].
    Three channels are RGB, turned grey by cv2.cvtColor(RGB2GRAY)."""
    cv2 = import_cv2("vgpa's feature matching")
    if video.dtype != np.uint8:
        low, _ = _value_range(video, value_range)
        scaled = (video + 1.0) / 2.0 * 255.0 if low < 0 else video * 255.0
        video = np.clip(np.nan_to_num(scaled, nan=0.0), 0, 255).astype(np.uint8)
    if video.shape[-1] == 1:
        return np.ascontiguousarray(video[..., 0])
    return np.stack([cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY) for frame in video])


def _check_options(op, ratio, min_matches, max_keypoints, value_range):
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) \
            or not 0 < ratio <= 1:
        raise ValueError(f"{op}: ratio must be a number in (0, 1], got {ratio!r}")
    if isinstance(min_matches, bool) or not isinstance(min_matches, int) or min_matches < 0:
        raise ValueError(f"{op}: min_matches must be an int >= 0, got {min_matches!r}")
    if max_keypoints is not None and (isinstance(max_keypoints, bool) or not isinstance(max_keypoints, int)
                                      or max_keypoints < 1):
        raise ValueError(f"{op}: max_keypoints must be None or an int >= 1, got {max_keypoints!r}")
    if value_range is not None and (not isinstance(value_range, (tuple, list))
                                    or tuple(value_range) not in ((0, 1), (-1, 1))):
        raise ValueError(f"{op}: value_range must be None, (0, 1) or (-1, 1), got {value_range!r}")


def match_features(frames, pairs=None, *, ratio=0.75, min_matches=20, max_keypoints=None,
                   value_range=None) -> MatchFeaturesResult:
    """SIFT matches for every frame pair of every video.

    frames: (B, T, C, H, W), (T, C, H, W) or one video (T, H, W, C), torch or numpy, C = 1
    (grey) or 3 (RGB); uint8, or float in [0, 1] or [-1, 1] (see :func:`to_grey_uint8`; a 4-D
    array whose second axis is 1 or 3 is read as (T, C, H, W)). pairs: (P, 2) frame indices
    (i, j), the same for every video, default consecutive frames (t, t + 1).

    Per frame, once: cv2.SIFT_create(nfeatures=max_keypoints or 0).detectAndCompute on the grey
    uint8 frame. Per pair: cv2.BFMatcher(NORM_L2).knnMatch(descriptors_i, descriptors_j, k=2),
    kept when the nearest distance < ``ratio`` x the second nearest. A pair with fewer than
    ``min_matches`` kept matches gets count 0 and valid False (VideoGPA skips it).
    """
    return matches_of(OP, frames, pairs, ratio, min_matches, max_keypoints, value_range)


def matches_of(op, frames, pairs, ratio, min_matches, max_keypoints, value_range) -> MatchFeaturesResult:
    """:func:`match_features` for the public function ``op``, which starts its error messages."""
    cv2 = import_cv2("vgpa's feature matching")
    _check_options(op, ratio, min_matches, max_keypoints, value_range)
    videos = _video_batch(op, frames)
    steps = videos.shape[1]
    pairs = _checks.pairs(op, pairs, steps, torch.device("cpu"))
    pairs = _checks.pair_indices(op, pairs, steps, torch.device("cpu"), source="frames")
    sift = cv2.SIFT_create(nfeatures=max_keypoints or 0)
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    pair_list = pairs.tolist()
    used = sorted({t for pair in pair_list for t in pair})
    x1, x2, counts, found = [], [], [], []
    for video in videos:
        grey = to_grey_uint8(video, value_range)
        features = {}
        for t in used:
            keypoints, descriptors = sift.detectAndCompute(grey[t], None)
            features[t] = (np.array([k.pt for k in keypoints], dtype=np.float32).reshape(-1, 2), descriptors)
        for i, j in pair_list:
            (points_i, descriptors_i), (points_j, descriptors_j) = features[i], features[j]
            kept = []
            if descriptors_i is not None and descriptors_j is not None and len(descriptors_j) >= 2:
                for candidates in matcher.knnMatch(descriptors_i, descriptors_j, k=2):
                    if len(candidates) == 2 and candidates[0].distance < ratio * candidates[1].distance:
                        kept.append((candidates[0].queryIdx, candidates[0].trainIdx))
            found.append(len(kept))
            if len(kept) < min_matches or not kept:
                counts.append(0)
                continue
            index = np.array(kept, dtype=np.int64)
            x1.append(points_i[index[:, 0]])
            x2.append(points_j[index[:, 1]])
            counts.append(len(kept))
    empty = np.zeros((0, 2), dtype=np.float32)
    batch, pair_count = videos.shape[0], len(pair_list)
    found = torch.tensor(found, dtype=torch.int64)
    return MatchFeaturesResult(
        x1=torch.from_numpy(np.concatenate(x1) if x1 else empty),
        x2=torch.from_numpy(np.concatenate(x2) if x2 else empty),
        counts=torch.tensor(counts, dtype=torch.int64),
        found=found,
        valid=found >= max(min_matches, 1),
        pairs=pairs.repeat(batch, 1),
        video=torch.arange(batch).repeat_interleave(pair_count),
        videos=batch)
