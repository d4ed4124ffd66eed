"""Epipolar consistency: batched fundamental matrices and Sampson distances for all frame pairs
of all videos at once, against

- "kornia loop": VideoGPA's per-pair loop as we state it (DESIGN 3.6): for each consecutive pair
  of each video, kornia's find_fundamental on all matches, then sampson_epipolar_distance and
  the mean of sqrt(d^2 + 1e-8), one pair at a time;
- "cv2 RANSAC loop": cv2.findFundamentalMat(FM_RANSAC) per pair (threshold 1 px, confidence
  0.999, at most 1024 iterations; OpenCV stops early when its confidence is reached, vgpa always
  scores all 1024 hypotheses of every pair).

vgpa rows: ``metrics.epipolar_score(matches=..., method="8point")`` (one batched 8-point solve
and one Sampson launch) and ``fundamental_matrix(method="ransac", iterations=1024)`` (one
batched minimal solve, one fused inlier-count launch, the refit). Matches are synthetic: random
3D points seen by two cameras, 0.5 px noise and 20% outliers, 1,000-4,000 per pair. Feature
extraction (OpenCV SIFT + kNN matching, on the host) is timed on its own on textured frames.
Every vgpa result is checked against its peer before timing.
"""

from __future__ import annotations

import numpy as np
import torch

import vgpa
from vgpa.features import MatchFeaturesResult

from .common import plan, time_ms

# (videos, frames, fewest matches, most matches, RANSAC iterations, SIFT frame side)
CPU_SIZES = {"quick": [(2, 3, 200, 400, 64, 128)], "full": [(4, 10, 1000, 4000, 1024, 256)]}
GPU_SIZES = {"quick": [(4, 10, 1000, 4000, 256, 256)], "full": [(32, 10, 1000, 4000, 1024, 518)]}


def make_matches(videos, frames, fewest, most, device, seed=0) -> MatchFeaturesResult:
    """Packed float32 matches of every consecutive pair: 3D points 4-7 units in front of a
    320 x 240 pinhole camera (f = 300 px) and a second view after a random small motion, with
    0.5 px noise and the first 20% of each pair's second points replaced by uniform ones."""
    g = torch.Generator().manual_seed(seed)
    pairs = videos * (frames - 1)
    counts = torch.randint(fewest, most + 1, (pairs,), generator=g)
    x1, x2 = [], []
    K = torch.tensor([[300.0, 0, 160], [0, 300.0, 120], [0, 0, 1]], dtype=torch.float64)
    for count in counts.tolist():
        X = torch.rand(count, 3, generator=g, dtype=torch.float64) * torch.tensor([4.0, 3, 3], dtype=torch.float64) \
            - torch.tensor([2.0, 1.5, -4], dtype=torch.float64)
        angle = 0.05 * torch.randn(3, generator=g, dtype=torch.float64)
        R = torch.linalg.matrix_exp(torch.tensor([[0, -angle[2], angle[1]], [angle[2], 0, -angle[0]],
                                                  [-angle[1], angle[0], 0]], dtype=torch.float64))
        t = 0.3 * torch.randn(3, generator=g, dtype=torch.float64)
        a, b = X @ K.T, (X @ R.T + t) @ K.T
        a, b = a[:, :2] / a[:, 2:], b[:, :2] / b[:, 2:]
        a = a + 0.5 * torch.randn(a.shape, generator=g, dtype=torch.float64)
        b = b + 0.5 * torch.randn(b.shape, generator=g, dtype=torch.float64)
        bad = count // 5
        b[:bad] = torch.rand(bad, 2, generator=g, dtype=torch.float64) * torch.tensor([320.0, 240], dtype=torch.float64)
        x1.append(a)
        x2.append(b)
    pair_ids = vgpa.adjacent_pairs(frames).repeat(videos, 1)
    return MatchFeaturesResult(torch.cat(x1).float().to(device), torch.cat(x2).float().to(device),
                               counts.to(device), counts.to(device), (counts > 0).to(device), pair_ids.to(device),
                               torch.arange(videos).repeat_interleave(frames - 1).to(device), videos)


def kornia_loop(matches: MatchFeaturesResult):
    """VideoGPA's per-pair loop (module docstring): (P,) mean of sqrt(d^2 + 1e-8)."""
    from kornia.geometry.epipolar import find_fundamental, sampson_epipolar_distance

    scores = []
    for x1, x2 in zip(matches.x1.split(matches.counts.tolist()), matches.x2.split(matches.counts.tolist())):
        F = find_fundamental(x1[None], x2[None])
        scores.append(torch.sqrt(sampson_epipolar_distance(x1[None], x2[None], F, squared=True) + 1e-8).mean())
    return torch.stack(scores)


