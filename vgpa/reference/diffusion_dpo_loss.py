"""Pure-PyTorch reference of the paired Diffusion-DPO loss (docs/design.md 3.4): the tests' oracle,
and the "torch" backend of vgpa.diffusion_dpo_loss (differentiated by autograd).

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

from .._dtypes import accumulation_dtype
from ..torch_math.dpo import (LOSS_TYPES, REFERENCE_FREE_LOSS_TYPES, dpo_logits, dpo_loss_from_logits,  # noqa: F401
                              dpo_metrics, per_pair, segment_bounds)


def dpo_weighted_sums(model_pred, ref_pred, target, weight=None, segments=1, frame_dim=1):
    """Per-(sample, segment) sums of w (pred - target)^2 for the policy and the reference, and
    of w: (model_sum, ref_sum, weight_sum), each (2B, segments) in the accumulation dtype;
    ref_sum is None when ref_pred is None (reference-free losses)."""
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
    model_sum, ref_sum, weight_sum = [], [], []
    for m_k, r_k, t_k, w_k in pieces:
        n = m_k.shape[0]
        w_flat = w_k.reshape(n, -1)
        weight_sum.append(w_flat.sum(1))
        model_sum.append((w_flat * (m_k - t_k).reshape(n, -1).square()).sum(1))
        if r_k is not None:
            ref_sum.append((w_flat * (r_k - t_k).reshape(n, -1).square()).sum(1))
    return (torch.stack(model_sum, 1), torch.stack(ref_sum, 1) if ref_sum else None,
            torch.stack(weight_sum, 1))


def dpo_errors(model_pred, ref_pred, target, weight=None, segments=1, frame_dim=1):
    """Per-(sample, segment) weighted squared errors sum(w (pred - target)^2) / sum(w).

    Returns (model_err, ref_err, weight_sum), each (2B, segments) in the accumulation dtype;
    ref_err is None when ref_pred is None (reference-free losses).
    """
    model_sum, ref_sum, weight_sum = dpo_weighted_sums(model_pred, ref_pred, target, weight, segments, frame_dim)
    return model_sum / weight_sum, None if ref_sum is None else ref_sum / weight_sum, weight_sum


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
