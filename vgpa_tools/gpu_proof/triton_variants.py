"""The forms in which Triton compiles vgpa's kernels (docs/design.md 5): a Variant is one kernel
with its argument types, constexprs and compile options as Triton specialises them for the CUDA
backend; the Recorder collects the variants of the launches made while ``recording()`` is active
(kernels/_common.py ``launch``) instead of running them; ``triton_kernels()`` finds every kernel
the launchers can launch, so that one no probe records fails its check.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import inspect
import pkgutil
import textwrap
import weakref
from dataclasses import dataclass

ARCHS = (80, 90)  # every variant is compiled for each; the recorder specialises as for the first
KERNEL_PACKAGE = "vgpa.kernels"


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
        function = _python_function(load_kernel(kernel))
        _CONSTEXPR_NAMES[kernel] = {p.name for p in inspect.signature(function).parameters.values()
                                    if "constexpr" in str(p.annotation)}
    return name in _CONSTEXPR_NAMES[kernel]


def load_kernel(kernel: str):
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


def decode_constant(value):
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

