"""Fundamental matrices from matches (docs/design.md 3.6): 8-point and RANSAC on correspondences of
known cameras and 3D points, against kornia's find_fundamental, degenerate pairs, input errors,
and identical RANSAC decisions on every backend."""

import math

import pytest
import torch

import vgpa
from vgpa.torch_math import fundamental_matrix as solver

from conftest import KERNEL_BACKENDS
from geometry_inputs import rotation

WIDTH, HEIGHT = 320.0, 240.0


def two_view_scene(pairs, matches, *, noise=0.0, outliers=0.0, seed=0, dtype=torch.float64):
    """Matches of ``pairs`` independent two-view scenes: random 3D points 4-7 units in front of
    a pinhole camera (f = 300 px, 320 x 240), seen again after a random rotation and translation.

    Returns x1, x2 (P, M, 2) in ``dtype`` with Gaussian pixel ``noise`` on both, the first
    ``outliers`` share of each pair's x2 replaced by uniform points of the image, and the true F
    (P, 3, 3) float64 in the canonical scale (unit Frobenius norm, largest entry positive)."""
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    K = torch.tensor([[300.0, 0, 160], [0, 300.0, 120], [0, 0, 1]], dtype=f64)
    X = torch.rand(pairs, matches, 3, generator=g, dtype=f64) * torch.tensor([4.0, 3, 3], dtype=f64) \
        - torch.tensor([2.0, 1.5, -4], dtype=f64)
    R = rotation(0.1 * torch.randn(pairs, 3, generator=g, dtype=f64))
    t = 0.5 * torch.randn(pairs, 3, generator=g, dtype=f64)
    x1 = X @ K.T
    Y = X @ R.mT + t[:, None]
    x2 = Y @ K.T
    x1, x2 = x1[..., :2] / x1[..., 2:], x2[..., :2] / x2[..., 2:]
    zero = torch.zeros_like(t[:, 0])
    skew = torch.stack([zero, -t[:, 2], t[:, 1], t[:, 2], zero, -t[:, 0], -t[:, 1], t[:, 0], zero], -1).view(-1, 3, 3)
    K_inv = torch.linalg.inv(K)
    F = solver.canonical_scale(K_inv.T @ skew @ R @ K_inv)
    x1 = x1 + noise * torch.randn(x1.shape, generator=g, dtype=f64)
    x2 = x2 + noise * torch.randn(x2.shape, generator=g, dtype=f64)
    bad = int(round(outliers * matches))
    x2[:, :bad] = torch.rand(pairs, bad, 2, generator=g, dtype=f64) * torch.tensor([WIDTH, HEIGHT], dtype=f64)
    return x1.to(dtype), x2.to(dtype), F


def sampson(F, x1, x2):
    """Sampson distance (P, M) of padded matches in float64, stated independently of vgpa."""
    F, x1, x2 = F.double(), x1.double(), x2.double()
    h1 = torch.cat([x1, torch.ones_like(x1[..., :1])], -1)
    h2 = torch.cat([x2, torch.ones_like(x2[..., :1])], -1)
    a, b = h1 @ F.mT, h2 @ F
    r = (h2 * a).sum(-1)
    return r.abs() / (a[..., :2].square().sum(-1) + b[..., :2].square().sum(-1)).sqrt()


def pack(x, counts):
    """Padded (P, M, ...) -> packed rows of the first counts[p] entries of each pair."""
    return torch.cat([x[p, :c] for p, c in enumerate(counts)])


