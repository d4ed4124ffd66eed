"""vgpa.training: the Diffusion-DPO step on tiny random diffusers CogVideoX and Wan
transformers, its data formats, LoRA checkpoints and the examples/train_dpo.py script."""

import contextlib
import copy
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="vgpa.training needs diffusers (pip install vgpa[train])")
peft = pytest.importorskip("peft", reason="vgpa.training needs peft (pip install vgpa[train])")
pytest.importorskip("accelerate", reason="vgpa.training needs accelerate (pip install vgpa[train])")
import psutil  # noqa: E402  (accelerate depends on it)

import safetensors.torch  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKLCogVideoX,
    AutoencoderKLWan,
    CogVideoXDDIMScheduler,
    CogVideoXDPMScheduler,
    CogVideoXTransformer3DModel,
    WanTransformer3DModel,
)

import vgpa  # noqa: E402
import vgpa.training as vt  # noqa: E402
from vgpa.reference.diffusion_dpo_loss import diffusion_dpo_loss as plain_dpo_loss  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "train_dpo.py"
TEXT_SHAPE = (8, 16)  # prompt tokens, text width of the tiny models


# --------------------------------------------------------------------------------------------
# Tiny random models (fresh weights every run) and fresh random pairs


def _cogvideox_t2v():
    """CogVideoX-1.0-like (rotary embeddings), v-prediction through CogVideoXDDIMScheduler."""
    model = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=16,
        text_embed_dim=16, num_layers=1, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
        max_text_seq_length=8, use_rotary_positional_embeddings=True)
    return model, CogVideoXDDIMScheduler(prediction_type="v_prediction"), (4, 3, 8, 8), False


def _cogvideox15_i2v():
    """CogVideoX1.5-I2V-like: temporal patches, the ofs embedding, image latents on channels."""
    model = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=8, out_channels=4, time_embed_dim=16,
        ofs_embed_dim=16, text_embed_dim=16, num_layers=1, sample_width=8, sample_height=8, sample_frames=13,
        patch_size=2, patch_size_t=2, max_text_seq_length=8, use_rotary_positional_embeddings=True,
        patch_bias=False)
    return model, CogVideoXDPMScheduler(prediction_type="v_prediction"), (4, 4, 8, 8), True


def _wan(image_to_video):
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=16, ffn_dim=32, num_layers=1, rope_max_seq_len=32)
    return model, None, (4, 3, 8, 8), image_to_video


VARIANTS = {
    "cogvideox-t2v": _cogvideox_t2v,
    "cogvideox15-i2v": _cogvideox15_i2v,
    "wan-t2v": lambda: _wan(False),
    "wan-ti2v": lambda: _wan(True),
}


def _setup(variant, pairs=1):
    model, scheduler, latent_shape, image_to_video = VARIANTS[variant]()
    batch = _random_batch(pairs, latent_shape, image_to_video)
    return model.eval(), scheduler, batch


def _random_batch(pairs, latent_shape, image_to_video):
    c, _, h, w = latent_shape
    return vt.PreferenceBatch(
        winner_latents=torch.randn((pairs,) + latent_shape),
        loser_latents=torch.randn((pairs,) + latent_shape),
        prompt_embeds=torch.randn((pairs,) + TEXT_SHAPE),
        image_latents=torch.randn(pairs, c, 1, h, w) if image_to_video else None,
    )


def _seeded():
    """A generator seeded afresh each run, and a way to replay it."""
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    return lambda: torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------
# Training behaviour


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_dpo_steps_lower_loss_and_train_only_lora(variant):
    model, scheduler, batch = _setup(variant, pairs=1)
    frozen = copy.deepcopy(model).requires_grad_(False)
    vt.add_lora_adapter(model, rank=4, alpha=8)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3, weight_decay=0.0)
    replay = _seeded()  # the same noise and timestep every step: a fixed objective

    start = vt.predict_pair(model, batch, scheduler=scheduler, generator=replay())
    from_copy = vt.predict_pair(model, batch, reference=frozen, scheduler=scheduler, generator=replay())
    # LoRA B starts at zero: the policy equals the base model, and both references agree.
    torch.testing.assert_close(start.ref_pred, from_copy.ref_pred, rtol=0, atol=0)
    torch.testing.assert_close(start.model_pred, start.ref_pred, rtol=0, atol=0)

    losses, implicit = [], []
    for _ in range(6):
        out = vt.diffusion_dpo_step(model, batch, scheduler=scheduler, generator=replay(), beta=1.0)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
        implicit.append(out.implicit_accuracy.item())

    assert losses[0] == pytest.approx(math.log(2.0), abs=1e-6) and implicit[0] == 0.5
    assert losses[-1] < losses[0] - 1e-6, losses
    assert all(b <= a + 1e-7 for a, b in zip(losses, losses[1:])), losses
    assert implicit[-1] == 1.0, implicit

    names = {name for name, p in model.named_parameters() if p.requires_grad}
    assert names and all("lora_" in name for name in names)
    for name, p in model.named_parameters():
        changed = not torch.equal(p.detach(), before[name])
        if "lora_" not in name:
            assert not changed, f"base parameter {name} changed"
        elif "lora_B" in name:
            assert changed, f"{name} did not train"

    end = vt.predict_pair(model, batch, scheduler=scheduler, generator=replay())
    torch.testing.assert_close(end.ref_pred, start.ref_pred, rtol=0, atol=0)
    torch.testing.assert_close(end.target, start.target, rtol=0, atol=0)
    assert not torch.equal(end.model_pred, start.model_pred)


