"""The Triton kernels compiled for real GPUs on a machine without one (docs/design.md 5).

1. Variants. The ops are called over their option space on small CPU tensors, twice (frames
   below and above the pixel chunk sizes), with every Triton launch recorded instead of run
   (kernels/_common.py ``launch``): kernel, argument types as Triton specialises them for the
   CUDA backend, constexprs and compile options. The unique records are the variants the ops
   can launch; nothing lists them by hand. Every @triton.jit kernel of vgpa.kernels must be
   recorded, the variants must not depend on the tensor sizes (else the set would be
   open-ended), and every parameter of every op with a ``backend`` must be probed.
2. Compilation. Each variant is compiled with ``triton.compile`` for sm_80 and sm_90 in worker
   processes without the interpreter and with an empty cache (as in CI). A compile error fails.
3. Resources. ptxas' report (the ``-v`` log of Triton's own ptxas call, same flags) gives
   registers, spills, stack frame and shared memory per variant; no variant may spill or use a
   stack frame; docs/gpu_resources_triton.csv holds them per kernel, dtypes and arch.
4. Decisions. The PTX of every variant of a kernel that takes discrete decisions (all but the
   DPO loss) must hold no contracted multiply-add, approximate division, square root,
   reciprocal or transcendental and no flush-to-zero (vgpa_tools/gpu_proof/ptx.py), except narrow,
   documented exemptions (APPROXIMATE_VALUES). Controls show that the check can fail: a decision
   variant recompiled with FMA contraction and a kernel using float32 ``/`` and ``tl.sqrt`` must
   be flagged. Gradient scatters must use relaxed atomics.

``python -m vgpa_tools.gpu_proof triton`` (or ``main(argv)``) regenerates the table and reports every
check; ``--check`` compares the committed table instead of writing it.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import inspect
import io
import itertools
import json
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
import textwrap
import time
import weakref
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from . import resource_table
from .ptx import KernelResources, forbidden_float_ops, parse_ptxas_log, ptx_functions

REPO = Path(__file__).resolve().parents[2]
TABLE = REPO / "docs" / "gpu_resources_triton.csv"
ARCHS = (80, 90)
KERNEL_PACKAGE = "vgpa.kernels"
OPS_PACKAGE = "vgpa.ops"
COMPILE_WORKERS = 2  # the CI machines have two cores

# Kernel modules without discrete decisions: their PTX may contract and approximate.
NO_DECISIONS = {
    "vgpa.kernels.diffusion_dpo_loss": "weighted sums of squared errors; nothing is decided from them on the GPU",
}

# Atomics that order memory: gradient scatters only add, and nothing reads the sums before the
# launch ends, so they must be relaxed (an acquire-release atomic serialises each warp's scatter).
_ATOMIC = re.compile(r"^\s*(?:@!?%p\d+\s+)?(?:atom|red)\.")
_ORDERED_ATOMIC = re.compile(r"^\s*(?:@!?%p\d+\s+)?(?:atom|red)\.[\w.]*\b(?:acq_rel|acquire|release|sc)\b")


# ---------------------------------------------------------------------------------------------
# Variants


@dataclass(frozen=True)
class Variant:
    """One compiled form of a kernel: what triton.compile needs, in JSON-friendly values.

    signature: (parameter, Triton type) in parameter order, "constexpr" for constants (declared
    constexprs, and integers equal to 1, which Triton specialises at launch). constants:
    (parameter, value) of those; tl dtypes as "tl.dtype:fp32". aligned: pointer parameters
    known 16-byte aligned. options: the launch's compile options (num_warps, enable_fp_fusion).
    Triton's divisibility hints on integers follow the sizes, not the op's options: dropped.
    """

    kernel: str
    signature: tuple
    constants: tuple
    aligned: tuple
    options: tuple

    @property
    def module(self) -> str:
        return self.kernel.split(":")[0]

    @property
    def name(self) -> str:
        return self.kernel.split(":")[1]

    def constant(self, name, default=None):
        return dict(self.constants).get(name, default)

    def dtypes(self) -> str:
        """The floating-point element types of the pointer arguments, in parameter order, joined by +."""
        seen = []
        for _, ty in self.signature:
            if ty.startswith("*") and ty[1:] in ("fp16", "bf16", "fp32", "fp64") and ty[1:] not in seen:
                seen.append(ty[1:])
        return "+".join(seen)

    def describe(self) -> str:
        shown = " ".join(f"{k}={str(v).replace('tl.dtype:', '')}" for k, v in self.constants
                         if k not in self.unit_parameters())
        options = " ".join(f"{k}={v}" for k, v in self.options)
        return f"{self.name}[{self.dtypes()}] {shown} {options}".strip()

    def unit_parameters(self) -> set:
        """Parameters Triton made constants because the launch passed 1 (not declared constexpr)."""
        return {name for name, value in self.constants if (name, "constexpr") in self.signature
                and value == 1 and not _declared_constexpr(self.kernel, name)}

    def declared(self) -> tuple:
        """The variant less Triton's launch-time unit specialisation: what the launcher chose."""
        units = self.unit_parameters()
        return (self.kernel, tuple((n, "i32" if n in units else t) for n, t in self.signature),
                tuple((n, v) for n, v in self.constants if n not in units), self.options)

    def to_json(self) -> dict:
        return {"kernel": self.kernel, "signature": [list(x) for x in self.signature],
                "constants": [list(x) for x in self.constants], "aligned": list(self.aligned),
                "options": [list(x) for x in self.options]}

    @classmethod
    def from_json(cls, data: dict) -> "Variant":
        return cls(data["kernel"], tuple(map(tuple, data["signature"])), tuple(map(tuple, data["constants"])),
                   tuple(data["aligned"]), tuple(map(tuple, data["options"])))