# --------------------------------------------------------------------------------------------
# 8-point


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_eight_point_recovers_the_true_F_without_noise(dtype, layout):
    counts = [30, 8, 200, 57]
    x1, x2, F_true = two_view_scene(4, 200, dtype=dtype, seed=1)
    if layout == "packed":
        out = vgpa.fundamental_matrix(pack(x1, counts), pack(x2, counts), counts=counts)
    else:
        out = vgpa.fundamental_matrix(x1, x2, counts=torch.tensor(counts))
    assert out.F.dtype == dtype and out.F.shape == (4, 3, 3) and out.valid.all()
    tol = 1e-9 if dtype == torch.float64 else 2e-3
    torch.testing.assert_close(out.F.double(), F_true, atol=tol, rtol=0)
    torch.testing.assert_close(out.F.double().flatten(1).norm(dim=1), torch.ones(4, dtype=torch.float64),
                               atol=1e-6, rtol=0)
    singular = torch.linalg.svdvals(out.F.double())  # rank 2, to the rounding of the dtype
    assert (singular[:, 2] < (1e-12 if dtype == torch.float64 else 1e-6) * singular[:, 0]).all()
    distance = sampson(out.F, x1, x2)
    mask = torch.arange(200)[None] < torch.tensor(counts)[:, None]
    assert distance[mask].max() < (1e-7 if dtype == torch.float64 else 2e-2)


def test_pixel_noise_gives_a_sampson_distance_of_the_noise_level():
    sigma = 0.5
    x1, x2, F_true = two_view_scene(4, 300, noise=sigma, seed=2)
    out = vgpa.fundamental_matrix(x1, x2)
    assert out.valid.all()
    # Noise sigma on both points: the Sampson distance to the true F has RMS sigma; the least
    # squares fit absorbs 8 of the M = 300 degrees of freedom, and no more than a few more.
    truth = sampson(F_true, x1, x2).square().mean().sqrt()
    fitted = sampson(out.F, x1, x2).square().mean().sqrt()
    assert 0.9 * sigma < truth < 1.1 * sigma
    assert 0.85 * sigma < fitted <= truth
    # And the fit stays close to the truth: angle between F's as 9-vectors.
    cos = (out.F * F_true).flatten(1).sum(1).abs()
    assert (cos > 0.99).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_eight_point_matches_kornia_find_fundamental(dtype):
    kornia = pytest.importorskip("kornia")
    x1, x2, _ = two_view_scene(5, 120, noise=1.0, outliers=0.2, seed=3, dtype=dtype)
    weights = torch.rand(5, 120, generator=torch.Generator().manual_seed(4), dtype=dtype)
    for w in (None, weights):
        ours = vgpa.fundamental_matrix(x1, x2, weights=w)
        theirs = kornia.geometry.epipolar.find_fundamental(x1, x2, weights=w)
        if dtype == torch.float64:
            # kornia adds 1e-8 to the mean radius of its Hartley scale: a ~1e-9 relative change.
            torch.testing.assert_close(ours.F, solver.canonical_scale(theirs), atol=1e-7, rtol=0)
        # Through the Sampson distances (float32: both fits are within rounding of the same F).
        torch.testing.assert_close(sampson(ours.F, x1, x2), sampson(theirs, x1, x2), atol=5e-3, rtol=1e-3)


def test_weights_drop_matches_and_follow_kornia_statistics():
    x1, x2, _ = two_view_scene(2, 60, noise=0.3, outliers=0.25, seed=5)
    weights = torch.ones(2, 60, dtype=torch.float64)
    weights[:, :15] = 0  # the outliers
    weighted = vgpa.fundamental_matrix(x1, x2, weights=weights)
    subset = vgpa.fundamental_matrix(x1[:, 15:].contiguous(), x2[:, 15:].contiguous())
    torch.testing.assert_close(weighted.F, subset.F, atol=1e-10, rtol=0)
    # Only ratios matter.
    torch.testing.assert_close(vgpa.fundamental_matrix(x1, x2, weights=weights * 7.5).F, weighted.F,
                               atol=1e-10, rtol=0)


def test_ragged_pairs_equal_pairs_solved_alone_and_layouts_agree():
    counts = [12, 0, 8, 150, 7, 40]
    x1, x2, _ = two_view_scene(6, 150, noise=0.2, seed=6)
    packed = vgpa.fundamental_matrix(pack(x1, counts), pack(x2, counts), counts=counts)
    padded = vgpa.fundamental_matrix(x1, x2, counts=counts)
    assert packed.valid.tolist() == [True, False, True, True, False, True]
    torch.testing.assert_close(packed.F, padded.F, equal_nan=True, atol=1e-12, rtol=0)
    for p, c in enumerate(counts):
        alone = vgpa.fundamental_matrix(x1[p, :c], x2[p, :c])
        assert alone.valid.item() == packed.valid[p].item()
        torch.testing.assert_close(alone.F[0], packed.F[p], equal_nan=True, atol=1e-10, rtol=0)
    # Padding content is never read: NaN there changes nothing.
    poisoned = x1.clone()
    for p, c in enumerate(counts):
        poisoned[p, c:] = float("nan")
    torch.testing.assert_close(vgpa.fundamental_matrix(poisoned, x2, counts=counts).F, padded.F, equal_nan=True,
                               atol=0, rtol=0)


