"""`vgpa bench`: runs the bench entries (bench/bench_<op>.py, installed as vgpa.bench) under pytest
with pytest-benchmark, one progress line per case, then prints one table per op and the headline
(vgpa against its peers at each op's default size) and writes <op>.csv, .json and the plots
(<op>_speedup.png, <op>_scaling.png) to a new folder of the user's cache, or to --out DIR/<device>/."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import sys
import tempfile
import textwrap
from datetime import datetime, timezone

import torch

from ..ops import registry
from . import report

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
PIPELINES = ("score_video", "score_dataset", "dpo_training_step")
# bench_<op>.py of each: the pipelines first, then every op of the registry (vgpa/ops/registry.py)
OPS = PIPELINES + tuple(spec.name for spec in registry.specs())

# The bench's own pytest configuration. bench/ has no __init__.py (it must not shadow an installed
# `bench` module from the checkout's root), so pytest finds vgpa.bench as a namespace package.
PYTEST_INI = "[pytest]\npython_files = bench_*.py\nconsider_namespace_packages = true\n"

# What --full takes on the idle 2-core CPU machine (bench/README.md says how this was estimated).
FULL_CPU_MINUTES = "about 20 minutes"

DURATIONS = ("on the idle 2-core CPU machine, estimated from the committed run's medians (bench/README.md): "
             f"the default run about 1.5 minutes before the pipeline entries joined it (they lengthen it), --quick under "
             f"1 minute, --full {FULL_CPU_MINUTES}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="vgpa bench", description=__doc__ + "\n\n" + textwrap.fill("Durations " + DURATIONS + ".", 100),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Arguments after -- go to pytest, e.g. -- --benchmark-max-time=2 --benchmark-save=main")
    parser.add_argument("--ops", default=",".join(OPS), help=f"comma-separated subset of {', '.join(OPS)}")
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"),
                        help="auto: cuda when available")
    sweep = parser.add_mutually_exclusive_group()
    sweep.add_argument("--quick", action="store_true",
                       help="one small size per op, every vgpa backend, no torch.compile peers on the CPU, at most "
                            "3 rounds and 0.1 s per case: a smoke run (CI), not for conclusions")
    sweep.add_argument("--full", action="store_true",
                       help=f"every size and implementation of every op ({FULL_CPU_MINUTES} on the 2-core CPU "
                            "machine); without it each op runs at its default size against its peers")
    parser.add_argument("--compile", action="store_true",
                        help="also time the torch.compile peers on the CPU without --full (compiling them takes "
                             "minutes there; on a GPU they are always timed)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for CPU runs")
    parser.add_argument("--rounds", type=int, default=None, help="minimum timed rounds per case "
                        "(pytest-benchmark's --benchmark-min-rounds; default 5)")
    parser.add_argument("--max-time", type=float, default=None, help="seconds of timed rounds per case when "
                        "more than the minimum fit (--benchmark-max-time; default 1)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="write the results to DIR/<device>/ (--out bench/results regenerates the committed "
                             "run of a checkout); default: a new folder <cache>/vgpa/bench/<UTC time>-<device>/, "
                             "<cache> being $XDG_CACHE_HOME or ~/.cache")
    parser.add_argument("--no-save", action="store_true", help="print the tables only; write nothing")
    parser.add_argument("--no-plots", action="store_true", help="write the CSV and JSON but no plots")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="pytest's own output (a line per case, pytest-benchmark's tables, warnings) in place "
                             "of the progress lines")
    parser.add_argument("--from-json", metavar="FILE",
                        help="no run: report a pytest-benchmark JSON (vgpa bench -- --benchmark-json=FILE)")
    parser.add_argument("--replot", metavar="DIR",
                        help="no run: draw the plots of a results folder again from its <op>.json files (e.g. "
                             "bench/results/cpu-2-threads after a change of the plots); the numbers stay as they are")
    args, pytest_args = parser.parse_known_args(argv)
    if pytest_args and pytest_args[0] == "--":
        pytest_args = pytest_args[1:]
    elif pytest_args:
        parser.error(f"unrecognized arguments: {' '.join(pytest_args)} (pytest arguments go after --)")
    ops = [op.strip() for op in args.ops.split(",") if op.strip()]
    unknown = [op for op in ops if op not in OPS]
    if unknown:
        parser.error(f"--ops: unknown op(s) {unknown}; choose from {list(OPS)}")
    if not ops:
        parser.error("--ops: no op given")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.rounds is not None and args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    if args.max_time is not None and not args.max_time > 0:
        parser.error(f"--max-time must be > 0, got {args.max_time}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no GPU here")
    if args.out is not None and args.no_save:
        parser.error("--out and --no-save exclude each other")
    args.ops = ops
    args.sweep = "quick" if args.quick else "full" if args.full else "default"
    return args, pytest_args


def bench_device(choice: str) -> torch.device:
    """The device a run times on (conftest.bench_device's rule)."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def user_json_path(pytest_args: list[str]) -> str | None:
    """The --benchmark-json=FILE the user passed to pytest (it replaces the run's own), if any."""
    for i, arg in enumerate(pytest_args):
        if arg.startswith("--benchmark-json="):
            return arg.split("=", 1)[1]
        if arg == "--benchmark-json" and i + 1 < len(pytest_args):
            return pytest_args[i + 1]
    return None


# pytest-benchmark options that read or write its saved runs (.benchmarks/ of the working folder)
STORAGE_OPTIONS = ("--benchmark-save", "--benchmark-autosave", "--benchmark-compare", "--benchmark-storage")


def pytest_arguments(args, json_path: str, ini_path: str, pytest_args: tuple = ()) -> list[str]:
    """pytest's command line for one bench run: the entries of the chosen ops, this package's own
    configuration (not that of the directory it is run from), the JSON for the report. Unless the
    user's pytest_args save or compare runs, pytest-benchmark's storage goes next to the
    configuration, in the run's temporary folder (the plugin creates it even when it saves
    nothing: never in the working folder)."""
    argv = [os.path.join(BENCH_DIR, f"bench_{op}.py") for op in args.ops]
    argv += ["-c", ini_path, "--rootdir", BENCH_DIR, "-p", "no:cacheprovider",
             "--benchmark-only", f"--benchmark-json={json_path}", "--bench-device", args.device,
             "-v" if args.verbose else "-q"]
    if not any(arg.split("=", 1)[0] in STORAGE_OPTIONS for arg in pytest_args):
        argv.append("--benchmark-storage=file://" + os.path.join(os.path.dirname(os.path.abspath(ini_path)),
                                                                  ".benchmarks"))
    if args.quick:
        argv.append("--quick")
    if args.full:
        argv.append("--full")
    if args.compile:
        argv.append("--bench-compile")
    if args.threads is not None:
        argv += ["--bench-threads", str(args.threads)]
    if args.rounds is not None:
        argv.append(f"--benchmark-min-rounds={args.rounds}")
    if args.max_time is not None:
        argv.append(f"--benchmark-max-time={args.max_time}")
    return argv


# --------------------------------------------------------------------------------------------
# Where results go


def cache_root(environ=None) -> str:
    """<cache>/vgpa/bench: $XDG_CACHE_HOME when it is an absolute path (the XDG rule), else ~/.cache."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "vgpa", "bench")


def new_run_folder(root: str, started: datetime, device: str) -> str:
    """Creates and returns root/<UTC time>-<device>/, never an existing folder (a second run in the
    same second gets a -2 suffix, and so on)."""
    stamp = started.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    os.makedirs(root, exist_ok=True)
    for n in range(1, 1000):
        path = os.path.join(root, f"{stamp}-{device}" + (f"-{n}" if n > 1 else ""))
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"vgpa bench: no free folder name for {stamp}-{device} in {root}")


def results_folder(args, device: str) -> str:
    """Where a run's files go: --out DIR/<device>/, else a new folder of the user's cache."""
    if args.out is not None:
        return os.path.join(args.out, device)
    return new_run_folder(cache_root(), args.started, device)


# --------------------------------------------------------------------------------------------
# Report


def sweep_note(args, device: torch.device) -> str | None:
    """What a default run left out, and the command that runs it."""
    if args.sweep != "default":
        return None
    from . import harness

    entries = [importlib.import_module(f"{__package__}.bench_{op}").ENTRY for op in args.ops]
    subset = list(args.ops) != list(OPS)
    ran = sum(len(harness.cases(e, device, "default", args.compile)) for e in entries)
    full = sum(len(harness.cases(e, device, "full")) for e in entries)
    left_out = ["more sizes", "vgpa's pure-PyTorch backend and variants"]
    if device.type != "cuda" and not args.compile:
        left_out.insert(0, "torch.compile peers (--compile adds them)")
    duration = f", {FULL_CPU_MINUTES} on the 2-core CPU machine" if device.type != "cuda" and not subset else ""
    command = "vgpa bench --full" + (f" --ops {','.join(args.ops)}" if subset else "")
    return (f"This run timed each op at its default size ({ran} cases); left out: {', '.join(left_out)}. "
            f"`{command}` runs all {full} cases{duration}.")


def rows_of_results(op: str, rows: list[dict]) -> list[dict]:
    """The rows of a results folder's <op>.json as the plots take them: what the files leave out
    (the size axis's name, the bytes moved, the peers each implementation is compared with) is
    restored from the op's entry and the rows' own columns."""
    entry = importlib.import_module(f"{__package__}.bench_{op}").ENTRY
    names = {impl.name: impl for impl in entry.impls}
    out = []
    for row in rows:
        row = dict(row, _x_label=entry.x_label, _baseline=entry.baseline)
        impl = names.get(row["impl"].removesuffix(" [graph]"))
        row["_versus"] = list(impl.versus) if impl is not None and impl.versus is not None else None
        if row.get("GB/s") is not None:
            row["_bytes"] = row["GB/s"] * 1e9 * row["median_ms"] / 1e3
        out.append(row)
    return out


def replot(folder: str) -> int:
    """Draws the plots of every <op>.json in folder again."""
    written = []
    for op in OPS:
        path = os.path.join(folder, f"{op}.json")
        if os.path.exists(path):
            with open(path) as f:
                written += report.write_plots(op, rows_of_results(op, json.load(f)["rows"]), folder)
    if not written:
        print(f"vgpa bench: no <op>.json of {', '.join(OPS)} in {folder}", file=sys.stderr)
        return 1
    print("\n".join(["wrote"] + written))
    return 0


def write_report(data: dict, args, note: str | None = None) -> int:
    """Prints the tables and the headline of a pytest-benchmark JSON and writes the files; the
    device is the one the run recorded."""
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
    if getattr(args, "sweep", None):
        env["sweep"] = args.sweep
    for op, op_rows in rows.items():
        print(f"\n{op} on {env['device']} (median and IQR of the timed rounds in ms; "
              f"x vs P = P's median / this median; peak_mib = peak memory of one call)")
        print(report.table(op_rows), flush=True)
        stages = report.stage_rows(op_rows)
        if stages:
            print(f"\n{op} by stage (median of each stage in ms; share = of the stages' sum)")
            print(report.table(stages), flush=True)
    print(f"\nHeadline on {env['device']}: vgpa against its peers (x = the peer's median / vgpa's median, "
          "same size and mode)")
    print(report.headline_table(rows))
    if note:
        print("\n" + note)
    if args.no_save:
        print("\n--no-save: nothing written", flush=True)
        return 0
    folder = results_folder(args, env["device"])
    paths = []
    for op, op_rows in rows.items():
        paths += report.write_results(op, op_rows, folder, env)
        if not args.no_plots:
            paths += report.write_plots(op, op_rows, folder)
    print(f"\nResults ({len(paths)} files): {os.path.abspath(folder)}", flush=True)
    return 0


@contextlib.contextmanager
def terminal_stream():
    """A stream to the terminal's stderr that pytest's output capture does not take over: a
    duplicate of the stderr descriptor (capture redirects descriptor 2 itself)."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # stderr replaced by an object without a descriptor
        yield sys.stderr
        return
    stream = os.fdopen(os.dup(fd), "w", buffering=1, encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
                       errors="replace")
    try:
        yield stream
    finally:
        stream.close()


def run_pytest(args, pytest_args: list[str], tmp: str, stream) -> tuple:
    """Runs pytest on the bench with the progress plugin; returns (exit status, the JSON's path,
    the plugin). Without --verbose, pytest's own terminal output goes to tmp/pytest.log, shown
    when the run fails in a way the progress lines do not explain (a usage error, no case
    collected, an internal error)."""
    import pytest

    from .progress import Progress

    ini_path = os.path.join(tmp, "pytest.ini")
    with open(ini_path, "w") as f:
        f.write(PYTEST_INI)
    # a --benchmark-json of the user's wins over the run's own (pytest keeps the last): read that one
    json_path = user_json_path(pytest_args) or os.path.join(tmp, "benchmarks.json")
    argv = pytest_arguments(args, json_path, ini_path, pytest_args) + pytest_args
    plugin = Progress(stream, lines=not args.verbose)
    if args.verbose:
        return int(pytest.main(argv, plugins=[plugin])), json_path, plugin
    log_path = os.path.join(tmp, "pytest.log")
    # pytest writes its terminal output to sys.stdout, pytest-benchmark its notes to sys.stderr
    with open(log_path, "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        status = int(pytest.main(argv, plugins=[plugin]))
    if status != 0 and not plugin.failures:
        with open(log_path) as log:
            stream.write(log.read())
    return status, json_path, plugin


def main(argv=None) -> int:
    args, pytest_args = parse_args(argv)
    args.started = datetime.now(timezone.utc)
    if args.replot:
        return replot(args.replot)
    if args.from_json:
        args.sweep = None  # unknown: the saved run's own
        with open(args.from_json) as f:
            return write_report(json.load(f), args)
    missing = [name for name in ("pytest", "pytest_benchmark") if importlib.util.find_spec(name) is None]
    if missing:  # pytest loads pytest-benchmark's plugin from its entry point
        print(f"vgpa bench needs {' and '.join(missing)}: pip install 'vgpa[bench]'", file=sys.stderr)
        return 2
    device = bench_device(args.device)
    with tempfile.TemporaryDirectory(prefix="vgpa-bench-") as tmp, terminal_stream() as stream:
        print(f"vgpa bench: {args.sweep} run of {', '.join(args.ops)} on {device.type}"
              + (f" ({args.threads or torch.get_num_threads()} threads)" if device.type == "cpu" else ""),
              file=stream, flush=True)
        status, json_path, plugin = run_pytest(args, pytest_args, tmp, stream)
        if plugin.failures and not args.verbose:
            stream.write("\n" + plugin.failure_report())
        if not os.path.exists(json_path):
            print(f"vgpa bench: pytest exited with status {status} before recording any case", file=sys.stderr)
            return status or 1
        with open(json_path) as f:
            data = json.load(f)
    reported = write_report(data, args, sweep_note(args, device))
    if status != 0:
        # the report holds the cases that passed; a failed case disagrees with the reference or raised
        failed = f": {len(plugin.failures)} case(s) failed (reported above)" if plugin.failures else ""
        print(f"vgpa bench: pytest exited with status {status}{failed}", file=sys.stderr)
        return status
    return reported


if __name__ == "__main__":
    raise SystemExit(main())