_CONSTEXPR_NAMES: dict[str, set] = {}


def _declared_constexpr(kernel: str, name: str) -> bool:
    if kernel not in _CONSTEXPR_NAMES:
        function = _python_function(_load_kernel(kernel))
        _CONSTEXPR_NAMES[kernel] = {p.name for p in inspect.signature(function).parameters.values()
                                    if "constexpr" in str(p.annotation)}
    return name in _CONSTEXPR_NAMES[kernel]


def _load_kernel(kernel: str):
    module, name = kernel.split(":")
    return getattr(importlib.import_module(module), name)


def _python_function(kernel):
    return getattr(kernel, "fn", kernel)


def _encode_constant(value):
    import triton.language as tl

    if isinstance(value, tl.dtype):
        return f"tl.dtype:{value.name}"
    if isinstance(value, tl.constexpr):
        return _encode_constant(value.value)
    return value


def _decode_constant(value):
    import triton.language as tl

    if isinstance(value, str) and value.startswith("tl.dtype:"):
        return tl.dtype(value.split(":", 1)[1])
    return value


# ---------------------------------------------------------------------------------------------
# Recording the launches of the ops


@dataclass
class Launch:
    """One recorded launch: the kernel object, its grid and arguments as the launcher passed them."""

    kernel: object
    grid: tuple
    args: tuple
    options: dict
    variant: Variant


class Recorder:
    """Collects the launches made while it is active (see ``recording``). Recorded kernels do not
    run; so that the host code after a launch sees plausible numbers (e.g. the DPO loss checks
    that every weight sum is positive), every floating-point tensor a launch receives that the
    probe did not create itself (``keep``) is filled with ones."""

    def __init__(self):
        from triton.backends.compiler import GPUTarget
        from triton.compiler import make_backend

        # Specialisation is the CUDA backend's, whatever device the probe runs on.
        self._backend = make_backend(GPUTarget("cuda", ARCHS[0], 32))
        self.launches: list[Launch] = []
        self._kept: dict[int, weakref.ref] = {}  # storage address -> a tensor of the probe using it

    def keep(self, *tensors):
        """Tensors of the probe (inputs): never filled."""
        for t in tensors:
            if t is not None:
                self._kept[t.untyped_storage().data_ptr()] = weakref.ref(t)
        return tensors[0] if len(tensors) == 1 else tensors

    def _is_kept(self, tensor) -> bool:
        # by address while the probe's tensor lives: a freed address comes back for new buffers
        ref = self._kept.get(tensor.untyped_storage().data_ptr())
        return ref is not None and ref() is not None

    def __call__(self, kernel, grid, args, options):
        self.launches.append(Launch(kernel, tuple(grid), tuple(args), dict(options),
                                    specialise(self._backend, kernel, args, options)))
        self._fill_outputs(args)

    def _fill_outputs(self, args):
        import torch

        for a in args:
            if isinstance(a, torch.Tensor) and a.is_floating_point() and a.numel() and not self._is_kept(a) \
                    and 0 not in a.stride():
                with torch.no_grad():
                    a.fill_(1)

    def variants(self) -> set[Variant]:
        return {launch.variant for launch in self.launches}


def specialise(backend, kernel, args, options) -> Variant:
    """The Variant Triton compiles for ``kernel[grid](*args, **options)`` on ``backend``
    (triton.runtime.jit's binder: the same specialisation rules, the same defaults)."""
    from triton.runtime.jit import KernelParam, native_specialize_impl

    function = _python_function(kernel)
    parameters = inspect.signature(function).parameters
    named = {k: v for k, v in options.items() if k in parameters}
    bound = inspect.signature(function).bind(*args, **named)
    bound.apply_defaults()
    signature, constants, aligned = [], [], []
    for index, (name, parameter) in enumerate(parameters.items()):
        value = bound.arguments[name]
        kp = KernelParam(index, parameter, False, False)
        if kp.is_constexpr:
            ty, attr = "constexpr", None
        elif kp.annotation_type:  # e.g. tl.float64: typed, never specialised
            ty, attr = kp.annotation_type, None
        else:
            ty, attr = native_specialize_impl(backend, value, False, True, True)
        signature.append((name, ty))
        if ty == "constexpr":
            constants.append((name, _encode_constant(value)))
        elif ty.startswith("*") and attr == "D":
            aligned.append(name)
    compile_options = tuple(sorted((k, v) for k, v in options.items() if k not in parameters))
    return Variant(f"{function.__module__}:{function.__name__}", tuple(signature), tuple(constants),
                   tuple(aligned), compile_options)


@contextlib.contextmanager
def recording():
    """Within the block, every Triton launch of vgpa is recorded by the yielded Recorder instead
    of being run."""
    from vgpa.kernels import _common

    recorder = Recorder()
    previous, _common.launch_recorder = _common.launch_recorder, recorder
    try:
        yield recorder
    finally:
        _common.launch_recorder = previous


