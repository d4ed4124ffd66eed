"""Epipolar consistency: fundamental matrices and Sampson distances of every consecutive frame
pair of every video, forward. Each size is one batch of videos; every implementation runs its own
task on it. Peers:

- "kornia loop": our statement of VideoGPA's per-pair loop (docs/design.md 3.6) as its evaluation
  runs it: for each consecutive pair of each video, kornia's find_fundamental on all of the pair's
  matches, then sampson_epipolar_distance and the pair score, the mean of sqrt(d^2 + 1e-8), one
  pair at a time. Compared with the "vgpa[...]" rows: ``vgpa.fundamental_matrix(method="8point")``
  on all pairs at once, then one ``vgpa.sampson_distance`` call and the per-pair means;
- "cv2 RANSAC loop": cv2.findFundamentalMat(FM_RANSAC) per pair, on the host (threshold 1 px,
  confidence 0.999, at most 1024 iterations; OpenCV stops early once its confidence is reached).
  Compared with the "vgpa[...] ransac" rows: ``vgpa.fundamental_matrix(method="ransac",
  iterations=1024, threshold=1.0, confidence=0.999)``, the same settings: 7-point samples of
  every pair solved in one batch and scored by one fused inlier-count launch per round, rounds
  ending after 64, 128, 256, ... samples for the pairs whose adaptive stop is still open, then
  the refit.

"vgpa.match_features" (OpenCV SIFT + brute-force kNN + ratio test, on the host; not a kernel) is
timed on its own, on the size's videos x frames textured frames of SIFT_SIDE x SIFT_SIDE pixels,
for scale.

Each row's "x vs" column of its own task's peer is the one to read: the tables compute the
speedup against every peer of a size, so 8-point rows also carry one against the RANSAC loop,
RANSAC rows one against the kornia loop, and the SIFT row both. The headline reads only the own
task's peer (``Impl.versus``) and none for SIFT.

Matches are synthetic: random 3D points 4-7 units in front of a 320 x 240 camera (f = 300 px)
seen again after a small random motion, 0.5 px noise on every coordinate, and the first 20% of
each pair's second points replaced by uniform ones (the outliers); 1,000-4,000 matches per pair
in the full sizes. The checks (before timing, as the harness requires):

- 8-point: the per-pair scores against vgpa's pure-PyTorch reference (``epipolar_score`` on the
  "torch" backend), rtol 1e-3, atol 1e-4: kornia solves in float32, vgpa in float64;
- RANSAC (``ransac_agree``): OpenCV tests max(d1^2, d2^2) of the two point-to-epipolar-line
  distances against the threshold and vgpa the Sampson distance, so their inlier sets differ at
  the margin; what is comparable is how many of the true-model matches each keeps. Per pair,
  vgpa's fraction of the clean (non-outlier) matches marked inliers must be at least OpenCV's
  minus 0.05. Against the true model, both must keep at least 60% of the clean matches (vgpa
  keeps ~95% of them; OpenCV's stricter test ~70%) and accept at most 5% of the outliers (a
  uniform point lies within 1 px of an epipolar line by chance about 1-2% of the time), or 4 of
  them where that is more (the quick size's ~60 outliers a pair take 3 by chance in ~5% of fits);
- SIFT (``sift_agree``): the texture slides SHIFT = (-2, 0) px a frame, so at least 90% of the
  matches must move by SHIFT within 1 px, and every pair must keep its matches.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

import vgpa
from vgpa.features import MatchFeaturesResult

from .harness import Entry, Impl, Size, assert_close

ITERATIONS = 1024  # RANSAC samples per pair, at most
THRESHOLD = 1.0  # RANSAC inlier threshold, px
CONFIDENCE = 0.999  # the early stop of both OpenCV's and vgpa's RANSAC
OUTLIERS = 0.2  # the first 20% of each pair's matches are outliers
SHIFT = (-2.0, 0.0)  # how far the SIFT frames' texture moves from one frame to the next, px
SIFT_SIDE = 128  # SIFT frame side, px: it runs on the host on every device, and 320 frames take seconds
MIN_CLEAN_KEPT = 0.6
MAX_OUTLIERS_KEPT = 0.05
OUTLIERS_KEPT_BY_CHANCE = 4  # the fewest accepted outliers that fail the check
CLEAN_KEPT_TOLERANCE = 0.05


def match_counts(videos, frames, fewest, most, seed=0) -> torch.Tensor:
    """(P,) matches per pair, the first draw of make_matches' generator."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(fewest, most + 1, (videos * (frames - 1),), generator=g)


