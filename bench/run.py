"""`vgpa bench`: runs the bench entries (bench/bench_<op>.py, installed as vgpa.bench) under pytest
with pytest-benchmark, then prints one table per op and writes bench/results/<device>/<op>.csv,
.json and the plots (<op>_speedup.png, <op>_scaling.png)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile

import torch

from . import report

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
OPS = ("diffusion_dpo_loss", "reprojection_error", "normal_stability", "render_points", "epipolar")  # bench_<op>.py

# The bench's own pytest configuration. bench/ has no __init__.py (it must not shadow an installed
# `bench` module from the checkout's root), so pytest finds vgpa.bench as a namespace package.
PYTEST_INI = "[pytest]\npython_files = bench_*.py\nconsider_namespace_packages = true\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="vgpa bench", description=__doc__,
        epilog="Arguments after -- go to pytest, e.g. -- --benchmark-max-time=2 --benchmark-save=main")
    parser.add_argument("--ops", default=",".join(OPS), help=f"comma-separated subset of {', '.join(OPS)}")
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"),
                        help="auto: cuda when available")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes only, no torch.compile peers on the CPU (a smoke run, e.g. in CI)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for CPU runs")
    parser.add_argument("--rounds", type=int, default=None, help="minimum timed rounds per case "
                        "(pytest-benchmark's --benchmark-min-rounds; default 5)")
    parser.add_argument("--max-time", type=float, default=None, help="seconds of timed rounds per case when "
                        "more than the minimum fit (--benchmark-max-time; default 1)")
    parser.add_argument("--out", default=os.path.join("bench", "results"),
                        help="results folder (default bench/results)")
    parser.add_argument("--no-save", action="store_true", help="print the tables only")
    parser.add_argument("--no-plots", action="store_true", help="write the CSV and JSON but no plots")
    parser.add_argument("--from-json", metavar="FILE",
                        help="no run: report a pytest-benchmark JSON (pytest bench/ --benchmark-json=FILE)")
    args, pytest_args = parser.parse_known_args(argv)
    if pytest_args and pytest_args[0] == "--":
        pytest_args = pytest_args[1:]
    elif pytest_args:
        parser.error(f"unrecognized arguments: {' '.join(pytest_args)} (pytest arguments go after --)")
    ops = [op.strip() for op in args.ops.split(",") if op.strip()]
    unknown = [op for op in ops if op not in OPS]
    if unknown:
        parser.error(f"--ops: unknown op(s) {unknown}; choose from {list(OPS)}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.rounds is not None and args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no GPU here")
    args.ops = ops
    return args, pytest_args


def pytest_arguments(args, json_path: str, ini_path: str) -> list[str]:
    """pytest's command line for one bench run: the entries of the chosen ops, this package's own
    configuration (not that of the directory it is run from), the JSON for the report."""
    argv = [os.path.join(BENCH_DIR, f"bench_{op}.py") for op in args.ops]
    argv += ["-c", ini_path, "--rootdir", BENCH_DIR, "-p", "no:cacheprovider",
             "--benchmark-only", f"--benchmark-json={json_path}", "--bench-device", args.device, "-q"]
    if args.quick:
        argv.append("--quick")
    if args.threads is not None:
        argv += ["--bench-threads", str(args.threads)]
    if args.rounds is not None:
        argv.append(f"--benchmark-min-rounds={args.rounds}")
    if args.max_time is not None:
        argv.append(f"--benchmark-max-time={args.max_time}")
    return argv


def write_report(data: dict, args) -> int:
    """Prints the tables and writes the files of a pytest-benchmark JSON; the device is the one the
    run recorded."""
    benchmarks = data.get("benchmarks", [])
    rows = report.rows_from_benchmarks(benchmarks)
    if not rows:
        print("vgpa bench: the run recorded no bench case", file=sys.stderr)
        return 1
    infos = [b["extra_info"] for b in benchmarks if "op" in b.get("extra_info", {})]
    device = torch.device(infos[0]["device"])
    threads = infos[0]["threads"]
    env = report.environment(device, data.get("machine_info"))
    env["threads"] = threads
    env["device"] = report.device_label(device, threads)
    folder = os.path.join(args.out, env["device"])
    for op, op_rows in rows.items():
        print(f"\n{op} on {env['device']} (median and IQR of the timed rounds in ms; "
              f"x vs P = P's median / this median; peak_mib = peak memory of one call)")
        print(report.table(op_rows))
        if not args.no_save:
            paths = report.write_results(op, op_rows, folder, env)
            if not args.no_plots:
                paths += report.write_plots(op, op_rows, folder)
            print("wrote " + ", ".join(paths))
    return 0


def main(argv=None) -> int:
    args, pytest_args = parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            return write_report(json.load(f), args)
    missing = [name for name in ("pytest", "pytest_benchmark") if importlib.util.find_spec(name) is None]
    if missing:  # pytest loads pytest-benchmark's plugin from its entry point
        print(f"vgpa bench needs {' and '.join(missing)}: pip install 'vgpa[bench]'", file=sys.stderr)
        return 2
    import pytest

    with tempfile.TemporaryDirectory(prefix="vgpa-bench-") as tmp:
        ini_path = os.path.join(tmp, "pytest.ini")
        with open(ini_path, "w") as f:
            f.write(PYTEST_INI)
        json_path = os.path.join(tmp, "benchmarks.json")
        status = int(pytest.main(pytest_arguments(args, json_path, ini_path) + pytest_args))
        if not os.path.exists(json_path):
            print(f"vgpa bench: pytest exited with status {status} before recording any case", file=sys.stderr)
            return status or 1
        with open(json_path) as f:
            data = json.load(f)
    reported = write_report(data, args)
    if status != 0:
        # the report holds the cases that passed; a failed case disagrees with the reference or raised
        print(f"vgpa bench: pytest exited with status {status}: see the failed cases above", file=sys.stderr)
        return status
    return reported


if __name__ == "__main__":
    raise SystemExit(main())