# ---------------------------------------------------------------------------------------------
# The kernels of vgpa.kernels


def kernel_modules() -> list:
    package = importlib.import_module(KERNEL_PACKAGE)
    return [importlib.import_module(f"{KERNEL_PACKAGE}.{m.name}") for m in pkgutil.iter_modules(package.__path__)]


def _is_jit(obj) -> bool:
    from triton.runtime.jit import KernelInterface

    return isinstance(obj, KernelInterface) and callable(getattr(obj, "fn", None))


def triton_kernels() -> dict[str, object]:
    """{"module:name": kernel} of every @triton.jit function of vgpa.kernels that no other
    @triton.jit function calls: the kernels the launchers launch (a helper is always called)."""
    functions = {}
    for module in kernel_modules():
        for obj in vars(module).values():
            if _is_jit(obj) and obj.fn.__module__ == module.__name__:
                functions[f"{module.__name__}:{obj.fn.__name__}"] = obj
    called = set()
    for obj in functions.values():
        tree = ast.parse(textwrap.dedent(inspect.getsource(obj.fn)))
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id != obj.fn.__name__:
                target = obj.fn.__globals__.get(node.id)
                if _is_jit(target):
                    called.add(f"{target.fn.__module__}:{target.fn.__name__}")
    return {name: obj for name, obj in functions.items() if name not in called}


# ---------------------------------------------------------------------------------------------
# Probes: the ops over their option space


@dataclass(frozen=True)
class Probe:
    """How one public op is called over its option space.

    inputs: its data arguments (tensors, their shapes); options: probed axes, each with its full
    discrete domain (most taken from the op's own constants), including axes that are not
    parameters (dtype, which inputs need a gradient, layouts); host_only: parameters that never
    reach a launch (one value is enough). ``call(recorder, size, **option)`` runs one combination
    forward and backward."""

    function: object
    inputs: tuple
    options: dict
    host_only: tuple
    call: object

    def cases(self):
        keys = list(self.options)
        for values in itertools.product(*(self.options[k] for k in keys)):
            yield dict(zip(keys, values))


SIZES = {  # (height, width) of the geometry probes, elements per DPO sample, points per cloud
    "small": {"frame": (6, 7), "latent": (4, 5), "points": 50},
    # above every pixel chunk (4096) and point block (1024) of the kernels
    "large": {"frame": (66, 68), "latent": (24, 30), "points": 3000},
}
_BATCH, _FRAMES = 2, 3  # never 1: Triton would specialise such sizes as constants


def _generator():
    import torch

    return torch.Generator().manual_seed(0)


def _cameras(rec, batch, frames, height, width):
    import torch

    intrinsics = torch.tensor([[1.2 * width, 0.0, (width - 1) / 2], [0.0, 1.2 * width, (height - 1) / 2],
                               [0.0, 0.0, 1.0]]).repeat(batch, frames, 1, 1)
    extrinsics = torch.eye(4).repeat(batch, frames, 1, 1)
    extrinsics[..., 0, 3] = 0.02 * torch.arange(frames)
    return rec.keep(intrinsics), rec.keep(extrinsics)


def _depth(rec, size, dtype, requires_grad=False):
    import torch

    height, width = SIZES[size]["frame"]
    depth = (2 + torch.rand(_BATCH, _FRAMES, height, width, generator=_generator())).to(dtype)
    return rec.keep(depth.requires_grad_(requires_grad))


def _backward(*terms):
    loss = sum(t.float().sum() for t in terms if t is not None and t.requires_grad)
    if not isinstance(loss, int):
        loss.backward()


def _gradients(*differentiable):
    """Every non-empty set of the differentiable inputs."""
    return [c for n in range(1, len(differentiable) + 1) for c in itertools.combinations(differentiable, n)]


def _call_reprojection_error(rec, size, dtype, error, validity, occlusion_tol, return_map, grads, map_grad):
    import torch
    import vgpa

    depth = _depth(rec, size, dtype, "depth" in grads)
    image = None
    if error == "photometric":
        image = torch.rand(depth.shape[:2] + (3,) + depth.shape[2:], generator=_generator()).to(dtype)
        rec.keep(image.requires_grad_("image" in grads))
    elif "image" in grads:
        return
    if map_grad and not return_map:
        return
    intrinsics, extrinsics = _cameras(rec, *depth.shape)
    result = vgpa.reprojection_error(depth, intrinsics, extrinsics, image=image, error=error, validity=validity,
                                     occlusion_tol=occlusion_tol, return_map=return_map, backend="triton")
    _backward(result.error, result.error_map if map_grad else None)


def _call_mvcs(rec, size, dtype, grads):
    from vgpa.ops import reprojection_error as reprojection

    depth = _depth(rec, size, dtype, "depth" in grads)
    _backward(reprojection.mvcs(depth, *_cameras(rec, *depth.shape), backend="triton"))


def _call_unproject_depth(rec, size, dtype, grads):
    import vgpa

    depth = _depth(rec, size, dtype, "depth" in grads)
    _backward(vgpa.unproject_depth(depth, *_cameras(rec, *depth.shape), backend="triton"))


def _call_depth_to_normals(rec, size, dtype, grads):
    import vgpa

    depth = _depth(rec, size, dtype, "depth" in grads)
    intrinsics, _ = _cameras(rec, *depth.shape)
    _backward(vgpa.depth_to_normals(depth, intrinsics, backend="triton").normals)


