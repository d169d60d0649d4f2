"""Two `bench run`s interleaved case by case: each worker phase runs on a turn a driver grants.

Why: on a shared VM the host's speed drifts by tens of percent over minutes, so two runs
made one after the other (last night's and tonight's) see different hosts, and no test on
their samples can tell that from a change of code. `bench ab` (harness.ab_command) starts
the baseline's and the candidate's `bench run` side by side and lets them take turns: for
every case and pass, one side times it, then the other, in alternating order (ABBA), so
both see the same stretches of the host and a comparison can pair them pass by pass.

Protocol over a pipe pair per side (fds named in ATTNBENCH_TURNS): the side writes
`r<case_id>` and a newline when it wants to start a worker phase of that case, blocks until the driver
writes `g`, runs the phase and writes `d`. The driver grants one side at a time, and after
a side's `d` it waits for that side's next ask (or its exit) before granting the other, so
a side's bookkeeping between cases never overlaps the other side's timing.

Order: which side goes first alternates per case (its 1st, 3rd, ... pass: baseline first;
2nd, 4th, ...: candidate first), so going first or second, which can matter on its own
(caches and clock state left by the other side's process), is balanced within every
case. Alternating per round instead would not do: with an even number of cases per pass
a case would always see the same order.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

TURNS_ENV = "ATTNBENCH_TURNS"  # "READ_FD,WRITE_FD": the side's ends of its pipes to the driver
INTERLEAVED_ENV = "ATTNBENCH_INTERLEAVED"  # JSON {"group", "side"}: recorded in run.json as "interleaved"
ASK, GO, DONE = b"r", b"g", b"d"
ASK_END = b"\n"


class DriverGone(KeyboardInterrupt):
    """The driver that grants turns has exited. A KeyboardInterrupt so the side stops the
    way Ctrl-C stops a run: what it measured is recorded, and the run is resumable."""


class Gate:
    """A side's end: `with gate.turn():` around each worker phase."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd, self.write_fd = read_fd, write_fd

    @contextlib.contextmanager
    def turn(self, key: str) -> Iterator[None]:
        """key: the case whose phase this is (the driver balances the order per key)."""
        try:
            os.write(self.write_fd, ASK + key.replace("\n", " ").encode() + ASK_END)
            answer = os.read(self.read_fd, 1)
        except BrokenPipeError as exc:
            raise DriverGone("the bench ab driver went away") from exc
        if answer != GO:
            raise DriverGone("the bench ab driver went away")
        try:
            yield
        finally:
            with contextlib.suppress(BrokenPipeError):
                os.write(self.write_fd, DONE)


@contextlib.contextmanager
def _no_turn() -> Iterator[None]:
    yield


class NoGate:
    """A run on its own: every phase starts at once."""

    def turn(self, key: str) -> contextlib.AbstractContextManager[None]:
        return _no_turn()


def gate_from_env() -> Gate | NoGate:
    value = os.environ.get(TURNS_ENV)
    if not value:
        return NoGate()
    read_fd, write_fd = (int(x) for x in value.split(","))
    return Gate(read_fd, write_fd)


def interleaved_from_env() -> dict[str, Any] | None:
    value = os.environ.get(INTERLEAVED_ENV)
    return json.loads(value) if value else None


# ----------------------------------------------------------------------------- the driver's end


@dataclass
class Side:
    name: str
    to_side: int  # the driver writes GO here
    from_side: int  # and reads ASK / DONE here
    ready: bool = False
    done: bool = False
    turns: int = 0
    key: str = ""  # the case of the phase asked for
    # Called once when the side has exited: waits until its processes are gone. Measured: a
    # side's exit (its fork server with torch loaded going down) took a whole core during the
    # other side's last turn (other-CPU share > 0.3 in 17 of 60 last passes before this wait,
    # 0 of 120 after). on_ask: called at each ask, while no side is timing (to note the
    # processes to wait for: once a side has exited, its children are no longer its).
    on_exit: Callable[[], None] | None = None
    on_ask: Callable[[], None] | None = None

    def _exited(self) -> None:
        self.ready, self.done = False, True
        if self.on_exit is not None:
            self.on_exit()
            self.on_exit = None

    def _read(self) -> bytes:
        try:
            return os.read(self.from_side, 1)
        except OSError:
            return b""

    def await_ask(self) -> None:
        """Block until the side asks for a turn or exits."""
        got = self._read()
        if got == ASK:
            key = b""
            while (c := self._read()) not in (ASK_END, b""):
                key += c
            self.key = key.decode(errors="replace")
            self.ready = True
            if self.on_ask is not None:
                self.on_ask()
        else:  # b"": exited (or died); anything else is not a side speaking this protocol
            self._exited()

    def grant(self) -> None:
        """One turn: go, wait for its end, then for the side's next ask (or exit)."""
        self.ready = False
        try:
            os.write(self.to_side, GO)
        except OSError:
            self._exited()
            return
        if self._read() != DONE:
            self._exited()
            return
        self.turns += 1
        self.await_ask()


def alternate(sides: list[Side], on_turn: Any = None) -> None:
    """Grant turns until every side has exited, one round (each ready side once) at a time;
    within a round the first side's case decides the order: its 1st, 3rd, ... round A B,
    its 2nd, 4th, ... B A. A side that has exited is skipped; the other then runs alone."""
    for side in sides:
        side.await_ask()
    rounds: dict[str, int] = {}
    while not all(s.done for s in sides):
        key = next(s.key for s in sides if s.ready)
        order = sides if rounds.get(key, 0) % 2 == 0 else sides[::-1]
        rounds[key] = rounds.get(key, 0) + 1
        for side in order:
            if side.ready:
                side.grant()
                if on_turn is not None:
                    on_turn(side)