@pytest.mark.parametrize("method", ["8point", "ransac"])
def test_fits_in_slices_of_pairs_equal_one_batch(method, monkeypatch):
    from vgpa.ops import fundamental_matrix as op

    counts = [50, 120, 9, 0, 80, 33, 120]
    x1, x2, _ = two_view_scene(7, 120, noise=0.5, outliers=0.2, seed=26)
    x1, x2 = pack(x1, counts), pack(x2, counts)
    options = dict(counts=counts, method=method, iterations=32, backend="torch")
    whole = vgpa.fundamental_matrix(x1, x2, **options)
    monkeypatch.setattr(op, "EIGHT_POINT_ROWS", 250)  # slices of 2 pairs
    sliced = vgpa.fundamental_matrix(x1, x2, **options)
    assert whole.valid.tolist() == sliced.valid.tolist() == [True, True, True, False, True, True, True]
    torch.testing.assert_close(sliced.F, whole.F, equal_nan=True, atol=0, rtol=0)


@pytest.mark.parametrize("method", ["8point", "ransac"])
def test_degenerate_pairs_are_flagged_without_disturbing_the_others(method):
    x1, x2, F_true = two_view_scene(7, 40, seed=7)
    good = x1.clone(), x2.clone()
    # pair 1: all points of frame 1 identical; 2: collinear in both frames; 3: a NaN coordinate;
    # 4: identical frames (x2 = x1: F undetermined); 5: an inf coordinate in x2; 0 and 6 stay good.
    x1[1] = x1[1, :1]
    line = torch.linspace(0, 1, 40, dtype=torch.float64)[:, None]
    x1[2] = torch.tensor([10.0, 20.0], dtype=torch.float64) + line * torch.tensor([200.0, 100.0], dtype=torch.float64)
    x2[2] = torch.tensor([15.0, 25.0], dtype=torch.float64) + line * torch.tensor([150.0, 120.0], dtype=torch.float64)
    x1[3, 17, 0] = float("nan")
    x2[4] = x1[4]
    x2[5, 3, 1] = float("inf")
    options = dict(method=method, iterations=64, backend="torch", confidence=1.0)
    out = vgpa.fundamental_matrix(x1, x2, **options)
    assert out.valid.tolist() == [True, False, False, False, False, False, True]
    assert out.F[1:6].isnan().all() and out.F[[0, 6]].isfinite().all()
    clean = vgpa.fundamental_matrix(good[0][[0, 6]], good[1][[0, 6]], **options)
    torch.testing.assert_close(out.F[[0, 6]], clean.F, atol=1e-12, rtol=0)
    torch.testing.assert_close(out.F[[0, 6]], F_true[[0, 6]], atol=1e-8, rtol=0)
    if method == "ransac":
        assert out.inlier_count[1:6].eq(0).all() and not out.inliers[1:6].any()
        assert out.inlier_count[[0, 6]].eq(40).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_on_one_homography_are_degenerate_until_noise_breaks_it(dtype):
    g = torch.Generator().manual_seed(15)
    x1 = torch.rand(2, 100, 2, generator=g, dtype=torch.float64) * torch.tensor([WIDTH, HEIGHT], dtype=torch.float64)
    H = torch.tensor([[1.01, 0.02, 3.0], [-0.01, 0.99, -2.0], [1e-5, 2e-5, 1.0]], dtype=torch.float64)
    h = torch.cat([x1, torch.ones_like(x1[..., :1])], -1) @ H.T
    x2 = h[..., :2] / h[..., 2:]  # a plane seen twice: F is not determined
    x2[1] += 0.5 * torch.randn(x2[1].shape, generator=g, dtype=torch.float64)
    out = vgpa.fundamental_matrix(x1.to(dtype), x2.to(dtype))
    assert out.valid.tolist() == [False, True]