def _call_normal_stability(rec, size, dtype, warp, occlusion_tol, return_map, grads, map_grad):
    import vgpa

    if map_grad and not return_map:
        return
    depth = _depth(rec, size, dtype, "depth" in grads)
    intrinsics, extrinsics = _cameras(rec, *depth.shape)
    result = vgpa.normal_stability(depth, intrinsics, extrinsics, warp=warp, occlusion_tol=occlusion_tol,
                                   return_map=return_map, backend="triton")
    _backward(result.error, result.error_map if map_grad else None)


def _cloud(rec, size, point_dtype, color_dtype):
    import torch

    count = SIZES[size]["points"]
    points = torch.randn(_BATCH, count, 3, generator=_generator()) * 0.5
    points[..., 2] += 3
    colors = torch.rand(_BATCH, count, 3, generator=_generator())
    return rec.keep(points.to(point_dtype)), rec.keep(colors.to(color_dtype))


def _call_render_points(rec, size, point_dtype, color_dtype):
    import vgpa

    points, colors = _cloud(rec, size, point_dtype, color_dtype)
    height, width = SIZES[size]["frame"]
    intrinsics, extrinsics = _cameras(rec, _BATCH, _FRAMES, height, width)
    vgpa.render_points(points, colors, intrinsics, extrinsics, height, width, backend="triton")


def _call_render_consistency(rec, size, point_dtype, color_dtype, frame_dtype, masked):
    import torch
    import vgpa

    points, colors = _cloud(rec, size, point_dtype, color_dtype)
    height, width = SIZES[size]["frame"]
    intrinsics, extrinsics = _cameras(rec, _BATCH, _FRAMES, height, width)
    frames = rec.keep(torch.rand(_BATCH, _FRAMES, 3, height, width, generator=_generator()).to(frame_dtype))
    vgpa.render_consistency(points, colors, intrinsics, extrinsics, frames, masked=masked, backend="triton")


def _call_diffusion_dpo_loss(rec, size, dtype, loss_type, weight, layout, segments):
    import torch
    import vgpa
    from vgpa.reference import diffusion_dpo_loss as reference

    height, width = SIZES[size]["latent"]
    shape = (2 * _BATCH, _FRAMES, 2, height, width)  # (2B, F, C, H, W), CogVideoX
    frame_dim = 1

    def tensor():
        x = torch.randn(shape, generator=_generator()).to(dtype)
        if layout == "permuted":  # (2B, C, F, H, W) seen as a view of (2B, F, C, ...): Wan
            x = torch.randn((shape[0], shape[2], shape[1]) + shape[3:], generator=_generator()).to(dtype)
            x = x.transpose(1, 2)
        return rec.keep(x)

    model_pred = tensor().requires_grad_(True)
    reference_free = loss_type in getattr(reference, "REFERENCE_FREE_LOSS_TYPES", ())
    ref_pred = None if reference_free else tensor()
    target = tensor()
    w = None
    if weight == "per element":
        w = rec.keep(torch.rand(shape, generator=_generator()) + 0.5)
    elif weight == "broadcast":  # (2B, F, 1, H, W): read in place with a zero stride
        w = rec.keep(torch.rand(shape[:2] + (1,) + shape[3:], generator=_generator()) + 0.5)
    result = vgpa.diffusion_dpo_loss(model_pred, ref_pred, target, beta=1.0, loss_type=loss_type, weight=w,
                                     segments=segments, frame_dim=frame_dim, backend="triton")
    _backward(result.loss)


def _matches(rec, size, dtype):
    """Two pairs of matches, packed, with F (P, 3, 3): pixel coordinates on a 64-pixel frame."""
    import torch

    count = SIZES[size]["points"]
    x1 = rec.keep((64 * torch.rand(2 * count - 1, 2, generator=_generator())).to(dtype))
    x2 = rec.keep((x1 + torch.rand(x1.shape, generator=_generator())).to(dtype))
    fundamental = rec.keep(torch.randn(_BATCH, 3, 3, generator=_generator()).to(dtype))
    return fundamental, x1, x2, [count, count - 1]


def _call_sampson_distance(rec, size, dtype, squared, backward):
    import vgpa

    fundamental, x1, x2, counts = _matches(rec, size, dtype)
    for x in (fundamental, x1, x2):  # one backward kernel makes every gradient
        x.requires_grad_(backward)
    _backward(vgpa.sampson_distance(fundamental, x1, x2, counts=counts, squared=squared, backend="triton"))


def _call_ransac_inlier_count(rec, size, dtype):
    import torch
    import vgpa

    fundamental, x1, x2, counts = _matches(rec, size, dtype)
    hypotheses = rec.keep(fundamental[:, None] + torch.randn(_BATCH, 20, 3, 3, generator=_generator()).to(dtype))
    vgpa.ransac_inlier_count(hypotheses, x1, x2, threshold=1.0, counts=counts, backend="triton")


def _call_fundamental_matrix(rec, size, dtype, method):
    import torch
    import vgpa

    _, x1, x2, counts = _matches(rec, size, dtype)
    # weights belong to the 8-point fit; RANSAC makes its own (the inlier mask) for the refit
    weights = rec.keep(torch.rand(x1.shape[0], generator=_generator()).to(dtype)) if method == "8point" else None
    vgpa.fundamental_matrix(x1, x2, counts=counts, weights=weights, method=method, iterations=16, backend="triton")


