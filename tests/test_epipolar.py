"""Epipolar kernels (docs/design.md 3.6): the Sampson distance and the RANSAC inlier count on every
backend against the pure-PyTorch reference, on correspondences made from known cameras and 3D
points, plus kornia, gradcheck, torch.compile, the input rules and the inlier rule."""

import math

import pytest
import torch
from kornia.geometry.epipolar import sampson_epipolar_distance

import vgpa
from vgpa.ops import epipolar as ops
from vgpa.reference import epipolar as reference

from conftest import KERNEL_BACKENDS
from geometry_inputs import rotation

ALL_BACKENDS = [pytest.param("torch", id="torch")] + KERNEL_BACKENDS
DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.float64, id="float64")]
RAGGED = [5, 0, 1, 40, 13]  # pairs with no match and with one

# The Triton interpreter evaluates masked-out lanes with numpy, which warns on NaN and inf.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@pytest.fixture
def dev(request, backend):
    """The device of ``backend``: the conftest fixture for the kernel backends, the CPU for torch."""
    return torch.device("cpu") if backend == "torch" else request.getfixturevalue("device")


def _skew(t):
    zero = torch.zeros_like(t[..., 0])
    return torch.stack([zero, -t[..., 2], t[..., 1], t[..., 2], zero, -t[..., 0], -t[..., 1], t[..., 0], zero],
                       -1).unflatten(-1, (3, 3))


def two_view_scene(counts, seed=0, noise=0.0, size=512):
    """Matches of random 3D points seen by two OpenCV cameras per pair, with a known relative
    pose: F = K2^-T [t]x R K1^-1 (unit Frobenius norm). float64, packed: F (P, 3, 3), x1 and x2
    (sum(counts), 2); ``noise`` is the pixel standard deviation added to both images."""
    g = torch.Generator().manual_seed(seed)
    pairs = len(counts)
    f = size * (0.8 + 0.4 * torch.rand(pairs, 2, generator=g, dtype=torch.float64))
    k = torch.zeros(pairs, 2, 3, 3, dtype=torch.float64)
    k[..., 0, 0], k[..., 1, 1] = f, f * 1.02
    k[..., 0, 1] = 0.5  # a little skew: K is general
    k[..., 0, 2] = size / 2 + 10 * torch.randn(pairs, 2, generator=g, dtype=torch.float64)
    k[..., 1, 2] = size / 2 + 10 * torch.randn(pairs, 2, generator=g, dtype=torch.float64)
    k[..., 2, 2] = 1
    rot = rotation(0.15 * torch.randn(pairs, 3, generator=g, dtype=torch.float64))
    t = torch.randn(pairs, 3, generator=g, dtype=torch.float64)
    t = 0.5 * t / t.norm(dim=-1, keepdim=True)
    F = torch.linalg.inv(k[:, 1]).mT @ _skew(t) @ rot @ torch.linalg.inv(k[:, 0])
    F = F / F.norm(dim=(1, 2), keepdim=True)
    x1, x2 = [], []
    for p, count in enumerate(counts):
        pix = torch.rand(count, 2, generator=g, dtype=torch.float64) * size
        depth = 4 + 4 * torch.rand(count, 1, generator=g, dtype=torch.float64)
        ray = torch.cat([pix, torch.ones(count, 1, dtype=torch.float64)], 1) @ torch.linalg.inv(k[p, 0]).T
        world = ray * depth  # camera-1 coordinates
        cam2 = world @ rot[p].T + t[p]
        proj = cam2 @ k[p, 1].T
        x1.append(pix)
        x2.append(proj[:, :2] / proj[:, 2:])
    x1, x2 = torch.cat(x1), torch.cat(x2)
    if noise:
        x1 = x1 + noise * torch.randn(x1.shape, generator=g, dtype=torch.float64)
        x2 = x2 + noise * torch.randn(x2.shape, generator=g, dtype=torch.float64)
    return F, x1, x2, torch.tensor(counts, dtype=torch.int64)


