"""Scores of the VideoGPA recipe built on vgpa's fused ops."""

import math
from dataclasses import dataclass
from typing import Optional

import torch

from .ops.reprojection_error import mvcs


# --------------------------------------------------------------------------------------------
# 3DCS (point-cloud re-render consistency) and the motion filter (docs/design.md 3.3)


def consistency_score(points, colors, intrinsics, extrinsics, frames, *, counts=None, masked=False,
                      background=0.0, lpips=None, lpips_weight=1.0, backend="auto"):
    """VideoGPA's 3D consistency score per video (lower is better): mean over frames of the
    re-render MSE (:func:`vgpa.render_consistency`) + ``lpips_weight`` x mean over frames of
    ``lpips(render, frame)``.

    lpips: None (MSE only) or a callable taking renders and frames (B * T, C, H, W) in the
    frames' value range and returning one distance per image, e.g. a wrapped ``lpips.LPIPS``
    (which wants [-1, 1]: pass ``lambda a, b: net(a, b, normalize=True)`` for [0, 1] frames).
    With ``masked``, frames that nothing landed on are left out of the mean. Returns (B,).

    A video whose render covers no pixel of any frame (an empty point cloud: no valid depth,
    or a confidence filter that left no point; or no point in front of any camera) has no 3DCS:
    its score is NaN, never the error of an empty render against the frames, which would rank
    dark frames first.
    """
    from .ops.render_points import render_consistency, render_points

    op = "consistency_score"
    if lpips is not None and not callable(lpips):
        raise TypeError(f"{op}: lpips must be None or a callable (render, frame) -> distances, "
                        f"got {type(lpips).__name__}")
    if isinstance(lpips_weight, bool) or not isinstance(lpips_weight, (int, float)) or not math.isfinite(lpips_weight):
        raise TypeError(f"{op}: lpips_weight must be a finite number, got {lpips_weight!r}")
    result = render_consistency(points, colors, intrinsics, extrinsics, frames, counts=counts, masked=masked,
                                background=background, backend=backend)
    score = result.mse.nanmean(1) if masked else result.mse.mean(1)
    # Undefined where nothing landed anywhere (no host sync: a where on the device).
    score = torch.where(result.coverage.sum(1) > 0, score, torch.full_like(score, float("nan")))
    if lpips is None:
        return score
    render = render_points(points, colors, intrinsics, extrinsics, frames.shape[-2], frames.shape[-1],
                           counts=counts, background=background, backend=backend).image
    videos, steps = frames.shape[:2]
    distance = torch.as_tensor(lpips(render.to(frames.dtype).flatten(0, 1), frames.flatten(0, 1)),
                               device=frames.device)
    images = videos * steps
    # One distance per image: (B*T,), or (B*T, 1, 1, 1) as lpips.LPIPS returns it.
    if distance.dim() < 1 or distance.shape[0] != images or distance.numel() != images:
        raise ValueError(f"{op}: lpips must return one distance per image, shape ({images},) or ({images}, 1, 1, 1) "
                         f"for B * T = {videos} * {steps} images; it returned shape {tuple(distance.shape)}")
    distance = distance.reshape(videos, steps).to(score.dtype)
    return score + lpips_weight * distance.mean(1)


