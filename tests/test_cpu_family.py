"""A worker's own helper processes (torch.compile's compile workers) are its CPU, not "other
processes" (attnbench.core.cpu_load.family_cpu_seconds)."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from attnbench.core.cpu_load import family_cpu_seconds

# A parent that idles while its child burns CPU, and a grandchild it reaps.
PARENT = """
import subprocess, sys, time
burn = "import time\\nt = time.process_time()\\nwhile time.process_time() - t < 0.6: pass"
subprocess.run([sys.executable, "-c", burn])          # reaped: its CPU is the parent's children_*
live = subprocess.Popen([sys.executable, "-c", burn + "\\ntime.sleep(30)"])  # still running
print("ready", flush=True)
time.sleep(30)
"""


def test_family_cpu_counts_live_and_reaped_children() -> None:
    proc = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(1.2)  # the live child's 0.6 s of CPU
        parent = psutil.Process(proc.pid)
        own = parent.cpu_times()
        assert own.user + own.system < 0.6  # the parent itself hardly ran
        assert family_cpu_seconds(parent) >= 1.0  # both children's 0.6 s each, give or take
    finally:
        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
        proc.kill()
        proc.wait()