def _scene(counts, dtype, device, seed=0, noise=0.5):
    F, x1, x2, c = two_view_scene(counts, seed, noise)
    return F.to(device, dtype), x1.to(device, dtype), x2.to(device, dtype), c.to(device)


def _padded(x, counts, fill=float("nan")):
    """Packed (M_total, 2) -> padded (P, max count, 2), padding filled with ``fill``."""
    width = max(counts.tolist(), default=0)
    out = torch.full((counts.shape[0], width, 2), fill, dtype=x.dtype, device=x.device)
    start = 0
    for p, count in enumerate(counts.tolist()):
        out[p, :count] = x[start:start + count]
        start += count
    return out


def _bits(t):
    return t.contiguous().view(torch.int64 if t.element_size() == 8 else torch.int32)


def _assert_bitwise(a, b):
    assert a.shape == b.shape and a.dtype == b.dtype
    assert torch.equal(_bits(a), _bits(b)), (a - b).abs().max()


# --------------------------------------------------------------------------------------------
# Known geometry


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_noise_free_matches_lie_on_their_epipolar_lines(backend, dev, dtype):
    F, x1, x2, counts = _scene(RAGGED, dtype, dev, noise=0.0)
    d = vgpa.sampson_distance(F, x1, x2, counts=counts, backend=backend)
    assert d.shape == (sum(RAGGED),) and d.dtype == dtype
    limit = 1e-7 if dtype == torch.float64 else 0.05  # pixels; float32 rounds 500-pixel coordinates
    assert d.max().item() < limit
    # The wrong pair's F puts them far from the line: the test can fail.
    shuffled = vgpa.sampson_distance(F.roll(1, 0), x1, x2, counts=counts, backend=backend)
    assert shuffled.median().item() > 1.0


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_pixel_noise_gives_the_expected_squared_distance(backend, dev):
    """Isotropic noise sigma on both images: to first order d is N(0, sigma^2) (the gradient of
    x2^T F x1 with respect to the four coordinates has norm sqrt(den)), so mean d^2 ~ sigma^2."""
    sigma = 0.7
    F, x1, x2, counts = _scene([600, 500], torch.float64, dev, seed=3, noise=sigma)
    d2 = vgpa.sampson_distance(F, x1, x2, counts=counts, squared=True, backend=backend)
    ratio = d2.mean().item() / sigma**2
    assert 0.85 < ratio < 1.15, ratio


