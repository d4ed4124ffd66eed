"""The DPO loss after the per-sample errors (docs/design.md 3.4), in plain PyTorch on (B, S)
tensors: the logits, every loss type, the SFT anchor, the pair weights and the training
metrics. vgpa.diffusion_dpo_loss runs it on every backend after the fused errors, and
vgpa.reference.diffusion_dpo_loss states the whole loss with it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "hinge", "ipo", "dro")
# Loss types that compare the policy with itself: they take no reference prediction.
REFERENCE_FREE_LOSS_TYPES = ("dro",)


def segment_bounds(frames: int, segments: int) -> list[tuple[int, int]]:
    """Split ``frames`` into ``segments`` contiguous runs whose lengths differ by at most one
    (the first ``frames % segments`` runs are one longer), as torch.tensor_split does."""
    base, extra = divmod(frames, segments)
    bounds, start = [], 0
    for k in range(segments):
        stop = start + base + (1 if k < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def per_pair(beta, like):
    """beta as a factor of (B, S) tensors like ``like``: a number as it is, a (B,) tensor as a
    (B, 1) column in like's dtype."""
    if isinstance(beta, torch.Tensor):
        return beta.to(device=like.device, dtype=like.dtype).view(-1, 1)
    return beta


def dpo_logits(model_err, ref_err, beta):
    """(2B, S) errors -> (B, S) logits: beta * ((ref_w - model_w) - (ref_l - model_l)), beta a
    number or (B,). Without a reference (ref_err None, "dro"): model_l - model_w, no beta."""
    pairs = model_err.shape[0] // 2
    model_w, model_l = model_err[:pairs], model_err[pairs:]
    if ref_err is None:
        return model_l - model_w
    ref_w, ref_l = ref_err[:pairs], ref_err[pairs:]
    return per_pair(beta, model_err) * ((ref_w - model_w) - (ref_l - model_l))


def dpo_loss_from_logits(logits, beta, loss_type="sigmoid", label_smoothing=0.0, pair_weight=None,
                         sft_weight=0.0, winner_err=None):
    """Loss per pair and segment from the (B, S) logits (plus ``sft_weight`` times the (B, S)
    ``winner_err``), then the mean over segments and the (optionally ``pair_weight``-weighted)
    mean over pairs."""
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(logits)
        if label_smoothing:
            losses = (1.0 - label_smoothing) * losses - label_smoothing * F.logsigmoid(-logits)
    elif loss_type == "hinge":
        losses = torch.relu(1.0 - logits)
    elif loss_type == "ipo":
        beta = per_pair(beta, logits)
        losses = (logits / beta - 1.0 / (2.0 * beta)).square()
    elif loss_type == "dro":
        losses = -logits  # model_err_w - model_err_l
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {LOSS_TYPES}")
    if sft_weight:  # skipped at 0, so the plain loss stays bitwise what it is without the anchor
        losses = losses + sft_weight * winner_err
    per_pair_loss = losses.mean(1)
    if pair_weight is None:
        return per_pair_loss.mean()
    pair_weight = pair_weight.to(per_pair_loss.dtype)
    return (pair_weight * per_pair_loss).sum() / pair_weight.sum()


def dpo_metrics(model_err, logits, beta):
    """Training metrics (no gradient): accuracy as VideoGPA counts it (model error of the
    winner below the loser's), implicit accuracy as diffusers counts it, reward margin."""
    with torch.no_grad():
        pairs = model_err.shape[0] // 2
        accuracy = (model_err[:pairs] < model_err[pairs:]).to(logits.dtype).mean()
        implicit = (logits > 0).to(logits.dtype).mean() + 0.5 * (logits == 0).to(logits.dtype).mean()
        # reward r = beta * (ref_err - model_err) ("dro": -model_err); margin = mean(r_w - r_l) = mean(logits)
        reward_margin = logits.mean()
    return accuracy, implicit, reward_margin