def make_matches(videos, frames, fewest, most, device, seed=0):
    """(packed float32 matches of every consecutive pair, (M_total,) bool: the clean matches);
    the scene is the module docstring's."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(fewest, most + 1, (videos * (frames - 1),), generator=g)
    f64 = dict(dtype=torch.float64)
    K = torch.tensor([[300.0, 0, 160], [0, 300.0, 120], [0, 0, 1]], **f64)
    x1, x2, clean = [], [], []
    for count in counts.tolist():
        X = torch.rand(count, 3, generator=g, **f64) * torch.tensor([4.0, 3, 3], **f64) \
            - torch.tensor([2.0, 1.5, -4], **f64)
        angle = 0.05 * torch.randn(3, generator=g, **f64)
        R = torch.linalg.matrix_exp(torch.tensor([[0, -angle[2], angle[1]], [angle[2], 0, -angle[0]],
                                                  [-angle[1], angle[0], 0]], **f64))
        t = 0.3 * torch.randn(3, generator=g, **f64)
        a, b = X @ K.T, (X @ R.T + t) @ K.T
        a, b = a[:, :2] / a[:, 2:], b[:, :2] / b[:, 2:]
        a = a + 0.5 * torch.randn(a.shape, generator=g, **f64)
        b = b + 0.5 * torch.randn(b.shape, generator=g, **f64)
        bad = int(count * OUTLIERS)
        b[:bad] = torch.rand(bad, 2, generator=g, **f64) * torch.tensor([320.0, 240], **f64)
        x1.append(a)
        x2.append(b)
        clean.append(torch.arange(count) >= bad)
    pair_ids = vgpa.adjacent_pairs(frames).repeat(videos, 1)
    matches = MatchFeaturesResult(
        torch.cat(x1).float().to(device), torch.cat(x2).float().to(device), counts.to(device), counts.to(device),
        (counts > 0).to(device), pair_ids.to(device), torch.arange(videos).repeat_interleave(frames - 1).to(device),
        videos)
    return matches, torch.cat(clean)


def textured_frames(videos, frames, side, seed=0):
    """(B, T, 1, side, side) uint8 frames of a blurred random texture moving by SHIFT a frame."""
    import cv2

    rng = np.random.default_rng(seed)
    step = int(-SHIFT[0])
    out = np.empty((videos, frames, 1, side, side), np.uint8)
    for b in range(videos):
        base = cv2.GaussianBlur((rng.random((side, side + step * frames)) * 255).astype(np.uint8), (0, 0), 1.5)
        for t in range(frames):
            out[b, t, 0] = base[:, step * t:step * t + side]
    return torch.from_numpy(out)


@dataclass(eq=False)
class Inputs:
    """One size's inputs: the matches (on the device), which of them are clean (host), the SIFT
    frames (host) and the segment index of every match (device, for the per-pair means)."""

    matches: MatchFeaturesResult
    clean: torch.Tensor
    frames: torch.Tensor
    pair_of_match: torch.Tensor

    @functools.cached_property
    def opencv_inliers(self) -> torch.Tensor:
        """OpenCV's RANSAC inlier mask, once per size: what vgpa's RANSAC is compared with."""
        return opencv_ransac_loop(self.matches)


def make_inputs(dims, device):
    videos, frames, fewest, most = dims
    matches, clean = make_matches(videos, frames, fewest, most, device)
    pair_of_match = torch.repeat_interleave(torch.arange(len(matches.counts), device=device), matches.counts)
    return Inputs(matches, clean, textured_frames(videos, frames, SIFT_SIDE), pair_of_match)


def sizes(device, quick):
    """(videos, frames, fewest matches per pair, most matches per pair); x = matches in all pairs.
    The default: a scoring batch of videos of VideoGPA's 10 frames, 4 on the CPU (36 pairs, the
    headline size of docs/bench.md), 8 on a GPU."""
    if device.type == "cuda":
        dims = [(4, 10, 1000, 4000)] if quick else [(2, 10, 1000, 4000), (8, 10, 1000, 4000), (32, 10, 1000, 4000)]
    else:
        dims = [(2, 3, 200, 400)] if quick else [(1, 10, 1000, 4000), (2, 10, 1000, 4000), (4, 10, 1000, 4000)]
    default = (8, 10, 1000, 4000) if device.type == "cuda" else (4, 10, 1000, 4000)
    return [Size(d, x=int(match_counts(*d).sum()), default=not quick and d == default) for d in dims]


# --------------------------------------------------------------------------------------------
# 8-point + Sampson


def kornia_loop(matches: MatchFeaturesResult) -> torch.Tensor:
    """VideoGPA's per-pair loop (module docstring): (P,) mean of sqrt(d^2 + 1e-8)."""
    from kornia.geometry.epipolar import find_fundamental, sampson_epipolar_distance

    scores = []
    counts = matches.counts.tolist()
    for x1, x2 in zip(matches.x1.split(counts), matches.x2.split(counts)):
        F = find_fundamental(x1[None], x2[None])
        scores.append(torch.sqrt(sampson_epipolar_distance(x1[None], x2[None], F, squared=True) + 1e-8).mean())
    return torch.stack(scores)