def test_fewer_than_eight_matches_and_empty_input():
    x1, x2, _ = two_view_scene(1, 7, seed=8)
    for method in ("8point", "ransac"):
        out = vgpa.fundamental_matrix(x1[0], x2[0], method=method, backend="torch")
        assert not out.valid.item() and out.F.isnan().all()
        empty = vgpa.fundamental_matrix(x1[0, :0], x2[0, :0], counts=[0, 0], method=method, backend="torch")
        assert empty.valid.tolist() == [False, False]
        none = vgpa.fundamental_matrix(x1[0, :0], x2[0, :0], counts=torch.zeros(0, dtype=torch.int64), method=method,
                                       backend="torch")
        assert none.F.shape == (0, 3, 3) and none.valid.shape == (0,)


# --------------------------------------------------------------------------------------------
# The 7-point minimal solver


def rows_of(x):
    """(..., 7, 2) points -> (..., 2, 7), the u row and the v row (seven_point's layout)."""
    return x.transpose(-1, -2)


def direct_seven_point(x1, x2):
    """The 7-point solutions of one sample (7, 2) float64, stated independently: the null space
    of the 7x9 system from numpy's SVD, det(a F1 + (1 - a) F2) from its values at 4 points (a
    cubic), its real roots from numpy.roots; each F at unit Frobenius norm."""
    import numpy as np

    u1, v1, u2, v2 = (c.numpy() for c in (x1[:, 0], x1[:, 1], x2[:, 0], x2[:, 1]))
    A = np.stack([u2 * u1, u2 * v1, u2, v2 * u1, v2 * v1, v2, u1, v1, np.ones(7)], 1)
    F1, F2 = np.linalg.svd(A)[2][-2:].reshape(2, 3, 3)
    at = np.array([-1.0, 0.0, 1.0, 2.0])
    cubic = np.polyfit(at, [np.linalg.det(a * F1 + (1 - a) * F2) for a in at], 3)
    roots = np.roots(cubic)
    solutions = [a * F1 + (1 - a) * F2 for a in roots[np.abs(roots.imag) < 1e-9].real]
    return [torch.from_numpy(F / np.linalg.norm(F)) for F in solutions], np.sort_complex(roots)


def test_seven_point_equals_a_direct_solve_on_random_samples():
    g = torch.Generator().manual_seed(21)
    x1 = torch.randn(300, 7, 2, generator=g, dtype=torch.float64)
    x2 = torch.randn(300, 7, 2, generator=g, dtype=torch.float64)
    F, valid = solver.seven_point(rows_of(x1), rows_of(x2), 1e-7)
    assert F.shape == (300, 3, 3, 3) and valid.shape == (300, 3)
    real_roots = []
    for i in range(300):
        expected, roots = direct_seven_point(x1[i], x2[i])
        if ((roots.imag != 0) & (abs(roots.imag) < 1e-6)).any():
            continue  # a near-double root: which side of the real line it falls on is rounding
        got = F[i][valid[i]]
        real_roots.append(len(expected))
        assert len(got) == len(expected), i
        for E in expected:  # each solution found once, up to sign
            error = torch.minimum((got - E).flatten(1).abs().amax(1), (got + E).flatten(1).abs().amax(1))
            assert error.min() < 1e-9, (i, error)
    assert set(real_roots) == {1, 3} and len(real_roots) > 280  # both cases are covered
    # Every solution satisfies the 7 epipolar constraints and det F = 0, and is absent (NaN) otherwise.
    h1 = torch.cat([x1, torch.ones_like(x1[..., :1])], -1)
    h2 = torch.cat([x2, torch.ones_like(x2[..., :1])], -1)
    residual = torch.einsum("nmi,nrij,nmj->nrm", h2, F.nan_to_num(), h1)
    assert residual.abs().max() < 1e-12 and torch.linalg.det(F.nan_to_num()).abs().max() < 1e-14
    assert F[~valid].isnan().all() and F[valid].isfinite().all()
    again = solver.seven_point(rows_of(x1), rows_of(x2), 1e-7)
    assert torch.equal(again[0].nan_to_num(7.0), F.nan_to_num(7.0)) and torch.equal(again[1], valid)


