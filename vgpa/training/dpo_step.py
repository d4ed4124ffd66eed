"""One Diffusion-DPO step for diffusers video transformers (docs/design.md 3.5).

Latents are always given as the VAE writes them, (B, C, F, H, W); the step moves them into
the layout of the model family (CogVideoX takes (B, F, C, H, W), Wan keeps (B, C, F, H, W)).
Winners and losers are stacked into one batch of 2B, winners first, and share their noise and
timestep pair by pair. The loss is the fused :func:`vgpa.diffusion_dpo_loss`.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace
from typing import Optional, Union

import torch
from accelerate.utils import extract_model_from_parallel
from diffusers import CogVideoXTransformer3DModel, WanTransformer3DModel
from diffusers.models.embeddings import get_3d_rotary_pos_embed
from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid
from peft import PeftModel
from torch import Tensor

from ..ops.diffusion_dpo_loss import DiffusionDPOLossResult, diffusion_dpo_loss
from ..torch_math.dpo import REFERENCE_FREE_LOSS_TYPES
from .recipe import (BETA_SCHEDULES, COGVIDEOX_OFS, FLOW_NUM_TIMESTEPS, PREDICTION_TYPES, SCHEDULER_PREDICTION_TYPES,
                     WAN_FLOW_SHIFT)


@dataclass
class PreferenceBatch:
    """B preference pairs.

    winner_latents, loser_latents: (B, C, F, H, W) latents normalised as the transformer
    expects (see :func:`encode_video`). prompt_embeds: (B, L, D) text-encoder states.
    image_latents: (B, C, F_img, H, W) latents of the conditioning image (see
    :func:`encode_image`), for CogVideoX-I2V (concatenated on channels) and Wan TI2V (replaces
    the first F_img latent frames, which stay clean); None for text-to-video.
    """

    winner_latents: Tensor
    loser_latents: Tensor
    prompt_embeds: Tensor
    image_latents: Optional[Tensor] = None

    def to(self, device, non_blocking: bool = False) -> "PreferenceBatch":
        def move(x):
            return None if x is None else x.to(device, non_blocking=non_blocking)

        return PreferenceBatch(move(self.winner_latents), move(self.loser_latents),
                               move(self.prompt_embeds), move(self.image_latents))


@dataclass
class NoisedPair:
    """noisy_latents, target: (2B, C, F, H, W), winners first; target in float32.
    timesteps: (2B,) the timesteps the transformer is given (Wan: 1000 * sigma)."""

    noisy_latents: Tensor
    target: Tensor
    timesteps: Tensor


@dataclass
class PairPredictions:
    """Inputs of the DPO loss, in the transformer's output layout, float32.

    model_pred: (2B, ...) the policy's prediction (differentiable). ref_pred: the reference's
    (no grad), None when no reference was run (reference-free losses). target: the regression
    target. weight: broadcastable to the prediction, zero on
    latent frames that were kept clean (Wan TI2V), else None. frame_dim: the frame axis
    (1 for CogVideoX, 2 for Wan).
    """

    model_pred: Tensor
    ref_pred: Optional[Tensor]
    target: Tensor
    weight: Optional[Tensor]
    frame_dim: int


# --------------------------------------------------------------------------------------------
# Model families


def _unwrap(model):
    """The diffusers transformer inside accelerate/DDP/torch.compile and peft wrappers."""
    module = extract_model_from_parallel(model)
    if isinstance(module, PeftModel):
        module = module.get_base_model()
    return module


def model_family(transformer) -> str:
    """"cogvideox" or "wan" for a (possibly wrapped) diffusers video transformer."""
    module = _unwrap(transformer)
    if isinstance(module, CogVideoXTransformer3DModel):
        return "cogvideox"
    if isinstance(module, WanTransformer3DModel):
        return "wan"
    raise TypeError("vgpa.training supports diffusers CogVideoXTransformer3DModel and "
                    f"WanTransformer3DModel; got {type(module).__name__}")


def resolve_prediction_type(family: str, scheduler=None, prediction_type: Optional[str] = None) -> str:
    """The prediction type to train: the given one, else the scheduler's for CogVideoX and
    "flow_matching" for Wan. Checks it against the scheduler it needs."""
    if prediction_type is None:
        if family == "wan":
            return "flow_matching"
        if scheduler is None:
            raise ValueError("CogVideoX trains through its diffusers scheduler: pass scheduler= "
                             "(e.g. CogVideoXDPMScheduler.from_pretrained(path, subfolder='scheduler'))")
        prediction_type = scheduler.config.prediction_type
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; choose one of {PREDICTION_TYPES}")
    if prediction_type in SCHEDULER_PREDICTION_TYPES:
        if scheduler is None:
            raise ValueError(f"prediction_type={prediction_type!r} noises through a diffusers scheduler; "
                             "pass scheduler=")
        configured = getattr(scheduler.config, "prediction_type", prediction_type)
        if configured != prediction_type:
            raise ValueError(f"prediction_type={prediction_type!r} but the scheduler is configured for "
                             f"{configured!r}; the model would be trained for one and sampled with the other")
    return prediction_type


# --------------------------------------------------------------------------------------------
# VAE encoding


def _normalise_latents(vae, latents: Tensor, invert_scale: bool = False) -> Tensor:
    config = vae.config
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is not None and std is not None:  # Wan: per-channel statistics
        view = (1, -1) + (1,) * (latents.dim() - 2)
        mean = torch.tensor(mean, dtype=latents.dtype, device=latents.device).view(view)
        std = torch.tensor(std, dtype=latents.dtype, device=latents.device).view(view)
        return (latents - mean) / std
    scale = getattr(config, "scaling_factor", None)
    if scale is None:
        raise ValueError(f"{type(vae).__name__} has neither latents_mean/latents_std nor a scaling_factor "
                         "in its config; cannot normalise its latents")
    latents = latents - (getattr(config, "shift_factor", None) or 0.0)
    return latents / scale if invert_scale else latents * scale


def _encode(vae, pixels: Tensor, generator, sample: bool) -> Tensor:
    posterior = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist
    latents = posterior.sample(generator) if sample else posterior.mode()
    return latents.float()


@torch.no_grad()
def encode_video(vae, video: Tensor, *, generator: Optional[torch.Generator] = None,
                 sample: bool = True) -> Tensor:
    """Encode videos with the model's diffusers VAE into normalised latents.

    video: (B, 3, F, H, W) in [-1, 1]. Returns float32 (B, C, F', H', W') latents: CogVideoX's
    scaled by its ``scaling_factor``, Wan's standardised by its ``latents_mean``/``latents_std``.
    ``sample=False`` takes the posterior mode instead of a sample.
    """
    if not isinstance(video, Tensor) or video.dim() != 5 or video.shape[1] != 3:
        shape = tuple(video.shape) if isinstance(video, Tensor) else type(video).__name__
        raise ValueError(f"encode_video: expected a (B, 3, F, H, W) video tensor in [-1, 1], got {shape}")
    return _normalise_latents(vae, _encode(vae, video, generator, sample))


@torch.no_grad()
def encode_image(vae, image: Tensor, *, generator: Optional[torch.Generator] = None,
                 sample: bool = True) -> Tensor:
    """Encode conditioning images into (B, C, 1, H', W') latents for image-to-video.

    image: (B, 3, H, W) in [-1, 1]. Normalised as the diffusers I2V pipelines do, including
    CogVideoX1.5's ``invert_scale_latents`` (the image latents are divided by the scaling
    factor there). The Wan pipeline conditions on the posterior mode: pass ``sample=False``.
    """
    if not isinstance(image, Tensor) or image.dim() != 4 or image.shape[1] != 3:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"encode_image: expected a (B, 3, H, W) image tensor in [-1, 1], got {shape}")
    latents = _encode(vae, image.unsqueeze(2), generator, sample)
    return _normalise_latents(vae, latents, invert_scale=getattr(vae.config, "invert_scale_latents", False))


# --------------------------------------------------------------------------------------------
# Noising


def add_noise_pair(winner_latents: Tensor, loser_latents: Tensor, *, prediction_type: str,
                   scheduler=None, flow_shift: float = WAN_FLOW_SHIFT,
                   generator: Optional[torch.Generator] = None, timesteps: Optional[Tensor] = None,
                   noise: Optional[Tensor] = None) -> NoisedPair:
    """Noise winners and losers with the same noise and training timestep per pair.

    winner_latents, loser_latents: (B, C, F, H, W). timesteps: (B,) training timesteps, drawn
    uniformly when None (from the scheduler's ``num_train_timesteps``, or [0, 1000) for flow
    matching). noise: (B, C, F, H, W), standard normal from ``generator`` when None.

    - "v_prediction": x_t = scheduler.add_noise(x0, noise, t), target = scheduler.get_velocity(x0, noise, t)
    - "epsilon": x_t = scheduler.add_noise(x0, noise, t), target = noise
    - "flow_matching": sigma = shift s / (1 + (shift - 1) s), s = t / 1000,
      x_t = (1 - sigma) x0 + sigma noise, target = noise - x0; the model is given 1000 sigma.
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; choose one of {PREDICTION_TYPES}")
    if winner_latents.shape != loser_latents.shape:
        raise ValueError(f"winner latents have shape {tuple(winner_latents.shape)} but loser latents have "
                         f"shape {tuple(loser_latents.shape)}; a preference pair needs equal shapes")
    if winner_latents.dim() != 5:
        raise ValueError(f"latents must be (B, C, F, H, W), got shape {tuple(winner_latents.shape)}")
    for name, x in (("winner_latents", winner_latents), ("loser_latents", loser_latents), ("noise", noise)):
        if x is not None and not x.is_floating_point():  # an integer tensor would be cast silently
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    pairs, device = winner_latents.shape[0], winner_latents.device
    if noise is None:
        noise = torch.randn(winner_latents.shape, generator=generator, device=device, dtype=torch.float32)
    elif noise.shape != winner_latents.shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {tuple(winner_latents.shape)}")
    if prediction_type == "flow_matching":
        # sigma = shift s / (1 + (shift - 1) s) lies in [0, 1] only for shift > 0.
        if isinstance(flow_shift, bool) or not isinstance(flow_shift, (int, float)) \
                or not math.isfinite(flow_shift) or flow_shift <= 0:
            raise ValueError(f"flow_shift must be a finite number > 0, got {flow_shift!r}")
        num_timesteps = FLOW_NUM_TIMESTEPS
    elif scheduler is None:
        raise ValueError(f"prediction_type={prediction_type!r} noises through a diffusers scheduler; "
                         "pass scheduler=")
    else:
        num_timesteps = scheduler.config.num_train_timesteps
    if timesteps is None:
        timesteps = torch.randint(0, num_timesteps, (pairs,), generator=generator, device=device)
    elif not isinstance(timesteps, Tensor) or timesteps.shape != (pairs,) or timesteps.dtype == torch.bool:
        what = f"{timesteps.dtype} tensor of shape {tuple(timesteps.shape)}" if isinstance(timesteps, Tensor) \
            else type(timesteps).__name__
        raise ValueError(f"timesteps must be a ({pairs},) tensor of training timesteps, got a {what}")
    else:  # given by the caller: one small read-back (drawn timesteps are in range by construction)
        values = timesteps.detach().double()
        bad = ~torch.isfinite(values) | (values < 0) | (values >= num_timesteps)
        if prediction_type in SCHEDULER_PREDICTION_TYPES:
            bad |= values != values.round()  # the scheduler indexes its tables with them
        if bool(bad.any()):
            integral = " integers" if prediction_type in SCHEDULER_PREDICTION_TYPES else ""
            raise ValueError(f"timesteps must be{integral} in [0, {num_timesteps}) for "
                             f"prediction_type={prediction_type!r}, got {timesteps.tolist()}")

    x0 = torch.cat([winner_latents, loser_latents]).float()
    noise = noise.float().repeat(2, 1, 1, 1, 1)
    timesteps = timesteps.to(device).repeat(2)
    if prediction_type == "flow_matching":
        s = timesteps.float() / FLOW_NUM_TIMESTEPS
        sigma = flow_shift * s / (1.0 + (flow_shift - 1.0) * s)
        sigma_b = sigma.view(-1, 1, 1, 1, 1)
        return NoisedPair((1.0 - sigma_b) * x0 + sigma_b * noise, noise - x0, sigma * FLOW_NUM_TIMESTEPS)
    timesteps = timesteps.long()
    noisy = scheduler.add_noise(x0, noise, timesteps)
    target = scheduler.get_velocity(x0, noise, timesteps) if prediction_type == "v_prediction" else noise
    return NoisedPair(noisy, target, timesteps)