def motion_score(extrinsics):
    """Camera motion of each video, VideoGPA's filter for static videos (pairs drop videos
    below 0.001): mean ||t_(k+1) - t_k|| + 0.1 x mean angle(R_(k+1) R_k^T) in radians over
    consecutive frames. extrinsics: (..., T, 4, 4) or (..., T, 3, 4) world-to-camera, T >= 2.
    Returns (...)."""
    if not isinstance(extrinsics, torch.Tensor) or not extrinsics.is_floating_point():
        raise TypeError("motion_score: extrinsics must be a floating-point tensor")
    if extrinsics.dim() < 3 or extrinsics.shape[-1] != 4 or extrinsics.shape[-2] not in (3, 4):
        raise ValueError(f"motion_score: extrinsics must be (..., T, 4, 4) or (..., T, 3, 4), "
                         f"got {tuple(extrinsics.shape)}")
    if extrinsics.shape[-3] < 2:
        raise ValueError("motion_score: needs at least two frames")
    acc = torch.float64 if extrinsics.dtype == torch.float64 else torch.float32
    rotation, translation = extrinsics[..., :3, :3].to(acc), extrinsics[..., :3, 3].to(acc)
    step = (translation[..., 1:, :] - translation[..., :-1, :]).norm(dim=-1)
    relative = rotation[..., 1:, :, :] @ rotation[..., :-1, :, :].transpose(-1, -2)
    # atan2 of (sin, cos) of the rotation angle: accurate near 0 and pi, unlike acos of the trace.
    cos = (relative.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    skew = torch.stack([relative[..., 2, 1] - relative[..., 1, 2], relative[..., 0, 2] - relative[..., 2, 0],
                        relative[..., 1, 0] - relative[..., 0, 1]], dim=-1)
    angle = torch.atan2(skew.norm(dim=-1) / 2, cos)
    return step.mean(-1) + 0.1 * angle.mean(-1)


# --------------------------------------------------------------------------------------------
# Epipolar consistency (docs/design.md 3.6)


@dataclass
class EpipolarScoreResult:
    """Output of :func:`epipolar_score`. Lower scores are better.

    score: (B,) per video: "8point", VideoGPA's score, the mean over valid pairs of the pair
    scores; "ransac", the mean over valid pairs of the pairs' median Sampson distance. NaN for
    a video without a valid pair (VideoGPA returns -1 there).
    inlier_ratio: ("ransac") (B,) inliers / matches over the video's valid pairs; else None.
    pair_score: (P_total,) per frame pair, NaN where invalid: "8point" the mean over its
    matches of sqrt(d^2 + 1e-8), "ransac" the (lower) median of d over all its matches.
    pair_inlier_ratio: ("ransac") (P_total,) inlier_count / count, NaN where invalid.
    valid: (P_total,) bool, a pair with enough matches and a valid F.
    F: (P_total, 3, 3) the fitted fundamental matrices (see :func:`vgpa.fundamental_matrix`).
    matches: the :class:`vgpa.features.MatchFeaturesResult` scored (pairs, video ids, counts).
    """

    score: torch.Tensor
    inlier_ratio: Optional[torch.Tensor]
    pair_score: torch.Tensor
    pair_inlier_ratio: Optional[torch.Tensor]
    valid: torch.Tensor
    F: torch.Tensor
    matches: object


def epipolar_score(frames=None, pairs=None, *, method="8point", threshold=1.0, iterations=1024, confidence=0.999,
                   seed=0, backend="auto", matches=None, ratio=0.75, min_matches=20, max_keypoints=None,
                   value_range=None) -> EpipolarScoreResult:
    """Epipolar consistency of each video (lower is better).

    frames: as :func:`vgpa.match_features` takes them, (B, T, C, H, W), (T, C, H, W) or
    (T, H, W, C); pairs default to consecutive frames. Or ``matches``: a
    :class:`vgpa.features.MatchFeaturesResult` computed before (then leave frames and pairs out);
    the fit runs on the device of the frames (a tensor), else of the matches.

    method "8point" is VideoGPA's score: F by the 8-point algorithm on all matches of a pair,
    pair score = mean over matches of sqrt(d^2 + 1e-8) with d the Sampson distance, video score =
    mean over the pairs with a valid F. "ransac" fits F robustly (:func:`vgpa.fundamental_matrix`
    with ``threshold``, ``iterations``, ``confidence``, ``seed``) and scores the median Sampson
    distance over all matches, plus the inlier ratio. One batched fit and one Sampson call score
    all pairs of all videos; ``backend`` picks the kernels. ratio, min_matches, max_keypoints and
    value_range go to :func:`vgpa.match_features`.
    """
    from . import _backend
    from .features import MatchFeaturesResult, matches_of
    from .ops.epipolar import sampson_distance
    from .ops.fundamental_matrix import METHODS, check_ransac_options, fundamental_matrix, match_layout

    op = "epipolar_score"
    if method not in METHODS:
        raise ValueError(f"{op}: method must be one of {METHODS}, got {method!r}")
    check_ransac_options(op, threshold, iterations, confidence, seed)
    if matches is None:
        if frames is None:
            raise ValueError(f"{op}: pass frames, or matches from vgpa.match_features")
        matches = matches_of(op, frames, pairs, ratio, min_matches, max_keypoints, value_range)
    elif not isinstance(matches, MatchFeaturesResult):
        raise TypeError(f"{op}: matches must be a vgpa.features.MatchFeaturesResult, got {type(matches).__name__}")
    elif frames is not None or pairs is not None:
        raise ValueError(f"{op}: pass either frames (and pairs) or matches, not both")
    device = frames.device if isinstance(frames, torch.Tensor) else matches.x1.device
    _backend.resolve(backend, device, op)
    x1, x2, counts = matches.x1.to(device), matches.x2.to(device), matches.counts.to(device)
    layout = match_layout(op, x1, x2, counts)
    fit = fundamental_matrix(x1, x2, counts=counts, method=method, threshold=threshold, iterations=iterations,
                             confidence=confidence, seed=seed, backend=backend)
    valid = fit.valid
    member = (matches.video.to(device)[None, :] == torch.arange(matches.videos, device=device)[:, None]) & valid
    pairs_per_video = member.sum(1)
    nan = torch.tensor(float("nan"), dtype=x1.dtype, device=device)

    def per_video(values):  # mean over each video's valid pairs, NaN without one
        total = torch.where(member, values[None, :], 0).sum(1)
        return torch.where(pairs_per_video > 0, total / pairs_per_video.clamp_min(1), nan)

    if method == "8point":
        squared = sampson_distance(fit.F, x1, x2, counts=counts, squared=True, backend=backend)
        error = layout.to_padded(torch.sqrt(squared + 1e-8), 0.0).sum(-1) / layout.counts.clamp_min(1)
        pair_score = torch.where(valid, error, nan)
        return EpipolarScoreResult(per_video(pair_score), None, pair_score, None, valid, fit.F, matches)
    distance = sampson_distance(fit.F, x1, x2, counts=counts, squared=False, backend=backend)
    padded = layout.to_padded(distance, float("nan"))
    median = padded.nanmedian(-1).values if layout.width else padded.new_full((layout.pairs,), float("nan"))
    pair_score = torch.where(valid, median, nan)
    pair_ratio = torch.where(valid, fit.inlier_count / layout.counts.clamp_min(1), nan)
    inliers = torch.where(member, fit.inlier_count[None, :], 0).sum(1)
    total = torch.where(member, layout.counts[None, :], 0).sum(1)
    ratio_video = torch.where(total > 0, inliers / total.clamp_min(1), nan).to(x1.dtype)
    return EpipolarScoreResult(per_video(pair_score), ratio_video, pair_score, pair_ratio.to(x1.dtype), valid,
                               fit.F, matches)
