"""attnbench.core.interrupts: a Ctrl-C is noted as well as raised, so a swallowed one still stops a run."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator

import pytest

from attnbench.core import interrupts


@pytest.fixture(autouse=True)
def ctrl_c_interrupts() -> Iterator[None]:
    """Python's own Ctrl-C handler, whatever this process inherited: run in the background by a
    script (as CI may run the tests), it starts with SIGINT ignored, and noted() keeps that."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def _ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.2)  # the handler runs in here


def test_a_swallowed_interrupt_is_raised_again_by_check() -> None:
    with interrupts.noted():
        interrupts.check()  # nothing noted yet
        with contextlib.suppress(KeyboardInterrupt):  # as a C extension may
            _ctrl_c()
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
    interrupts.check()  # the note ends with the block


def test_deferred_raises_when_the_block_ends_not_inside() -> None:
    done = False
    with interrupts.noted(), pytest.raises(KeyboardInterrupt), interrupts.deferred():
        _ctrl_c()
        done = True
    assert done


def test_an_ignored_sigint_stays_ignored() -> None:
    """A background job (`bench run &` in a script) starts with SIGINT ignored: keep it so."""
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupts.noted():
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # CI's cancel still stops it
    finally:
        signal.signal(signal.SIGINT, old)


def test_nested_blocks_keep_the_outer_note() -> None:
    with interrupts.noted():
        with contextlib.suppress(KeyboardInterrupt):
            _ctrl_c()
        with interrupts.noted(), pytest.raises(KeyboardInterrupt):  # e.g. the runner's, inside the CLI's
            interrupts.check()