def test_seven_point_recovers_the_true_F_of_a_noise_free_scene():
    x1, x2, F_true = two_view_scene(64, 7, seed=22)
    n1, t1, _ = solver.hartley_normalization(rows_of(x1), torch.ones(64, 7, dtype=torch.float64))
    n2, t2, _ = solver.hartley_normalization(rows_of(x2), torch.ones(64, 7, dtype=torch.float64))
    F, valid = solver.seven_point(n1, n2, 1e-7)
    pixel = solver.canonical_scale(t2.mT[:, None] @ F @ t1[:, None])
    error = (pixel - F_true[:, None]).flatten(2).abs().amax(2).nan_to_num(1.0)
    assert valid.any(1).all() and error.amin(1).max() < 1e-9


def test_seven_point_gives_nothing_for_degenerate_samples():
    x1, x2, _ = two_view_scene(5, 7, seed=23)
    line = torch.linspace(0, 1, 7, dtype=torch.float64)[:, None]
    x1[0] = torch.tensor([10.0, 20.0], dtype=torch.float64) + line * torch.tensor([200.0, 100.0], dtype=torch.float64)
    x1[1, 3], x2[1, 3] = x1[1, 5], x2[1, 5]  # a repeated match
    H = torch.tensor([[1.01, 0.02, 3.0], [-0.01, 0.99, -2.0], [1e-5, 2e-5, 1.0]], dtype=torch.float64)
    h = torch.cat([x1[2], torch.ones(7, 1, dtype=torch.float64)], -1) @ H.T
    x2[2] = h[:, :2] / h[:, 2:]  # all 7 on one homography
    x1[3, 0, 1] = float("nan")
    x1, x2 = x1 / 100, x2 / 100  # about Hartley's scale
    F, valid = solver.seven_point(rows_of(x1), rows_of(x2), 1e-7)
    assert valid.tolist()[:4] == [[False] * 3] * 4 and F[:4].isnan().all()
    assert valid[4].any()
    # float32 rounding of an exactly degenerate sample stays degenerate at float32's tolerance.
    rounded = (x1[:3].float().double(), x2[:3].float().double())
    assert not solver.seven_point(rows_of(rounded[0]), rows_of(rounded[1]), 1e-5)[1].any()


def test_cubic_real_roots_with_one_three_double_and_triple_roots():
    def roots_of(*factors):  # coefficients of 2 * prod (t - r) (+ t^2 + 1 for "complex")
        poly = torch.tensor([2.0], dtype=torch.float64)
        for f in factors:
            poly = torch.nn.functional.conv1d(poly.view(1, 1, -1), torch.tensor(f, dtype=torch.float64).flip(0)
                                              .view(1, 1, -1), padding=len(f) - 1).view(-1)
        t, real = solver.cubic_real_roots(*poly)
        return sorted(t[real].tolist())

    assert roots_of([1.0, -1.0], [1.0, -2.0], [1.0, -3.0]) == pytest.approx([1.0, 2.0, 3.0], abs=1e-14)
    assert roots_of([1.0, 0.5], [1.0, 0.0, 1.0]) == pytest.approx([-0.5], abs=1e-14)  # one real root
    assert roots_of([1.0, -1.0], [1.0, -1.0], [1.0, 2.0]) == pytest.approx([-2.0, 1.0, 1.0], abs=1e-7)
    assert roots_of([1.0, -0.5], [1.0, -0.5], [1.0, -0.5]) == pytest.approx([0.5] * 3, abs=1e-5)
    assert roots_of([1.0, 0.0], [1.0, 0.0], [1.0, 0.0]) == [0.0] * 3
    # A double root that rounding moves slightly off the real line is still found (twice).
    assert roots_of([1.0, -0.1], [1.0, -0.1], [1.0, 3.0]) == pytest.approx([-3.0, 0.1, 0.1], abs=1e-7)
    # Separated roots, and a wide spread of magnitudes, to full precision.
    assert roots_of([1.0, -1e-3], [1.0, 7.0], [1.0, -40.0]) == pytest.approx([-7.0, 1e-3, 40.0], rel=1e-13)