def _grads(params):
    grads = [p.grad.detach().clone() for p in params]
    for p in params:
        p.grad = None
    return grads


@pytest.mark.parametrize("variant,reference", [
    ("cogvideox-t2v", "lora"), ("cogvideox15-i2v", "lora"), ("wan-t2v", "lora"), ("wan-ti2v", "lora"),
    ("cogvideox-t2v", "frozen-copy"), ("wan-ti2v", "frozen-copy"),
])
def test_fused_loss_gradients_match_plain_formula(variant, reference):
    model, scheduler, batch = _setup(variant, pairs=2)
    if reference == "lora":
        # Random A and B: the policy differs from the reference, so the logits are not zero.
        vt.add_lora_adapter(model, rank=4, alpha=8, init_lora_weights=False)
        ref_model = None
    else:  # full fine-tuning against a frozen copy of other weights
        ref_model = VARIANTS[variant]()[0].eval().requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    replay = _seeded()
    pred = vt.predict_pair(model, batch, reference=ref_model, scheduler=scheduler, generator=replay())
    assert pred.ref_pred.grad_fn is None and pred.model_pred.requires_grad
    if variant == "wan-ti2v":  # the clean first latent frame is left out of the loss
        assert pred.weight.shape == (1, 1, pred.model_pred.shape[2], 1, 1)
        assert pred.weight[0, 0, 0].item() == 0 and bool((pred.weight[0, 0, 1:] == 1).all())
    else:
        assert pred.weight is None
    kwargs = dict(beta=2.0, weight=pred.weight, frame_dim=pred.frame_dim)
    # "auto" must be a compiled backend (C++ on CPU), or this would compare "torch" with itself.
    auto = vgpa._backend.resolve("auto", pred.model_pred.device, "diffusion_dpo_loss")
    assert auto != "torch", vgpa._backend.extension_error()

    fused = vgpa.diffusion_dpo_loss(pred.model_pred, pred.ref_pred, pred.target, backend="auto", **kwargs)
    fused.loss.backward(retain_graph=True)
    fused_grads = _grads(params)
    torch_backend = vgpa.diffusion_dpo_loss(pred.model_pred, pred.ref_pred, pred.target, backend="torch",
                                            **kwargs)
    torch_backend.loss.backward(retain_graph=True)
    torch_grads = _grads(params)
    plain_loss, plain_logits, _, _ = plain_dpo_loss(pred.model_pred, pred.ref_pred, pred.target, **kwargs)
    plain_loss.backward()
    plain_grads = _grads(params)

    assert fused.logits.abs().max() > 0
    torch.testing.assert_close(fused.loss, plain_loss, rtol=1e-5, atol=1e-7)
    # Logits are beta times differences of O(1) float32 errors summed in another order.
    logit_tol = 1e-5 * 2.0 * pred.model_pred.detach().sub(pred.target).square().mean().item()
    torch.testing.assert_close(fused.logits, plain_logits[:, 0], rtol=0, atol=logit_tol)
    torch.testing.assert_close(torch_backend.loss, plain_loss, rtol=1e-5, atol=1e-7)
    assert any(g.abs().max() > 0 for g in plain_grads)
    for fused_g, torch_g, plain_g in zip(fused_grads, torch_grads, plain_grads):
        scale = plain_g.abs().max().item() + 1e-12
        torch.testing.assert_close(fused_g, plain_g, rtol=1e-4, atol=1e-5 * scale)
        torch.testing.assert_close(torch_g, plain_g, rtol=1e-4, atol=1e-5 * scale)

    # diffusion_dpo_step is exactly predict_pair followed by the fused loss.
    step = vt.diffusion_dpo_step(model, batch, reference=ref_model, scheduler=scheduler, generator=replay(),
                                 beta=2.0)
    torch.testing.assert_close(step.loss, fused.loss, rtol=1e-6, atol=0)


# --------------------------------------------------------------------------------------------
# Reference-free steps, the SFT anchor and per-pair beta


def _count_forwards(module):
    calls = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("variant", ["cogvideox-t2v", "wan-ti2v"])
def test_dro_step_runs_no_reference_forward(variant):
    model, scheduler, batch = _setup(variant, pairs=2)
    frozen = VARIANTS[variant]()[0].eval().requires_grad_(False)
    vt.add_lora_adapter(model, rank=4, alpha=8, init_lora_weights=False)
    policy_calls, reference_calls = _count_forwards(model), _count_forwards(frozen)
    replay = _seeded()

    vt.diffusion_dpo_step(model, batch, scheduler=scheduler, generator=replay(), beta=1.0)
    assert len(policy_calls) == 2  # the policy, then itself with its adapters disabled
    vt.diffusion_dpo_step(model, batch, reference=frozen, scheduler=scheduler, generator=replay(), beta=1.0)
    assert (len(policy_calls), len(reference_calls)) == (3, 1)

    out = vt.diffusion_dpo_step(model, batch, scheduler=scheduler, generator=replay(), loss_type="dro",
                                sft_weight=0.5)
    assert (len(policy_calls), len(reference_calls)) == (4, 1)  # the policy alone: half the passes
    assert out.ref_err is None
    with pytest.raises(ValueError, match="loss_type='dro' uses no reference model"):
        vt.diffusion_dpo_step(model, batch, reference=frozen, scheduler=scheduler, loss_type="dro")

    # The step is the plain formula on the policy's prediction, gradients included.
    params = [p for p in model.parameters() if p.requires_grad]
    out.loss.backward()
    fused_grads = _grads(params)
    pred = vt.predict_pair(model, batch, scheduler=scheduler, generator=replay(), with_reference=False)
    assert pred.ref_pred is None
    plain_loss, _, _, _ = plain_dpo_loss(pred.model_pred, None, pred.target, loss_type="dro", sft_weight=0.5,
                                         weight=pred.weight, frame_dim=pred.frame_dim)
    plain_loss.backward()
    torch.testing.assert_close(out.loss, plain_loss, rtol=1e-5, atol=1e-7)
    for fused_g, plain_g in zip(fused_grads, _grads(params)):
        torch.testing.assert_close(fused_g, plain_g, rtol=1e-4, atol=1e-5 * (plain_g.abs().max().item() + 1e-12))


