"""Diffusion-DPO loss, forward + backward with respect to the policy prediction, on CogVideoX-layout
latents (2B, frames, channels, height, width), winners first. Peers:

- "eager (diffusers)": the loss as the diffusers Diffusion-DPO training example writes it on the
  (2B, ...) layout (our statement of that formula);
- "eager (VideoGPA call)": the same formula called as VideoGPA's trainer calls its loss, with the
  winning and losing policy predictions, reference predictions and targets as six tensors (our
  statement: the trainer passes (v_win_pred, v_lose_pred, v_win_ref, v_lose_ref, v_win_target,
  v_lose_target); the loss module itself is not in VideoGPA's released code);
- "torch.compile (diffusers)": torch.compile of the diffusers formula (dynamic shapes, one
  compile for every size).

The loss is memory-bound: rows report GB/s (forward reads 3 tensors, backward reads 2 and writes
1) against a large copy measured in the same run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import vgpa

from .harness import Entry, Impl, Size, assert_close

BETA = 500.0  # vgpa's beta; the diffusers form -0.5 * beta' uses beta' = 2 * BETA


def eager_dpo_loss(model_pred, ref_pred, target, beta_prime=2 * BETA):
    """The loss as the diffusers Diffusion-DPO training example writes it (our statement)."""
    dims = list(range(1, model_pred.dim()))
    model_losses = (model_pred.float() - target.float()).pow(2).mean(dim=dims)
    model_w, model_l = model_losses.chunk(2)
    with torch.no_grad():
        ref_losses = (ref_pred.float() - target.float()).pow(2).mean(dim=dims)
        ref_w, ref_l = ref_losses.chunk(2)
    inside = -0.5 * beta_prime * ((model_w - model_l) - (ref_w - ref_l))
    return -F.logsigmoid(inside).mean()


def videogpa_call_dpo_loss(win_pred, lose_pred, win_ref, lose_ref, win_target, lose_target, beta_prime=2 * BETA):
    """The same formula on VideoGPA's six-tensor call (module docstring); returns the loss."""
    dims = list(range(1, win_pred.dim()))

    def mse(pred, target):
        return (pred.float() - target.float()).pow(2).mean(dim=dims)

    model_diff = mse(win_pred, win_target) - mse(lose_pred, lose_target)
    with torch.no_grad():
        ref_diff = mse(win_ref, win_target) - mse(lose_ref, lose_target)
    return -F.logsigmoid(-0.5 * beta_prime * (model_diff - ref_diff)).mean()


compiled_dpo_loss = torch.compile(eager_dpo_loss, dynamic=True)


def sizes(device, quick):
    """(pairs, frames, channels, height, width, dtype); x = elements of one (2B, ...) tensor. On a
    GPU in bfloat16 (as training runs) with float32 at one size. The default: 2 pairs of
    CogVideoX latents of a 49-frame 480 x 720 video (13 x 16 x 60 x 90), the size the DPO
    targets name, where the three tensors (18 MB each in float32) no longer fit the CPU's
    last-level cache: the memory-bound regime of training batches."""
    if device.type == "cuda":
        dims = [(2, 13, 16, 60, 90, "bfloat16")] if quick else [
            (1, 13, 16, 30, 45, "bfloat16"), (2, 13, 16, 60, 90, "bfloat16"), (2, 13, 16, 60, 90, "float32"),
            (8, 13, 16, 60, 90, "bfloat16"), (2, 13, 16, 240, 360, "bfloat16"), (8, 13, 16, 240, 360, "bfloat16")]
    else:
        dims = [(1, 4, 16, 30, 45, "float32")] if quick else [
            (1, 13, 16, 15, 23, "float32"), (1, 13, 16, 30, 45, "float32"), (1, 13, 16, 60, 90, "float32"),
            (2, 13, 16, 60, 90, "float32"), (4, 13, 16, 60, 90, "float32"), (8, 13, 16, 60, 90, "float32")]
    default = (2, 13, 16, 60, 90, "bfloat16" if device.type == "cuda" else "float32")
    return [Size(d, x=2 * d[0] * d[1] * d[2] * d[3] * d[4], default=not quick and d == default) for d in dims]


def make_inputs(dims, device):
    pairs, frames, channels, height, width, dtype = dims
    shape = (2 * pairs, frames, channels, height, width)
    g = torch.Generator().manual_seed(0)
    model_pred, ref_pred, target = (torch.randn(shape, generator=g).to(device, getattr(torch, dtype)) for _ in range(3))
    return model_pred.requires_grad_(), ref_pred, target


def reference(inputs):
    model_pred, ref_pred, target = inputs
    return vgpa.diffusion_dpo_loss(model_pred, ref_pred, target, beta=BETA, backend="torch").loss


def agree(got, expected):
    assert_close(got, expected, rtol=1e-3, atol=1e-3, what="DPO loss")


def vgpa_impl(backend):
    return Impl(f"vgpa[{backend}]", peer=False, backend=backend, what="the library itself",
                make=lambda x, b=backend: lambda: vgpa.diffusion_dpo_loss(*x, beta=BETA, backend=b).loss)


def videogpa_call(inputs):
    model_pred, ref_pred, target = inputs
    half = model_pred.shape[0] // 2
    args = (model_pred[:half], model_pred[half:], ref_pred[:half], ref_pred[half:], target[:half], target[half:])
    return lambda: videogpa_call_dpo_loss(*args)


ENTRY = Entry(
    op="diffusion_dpo_loss",
    x_label="latent elements per tensor",
    sizes=sizes,
    make_inputs=make_inputs,
    reference=reference,
    agree=agree,
    modes=("fwd+bwd",),
    grad_input=lambda inputs: inputs[0],
    loss_of=lambda loss: loss,
    # forward reads 3 tensors, backward reads 2 and writes 1
    bytes_moved=lambda size, inputs, mode: 6 * inputs[0].numel() * inputs[0].element_size(),
    copy_roof=True,
    baseline="eager (diffusers)",
    impls=[
        Impl("eager (diffusers)", what="our statement of the diffusers Diffusion-DPO formula",
             make=lambda x: lambda: eager_dpo_loss(*x)),
        Impl("eager (VideoGPA call)", what="our statement of VideoGPA's loss call (six tensors)", make=videogpa_call),
        Impl("torch.compile (diffusers)", what="torch.compile of the diffusers formula", compiled=True,
             make=lambda x: lambda: compiled_dpo_loss(*x)),
        *[vgpa_impl(b) for b in ("cuda", "triton", "cpu", "torch")],
    ],
)


def test_diffusion_dpo_loss(bench, case):
    bench(ENTRY, case)
