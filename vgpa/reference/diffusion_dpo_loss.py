"""Pure-PyTorch reference of the paired Diffusion-DPO loss (docs/design.md 3.4): the tests' oracle.

Layout: model_pred, ref_pred and target are (2B, ...) with the B winners first, then the B
losers. For every sample s and temporal segment k

    err(s, k) = sum(w * (pred - target)^2) / sum(w)      over the segment's elements
    logits(b, k) = beta_b * ((ref_err_w - model_err_w) - (ref_err_l - model_err_l))

and the loss is the (pair-weighted) mean over pairs of the mean over segments of
ell(logits) + sft_weight * model_err_w, ell chosen by ``loss_type``. beta is one number or one
value per pair. The reference-free "dro" (Epipolar-DPO's Direct Reward Optimization) has no
reference prediction: its logits are model_err_l - model_err_w and ell(logits) = -logits,
i.e. model_err_w - model_err_l; beta does not enter it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._dtypes import accumulation_dtype

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


def dpo_errors(model_pred, ref_pred, target, weight=None, segments=1, frame_dim=1):
    """Per-(sample, segment) weighted squared errors.

    Returns (model_err, ref_err, weight_sum), each (2B, segments) in the accumulation dtype;
    ref_err is None when ref_pred is None (reference-free losses).
    """
    acc = accumulation_dtype(model_pred.dtype)
    m, t = model_pred.to(acc), target.to(acc)
    r = None if ref_pred is None else ref_pred.to(acc)
    w = torch.ones((), dtype=acc, device=m.device) if weight is None else weight.to(acc)
    w = w.expand(m.shape)
    if segments == 1:
        pieces = [(m, r, t, w)]
    else:
        frames = m.shape[frame_dim]
        pieces = [tuple(None if x is None else x.narrow(frame_dim, a, b - a) for x in (m, r, t, w))
                  for a, b in segment_bounds(frames, segments)]
    model_err, ref_err, weight_sum = [], [], []
    for m_k, r_k, t_k, w_k in pieces:
        n = m_k.shape[0]
        w_flat = w_k.reshape(n, -1)
        w_sum = w_flat.sum(1)
        model_err.append((w_flat * (m_k - t_k).reshape(n, -1).square()).sum(1) / w_sum)
        if r_k is not None:
            ref_err.append((w_flat * (r_k - t_k).reshape(n, -1).square()).sum(1) / w_sum)
        weight_sum.append(w_sum)
    return (torch.stack(model_err, 1), torch.stack(ref_err, 1) if ref_err else None,
            torch.stack(weight_sum, 1))


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


def diffusion_dpo_loss(model_pred, ref_pred, target, *, beta=None, loss_type="sigmoid", label_smoothing=0.0,
                       sft_weight=0.0, weight=None, pair_weight=None, segments=1, frame_dim=1):
    """The whole loss in plain PyTorch; returns (loss, logits, model_err, ref_err), errors (2B, S)
    and logits (B, S); ref_err is None when ref_pred is None ("dro"). The reference
    prediction, the target and beta are constants."""
    model_err, ref_err, _ = dpo_errors(model_pred, None if ref_pred is None else ref_pred.detach(),
                                       target.detach(), None if weight is None else weight.detach(),
                                       segments, frame_dim)
    if isinstance(beta, torch.Tensor):
        beta = beta.detach()
    logits = dpo_logits(model_err, ref_err, beta)
    pairs = logits.shape[0]
    loss = dpo_loss_from_logits(logits, beta, loss_type, label_smoothing, pair_weight, sft_weight,
                                model_err[:pairs])
    return loss, logits, model_err, ref_err
