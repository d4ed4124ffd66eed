"""Fused paired Diffusion-DPO loss (docs/design.md 3.4).

The heavy part, per-(sample, segment) weighted squared errors of the policy and the reference
against the target, runs in one pass over the three tensors on the chosen backend (over two,
model_pred and target, for the reference-free "dro"); the gradient is written in one more
pass. The O(B) logit and loss math is plain PyTorch on (B, S) tensors (vgpa.torch_math.dpo), shared
with the reference, so every loss type, the SFT anchor and per-pair betas only change the
per-sample coefficient of that one backward pass. Backend "torch" is the reference
(vgpa.reference.diffusion_dpo_loss), differentiated by autograd.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor

from .. import _backend
from .._dtypes import accumulation_dtype
from .._layout import coalesce_per_sample
from ..reference import diffusion_dpo_loss as reference
from ..torch_math import dpo
from .registry import OpSpec

OP = "diffusion_dpo_loss"
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

# Elements per partial sum (forward) and per program (backward), per backend: fixed, so sums
# are bitwise reproducible.
CHUNK = {"cpu": 8192, "cuda": 4096, "triton": 4096}


@dataclass
class DiffusionDPOLossResult:
    """Output of :func:`diffusion_dpo_loss`.

    loss: scalar (differentiable w.r.t. model_pred). logits: (B,) or (B, S) with segments;
    for "dro", which has no reference, logits = model_err_l - model_err_w (no beta), so that
    implicit_accuracy and reward_margin read as for the other loss types (a positive logit
    prefers the winner). model_err, ref_err: (2B,) or (2B, S), winners first; ref_err is None
    for "dro" (ref_pred=None: the reference is neither given nor read). accuracy,
    implicit_accuracy, reward_margin: detached scalars.
    """

    loss: Tensor
    logits: Tensor
    model_err: Tensor
    ref_err: Optional[Tensor]
    accuracy: Tensor
    implicit_accuracy: Tensor
    reward_margin: Tensor


# --------------------------------------------------------------------------------------------
# Layout shared by the kernels


def _kernel_layout(model_pred, ref_pred, target, weight, frame_dim, segments):
    """Returns operands (weight expanded, never copied unless unavoidable), sizes and strides.
    ref_pred may be None (reference-free losses): its slot repeats model_pred's strides."""
    shape = model_pred.shape
    w = None if weight is None else weight.expand(shape)
    frame = frame_dim if segments > 1 else None
    for attempt in range(3):
        ops = [model_pred, model_pred if ref_pred is None else ref_pred, target] + ([w] if w is not None else [])
        layout = coalesce_per_sample(shape, [x.stride() for x in ops], frame)
        if layout is not None:
            break
        # Rare: more than four axes that cannot be merged. Fall back to copies.
        if attempt == 0:
            model_pred, target = model_pred.contiguous(), target.contiguous()
            ref_pred = None if ref_pred is None else ref_pred.contiguous()
        else:
            w = w.contiguous()
    sizes, strides = layout
    if w is None:
        strides = strides + ((0,) * 5,)
    return (model_pred, ref_pred, target, w), sizes, strides


def _segment_counts(shape, frame_dim, segments):
    inner = math.prod(shape[1:])
    if segments == 1:
        return [inner]
    per_frame = inner // shape[frame_dim] if shape[frame_dim] else 0
    return [(b - a) * per_frame for a, b in dpo.segment_bounds(shape[frame_dim], segments)]


