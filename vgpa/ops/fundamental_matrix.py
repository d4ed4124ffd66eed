"""Batched fundamental matrices from matches: the normalised 8-point algorithm and RANSAC
(docs/design.md 3.6).

Every pair of every video is solved at once: the matches are laid out as one padded batch
(one deterministic copy from a packed layout, coordinate-major), the 9x9 normal matrices come
from one batched product of the points' monomials and one batched eigen-decomposition (in
slices of pairs for large batches). RANSAC draws its minimal samples of 7 matches from a
counter-based integer hash (identical on every device and backend), solves them with the
closed-form 7-point solver in one batched call and scores their up to 3 hypotheses each with one
call of :func:`vgpa.ransac_inlier_count` on the chosen backend, in rounds while adaptive stops
are open when ``confidence`` < 1. The math is in vgpa.torch_math.fundamental_matrix.

Matches (``x1``, ``x2``), as for :func:`vgpa.sampson_distance`:
- packed: (M_total, 2) with ``counts`` (P,): pair p owns the next counts[p] rows (``counts``
  may be omitted for a single pair);
- padded: (P, M, 2); with ``counts`` (P,) only the first counts[p] matches of pair p are used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .. import _backend
from ..torch_math import fundamental_matrix as solver

OP = "fundamental_matrix"
POINT_DTYPES = (torch.float32, torch.float64)
METHODS = ("8point", "ransac")


@dataclass
class FundamentalMatrixResult:
    """Output of :func:`fundamental_matrix`.

    F: (P, 3, 3) in the points' dtype, x2^T F x1 = 0, unit Frobenius norm with its
    largest-magnitude entry positive; NaN where invalid.
    valid: (P,) bool.
    inliers: ("ransac") bool in the layout of the matches, (M_total,) or (P, M): the matches
    within ``threshold`` pixels (Sampson distance) of the returned F; False on padding and for
    invalid pairs. None for "8point".
    inlier_count: ("ransac") (P,) int64, 0 for invalid pairs. None for "8point".
    """

    F: Tensor
    valid: Tensor
    inliers: Optional[Tensor] = None
    inlier_count: Optional[Tensor] = None


class MatchLayout:
    """Packed or padded matches seen as one padded batch (P, M, 2) with a mask.

    Built by :func:`match_layout`. ``to_padded`` copies per-match values (the matches' own
    layout) into (P, M); ``to_matches`` copies (P, M) values back. Both are index copies with
    one destination per element, hence deterministic on every device."""

    def __init__(self, packed: bool, counts: Tensor, width: int, kernel_counts: Optional[Tensor], device):
        self.packed = packed
        self.counts = counts  # (P,) int64
        self.pairs = counts.shape[0]
        self.width = width  # M
        self.kernel_counts = kernel_counts  # what the epipolar kernels take as counts=
        self.mask = torch.arange(width, device=device)[None, :] < counts[:, None]  # (P, M)
        if packed:
            self.row_pair = torch.repeat_interleave(torch.arange(self.pairs, device=device), counts)
            starts = torch.cumsum(counts, 0) - counts
            self.row_position = torch.arange(self.row_pair.shape[0], device=device) - starts[self.row_pair]
            self.row_destination = self.row_pair * width + self.row_position  # in the flattened (P * M)

    def to_padded(self, values: Tensor, fill) -> Tensor:
        """values in the matches' layout, (M_total, ...) or (P, M, ...) -> (P, M, ...), ``fill``
        outside the counts."""
        if self.packed:
            out = torch.full((self.pairs * self.width,) + values.shape[1:], fill, dtype=values.dtype,
                             device=values.device)
            out[self.row_destination] = values
            return out.view((self.pairs, self.width) + values.shape[1:])
        mask = self.mask.view(self.mask.shape + (1,) * (values.dim() - 2))
        return torch.where(mask, values, torch.full((), fill, dtype=values.dtype, device=values.device))

    def to_matches(self, padded: Tensor) -> Tensor:
        """(P, M, ...) -> the matches' layout."""
        return padded[self.row_pair, self.row_position] if self.packed else padded


