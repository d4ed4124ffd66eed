"""The ops of vgpa, each declared once next to its code: the ``SPEC`` at the end of
``vgpa/ops/<op>.py``. Every layer that handles all ops reads them here instead of keeping its own
list (docs/design.md 4, "Lists of ops"): the exports of ``vgpa``, the Triton probes and their
decision rule (vgpa_tools/gpu_proof), the ops of ``vgpa bench`` and the instruction counts
(vgpa.bench.instructions); tests/test_op_registry.py fails where a layer does not know an op.

An op ``<op>`` is a family of files sharing its name: ``csrc/<op>.{h,cpp,cu}`` and
``csrc/<op>_bindings.cpp`` (its compiled kernels), ``kernels/<op>.py`` (Triton),
``vgpa/reference/<op>.py``, ``vgpa/ops/<op>.py``, ``vgpa_tools/gpu_proof/probes/<op>.py``,
``tests/test_<op>.py`` and ``bench/bench_<op>.py``.

Importing this module imports nothing else of vgpa; ``specs()`` imports the op modules (torch,
never triton).
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Mapping, Optional

PACKAGE = __name__.rsplit(".", 1)[0]  # vgpa.ops


@dataclass(frozen=True)
class InstructionCounts:
    """What vgpa.bench.instructions counts of an op's CPU backend under callgrind.

    kernels: the C++ entry points (``vgpa::<kernel>``, declared in csrc/<op>.h and bound by vgpa._C);
    args: the argument struct they take (``vgpa::<args> const&``); small_sizes: how many of the
    bench entry's CPU sizes, smallest first, ``--sizes small`` counts."""

    kernels: tuple
    args: str
    small_sizes: int


@dataclass(frozen=True)
class OpSpec:
    """One op (a family of files named after it, see the module's docstring).

    exports: {module of vgpa.ops: the names ``vgpa`` exports from it}; its keys are the op's
    modules, whose functions taking a ``backend`` the Triton probes of the op must call (a module
    without exports maps to ()). compiled: the op has C++ and CUDA kernels (csrc/, ``VGPA_OPS`` in
    csrc/bindings.h). no_decisions: None when the op's Triton kernels take discrete decisions, so
    their PTX must hold only rounded arithmetic (docs/design.md 5), else why they take none.
    instructions: what the callgrind counts take of it, None for an op they leave out.
    """

    name: str
    exports: Mapping[str, tuple]
    compiled: bool = True
    no_decisions: Optional[str] = None
    instructions: Optional[InstructionCounts] = None

    def __post_init__(self):
        # stored as pairs, so that the spec stays immutable and hashable
        pairs = tuple((module, tuple(names)) for module, names in dict(self.exports).items())
        object.__setattr__(self, "exports", pairs)

    @property
    def modules(self) -> tuple:
        """The op's modules of vgpa.ops, its own first."""
        return tuple(module for module, _ in self.exports)

    def exported(self) -> dict:
        """{name: object} of everything ``vgpa`` exports from the op (imports its modules)."""
        return {name: getattr(importlib.import_module(f"{PACKAGE}.{module}"), name)
                for module, names in self.exports for name in names}


@functools.cache
def specs() -> tuple:
    """Every op's spec, in name order: the ``SPEC`` of each module of vgpa.ops that has one."""
    package = importlib.import_module(PACKAGE)
    found = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name == "registry":
            continue
        spec = getattr(importlib.import_module(f"{PACKAGE}.{info.name}"), "SPEC", None)
        if spec is not None:
            if spec.name != info.name or spec.modules[:1] != (info.name,):
                raise ValueError(f"{PACKAGE}.{info.name}.SPEC must name its module: name={spec.name!r}, "
                                 f"first module {spec.modules[:1]}")
            found.append(spec)
    return tuple(found)


def spec(name: str) -> OpSpec:
    """The spec of the op ``name``; KeyError naming the registered ops when there is none."""
    for s in specs():
        if s.name == name:
            return s
    raise KeyError(f"no op {name!r} in vgpa.ops; registered: {[s.name for s in specs()]}")