def vgpa_8point(inputs: Inputs, backend: str) -> torch.Tensor:
    """(P,) the same pair scores: one batched 8-point fit, one Sampson call, the per-pair means."""
    m = inputs.matches
    fit = vgpa.fundamental_matrix(m.x1, m.x2, counts=m.counts, method="8point", backend=backend)
    squared = vgpa.sampson_distance(fit.F, m.x1, m.x2, counts=m.counts, squared=True, backend=backend)
    total = squared.new_zeros(len(m.counts)).index_add_(0, inputs.pair_of_match, torch.sqrt(squared + 1e-8))
    return total / m.counts.clamp_min(1)


def reference(inputs: Inputs) -> torch.Tensor:
    """(P,) pair scores of vgpa's pure-PyTorch path (VideoGPA's score, docs/design.md 3.6)."""
    return vgpa.metrics.epipolar_score(matches=inputs.matches, method="8point", backend="torch").pair_score


def agree(got, expected):
    assert_close(got, expected, rtol=1e-3, atol=1e-4, what="epipolar pair score")


# --------------------------------------------------------------------------------------------
# RANSAC


@dataclass(eq=False)
class RansacOutcome:
    """What a RANSAC implementation returns for its check: its (M_total,) inlier mask (host) and
    the size's inputs."""

    inliers: torch.Tensor
    inputs: Inputs


def opencv_ransac_loop(matches: MatchFeaturesResult) -> torch.Tensor:
    """cv2.findFundamentalMat(FM_RANSAC) per pair: the (M_total,) bool inlier mask."""
    import cv2

    x1_all, x2_all = matches.x1.cpu().numpy(), matches.x2.cpu().numpy()
    masks, start = [], 0
    for count in matches.counts.tolist():
        x1, x2 = x1_all[start:start + count], x2_all[start:start + count]
        start += count
        _, mask = cv2.findFundamentalMat(x1, x2, cv2.FM_RANSAC, THRESHOLD, CONFIDENCE, ITERATIONS)
        masks.append(mask.reshape(-1).astype(bool) if mask is not None else np.zeros(count, bool))
    return torch.from_numpy(np.concatenate(masks))


def vgpa_ransac(inputs: Inputs, backend: str):
    m = inputs.matches
    return vgpa.fundamental_matrix(m.x1, m.x2, counts=m.counts, method="ransac", iterations=ITERATIONS,
                                   threshold=THRESHOLD, confidence=CONFIDENCE, backend=backend)


def kept_fractions(inliers: torch.Tensor, inputs: Inputs):
    """Per pair, the fractions of its clean matches and of its outliers marked inliers."""
    counts = inputs.matches.counts.cpu()
    pair = torch.repeat_interleave(torch.arange(len(counts)), counts)
    inliers, clean = inliers.cpu().bool(), inputs.clean

    def fraction(selected):
        kept = torch.zeros(len(counts)).index_add_(0, pair, (inliers & selected).float())
        return kept / torch.zeros(len(counts)).index_add_(0, pair, selected.float()).clamp_min(1)

    return fraction(clean), fraction(~clean)


