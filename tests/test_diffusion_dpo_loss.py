"""vgpa.diffusion_dpo_loss on every backend against the pure-PyTorch reference and a float64
evaluation, forward and backward."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import KERNEL_BACKENDS

import vgpa
from vgpa.ops import diffusion_dpo_loss as dpo_op
from vgpa.reference import diffusion_dpo_loss as ref

LOSS_TYPES = ["sigmoid", "hinge", "ipo"]


def _skip_unsupported(backend, device, dtype):
    if backend == "triton" and device.type == "cpu" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter has no bfloat16")


def _inputs(shape, dtype, device, spread=1.0):
    """Fresh random predictions; the reference sits closer to the target for some samples so
    that logits take both signs."""
    target = torch.randn(shape, device=device).to(dtype)
    model_pred = (target.float() + spread * torch.randn(shape, device=device)).to(dtype)
    ref_pred = (target.float() + spread * torch.randn(shape, device=device)).to(dtype)
    return model_pred, ref_pred, target


def _float64_expected(model_pred, ref_pred, target, **kwargs):
    """Loss, logits, errors and gradient from the reference evaluated in float64."""
    m64 = model_pred.detach().double().requires_grad_()
    weight = kwargs.pop("weight", None)
    pair_weight = kwargs.pop("pair_weight", None)
    loss, logits, model_err, ref_err = ref.diffusion_dpo_loss(
        m64, ref_pred.double(), target.double(), weight=None if weight is None else weight.double(),
        pair_weight=None if pair_weight is None else pair_weight.double(), **kwargs)
    loss.backward()
    return loss.detach(), logits.detach(), model_err.detach(), ref_err.detach(), m64.grad


def _run(backend, model_pred, ref_pred, target, **kwargs):
    x = model_pred.detach().clone().requires_grad_()
    out = vgpa.diffusion_dpo_loss(x, ref_pred, target, backend=backend, **kwargs)
    out.loss.backward()
    return out, x.grad


def _tolerances(dtype):
    # Errors are accumulated in float32 (float64 for float64) from the same stored inputs,
    # so only the summation order differs from the float64 evaluation.
    return {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-5, torch.bfloat16: 2e-5}[dtype]


def _assert_matches(out, grad, expected, dtype, segments):
    loss, logits, model_err, ref_err, grad64 = expected
    tol = _tolerances(dtype)
    squeeze = (lambda x: x[:, 0]) if segments == 1 else (lambda x: x)
    torch.testing.assert_close(out.model_err.double().cpu(), squeeze(model_err).cpu(), rtol=tol, atol=0)
    torch.testing.assert_close(out.ref_err.double().cpu(), squeeze(ref_err).cpu(), rtol=tol, atol=0)
    logit_scale = logits.abs().max().item() + model_err.abs().max().item()
    torch.testing.assert_close(out.logits.double().cpu(), squeeze(logits).cpu(), rtol=tol, atol=tol * logit_scale)
    torch.testing.assert_close(out.loss.double().cpu(), loss.cpu(), rtol=tol * 10, atol=tol * logit_scale)
    assert grad.dtype == dtype
    # the gradient is rounded once to the input dtype
    eps = torch.finfo(dtype).eps
    gmax = grad64.abs().max().item()
    torch.testing.assert_close(grad.double().cpu(), grad64.cpu(), rtol=2 * max(eps, tol), atol=2 * max(eps, tol) * gmax)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS + [pytest.param("torch", id="torch")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_matches_float64_reference(backend, device, dtype, loss_type):
    _skip_unsupported(backend, device, dtype)
    shape = (4, 3, 2, 5, 7)  # 2 pairs of (F, C, H, W)
    model_pred, ref_pred, target = _inputs(shape, dtype, device)
    kwargs = dict(beta=2.0, loss_type=loss_type)
    out, grad = _run(backend, model_pred, ref_pred, target, **kwargs)
    _assert_matches(out, grad, _float64_expected(model_pred, ref_pred, target, **kwargs), dtype, 1)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize(
    "layout",
    [
        # (name, shape, frame_dim, segments, weight shape)
        ("cogvideox", (4, 5, 3, 4, 6), 1, 1, (4, 5, 1, 4, 6)),
        ("cogvideox-segments", (4, 7, 3, 4, 6), 1, 3, (4, 7, 1, 4, 6)),
        ("wan-segments", (2, 3, 5, 4, 6), 2, 2, (2, 1, 5, 4, 6)),
        ("wan-weight-per-frame", (6, 2, 4, 3, 5), 2, 4, (6, 1, 4, 1, 1)),
        ("scalar-weight", (2, 3, 4, 5), 1, 1, ()),
        ("one-element-per-sample", (4, 1), 1, 1, None),
        ("batch-only", (6,), 1, 1, None),
        ("one-pair", (2, 3, 1, 2, 2), 1, 3, (2, 1, 1, 1, 1)),
    ],
    ids=lambda x: x[0] if isinstance(x, tuple) else None,
)
def test_layouts_weights_and_segments(backend, device, layout):
    _, shape, frame_dim, segments, weight_shape = layout
    model_pred, ref_pred, target = _inputs(shape, torch.float32, device)
    weight = None if weight_shape is None else torch.rand(weight_shape, device=device) + 0.1
    pair_weight = torch.rand(shape[0] // 2, device=device) + 0.5
    kwargs = dict(beta=3.0, weight=weight, pair_weight=pair_weight, segments=segments, frame_dim=frame_dim)
    out, grad = _run(backend, model_pred, ref_pred, target, **kwargs)
    _assert_matches(out, grad, _float64_expected(model_pred, ref_pred, target, **kwargs), torch.float32, segments)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_non_contiguous_inputs(backend, device):
    base = [torch.randn(4, 6, 3, 10, 9, device=device) for _ in range(3)]
    # a channel slice, a permutation (Wan <-> CogVideoX) and a strided spatial slice
    model_pred = base[0][:, :, 1:3].transpose(1, 2)
    ref_pred = base[1][:, :, :2].transpose(1, 2)
    target = base[2].transpose(1, 2)[:, :2]
    weight = torch.rand(4, 6, 1, 10, device=device).transpose(1, 2)[..., None]  # (4, 1, 6, 10, 1)
    for x in (model_pred, ref_pred, target):
        assert not x.is_contiguous()
    kwargs = dict(beta=1.5, weight=weight, segments=2, frame_dim=2)
    out, grad = _run(backend, model_pred, ref_pred, target, **kwargs)
    _assert_matches(out, grad, _float64_expected(model_pred, ref_pred, target, **kwargs), torch.float32, 2)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("numel", [1, 4099, 2**20 + 3])
def test_sizes(backend, device, numel):
    if numel > 2**16 and backend == "triton" and device.type == "cpu":
        pytest.skip("too slow for the Triton interpreter (4099 covers several chunks)")
    model_pred, ref_pred, target = _inputs((2, numel), torch.float32, device)
    kwargs = dict(beta=1.0)
    out, grad = _run(backend, model_pred, ref_pred, target, **kwargs)
    _assert_matches(out, grad, _float64_expected(model_pred, ref_pred, target, **kwargs), torch.float32, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_large_gradient_streamed_out_matches_reference(dtype):
    """A gradient of 16.8 MB takes the C++ backend's streaming-store path (and the huge-page hint);
    the odd innermost size and the segments start rows off cache-line boundaries, so the
    unaligned head and tail of every row are written too."""
    inner = {torch.float32: 20011, torch.bfloat16: 40023, torch.float64: 10007}[dtype]
    model_pred, ref_pred, target = _inputs((2, 3, 5, 7, inner), dtype, torch.device("cpu"))
    assert model_pred.numel() * model_pred.element_size() >= 16 << 20
    kwargs = dict(beta=3.0, segments=2, frame_dim=1)
    out, grad = _run("cpu", model_pred, ref_pred, target, **kwargs)
    _assert_matches(out, grad, _float64_expected(model_pred, ref_pred, target, **kwargs), dtype, 2)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS + [pytest.param("torch", id="torch")])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_extreme_logits_stay_finite(backend, device, loss_type):
    shape = (2, 4, 8)
    target = torch.zeros(shape, device=device)
    model_pred = target.clone()
    ref_pred = target.clone()
    model_pred[0] += 1.0  # winner much worse than the loser under the policy: logits = -beta
    ref_pred[1] += 1.0
    for beta in (1e4, 5e3):
        out, grad = _run(backend, model_pred, ref_pred, target, beta=beta, loss_type=loss_type)
        assert abs(out.logits.item() + 2 * beta) <= 1e-3 * beta
        assert torch.isfinite(out.loss) and torch.isfinite(grad).all()
        if loss_type == "sigmoid":  # -logsigmoid(-2 beta) = 2 beta, slope -1
            assert math.isclose(out.loss.item(), 2 * beta, rel_tol=1e-5)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_bitwise_deterministic(backend, device):
    model_pred, ref_pred, target = _inputs((4, 5, 3, 33, 17), torch.float32, device)
    weight = torch.rand(4, 5, 1, 33, 17, device=device)
    runs = [_run(backend, model_pred, ref_pred, target, beta=7.0, weight=weight, segments=2) for _ in range(3)]
    for out, grad in runs[1:]:
        assert torch.equal(out.loss, runs[0][0].loss)
        assert torch.equal(out.model_err, runs[0][0].model_err)
        assert torch.equal(grad, runs[0][1])


def test_label_smoothing_and_pair_weight_match_reference():
    model_pred, ref_pred, target = _inputs((6, 3, 4), torch.float64, torch.device("cpu"))
    pair_weight = torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64)
    out = vgpa.diffusion_dpo_loss(model_pred, ref_pred, target, beta=5.0, label_smoothing=0.2,
                                  pair_weight=pair_weight, backend="cpu")
    logits = out.logits
    per_pair = -(0.8 * F.logsigmoid(logits) + 0.2 * F.logsigmoid(-logits))
    expected = (pair_weight * per_pair).sum() / pair_weight.sum()
    torch.testing.assert_close(out.loss.double(), expected)


def test_matches_diffusers_formula():
    """Diffusers writes -logsigmoid(-0.5 beta' (model_diff - ref_diff)): beta = beta' / 2 here.
    In float64: diffusers' beta' of 5000 multiplies the float32 rounding of the per-sample means
    (1e-5 over 1,404 elements) into logit errors of 1e-2, which would hide the convention."""
    model_pred, ref_pred, target = _inputs((4, 13, 4, 6, 9), torch.float64, torch.device("cpu"))
    beta_prime = 5000.0
    model_losses = (model_pred - target).pow(2).mean(dim=[1, 2, 3, 4])
    ref_losses = (ref_pred - target).pow(2).mean(dim=[1, 2, 3, 4])
    model_w, model_l = model_losses.chunk(2)
    ref_w, ref_l = ref_losses.chunk(2)
    expected = -F.logsigmoid(-0.5 * beta_prime * ((model_w - model_l) - (ref_w - ref_l))).mean()
    out = vgpa.diffusion_dpo_loss(model_pred, ref_pred, target, beta=beta_prime / 2)
    torch.testing.assert_close(out.loss, expected, rtol=1e-10, atol=1e-10)


def test_metrics():
    # errors per sample: winners [1, 4], losers [4, 4]; reference errors all 4 (exact in float32)
    target = torch.zeros(4, 1)
    model_pred = torch.tensor([[1.0], [2.0], [2.0], [2.0]])
    ref_pred = torch.full((4, 1), 2.0)
    out = vgpa.diffusion_dpo_loss(model_pred, ref_pred, target, beta=0.5)
    torch.testing.assert_close(out.model_err, torch.tensor([1.0, 4.0, 4.0, 4.0]))
    torch.testing.assert_close(out.logits, torch.tensor([1.5, 0.0]))  # 0.5 * ((4 - 1) - (4 - 4)), 0
    assert out.accuracy.item() == 0.5  # 1 < 4 counts, 4 < 4 does not
    assert out.implicit_accuracy.item() == 0.75  # one positive, one tie counted half
    assert out.reward_margin.item() == 0.75


def test_gradient_flows_to_model_pred_only():
    model_pred, ref_pred, target = (x.requires_grad_() for x in _inputs((4, 3, 5), torch.float32, torch.device("cpu")))
    weight = torch.rand(4, 3, 1, requires_grad=True)
    vgpa.diffusion_dpo_loss(model_pred, ref_pred, target, beta=1.0, weight=weight).loss.backward()
    assert model_pred.grad is not None and model_pred.grad.abs().sum() > 0
    assert ref_pred.grad is None and target.grad is None and weight.grad is None


def test_weight_is_read_in_place_not_expanded():
    model_pred, ref_pred, target = _inputs((4, 6, 16, 8, 8), torch.float32, torch.device("cpu"))
    weight = torch.rand(4, 6, 1, 8, 8)
    (_, _, _, w), sizes, strides = dpo_op._kernel_layout(model_pred, ref_pred, target, weight, 1, 2)
    assert w.data_ptr() == weight.data_ptr() and 0 in w.stride()
    assert strides[3][2] == 0 or strides[3][3] == 0  # the channel axis is broadcast


def test_module_matches_function():
    model_pred, ref_pred, target = _inputs((4, 2, 3, 5), torch.float32, torch.device("cpu"))
    module = vgpa.DiffusionDPOLoss(beta=3.0, loss_type="hinge", segments=2)
    out = module(model_pred, ref_pred, target)
    expected = vgpa.diffusion_dpo_loss(model_pred, ref_pred, target, beta=3.0, loss_type="hinge", segments=2)
    assert torch.equal(out.loss, expected.loss) and "hinge" in repr(module)


def _assert_compiled_matches_eager(step, model_pred):
    """step(m) -> (loss, metric) under torch.compile(fullgraph=True) equals eager, value and gradient."""
    compiled = torch.compile(step, fullgraph=True)
    m_eager = model_pred.clone().requires_grad_()
    m_compiled = model_pred.clone().requires_grad_()
    loss_eager, acc_eager = step(m_eager)
    loss_compiled, acc_compiled = compiled(m_compiled)
    loss_eager.backward()
    loss_compiled.backward()
    torch.testing.assert_close(loss_compiled, loss_eager)
    torch.testing.assert_close(acc_compiled, acc_eager)
    torch.testing.assert_close(m_compiled.grad, m_eager.grad)


def test_torch_compile_fullgraph():
    model_pred, ref_pred, target = _inputs((4, 3, 2, 4, 5), torch.float32, torch.device("cpu"))
    weight = torch.rand(4, 3, 1, 4, 5)

    def step(m):
        out = vgpa.diffusion_dpo_loss(m, ref_pred, target, beta=2.0, weight=weight, segments=3, backend="cpu")
        return out.loss, out.implicit_accuracy

    _assert_compiled_matches_eager(step, model_pred)


def test_backend_selection(monkeypatch):
    from vgpa import _backend

    cpu = torch.device("cpu")
    assert _backend.resolve("auto", cpu, "op") == "cpu"
    monkeypatch.setenv("VGPA_BACKEND", "torch")
    assert _backend.resolve("auto", cpu, "op") == "torch"
    assert _backend.resolve("cpu", cpu, "op") == "cpu"  # an explicit argument wins over the variable
    monkeypatch.setenv("VGPA_BACKEND", "nope")
    with pytest.raises(ValueError, match="VGPA_BACKEND"):
        _backend.resolve("auto", cpu, "op")
    monkeypatch.delenv("VGPA_CUDA_EMULATION", raising=False)  # the test instrument off, as for a user
    with pytest.raises(vgpa.BackendUnavailableError, match="CUDA tensors"):
        _backend.resolve("cuda", cpu, "op")


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    from vgpa import _backend

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(vgpa.BackendUnavailableError, match="TRITON_INTERPRET=1"):
        _backend.resolve("triton", torch.device("cpu"), "op")


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(shape=(3, 4)), ValueError, "2B samples"),
        (dict(ref_shape=(4, 5)), ValueError, "shape"),
        (dict(ref_dtype=torch.float64), TypeError, "dtype"),
        (dict(dtype=torch.int64), TypeError, "dtype"),
        (dict(ref_device="meta"), ValueError, "meta"),
        (dict(beta=0.0), ValueError, "beta"),
        (dict(beta=-1.0), ValueError, "beta"),
        (dict(beta=float("nan")), ValueError, "beta"),
        (dict(loss_type="kto"), ValueError, "loss_type"),
        (dict(label_smoothing=0.7), ValueError, "label_smoothing"),
        (dict(loss_type="hinge", label_smoothing=0.1), ValueError, "sigmoid"),
        (dict(weight=torch.zeros(4, 1)), ValueError, "weight sums"),
        (dict(weight=torch.ones(3, 4)), ValueError, "broadcast"),
        (dict(pair_weight=torch.ones(3)), ValueError, "pair_weight"),
        (dict(pair_weight=torch.zeros(2)), ValueError, "sum to > 0"),
        (dict(segments=5), ValueError, "segments"),
        (dict(segments=2, frame_dim=0), ValueError, "frame_dim"),
        (dict(backend="fast"), ValueError, "unknown backend"),
        # beta: one finite value > 0 per pair (B = 2 here), checked in the accumulation dtype
        (dict(beta=torch.tensor([1.0, -1.0])), ValueError, r"beta\[1\] = -1.0"),
        (dict(beta=torch.tensor([0.0, 1.0])), ValueError, r"beta\[0\]"),
        (dict(beta=torch.tensor([1.0, float("nan")])), ValueError, r"beta\[1\] = nan"),
        (dict(beta=torch.tensor([float("inf"), 1.0])), ValueError, r"beta\[0\] = inf"),
        (dict(beta=torch.tensor([1e300, 1.0], dtype=torch.float64)), ValueError, r"float32.*beta\[0\] = 1e\+300"),
        (dict(beta=torch.ones(3)), ValueError, r"beta has shape \(3,\), expected \(2,\)"),
        (dict(beta=torch.ones(1, 2)), ValueError, r"beta has shape \(1, 2\)"),
        (dict(beta=torch.tensor([1, 2])), TypeError, "beta tensor must be floating-point"),
        (dict(beta=torch.ones(2, device="meta")), ValueError, "beta is on meta"),
        (dict(beta=1e300), ValueError, "beta must be finite .* float32"),
        (dict(beta=1e-50), ValueError, "beta must be finite"),
        (dict(beta=True), TypeError, "beta must be a number"),
        (dict(beta="1.0"), TypeError, "beta must be a number"),
        (dict(beta=None), ValueError, "needs beta"),
        (dict(segments=True), TypeError, "segments must be an int"),
        (dict(frame_dim=True), TypeError, "frame_dim must be an int"),
        (dict(label_smoothing=True), TypeError, "label_smoothing must be a number"),
        (dict(sft_weight=-0.1), ValueError, "sft_weight must be finite and >= 0"),
        (dict(sft_weight=float("inf")), ValueError, "sft_weight"),
        (dict(sft_weight=1e300), ValueError, "sft_weight .* float32"),
        (dict(sft_weight=True), TypeError, "sft_weight must be a number"),
        (dict(pair_weight=torch.tensor([1e300, 1.0], dtype=torch.float64)), ValueError, "pair_weight .* float32"),
        # the reference: absent exactly for the reference-free "dro"
        (dict(ref_pred=None), ValueError, "ref_pred is None but loss_type='sigmoid'"),
        (dict(loss_type="dro"), ValueError, "pass ref_pred=None"),
        (dict(ref_pred=None, loss_type="dro", beta=-1.0), ValueError, "beta must be finite"),
    ],
)
def test_bad_input(change, error, match):
    change = dict(change)
    shape = change.pop("shape", (4, 4))
    dtype = change.pop("dtype", torch.float32)
    model_pred = torch.randn(shape).to(dtype)
    ref_pred = torch.randn(change.pop("ref_shape", shape), device=change.pop("ref_device", "cpu"))
    ref_pred = ref_pred.to(change.pop("ref_dtype", dtype))
    if "ref_pred" in change:
        ref_pred = change.pop("ref_pred")
    target = torch.randn(shape).to(dtype)
    kwargs = dict(beta=1.0)
    kwargs.update(change)
    with pytest.raises(error, match=match):
        vgpa.diffusion_dpo_loss(model_pred, ref_pred, target, **kwargs)


@pytest.mark.gpu(reason="real-size bfloat16 run (2 pairs of 13x16x60x90) on the GPU")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_large_bf16_matches_reference(backend):
    """CogVideoX-5B latent size (2 pairs of 13x16x60x90) in bfloat16 on the GPU."""
    device = torch.device("cuda")
    model_pred, ref_pred, target = _inputs((4, 13, 16, 60, 90), torch.bfloat16, device)
    weight = torch.rand(4, 13, 1, 60, 90, device=device)
    kwargs = dict(beta=500.0, weight=weight, segments=2)
    out, grad = _run(backend, model_pred, ref_pred, target, **kwargs)
    _assert_matches(out, grad, _float64_expected(model_pred, ref_pred, target, **kwargs), torch.bfloat16, 2)


def test_compiled_extension_is_built_as_asked():
    """The C++ extension must import (a broken build fails here rather than skipping the
    cpu-backend tests), and VGPA_BUILD_CUDA=1 (as CI sets it) must have compiled CUDA in."""
    import os

    from vgpa import _backend

    ext = _backend.extension()
    assert ext is not None, _backend.extension_error()
    if os.environ.get("VGPA_BUILD_CUDA") == "1":
        assert ext.with_cuda() and ext.cuda_archs()


# --------------------------------------------------------------------------------------------
# Reference-free "dro", the SFT anchor and per-pair beta


def _formula64(model_pred, ref_pred, target, *, loss_type, beta=None, sft_weight=0.0, label_smoothing=0.0):
    """Loss and gradient as docs/design.md 3.4 states them, written out in float64 without vgpa."""
    m = model_pred.detach().double().requires_grad_()
    t = target.detach().double()
    pairs = m.shape[0] // 2
    err = (m - t).square().flatten(1).mean(1)
    err_w, err_l = err[:pairs], err[pairs:]
    if loss_type == "dro":  # Epipolar-DPO's Direct Reward Optimization: no reference, no beta
        per_pair = err_w - err_l
    else:
        ref_err = (ref_pred.double() - t).square().flatten(1).mean(1)
        b = beta.double() if isinstance(beta, torch.Tensor) else torch.tensor(float(beta), dtype=torch.float64)
        logits = b * ((ref_err[:pairs] - err_w) - (ref_err[pairs:] - err_l))
        if loss_type == "sigmoid":
            per_pair = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
        elif loss_type == "hinge":
            per_pair = torch.relu(1 - logits)
        else:
            per_pair = (logits / b - 1 / (2 * b)).square()
    loss = (per_pair + sft_weight * err_w).mean()
    loss.backward()
    return loss.detach(), m.grad, err.detach()


NEW_LOSS_CASES = {
    # id: (loss_type, beta ("pairs": one value per pair), sft_weight, label_smoothing)
    "dro": ("dro", None, 0.0, 0.0),
    "dro-sft": ("dro", None, 0.7, 0.0),
    "sigmoid-sft-beta-per-pair": ("sigmoid", "pairs", 0.5, 0.1),
    "hinge-sft-beta-per-pair": ("hinge", "pairs", 0.3, 0.0),
    "ipo-sft-beta-per-pair": ("ipo", "pairs", 0.2, 0.0),
    "sigmoid-sft": ("sigmoid", 2.0, 1.5, 0.0),
}


@pytest.mark.parametrize("backend", KERNEL_BACKENDS + [pytest.param("torch", id="torch")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("case", list(NEW_LOSS_CASES))
def test_new_losses_match_float64_formula(backend, device, dtype, case):
    _skip_unsupported(backend, device, dtype)
    loss_type, beta, sft_weight, label_smoothing = NEW_LOSS_CASES[case]
    shape = (6, 3, 2, 5, 7)  # 3 pairs of (F, C, H, W)
    model_pred, ref_pred, target = _inputs(shape, dtype, device)
    if loss_type == "dro":
        ref_pred = None
    if beta == "pairs":
        beta = torch.tensor([0.5, 3.0, 1.25], device=device)
    kwargs = dict(loss_type=loss_type, beta=beta, sft_weight=sft_weight, label_smoothing=label_smoothing)
    out, grad = _run(backend, model_pred, ref_pred, target, **kwargs)
    loss64, grad64, err64 = _formula64(model_pred, ref_pred, target, **kwargs)

    tol = _tolerances(dtype)
    torch.testing.assert_close(out.model_err.double().cpu(), err64.cpu(), rtol=tol, atol=0)
    assert (out.ref_err is None) == (loss_type == "dro")
    # "dro" subtracts errors of O(1): compare on their scale, not relative to the difference.
    scale = err64.abs().max().item() * (1 + (beta.abs().max().item() if isinstance(beta, torch.Tensor) else 2.0))
    torch.testing.assert_close(out.loss.double().cpu(), loss64.cpu(), rtol=tol * 10, atol=tol * scale)
    assert grad.dtype == dtype
    eps = torch.finfo(dtype).eps
    gmax = grad64.abs().max().item()
    torch.testing.assert_close(grad.double().cpu(), grad64.cpu(), rtol=2 * max(eps, tol),
                               atol=2 * max(eps, tol) * gmax)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS + [pytest.param("torch", id="torch")])
def test_dro_matches_epipolar_dpo(backend, device):
    """Epipolar-DPO's DRO on separate winner/loser velocities (B, C, T, H, W): the mean over
    pairs of mean((win - win_target)^2) - mean((lose - lose_target)^2)."""
    win, lose, win_target, lose_target = (torch.randn(2, 4, 3, 6, 5, device=device) for _ in range(4))
    model_pred = torch.cat([win, lose]).requires_grad_()
    out = vgpa.diffusion_dpo_loss(model_pred, None, torch.cat([win_target, lose_target]), loss_type="dro",
                                  backend=backend)
    out.loss.backward()

    win64, lose64 = win.double().requires_grad_(), lose.double().requires_grad_()
    expected = ((win64 - win_target.double()).pow(2).mean(dim=[1, 2, 3, 4])
                - (lose64 - lose_target.double()).pow(2).mean(dim=[1, 2, 3, 4])).mean()
    expected.backward()
    torch.testing.assert_close(out.loss.double(), expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model_pred.grad.double(), torch.cat([win64.grad, lose64.grad]),
                               rtol=1e-5, atol=1e-9)
    # Logits prefer the winner when its error is lower, as for the reference-based types.
    torch.testing.assert_close(out.logits, out.model_err[2:] - out.model_err[:2])
    assert out.reward_margin.item() == pytest.approx(-out.loss.item(), rel=1e-6)
    assert out.accuracy.item() == (out.model_err[:2] < out.model_err[2:]).float().mean().item()


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("loss_type", ["dro", "sigmoid"])
def test_dro_and_sft_with_weights_segments_and_pair_weight(backend, device, loss_type):
    """Against the plain reference in float64: DenseDPO segments, a broadcast weight and pair
    weights (which weigh the SFT anchor pair by pair too)."""
    shape, frame_dim, segments = (4, 2, 5, 4, 6), 2, 2  # Wan layout (2B, C, F, H, W)
    model_pred, ref_pred, target = _inputs(shape, torch.float32, device)
    if loss_type == "dro":
        ref_pred, beta = None, None
    else:
        beta = torch.tensor([2.0, 0.5], device=device)
    weight = torch.rand(4, 1, 5, 4, 6, device=device) + 0.1
    pair_weight = torch.tensor([0.25, 1.0], device=device)
    kwargs = dict(loss_type=loss_type, sft_weight=0.8, segments=segments, frame_dim=frame_dim)
    out, grad = _run(backend, model_pred, ref_pred, target, beta=beta, weight=weight, pair_weight=pair_weight,
                     **kwargs)

    m64 = model_pred.detach().double().requires_grad_()
    loss64, logits64, err64, ref_err64 = ref.diffusion_dpo_loss(
        m64, None if ref_pred is None else ref_pred.double(), target.double(),
        beta=None if beta is None else beta.double(), weight=weight.double(), pair_weight=pair_weight.double(),
        **kwargs)
    loss64.backward()
    assert (out.ref_err is None) == (ref_err64 is None) == (loss_type == "dro")
    assert out.logits.shape == (2, segments)
    torch.testing.assert_close(out.model_err.double().cpu(), err64.detach().cpu(), rtol=2e-5, atol=0)
    scale = err64.abs().max().item() * 3
    torch.testing.assert_close(out.logits.double().cpu(), logits64.detach().cpu(), rtol=2e-5, atol=2e-5 * scale)
    torch.testing.assert_close(out.loss.double().cpu(), loss64.detach().cpu(), rtol=2e-4, atol=2e-5 * scale)
    gmax = m64.grad.abs().max().item()
    torch.testing.assert_close(grad.double().cpu(), m64.grad.cpu(), rtol=4e-5, atol=4e-5 * gmax)


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo"])
def test_sft_weight_zero_is_bitwise_the_plain_loss(loss_type):
    model_pred, ref_pred, target = _inputs((6, 3, 4, 5), torch.float32, torch.device("cpu"))
    plain, plain_grad = _run("cpu", model_pred, ref_pred, target, beta=2.5, loss_type=loss_type)
    zero, zero_grad = _run("cpu", model_pred, ref_pred, target, beta=2.5, loss_type=loss_type, sft_weight=0.0)
    logits = plain.logits
    # The loss as it is computed without the anchor: the mean over pairs of ell(logits).
    expected = {"sigmoid": lambda: -F.logsigmoid(logits),
                "hinge": lambda: torch.relu(1.0 - logits),
                "ipo": lambda: (logits / 2.5 - 1.0 / (2.0 * 2.5)).square()}[loss_type]().mean()
    assert torch.equal(plain.loss, expected)
    assert torch.equal(zero.loss, plain.loss) and torch.equal(zero_grad, plain_grad)
    anchored, _ = _run("cpu", model_pred, ref_pred, target, beta=2.5, loss_type=loss_type, sft_weight=0.5)
    torch.testing.assert_close(anchored.loss, plain.loss + 0.5 * plain.model_err[:3].mean())


@pytest.mark.parametrize("backend", ["cpu", "triton", "cuda"])
def test_dro_reads_no_reference_and_anchors_in_one_backward_pass(backend, device, monkeypatch):
    """The forward kernel gets no reference (a null pointer, or none for Triton), and the loss,
    SFT anchor included, reaches the prediction through one gradient kernel call."""
    from vgpa import _backend
    from vgpa.kernels import diffusion_dpo_loss as triton_kernels

    forward_refs, grad_calls = [], []
    launch_compiled, triton_forward = _backend.launch_compiled, triton_kernels.diffusion_dpo_loss_forward
    grad_kernel = dpo_op._grad_kernel

    def spy_launch(backend_name, name, dev, **fields):
        if name == "diffusion_dpo_loss_forward":
            forward_refs.append(fields.get("ref", 0))  # the kernel's ref field, 0 when left out
        return launch_compiled(backend_name, name, dev, **fields)

    def spy_triton(m, r, *args):
        forward_refs.append(r)
        return triton_forward(m, r, *args)

    def spy_grad(*args):
        grad_calls.append(args[0])
        return grad_kernel(*args)

    monkeypatch.setattr(_backend, "launch_compiled", spy_launch)
    monkeypatch.setattr(triton_kernels, "diffusion_dpo_loss_forward", spy_triton)
    monkeypatch.setattr(dpo_op, "_grad_kernel", spy_grad)
    model_pred, _, target = _inputs((4, 3, 8), torch.float32, device)
    out, grad = _run(backend, model_pred, None, target, loss_type="dro", sft_weight=0.5)
    assert forward_refs == [None if backend == "triton" else 0]
    assert grad_calls == [backend]
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_beta_overflowing_the_accumulation_dtype_is_rejected():
    """A beta finite in Python but not in float32 used to give an inf loss and NaN gradients."""
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        model_pred, ref_pred, target = _inputs((4, 6), dtype, torch.device("cpu"))
        with pytest.raises(ValueError, match=r"beta must be finite .* in float32, the dtype the loss accumulates in"):
            vgpa.diffusion_dpo_loss(model_pred, ref_pred, target, beta=1e300)
        # 2 beta leads the gradient: past half of float32's range it would overflow there.
        with pytest.raises(ValueError, match="beta"):
            vgpa.diffusion_dpo_loss(model_pred, ref_pred, target, beta=3e38, loss_type="hinge")
    # float64 inputs accumulate in float64, where the same beta is fine.
    model_pred, ref_pred, target = _inputs((4, 6), torch.float64, torch.device("cpu"))
    out, grad = _run("cpu", model_pred, ref_pred, target, beta=1e300, loss_type="hinge")
    assert torch.isfinite(out.loss) and torch.isfinite(grad).all()


def test_booleans_are_not_numbers():
    model_pred, ref_pred, target = _inputs((4, 6), torch.float32, torch.device("cpu"))
    with pytest.raises(TypeError, match="beta must be a number or a \\(2,\\) tensor, got bool True"):
        vgpa.diffusion_dpo_loss(model_pred, ref_pred, target, beta=True)
    with pytest.raises(TypeError, match="segments must be an int >= 1, got bool True"):
        vgpa.diffusion_dpo_loss(model_pred, ref_pred, target, beta=1.0, segments=True)


def test_per_pair_beta_is_each_pairs_own_scalar_beta():
    model_pred, ref_pred, target = _inputs((6, 5, 4), torch.float64, torch.device("cpu"))
    betas = [0.5, 4.0, 20.0]
    out = vgpa.diffusion_dpo_loss(model_pred, ref_pred, target, beta=torch.tensor(betas, dtype=torch.float64),
                                  loss_type="ipo")
    for b, beta in enumerate(betas):
        one = vgpa.diffusion_dpo_loss(model_pred[[b, b + 3]], ref_pred[[b, b + 3]], target[[b, b + 3]],
                                      beta=beta, loss_type="ipo")
        torch.testing.assert_close(out.logits[b], one.logits[0])
    # A per-pair tensor of one value is the scalar beta.
    same = vgpa.diffusion_dpo_loss(model_pred, ref_pred, target, beta=torch.full((3,), 4.0, dtype=torch.float64))
    plain = vgpa.diffusion_dpo_loss(model_pred, ref_pred, target, beta=4.0)
    torch.testing.assert_close(same.loss, plain.loss, rtol=1e-15, atol=0)


def test_torch_compile_fullgraph_dro_sft_and_per_pair_beta():
    model_pred, ref_pred, target = _inputs((4, 3, 2, 4, 5), torch.float32, torch.device("cpu"))
    beta = torch.tensor([3.0, 0.5])

    def step(m):
        dro = vgpa.diffusion_dpo_loss(m, None, target, loss_type="dro", sft_weight=0.3, segments=3, backend="cpu")
        dpo = vgpa.diffusion_dpo_loss(m, ref_pred, target, beta=beta, sft_weight=0.3, backend="cpu")
        return dro.loss + dpo.loss, dpo.implicit_accuracy

    _assert_compiled_matches_eager(step, model_pred)


def test_torch_backend_checks_the_weight_eagerly_and_compiled():
    """Backend "torch" runs the reference outside the registered ops: its weight check is an op
    of its own, so a compiled graph raises as eager code does. The registered ops take the
    kernel backends only."""
    model_pred, ref_pred, target = _inputs((4, 3, 5), torch.float32, torch.device("cpu"))

    def loss(w):
        return vgpa.diffusion_dpo_loss(model_pred, ref_pred, target, beta=1.0, weight=w, backend="torch").loss

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    good = torch.rand(4, 3, 1) + 0.5
    torch.testing.assert_close(compiled(good), loss(good), rtol=0, atol=0)
    nan_weight = good.clone()
    nan_weight[1, 2, 0] = float("nan")
    for fn in (loss, compiled):
        with pytest.raises(ValueError, match="^diffusion_dpo_loss: the weight sums to <= 0"):
            fn(torch.zeros(4, 3, 1))
        with pytest.raises(ValueError, match="^diffusion_dpo_loss: weight holds NaN"):
            fn(nan_weight)
    with pytest.raises(ValueError, match="registered ops run the kernel backends"):
        torch.ops.vgpa.diffusion_dpo_loss_errors(model_pred, ref_pred, target, None, 1, 1, "torch")


def test_module_takes_dro_sft_and_a_beta_per_call():
    model_pred, ref_pred, target = _inputs((4, 2, 3, 5), torch.float32, torch.device("cpu"))
    dro = vgpa.DiffusionDPOLoss(loss_type="dro", sft_weight=0.2)
    expected = vgpa.diffusion_dpo_loss(model_pred, None, target, loss_type="dro", sft_weight=0.2)
    assert torch.equal(dro(model_pred, None, target).loss, expected.loss) and "sft_weight=0.2" in repr(dro)
    module = vgpa.DiffusionDPOLoss(beta=1.0)
    beta = torch.tensor([2.0, 5.0])
    expected = vgpa.diffusion_dpo_loss(model_pred, ref_pred, target, beta=beta)
    assert torch.equal(module(model_pred, ref_pred, target, beta=beta).loss, expected.loss)