# --------------------------------------------------------------------------------------------
# Every backend against the reference


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("squared", [False, True])
def test_sampson_distance_is_bitwise_the_reference(backend, dev, dtype, squared):
    F, x1, x2, counts = _scene(RAGGED, dtype, dev, seed=1, noise=2.0)
    got = vgpa.sampson_distance(F, x1, x2, counts=counts, squared=squared, backend=backend)
    want = vgpa.sampson_distance(F.cpu(), x1.cpu(), x2.cpu(), counts=counts.cpu(), squared=squared, backend="torch")
    _assert_bitwise(got.cpu(), want)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_packed_and_padded_layouts_agree(backend, dev, dtype):
    F, x1, x2, counts = _scene(RAGGED, dtype, dev, seed=2)
    packed = vgpa.sampson_distance(F, x1, x2, counts=counts, backend=backend)
    padded = vgpa.sampson_distance(F, _padded(x1, counts), _padded(x2, counts), counts=counts, backend=backend)
    assert padded.shape == (len(RAGGED), max(RAGGED))
    inside = torch.arange(max(RAGGED), device=dev)[None] < counts[:, None]
    _assert_bitwise(padded[inside], packed)
    assert padded[~inside].isnan().all()
    # Without counts every row of the padded layout is a match.
    full = vgpa.sampson_distance(F, x1[None, :5].expand(len(RAGGED), 5, 2), x2[None, :5].expand(len(RAGGED), 5, 2),
                                 backend=backend)
    assert full.shape == (len(RAGGED), 5) and not full.isnan().any()


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_non_contiguous_inputs(backend, dev):
    F, x1, x2, counts = _scene(RAGGED, torch.float32, dev, seed=4)
    want = vgpa.sampson_distance(F, x1, x2, counts=counts, backend=backend)
    F_view = F.mT.contiguous().mT  # column-major
    wide = torch.cat([x2, x1, x2], 1)  # x1 and x2 as strided column slices
    got = vgpa.sampson_distance(F_view, wide[:, 2:4], wide[:, 4:6], counts=counts, backend=backend)
    _assert_bitwise(got, want)
    hyp = F[:, None].expand(-1, 3, 3, 3)  # stride 0 over hypotheses
    count = vgpa.ransac_inlier_count(hyp, wide[:, 2:4], wide[:, 4:6], counts=counts, threshold=1.0, backend=backend)
    assert torch.equal(count, vgpa.ransac_inlier_count(hyp.contiguous(), x1, x2, counts=counts, threshold=1.0,
                                                       backend=backend))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_empty_inputs(backend, dev):
    for dtype in (torch.float32, torch.float64):
        F = torch.eye(3, dtype=dtype, device=dev)[None]
        none = torch.empty(0, 2, dtype=dtype, device=dev)
        # no pairs
        assert vgpa.sampson_distance(F[:0], none, none, counts=[], backend=backend).shape == (0,)
        assert vgpa.sampson_distance(F[:0], none[None][:0], none[None][:0], backend=backend).shape == (0, 0)
        assert vgpa.ransac_inlier_count(F[None][:0], none, none, counts=[], threshold=1.0,
                                        backend=backend).shape == (0, 1)
        # pairs without matches
        two = F.expand(2, 3, 3)
        assert vgpa.sampson_distance(two, none, none, counts=[0, 0], backend=backend).shape == (0,)
        assert vgpa.sampson_distance(two, none.expand(2, 0, 2), none.expand(2, 0, 2), backend=backend).shape == (2, 0)
        count = vgpa.ransac_inlier_count(two[:, None].expand(2, 4, 3, 3), none, none, counts=[0, 0], threshold=1.0,
                                         backend=backend)
        assert count.dtype == torch.int64 and torch.equal(count, torch.zeros(2, 4, dtype=torch.int64, device=dev))
        # no hypotheses
        pts = torch.ones(3, 2, dtype=dtype, device=dev)
        assert vgpa.ransac_inlier_count(two[:, None][:, :0], pts, pts, counts=[1, 2], threshold=1.0,
                                        backend=backend).shape == (2, 0)
        # an empty gradient
        f = two.clone().requires_grad_(True)
        vgpa.sampson_distance(f, none, none, counts=[0, 0], backend=backend).sum().backward()
        assert torch.equal(f.grad, torch.zeros_like(f))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_non_finite_coordinates_spoil_only_their_match(backend, dev):
    F, x1, x2, counts = _scene(RAGGED, torch.float64, dev, seed=5)
    clean = vgpa.sampson_distance(F, x1, x2, counts=counts, backend=backend)
    bad = torch.tensor([0, 7, 30, 58], device=dev)
    x1, x2 = x1.clone(), x2.clone()
    x1[bad[0], 0] = float("nan")
    x2[bad[1], 1] = float("inf")
    x1[bad[2], 1] = float("-inf")
    x2[bad[3], 0] = float("nan")
    d = vgpa.sampson_distance(F, x1, x2, counts=counts, backend=backend)
    assert d[bad].isnan().all()
    keep = torch.ones_like(d, dtype=torch.bool)
    keep[bad] = False
    _assert_bitwise(d[keep], clean[keep])
    hyp = F[:, None]
    assert torch.equal(vgpa.ransac_inlier_count(hyp, x1, x2, counts=counts, threshold=5.0, backend=backend)[:, 0],
                       torch.stack([(seg <= 25).sum() for seg in d.split(counts.tolist())]))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_a_match_that_overflows_is_nan(backend, dev):
    """Finite coordinates whose terms overflow float32 give NaN (inf / inf), never a number."""
    F = torch.eye(3, device=dev)[None]
    x1 = torch.tensor([[1e30, 2.0], [3.0, 4.0]], device=dev)
    x2 = torch.tensor([[1e30, 1.0], [0.5, 1.0]], device=dev)
    for squared in (False, True):
        d = vgpa.sampson_distance(F, x1, x2, counts=[2], squared=squared, backend=backend)
        assert d[0].isnan() and d[1].isfinite()


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_all_invalid_matches(backend, dev):
    F, x1, x2, counts = _scene([3, 4], torch.float32, dev, seed=17)
    x1 = torch.full_like(x1, float("nan"))
    f = F.clone().requires_grad_(True)
    d = vgpa.sampson_distance(f, x1, x2, counts=counts, backend=backend)
    assert d.isnan().all()
    torch.where(d.isnan(), 0.0, d).sum().backward()
    assert torch.equal(f.grad, torch.zeros_like(f))
    count = vgpa.ransac_inlier_count(F[:, None].expand(2, 5, 3, 3), x1, x2, counts=counts, threshold=1e6,
                                     backend=backend)
    assert torch.equal(count, torch.zeros(2, 5, dtype=torch.int64, device=dev))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_degenerate_epipolar_lines_are_at_distance_inf(backend, dev):
    """den == 0 (both lines degenerate): inf, as kornia, with a zero gradient."""
    F = torch.zeros(1, 3, 3, dtype=torch.float64, device=dev)
    F[0, 2, 2] = 1.0  # a = (0, 0, 1), b = (0, 0, 1) for every match
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]], dtype=torch.float64, device=dev)
    f = F.clone().requires_grad_(True)
    xr = x.clone().requires_grad_(True)
    d = vgpa.sampson_distance(f, xr, x, counts=[2], backend=backend)
    assert torch.isinf(d).all()
    kornia = sampson_epipolar_distance(x[None], x[None], F, squared=False)
    assert torch.isinf(kornia).all()
    d.sum().backward()
    assert torch.equal(f.grad, torch.zeros_like(f)) and torch.equal(xr.grad, torch.zeros_like(xr))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("squared", [False, True])