# --------------------------------------------------------------------------------------------
# Timesteps and per-pair beta schedules



def _num_train_timesteps(prediction_type: str, scheduler) -> int:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; choose one of {PREDICTION_TYPES}")
    if prediction_type == "flow_matching":
        return FLOW_NUM_TIMESTEPS
    if scheduler is None:
        raise ValueError(f"prediction_type={prediction_type!r} noises through a diffusers scheduler; "
                         "pass scheduler=")
    return scheduler.config.num_train_timesteps


def sample_timesteps(pairs: int, *, prediction_type: str, scheduler=None,
                     generator: Optional[torch.Generator] = None, device=None) -> Tensor:
    """(pairs,) training timesteps drawn uniformly as :func:`add_noise_pair` draws them, so a
    trainer can compute a per-pair beta from them before the step (pass both to it)."""
    return torch.randint(0, _num_train_timesteps(prediction_type, scheduler), (pairs,), generator=generator,
                         device=device)


def signal_scale(timesteps: Tensor, *, prediction_type: str, scheduler=None,
                 flow_shift: float = WAN_FLOW_SHIFT) -> Tensor:
    """alpha_t of x_t = alpha_t x0 + sigma_t noise for each training timestep, float32 in (0, 1]:
    ``1 - sigma`` for flow matching (sigma shifted as in :func:`add_noise_pair`), and
    ``sqrt(alphas_cumprod[t])`` for the scheduler prediction types."""
    _num_train_timesteps(prediction_type, scheduler)  # validates the type and the scheduler
    if prediction_type == "flow_matching":
        s = timesteps.double() / FLOW_NUM_TIMESTEPS
        sigma = flow_shift * s / (1.0 + (flow_shift - 1.0) * s)
        return (1.0 - sigma).float()
    alphas_cumprod = getattr(scheduler, "alphas_cumprod", None)
    if alphas_cumprod is None:
        raise ValueError(f"{type(scheduler).__name__} has no alphas_cumprod; the signal scale of its timesteps "
                         "is unknown")
    return alphas_cumprod.to(timesteps.device)[timesteps.long()].double().sqrt().float()