def opencv_ransac_loop(matches: MatchFeaturesResult, iterations):
    """cv2.findFundamentalMat(FM_RANSAC) per pair: (P,) inlier counts."""
    import cv2

    counts = []
    x1_all, x2_all = matches.x1.cpu().numpy(), matches.x2.cpu().numpy()
    start = 0
    for count in matches.counts.tolist():
        x1, x2 = x1_all[start:start + count], x2_all[start:start + count]
        start += count
        _, mask = cv2.findFundamentalMat(x1, x2, cv2.FM_RANSAC, 1.0, 0.999, iterations)
        counts.append(int(mask.sum()) if mask is not None else 0)
    return torch.tensor(counts)


def textured_frames(videos, frames, side, seed=0):
    """(B, T, 1, side, side) uint8 frames of a random texture sliding 2 px a frame."""
    import cv2

    rng = np.random.default_rng(seed)
    out = np.empty((videos, frames, 1, side, side), np.uint8)
    for b in range(videos):
        base = cv2.GaussianBlur((rng.random((side, side + 2 * frames)) * 255).astype(np.uint8), (0, 0), 1.5)
        for t in range(frames):
            out[b, t, 0] = base[:, 2 * t:2 * t + side]
    return torch.from_numpy(out)


def run(device: torch.device, quick: bool = False) -> list[dict]:
    sizes, backends, repeat = plan(device, quick, CPU_SIZES, GPU_SIZES)
    rows = []
    for videos, frames, fewest, most, iterations, side in sizes:
        matches = make_matches(videos, frames, fewest, most, device)
        shape = f"{videos}x{frames} videos, {fewest}-{most} matches/pair"
        total = int(matches.counts.sum())

        # VideoGPA's score: 8-point on all matches + mean Sampson distance.
        want = kornia_loop(matches)
        loop_ms = time_ms(lambda: kornia_loop(matches), device, warmup=1, repeat=repeat)
        rows.append({"task": "8point+sampson", "shape": shape, "matches": total, "impl": "kornia loop", "ms": loop_ms,
                     "speedup": 1.0})
        for backend in backends:
            def score(b=backend):
                return vgpa.metrics.epipolar_score(matches=matches, backend=b).pair_score
            got = score()
            if not torch.allclose(got, want, rtol=1e-3, atol=1e-4):
                raise RuntimeError(f"vgpa[{backend}] disagrees with the kornia loop: {got} vs {want}")
            ms = time_ms(score, device, warmup=1, repeat=repeat)
            rows.append({"task": "8point+sampson", "shape": shape, "matches": total, "impl": f"vgpa[{backend}]",
                         "ms": ms, "speedup": loop_ms / ms})

        # RANSAC.
        inliers_cv = opencv_ransac_loop(matches, iterations)
        cv_ms = time_ms(lambda: opencv_ransac_loop(matches, iterations), device, warmup=1, repeat=repeat)
        rows.append({"task": f"ransac x{iterations}", "shape": shape, "matches": total, "impl": "cv2 RANSAC loop",
                     "ms": cv_ms, "speedup": 1.0})
        for backend in backends:
            def fit(b=backend):
                return vgpa.fundamental_matrix(matches.x1, matches.x2, counts=matches.counts, method="ransac",
                                               iterations=iterations, threshold=1.0, backend=b)
            found = fit().inlier_count.cpu()
            # Both should keep nearly all of the 80% true matches; OpenCV refines, vgpa refits once.
            if (found < 0.9 * inliers_cv).any():
                raise RuntimeError(f"vgpa[{backend}] RANSAC keeps far fewer inliers than OpenCV: "
                                   f"{found} vs {inliers_cv}")
            ms = time_ms(fit, device, warmup=1, repeat=repeat)
            rows.append({"task": f"ransac x{iterations}", "shape": shape, "matches": total, "impl": f"vgpa[{backend}]",
                         "ms": ms, "speedup": cv_ms / ms})

        # Feature extraction and matching on the host (not a kernel; for scale).
        images = textured_frames(videos, frames, side)
        ms = time_ms(lambda: vgpa.match_features(images), device, warmup=0, repeat=1)
        rows.append({"task": "SIFT+kNN (host)", "shape": f"{videos}x{frames}x{side}x{side} frames",
                     "impl": "vgpa.match_features", "ms": ms})
    return rows