def test_agrees_with_kornia(backend, dev, squared):
    counts = [30, 30, 30]
    F, x1, x2, c = _scene(counts, torch.float64, dev, seed=6, noise=1.5)
    ours = vgpa.sampson_distance(F, x1.view(3, 30, 2), x2.view(3, 30, 2), squared=squared, backend=backend)
    theirs = sampson_epipolar_distance(x1.view(3, 30, 2).cpu(), x2.view(3, 30, 2).cpu(), F.cpu(), squared=squared)
    torch.testing.assert_close(ours.cpu(), theirs, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------
# Gradients


def _kornia_grads(F, x1, x2, counts, squared, weight):
    """Autograd through kornia per pair: an oracle independent of vgpa's analytic backward."""
    F, x1, x2 = (t.detach().cpu().clone().requires_grad_(True) for t in (F, x1, x2))
    parts = []
    for p, (a, b) in enumerate(zip(x1.split(counts), x2.split(counts))):
        parts.append(sampson_epipolar_distance(a[None], b[None], F[p:p + 1], squared=squared)[0])
    (torch.cat(parts) * weight.cpu()).sum().backward()
    return F.grad, x1.grad, x2.grad


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("squared", [False, True])
def test_gradients_match_autograd_through_kornia(backend, dev, dtype, squared):
    counts = [7, 0, 1, 60]
    F, x1, x2, c = _scene(counts, dtype, dev, seed=7, noise=1.0)
    weight = torch.rand(sum(counts), dtype=dtype, generator=torch.Generator().manual_seed(0)).to(dev)
    weight[3] = 0  # a zero upstream gradient
    f, a, b = (t.clone().requires_grad_(True) for t in (F, x1, x2))
    (vgpa.sampson_distance(f, a, b, counts=c, squared=squared, backend=backend) * weight).sum().backward()
    want = _kornia_grads(F.double(), x1.double(), x2.double(), counts, squared, weight.double())
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=2e-3, atol=2e-3)
    for got, expected in zip((f.grad, a.grad, b.grad), want):
        scale = expected.abs().max().clamp(min=1)
        torch.testing.assert_close(got.cpu().double() / scale, expected / scale, **tol)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("squared", [False, True])
