"""From pytest-benchmark's JSON to what `vgpa bench` prints and writes: one row per (op, size, mode,
implementation) with the median time, its spread and the speedup against every peer of the same
size and mode; tables, bench/results/<device>/<op>.csv|json and the plots."""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import re
import subprocess

import torch


def device_label(device: torch.device, threads: int | None = None) -> str:
    """A folder-safe name of the hardware, e.g. 'nvidia-h100-80gb-hbm3' or 'cpu-2-threads'."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu-{threads or torch.get_num_threads()}-threads"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def speedup_column(peer: str) -> str:
    return f"x vs {peer}"


def rows_from_benchmarks(benchmarks: list[dict]) -> dict[str, list[dict]]:
    """{op: rows} from pytest-benchmark's "benchmarks" list (the bench's extra_info names each
    case). Times are in ms; "x vs P" is P's median over this row's median for every peer P timed
    at the same size and mode; GB/s and of_copy where the entry reports bytes moved."""
    cases = [b for b in benchmarks if "op" in b.get("extra_info", {})]
    rows: dict[str, list[dict]] = {}
    for b in cases:
        info, stats = b["extra_info"], b["stats"]
        row = {
            "size": info["size"], "x": info["x"], "mode": info["mode"], "impl": info["impl"], "peer": info["peer"],
            "median_ms": stats["median"] * 1e3, "iqr_ms": stats["iqr"] * 1e3, "min_ms": stats["min"] * 1e3,
            "rounds": stats["rounds"], "peak_mib": info.get("peak_mib"),
        }
        if "bytes" in info:
            row["_bytes"] = info["bytes"]
            row["GB/s"] = info["bytes"] / stats["median"] / 1e9
            if info.get("copy_gbs"):
                row["copy GB/s"] = info["copy_gbs"]
                row["of_copy"] = row["GB/s"] / info["copy_gbs"]
        row["what"] = info["what"]
        row["_baseline"] = info["baseline"]
        row["_x_label"] = info["x_label"]
        row["_default_size"] = info.get("default_size", False)
        row["_versus"] = info.get("versus")
        row["_stages"] = info.get("stages")
        rows.setdefault(info["op"], []).append(row)
    for op_rows in rows.values():
        for row in op_rows:
            peers = [r for r in op_rows if r["peer"] and r["size"] == row["size"] and r["mode"] == row["mode"]]
            for peer in sorted(peers, key=lambda r: r["impl"] != row["_baseline"]):  # the baseline first
                row[speedup_column(peer["impl"])] = peer["median_ms"] / row["median_ms"]
    for op_rows in rows.values():
        op_rows.sort(key=lambda r: (r["x"], r["size"], r["mode"]))
    return rows


def public(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith("_")}


def stage_rows(rows: list[dict]) -> list[dict]:
    """A pipeline's breakdown: for each row whose implementation recorded stages (Impl.stages),
    one row per stage with its median time and its share: of the stage "wall" where the
    implementation records one (its stages overlap, e.g. a reading thread's), else of the
    stages' sum (medians of each stage apart: close to, not equal to, the row's own median)."""
    out = []
    for row in rows:
        stages = row.get("_stages") or {}
        total = stages["wall"] if "wall" in stages else sum(stages.values())
        for stage, seconds in stages.items():
            out.append({"size": row["size"], "impl": row["impl"], "stage": stage, "median_ms": seconds * 1e3,
                        "share": seconds / total if total > 0 else float("nan")})
    return out


def format_value(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "peer" if v else "vgpa"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def table(rows: list[dict], columns: list[str] | None = None) -> str:
    """Right-aligned text table of the rows (every key that any row has, in first-seen order)."""
    if not rows:
        return ""
    fields = columns or list(dict.fromkeys(k for row in rows for k in public(row) if k not in ("what", "x")))
    cells = [[format_value(row.get(k)) for k in fields] for row in rows]
    widths = [max(len(k), *(len(r[i]) for r in cells)) for i, k in enumerate(fields)]
    lines = ["  ".join(k.rjust(w) for k, w in zip(fields, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def headline(rows: dict[str, list[dict]]) -> list[dict]:
    """One row per op, mode and vgpa implementation at the op's default size (every size where the
    run has no default size, as --quick): vgpa's median and its speedup against each peer it is
    compared with (its ``versus`` peers, else every peer of the size and mode)."""
    out = []
    for op, op_rows in rows.items():
        chosen = [r for r in op_rows if r.get("_default_size")] or op_rows
        for row in chosen:
            if row["peer"]:
                continue
            peers = [k[len(speedup_column("")):] for k in row if k.startswith(speedup_column(""))]
            if row.get("_versus") is not None:
                peers = [p for p in peers if p in row["_versus"]]
            against = ", ".join(f"{format_value(row[speedup_column(p)])}x {p}" for p in peers)
            out.append({"op": op, "mode": row["mode"], "size": row["size"], "vgpa": row["impl"],
                        "median": format_ms(row["median_ms"]),
                        "against its peers": against or ("no peer (for scale)" if row.get("_versus") == [] else "-")})
    return out


def format_ms(ms: float) -> str:
    return f"{ms * 1e3:.3g} us" if ms < 1 else f"{ms:.3g} ms" if ms < 1000 else f"{ms / 1e3:.3g} s"


def headline_table(rows: dict[str, list[dict]]) -> str:
    """The headline rows as a left-aligned text table."""
    lines = headline(rows)
    if not lines:
        return "(no vgpa row)"
    fields = list(lines[0])
    widths = [max(len(k), *(len(r[k]) for r in lines)) for k in fields]
    text = ["  ".join(k.ljust(w) for k, w in zip(fields, widths)).rstrip()]
    text += ["  ".join(r[k].ljust(w) for k, w in zip(fields, widths)).rstrip() for r in lines]
    return "\n".join(text)


def commit() -> str | None:
    """The git commit of the bench's tree ("-dirty" with uncommitted changes), None outside a checkout."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=os.path.dirname(__file__),
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment(device: torch.device, machine_info: dict | None = None) -> dict:
    env = {"device": device_label(device), "torch": torch.__version__, "python": platform.python_version(),
           "threads": torch.get_num_threads(), "commit": commit()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    elif machine_info and machine_info.get("cpu"):
        env["cpu"] = machine_info["cpu"].get("brand_raw")
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    return env


def write_results(op: str, rows: list[dict], folder: str, env: dict) -> list[str]:
    """<folder>/<op>.csv and <op>.json, and <op>_stages.csv where rows recorded stages; returns
    the paths."""
    os.makedirs(folder, exist_ok=True)
    all_rows, rows = rows, [public(r) for r in rows]
    fields = list(dict.fromkeys(k for row in rows for k in row))
    paths = [os.path.join(folder, f"{op}.csv"), os.path.join(folder, f"{op}.json")]
    with open(paths[0], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    with open(paths[1], "w") as f:
        json.dump({"environment": env, "rows": rows}, f, indent=2)
    stages = stage_rows(all_rows)
    if stages:
        paths.append(os.path.join(folder, f"{op}_stages.csv"))
        with open(paths[-1], "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(stages[0]))
            writer.writeheader()
            writer.writerows(stages)
    return paths


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_speedups(op: str, rows: list[dict], path: str) -> str | None:
    """speedup_figure written to path; None when there is no peer."""
    fig = speedup_figure(op, rows)
    if fig is None:
        return None
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def speedup_figure(op: str, rows: list[dict]):
    """Bars of every vgpa implementation's speedup against each peer it is compared with (one panel
    per peer; every peer unless the row names its own, ``versus``), per size and mode, on a log axis
    with the break-even line at 1. None when there is no peer."""
    plt = _pyplot()
    from matplotlib import ticker

    peers = list(dict.fromkeys(r["impl"] for r in rows if r["peer"]))
    # an implementation compared with no peer (timed for scale) has no bar to draw
    ours = list(dict.fromkeys(r["impl"] for r in rows if not r["peer"] and r.get("_versus") != []))
    groups = list(dict.fromkeys((r["size"], r["mode"]) for r in rows))
    if not peers or not ours:
        return None
    # the panels share their x axis, so the sizes are labelled once, under the last panel
    fig, axes = plt.subplots(len(peers), 1, squeeze=False, sharex=True,
                             figsize=(max(6.0, 0.45 * len(groups) * len(ours) + 4), 2.8 * len(peers) + 1.2))
    width = 0.8 / len(ours)
    for ax, peer in zip(axes[:, 0], peers):
        column = speedup_column(peer)
        for k, impl in enumerate(ours):
            values = []
            for size, mode in groups:
                match = [r for r in rows if r["impl"] == impl and r["size"] == size and r["mode"] == mode]
                compared = match and (match[0].get("_versus") is None or peer in match[0]["_versus"])
                values.append(match[0].get(column, float("nan")) if compared else float("nan"))
            bars = ax.bar([g + (k - (len(ours) - 1) / 2) * width for g in range(len(groups))], values, width,
                          label=impl)
            ax.bar_label(bars, labels=[f"{v:.3g}" if math.isfinite(v) else "" for v in values], fontsize=6)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        # plain numbers at 1, 2 and 5 of each decade (3, not 3 x 10^0), and every tick labelled where
        # the axis spans less than a decade
        plain = ticker.FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(plain)
        low, high = ax.get_ylim()
        ax.set_ylim(low, high * 1.3)  # room for the value above the tallest bar
        ax.yaxis.set_minor_formatter(plain if high * 1.3 < 10 * low else ticker.NullFormatter())
        ax.set_ylabel(f"speedup vs\n{peer}")
        ax.grid(axis="y", which="both", alpha=0.3)
    bottom = axes[-1, 0]
    bottom.set_xticks(range(len(groups)))
    bottom.set_xticklabels(tick_labels(groups), fontsize=7, rotation=30, ha="right", rotation_mode="anchor")
    axes[0, 0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes[0, 0].set_title(f"{op}: speedup (peer median / vgpa median)")
    fig.tight_layout()
    return fig


def tick_labels(groups: list[tuple[str, str]]) -> list[str]:
    """One label per (size, mode) bar group: the size, and the mode where the op has several (the
    plot rotates them, so that long shapes do not run into each other)."""
    modes = {mode for _, mode in groups}
    return [f"{size} {mode}" if len(modes) > 1 else size for size, mode in groups]


def roof_ms(bytes_moved: float, copy_gbs: float) -> float:
    """Time a call moving bytes_moved would take at the copy bandwidth, in ms."""
    return bytes_moved / (copy_gbs * 1e9) * 1e3


def plot_scaling(op: str, rows: list[dict], path: str) -> str | None:
    """Median time against problem size on log-log axes, one line per implementation, one panel
    per mode; where rows carry GB/s and a copy bandwidth, the time a copy-bandwidth-bound call
    would take is drawn as the roof. None when the rows have a single size."""
    if len({r["x"] for r in rows}) < 2:  # one size (a default run): no curve to draw
        return None
    plt = _pyplot()
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    fig, axes = plt.subplots(1, len(modes), figsize=(6.4 * len(modes), 4.4), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        mode_rows = [r for r in rows if r["mode"] == mode]
        for impl in dict.fromkeys(r["impl"] for r in mode_rows):
            points = sorted((r["x"], r["median_ms"]) for r in mode_rows if r["impl"] == impl)
            style = "--o" if any(r["peer"] for r in mode_rows if r["impl"] == impl) else "-s"
            ax.plot([p[0] for p in points], [p[1] for p in points], style, label=impl, markersize=4)
        roof = sorted({(r["x"], roof_ms(r["_bytes"], r["copy GB/s"]))
                       for r in mode_rows if r.get("copy GB/s")})
        if roof:
            ax.plot([p[0] for p in roof], [p[1] for p in roof], ":", color="black", label="copy-bandwidth roof")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(mode_rows[0]["_x_label"])
        ax.set_ylabel("median time (ms)")
        ax.set_title(f"{op} {mode}")
        ax.grid(which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(op: str, rows: list[dict], folder: str) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    written = [plot_speedups(op, rows, os.path.join(folder, f"{op}_speedup.png")),
               plot_scaling(op, rows, os.path.join(folder, f"{op}_scaling.png"))]
    return [p for p in written if p]
