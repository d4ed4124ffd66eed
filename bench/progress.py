"""What `vgpa bench` shows while it runs, in place of pytest's dots: a pytest plugin that writes
one line per case (its number of the total, the elapsed time, what runs, then its median and the
case's wall time or why it failed), warns once when the machine is loaded beyond its cores, and
keeps the failures' reports for the end of the run."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, TextIO


def elapsed_text(seconds: float) -> str:
    """m:ss, or h:mm:ss from an hour on."""
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def duration_text(seconds: float) -> str:
    """A time in the unit that reads best: 734 us, 8.61 ms, 4.04 s."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.3g} us"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def load_warning(load: float, cores: int) -> str | None:
    """The warning for a 1-minute load average above the core count, else None."""
    if load <= cores:
        return None
    return (f"vgpa bench: warning: the load average ({load:.1f}) exceeds this machine's {cores} cores: other work "
            "competes with the bench, so times are inflated and ratios noisier than on an idle machine")


def error_line(text: str) -> str:
    """The error a report ends with (its last non-empty line: "E   AssertionError: ..." in pytest's
    long form), without pytest's "E" prefix."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    errors = [line for line in lines if line.startswith("E ")]
    return (errors[-1][1:] if errors else lines[-1]).strip()


@dataclass
class CaseOutcome:
    failed: str | None = None  # the phase that failed (setup, call, teardown)
    message: str = ""
    skipped: str | None = None
    median_s: float | None = None
    rounds: int | None = None
    seconds: float = 0.0


@dataclass
class Progress:
    """The plugin. ``stream`` must reach the terminal while pytest captures output (run.py hands it
    a duplicate of the stderr descriptor); ``clock``, ``loadavg`` and ``cores`` can be replaced
    (tests do)."""

    stream: TextIO
    lines: bool = True  # False: no case lines (pytest's own verbose output shows the cases)
    clock: Callable[[], float] = time.monotonic
    loadavg: Callable[[], tuple] = os.getloadavg
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)
    total: int = 0
    done: int = 0
    warned: bool = False
    failures: list = field(default_factory=list)  # (what, pytest's report text)
    _names: dict = field(default_factory=dict)
    _outcomes: dict = field(default_factory=dict)
    _started: float | None = None

    def write(self, text: str):
        self.stream.write(text)
        self.stream.flush()

    def elapsed(self) -> float:
        now = self.clock()
        if self._started is None:
            self._started = now
        return now - self._started

    def check_load(self):
        """Warns once, on its own line, when the machine is loaded beyond its cores."""
        if self.warned:
            return
        try:
            load = self.loadavg()[0]
        except OSError:  # no load average on this platform
            return
        message = load_warning(load, self.cores)
        if message:
            self.warned = True
            # without case lines, pytest's own (verbose) line of the case may be half written
            self.write(("" if self.lines else "\n") + message + "\n")

    # pytest hooks

    def pytest_sessionstart(self, session):
        self.elapsed()

    def pytest_collection_finish(self, session):
        self.total = len(session.items)
        self._names = {item.nodeid: describe(item) for item in session.items}

    def pytest_collectreport(self, report):
        if report.failed:
            self.failures.append((f"collecting {report.nodeid or 'the bench'}", report.longreprtext))
            self.write(f"vgpa bench: collecting {report.nodeid or 'the bench'} failed: "
                       f"{error_line(report.longreprtext)}\n")

    def pytest_runtest_logstart(self, nodeid, location):
        self.check_load()
        self.done += 1
        self._outcomes[nodeid] = CaseOutcome()
        if not self.lines:
            return
        width = len(str(self.total))
        self.write(f"[{self.done:>{width}}/{self.total} {elapsed_text(self.elapsed()):>5}] "
                   f"{self._names.get(nodeid, nodeid)} ")

    def pytest_runtest_logreport(self, report):
        outcome = self._outcomes.setdefault(report.nodeid, CaseOutcome())
        outcome.seconds += report.duration
        properties = dict(report.user_properties)
        if "median_s" in properties:
            outcome.median_s, outcome.rounds = properties["median_s"], properties.get("rounds")
        if report.failed and outcome.failed is None:
            outcome.failed, outcome.message = report.when, error_line(report.longreprtext)
            self.failures.append((self._names.get(report.nodeid, report.nodeid), report.longreprtext))
        elif report.skipped and outcome.skipped is None:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            outcome.skipped = reason.removeprefix("Skipped: ")

    def pytest_runtest_logfinish(self, nodeid, location):
        if self.lines:
            self.write(outcome_text(self._outcomes.get(nodeid, CaseOutcome())) + "\n")

    def failure_report(self) -> str:
        """pytest's report of every failure, for the end of the run."""
        return "\n".join(f"--- FAILED: {what}\n{text.rstrip()}\n" for what, text in self.failures)


def outcome_text(outcome: CaseOutcome) -> str:
    if outcome.failed:
        where = "" if outcome.failed == "call" else f" in {outcome.failed}"
        return f"FAILED{where}: {outcome.message}"
    if outcome.skipped is not None:
        return f"skipped: {outcome.skipped}"
    if outcome.median_s is None:
        return f"done ({duration_text(outcome.seconds)})"
    rounds = f" of {outcome.rounds} rounds" if outcome.rounds else ""
    return f"{duration_text(outcome.median_s)} (median{rounds}), {duration_text(outcome.seconds)} in all"


def describe(item) -> str:
    """"op mode size: implementation" for a bench case (harness.Case), else pytest's node id."""
    case = getattr(getattr(item, "callspec", None), "params", {}).get("case")
    entry = getattr(getattr(item, "module", None), "ENTRY", None)
    if case is None or entry is None:
        return item.nodeid
    impl = case.impl + (" [graph]" if case.graph else "")
    return f"{entry.op} {case.mode} {case.size.label}: {impl}"