def test_gradients_match_the_reference(backend, dev, dtype, squared):
    """The kernels' analytic backward against autograd of the reference (backend "torch")."""
    F, x1, x2, counts = _scene(RAGGED, dtype, dev, seed=8, noise=1.0)
    weight = torch.randn(sum(RAGGED), dtype=dtype, generator=torch.Generator().manual_seed(1))

    def grads(bk, device):
        f, a, b = (t.to(device).clone().requires_grad_(True) for t in (F, x1, x2))
        d = vgpa.sampson_distance(f, _padded(a, counts.to(device)), _padded(b, counts.to(device)),
                                  counts=counts.to(device), squared=squared, backend=bk)
        inside = ~d.isnan()
        (d[inside] * weight.to(device)).sum().backward()
        return f.grad.cpu(), a.grad.cpu(), b.grad.cpu()

    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    for got, want in zip(grads(backend, dev), grads("torch", "cpu")):
        torch.testing.assert_close(got, want, **tol)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("squared", [False, True])
def test_gradcheck(backend, dev, squared):
    # O(1) entries and coordinates (pixel coordinates make F's entries span six decades, too
    # wide for finite differences); generic matches, so d > 0 and den > 0 everywhere.
    g = torch.Generator().manual_seed(9)
    counts = torch.tensor([4, 0, 1, 3], device=dev)
    F, x1, x2 = (torch.randn(shape, generator=g, dtype=torch.float64).to(dev) for shape in ((4, 3, 3), (8, 2), (8, 2)))

    def fn(f, a, b):
        return vgpa.sampson_distance(f, a, b, counts=counts, squared=squared, backend=backend)

    inputs = tuple(t.clone().requires_grad_(True) for t in (F, x1, x2))
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_masked_out_nan_match_leaves_the_gradient_finite(backend, dev):
    F, x1, x2, counts = _scene([6, 4], torch.float64, dev, seed=10, noise=1.0)
    x1 = x1.clone()
    x1[2, 0] = float("nan")
    f = F.clone().requires_grad_(True)
    d = vgpa.sampson_distance(f, x1, x2, counts=counts, backend=backend)
    torch.where(d.isnan(), 0.0, d).sum().backward()  # the NaN match's upstream gradient is 0
    assert torch.isfinite(f.grad).all()


# --------------------------------------------------------------------------------------------
# The inlier count


