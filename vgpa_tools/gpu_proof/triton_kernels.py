"""The Triton kernels compiled for real GPUs on a machine without one (docs/design.md 5).

1. Variants (probes/, triton_variants.py). The ops of the registry (vgpa/ops/registry.py) are
   called over their option space on small CPU tensors, twice (frames below and above the pixel
   chunk sizes), with every Triton launch recorded instead of run (kernels/_common.py
   ``launch``): kernel, argument types as Triton specialises them for the CUDA backend,
   constexprs and compile options. The unique records are the variants the ops can launch;
   nothing lists them by hand. Every @triton.jit kernel of vgpa.kernels must be recorded, the
   variants must not depend on the tensor sizes (else the set would be open-ended), and every
   parameter of every op with a ``backend`` must be probed.
2. Compilation (triton_compile.py). Each variant is compiled with ``triton.compile`` for sm_80
   and sm_90 in worker processes without the interpreter and with an empty cache (as in CI). A
   compile error fails.
3. Resources (triton_table.py). ptxas' report (the ``-v`` log of Triton's own ptxas call, same
   flags) gives registers, spills, stack frame and shared memory per variant; no variant may
   spill or use a stack frame; docs/gpu_resources_triton.csv holds them per kernel, dtypes and
   arch.
4. Decisions (triton_rules.py). The PTX of every variant of a kernel that takes discrete
   decisions (every op's unless its spec's ``no_decisions`` says why not: the DPO loss's) must
   hold no contracted multiply-add, approximate division, square root, reciprocal or
   transcendental and no flush-to-zero (vgpa_tools/gpu_proof/ptx.py), except narrow, documented
   exemptions (APPROXIMATE_VALUES). Controls show that the check can fail: a decision variant
   recompiled with FMA contraction and a kernel using float32 ``/`` and ``tl.sqrt`` must be
   flagged. Gradient scatters must use relaxed atomics.

``python -m vgpa_tools.gpu_proof triton`` (or ``main(argv)``) regenerates the table and reports every
check; ``--check`` compares the committed table instead of writing it.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

from . import resource_table
from .probes import ProbeRun, probe_variants
from .ptx import KernelResources
from .triton_compile import COMPILE_WORKERS, compile_tasks
from .triton_rules import CONTROL_FLAGS, control_variants, exempt_rules, makes_decisions, unit_specialised
from .triton_table import REPO, TABLE, resource_rows, table_text
from .triton_variants import ARCHS, triton_kernels


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
        tasks.append({"id": len(tasks), "variant": unit_specialised(v).to_json(), "arch": ARCHS[0]})
        owners.append(("unit", kernel))
    start = time.perf_counter()
    results = compile_tasks(tasks, jobs)
    seconds = time.perf_counter() - start
    proof = Proof(probe, variants, {}, {}, {}, seconds, triton.__version__)
    for (kind, key), result in zip(owners, sorted(results, key=lambda r: r["task"])):
        {"variant": proof.results, "control": proof.controls, "unit": proof.unit_specialised}[kind][key] = result
    return proof


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
    args = parser.parse_args(argv)

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