def _count_tensor(op, counts, device):
    if not isinstance(counts, Tensor):
        try:
            counts = torch.tensor(list(counts), dtype=torch.int64)
        except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
            raise TypeError(f"{op}: counts must be a (P,) integer tensor or a sequence of ints, got {counts!r}") \
                from exc
    if counts.dtype.is_floating_point or counts.dtype.is_complex or counts.dtype == torch.bool:
        raise TypeError(f"{op}: counts must hold integers, got dtype {counts.dtype}")
    if counts.dim() != 1:
        raise ValueError(f"{op}: counts must be (P,), got shape {tuple(counts.shape)}")
    return counts.to(device=device, dtype=torch.int64)


def match_layout(op: str, x1, x2, counts=None) -> MatchLayout:
    """Checks matches x1, x2 and their counts (module docstring) and returns their layout.
    Reads the (P,) counts on the host (one sync on a GPU)."""
    for name, x in (("x1", x1), ("x2", x2)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype not in POINT_DTYPES:
            raise TypeError(f"{op}: {name} has dtype {x.dtype}; expected float32 or float64")
        if x.dim() not in (2, 3) or x.shape[-1] != 2:
            raise ValueError(f"{op}: {name} must be packed (M_total, 2) or padded (P, M, 2), got shape "
                             f"{tuple(x.shape)}")
    if x2.shape != x1.shape or x2.dtype != x1.dtype or x2.device != x1.device:
        raise ValueError(f"{op}: x2 must have x1's shape, dtype and device: x1 is {x1.dtype} {tuple(x1.shape)} on "
                         f"{x1.device}, x2 is {x2.dtype} {tuple(x2.shape)} on {x2.device}")
    device = x1.device
    if x1.dim() == 2:
        total = x1.shape[0]
        if counts is None:
            counts = torch.tensor([total], dtype=torch.int64, device=device)
        counts = _count_tensor(op, counts, device)
        values = counts.tolist()
        if any(c < 0 for c in values):
            raise ValueError(f"{op}: counts must be >= 0, got {values}")
        if sum(values) != total:
            raise ValueError(f"{op}: packed counts sum to {sum(values)} but x1 has {total} matches")
        return MatchLayout(True, counts, max(values, default=0), counts, device)
    pairs, width = x1.shape[:2]
    kernel_counts = None
    if counts is None:
        counts = torch.full((pairs,), width, dtype=torch.int64, device=device)
    else:
        counts = kernel_counts = _count_tensor(op, counts, device)
        if counts.shape[0] != pairs:
            raise ValueError(f"{op}: counts must be ({pairs},) for padded matches of shape {tuple(x1.shape)}, "
                             f"got {tuple(counts.shape)}")
        values = counts.tolist()
        if any(c < 0 or c > width for c in values):
            raise ValueError(f"{op}: padded counts must lie in [0, {width}], got {values}")
    return MatchLayout(False, counts, width, kernel_counts, device)


def _number(op, name, value, low, high, low_open=False, high_open=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < low or value > high or (low_open and value == low) or (high_open and value == high):
        lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
        raise ValueError(f"{op}: {name} must be a number in {lo}{low}, {high}{hi}, got {value!r}")
    return float(value)


def _integer(op, name, value, low, high):
    if isinstance(value, bool) or not isinstance(value, int) or value < low or value > high:
        raise ValueError(f"{op}: {name} must be an int in [{low}, {high}], got {value!r}")
    return value


def check_ransac_options(op, threshold, iterations, confidence, seed):
    """The RANSAC settings as (threshold, iterations, confidence, seed), or a ValueError."""
    return (_number(op, "threshold", threshold, 0.0, math.inf, low_open=True),
            _integer(op, "iterations", iterations, 1, 1 << 20),
            _number(op, "confidence", confidence, 0.0, 1.0, low_open=True),
            _integer(op, "seed", seed, 0, (1 << 63) - 1))


def _finite_points(layout: MatchLayout, x1: Tensor, x2: Tensor):
    """Both frames' points padded in float64, (P, 2, 2, M) (frame 1, frame 2; the u row, the v
    row: every plane contiguous), 0 outside the counts and on pairs with a non-finite
    coordinate, and (P,) whether every match of a pair is finite."""
    points = layout.to_padded(torch.cat([x1, x2], -1).double(), 0.0)  # (P, M, 4): one copy
    points = points.transpose(1, 2).contiguous().view(layout.pairs, 2, 2, layout.width)
    # x * 0 is 0 for a finite x and NaN otherwise, and a sum of zeros cannot overflow.
    finite = torch.isfinite((points * 0.0).sum((1, 2, 3)))
    if not bool(finite.all()):
        points = torch.where(finite[:, None, None, None], points, 0.0)
    return points, finite


def fundamental_matrix(x1, x2, *, counts=None, weights=None, method="8point", threshold=1.0, iterations=1024,
                       confidence=0.999, seed=0, backend="auto") -> FundamentalMatrixResult:
    """Fundamental matrices F (x2^T F x1 = 0) of P frame pairs from their matches, all at once.

    method "8point": the normalised 8-point algorithm on all matches (``weights``, >= 0 and in
    the matches' layout, weight each match's equation and its Hartley statistics).
    method "ransac": per pair up to ``iterations`` seeded samples of 7 matches (identical on
    every backend and device), each giving 1 or 3 hypotheses (the 7-point solver), scored with
    the fused :func:`vgpa.ransac_inlier_count` (inlier: Sampson distance <= ``threshold``
    pixels); the most inliers wins (ties: the lowest hypothesis index; ``confidence`` < 1 stops
    the sequence of samples by the adaptive-RANSAC rule, see vgpa.torch_math.fundamental_matrix,
    and only the samples up to the stop are solved, in rounds), then 8-point on its inliers.
    ``inliers`` are those of the refit F.

    A pair is invalid (``valid`` False, F NaN) with fewer than 8 matches (of positive weight),
    a non-finite coordinate, all points of a frame identical, or matches that leave F
    undetermined (collinear points, a homography such as identical frames or a planar scene):
    the second-smallest singular value of the normalised design matrix at most 1e-5 (float32)
    or 1e-7 (float64) of the largest. Invalid pairs never raise and never disturb the others.

    x1, x2: float32 or float64, packed (M_total, 2) with ``counts`` (P,), or padded (P, M, 2)
    with optional ``counts``. The solve runs in float64; F comes back in the points' dtype.
    ``backend`` picks the kernels of the RANSAC scoring ("8point" runs no kernel). Runs eagerly
    (it reads counts on the host) and records no gradient; the result is bitwise reproducible
    on one device.
    """
    with torch.no_grad():  # a fit, not a differentiable op: nothing is recorded for autograd
        return _fit(x1, x2, counts, weights, method, threshold, iterations, confidence, seed, backend)


def _fit(x1, x2, counts, weights, method, threshold, iterations, confidence, seed, backend):
    layout = match_layout(OP, x1, x2, counts)
    if method not in METHODS:
        raise ValueError(f"{OP}: method must be one of {METHODS}, got {method!r}")
    threshold, iterations, confidence, seed = check_ransac_options(OP, threshold, iterations, confidence, seed)
    _backend.resolve(backend, x1.device, OP)
    points, finite = _finite_points(layout, x1, x2)
    tolerance = solver.RANK_TOLERANCE[x1.dtype]
    if method == "8point":
        w = layout.mask.double()
        if weights is not None:
            w = w * _weights(layout, x1, weights)
        F, ok = _eight_point(points, w, tolerance)
        valid = ok & finite
        return FundamentalMatrixResult(_masked(F, valid).to(x1.dtype), valid)
    if weights is not None:
        raise ValueError(f"{OP}: weights apply to method='8point' only")
    return _ransac(layout, x1, x2, points, finite, threshold, iterations, confidence, seed, backend, tolerance)


def _weights(layout: MatchLayout, x1: Tensor, weights) -> Tensor:
    if not isinstance(weights, Tensor) or not weights.is_floating_point():
        raise TypeError(f"{OP}: weights must be a floating-point tensor, got "
                        f"{weights.dtype if isinstance(weights, Tensor) else type(weights).__name__}")
    if weights.shape != x1.shape[:-1] or weights.device != x1.device:
        raise ValueError(f"{OP}: weights must have shape {tuple(x1.shape[:-1])} on {x1.device} (one per match), "
                         f"got {tuple(weights.shape)} on {weights.device}")
    padded = layout.to_padded(weights.double(), 0.0)
    if not bool((torch.isfinite(padded) & (padded >= 0)).all()):
        raise ValueError(f"{OP}: weights must be finite and >= 0")
    return padded


# Padded rows (pairs x M) per call of the 8-point fit: larger batches are fitted in slices of
# pairs. Each pair's arithmetic is the same whatever slice it is in (the same bits), and the
# temporaries stay small enough (about 1 MiB a plane) to be reused from cache instead of being
# mapped afresh on every call, which cost about half of a whole-batch fit on the CPU.
EIGHT_POINT_ROWS = 1 << 15


def _eight_point(points: Tensor, weights: Tensor, tolerance: float):
    """The 8-point solver over slices of pairs of about EIGHT_POINT_ROWS padded rows each."""
    step = max(EIGHT_POINT_ROWS // max(points.shape[-1], 1), 1)
    if points.shape[0] <= step:
        return solver.eight_point(points, weights, tolerance)
    fits = [solver.eight_point(points[i:i + step], weights[i:i + step], tolerance)
            for i in range(0, points.shape[0], step)]
    return torch.cat([F for F, _ in fits]), torch.cat([ok for _, ok in fits])


def _masked(F: Tensor, valid: Tensor) -> Tensor:
    return torch.where(valid[:, None, None], F, torch.full_like(F, float("nan")))


# Samples per pair of the first round of a RANSAC with confidence < 1; each further round, of the
# pairs whose adaptive stop is not yet decided, doubles the samples drawn so far.
FIRST_ROUND = 64


def _ransac(layout, x1, x2, points, finite, threshold, iterations, confidence, seed, backend, tolerance):
    from .epipolar import sampson_distance

    pairs = layout.pairs
    if pairs == 0:
        empty = torch.zeros(0, dtype=torch.bool, device=x1.device)
        return FundamentalMatrixResult(x1.new_empty((0, 3, 3)), empty, torch.zeros(x1.shape[:-1], dtype=torch.bool,
                                       device=x1.device), torch.zeros(0, dtype=torch.int64, device=x1.device))
    # One Hartley normalisation per pair serves all its samples (the 7-point solutions transform
    # with the points).
    normalised, transforms, ok = solver.hartley_normalization(points, layout.mask.double()[:, None])
    usable = finite & ok.all(-1) & (layout.counts >= solver.SAMPLE_SIZE)
    hypotheses = x1.new_full((pairs, iterations * solver.ROOTS, 3, 3), float("nan"))  # flat index s * 3 + r
    scores = torch.zeros((pairs, iterations, solver.ROOTS), dtype=torch.int64, device=x1.device)
    padded = points.to(x1.dtype)  # the matches as given (float32 -> float64 -> float32 is exact)
    # Pairs that cannot be valid are never solved. With confidence < 1 the samples go in rounds,
    # each for the pairs whose adaptive stop the samples so far do not decide: the same samples,
    # scores and choice as scoring all of them, with less work.
    active = usable.nonzero()[:, 0]
    begin, end = 0, (iterations if confidence >= 1.0 else min(FIRST_ROUND, iterations))
    while active.numel() and begin < iterations:
        found, solutions = _score_samples(layout, active, begin, end, normalised, transforms, padded, threshold,
                                          seed, backend, tolerance)
        scores[active, begin:end] = found
        hypotheses[active, begin * solver.ROOTS:end * solver.ROOTS] = solutions
        stop = solver.adaptive_stop(scores[active, :end], layout.counts[active], confidence)
        active = active[stop >= end]
        begin, end = end, min(2 * end, iterations)
    best = solver.select_hypothesis(scores, layout.counts, confidence)
    pair_index = torch.arange(pairs, device=x1.device)
    best_count = scores.view(pairs, -1)[pair_index, best]
    best_F = hypotheses[pair_index, best]
    counts = layout.kernel_counts
    best_inliers = sampson_distance(best_F, x1, x2, counts=counts, squared=True, backend=backend) <= threshold ** 2
    weights = layout.to_padded(best_inliers, False).double()
    refit, ok = _eight_point(points, weights, tolerance)
    valid = usable & ok & (best_count >= solver.SAMPLE_SIZE)
    F = _masked(refit, valid).to(x1.dtype)
    inliers = sampson_distance(F, x1, x2, counts=counts, squared=True, backend=backend) <= threshold ** 2
    inliers = layout.to_matches(layout.to_padded(inliers, False))  # False on padding
    inlier_count = layout.to_padded(inliers, False).sum(-1)
    return FundamentalMatrixResult(F, valid, inliers, inlier_count)


def _score_samples(layout, active, begin, end, normalised, transforms, padded, threshold, seed, backend, tolerance):
    """Samples begin..end-1 of the pairs ``active``: their 7-point solutions in pixels, unit
    Frobenius norm, in the points' dtype ((A, 3 (end - begin), 3, 3), NaN where absent) and
    inlier counts ((A, end - begin, 3), 0 where absent), all scored by one
    ransac_inlier_count call."""
    from .epipolar import ransac_inlier_count

    pairs, samples, roots = active.shape[0], end - begin, solver.ROOTS
    counts = layout.counts[active]
    drawn = solver.ransac_samples(counts, samples, seed, begin, pair_index=active)  # (A, S, 7)
    # Pairs below 7 matches are never active; the padded width holds every sample.
    index = drawn.view(pairs, 1, 1, -1).expand(-1, 2, 2, -1)
    sample_points = normalised[active].gather(3, index).view(pairs, 2, 2, samples, solver.MINIMAL_SAMPLE)
    sample_points = sample_points.permute(0, 1, 3, 2, 4)  # (A, frame, S, uv, 7)
    solved, present = solver.seven_point(sample_points[:, 0], sample_points[:, 1], tolerance)  # (A, S, 3, 3, 3)
    t1, t2 = transforms[active].unbind(1)
    solutions = t2.mT[:, None, None] @ solved @ t1[:, None, None]
    solutions = solutions / solutions.flatten(-2).norm(dim=-1)[..., None, None]
    solutions = solutions.to(padded.dtype).view(pairs, -1, 3, 3)
    present = present.view(pairs, -1)
    # Only the solutions that exist are scored: each pair's, in their order, padded with NaN
    # (0 inliers) to the largest number of any pair.
    rows, flat = present.nonzero(as_tuple=True)
    slot = (present.long().cumsum(-1) - 1)[rows, flat]
    width = max(int(present.sum(-1).max()), 1)
    scored = solutions.new_full((pairs, width, 3, 3), float("nan"))
    scored[rows, slot] = solutions[rows, flat]
    found = torch.zeros(present.shape, dtype=torch.int64, device=present.device)
    matches = padded[active].transpose(-1, -2)  # (A, frame, M, uv)
    found[rows, flat] = ransac_inlier_count(scored, matches[:, 0], matches[:, 1], threshold=threshold, counts=counts,
                                            backend=backend)[rows, slot]
    return found.view(pairs, samples, roots), solutions