def test_the_pencil_cubic_is_det_of_t_a_plus_b():
    g = torch.Generator().manual_seed(24)
    A, B = torch.randn(2, 50, 9, generator=g, dtype=torch.float64)
    c3, c2, c1, c0 = solver.pencil_cubic(A, B)
    for t in (-1.5, 0.0, 0.7, 3.0):
        det = torch.linalg.det((t * A + B).view(-1, 3, 3))
        torch.testing.assert_close(((c3 * t + c2) * t + c1) * t + c0, det, atol=1e-12, rtol=1e-12)


# --------------------------------------------------------------------------------------------
# RANSAC


def test_ransac_recovers_the_true_F_under_30_percent_outliers_and_flags_them():
    sigma, share, matches = 0.2, 0.3, 200
    x1, x2, F_true = two_view_scene(4, matches, noise=sigma, outliers=share, seed=9)
    bad = int(share * matches)
    robust = vgpa.fundamental_matrix(x1, x2, method="ransac", threshold=1.0, iterations=256, backend="torch")
    plain = vgpa.fundamental_matrix(x1, x2)
    assert robust.valid.all() and plain.valid.all()
    inlier_error = sampson(robust.F, x1[:, bad:], x2[:, bad:])
    assert inlier_error.square().mean().sqrt() < 2 * sigma
    assert (robust.F * F_true).flatten(1).sum(1).abs().min() > 0.99
    # The inlier flags: nearly every true match in, nearly every outlier out (a uniform point
    # falls within 1 px of its epipolar line with probability ~1%).
    assert robust.inliers[:, bad:].float().mean() > 0.95
    assert robust.inliers[:, :bad].float().mean() < 0.05
    assert robust.inlier_count.tolist() == robust.inliers.sum(1).tolist()
    # The fit on all matches is ruined by the outliers.
    assert sampson(plain.F, x1[:, bad:], x2[:, bad:]).median(1).values.min() > 2.0


def test_ransac_inliers_are_the_sampson_decision_of_the_returned_F():
    counts = [50, 120, 9]
    x1, x2, _ = two_view_scene(3, 120, noise=0.5, outliers=0.3, seed=10, dtype=torch.float32)
    x1, x2 = pack(x1, counts), pack(x2, counts)
    out = vgpa.fundamental_matrix(x1, x2, counts=counts, method="ransac", threshold=0.8, iterations=64,
                                  backend="torch")
    d2 = vgpa.sampson_distance(out.F, x1, x2, counts=counts, squared=True, backend="torch")
    assert out.inliers.shape == (sum(counts),) and out.inliers.dtype == torch.bool
    assert torch.equal(out.inliers, d2 <= 0.8 ** 2)
    assert out.inlier_count.tolist() == [int(c.sum()) for c in out.inliers.split(counts)]


def test_ransac_is_bitwise_deterministic_and_seeded():
    x1, x2, _ = two_view_scene(3, 80, noise=0.5, outliers=0.3, seed=11)
    runs = [vgpa.fundamental_matrix(x1, x2, method="ransac", iterations=32, seed=5, backend="torch")
            for _ in range(2)]
    assert torch.equal(runs[0].F, runs[1].F) and torch.equal(runs[0].inliers, runs[1].inliers)
    samples = solver.ransac_samples(torch.tensor([80, 80, 80]), 32, 5)
    assert not torch.equal(samples, solver.ransac_samples(torch.tensor([80, 80, 80]), 32, 6))


