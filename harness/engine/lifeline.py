"""Worker processes die with the driver that started them, however the driver dies.

A case's worker is forked by the fork server (attnbench.engine.preload), itself a child of
the driver. Python's fork server exits when the driver's end of its pipe closes, which a
SIGKILL closes too; each process here asks the kernel (Linux's parent-death signal) to
SIGKILL it when its parent goes, so the fork server dies with the driver and the worker with
the fork server. Without this, a worker hanging in a case outlived a SIGKILLed driver,
reparented to init, until someone found it. Elsewhere than Linux it is a no-op.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

DRIVER_PID_ENV = "ATTNBENCH_DRIVER_PID"  # set by the driver before the fork server starts
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def mark_driver() -> None:
    """In the driver, before the fork server starts: the pid its workers watch."""
    os.environ[DRIVER_PID_ENV] = str(os.getpid())


def die_with_parent() -> None:
    """SIGKILL this process when its parent dies; exit now if the driver is already gone."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        return
    # The parent may have died before the request: then nothing would ever send the signal.
    driver = os.environ.get(DRIVER_PID_ENV)
    if driver and driver.isdigit() and not _alive(int(driver)):
        os._exit(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else (a reused pid): not ours to judge
        return True
    return True
