"""How much of the machine's CPU other processes used while something was timed.

A figure well above zero means the timings were taken on a busy machine; bench compare
does not judge a change measured so (Thresholds.busy_share). The executor reads it over a
whole worker phase; a worker taking turns in bench ab (attnbench.engine.turns) over its own turns
only, since the other side timing while it waits is no sign of a busy machine.
"""

from __future__ import annotations

import psutil


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot, all cores together."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def other_share(machine_busy_s: float, own_cpu_s: float, wall_s: float) -> float | None:
    """Share of the machine's CPU others used: its busy time over a stretch of wall_s minus
    the process's own CPU time, over wall time x cores. None for an empty stretch."""
    if wall_s <= 0:
        return None
    return max(0.0, machine_busy_s - own_cpu_s) / (wall_s * (psutil.cpu_count() or 1))