def test_dro_trains_a_model_without_adapters():
    """No reference is run, so nothing needs LoRA adapters to disable: full fine-tuning works."""
    model, scheduler, batch = _setup("wan-t2v", pairs=1)
    with pytest.raises(ValueError, match="has no LoRA adapters to disable"):
        vt.diffusion_dpo_step(model, batch)
    out = vt.diffusion_dpo_step(model, batch, loss_type="dro")
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_beta_schedules_follow_their_formulas():
    t = torch.tensor([0, 250, 500, 999])
    constant = vt.scheduled_beta(2.0, "constant", t, prediction_type="flow_matching")
    assert constant == 2.0
    s = t.double() / 1000
    sigma = 3.0 * s / (1 + 2.0 * s)
    signal = vt.scheduled_beta(2.0, "signal", t, prediction_type="flow_matching", flow_shift=3.0)
    torch.testing.assert_close(signal, (2.0 * (1 - sigma) ** 2).float())
    assert signal.dtype == torch.float32 and bool((signal > 0).all())

    scheduler = CogVideoXDDIMScheduler(prediction_type="v_prediction")
    ddpm = vt.scheduled_beta(0.5, "signal", t, prediction_type="v_prediction", scheduler=scheduler)
    torch.testing.assert_close(ddpm, (0.5 * scheduler.alphas_cumprod[t]).float())
    # x_t = alpha_t x0 + sigma_t noise: the signal scale is what add_noise multiplies x0 by.
    x0, noise = torch.randn(4, 3), torch.zeros(4, 3)
    alpha = vt.signal_scale(t, prediction_type="v_prediction", scheduler=scheduler)
    torch.testing.assert_close(scheduler.add_noise(x0, noise, t), alpha[:, None] * x0)

    drawn = vt.sample_timesteps(64, prediction_type="v_prediction", scheduler=scheduler,
                                generator=torch.Generator().manual_seed(0))
    assert drawn.shape == (64,) and 0 <= drawn.min() and drawn.max() < scheduler.config.num_train_timesteps
    with pytest.raises(ValueError, match="unknown beta schedule 'cosine'"):
        vt.scheduled_beta(1.0, "cosine", t, prediction_type="flow_matching")
    with pytest.raises(ValueError, match="pass scheduler="):
        vt.scheduled_beta(1.0, "signal", t, prediction_type="epsilon")


def test_step_with_a_per_pair_beta_schedule():
    model, scheduler, batch = _setup("wan-t2v", pairs=3)
    vt.add_lora_adapter(model, rank=4, alpha=8, init_lora_weights=False)
    replay = _seeded()
    timesteps = vt.sample_timesteps(3, prediction_type="flow_matching", generator=replay())
    beta = vt.scheduled_beta(4.0, "signal", timesteps, prediction_type="flow_matching")
    out = vt.diffusion_dpo_step(model, batch, beta=beta, timesteps=timesteps, generator=replay(), sft_weight=0.1)
    pred = vt.predict_pair(model, batch, timesteps=timesteps, generator=replay())
    plain_loss, plain_logits, plain_model_err, _ = plain_dpo_loss(pred.model_pred, pred.ref_pred, pred.target,
                                                                  beta=beta, sft_weight=0.1, frame_dim=pred.frame_dim)
    torch.testing.assert_close(out.loss, plain_loss, rtol=1e-5, atol=1e-7)
    # A logit is beta times a difference of nearly equal float32 errors: its rounding is relative
    # to beta x the errors, not to the logit itself.
    logit_atol = 1e-5 * float(beta.abs().max()) * float(plain_model_err.abs().max())
    torch.testing.assert_close(out.logits, plain_logits[:, 0], rtol=1e-4, atol=logit_atol)
    with pytest.raises(ValueError, match=r"beta has shape \(2,\), expected \(3,\)"):
        vt.diffusion_dpo_step(model, batch, beta=beta[:2])


# --------------------------------------------------------------------------------------------
# Noising and encoding