def _masked_count(F, x1, x2, counts, threshold, backend):
    d2 = vgpa.sampson_distance(F, x1, x2, counts=counts, squared=True, backend=backend)
    return torch.stack([(part <= threshold ** 2).sum() for part in d2.split(counts.tolist())])


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_inlier_count_is_the_masked_count_of_the_distance(backend, dev, dtype):
    F, x1, x2, counts = _scene(RAGGED, dtype, dev, seed=11, noise=3.0)
    d2 = vgpa.sampson_distance(F, x1, x2, counts=counts, squared=True, backend=backend)
    # Thresholds on the data: matches sit exactly on threshold^2 as torch rounds it.
    for k in (0, 17, 40):
        threshold = math.sqrt(d2[k].item())
        on = d2 == torch.tensor(threshold ** 2, dtype=dtype)
        got = vgpa.ransac_inlier_count(F[:, None], x1, x2, counts=counts, threshold=threshold, backend=backend)
        assert got.shape == (len(RAGGED), 1) and got.dtype == torch.int64
        assert torch.equal(got[:, 0], _masked_count(F, x1, x2, counts, threshold, backend))
        if dtype == torch.float32:
            assert on.any()  # float32 d2 survive the double round trip: some match sits on the threshold


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_exactly_on_the_threshold_are_inliers(backend, dev, dtype):
    """F with den = 1 and d^2 = v2^2: v2 = 3 sits on threshold 3; the neighbouring floats
    either side fall on either side."""
    F = torch.zeros(1, 3, 3, dtype=dtype, device=dev)
    F[0, 1, 2] = -1.0
    three = torch.tensor(3.0, dtype=dtype)
    v2 = torch.stack([three, torch.nextafter(three, torch.tensor(0.0, dtype=dtype)),
                      torch.nextafter(three, torch.tensor(9.0, dtype=dtype)), -three]).to(dev)
    x1 = torch.zeros(4, 2, dtype=dtype, device=dev)
    x2 = torch.stack([torch.zeros_like(v2), v2], 1)
    d2 = vgpa.sampson_distance(F, x1, x2, counts=[4], squared=True, backend=backend)
    assert d2[0].item() == 9.0 and d2[1].item() < 9.0 < d2[2].item()
    got = vgpa.ransac_inlier_count(F[:, None], x1, x2, counts=[4], threshold=3.0, backend=backend)
    assert got.tolist() == [[3]]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_inlier_counts_of_many_hypotheses(backend, dev, dtype):
    """Hypotheses: the true F, perturbed ones, a NaN one; packed and padded; against the
    reference and the masked distance of each hypothesis."""
    F, x1, x2, counts = _scene(RAGGED, dtype, dev, seed=12, noise=1.0)
    g = torch.Generator().manual_seed(2)
    hyp = F[:, None] + 0.002 * torch.randn(len(RAGGED), 19, 3, 3, generator=g, dtype=torch.float64).to(dev, dtype)
    hyp[:, 0] = F
    hyp[1, 3, 2, 2] = float("nan")
    hyp[3, 5, 0, 1] = float("nan")
    got = vgpa.ransac_inlier_count(hyp, x1, x2, counts=counts, threshold=1.5, backend=backend)
    assert got[3, 5] == 0
    padded = vgpa.ransac_inlier_count(hyp, _padded(x1, counts), _padded(x2, counts), counts=counts, threshold=1.5,
                                      backend=backend)
    assert torch.equal(got, padded)
    want = vgpa.ransac_inlier_count(hyp.cpu(), x1.cpu(), x2.cpu(), counts=counts.cpu(), threshold=1.5, backend="torch")
    assert torch.equal(got.cpu(), want)
    for h in (0, 5, 18):
        assert torch.equal(got[:, h], _masked_count(hyp[:, h], x1, x2, counts, 1.5, backend))
    assert (got[:, 0] >= got.max(1).values * 0.9).all()  # the true F is (about) the best


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_inlier_count_beyond_one_tile_and_block(backend, dev):
    """More hypotheses than a tile and more matches than a staged block of every backend."""
    counts = [300, 3]
    F, x1, x2, c = _scene(counts, torch.float32, dev, seed=13, noise=2.0)
    hyp = F[:, None] + 0.001 * torch.randn(2, 130, 3, 3, generator=torch.Generator().manual_seed(3)).to(dev)
    got = vgpa.ransac_inlier_count(hyp, x1, x2, counts=c, threshold=2.0, backend=backend)
    want = vgpa.ransac_inlier_count(hyp.cpu(), x1.cpu(), x2.cpu(), counts=c.cpu(), threshold=2.0, backend="torch")
    assert torch.equal(got.cpu(), want)


# --------------------------------------------------------------------------------------------
# Determinism


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_results_are_bitwise_reproducible(backend, dev):
    F, x1, x2, counts = _scene([300, 2, 90], torch.float32, dev, seed=14, noise=1.0)
    hyp = F[:, None] + 0.003 * torch.randn(3, 20, 3, 3, generator=torch.Generator().manual_seed(4)).to(dev)

    def run():
        f, a, b = (t.clone().requires_grad_(True) for t in (F, x1, x2))
        d = vgpa.sampson_distance(f, a, b, counts=counts, backend=backend)
        d.sum().backward()
        count = vgpa.ransac_inlier_count(hyp, x1, x2, counts=counts, threshold=1.0, backend=backend)
        return d, f.grad, a.grad, b.grad, count

    first, second = run(), run()
    for a, b in zip(first, second):
        assert torch.equal(a, b) if a.dtype == torch.int64 else torch.equal(_bits(a), _bits(b))


