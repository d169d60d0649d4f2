"""Ctrl-C, and CI's SIGTERM, never lost.

A KeyboardInterrupt raised while a C extension runs Python code can be cleared by it: a
Ctrl-C that lands while torch imports numpy is swallowed by torch's "is numpy available"
check. Measured here: `bench run` interrupted 0.5-0.6 s after it started (while it imported
torch) went on to finish every case and exit 0, about one time in six. So the handler also
notes the signal, and the runner and executors check the note between cases and while
they wait (`check`): an interrupt a library swallowed still stops the run, soon after.
Raised a little later in torch's import, inside its C++ initialisation, the same
KeyboardInterrupt aborts the process (SIGABRT and a C++ message, 1 in 15 interrupts at
0.75-1.15 s), so `bench run` imports under `deferred()`: noted there, raised after.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

_received: int | None = None  # the signal noted since `noted()` began, if any
_deferring = False
_depth = 0  # noted() blocks open


def _handler(signum: int, frame: object) -> None:
    global _received
    _received = signum
    if not _deferring:
        raise KeyboardInterrupt


@contextmanager
def noted() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt, as Ctrl-C does, and are noted for `check`.

    An ignored SIGINT stays ignored: a shell starts background jobs (`bench run &`) that way
    so that Ctrl-C at the terminal leaves them running."""
    global _received, _depth
    if _depth:  # already, further out: keep what it noted
        yield
        return
    _received = None
    old = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            if not (sig == signal.SIGINT and signal.getsignal(sig) == signal.SIG_IGN):
                old[sig] = signal.signal(sig, _handler)
    except ValueError:  # not the main thread: signals go to the main thread's handlers anyway
        yield
        return
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        for sig, handler in old.items():
            signal.signal(sig, handler)
        _received = None


@contextmanager
def deferred() -> Iterator[None]:
    """A signal inside is only noted, and raised as KeyboardInterrupt when the block ends
    (for code that must not be interrupted halfway, such as importing torch)."""
    global _deferring
    outer, _deferring = _deferring, True
    try:
        yield
    finally:
        _deferring = outer
    if not outer:
        check()


def received() -> int | None:
    """The signal noted since `noted()` began (SIGINT or SIGTERM), if any."""
    return _received


def check() -> None:
    """Raise KeyboardInterrupt if a signal was noted (its own KeyboardInterrupt may have been
    swallowed where it was raised)."""
    if _received is not None:
        raise KeyboardInterrupt