def test_add_noise_pair_shares_noise_and_timestep_and_matches_the_formulas():
    pairs, shape = 3, (3, 4, 2, 5, 6)
    winner, loser = torch.randn(shape), torch.randn(shape)
    noise = torch.randn(shape)
    t = torch.randint(0, 1000, (pairs,))

    flow = vt.add_noise_pair(winner, loser, prediction_type="flow_matching", timesteps=t, noise=noise)
    s = t.float() / 1000
    sigma = 5.0 * s / (1 + 4.0 * s)
    sig = sigma.view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(flow.noisy_latents[:pairs], (1 - sig) * winner + sig * noise)
    torch.testing.assert_close(flow.noisy_latents[pairs:], (1 - sig) * loser + sig * noise)
    torch.testing.assert_close(flow.target, torch.cat([noise - winner, noise - loser]))
    torch.testing.assert_close(flow.timesteps, torch.cat([sigma, sigma]) * 1000)
    half = vt.add_noise_pair(winner[:1], loser[:1], prediction_type="flow_matching",
                             timesteps=torch.tensor([500]), noise=noise[:1])
    assert half.timesteps[0].item() == pytest.approx(1000 * 2.5 / 3.0)

    scheduler = CogVideoXDDIMScheduler(prediction_type="v_prediction")
    v = vt.add_noise_pair(winner, loser, prediction_type="v_prediction", scheduler=scheduler, timesteps=t,
                          noise=noise)
    for half_latents, part in ((winner, slice(0, pairs)), (loser, slice(pairs, None))):
        torch.testing.assert_close(v.noisy_latents[part], scheduler.add_noise(half_latents, noise, t))
        torch.testing.assert_close(v.target[part], scheduler.get_velocity(half_latents, noise, t))
    assert torch.equal(v.timesteps, torch.cat([t, t]))

    eps_scheduler = CogVideoXDDIMScheduler(prediction_type="epsilon")
    eps = vt.add_noise_pair(winner, loser, prediction_type="epsilon", scheduler=eps_scheduler, timesteps=t,
                            noise=noise)
    torch.testing.assert_close(eps.target, torch.cat([noise, noise]))
    torch.testing.assert_close(eps.noisy_latents[pairs:], eps_scheduler.add_noise(loser, noise, t))

    # Drawn noise and timesteps are shared by the two halves too.
    drawn = vt.add_noise_pair(winner, loser, prediction_type="flow_matching")
    assert torch.equal(drawn.timesteps[:pairs], drawn.timesteps[pairs:])
    sig = (drawn.timesteps[:pairs] / 1000).view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(drawn.noisy_latents[:pairs] - (1 - sig) * winner,
                               drawn.noisy_latents[pairs:] - (1 - sig) * loser, rtol=1e-5, atol=1e-5)


def test_encode_video_and_image_apply_the_vae_normalisation():
    video = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    cog = AutoencoderKLCogVideoX(
        down_block_types=("CogVideoXDownBlock3D",) * 2, up_block_types=("CogVideoXUpBlock3D",) * 2,
        block_out_channels=(8, 16), latent_channels=4, layers_per_block=1, norm_num_groups=4).eval()
    mode = cog.encode(video).latent_dist.mode()
    torch.testing.assert_close(vt.encode_video(cog, video, sample=False), mode * cog.config.scaling_factor)
    image = video[:, :, 0]
    image_mode = cog.encode(image.unsqueeze(2)).latent_dist.mode()
    torch.testing.assert_close(vt.encode_image(cog, image, sample=False), image_mode * cog.config.scaling_factor)
    cog.register_to_config(invert_scale_latents=True)  # CogVideoX1.5-I2V divides the image latents
    torch.testing.assert_close(vt.encode_image(cog, image, sample=False), image_mode / cog.config.scaling_factor)

    mean, std = torch.randn(4).tolist(), (torch.rand(4) + 0.5).tolist()
    wan = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[True],
                           latents_mean=mean, latents_std=std).eval()
    mode = wan.encode(video).latent_dist.mode()
    expected = (mode - torch.tensor(mean).view(1, 4, 1, 1, 1)) / torch.tensor(std).view(1, 4, 1, 1, 1)
    torch.testing.assert_close(vt.encode_video(wan, video, sample=False), expected)
    sampled = vt.encode_video(wan, video, generator=torch.Generator().manual_seed(1))
    assert sampled.shape == expected.shape and not torch.equal(sampled, expected)

    with pytest.raises(ValueError, match=r"\(B, 3, F, H, W\)"):
        vt.encode_video(wan, video[:, :, 0])


# --------------------------------------------------------------------------------------------
# Checkpoints