def test_ransac_in_rounds_equals_scoring_every_sample(monkeypatch):
    """With confidence < 1 the samples are solved and scored in rounds, only for the pairs whose
    adaptive stop is still open: the result is bitwise that of scoring all of them at once."""
    from vgpa.ops import fundamental_matrix as op

    counts = [60, 200, 9, 120]
    x1, x2, _ = two_view_scene(4, 200, noise=0.5, outliers=0.4, seed=25, dtype=torch.float32)
    x1, x2 = pack(x1, counts), pack(x2, counts)
    options = dict(counts=counts, method="ransac", threshold=1.0, iterations=300, confidence=0.99, backend="torch")
    scored, count = [], vgpa.ops.epipolar.ransac_inlier_count

    def counting(hypotheses, *args, **kwargs):
        scored.append(tuple(hypotheses.shape[:2]))
        return count(hypotheses, *args, **kwargs)

    monkeypatch.setattr(vgpa.ops.epipolar, "ransac_inlier_count", counting)
    monkeypatch.setattr(op, "FIRST_ROUND", 4)
    rounds = vgpa.fundamental_matrix(x1, x2, **options)
    assert len(scored) > 2 and scored[-1][0] < 4  # several rounds, the later ones for fewer pairs
    monkeypatch.setattr(op, "FIRST_ROUND", 300)
    scored.clear()
    at_once = vgpa.fundamental_matrix(x1, x2, **options)
    assert len(scored) == 1
    assert rounds.valid.tolist() == at_once.valid.tolist() and at_once.valid[[0, 1, 3]].all()
    assert torch.equal(rounds.inliers, at_once.inliers)
    torch.testing.assert_close(rounds.F, at_once.F, equal_nan=True, atol=0, rtol=0)


def test_ransac_samples_are_distinct_in_range_uniform_and_independent_of_other_pairs():
    counts = torch.tensor([7, 9, 1000, 3, 0, 57])
    samples = solver.ransac_samples(counts, 2000, 123)
    assert samples.shape == (6, 2000, 7) and samples.dtype == torch.int64
    top = counts.clamp_min(7)[:, None, None]
    assert ((samples >= 0) & (samples < top)).all()
    ordered = samples.sort(-1).values
    assert (ordered[..., 1:] != ordered[..., :-1]).all()  # 7 distinct indices
    assert torch.equal(samples[0].sort(-1).values, torch.arange(7).expand(2000, 7))
    # Uniform: every index of the 57-match pair is drawn 2000 * 7 / 57 ~ 246 times.
    hits = torch.bincount(samples[5].flatten(), minlength=57).double()
    assert (hits - 2000 * 7 / 57).abs().max() < 75
    # A pair's samples depend on its own count and index only.
    other = solver.ransac_samples(torch.tensor([7, 9, 1000, 500, 11, 57]), 2000, 123)
    assert torch.equal(other[[0, 1, 2, 5]], samples[[0, 1, 2, 5]])
    # Drawn in ranges and for some pairs only (RANSAC's rounds): the same samples.
    part = solver.ransac_samples(counts[[2, 5]], 300, 123, first=1700, pair_index=torch.tensor([2, 5]))
    assert torch.equal(part, samples[[2, 5], 1700:])


def test_select_hypothesis_is_sequential_adaptive_ransac():
    g = torch.Generator().manual_seed(12)
    counts = torch.tensor([100, 100, 40, 10])
    scores = torch.randint(0, 100, (4, 300, 3), generator=g)
    scores[2] = torch.randint(0, 12, (300, 3), generator=g)  # low inlier ratios: never stops early
    scores[1, 7, 2] = 99
    scores[0, :, 1:] = 0  # one solution per sample, as for a cubic with one real root
    for confidence in (0.5, 0.99, 0.999, 1.0):
        chosen = solver.select_hypothesis(scores, counts, confidence)
        for p in range(4):
            best, best_index = -1, 0
            for s in range(300):  # the textbook loop, over samples and then their solutions
                for r in range(3):
                    if scores[p, s, r] > best:
                        best, best_index = int(scores[p, s, r]), 3 * s + r
                if confidence < 1:
                    miss = 1 - (best / int(counts[p])) ** 7
                    needed = 0 if miss <= 0 else (math.inf if miss >= 1 else
                                                  math.ceil(math.log(1 - confidence) / math.log(miss)))
                    if s + 1 >= needed:
                        break
            assert chosen[p].item() == best_index, (confidence, p)
    full = solver.select_hypothesis(scores, counts, 1.0)
    assert torch.equal(scores.flatten(1).gather(1, full[:, None])[:, 0], scores.flatten(1).max(1).values)