def probes() -> list[Probe]:
    from vgpa.ops import epipolar
    from vgpa.ops import fundamental_matrix as fundamental
    from vgpa.ops import diffusion_dpo_loss as dpo
    from vgpa.ops import render_points as render
    from vgpa.ops import reprojection_error as reprojection
    from vgpa.reference import diffusion_dpo_loss as dpo_reference

    from vgpa.ops import normal_stability as normals

    dtypes = tuple(reprojection.FLOAT_DTYPES)
    geometry_inputs = ("depth", "intrinsics", "extrinsics", "pairs")
    return [
        Probe(reprojection.reprojection_error, geometry_inputs + ("image",),
              {"dtype": dtypes, "error": tuple(reprojection.ERROR_CODES),
               "validity": tuple(reprojection.VALIDITY_MODES),
               "occlusion_tol": (None, 0.1), "return_map": (False, True), "grads": _gradients("depth", "image"),
               "map_grad": (False, True)},
              ("backend",), _call_reprojection_error),
        Probe(reprojection.mvcs, ("depth", "intrinsics", "extrinsics"), {"dtype": dtypes, "grads": _gradients("depth")},
              ("backend",), _call_mvcs),
        Probe(reprojection.unproject_depth, ("depth", "intrinsics", "extrinsics"),
              {"dtype": dtypes, "grads": _gradients("depth")}, ("backend",), _call_unproject_depth),
        Probe(normals.depth_to_normals, ("depth", "intrinsics"), {"dtype": dtypes, "grads": _gradients("depth")},
              ("backend",), _call_depth_to_normals),
        Probe(normals.normal_stability, geometry_inputs,
              {"dtype": dtypes, "warp": (False, True), "occlusion_tol": (None, 0.1), "return_map": (False, True),
               "grads": _gradients("depth"), "map_grad": (False, True)},
              ("backend",), _call_normal_stability),
        Probe(render.render_points, ("points", "colors", "intrinsics", "extrinsics", "height", "width", "counts"),
              {"point_dtype": render.POINT_DTYPES, "color_dtype": render.COLOR_DTYPES},
              ("background", "backend"), _call_render_points),
        Probe(render.render_consistency, ("points", "colors", "intrinsics", "extrinsics", "frames", "counts"),
              {"point_dtype": render.POINT_DTYPES, "color_dtype": render.COLOR_DTYPES,
               "frame_dtype": render.COLOR_DTYPES, "masked": (False, True)},
              ("background", "backend"), _call_render_consistency),
        Probe(epipolar.sampson_distance, ("F", "x1", "x2", "counts"),
              {"dtype": epipolar.DTYPES, "squared": (False, True), "backward": (False, True)},
              ("backend",), _call_sampson_distance),
        Probe(epipolar.ransac_inlier_count, ("F_hypotheses", "x1", "x2", "counts"), {"dtype": epipolar.DTYPES},
              ("threshold", "backend"), _call_ransac_inlier_count),
        Probe(fundamental.fundamental_matrix, ("x1", "x2", "counts", "weights"),
              {"dtype": fundamental.POINT_DTYPES, "method": fundamental.METHODS},
              ("threshold", "iterations", "confidence", "seed", "backend"), _call_fundamental_matrix),
        Probe(dpo.diffusion_dpo_loss, ("model_pred", "ref_pred", "target", "frame_dim"),
              {"dtype": tuple(dpo.FLOAT_DTYPES), "loss_type": tuple(dpo_reference.LOSS_TYPES),
               "weight": (None, "per element", "broadcast"), "layout": ("contiguous", "permuted"),
               "segments": (1, 2)},
              ("beta", "label_smoothing", "pair_weight", "sft_weight", "backend"), _call_diffusion_dpo_loss),
    ]


def unprobed_parameters(probe: Probe) -> set:
    """Parameters of the op that the probe neither varies nor declares host-only."""
    parameters = set(inspect.signature(probe.function).parameters)
    return parameters - set(probe.inputs) - set(probe.options) - set(probe.host_only)


def ops_with_backends() -> set:
    """Every public function of vgpa.ops that takes a ``backend``: each can launch Triton."""
    package = importlib.import_module(OPS_PACKAGE)
    found = set()
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{OPS_PACKAGE}.{info.name}")
        for name, obj in vars(module).items():
            if inspect.isfunction(obj) and not name.startswith("_") and obj.__module__ == module.__name__ \
                    and "backend" in inspect.signature(obj).parameters:
                found.add(f"{module.__name__}:{name}")
    return found


@dataclass
class ProbeRun:
    """The variants each probe size recorded, and the grid of every launch."""

    variants: dict = field(default_factory=dict)  # size -> set of Variant
    grids: list = field(default_factory=list)  # (kernel name, grid) of every launch
    seconds: float = 0.0

    def compiled_variants(self) -> list[Variant]:
        """The variants of the largest probe: there every count (blocks, chunks) exceeds 1, so
        Triton's unit specialisation marks only what the layout makes 1 (unit strides, merged
        axes), as in production."""
        return sorted(self.variants[list(SIZES)[-1]], key=lambda v: json.dumps(v.to_json()))