def test_inlier_counts_agree_on_every_backend():
    from conftest import backend_device

    F, x1, x2, counts = _scene([120, 0, 33, 1], torch.float32, "cpu", seed=15, noise=1.5)
    hyp = F[:, None] + 0.002 * torch.randn(4, 24, 3, 3, generator=torch.Generator().manual_seed(5))
    results = {}
    for backend in ("torch", "cpu", "triton", "cuda"):
        device = backend_device(backend)
        results[backend] = vgpa.ransac_inlier_count(hyp.to(device), x1.to(device), x2.to(device),
                                                    counts=counts.to(device), threshold=1.0, backend=backend).cpu()
    for backend, counted in results.items():
        assert torch.equal(counted, results["torch"]), backend


# --------------------------------------------------------------------------------------------
# torch.compile


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_torch_compile_fullgraph(backend, dev):
    F, x1, x2, counts = _scene(RAGGED, torch.float32, dev, seed=16)
    hyp = F[:, None].expand(-1, 4, 3, 3).contiguous()

    def score(f, a, b, c):
        d2 = vgpa.sampson_distance(f, a, b, counts=c, squared=True, backend=backend)
        inliers = vgpa.ransac_inlier_count(hyp, a, b, counts=c, threshold=2.0, backend=backend)
        return torch.sqrt(d2 + 1e-8).sum(), inliers

    compiled = torch.compile(score, fullgraph=True, backend="aot_eager")
    f = F.clone().requires_grad_(True)
    loss, inliers = compiled(f, x1, x2, counts)
    loss.backward()
    f_eager = F.clone().requires_grad_(True)
    loss_eager, inliers_eager = score(f_eager, x1, x2, counts)
    loss_eager.backward()
    assert torch.equal(inliers, inliers_eager)
    torch.testing.assert_close(loss, loss_eager)
    torch.testing.assert_close(f.grad, f_eager.grad)
    # The count checks run inside the compiled graph: counts that overrun the matches raise.
    with pytest.raises(ValueError, match="sampson_distance: packed counts sum to"):
        compiled(f, x1, x2, counts + 1)
    with pytest.raises(ValueError, match="counts\\[0\\] = -1 is negative"):
        compiled(f, x1, x2, torch.tensor([-1, 0, 7, 40, 13], device=dev))


# --------------------------------------------------------------------------------------------
# Input rules


def _bad_calls():
    F = torch.eye(3).expand(2, 3, 3)
    x = torch.rand(5, 2)
    c = [2, 3]
    hyp = F[:, None]
    sd, ric = vgpa.sampson_distance, vgpa.ransac_inlier_count
    return [
        (TypeError, "sampson_distance: F must be a torch.Tensor", lambda: sd(F.tolist(), x, x, counts=c)),
        (TypeError, "sampson_distance: F has dtype torch.float16", lambda: sd(F.half(), x.half(), x.half(), counts=c)),
        (ValueError, "sampson_distance: F must be \\(P, 3, 3\\)", lambda: sd(F[:, :2], x, x, counts=c)),
        (TypeError, "sampson_distance: x1 has dtype torch.float64 but F", lambda: sd(F, x.double(), x, counts=c)),
        (TypeError, "sampson_distance: x2 must be a torch.Tensor", lambda: sd(F, x, None, counts=c)),
        (ValueError, "sampson_distance: x2 must have the shape of x1", lambda: sd(F, x, x[:4], counts=c)),
        (ValueError, "sampson_distance: x1 must be \\(M_total, 2\\) packed or \\(P, M, 2\\)",
         lambda: sd(F, x[:, :1], x[:, :1], counts=c)),
        (ValueError, "sampson_distance: x1 must be \\(M_total, 2\\) packed or \\(P, M, 2\\)",
         lambda: sd(F, x[None].expand(3, 5, 2), x[None].expand(3, 5, 2))),
        (ValueError, "sampson_distance: packed matches .* need counts", lambda: sd(F, x, x)),
        (TypeError, "sampson_distance: counts must be an integer tensor", lambda: sd(F, x, x, counts=torch.ones(2))),
        (TypeError, "sampson_distance: counts must be an integer tensor or a list", lambda: sd(F, x, x, counts=5)),
        (ValueError, "sampson_distance: counts must have shape \\(P,\\) = \\(2,\\)",
         lambda: sd(F, x, x, counts=[5])),
        (ValueError, "sampson_distance: counts\\[1\\] = -1 is negative", lambda: sd(F, x, x, counts=[6, -1])),
        (ValueError, "sampson_distance: packed counts sum to 4", lambda: sd(F, x, x, counts=[2, 2])),
        (ValueError, "sampson_distance: counts\\[0\\] = 6 exceeds the 5 rows",
         lambda: sd(F, x[None].expand(2, 5, 2), x[None].expand(2, 5, 2), counts=[6, 1])),
        (TypeError, "sampson_distance: squared must be a bool", lambda: sd(F, x, x, counts=c, squared=1)),
        (ValueError, "sampson_distance: unknown backend", lambda: sd(F, x, x, counts=c, backend="gpu")),
        (ValueError, "ransac_inlier_count: F_hypotheses must be \\(P, H, 3, 3\\)",
         lambda: ric(F, x, x, counts=c, threshold=1.0)),
        (TypeError, "ransac_inlier_count: F_hypotheses has dtype torch.int64",
         lambda: ric(hyp.long(), x, x, counts=c, threshold=1.0)),
        (TypeError, "ransac_inlier_count: threshold must be a number", lambda: ric(hyp, x, x, counts=c, threshold="1")),
        (TypeError, "ransac_inlier_count: threshold must be a number", lambda: ric(hyp, x, x, counts=c, threshold=True)),
        (ValueError, "ransac_inlier_count: threshold must be a finite number > 0",
         lambda: ric(hyp, x, x, counts=c, threshold=0.0)),
        (ValueError, "ransac_inlier_count: threshold must be a finite number > 0",
         lambda: ric(hyp, x, x, counts=c, threshold=float("nan"))),
        (ValueError, "ransac_inlier_count: packed counts sum to 7", lambda: ric(hyp, x, x, counts=[3, 4], threshold=1.0)),
    ]


