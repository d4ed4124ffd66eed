"""vgpa.training.diffusion_dpo_step_low_memory: the same loss, metrics and LoRA gradients as the
plain step (float64 models, so that float rounding stays far below the tolerance), one sample's
forward and backward at a time, gradient synchronisation once per step under DDP."""

import contextlib
import socket

import pytest
import torch

pytest.importorskip("diffusers", reason="vgpa.training needs diffusers (pip install vgpa[train])")
pytest.importorskip("peft", reason="vgpa.training needs peft (pip install vgpa[train])")
pytest.importorskip("accelerate", reason="vgpa.training needs accelerate (pip install vgpa[train])")

import vgpa.training as vt  # noqa: E402
from test_training import VARIANTS, _grads, _seeded, _setup  # noqa: E402

METRICS = ("loss", "logits", "model_err", "ref_err", "accuracy", "implicit_accuracy", "reward_margin")


def _lora_model(variant, pairs=2, **config):
    """A float64 model with random LoRA A and B (the policy differs from the reference)."""
    model, scheduler, batch = _setup(variant, pairs=pairs)
    if config:
        model = type(model).from_config(model.config, **config).eval()
    model = model.double()
    vt.add_lora_adapter(model, rank=4, alpha=8, init_lora_weights=False)
    return model, scheduler, batch, [p for p in model.parameters() if p.requires_grad]


def _assert_same_step(plain, low, plain_grads, low_grads):
    assert low.loss.grad_fn is None and not low.loss.requires_grad
    for name in METRICS:
        a, b = getattr(plain, name), getattr(low, name)
        if a is None:
            assert b is None, name
        else:  # the loss reads the predictions in float32: both steps round them alike
            torch.testing.assert_close(b, a.detach(), rtol=1e-6, atol=1e-7, msg=name)
    assert len(plain_grads) == len(low_grads) and any(g.abs().max() > 0 for g in plain_grads)
    for a, b in zip(plain_grads, low_grads):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12 * (a.abs().max().item() + 1e-30))


def _both_steps(model, batch, params, scheduler, **kwargs):
    replay = _seeded()
    plain = vt.diffusion_dpo_step(model, batch, scheduler=scheduler, generator=replay(), **kwargs)
    plain.loss.backward()
    plain_grads = _grads(params)
    low = vt.diffusion_dpo_step_low_memory(model, batch, scheduler=scheduler, generator=replay(), **kwargs)
    return plain, low, plain_grads, _grads(params)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("loss", ["sigmoid", "dro"])
def test_low_memory_step_equals_the_plain_step(variant, loss):
    model, scheduler, batch, params = _lora_model(variant)
    if loss == "dro":  # reference-free, with the SFT anchor
        kwargs = dict(loss_type="dro", beta=None, sft_weight=0.3)
    else:  # a per-pair beta, label smoothing and temporal segments
        kwargs = dict(beta=torch.tensor([2.0, 0.5]), label_smoothing=0.1, segments=2)
    _assert_same_step(*_both_steps(model, batch, params, scheduler, **kwargs))


@pytest.mark.parametrize("variant", ["cogvideox-t2v", "wan-ti2v"])
def test_low_memory_step_with_a_frozen_reference_and_gradient_checkpointing(variant):
    model, scheduler, batch, params = _lora_model(variant, pairs=1)
    frozen = VARIANTS[variant]()[0].eval().double().requires_grad_(False)
    model.enable_gradient_checkpointing()
    model.train()  # diffusers checkpoints only while training
    _assert_same_step(*_both_steps(model, batch, params, scheduler, reference=frozen, loss_type="ipo", beta=1.5))


def test_low_memory_step_backpropagates_each_sample_through_the_given_backward():
    model, scheduler, batch, params = _lora_model("wan-t2v", pairs=2)
    replay = _seeded()
    vt.diffusion_dpo_step(model, batch, scheduler=scheduler, generator=replay(), beta=2.0).loss.backward()
    plain_grads = _grads(params)
    losses = []

    def half_backward(loss):  # as accelerator.backward scales by 1 / gradient_accumulation_steps
        losses.append(loss)
        (loss / 2).backward()

    for p, g in zip(params, plain_grads):  # gradients accumulate into .grad, as backward() does
        p.grad = g.clone()
    vt.diffusion_dpo_step_low_memory(model, batch, scheduler=scheduler, generator=replay(), beta=2.0,
                                     backward=half_backward)
    assert len(losses) == 4 and all(loss.dim() == 0 for loss in losses)  # one per sample
    for p, g in zip(params, plain_grads):
        torch.testing.assert_close(p.grad, 1.5 * g, rtol=1e-9, atol=1e-12 * (g.abs().max().item() + 1e-30))


def test_recomputed_sample_draws_the_dropout_masks_of_its_first_pass():
    model, scheduler, batch, params = _lora_model("cogvideox-t2v", pairs=1, dropout=0.5)
    model.train()
    calls = []
    model.register_forward_hook(lambda module, args, kwargs, out: calls.append(
        (torch.is_grad_enabled(), kwargs, out[0].detach().clone())), with_kwargs=True)
    vt.diffusion_dpo_step_low_memory(model, batch, scheduler=scheduler, beta=1.0)
    # reference 0, policy 0 (no grad), reference 1, policy 1 (kept), policy 0 again
    assert [grad for grad, _, _ in calls] == [False, False, False, True, True]
    (_, inputs, first), (_, _, again) = calls[1], calls[4]
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    with torch.no_grad():  # the masks matter: fresh ones give another prediction
        assert not torch.allclose(model(**inputs)[0], first)


def test_low_memory_step_rejects_misuse():
    model, scheduler, batch, params = _lora_model("wan-t2v", pairs=1)
    with pytest.raises(TypeError, match="backward must be a function"):
        vt.diffusion_dpo_step_low_memory(model, batch, backward=1.0)
    with pytest.raises(ValueError, match="uses no reference model"):
        vt.diffusion_dpo_step_low_memory(model, batch, loss_type="dro", reference=model)
    engine = type("DeepSpeedEngine", (torch.nn.Module,), {})()
    with pytest.raises(NotImplementedError, match="DeepSpeed"):
        vt.diffusion_dpo_step_low_memory(engine, batch)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _one_process_group():
    dist = torch.distributed
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_low_memory_step_under_ddp_synchronises_once():
    """Every backward pass but the last runs in DDP's no_sync: one all-reduce of the gradients
    per step, as for the plain step, and the same gradients."""
    model, scheduler, batch, params = _lora_model("cogvideox-t2v", pairs=2)
    with _one_process_group():
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        reductions = []

        def count(state, bucket):
            reductions.append(bucket.index())
            future = torch.futures.Future()
            future.set_result(bucket.buffer())
            return future

        ddp.register_comm_hook(None, count)
        replay = _seeded()
        plain = vt.diffusion_dpo_step(ddp, batch, scheduler=scheduler, generator=replay(), beta=2.0)
        plain.loss.backward()
        plain_reductions, plain_grads = list(reductions), _grads(params)
        reductions.clear()
        low = vt.diffusion_dpo_step_low_memory(ddp, batch, scheduler=scheduler, generator=replay(), beta=2.0)
        assert plain_reductions and reductions == plain_reductions
        _assert_same_step(plain, low, plain_grads, _grads(params))

