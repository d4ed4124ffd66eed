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
    """Diffusers writes -logsigmoid(-0.5 beta' (model_diff - ref_diff)): beta = beta' / 2 here."""
    model_pred, ref_pred, target = _inputs((4, 13, 4, 6, 9), torch.float32, torch.device("cpu"))
    beta_prime = 5000.0
    model_losses = (model_pred - target).pow(2).mean(dim=[1, 2, 3, 4])
    ref_losses = (ref_pred - target).pow(2).mean(dim=[1, 2, 3, 4])
    model_w, model_l = model_losses.chunk(2)
    ref_w, ref_l = ref_losses.chunk(2)
    expected = -F.logsigmoid(-0.5 * beta_prime * ((model_w - model_l) - (ref_w - ref_l))).mean()
    out = vgpa.diffusion_dpo_loss(model_pred, ref_pred, target, beta=beta_prime / 2)
    torch.testing.assert_close(out.loss, expected, rtol=1e-4, atol=1e-4)


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


def test_torch_compile_fullgraph():
    model_pred, ref_pred, target = _inputs((4, 3, 2, 4, 5), torch.float32, torch.device("cpu"))
    weight = torch.rand(4, 3, 1, 4, 5)

    def step(m):
        out = vgpa.diffusion_dpo_loss(m, ref_pred, target, beta=2.0, weight=weight, segments=3, backend="cpu")
        return out.loss, out.implicit_accuracy

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
    ],
)
def test_bad_input(change, error, match):
    change = dict(change)
    shape = change.pop("shape", (4, 4))
    dtype = change.pop("dtype", torch.float32)
    model_pred = torch.randn(shape).to(dtype)
    ref_pred = torch.randn(change.pop("ref_shape", shape), device=change.pop("ref_device", "cpu"))
    ref_pred = ref_pred.to(change.pop("ref_dtype", dtype))
    target = torch.randn(shape).to(dtype)
    kwargs = dict(beta=1.0)
    kwargs.update(change)
    with pytest.raises(error, match=match):
        vgpa.diffusion_dpo_loss(model_pred, ref_pred, target, **kwargs)


@pytest.mark.gpu
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
