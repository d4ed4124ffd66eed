"""Compiling Triton variants for real GPUs without one (docs/design.md 5): ``compile_tasks`` runs
``triton.compile`` on each task's variant for its arch in worker processes, without the
interpreter and with an empty cache (as in CI), and returns each compilation's ptxas report and
what its PTX holds (forbidden floating-point instructions, atomics). A compile error is reported,
never raised.

    python -m vgpa_tools.gpu_proof.triton_compile TASKS RESULTS [--jobs N]   (the workers' parent)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

from .ptx import ATOMIC, ORDERED_ATOMIC, forbidden_float_ops, parse_ptxas_log, ptx_functions
from .triton_variants import Variant, decode_constant, load_kernel

REPO = Path(__file__).resolve().parents[2]
COMPILE_WORKERS = 2  # the CI machines have two cores


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
        kernel = load_kernel(variant.kernel)
        names = [name for name, _ in variant.signature]
        signature = dict(variant.signature)
        constexprs = {(names.index(k),): decode_constant(v) for k, v in variant.constants}
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
    result["atomics"] = sum(1 for line in ptx.splitlines() if ATOMIC.search(line))
    result["ordered_atomics"] = [line.strip() for line in ptx.splitlines() if ORDERED_ATOMIC.search(line)][:3]
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
        completed = subprocess.run([sys.executable, "-m", __name__, str(tasks_path), str(results_path),
                                    "--jobs", str(jobs)],
                                   cwd=REPO, env=env, capture_output=True, text=True)
        if completed.returncode != 0:
            raise RuntimeError(f"the Triton compile workers failed:\n{completed.stdout[-3000:]}"
                               f"{completed.stderr[-3000:]}")
        return json.loads(results_path.read_text())



if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name}")
    parser.add_argument("tasks")
    parser.add_argument("results")
    parser.add_argument("--jobs", type=int, default=COMPILE_WORKERS)
    args = parser.parse_args()
    _worker_main(args.tasks, args.results, args.jobs)
