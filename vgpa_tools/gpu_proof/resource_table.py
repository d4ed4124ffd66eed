"""The committed resource tables (docs/gpu_resources_*.csv): written, or compared with what the
code compiles to now, the same way for both GPU backends."""

from __future__ import annotations

import csv
import difflib
import io
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def csv_text(columns: list[str], rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def diff(table: Path, committed: str, current: str) -> str:
    return "".join(difflib.unified_diff(committed.splitlines(True), current.splitlines(True),
                                        str(table.relative_to(REPO)) + " (committed)", "compiled now"))


def write_or_check(table: Path, text: str, check: bool, command: str, what: str) -> int:
    """With check, 1 (and the diff) when the committed table differs from text, else 0;
    without, writes text to the table."""
    if check:
        committed = table.read_text() if table.exists() else ""
        if committed != text:
            print(diff(table, committed, text), end="")
            print(f"{table.relative_to(REPO)} is stale: run {command}", file=sys.stderr)
            return 1
        return 0
    table.parent.mkdir(parents=True, exist_ok=True)
    table.write_text(text)
    print(f"wrote {table.relative_to(REPO)}: {what}")
    return 0