def ransac_agree(got: RansacOutcome, expected):
    """The RANSAC check of the module docstring (``expected``, the 8-point reference, is not used)."""
    clean_kept, outliers_kept = kept_fractions(got.inliers, got.inputs)
    opencv_clean_kept, _ = kept_fractions(got.inputs.opencv_inliers, got.inputs)
    if (clean_kept < MIN_CLEAN_KEPT).any():
        raise AssertionError(f"RANSAC keeps too few of the true-model matches: at worst {clean_kept.min():.3f} of a "
                             f"pair's (at least {MIN_CLEAN_KEPT} expected)")
    counts = got.inputs.matches.counts.cpu()
    outliers = torch.zeros(len(counts)).index_add_(
        0, torch.repeat_interleave(torch.arange(len(counts)), counts), (~got.inputs.clean).float())
    kept = (outliers_kept * outliers).round()
    allowed = torch.maximum(MAX_OUTLIERS_KEPT * outliers, torch.full_like(outliers, OUTLIERS_KEPT_BY_CHANCE - 1))
    if (kept > allowed).any():
        worst = int((kept - allowed).argmax())
        raise AssertionError(f"RANSAC accepts too many outliers: {int(kept[worst])} of pair {worst}'s "
                             f"{int(outliers[worst])} (at most {allowed[worst]:.1f} expected)")
    short = (opencv_clean_kept - clean_kept).max()
    if short > CLEAN_KEPT_TOLERANCE:
        raise AssertionError(f"RANSAC keeps fewer true-model matches than OpenCV's: short by {short:.3f} of a pair's "
                             f"(tolerance {CLEAN_KEPT_TOLERANCE})")


def opencv_impl(inputs: Inputs):
    return lambda: RansacOutcome(opencv_ransac_loop(inputs.matches), inputs)


def vgpa_ransac_impl(inputs: Inputs, backend: str):
    return lambda: RansacOutcome(vgpa_ransac(inputs, backend).inliers, inputs)


# --------------------------------------------------------------------------------------------
# SIFT


def sift_agree(got: MatchFeaturesResult, expected):
    """The SIFT check of the module docstring (``expected`` is not used)."""
    if not bool(got.valid.all()) or int(got.counts.min()) == 0:
        raise AssertionError(f"SIFT matching left pairs without matches: counts {got.counts.tolist()}")
    moved = got.x2 - got.x1
    on_track = ((moved - torch.tensor(SHIFT)).norm(dim=-1) <= 1.0).float().mean()
    if on_track < 0.9:
        raise AssertionError(f"SIFT matches do not follow the texture: only {on_track:.3f} move by {SHIFT} px "
                             f"within 1 px (at least 0.9 expected)")


ENTRY = Entry(
    op="epipolar",
    x_label="matches in all pairs",
    sizes=sizes,
    make_inputs=make_inputs,
    reference=reference,
    agree=agree,
    baseline="kornia loop",
    impls=[
        Impl("kornia loop", what="our statement of VideoGPA's per-pair loop: kornia find_fundamental + "
             "sampson_epipolar_distance, one pair at a time", make=lambda x: lambda: kornia_loop(x.matches)),
        Impl("cv2 RANSAC loop", what=f"cv2.findFundamentalMat(FM_RANSAC) per pair on the host, at most {ITERATIONS} "
             "iterations, early stop at confidence 0.999", make=opencv_impl, agree=ransac_agree),
        *[Impl(f"vgpa[{b}]", peer=False, backend=b, what="the library: batched 8-point + Sampson distance",
               versus=("kornia loop",), make=lambda x, b=b: lambda: vgpa_8point(x, b))
          for b in ("cuda", "triton", "cpu", "torch")],
        *[Impl(f"vgpa[{b}] ransac", peer=False, backend=b, agree=ransac_agree, versus=("cv2 RANSAC loop",),
               what=f"the library: batched 7-point RANSAC, at most {ITERATIONS} samples, early stop at confidence "
               f"{CONFIDENCE}",
               make=lambda x, b=b: vgpa_ransac_impl(x, b)) for b in ("cuda", "triton", "cpu", "torch")],
        Impl("vgpa.match_features (SIFT)", peer=False, agree=sift_agree, versus=(),
             what="the library's host-side SIFT + kNN matching of the size's textured frames (for scale)",
             make=lambda x: lambda: vgpa.match_features(x.frames)),
    ],
)


def test_epipolar(bench, case):
    bench(ENTRY, case)