@pytest.mark.parametrize("backend", [pytest.param("torch", id="torch")] + KERNEL_BACKENDS)
@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_ransac_gives_the_same_F_and_inliers_on_every_backend(backend, layout, request):
    device = torch.device("cpu") if backend == "torch" else request.getfixturevalue("device")
    counts = [30, 5, 24]
    x1, x2, _ = two_view_scene(3, 30, noise=0.5, outliers=0.3, seed=13, dtype=torch.float32)
    if layout == "packed":
        x1, x2 = pack(x1, counts), pack(x2, counts)
    options = dict(counts=counts, method="ransac", threshold=1.0, iterations=16, seed=3)
    expected = vgpa.fundamental_matrix(x1, x2, backend="torch", **options)
    out = vgpa.fundamental_matrix(x1.to(device), x2.to(device), backend=backend, **options)
    assert expected.valid.tolist() == [True, False, True]
    assert torch.equal(out.valid.cpu(), expected.valid)
    assert torch.equal(out.inliers.cpu(), expected.inliers)
    assert torch.equal(out.inlier_count.cpu(), expected.inlier_count)
    torch.testing.assert_close(out.F.cpu(), expected.F, equal_nan=True, atol=0, rtol=0)


# --------------------------------------------------------------------------------------------
# Input errors


def test_bad_inputs_raise_clear_errors():
    x1, x2, _ = two_view_scene(2, 10, seed=14)
    f = vgpa.fundamental_matrix
    cases = [
        (TypeError, "x1 must be a torch.Tensor", lambda: f(x1.tolist(), x2)),
        (TypeError, "x1 has dtype torch.float16", lambda: f(x1.half(), x2.half())),
        (TypeError, "x2 has dtype torch.int64", lambda: f(x1, x2.long())),
        (ValueError, "x1 must be packed", lambda: f(x1[..., :1], x2[..., :1])),
        (ValueError, "x2 must have x1's shape", lambda: f(x1, x2[:, :5])),
        (ValueError, "x2 must have x1's shape", lambda: f(x1, x2.float())),
        (ValueError, "packed counts sum to 9", lambda: f(x1[0], x2[0], counts=[4, 5])),
        (ValueError, "counts must be >= 0", lambda: f(x1[0], x2[0], counts=[12, -2])),
        (ValueError, "padded counts must lie in", lambda: f(x1, x2, counts=[3, 11])),
        (ValueError, "counts must be (2,)", lambda: f(x1, x2, counts=[3])),
        (TypeError, "counts must hold integers", lambda: f(x1, x2, counts=torch.tensor([3.0, 4.0]))),
        (ValueError, "method must be one of", lambda: f(x1, x2, method="lmeds")),
        (ValueError, "threshold must be a number in (0", lambda: f(x1, x2, threshold=0.0)),
        (ValueError, "threshold must be a number", lambda: f(x1, x2, threshold=float("nan"))),
        (ValueError, "iterations must be an int", lambda: f(x1, x2, iterations=0)),
        (ValueError, "iterations must be an int", lambda: f(x1, x2, iterations=True)),
        (ValueError, "confidence must be a number in (0", lambda: f(x1, x2, confidence=1.5)),
        (ValueError, "seed must be an int", lambda: f(x1, x2, seed=-1)),
        (ValueError, "unknown backend", lambda: f(x1, x2, backend="metal")),
        (TypeError, "weights must be a floating-point tensor", lambda: f(x1, x2, weights=[1.0] * 20)),
        (ValueError, "weights must have shape (2, 10)", lambda: f(x1, x2, weights=torch.ones(2, 9))),
        (ValueError, "weights must be finite and >= 0", lambda: f(x1, x2, weights=-torch.ones(2, 10))),
        (ValueError, "weights apply to method='8point' only",
         lambda: f(x1, x2, weights=torch.ones(2, 10), method="ransac")),
    ]
    for error, message, call in cases:
        with pytest.raises(error, match="^fundamental_matrix: " + message.replace("(", r"\(").replace(")", r"\)")):
            call()
