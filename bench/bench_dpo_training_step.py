"""One Diffusion-DPO training step with LoRA (rank 64 on the attention projections, as VideoGPA
trains): forward, loss and backward into the LoRA weights, on a CogVideoX or Wan transformer of
reduced size but real architecture (random weights, float32), one preference pair. Peers:

- "VideoGPA recipe": our statement of VideoGPA's training script (train_dpo/*/03_train.py): a
  separate frozen copy of the base transformer as the reference, four transformer calls (policy
  winner, policy loser, then reference winner and loser without grad), its loss called on six
  tensors (bench_diffusion_dpo_loss's "eager (VideoGPA call)" formula), gradient checkpointing on
  as its configuration sets it;
- "diffusers DPO example": our statement of diffusers' Diffusion-DPO LoRA example
  (examples/research_projects/diffusion_dpo): winners and losers concatenated through the policy,
  then the policy with its adapters disabled as the reference under no_grad, its loss formula
  (bench_diffusion_dpo_loss's "eager (diffusers)"); no gradient checkpointing, its default.

Both peers are fed the transformer inputs vgpa builds (the same noisy latents, timesteps and
rotary embeddings), outside their timing; vgpa's rows time their own noising and input layout.
vgpa's rows: the plain step (``diffusion_dpo_step`` then backward), the low-memory step
(``diffusion_dpo_step_low_memory``) without and with gradient checkpointing, and "loss + glue",
the low-memory step's work outside the transformer (noising and input layout, the fused loss and
its gradient, the per-sample gradient products) on fixed predictions, timed for scale: its share
of a step's time is the loss's and the glue's share.

Peak memory counts what an implementation holds besides the shared model: the VideoGPA recipe's
reference copy is added to its measured peak (``Impl.held_mib``). Every implementation's loss and
LoRA gradients are checked against vgpa's plain step before timing.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from vgpa import _extras

from .bench_diffusion_dpo_loss import eager_dpo_loss, videogpa_call_dpo_loss
from .harness import Entry, Impl, Size, assert_close

BETA = 0.5  # vgpa's beta: VideoGPA trains with beta = 1 in the -0.5 beta' form, beta' = 2 * BETA
LORA_RANK, LORA_ALPHA = 64, 128  # VideoGPA's
LATENT_CHANNELS, TEXT_TOKENS, TEXT_DIM = 16, 16, 256
TRAIN_MISSING = _extras.missing_message("train", "the dpo_training_step bench entry")


def sizes(device, quick):
    """(family, layers, hidden width, latent frames, height, width); x = latent tokens per sample
    (frames x height x width / 4 with 2 x 2 patches) times layers, which the step's work and its
    checkpointed activations grow with. On the CPU the default is CogVideoX with 3
    layers of width 256 at 768 tokens, whose weights (12 x width per token of one sample's
    per-layer activations) stand to activations about as CogVideoX-5B's do at 49 frames of
    480 x 720 (a step is about half a second on 2 cores). The 12-layer size shows the peaks at a
    depth where the checkpointed activations of every layer, not one layer's recomputation,
    dominate them, as at VideoGPA's scale (CogVideoX-5B has 42 layers)."""
    if device.type == "cuda":
        dims = [("cogvideox", 2, 256, 4, 24, 32)] if quick else [
            ("cogvideox", 8, 1024, 13, 30, 45), ("cogvideox", 8, 1024, 13, 60, 90),
            ("wan", 8, 1024, 13, 60, 90), ("cogvideox", 8, 1024, 13, 90, 120)]
        default = ("cogvideox", 8, 1024, 13, 60, 90)
    else:
        dims = [("cogvideox", 1, 128, 2, 8, 16)] if quick else [
            ("cogvideox", 3, 256, 4, 16, 24), ("cogvideox", 3, 256, 4, 24, 32), ("wan", 3, 256, 4, 24, 32),
            ("cogvideox", 3, 256, 4, 32, 48), ("cogvideox", 12, 256, 4, 24, 32)]
        default = ("cogvideox", 3, 256, 4, 24, 32)
    return [Size(d, x=d[1] * d[3] * d[4] * d[5] // 4, default=not quick and d == default) for d in dims]


@dataclass
class StepInputs:
    model: Any  # the diffusers transformer with its LoRA adapter, in training mode
    scheduler: Any
    batch: Any  # vgpa.training.PreferenceBatch
    timesteps: torch.Tensor
    noise: torch.Tensor
    inputs: dict  # the transformer inputs of the 2B samples, winners first (for the peers)
    target: torch.Tensor
    params: list  # the LoRA parameters

    def step_kwargs(self, backend):
        return dict(beta=BETA, backend=backend, scheduler=self.scheduler, timesteps=self.timesteps,
                    noise=self.noise)


def build_model(family, layers, hidden):
    from diffusers import CogVideoXDDIMScheduler, CogVideoXTransformer3DModel, WanTransformer3DModel

    if family == "cogvideox":
        model = CogVideoXTransformer3DModel(
            num_attention_heads=hidden // 64, attention_head_dim=64, in_channels=LATENT_CHANNELS,
            out_channels=LATENT_CHANNELS, time_embed_dim=128, text_embed_dim=TEXT_DIM, num_layers=layers,
            sample_width=64, sample_height=64, sample_frames=49, patch_size=2, max_text_seq_length=TEXT_TOKENS,
            use_rotary_positional_embeddings=True)
        return model, CogVideoXDDIMScheduler(prediction_type="v_prediction")
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=hidden // 128, attention_head_dim=128,
        in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, text_dim=TEXT_DIM, freq_dim=256,
        ffn_dim=4 * hidden, num_layers=layers, rope_max_seq_len=1024)
    return model, None


def make_inputs(dims, device):
    import vgpa.training as vt
    from vgpa.training.dpo_step import _prepare_pair

    family, layers, hidden, frames, height, width = dims
    torch.manual_seed(0)
    model, scheduler = build_model(family, layers, hidden)
    model.to(device)
    # Random A and B: the policy differs from the reference, so every LoRA weight gets a gradient.
    vt.add_lora_adapter(model, rank=LORA_RANK, alpha=LORA_ALPHA, init_lora_weights=False)
    model.train()
    g = torch.Generator().manual_seed(1)
    latents = (1, LATENT_CHANNELS, frames, height, width)
    batch = vt.PreferenceBatch(torch.randn(latents, generator=g), torch.randn(latents, generator=g),
                               torch.randn((1, TEXT_TOKENS, TEXT_DIM), generator=g)).to(device)
    timesteps = torch.tensor([500], device=device)
    noise = torch.randn(latents, generator=g).to(device)
    inputs, target, _, _ = _prepare_pair(model, batch, reference=None, scheduler=scheduler, prediction_type=None,
                                         flow_shift=vt.recipe.WAN_FLOW_SHIFT, generator=None, timesteps=timesteps,
                                         noise=noise, dtype=None, with_reference=True)
    params = [p for p in model.parameters() if p.requires_grad]
    return StepInputs(model, scheduler, batch, timesteps, noise, inputs, target, params)


def _checkpointing(x: StepInputs, on: bool):
    """Set the shared model's gradient checkpointing for the implementation about to be timed."""
    if on:
        x.model.enable_gradient_checkpointing()
    else:
        x.model.disable_gradient_checkpointing()


def _result(x: StepInputs, loss):
    """What every implementation returns: the loss, then the LoRA gradients, in one flat tensor."""
    return torch.cat([loss.detach().view(1)] + [p.grad.flatten() for p in x.params])


def _zero_grad(x: StepInputs):
    for p in x.params:
        p.grad = None


def _half(inputs: dict, part: slice) -> dict:
    from vgpa.training.dpo_step import _PER_SAMPLE_INPUTS

    return {k: v[part] if k in _PER_SAMPLE_INPUTS else v for k, v in inputs.items()}


def _predict(model, inputs):
    return model(**inputs, return_dict=False)[0].float()


def vgpa_plain(backend):
    def make(x):
        import vgpa.training as vt

        _checkpointing(x, False)

        def step():
            _zero_grad(x)
            result = vt.diffusion_dpo_step(x.model, x.batch, **x.step_kwargs(backend))
            result.loss.backward()
            return _result(x, result.loss)
        return step
    return make


def vgpa_low_memory(backend, checkpointing):
    def make(x):
        import vgpa.training as vt

        _checkpointing(x, checkpointing)

        def step():
            _zero_grad(x)
            return _result(x, vt.diffusion_dpo_step_low_memory(x.model, x.batch, **x.step_kwargs(backend)).loss)
        return step
    return make


def videogpa_recipe(x: StepInputs):
    reference = copy.deepcopy(x.model)
    reference.delete_adapters("default")  # the base weights only, as a second from_pretrained gives
    reference.requires_grad_(False).eval()
    _checkpointing(x, True)
    pairs = x.target.shape[0] // 2
    win, lose = _half(x.inputs, slice(0, pairs)), _half(x.inputs, slice(pairs, None))
    win_target, lose_target = x.target[:pairs], x.target[pairs:]

    def step():
        _zero_grad(x)
        win_pred, lose_pred = _predict(x.model, win), _predict(x.model, lose)
        with torch.no_grad():
            win_ref, lose_ref = _predict(reference, win), _predict(reference, lose)
        loss = videogpa_call_dpo_loss(win_pred, lose_pred, win_ref, lose_ref, win_target, lose_target,
                                      beta_prime=2 * BETA)
        loss.backward()
        return _result(x, loss)
    return step


def diffusers_example(x: StepInputs):
    _checkpointing(x, False)

    def step():
        _zero_grad(x)
        model_pred = _predict(x.model, x.inputs)
        x.model.disable_adapters()
        with torch.no_grad():
            ref_pred = _predict(x.model, x.inputs)
        x.model.enable_adapters()
        loss = eager_dpo_loss(model_pred, ref_pred, x.target, beta_prime=2 * BETA)
        loss.backward()
        return _result(x, loss)
    return step


def loss_and_glue(backend):
    """The low-memory step's work outside the transformer, on predictions made once: noising and
    the input layout, the fused loss and its gradient, the per-sample gradient products and their
    backward into the predictions."""
    return lambda x: _loss_and_glue(x, backend)


def _loss_and_glue(x: StepInputs, backend):
    import vgpa
    import vgpa.training as vt
    from vgpa.training.dpo_step import _prepare_pair, _sample_inputs

    with torch.no_grad():
        model_pred = _predict(x.model, x.inputs)
        x.model.disable_adapters()
        ref_pred = _predict(x.model, x.inputs)
        x.model.enable_adapters()
    samples = [model_pred[s:s + 1].clone().requires_grad_() for s in range(model_pred.shape[0])]

    def step():
        inputs, target, weight, frame_dim = _prepare_pair(
            x.model, x.batch, reference=None, scheduler=x.scheduler, prediction_type=None,
            flow_shift=vt.recipe.WAN_FLOW_SHIFT, generator=None, timesteps=x.timesteps, noise=x.noise,
            dtype=None, with_reference=True)
        for s in range(len(samples)):
            _sample_inputs(inputs, s)
        pred = torch.cat([p.detach() for p in samples]).requires_grad_()
        result = vgpa.diffusion_dpo_loss(pred, ref_pred, target, beta=BETA, weight=weight, frame_dim=frame_dim,
                                         backend=backend)
        (grad,) = torch.autograd.grad(result.loss, pred)
        for s, sample in enumerate(samples):
            (sample * grad[s:s + 1]).sum().backward()
        return result.loss.detach()
    return step


def reference(x: StepInputs):
    """vgpa's plain step with the pure-PyTorch loss."""
    with torch.enable_grad():
        return vgpa_plain("torch")(x)()


def agree(got, expected):
    assert_close(got[0], expected[0], rtol=1e-4, atol=1e-6, what="DPO training step loss")
    scale = expected[1:].abs().max().item()
    assert_close(got[1:], expected[1:], rtol=1e-3, atol=1e-3 * scale, what="LoRA gradients")


def agree_loss(got, expected):
    assert_close(got, expected[0], rtol=1e-4, atol=1e-6, what="DPO training step loss")


def _base_weights_mib(x: StepInputs) -> float:
    """The bytes of the base weights: a reference copy's size."""
    return sum(p.numel() * p.element_size() for name, p in x.model.named_parameters() if "lora_" not in name) / 2**20


def _vgpa_impls():
    impls = []
    for b in ("cuda", "triton", "cpu", "torch"):
        impls.append(Impl(f"vgpa[{b}]", peer=False, backend=b, what="diffusion_dpo_step, then backward",
                          make=vgpa_plain(b)))
        if b == "torch":
            continue  # the loss's backend is a small part of the step: the compiled ones stand for it
        impls += [
            Impl(f"vgpa[{b}] low memory", peer=False, backend=b, what="diffusion_dpo_step_low_memory",
                 make=vgpa_low_memory(b, False)),
            Impl(f"vgpa[{b}] low memory + checkpointing", peer=False, backend=b,
                 what="diffusion_dpo_step_low_memory with gradient checkpointing", make=vgpa_low_memory(b, True)),
            Impl(f"vgpa[{b}] loss + glue", peer=False, backend=b, versus=(), agree=agree_loss,
                 what="the low-memory step's work outside the transformer, on fixed predictions",
                 make=loss_and_glue(b)),
        ]
    return impls


ENTRY = Entry(
    op="dpo_training_step",
    x_label="latent tokens per sample x layers",
    sizes=sizes,
    make_inputs=make_inputs,
    reference=reference,
    agree=agree,
    modes=("step",),
    baseline="VideoGPA recipe",
    impls=[
        Impl("VideoGPA recipe", what="our statement of VideoGPA's training script: a reference copy, four "
             "calls, its loss call, gradient checkpointing", make=videogpa_recipe, held_mib=_base_weights_mib),
        Impl("diffusers DPO example", what="our statement of diffusers' DPO LoRA example: one policy call on "
             "the pair, the reference through disabled adapters, its loss", make=diffusers_example),
        *_vgpa_impls(),
    ],
)


def test_dpo_training_step(bench, case):
    if TRAIN_MISSING is not None:
        pytest.skip(TRAIN_MISSING)
    bench(ENTRY, case)