def run_probes(sizes=tuple(SIZES)) -> ProbeRun:
    """Every probe over its option space at each size, launches recorded. Needs the Triton
    interpreter (backend="triton" on CPU tensors)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("the probes call the ops with backend='triton' on CPU tensors: set TRITON_INTERPRET=1 "
                           "before triton is imported (or use probe_variants())")
    start = time.perf_counter()
    run = ProbeRun()
    for size in sizes:
        with recording() as recorder:
            for probe in probes():
                for case in probe.cases():
                    probe.call(recorder, size, **case)
        run.variants[size] = recorder.variants()
        run.grids.extend((launch.variant.name, launch.grid) for launch in recorder.launches)
    run.seconds = time.perf_counter() - start
    return run


def probe_variants() -> ProbeRun:
    """run_probes here when the interpreter is on (or triton is not imported yet), else in a
    subprocess with it."""
    if os.environ.get("TRITON_INTERPRET") == "1" or "triton" not in sys.modules:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        return run_probes()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, "variants.json")
        env = dict(os.environ, TRITON_INTERPRET="1")
        subprocess.run([sys.executable, "-m", "vgpa_tools.gpu_proof.triton_kernels", "--probe", str(out)], cwd=REPO,
                       env=env, check=True)
        data = json.loads(out.read_text())
    run = ProbeRun(grids=[(name, tuple(grid)) for name, grid in data["grids"]], seconds=data["seconds"])
    run.variants = {size: {Variant.from_json(v) for v in vs} for size, vs in data["variants"].items()}
    return run


# ---------------------------------------------------------------------------------------------
# Compilation (worker processes without the interpreter)


def _compile_task(task: dict) -> dict:
    """Compiles one variant for one arch; returns its ptxas report and what its PTX holds."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    variant = Variant.from_json(task["variant"])
    arch = task["arch"]
    result = {"task": task["id"], "arch": f"sm_{arch}", "error": None, "resources": [], "forbidden": {},
              "atomics": 0, "ordered_atomics": [], "num_warps": None}
    start = time.perf_counter()
    try:
        kernel = _load_kernel(variant.kernel)
        names = [name for name, _ in variant.signature]
        signature = dict(variant.signature)
        constexprs = {(names.index(k),): _decode_constant(v) for k, v in variant.constants}
        attrs = {(names.index(k),): [["tt.divisibility", 16]] for k in variant.aligned}
        knobs.nvidia.dump_ptxas_log = True  # Triton prints its ptxas -v log (same flags as a launch)
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs),
                                      target=GPUTarget("cuda", arch, 32), options=dict(variant.options))
    except Exception as exc:  # every failure is reported, none is raised
        result["error"] = f"{type(exc).__name__}: {exc}"[-3000:]
        result["seconds"] = time.perf_counter() - start
        return result
    result["seconds"] = time.perf_counter() - start
    result["num_warps"] = compiled.metadata.num_warps
    result["resources"] = [asdict(k) for k in parse_ptxas_log(log.getvalue())]
    ptx = compiled.asm["ptx"]
    forbidden = defaultdict(list)
    for body in ptx_functions(ptx).values():
        for rule, instruction in forbidden_float_ops(body):
            forbidden[rule].append(instruction)
    result["forbidden"] = {rule: {"count": len(found), "examples": found[:3]} for rule, found in forbidden.items()}
    result["atomics"] = sum(1 for line in ptx.splitlines() if _ATOMIC.search(line))
    result["ordered_atomics"] = [line.strip() for line in ptx.splitlines() if _ORDERED_ATOMIC.search(line)][:3]
    return result


def _worker_main(tasks_path: str, results_path: str, jobs: int) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    tasks = json.loads(Path(tasks_path).read_text())
    # This parent never imports triton, so forked workers start clean.
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        results = list(pool.map(_compile_task, tasks, chunksize=1))
    Path(results_path).write_text(json.dumps(results))


def compile_tasks(tasks: list[dict], jobs: int = COMPILE_WORKERS) -> list[dict]:
    """Runs _compile_task over ``tasks`` ({"id", "variant", "arch"}) in a subprocess with
    ``jobs`` workers, without the interpreter and with an empty Triton cache."""
    with tempfile.TemporaryDirectory() as tmp:
        tasks_path, results_path = Path(tmp, "tasks.json"), Path(tmp, "results.json")
        tasks_path.write_text(json.dumps(tasks))
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env["TRITON_CACHE_DIR"] = str(Path(tmp, "cache"))  # CI has no persistent cache: compile afresh
        env["PYTHONWARNINGS"] = "ignore"
        completed = subprocess.run([sys.executable, "-m", "vgpa_tools.gpu_proof.triton_kernels", "--worker",
                                    str(tasks_path), str(results_path), "--jobs", str(jobs)],
                                   cwd=REPO, env=env, capture_output=True, text=True)
        if completed.returncode != 0:
            raise RuntimeError(f"the Triton compile workers failed:\n{completed.stdout[-3000:]}"
                               f"{completed.stderr[-3000:]}")
        return json.loads(results_path.read_text())


# ---------------------------------------------------------------------------------------------
# The checks


def _reprojection_log_code():
    from vgpa.kernels.reprojection_error import LOG

    return LOG