def _num_chunks(sizes, segments, chunk):
    frames, a, b, c = sizes
    longest = -(-frames // segments) * a * b * c
    return max(1, -(-longest // chunk))


# --------------------------------------------------------------------------------------------
# Backend implementations


def _launch(backend, name, m, t, w, sizes, strides, segments, chunk, **more):
    """Calls the compiled kernel ``<name>_cpu`` or ``<name>_cuda`` of csrc/diffusion_dpo_loss with its
    fields by name; ``more``: the kernel's own tensors (None: absent) and numbers, strides as tuples."""
    fields = {key: value.data_ptr() if isinstance(value, torch.Tensor) else list(value) if isinstance(value, tuple)
              else value for key, value in more.items() if value is not None}
    if w is not None:
        fields["weight"] = w.data_ptr()
    _backend.launch_compiled(backend, name, m.device, dtype=_backend.dtype_code(m.dtype), samples=m.shape[0],
                             segments=segments, sizes=list(sizes), chunk=chunk, model=m.data_ptr(),
                             model_strides=list(strides[0]), target=t.data_ptr(), target_strides=list(strides[2]),
                             weight_strides=list(strides[3]), **fields)


def _errors_kernel(backend, model_pred, ref_pred, target, weight, segments, frame_dim):
    n = model_pred.shape[0]
    acc = accumulation_dtype(model_pred.dtype)
    (m, r, t, w), sizes, strides = _kernel_layout(model_pred, ref_pred, target, weight, frame_dim, segments)
    chunk = CHUNK[backend]
    chunks = _num_chunks(sizes, segments, chunk)
    partials = torch.empty((n * segments, chunks, 3), dtype=acc, device=m.device)
    if backend == "triton":
        from ..kernels.diffusion_dpo_loss import diffusion_dpo_loss_forward

        diffusion_dpo_loss_forward(m, r, t, w, partials, sizes, strides, segments, chunk)
    else:
        # No ref (reference-free): the kernels read model_pred and target only.
        _launch(backend, "diffusion_dpo_loss_forward", m, t, w, sizes, strides, segments, chunk,
                ref=r, ref_strides=strides[1], partials=partials, chunks=chunks)
    sums = partials.sum(1).view(n, segments, 3)
    if w is None:
        weight_sum = torch.tensor(_segment_counts(model_pred.shape, frame_dim, segments), dtype=acc,
                                  device=m.device).expand(n, segments).contiguous()
    else:
        weight_sum = sums[..., 2]
    return sums[..., 0] / weight_sum, sums[..., 1] / weight_sum, weight_sum


def _grad_kernel(backend, scale, model_pred, target, weight, segments, frame_dim):
    """grad[s, e] = scale[s, k(e)] * w[s, e] * (model_pred - target)[s, e]."""
    # Same strides as model_pred where it is dense, so the gradient is read back as it is written.
    grad = torch.empty_like(model_pred)
    # g is grad itself, or a contiguous buffer when the layout had to fall back to copies.
    (m, g, t, w), sizes, strides = _kernel_layout(model_pred, grad, target, weight, frame_dim, segments)
    scale = scale.contiguous()
    if backend == "triton":
        from ..kernels.diffusion_dpo_loss import diffusion_dpo_loss_backward

        diffusion_dpo_loss_backward(scale, m, t, w, g, sizes, strides, segments)
    else:
        _launch(backend, "diffusion_dpo_loss_backward", m, t, w, sizes, strides, segments, CHUNK[backend],
                grad=g, grad_strides=strides[1], scale=scale)
    return g


# --------------------------------------------------------------------------------------------
# torch.library registration: opaque to torch.compile, differentiable w.r.t. model_pred.


def _check_weight_sum(weight_sum):
    """Every sample (and segment) needs a positive total weight: its errors divide by it."""
    if not bool((weight_sum > 0).all()):
        if torch.isnan(weight_sum).any():  # read only on this error path: no extra sync otherwise
            raise ValueError(f"{OP}: weight holds NaN; every sample (and segment) needs a finite positive "
                             "total weight")
        raise ValueError(f"{OP}: the weight sums to <= 0 over some sample or segment; every "
                         "sample (and segment) needs a positive total weight")


@torch.library.custom_op("vgpa::diffusion_dpo_loss_errors", mutates_args=())
def _errors_op(model_pred: Tensor, ref_pred: Optional[Tensor], target: Tensor, weight: Optional[Tensor],
               segments: int, frame_dim: int, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """(model_err, ref_err, weight_sum); ref_err is zeros when ref_pred is None."""
    out = _errors_kernel(_backend.kernel_backend(OP, backend), model_pred, ref_pred, target, weight, segments,
                         frame_dim)
    if weight is not None:
        _check_weight_sum(out[2])
    return tuple(x.contiguous() for x in out)


@_errors_op.register_fake
def _(model_pred, ref_pred, target, weight, segments, frame_dim, backend):
    acc = accumulation_dtype(model_pred.dtype)
    shape = (model_pred.shape[0], segments)
    return tuple(model_pred.new_empty(shape, dtype=acc) for _ in range(3))


@torch.library.custom_op("vgpa::diffusion_dpo_loss_grad", mutates_args=())
def _grad_op(scale: Tensor, model_pred: Tensor, target: Tensor, weight: Optional[Tensor],
             segments: int, frame_dim: int, backend: str) -> Tensor:
    return _grad_kernel(_backend.kernel_backend(OP, backend), scale, model_pred, target, weight, segments, frame_dim)


@_grad_op.register_fake
def _(scale, model_pred, target, weight, segments, frame_dim, backend):
    return torch.empty_like(model_pred)


@torch.library.custom_op("vgpa::diffusion_dpo_loss_checked_weight_sum", mutates_args=())
def _checked_weight_sum(weight_sum: Tensor) -> Tensor:
    """The weight check of the kernels' op for the "torch" backend (plain torch code that
    torch.compile traces): as an op of its own it runs when a compiled graph runs. Returns a
    copy, which the caller divides by, so that the check cannot be dropped."""
    _check_weight_sum(weight_sum)
    return weight_sum.clone()


@_checked_weight_sum.register_fake
def _(weight_sum):
    return torch.empty_like(weight_sum)


def _setup_context(ctx, inputs, output):
    model_pred, _, target, weight, segments, frame_dim, backend = inputs
    ctx.save_for_backward(model_pred, target, weight, output[2])
    ctx.segments, ctx.frame_dim, ctx.backend = segments, frame_dim, backend


def _backward(ctx, grad_model_err, grad_ref_err, grad_weight_sum):
    model_pred, target, weight, weight_sum = ctx.saved_tensors
    grad = None
    if ctx.needs_input_grad[0]:
        # d err(s, k) / d pred = 2 w (pred - target) / sum(w)
        scale = (2.0 * grad_model_err / weight_sum).to(weight_sum.dtype)
        grad = _grad_op(scale, model_pred, target, weight, ctx.segments, ctx.frame_dim, ctx.backend)
    return grad, None, None, None, None, None, None


_errors_op.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------
# Public API


def _is_number(x) -> bool:
    """A real Python number; bools are rejected (True would silently mean 1)."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _acc_note(model_pred, acc):
    def name(dtype):
        return str(dtype).removeprefix("torch.")

    return f"{name(acc)}, the dtype the loss accumulates in for {name(model_pred.dtype)} inputs"


def _beta_bounds(acc):
    """[low, high]: beta, 2 beta (the gradient's leading factor) and 1 / (2 beta) (ipo) are all
    finite in the accumulation dtype."""
    largest = torch.finfo(acc).max
    return 1.0 / largest, largest / 2.0


def _check_beta(beta, loss_type, model_pred, acc):
    pairs = model_pred.shape[0] // 2
    if beta is None:
        if loss_type not in dpo.REFERENCE_FREE_LOSS_TYPES:
            raise ValueError(f"{OP}: loss_type={loss_type!r} needs beta (a number > 0, or a ({pairs},) tensor "
                             "with one value per pair)")
        return
    low, high = _beta_bounds(acc)
    wanted = (f"finite and > 0, and lie in [{low:.3g}, {high:.3g}] so that beta, 2 beta and 1/(2 beta) "
              f"stay finite in {_acc_note(model_pred, acc)}")
    if isinstance(beta, Tensor):
        if not beta.is_floating_point():
            raise TypeError(f"{OP}: a beta tensor must be floating-point, got dtype {beta.dtype}")
        if beta.shape != (pairs,):
            raise ValueError(f"{OP}: beta has shape {tuple(beta.shape)}, expected ({pairs},): one value per pair "
                             f"(B = {pairs}), or pass a number")
        if beta.device != model_pred.device:
            raise ValueError(f"{OP}: beta is on {beta.device} but model_pred is on {model_pred.device}")
        if not torch.compiler.is_compiling():  # one small read-back
            values = beta.detach().to(acc)
            bad = ~(torch.isfinite(values) & (values >= low) & (values <= high))
            if bool(bad.any()):
                index = int(bad.nonzero()[0, 0])
                raise ValueError(f"{OP}: every entry of beta must be {wanted}; beta[{index}] = "
                                 f"{beta[index].item()!r}")
        return
    if not _is_number(beta):
        raise TypeError(f"{OP}: beta must be a number or a ({pairs},) tensor, got {type(beta).__name__} {beta!r}")
    if not (math.isfinite(beta) and low <= beta <= high):
        raise ValueError(f"{OP}: beta must be {wanted}; got {beta!r}")


def _check_inputs(model_pred, ref_pred, target, beta, loss_type, label_smoothing, sft_weight, weight,
                  pair_weight, segments, frame_dim):
    if loss_type not in dpo.LOSS_TYPES:
        raise ValueError(f"{OP}: unknown loss_type {loss_type!r}; choose one of {dpo.LOSS_TYPES}")
    reference_free = loss_type in dpo.REFERENCE_FREE_LOSS_TYPES
    if ref_pred is None and not reference_free:
        raise ValueError(f"{OP}: ref_pred is None but loss_type={loss_type!r} compares the policy with a "
                         f"reference; pass the reference prediction, or use a reference-free loss type "
                         f"{dpo.REFERENCE_FREE_LOSS_TYPES}")
    if ref_pred is not None and reference_free:
        raise ValueError(f"{OP}: loss_type={loss_type!r} uses no reference prediction; pass ref_pred=None "
                         "(a given one would only be read for nothing)")
    tensors = {"model_pred": model_pred, "target": target}
    if ref_pred is not None:
        tensors["ref_pred"] = ref_pred
    for name, x in tensors.items():
        if not isinstance(x, Tensor):
            raise TypeError(f"{OP}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if model_pred.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{OP}: model_pred has dtype {model_pred.dtype}; expected one of {FLOAT_DTYPES}")
    for name, x in tensors.items():
        if x.dtype != model_pred.dtype:
            raise TypeError(f"{OP}: {name} has dtype {x.dtype} but model_pred has {model_pred.dtype}; "
                            "cast them to one dtype")
        if x.device != model_pred.device:
            raise ValueError(f"{OP}: {name} is on {x.device} but model_pred is on {model_pred.device}")
        if x.shape != model_pred.shape:
            raise ValueError(f"{OP}: {name} has shape {tuple(x.shape)} but model_pred has "
                             f"{tuple(model_pred.shape)}; the predictions and the target must match")
    if model_pred.dim() < 1 or model_pred.shape[0] < 2 or model_pred.shape[0] % 2:
        raise ValueError(f"{OP}: the batch axis must hold 2B samples (B winners, then B losers); "
                         f"got shape {tuple(model_pred.shape)}")
    if model_pred.numel() == 0:
        raise ValueError(f"{OP}: model_pred has no elements (shape {tuple(model_pred.shape)})")
    acc = accumulation_dtype(model_pred.dtype)
    _check_beta(beta, loss_type, model_pred, acc)
    if not _is_number(label_smoothing):
        raise TypeError(f"{OP}: label_smoothing must be a number, got {type(label_smoothing).__name__} "
                        f"{label_smoothing!r}")
    if not (0.0 <= label_smoothing <= 0.5):
        raise ValueError(f"{OP}: label_smoothing must lie in [0, 0.5], got {label_smoothing!r}")
    if label_smoothing and loss_type != "sigmoid":
        raise ValueError(f"{OP}: label_smoothing applies to loss_type='sigmoid' only")
    if not _is_number(sft_weight):
        raise TypeError(f"{OP}: sft_weight must be a number, got {type(sft_weight).__name__} {sft_weight!r}")
    sft_high = torch.finfo(acc).max / 2.0  # 2 sft_weight leads the anchor's gradient
    if not (math.isfinite(sft_weight) and 0.0 <= sft_weight <= sft_high):
        raise ValueError(f"{OP}: sft_weight must be finite and >= 0 (at most {sft_high:.3g}, so that its "
                         f"gradient stays finite in {_acc_note(model_pred, acc)}); got {sft_weight!r}")
    if isinstance(segments, bool) or not isinstance(segments, int):
        raise TypeError(f"{OP}: segments must be an int >= 1, got {type(segments).__name__} {segments!r}")
    if segments < 1:
        raise ValueError(f"{OP}: segments must be an int >= 1, got {segments!r}")
    if isinstance(frame_dim, bool) or not isinstance(frame_dim, int):
        raise TypeError(f"{OP}: frame_dim must be an int, got {type(frame_dim).__name__} {frame_dim!r}")
    ndim = model_pred.dim()
    if segments > 1:
        if not (-ndim < frame_dim < ndim) or frame_dim % ndim == 0:
            raise ValueError(f"{OP}: frame_dim={frame_dim} is not a non-batch axis of a {ndim}-D prediction")
        frames = model_pred.shape[frame_dim]
        if segments > frames:
            raise ValueError(f"{OP}: segments={segments} exceeds the {frames} frames along frame_dim={frame_dim}")
    if weight is not None:
        if not isinstance(weight, Tensor) or not weight.is_floating_point():
            raise TypeError(f"{OP}: weight must be a floating-point tensor")
        if weight.device != model_pred.device:
            raise ValueError(f"{OP}: weight is on {weight.device} but model_pred is on {model_pred.device}")
        try:
            broadcast = torch.broadcast_shapes(weight.shape, model_pred.shape)
        except RuntimeError:
            broadcast = None
        if broadcast != model_pred.shape:
            raise ValueError(f"{OP}: weight of shape {tuple(weight.shape)} does not broadcast to the "
                             f"prediction shape {tuple(model_pred.shape)}")
    if pair_weight is not None:
        pairs = model_pred.shape[0] // 2
        if not isinstance(pair_weight, Tensor) or not pair_weight.is_floating_point():
            raise TypeError(f"{OP}: pair_weight must be a floating-point tensor of shape ({pairs},)")
        if pair_weight.shape != (pairs,):
            raise ValueError(f"{OP}: pair_weight has shape {tuple(pair_weight.shape)}, expected ({pairs},)")
        if pair_weight.device != model_pred.device:
            raise ValueError(f"{OP}: pair_weight is on {pair_weight.device} but model_pred is on "
                             f"{model_pred.device}")
        if not torch.compiler.is_compiling():  # one small read-back
            # Checked as the loss uses it: in the accumulation dtype, where the sum must stay finite.
            values = pair_weight.detach().to(acc)
            total = values.sum()
            ok = (torch.isfinite(values) & (values >= 0)).all() & torch.isfinite(total) & (total > 0)
            if not bool(ok):
                raise ValueError(f"{OP}: pair_weight must be finite, >= 0 and sum to > 0, its sum finite, in "
                                 f"{_acc_note(model_pred, acc)}")


def diffusion_dpo_loss(model_pred: Tensor, ref_pred: Optional[Tensor], target: Tensor, *,
                       beta: Union[float, Tensor, None] = None, loss_type: str = "sigmoid",
                       label_smoothing: float = 0.0, sft_weight: float = 0.0, weight: Optional[Tensor] = None,
                       pair_weight: Optional[Tensor] = None, segments: int = 1, frame_dim: int = 1,
                       backend: str = "auto") -> DiffusionDPOLossResult:
    """Paired Diffusion-DPO loss with its fused gradient.

    model_pred, ref_pred, target: (2B, ...), the B winners first, then the B losers, e.g.
    (2B, F, C, H, W) CogVideoX latents or (2B, C, F, H, W) Wan latents, any strides.
    ref_pred is None for the reference-free ``loss_type="dro"`` (and only then).
    beta: > 0, a number or a (B,) tensor with one value per pair (e.g. a timestep schedule);
    required except for "dro", which it does not enter. loss_type: "sigmoid" (with
    ``label_smoothing``), "hinge", "ipo" or "dro" (Epipolar-DPO's Direct Reward Optimization:
    model_err_w - model_err_l). sft_weight: >= 0, adds sft_weight times the (pair-weighted)
    mean winner error, an SFT anchor. weight: per-element weight broadcastable to the
    prediction, e.g. (2B, 1, F, H, W); read in place, never expanded in memory. pair_weight:
    (B,) weights of the mean over pairs. segments: split the frame axis ``frame_dim`` into this
    many contiguous segments with their own errors and logits. backend: "auto", "cuda",
    "triton", "cpu" or "torch".

    Only model_pred receives a gradient; ref_pred, target, beta and the weights are constants.
    """
    _check_inputs(model_pred, ref_pred, target, beta, loss_type, label_smoothing, sft_weight, weight,
                  pair_weight, segments, frame_dim)
    resolved = _backend.resolve(backend, model_pred.device, OP)
    frame_dim = frame_dim % model_pred.dim() if model_pred.dim() > 1 else 1
    acc = accumulation_dtype(model_pred.dtype)
    if weight is not None:
        weight = weight.detach().to(acc)
    ref_pred = None if ref_pred is None else ref_pred.detach()
    if resolved == "torch":  # the reference, differentiated by autograd
        model_sum, ref_sum, weight_sum = reference.dpo_weighted_sums(model_pred, ref_pred, target.detach(), weight,
                                                                     segments, frame_dim)
        if weight is not None:
            weight_sum = _checked_weight_sum(weight_sum)
        model_err = model_sum / weight_sum
        ref_err = None if ref_sum is None else ref_sum / weight_sum
    else:
        model_err, ref_err, _ = _errors_op(model_pred, ref_pred, target.detach(), weight, segments, frame_dim,
                                           resolved)
        if ref_pred is None:
            ref_err = None
    beta = beta.detach().to(acc) if isinstance(beta, Tensor) else None if beta is None else float(beta)
    logits = dpo.dpo_logits(model_err, ref_err, beta)
    pairs = logits.shape[0]
    # Every term reaches model_pred through model_err only, so autograd sums the per-sample
    # coefficients and the kernels write the gradient in one pass.
    loss = dpo.dpo_loss_from_logits(logits, beta, loss_type, float(label_smoothing),
                                          None if pair_weight is None else pair_weight.detach(),
                                          float(sft_weight), model_err[:pairs])
    accuracy, implicit, margin = dpo.dpo_metrics(model_err, logits, beta)
    if segments == 1:
        logits, model_err = logits[:, 0], model_err[:, 0]
        ref_err = None if ref_err is None else ref_err[:, 0]
    return DiffusionDPOLossResult(loss, logits, model_err, ref_err, accuracy, implicit, margin)


class DiffusionDPOLoss(torch.nn.Module):
    """nn.Module around :func:`diffusion_dpo_loss`; forward returns the full result. A ``beta``
    given to forward (e.g. a (B,) schedule of this batch's timesteps) replaces the module's."""

    def __init__(self, beta: Optional[float] = None, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
                 sft_weight: float = 0.0, segments: int = 1, frame_dim: int = 1, backend: str = "auto"):
        super().__init__()
        self.beta, self.loss_type, self.label_smoothing = beta, loss_type, label_smoothing
        self.sft_weight, self.segments, self.frame_dim, self.backend = sft_weight, segments, frame_dim, backend

    def forward(self, model_pred, ref_pred, target, weight=None, pair_weight=None,
                beta=None) -> DiffusionDPOLossResult:
        return diffusion_dpo_loss(model_pred, ref_pred, target, beta=self.beta if beta is None else beta,
                                  loss_type=self.loss_type, label_smoothing=self.label_smoothing,
                                  sft_weight=self.sft_weight, weight=weight, pair_weight=pair_weight,
                                  segments=self.segments, frame_dim=self.frame_dim, backend=self.backend)

    def extra_repr(self):
        return (f"beta={self.beta}, loss_type={self.loss_type!r}, label_smoothing={self.label_smoothing}, "
                f"sft_weight={self.sft_weight}, segments={self.segments}, frame_dim={self.frame_dim}, "
                f"backend={self.backend!r}")


SPEC = OpSpec(
    "diffusion_dpo_loss",
    exports={"diffusion_dpo_loss": ("DiffusionDPOLoss", "DiffusionDPOLossResult", "diffusion_dpo_loss")},
    no_decisions="weighted sums of squared errors; nothing is decided from them on the GPU",
)