def scheduled_beta(beta: float, schedule: str, timesteps: Tensor, *, prediction_type: str, scheduler=None,
                   flow_shift: float = WAN_FLOW_SHIFT) -> Union[float, Tensor]:
    """The DPO beta of each pair from its training timestep t_b (see :data:`BETA_SCHEDULES`):

    - "constant": beta (the number itself);
    - "signal": beta * alpha_t^2, a (B,) float32 tensor, with alpha_t from :func:`signal_scale`
      (flow matching: beta (1 - sigma_t)^2): the noisier a pair's timestep, the smaller its beta.
    """
    if schedule not in BETA_SCHEDULES:
        raise ValueError(f"unknown beta schedule {schedule!r}; choose one of {BETA_SCHEDULES}")
    if schedule == "constant":
        return beta
    alpha = signal_scale(timesteps, prediction_type=prediction_type, scheduler=scheduler, flow_shift=flow_shift)
    return beta * alpha.square()


# --------------------------------------------------------------------------------------------
# Transformer inputs per family


def _check_batch(batch: PreferenceBatch) -> None:
    if not isinstance(batch, PreferenceBatch):
        raise TypeError(f"expected a vgpa.training.PreferenceBatch, got {type(batch).__name__}")
    w, l, p, img = batch.winner_latents, batch.loser_latents, batch.prompt_embeds, batch.image_latents
    if w.shape != l.shape:
        raise ValueError(f"winner latents have shape {tuple(w.shape)} but loser latents have shape "
                         f"{tuple(l.shape)}; a preference pair needs equal shapes")
    if w.dim() != 5:
        raise ValueError(f"latents must be (B, C, F, H, W), got shape {tuple(w.shape)}")
    if p.dim() != 3 or p.shape[0] != w.shape[0]:
        raise ValueError(f"prompt_embeds must be (B, L, D) with B={w.shape[0]}, got shape {tuple(p.shape)}")
    if img is not None:
        b, c, f, h, wd = w.shape
        if (img.dim() != 5 or img.shape[:2] != (b, c) or img.shape[3:] != (h, wd)
                or not 1 <= img.shape[2] < f):
            raise ValueError(f"image_latents must be (B, C, F_img, H, W) with B={b}, C={c}, H={h}, W={wd} and "
                             f"1 <= F_img < F={f}; got shape {tuple(img.shape)}")