# Rules a decision kernel's variant may break, when the broken instructions only make a value
# after every decision is taken: kernel -> (constant, value, rules, why).
APPROXIMATE_VALUES = {
    "vgpa.kernels.reprojection_error:reprojection_error_forward_kernel": (
        "ERROR", _reprojection_log_code, ("contracted multiply-add", "approximate reciprocal", "flush to zero"),
        "the 'log' error: libdevice's log (its fma.rn, and in float64 an rcp.approx.ftz seed that Newton steps "
        "refine) makes the error's value only; validity, occlusion and the error's finiteness are decided on z' and "
        "d themselves before it (kernels/reprojection_error.py _depth_score)"),
}


def exempt_rules(variant: Variant) -> tuple:
    entry = APPROXIMATE_VALUES.get(variant.kernel)
    if entry is None:
        return ()
    constant, value, rules, _ = entry
    return rules if variant.constant(constant) == value() else ()


def makes_decisions(variant: Variant) -> bool:
    return variant.module not in NO_DECISIONS


@dataclass
class Proof:
    """Everything the checks read: the probe run, the compiled variants and the controls."""

    probe: ProbeRun
    variants: list
    results: dict  # (variant, "sm_80") -> result dict
    controls: dict  # name -> result dict
    unit_specialised: dict  # kernel -> result dict
    compile_seconds: float
    triton_version: str

    def compile_errors(self) -> list[str]:
        found = [f"{v.describe()} on {arch}: {r['error']}" for (v, arch), r in self.results.items() if r["error"]]
        found += [f"{kernel} with every integer argument = 1 (sm_80): {r['error']}"
                  for kernel, r in self.unit_specialised.items() if r["error"]]
        return found

    def budget_problems(self) -> list[str]:
        found = []
        for (v, arch), r in self.results.items():
            for k in r["resources"]:
                for problem in KernelResources(**k).problems():
                    found.append(f"{v.describe()} on {arch}: {problem}")
        return found

    def decision_violations(self) -> list[str]:
        found = []
        for (v, arch), r in self.results.items():
            if not makes_decisions(v):
                continue
            allowed = exempt_rules(v)
            for rule, seen in r["forbidden"].items():
                if rule not in allowed:
                    found.append(f"{v.describe()} on {arch}: {seen['count']} x {rule}, e.g. {seen['examples'][0]}")
        return found

    def ordered_atomics(self) -> list[str]:
        return [f"{v.describe()} on {arch}: {r['ordered_atomics'][0]}"
                for (v, arch), r in self.results.items() if r["ordered_atomics"]]

    def unrecorded_kernels(self) -> list[str]:
        recorded = {v.kernel for v in self.variants}
        return sorted(set(triton_kernels()) - recorded)

    def size_dependent_variants(self) -> list[str]:
        """Variants the launchers chose at one probe size only: a constexpr (or an argument type)
        that follows the tensor sizes makes the set of variants open-ended. Triton's own
        specialisation of arguments equal to 1 is not the launchers' choice: left out."""
        declared = {size: {v.declared(): v for v in vs} for size, vs in self.probe.variants.items()}
        keys = [set(d) for d in declared.values()]
        if len(keys) < 2:
            return []
        odd = set.union(*keys) - set.intersection(*keys)
        return sorted(next(d[k] for d in declared.values() if k in d).describe() for k in odd)


def _unit_specialised(variant: Variant) -> Variant:
    """The variant a launch with every integer argument equal to 1 compiles to (Triton makes
    such arguments constants: code that treats them as tensors fails to compile)."""
    signature, constants = [], list(variant.constants)
    for name, ty in variant.signature:
        if ty in ("i32", "i64"):
            signature.append((name, "constexpr"))
            constants.append((name, 1))
        else:
            signature.append((name, ty))
    return replace(variant, signature=tuple(signature), constants=tuple(constants))


# What each control compilation must be flagged for (the result field that must not be empty).
CONTROL_FLAGS = {"contracted": "forbidden", "approximate": "forbidden", "ordered atomic": "ordered_atomics"}


def control_variants(variants: list[Variant]) -> dict[str, Variant]:
    """Compilations the checks must flag (CONTROL_FLAGS): a decision variant recompiled with FMA
    contraction, and the kernels of vgpa_tools/gpu_proof/triton_controls.py."""
    decision = next(v for v in variants if makes_decisions(v) and v.dtypes() == "fp32" and not exempt_rules(v))
    contracted = replace(decision, options=tuple(sorted({**dict(decision.options), "enable_fp_fusion": True}.items())))
    def control(name):
        return Variant(f"vgpa_tools.gpu_proof.triton_controls:{name}",
                       (("x_ptr", "*fp32"), ("y_ptr", "*fp32"), ("n", "i32"), ("BLOCK", "constexpr")),
                       (("BLOCK", 128),), ("x_ptr", "y_ptr"), (("enable_fp_fusion", False),))

    return {"contracted": contracted, "approximate": control("approximate_division_kernel"),
            "ordered atomic": control("ordered_atomic_kernel")}


