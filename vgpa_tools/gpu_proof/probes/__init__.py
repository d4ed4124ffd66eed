"""The probes: every op of the registry (vgpa/ops/registry.py) called over its option space on
small CPU tensors under the Triton interpreter, with its launches recorded (docs/design.md 5).
Each op's probes are ``probes()`` of the module named after it here (``probes/<op>.py``); what
they share is in ``common.py``. Every function of an op's modules that takes a ``backend`` must
be probed, with every parameter either varied or declared host-only.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from vgpa.ops import registry

from ..triton_variants import Variant, recording
from .common import SIZES, Probe

REPO = Path(__file__).resolve().parents[3]


def probe_module(op: str):
    """vgpa_tools/gpu_proof/probes/<op>.py."""
    return importlib.import_module(f"{__name__}.{op}")


def probes() -> list[Probe]:
    """The probes of every registered op, in the registry's order."""
    return [probe for spec in registry.specs() for probe in probe_module(spec.name).probes()]


def unprobed_parameters(probe: Probe) -> set:
    """Parameters of the op that the probe neither varies nor declares host-only."""
    parameters = set(inspect.signature(probe.function).parameters)
    return parameters - set(probe.inputs) - set(probe.options) - set(probe.host_only)


def functions_with_backends(spec) -> set:
    """"module:name" of every public function of the op's modules that takes a ``backend``:
    each can launch Triton."""
    found = set()
    for module_name in spec.modules:
        module = importlib.import_module(f"{registry.PACKAGE}.{module_name}")
        for name, obj in vars(module).items():
            if inspect.isfunction(obj) and not name.startswith("_") and obj.__module__ == module.__name__ \
                    and "backend" in inspect.signature(obj).parameters:
                found.add(f"{module.__name__}:{name}")
    return found


def ops_with_backends() -> set:
    """functions_with_backends of every registered op."""
    return set().union(*(functions_with_backends(spec) for spec in registry.specs()))


def probed_functions(probe_list) -> set:
    return {f"{p.function.__module__}:{p.function.__name__}" for p in probe_list}


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

    def to_json(self) -> dict:
        return {"seconds": self.seconds, "grids": self.grids,
                "variants": {size: [v.to_json() for v in vs] for size, vs in self.variants.items()}}

    @classmethod
    def from_json(cls, data: dict) -> "ProbeRun":
        return cls({size: {Variant.from_json(v) for v in vs} for size, vs in data["variants"].items()},
                   [(name, tuple(grid)) for name, grid in data["grids"]], data["seconds"])


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
    subprocess with it (``python -m vgpa_tools.gpu_proof.probes OUT``)."""
    if os.environ.get("TRITON_INTERPRET") == "1" or "triton" not in sys.modules:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        return run_probes()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, "variants.json")
        env = dict(os.environ, TRITON_INTERPRET="1")
        subprocess.run([sys.executable, "-m", __name__, str(out)], cwd=REPO, env=env, check=True)
        return ProbeRun.from_json(json.loads(out.read_text()))