def _cogvideox_rotary_embeddings(config, frames: int, height: int, width: int, device):
    """Rotary position embeddings for a latent grid, laid out as the CogVideoX pipelines do."""
    p, p_t = config.patch_size, config.patch_size_t
    grid = (height // p, width // p)
    base_width, base_height = config.sample_width // p, config.sample_height // p
    if p_t is None:  # CogVideoX 1.0
        crops = get_resize_crop_region_for_grid(grid, base_width, base_height)
        return get_3d_rotary_pos_embed(embed_dim=config.attention_head_dim, crops_coords=crops,
                                       grid_size=grid, temporal_size=frames, device=device)
    return get_3d_rotary_pos_embed(embed_dim=config.attention_head_dim, crops_coords=None, grid_size=grid,
                                   temporal_size=frames // p_t, grid_type="slice",
                                   max_size=(base_height, base_width), device=device)


def _cogvideox_inputs(module, noised: NoisedPair, batch: PreferenceBatch, dtype):
    config = module.config
    _, channels, frames, height, width = noised.noisy_latents.shape
    image = batch.image_latents
    image_to_video = config.in_channels == 2 * channels
    if config.in_channels != channels and not image_to_video:
        raise ValueError(f"this CogVideoX transformer takes in_channels={config.in_channels}, which fits neither "
                         f"{channels}-channel latents (T2V) nor them plus image latents (I2V)")
    if image_to_video and image is None:
        raise ValueError(f"this CogVideoX transformer is image-to-video (in_channels={config.in_channels} = "
                         f"2 x {channels}): pass image_latents")
    if not image_to_video and image is not None:
        raise ValueError(f"this CogVideoX transformer is text-to-video (in_channels={config.in_channels}); "
                         "it takes no image_latents")
    p, p_t = config.patch_size, config.patch_size_t or 1
    if frames % p_t or height % p or width % p:
        raise ValueError(f"latent grid (F={frames}, H={height}, W={width}) is not divisible by the patch size "
                         f"(p_t={p_t}, p={p})")

    hidden_states = noised.noisy_latents.permute(0, 2, 1, 3, 4)  # (2B, F, C, H, W)
    if image_to_video:
        image = image.permute(0, 2, 1, 3, 4).float()
        # The image latent sits on the first frames; the other frames of its channels are zero.
        padding = image.new_zeros((image.shape[0], frames - image.shape[1]) + tuple(image.shape[2:]))
        image = torch.cat([image, padding], dim=1).repeat(2, 1, 1, 1, 1)
        hidden_states = torch.cat([hidden_states, image], dim=2)
    pairs2 = hidden_states.shape[0]
    inputs = {
        "hidden_states": hidden_states.to(dtype),
        "encoder_hidden_states": batch.prompt_embeds.repeat(2, 1, 1).to(dtype),
        "timestep": noised.timesteps,
    }
    if config.use_rotary_positional_embeddings:
        inputs["image_rotary_emb"] = _cogvideox_rotary_embeddings(config, frames, height, width,
                                                                  hidden_states.device)
    if config.ofs_embed_dim:
        inputs["ofs"] = hidden_states.new_full((pairs2,), COGVIDEOX_OFS, dtype=torch.float32)
    target = noised.target.permute(0, 2, 1, 3, 4)
    return inputs, target, None, 1


def _wan_inputs(module, noised: NoisedPair, batch: PreferenceBatch, dtype):
    config = module.config
    _, channels, frames, height, width = noised.noisy_latents.shape
    if config.image_dim is not None:
        raise ValueError("Wan2.1-I2V (CLIP image embeddings, in_channels = latents + mask + image) is not "
                         "supported; vgpa trains Wan text-to-video and Wan2.2-TI2V")
    if config.in_channels != channels:
        raise ValueError(f"this Wan transformer takes in_channels={config.in_channels}, the latents have "
                         f"{channels}")
    p_t, p_h, p_w = config.patch_size
    if frames % p_t or height % p_h or width % p_w:
        raise ValueError(f"latent grid (F={frames}, H={height}, W={width}) is not divisible by the patch size "
                         f"{tuple(config.patch_size)}")

    hidden_states, timesteps, weight = noised.noisy_latents, noised.timesteps, None
    image = batch.image_latents
    if image is not None:
        clean = image.shape[2]
        # TI2V: the first latent frames hold the clean image latent, their tokens see timestep 0,
        # and they are left out of the loss (weight 0): the model does not generate them.
        hidden_states = torch.cat([image.float().repeat(2, 1, 1, 1, 1), hidden_states[:, :, clean:]], dim=2)
        frame_t = timesteps.float()[:, None].repeat(1, frames)
        frame_t[:, :clean] = 0.0
        tokens = (height // p_h) * (width // p_w)
        timesteps = frame_t[:, ::p_t, None].expand(-1, -1, tokens).flatten(1)
        weight = torch.ones((1, 1, frames, 1, 1), device=hidden_states.device)
        weight[:, :, :clean] = 0.0
    inputs = {
        "hidden_states": hidden_states.to(dtype),
        "encoder_hidden_states": batch.prompt_embeds.repeat(2, 1, 1).to(dtype),
        "timestep": timesteps,
    }
    return inputs, noised.target, weight, 2


def _forward(model, inputs) -> Tensor:
    return model(**inputs, return_dict=False)[0].float()


@contextlib.contextmanager
def lora_disabled(model):
    """Run ``model`` with its LoRA adapters switched off: the frozen base model, no second copy.

    Works for a peft ``PeftModel`` (its ``disable_adapter()`` context) and for a diffusers model
    given adapters with ``add_adapter`` (``disable_adapters()``/``enable_adapters()``).
    """
    module = extract_model_from_parallel(model)
    if isinstance(module, PeftModel):
        with module.disable_adapter():
            yield
        return
    if not getattr(module, "_hf_peft_config_loaded", False):
        raise ValueError(f"{type(module).__name__} has no LoRA adapters to disable; add them (add_adapter) "
                         "or pass a frozen reference model")
    module.disable_adapters()
    try:
        yield
    finally:
        module.enable_adapters()


def _prepare_pair(transformer, batch: PreferenceBatch, *, reference, scheduler, prediction_type, flow_shift,
                  generator, timesteps, noise, dtype, with_reference: bool):
    """Checks the models and the batch, noises the pairs and builds the transformer's inputs:
    (inputs, target, weight, frame_dim), the inputs holding the 2B samples, winners first."""
    if not with_reference and reference is not None:
        raise ValueError("with_reference=False runs no reference model; do not pass reference=")
    family = model_family(transformer)
    if reference is not None and model_family(reference) != family:
        raise TypeError(f"the reference is a {model_family(reference)} model but the policy is {family}")
    _check_batch(batch)
    prediction_type = resolve_prediction_type(family, scheduler, prediction_type)
    module = _unwrap(transformer)
    noised = add_noise_pair(batch.winner_latents, batch.loser_latents, prediction_type=prediction_type,
                            scheduler=scheduler, flow_shift=flow_shift, generator=generator,
                            timesteps=timesteps, noise=noise)
    build = _cogvideox_inputs if family == "cogvideox" else _wan_inputs
    return build(module, noised, batch, dtype or module.dtype)


def _reference_forward(transformer, reference, inputs) -> Tensor:
    """The reference's prediction without grad: ``reference``, or the policy with its adapters off."""
    with torch.no_grad():
        if reference is None:
            with lora_disabled(transformer):
                return _forward(extract_model_from_parallel(transformer), inputs)
        return _forward(reference, inputs)


def predict_pair(transformer, batch: PreferenceBatch, *, reference=None, scheduler=None,
                 prediction_type: Optional[str] = None, flow_shift: float = WAN_FLOW_SHIFT,
                 generator: Optional[torch.Generator] = None, timesteps: Optional[Tensor] = None,
                 noise: Optional[Tensor] = None, dtype: Optional[torch.dtype] = None,
                 with_reference: bool = True) -> PairPredictions:
    """Policy and reference predictions and the target for a batch of preference pairs.

    transformer: the policy, a diffusers CogVideoXTransformer3DModel or WanTransformer3DModel
    (possibly wrapped by accelerate or peft). reference: a frozen copy of the base model, or
    None to use the policy itself with its LoRA adapters disabled. The reference runs without
    grad. ``with_reference=False`` runs no reference at all (ref_pred is None), for
    reference-free losses. scheduler, prediction_type, flow_shift, generator, timesteps, noise:
    see :func:`add_noise_pair` and :func:`resolve_prediction_type`. dtype: the dtype the
    transformer is fed (default: its parameters').
    """
    inputs, target, weight, frame_dim = _prepare_pair(
        transformer, batch, reference=reference, scheduler=scheduler, prediction_type=prediction_type,
        flow_shift=flow_shift, generator=generator, timesteps=timesteps, noise=noise, dtype=dtype,
        with_reference=with_reference)
    ref_pred = _reference_forward(transformer, reference, inputs) if with_reference else None
    model_pred = _forward(transformer, inputs)
    return PairPredictions(model_pred, ref_pred, target, weight, frame_dim)


def _uses_reference(loss_type: str, reference) -> bool:
    """Whether ``loss_type`` runs a reference; a reference-free one must not be given one."""
    if loss_type not in REFERENCE_FREE_LOSS_TYPES:
        return True
    if reference is not None:
        raise ValueError(f"loss_type={loss_type!r} uses no reference model; do not pass reference=")
    return False


def diffusion_dpo_step(transformer, batch: PreferenceBatch, *, beta: Union[float, Tensor, None] = 1.0,
                       loss_type: str = "sigmoid", label_smoothing: float = 0.0, sft_weight: float = 0.0,
                       segments: int = 1, backend: str = "auto", reference=None, scheduler=None,
                       prediction_type: Optional[str] = None, flow_shift: float = WAN_FLOW_SHIFT,
                       generator: Optional[torch.Generator] = None, timesteps: Optional[Tensor] = None,
                       noise: Optional[Tensor] = None, dtype: Optional[torch.dtype] = None) -> DiffusionDPOLossResult:
    """Forward pass of one Diffusion-DPO step: :func:`predict_pair`, then the fused
    :func:`vgpa.diffusion_dpo_loss` (beta, loss_type, label_smoothing, sft_weight, segments,
    backend). beta: a number or a (B,) tensor, one value per pair (see :func:`scheduled_beta`).
    A reference-free ``loss_type`` ("dro") runs no reference forward pass at all (and takes no
    ``reference=``). Call ``.loss.backward()`` (or ``accelerator.backward``) on the result.
    :func:`diffusion_dpo_step_low_memory` is the same step, forward and backward, holding one
    sample's activations at a time."""
    with_reference = _uses_reference(loss_type, reference)
    pred = predict_pair(transformer, batch, reference=reference, scheduler=scheduler,
                        prediction_type=prediction_type, flow_shift=flow_shift, generator=generator,
                        timesteps=timesteps, noise=noise, dtype=dtype, with_reference=with_reference)
    return diffusion_dpo_loss(pred.model_pred, pred.ref_pred, pred.target, beta=beta, loss_type=loss_type,
                              label_smoothing=label_smoothing, sft_weight=sft_weight, weight=pred.weight,
                              segments=segments, frame_dim=pred.frame_dim, backend=backend)


# --------------------------------------------------------------------------------------------
# Low-memory step: one sample's activations at a time

# Transformer inputs with one entry per sample; the others (CogVideoX's rotary embeddings) are
# shared by all samples.
_PER_SAMPLE_INPUTS = ("hidden_states", "encoder_hidden_states", "timestep", "ofs")


def _sample_inputs(inputs: dict, s: int) -> dict:
    return {key: value[s:s + 1] if key in _PER_SAMPLE_INPUTS else value for key, value in inputs.items()}


def _rng_state(device: torch.device) -> tuple:
    """The generator states a forward pass draws from (dropout): the CPU's and the device's."""
    if device.type == "cpu":
        return (torch.get_rng_state(), None)
    return (torch.get_rng_state(), torch.get_device_module(device.type).get_rng_state(device))


def _set_rng_state(device: torch.device, state: tuple) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.get_device_module(device.type).set_rng_state(state[1], device)


def _gradient_sync_control(transformer):
    """A context manager that keeps a backward pass from synchronising gradients across
    processes: DDP's ``no_sync``, nothing for a model on one process. Sharded and engine
    wrappers are refused: their backward passes are not checked here."""
    if type(transformer).__name__ == "DeepSpeedEngine":
        raise NotImplementedError("diffusion_dpo_step_low_memory does not support DeepSpeed (its engine runs "
                                  "one backward pass per step); use diffusion_dpo_step")
    if torch.distributed.is_available():
        from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

        if any(isinstance(m, (FullyShardedDataParallel, FSDPModule)) for m in transformer.modules()):
            raise NotImplementedError("diffusion_dpo_step_low_memory does not support FSDP-sharded models; use "
                                      "diffusion_dpo_step (with gradient checkpointing)")
        if isinstance(transformer, torch.nn.parallel.DistributedDataParallel):
            return transformer.no_sync
    return contextlib.nullcontext


def diffusion_dpo_step_low_memory(transformer, batch: PreferenceBatch, *, backward=None,
                                  beta: Union[float, Tensor, None] = 1.0, loss_type: str = "sigmoid",
                                  label_smoothing: float = 0.0, sft_weight: float = 0.0, segments: int = 1,
                                  backend: str = "auto", reference=None, scheduler=None,
                                  prediction_type: Optional[str] = None, flow_shift: float = WAN_FLOW_SHIFT,
                                  generator: Optional[torch.Generator] = None, timesteps: Optional[Tensor] = None,
                                  noise: Optional[Tensor] = None,
                                  dtype: Optional[torch.dtype] = None) -> DiffusionDPOLossResult:
    """One Diffusion-DPO step, forward *and backward*, holding at most one sample's activations.

    The same step as :func:`diffusion_dpo_step` (same arguments, same loss and metrics, the same
    gradients to float rounding), run sample by sample: each of the 2B samples goes through the
    reference and, without grad, through the policy (the last one with grad, kept); the fused
    loss on these predictions gives dL/dpred of every sample; the kept sample is back-propagated,
    then every other sample is run again with grad and back-propagated alone with its dL/dpred
    (the random state of its first pass restored, so dropout draws the same masks). The policy
    runs 2B - 1 more forward passes than in the plain step; activation memory is one sample's.
    With ``transformer.enable_gradient_checkpointing()`` it is one sample's layer inputs plus
    one layer's activations.

    The gradients are accumulated into the parameters' ``.grad`` here, by ``backward(scalar)``
    once per sample: ``Tensor.backward`` by default, or ``accelerator.backward`` for accelerate,
    whose scaling (1 / gradient_accumulation_steps, the fp16 gradient scaler) applies to each
    call and so to the sum. Under DDP every backward pass but the last runs inside ``no_sync``:
    gradients are all-reduced once per step, as in the plain step (and not at all inside
    accelerate's ``accumulate`` on a micro-batch that does not sync). FSDP and DeepSpeed are not
    supported (NotImplementedError). The returned loss is detached: do not back-propagate it.
    """
    with_reference = _uses_reference(loss_type, reference)
    if backward is None:
        backward = Tensor.backward
    elif not callable(backward):
        raise TypeError(f"backward must be a function of a scalar loss (e.g. accelerator.backward), got "
                        f"{type(backward).__name__}")
    sync_control = _gradient_sync_control(transformer)
    inputs, target, weight, frame_dim = _prepare_pair(
        transformer, batch, reference=reference, scheduler=scheduler, prediction_type=prediction_type,
        flow_shift=flow_shift, generator=generator, timesteps=timesteps, noise=noise, dtype=dtype,
        with_reference=with_reference)
    samples = target.shape[0]
    kept = samples - 1
    device = inputs["hidden_states"].device
    rng_states, model_preds, ref_preds = [], [], []

    def backward_sample(pred: Tensor, grad: Tensor) -> None:
        # d(sum(pred * grad)) / d pred = grad exactly: the loss's gradient flows into this sample.
        backward((pred * grad).sum())

    def recompute(s: int, grad: Tensor) -> None:
        _set_rng_state(device, rng_states[s])
        backward_sample(_forward(transformer, _sample_inputs(inputs, s)), grad[s:s + 1])

    with sync_control():
        for s in range(samples):
            sample = _sample_inputs(inputs, s)
            if with_reference:
                ref_preds.append(_reference_forward(transformer, reference, sample))
            if s == kept:
                kept_pred = _forward(transformer, sample)
                model_preds.append(kept_pred.detach())
            else:
                rng_states.append(_rng_state(device))
                with torch.no_grad():
                    model_preds.append(_forward(transformer, sample))
        model_pred = torch.cat(model_preds).requires_grad_()
        result = diffusion_dpo_loss(model_pred, torch.cat(ref_preds) if with_reference else None, target,
                                    beta=beta, loss_type=loss_type, label_smoothing=label_smoothing,
                                    sft_weight=sft_weight, weight=weight, segments=segments, frame_dim=frame_dim,
                                    backend=backend)
        (grad,) = torch.autograd.grad(result.loss, model_pred)
        backward_sample(kept_pred, grad[kept:])
        del kept_pred
        for s in range(kept - 1):
            recompute(s, grad)
    recompute(kept - 1, grad)  # the last backward pass synchronises the gradients
    return replace(result, loss=result.loss.detach())
