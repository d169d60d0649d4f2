"""How much of the machine's CPU other processes used while something was timed.

A figure well above zero means the timings were taken on a busy machine; bench compare
does not judge a change measured so (Thresholds.busy_share). The executor reads it over a
whole worker phase; a worker taking turns in bench ab (attnbench.engine.turns) over its own turns
only, since the other side timing while it waits is no sign of a busy machine.
"""

from __future__ import annotations

import contextlib

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


def family_cpu_seconds(proc: psutil.Process) -> float:
    """CPU seconds of a process and of every process it started: its children still running
    (e.g. torch.compile's compile workers, which outlive the compile) and those it has reaped.
    A worker's own helpers are not "other processes" on the machine."""
    t = proc.cpu_times()
    total = t.user + t.system + getattr(t, "children_user", 0.0) + getattr(t, "children_system", 0.0)
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            c = child.cpu_times()
            total += c.user + c.system
    return total