@pytest.mark.parametrize("error, message, call", _bad_calls())
def test_bad_input_raises_naming_the_argument(error, message, call):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_direct_custom_op_calls_are_checked(backend, dev):
    """torch.ops.vgpa.* calls skip the public checks: the kernels' index checks still hold."""
    F = torch.eye(3, device=dev).expand(2, 3, 3)
    x = torch.rand(5, 2, device=dev)
    with pytest.raises(ValueError, match="counts must be an int64 tensor of shape"):
        torch.ops.vgpa.sampson_distance(F, x, x, torch.tensor([2, 3], dtype=torch.int32, device=dev), ops.PACKED,
                                        False, backend)
    with pytest.raises(ValueError, match="the kernels take F \\(P, 3, 3\\)"):
        torch.ops.vgpa.sampson_distance(F[:, None], x, x, torch.tensor([2, 3], device=dev), ops.PACKED, False, backend)
    with pytest.raises(ValueError, match="padded matches of 2 pairs x 3 rows"):
        torch.ops.vgpa.sampson_distance(F, x, x, torch.tensor([2, 3], device=dev), 3, False, backend)
    with pytest.raises(ValueError, match="x2 must be a torch.float32 \\(N, 2\\) tensor"):
        torch.ops.vgpa.ransac_inlier_count(F[:, None], x, x[:4], torch.tensor([2, 3], device=dev), ops.PACKED, 1.0,
                                           backend)
    with pytest.raises(ValueError, match="upstream gradient"):
        torch.ops.vgpa.sampson_distance_backward(torch.ones(4, device=dev), F, x, x, torch.tensor([2, 3], device=dev),
                                                 ops.PACKED, False, backend)


def test_reference_threshold_rounds_as_torch_compares():
    for threshold in (0.3, 1.0, 2.5, math.sqrt(2), 1e-3):
        for dtype in (torch.float32, torch.float64):
            limit = reference.threshold_squared(threshold, dtype)
            values = torch.tensor([limit], dtype=dtype)
            above = torch.nextafter(values, torch.tensor([math.inf], dtype=dtype))
            assert (values <= threshold ** 2).item() and not (above <= threshold ** 2).item()