@pytest.mark.parametrize("variant", ["cogvideox-t2v", "wan-ti2v"])
def test_saved_lora_checkpoint_reloads_to_the_same_outputs(variant, tmp_path):
    model, scheduler, batch = _setup(variant, pairs=1)
    base_state = copy.deepcopy(model.state_dict())
    vt.add_lora_adapter(model, rank=4, alpha=8, init_lora_weights=False)
    replay = _seeded()
    expected = vt.predict_pair(model, batch, scheduler=scheduler, generator=replay())
    assert not torch.allclose(expected.model_pred, expected.ref_pred)
    vt.save_lora_checkpoint(model, tmp_path / "ckpt")

    def fresh_base():
        fresh = VARIANTS[variant]()[0].eval()
        fresh.load_state_dict(base_state)
        return fresh

    with safetensors.safe_open(str(tmp_path / "ckpt" / "pytorch_lora_weights.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("transformer.") and "lora_" in k for k in keys)

    diffusers_model = fresh_base()
    diffusers_model.load_lora_adapter(str(tmp_path / "ckpt"), weight_name="pytorch_lora_weights.safetensors",
                                      prefix="transformer")
    peft_model = peft.PeftModel.from_pretrained(fresh_base(), str(tmp_path / "ckpt"))
    resumed = fresh_base()
    vt.add_lora_adapter(resumed, rank=4, alpha=8)
    vt.load_lora_checkpoint(resumed, tmp_path / "ckpt")
    for reloaded in (diffusers_model, peft_model, resumed):
        got = vt.predict_pair(reloaded, batch, scheduler=scheduler, generator=replay())
        torch.testing.assert_close(got.model_pred, expected.model_pred, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got.ref_pred, expected.ref_pred, rtol=1e-5, atol=1e-6)

    # A peft-wrapped policy saves the same checkpoint.
    vt.save_lora_checkpoint(peft_model, tmp_path / "from_peft")
    again = fresh_base()
    vt.add_lora_adapter(again, rank=4, alpha=8)
    vt.load_lora_checkpoint(again, tmp_path / "from_peft")
    got = vt.predict_pair(again, batch, scheduler=scheduler, generator=replay())
    torch.testing.assert_close(got.model_pred, expected.model_pred, rtol=1e-5, atol=1e-6)

    other_rank = fresh_base()
    vt.add_lora_adapter(other_rank, rank=2, alpha=4)
    with pytest.raises(ValueError, match="does not match the adapter"):
        vt.load_lora_checkpoint(other_rank, tmp_path / "ckpt")


# --------------------------------------------------------------------------------------------
# Data formats


def _save_latents(path, shape):
    safetensors.torch.save_file({"latents": torch.randn(shape)}, str(path))
    return path.name


def test_select_videogpa_pair_follows_the_recipe():
    for _ in range(200):
        n = int(torch.randint(1, 6, ()).item())
        videos = [{"consistency_score": torch.rand(()).item(),
                   "motion_norm": 0.0 if torch.rand(()).item() < 0.3 else 1e-3 + torch.rand(()).item(),
                   "id": i} for i in range(n)]
        min_gap = torch.rand(()).item() * 0.3
        chosen = vt.select_videogpa_pair(videos, min_gap=min_gap)
        moving = [v for v in videos if v["motion_norm"] >= 1e-3]
        if len(moving) < 2:
            assert chosen is None
            continue
        best = min(moving, key=lambda v: v["consistency_score"])
        worst = max(moving, key=lambda v: v["consistency_score"])
        if worst["consistency_score"] - best["consistency_score"] >= min_gap:
            assert chosen == (best, worst)
        else:
            assert chosen is None
    # Videos without a score or a motion value are dropped.
    videos = [{"consistency_score": 0.1}, {"consistency_score": 0.2, "motion_norm": 1.0},
              {"consistency_score": 0.9, "motion_norm": 1.0}, {"motion_norm": 1.0}]
    assert vt.select_videogpa_pair(videos) == (videos[1], videos[2])
    assert vt.select_videogpa_pair(videos, min_gap=0.75) is None


def test_videogpa_meta_data_and_jsonl_pairs_load_into_batches(tmp_path):
    shape = (4, 3, 8, 8)
    scores = [(0.5, 0.01), (0.2, 0.02), (0.9, 0.0005), (0.7, 0.05)]  # winner 0.2, loser 0.7 (0.9 is static)
    videos = []
    for i, (score, motion) in enumerate(scores):
        videos.append({"consistency_score": score, "motion_norm": motion,
                       "latent_path": _save_latents(tmp_path / f"v{i}.safetensors", shape),
                       "condition_path": "cond.pt"})
    image = torch.randn(4, 1, 8, 8)
    embeds = torch.randn(TEXT_SHAPE)
    torch.save({"encoder_hidden_states": embeds, "image_latents": image}, tmp_path / "cond.pt")
    flat = [{"consistency_score": 0.3, "motion_norm": 1.0, "latent_path": "v0.safetensors",
             "condition_path": "cond.pt"}] * 2  # gap 0 < min_gap: no pair
    meta = tmp_path / "meta_data.json"
    meta.write_text(json.dumps({"groups": [{"group_id": "a", "prompt": "p", "videos": videos},
                                           {"group_id": "b", "videos": flat}]}))
    pairs = vt.load_preference_pairs(meta)
    assert len(pairs) == 1
    assert pairs[0].winner.name == "v1.safetensors" and pairs[0].loser.name == "v3.safetensors"

    torch.save(torch.randn(shape), tmp_path / "plain.pt")  # a lone tensor needs no key
    torch.save(embeds, tmp_path / "embeds.pt")
    lines = [{"winner": "plain.pt", "loser": "v2.safetensors", "prompt_embeds": "embeds.pt", "prompt": "x"},
             {"winner": "v1.safetensors", "loser": "v0.safetensors", "prompt_embeds": "embeds.pt"}]
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    jsonl_pairs = vt.load_preference_pairs(jsonl)
    assert [p.prompt for p in jsonl_pairs] == ["x", ""]

    meta_batch = vt.collate_preference_pairs([vt.PreferencePairDataset(pairs)[0]])
    assert torch.equal(meta_batch.image_latents[0], image)  # read from the conditioning file
    assert torch.equal(meta_batch.prompt_embeds[0], embeds)
    dataset = vt.PreferencePairDataset(jsonl_pairs)
    batch = vt.collate_preference_pairs([dataset[0], dataset[1]])
    assert batch.winner_latents.shape == (2,) + shape and batch.image_latents is None
    assert torch.equal(batch.winner_latents[0], torch.load(tmp_path / "plain.pt"))
    v0 = safetensors.torch.load_file(str(tmp_path / "v0.safetensors"))["latents"]
    assert torch.equal(batch.loser_latents[1], v0)

    with pytest.raises(ValueError, match="mixes image-to-video"):
        vt.collate_preference_pairs([vt.PreferencePairDataset(pairs)[0], dataset[0]])


# --------------------------------------------------------------------------------------------
# Bad input


def test_pairs_files_naming_missing_latents_raise(tmp_path):
    _save_latents(tmp_path / "w.safetensors", (4, 3, 8, 8))
    torch.save(torch.randn(TEXT_SHAPE), tmp_path / "e.pt")
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text(json.dumps({"winner": "w.safetensors", "loser": "gone.safetensors",
                                 "prompt_embeds": "e.pt"}))
    with pytest.raises(FileNotFoundError, match=r"pairs.jsonl:1: loser latents .*gone.safetensors does not"):
        vt.load_preference_pairs(jsonl)

    videos = [{"consistency_score": 0.1, "motion_norm": 1.0, "latent_path": "missing.pt",
               "condition_path": "e.pt"},
              {"consistency_score": 0.8, "motion_norm": 1.0, "latent_path": "w.safetensors",
               "condition_path": "e.pt"}]
    meta = tmp_path / "meta_data.json"
    meta.write_text(json.dumps({"groups": [{"group_id": "g7", "videos": videos}]}))
    with pytest.raises(FileNotFoundError, match=r"group g7: winner latent_path .*missing.pt does not exist"):
        vt.load_preference_pairs(meta)

    jsonl.write_text(json.dumps({"winner": "w.safetensors", "prompt_embeds": "e.pt"}))
    with pytest.raises(ValueError, match=r"missing \['loser'\]"):
        vt.load_preference_pairs(jsonl)
    meta.write_text(json.dumps([{"videos": []}]))
    with pytest.raises(ValueError, match="'groups' list"):
        vt.load_preference_pairs(meta)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        vt.load_preference_pairs(tmp_path / "nowhere.jsonl")


def test_mismatched_winner_and_loser_shapes_raise(tmp_path):
    model, scheduler, batch = _setup("cogvideox-t2v", pairs=1)
    vt.add_lora_adapter(model, rank=4, alpha=8)
    bad = vt.PreferenceBatch(batch.winner_latents, batch.loser_latents[:, :, :2], batch.prompt_embeds)
    with pytest.raises(ValueError, match="winner latents have shape .* but loser latents have shape"):
        vt.diffusion_dpo_step(model, bad, scheduler=scheduler)
    with pytest.raises(ValueError, match="winner latents have shape"):
        vt.add_noise_pair(batch.winner_latents, batch.loser_latents[:, :, :2], prediction_type="flow_matching")

    _save_latents(tmp_path / "w.safetensors", (4, 3, 8, 8))
    _save_latents(tmp_path / "l.safetensors", (4, 2, 8, 8))
    torch.save(torch.randn(TEXT_SHAPE), tmp_path / "e.pt")
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text(json.dumps({"winner": "w.safetensors", "loser": "l.safetensors", "prompt_embeds": "e.pt"}))
    dataset = vt.PreferencePairDataset(vt.load_preference_pairs(jsonl))
    with pytest.raises(ValueError, match=r"w.safetensors have shape \(4, 3, 8, 8\) but loser .* \(4, 2, 8, 8\)"):
        dataset[0]


def test_unknown_prediction_type_and_other_misuse_raise():
    model, scheduler, batch = _setup("cogvideox-t2v", pairs=1)
    with pytest.raises(ValueError, match="has no LoRA adapters to disable"):
        vt.predict_pair(model, batch, scheduler=scheduler)
    vt.add_lora_adapter(model, rank=4, alpha=8)
    with pytest.raises(ValueError, match="unknown prediction_type 'x0'"):
        vt.diffusion_dpo_step(model, batch, scheduler=scheduler, prediction_type="x0")
    with pytest.raises(ValueError, match="unknown prediction_type 'sample'"):
        vt.add_noise_pair(batch.winner_latents, batch.loser_latents, prediction_type="sample")
    with pytest.raises(ValueError, match="configured for 'v_prediction'"):
        vt.predict_pair(model, batch, scheduler=scheduler, prediction_type="epsilon")
    with pytest.raises(ValueError, match="pass scheduler="):
        vt.predict_pair(model, batch)
    image = torch.randn(1, 4, 1, 8, 8)
    with pytest.raises(ValueError, match="text-to-video .* takes no image_latents"):
        vt.predict_pair(model, vt.PreferenceBatch(batch.winner_latents, batch.loser_latents,
                                                  batch.prompt_embeds, image), scheduler=scheduler)
    with pytest.raises(TypeError, match="supports diffusers CogVideoXTransformer3DModel"):
        vt.predict_pair(torch.nn.Linear(2, 2), batch, scheduler=scheduler)

    i2v, i2v_scheduler, i2v_batch = _setup("cogvideox15-i2v", pairs=1)
    vt.add_lora_adapter(i2v, rank=4, alpha=8)
    with pytest.raises(ValueError, match="image-to-video .* pass image_latents"):
        vt.predict_pair(i2v, vt.PreferenceBatch(i2v_batch.winner_latents, i2v_batch.loser_latents,
                                                i2v_batch.prompt_embeds), scheduler=i2v_scheduler)


# --------------------------------------------------------------------------------------------
# The example script


def _run_script(*args, timeout=300):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


def _lora_file(folder):
    return safetensors.torch.load_file(str(folder / "pytorch_lora_weights.safetensors"))


def test_tiny_script_trains_checkpoints_and_resumes(tmp_path):
    seed = str(int(torch.randint(0, 10_000, ()).item()))
    out = tmp_path / "run"
    first = _run_script("--tiny", "--output-dir", out, "--seed", seed)  # the command CI runs
    assert first.returncode == 0, first.stderr[-4000:]
    logged = re.search(r"step 20: (.*)", first.stderr)
    assert logged, first.stderr[-4000:]
    for metric in ("loss", "accuracy", "implicit_accuracy", "reward_margin"):
        assert re.search(rf"\b{metric} -?[0-9.e+-]+", logged.group(1)), (metric, logged.group(1))
    for folder in (out, out / "checkpoint-10", out / "checkpoint-20"):
        for name in ("pytorch_lora_weights.safetensors", "adapter_model.safetensors", "adapter_config.json"):
            assert (folder / name).is_file(), folder / name
    final = _lora_file(out)
    assert final and all(k.startswith("transformer.") and "lora_" in k for k in final)
    assert all(torch.equal(final[k], v) for k, v in _lora_file(out / "checkpoint-20").items())
    # The LoRA moved away from its zero-initialised B matrices.
    assert any(v.abs().max() > 0 for k, v in final.items() if "lora_B" in k)

    # Resuming from step 10 replays steps 11..20: LoRA, optimizer, schedule and RNG are restored.
    resumed_out = tmp_path / "resumed"
    shutil.copytree(out / "checkpoint-10", resumed_out / "checkpoint-10")
    resumed = _run_script("--tiny", "--output-dir", resumed_out, "--seed", seed, "--resume-from-checkpoint",
                          "latest")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resuming from checkpoint" in resumed.stderr and "checkpoint-10" in resumed.stderr
    assert "step 20: " in resumed.stderr and "step 10: " not in resumed.stderr
    resumed_final = _lora_file(resumed_out)
    assert resumed_final.keys() == final.keys()
    for key in final:
        torch.testing.assert_close(resumed_final[key], final[key], rtol=1e-5, atol=1e-7)


def _script_module():
    spec = importlib.util.spec_from_file_location("train_dpo", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_script_wan_ti2v_from_jsonl(tmp_path):
    script = _script_module()
    meta = script.write_tiny_data(tmp_path / "data", "wan-ti2v", seed=int(torch.randint(0, 1000, ()).item()))
    # The JSONL written next to meta_data.json holds the pairs VideoGPA's selection picks.
    expected = vt.load_preference_pairs(meta)
    jsonl = meta.parent / "pairs.jsonl"
    from_jsonl = vt.load_preference_pairs(jsonl)
    assert [(p.winner, p.loser) for p in from_jsonl] == [(p.winner, p.loser) for p in expected]

    out = tmp_path / "wan"
    run = _run_script("--tiny", "--tiny-family", "wan-ti2v", "--pairs", jsonl, "--output-dir", out,
                      "--max-train-steps", 4, "--checkpointing-steps", 2, "--gradient-accumulation-steps", 2)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "4 preference pairs from" in run.stderr and "pairs.jsonl; wan, flow_matching" in run.stderr
    for step in (2, 4):
        assert (out / f"checkpoint-{step}" / "pytorch_lora_weights.safetensors").is_file()


def test_script_rejects_missing_arguments(tmp_path, capsys):
    script = _script_module()
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(["--output-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "--pretrained-model-name-or-path and --pairs are required" in capsys.readouterr().err
    tiny = script.parse_args(["--tiny", "--output-dir", str(tmp_path)])
    full = script.parse_args(["--pretrained-model-name-or-path", "m", "--pairs", "p.json", "--output-dir", "o"])
    # VideoGPA's recipe is the default of a real run (docs/design.md 1).
    assert (full.rank, full.lora_alpha, full.learning_rate, full.lr_warmup_steps, full.lr_scheduler,
            full.max_grad_norm, full.beta) == (64, 128, 5e-6, 500, "cosine", 1.0, 1.0)
    assert full.lora_target_modules == "to_q,to_k,to_v,to_out.0" and full.min_gap == 0.05
    assert tiny.max_train_steps < full.max_train_steps


def test_script_dpo_options(tmp_path, capsys):
    script = _script_module()
    args = script.parse_args(["--tiny", "--output-dir", str(tmp_path)])
    assert (args.loss_type, args.sft_weight, args.beta_schedule) == ("sigmoid", 0.0, "constant")
    args = script.parse_args(["--tiny", "--output-dir", str(tmp_path), "--loss-type", "dro", "--sft-weight", "0.1"])
    assert (args.loss_type, args.sft_weight) == ("dro", 0.1)
    with pytest.raises(SystemExit):
        script.parse_args(["--tiny", "--output-dir", str(tmp_path), "--loss-type", "dro", "--beta-schedule", "signal"])
    assert "--loss-type dro has no beta" in capsys.readouterr().err


def test_tiny_script_dro_with_sft_anchor(tmp_path):
    out = tmp_path / "dro"
    run = _run_script("--tiny", "--output-dir", out, "--loss-type", "dro", "--sft-weight", "0.5",
                      "--max-train-steps", 2, "--logging-steps", 1, "--low-memory")  # the plain step: above
    assert run.returncode == 0, run.stderr[-4000:]
    for step in (1, 2):
        logged = re.search(rf"step {step}: loss ([^,]+), accuracy [^,]+, implicit_accuracy [^,]+, reward_margin ([^,]+),",
                           run.stderr)
        assert logged, run.stderr[-4000:]
        # loss = mean(err_w - err_l) + 0.5 mean(err_w) and reward_margin = mean(err_l - err_w)
        loss, margin = float(logged.group(1)), float(logged.group(2))
        assert loss + margin > 0
    assert (out / "pytorch_lora_weights.safetensors").is_file()


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_two_processes(*args, timeout=300, config_file=None, script=SCRIPT):
    """`accelerate launch --num_processes 2` of ``script`` on the CPU: torch.distributed with
    gloo, data parallel, or as ``config_file`` (an accelerate config) says. A run past
    ``timeout`` fails with the tail of what the ranks printed, and its whole process group is
    killed: a rank left waiting in a collective for a peer that died would otherwise outlive the
    test."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    mode = ["--config_file", str(config_file)] if config_file else [
        "--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command = [sys.executable, "-m", "accelerate.commands.launch", *mode, "--num_processes", "2",
               "--main_process_port", str(_free_port()), str(script), *map(str, args)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
                          start_new_session=True) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            # The ranks run in sessions of their own: kill them by name, then the launcher's group.
            for child in psutil.Process(process.pid).children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate(timeout=60)
            pytest.fail(f"two-process run still going after {timeout} s; its last output:\n{stderr[-4000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _assert_resume_is_exact(common, out, tmp_path, trace, step, config_file=None):
    """Runs ``common`` again in two processes from ``out``'s checkpoint at ``step`` alone (and its
    tiny data): the same pairs per rank, then bitwise the same weights, as the uninterrupted run
    whose per-rank ``trace`` is given."""
    resumed_out = tmp_path / "resumed"
    shutil.copytree(out / f"checkpoint-{step}", resumed_out / f"checkpoint-{step}")
    shutil.copytree(out / "tiny_data", resumed_out / "tiny_data")
    resumed = _launch_two_processes(*common, "--output-dir", resumed_out, "--trace-dir", tmp_path / "trace-resumed",
                                    "--resume-from-checkpoint", "latest", config_file=config_file)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resuming from checkpoint" in resumed.stderr
    resumed_trace = _trace(tmp_path / "trace-resumed")
    for rank in (0, 1):
        assert resumed_trace[rank] == trace[rank][step:]
    final, resumed_final = _lora_file(out), _lora_file(resumed_out)
    assert final.keys() == resumed_final.keys()
    assert all(torch.equal(final[key], resumed_final[key]) for key in final)


def _trace(folder):
    return {rank: [json.loads(line) for line in (folder / f"rank-{rank}.jsonl").read_text().splitlines()]
            for rank in (0, 1)}


def test_two_processes_share_the_pairs_stay_in_sync_and_resume_exactly(tmp_path):
    script = _script_module()
    seed = int(torch.randint(0, 10_000, ()).item())
    # 4 pairs, 1 per process and step: an epoch is 2 steps; the checkpoint at step 3 is mid-epoch.
    common = ["--tiny", "--seed", seed, "--max-train-steps", 5, "--checkpointing-steps", 3, "--train-batch-size", 1,
              "--beta-schedule", "signal", "--sft-weight", 0.1, "--logging-steps", 1]
    out = tmp_path / "run"
    first = _launch_two_processes(*common, "--output-dir", out, "--trace-dir", tmp_path / "trace")
    assert first.returncode == 0, first.stderr[-4000:]
    assert "DistributedType.MULTI_CPU  Backend: gloo" in first.stderr and "Num processes: 2" in first.stderr

    trace = _trace(tmp_path / "trace")
    assert [r["step"] for r in trace[0]] == [r["step"] for r in trace[1]] == [1, 2, 3, 4, 5]
    pairs = vt.load_preference_pairs(out / "tiny_data" / "meta_data.json")
    all_pairs = {script.tensor_digest([vt.load_tensor_file(p.winner)["latents"]]) for p in pairs}
    assert len(all_pairs) == 4
    for r0, r1 in zip(trace[0], trace[1]):
        assert r0["rank"] == 0 and r1["rank"] == 1
        assert set(r0["pairs"]).isdisjoint(r1["pairs"]), (r0, r1)  # each process its own share
        assert r0["lora"] == r1["lora"], r0["step"]  # identical LoRA weights after every step
    for epoch_steps in ((0, 1), (2, 3)):  # every pair once per epoch
        seen = [pair for rank in (0, 1) for i in epoch_steps for pair in trace[rank][i]["pairs"]]
        assert sorted(seen) == sorted(all_pairs)
    assert len({r["lora"] for r in trace[0]}) == 5  # the weights move every step

    # Only the main process writes the weights, optimizer and scheduler; each process adds its RNG state.
    written = [line for line in first.stderr.splitlines() if "wrote the LoRA weights" in line]
    assert len(written) == 1 and "process 0 wrote" in written[0], written
    assert sorted(p.name for p in (out / "checkpoint-3").iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "optimizer.bin", "pytorch_lora_weights.safetensors",
        "random_states_0.pkl", "random_states_1.pkl", "scheduler.bin"]

    _assert_resume_is_exact(common, out, tmp_path, trace, step=3)
