"""How busy the machine is: figures taken beside a benchmark, so that timings under load are flagged."""

from __future__ import annotations

import os
import time


def busy_cores(seconds: float = 1.0) -> float | None:
    """Cores kept busy by the whole machine over `seconds` while this process sleeps (Linux /proc/stat):
    load from other processes (or Ray's own daemons) that the timings below compete with."""
    def sample():
        with open("/proc/stat") as stream:
            values = [int(v) for v in stream.readline().split()[1:]]
        return sum(values) - values[3] - values[4], sum(values)  # busy, total (idle and iowait excluded)

    try:
        busy0, total0 = sample()
        time.sleep(seconds)
        busy1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return (os.cpu_count() or 1) * (busy1 - busy0) / max(1, total1 - total0)


def settle(quiet: float = 0.2, window: float = 0.5, timeout: float = 20.0) -> float | None:
    """Wait until the machine is quiet (at most `quiet` busy cores over `window` s) or `timeout` s have passed;
    returns the last figure. Before a timed run, so that the previous run's tail (a Ray Train run's workers and
    actors shutting down take a few seconds of CPU) does not land in the next path's timings."""
    deadline = time.monotonic() + timeout
    while True:
        busy = busy_cores(window)
        if busy is None or busy <= quiet or time.monotonic() >= deadline:
            return busy
