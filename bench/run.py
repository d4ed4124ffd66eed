"""`vgpa bench`: every bench entry on whatever hardware is here, one table per op, results
under bench/results/<device>/<op>.csv|json."""

from __future__ import annotations

import argparse
import importlib

import torch

from .common import print_table, write_results

# op name -> module (bench/bench_<op>.py) exposing run(device, quick) -> list of rows
ENTRIES = {
    "diffusion_dpo_loss": "vgpa.bench.bench_diffusion_dpo_loss",
    "epipolar": "vgpa.bench.bench_epipolar",
    "normal_stability": "vgpa.bench.bench_normal_stability",
    "render_points": "vgpa.bench.bench_render_points",
    "reprojection_error": "vgpa.bench.bench_reprojection_error",
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="vgpa bench", description=__doc__)
    parser.add_argument("--ops", default=",".join(ENTRIES), help=f"comma-separated subset of {', '.join(ENTRIES)}")
    parser.add_argument("--device", default="auto", help="'cuda', 'cpu' or 'auto' (cuda when available)")
    parser.add_argument("--quick", action="store_true", help="small sizes only (a smoke run, e.g. in CI)")
    parser.add_argument("--out", default="bench/results", help="results folder (default bench/results)")
    parser.add_argument("--no-save", action="store_true", help="print the tables only")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    ops = [op.strip() for op in args.ops.split(",") if op.strip()]
    unknown = [op for op in ops if op not in ENTRIES]
    if unknown:
        raise SystemExit(f"vgpa bench: unknown op(s) {unknown}; choose from {list(ENTRIES)}")
    for op in ops:
        rows = importlib.import_module(ENTRIES[op]).run(device, quick=args.quick)
        print_table(f"{op} on {device} (times in ms; speedup = eager time / time)", rows)
        if not args.no_save:
            folder = write_results(op, rows, device, args.out)
            print(f"wrote {folder}/{op}.csv and .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