def prove(jobs: int = COMPILE_WORKERS) -> Proof:
    """Probe, compile every variant for every arch plus the controls, in one batch of tasks."""
    import triton

    probe = probe_variants()
    variants = probe.compiled_variants()
    tasks, owners = [], []
    for v in variants:
        for arch in ARCHS:
            tasks.append({"id": len(tasks), "variant": v.to_json(), "arch": arch})
            owners.append(("variant", (v, f"sm_{arch}")))
    for name, v in control_variants(variants).items():
        tasks.append({"id": len(tasks), "variant": v.to_json(), "arch": ARCHS[0]})
        owners.append(("control", name))
    first = {}
    for v in variants:
        first.setdefault(v.kernel, v)
    for kernel, v in first.items():
        tasks.append({"id": len(tasks), "variant": _unit_specialised(v).to_json(), "arch": ARCHS[0]})
        owners.append(("unit", kernel))
    start = time.perf_counter()
    results = compile_tasks(tasks, jobs)
    seconds = time.perf_counter() - start
    proof = Proof(probe, variants, {}, {}, {}, seconds, triton.__version__)
    for (kind, key), result in zip(owners, sorted(results, key=lambda r: r["task"])):
        {"variant": proof.results, "control": proof.controls, "unit": proof.unit_specialised}[kind][key] = result
    return proof


# ---------------------------------------------------------------------------------------------
# The table


TABLE_COLUMNS = ["module", "kernel", "dtypes", "arch", "variants", "registers", "registers_min", "spill_stores",
                 "spill_loads", "stack_frame", "shared", "threads_per_block", "resident_warps", "max_warps", "triton"]


def resource_rows(proof: Proof) -> list[dict]:
    """One row per (kernel, dtypes, arch): the largest figures over its variants (the smallest
    register count too); resident warps per SM for the variant with the most registers."""
    from .cuda_kernels import SM_LIMITS, resident_warps

    groups = defaultdict(list)
    for (v, arch), r in proof.results.items():
        for k in r["resources"]:
            groups[(v.module, v.name, v.dtypes(), arch)].append((KernelResources(**k), r["num_warps"]))
    rows = []
    for (module, name, dtypes, arch), found in sorted(groups.items()):
        worst, warps = max(found, key=lambda item: item[0].registers)
        threads = 32 * warps
        # the sm_90 build targets sm_90a (ptxas reports that); the limits are sm_90's
        limits_arch = arch if arch in SM_LIMITS else re.sub(r"a$", "", arch)
        resident = resident_warps(replace(worst, arch=limits_arch), threads)
        rows.append({
            "module": module.rsplit(".", 1)[1], "kernel": name, "dtypes": dtypes, "arch": arch,
            "variants": len(found), "registers": worst.registers,
            "registers_min": min(k.registers for k, _ in found),
            "spill_stores": max(k.spill_stores for k, _ in found), "spill_loads": max(k.spill_loads for k, _ in found),
            "stack_frame": max(k.stack_frame for k, _ in found), "shared": max(k.shared for k, _ in found),
            "threads_per_block": threads, "resident_warps": "" if resident is None else resident,
            "max_warps": SM_LIMITS[limits_arch].warps if limits_arch in SM_LIMITS else "",
            "triton": proof.triton_version,
        })
    return rows


def table_text(rows: list[dict]) -> str:
    return resource_table.csv_text(TABLE_COLUMNS, rows)


def table_diff(committed: str, current: str) -> str:
    return resource_table.diff(TABLE, committed, current)


def problems(proof: Proof) -> dict[str, list[str]]:
    """Every failed check, by check."""
    controls = [f"the {name} control was not flagged for {CONTROL_FLAGS[name]} (that check cannot fail)"
                for name, r in proof.controls.items() if r["error"] or not r[CONTROL_FLAGS[name]]]
    found = {
        "kernels never launched by the probes": proof.unrecorded_kernels(),
        "variants that depend on the tensor sizes": proof.size_dependent_variants(),
        "compile errors": proof.compile_errors(),
        "spills or local-memory stack frames": proof.budget_problems(),
        "forbidden floating-point instructions in decision kernels": proof.decision_violations(),
        "ordered (non-relaxed) atomics": proof.ordered_atomics(),
        "controls": controls,
    }
    return {k: v for k, v in found.items() if v}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vgpa_tools.gpu_proof triton", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help=f"do not write {TABLE.relative_to(REPO)}; fail when it differs from the compiled code")
    parser.add_argument("--jobs", type=int, default=COMPILE_WORKERS, help="compile worker processes")
    parser.add_argument("--worker", nargs=2, metavar=("TASKS", "RESULTS"), help=argparse.SUPPRESS)
    parser.add_argument("--probe", metavar="OUT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker_main(*args.worker, args.jobs)
        return 0
    if args.probe:
        run = run_probes()
        Path(args.probe).write_text(json.dumps({"seconds": run.seconds, "grids": run.grids, "variants": {
            size: [v.to_json() for v in vs] for size, vs in run.variants.items()}}))
        return 0

    start = time.perf_counter()
    proof = prove(args.jobs)
    text = table_text(resource_rows(proof))
    status = resource_table.write_or_check(TABLE, text, args.check, "python -m vgpa_tools.gpu_proof triton",
                                             f"{len(proof.variants)} variants x {len(ARCHS)} archs")
    for check, found in problems(proof).items():
        more = f"\n  ... {len(found) - 20} more" if len(found) > 20 else ""
        print(f"{check}:\n  " + "\n  ".join(found[:20]) + more, file=sys.stderr)
        status = 1
    print(f"probe {proof.probe.seconds:.1f} s, compile {proof.compile_seconds:.1f} s, total "
          f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
