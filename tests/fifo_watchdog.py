"""A guard for tests of code that must never open a FIFO: opening one for reading blocks until a
writer comes, so a regression would hang the test. While the guard is on, a thread opens the
FIFO's other end whenever a reader waits on it, which releases the reader, and records that it
happened."""

import contextlib
import os
import threading


@contextlib.contextmanager
def fifo_watchdog(fifo):
    """Yields a list that holds one entry per time a reader opened ``fifo``."""
    opened, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: no reader has it open
                stop.wait(0.02)
                continue
            opened.append(True)
            os.close(fd)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield opened
    finally:
        stop.set()
        thread.join()
