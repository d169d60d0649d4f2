"""Two `bench run`s interleaved: each timed block of either runs on a turn a driver grants.

Why: on a shared VM the host's speed drifts by tens of percent over minutes, so two runs
made one after the other (last night's and tonight's) see different hosts, and no test on
their samples can tell that from a change of code. `bench ab` (attnbench.cli.ab) starts
the baseline's and the candidate's `bench run` side by side and lets them take turns, so
both see the same stretches of the host and a comparison can pair what they timed.

The host's speed does not only drift over minutes: on the 2-core VM this was built on it
switches between states about 1.5x apart within a second (measured with two processes
timing 9 ms calls in turn: successive calls' log times correlate at 0.6-0.8, calls 150 ms
apart at 0.15-0.45, 600 ms apart at about 0), so two passes timed one after the other
still land in different states about as often as not.
So the sides take turns at the scale of the host's states: both sides' workers of a case
run at once, and each *block* of samples (about BLOCK_S of timing) waits for its turn;
block k of one side is timed next to block k of the other, and the comparison pairs
them (attnbench.analysis.compare). Everything untimed (starting a worker, building and verifying
the case, bookkeeping) runs freely, but no block is granted while any other side is doing
untimed work: a block is granted only when every other side is waiting for a turn. Both
sides' workers of a pass pin themselves to the same CPUs (BlockTurns.pin): on that VM
where a process ran mattered more than when it ran.

Protocol over a pipe pair per side (fds named in ATTNBENCH_TURNS; one byte per message,
an ask also carries its case key up to a newline). The side's runner, around each worker
phase: `p<key>` (a phase whose timed parts ask for blocks), the driver's `g`, and `d` when
the phase is over. The worker, around each timed block (attnbench.engine.timing): `b`, `g`, `e`.
The driver grants phases only when every live side has asked for one (so the sides'
phases of a case start together) and blocks only when no side is busy; a side that asks
`r<key>` instead gets its whole phase as one exclusive turn (how a side without block
turns, or a test, times).

Order: of two sides waiting for a block, the one with fewer blocks in its phase goes
first; at equal counts the order alternates (A B B A A B ...), and the first block of a
case's odd passes goes to the baseline, of its even passes to the candidate, so going
first or second is balanced within every case.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from attnbench.core import cpu_load

TURNS_ENV = "ATTNBENCH_TURNS"  # "READ_FD,WRITE_FD": the side's ends of its pipes to the driver
INTERLEAVED_ENV = "ATTNBENCH_INTERLEAVED"  # JSON {"group", "side", ...}: run.json's "interleaved" (+ "imported")
TURN_UNIT_ENV = "ATTNBENCH_TURN_UNIT"  # "blocks" (default) or "passes": each worker phase one exclusive turn
ASK, PHASE, GO, DONE = b"r", b"p", b"g", b"d"  # whole-phase ask, phase-with-blocks ask, grant, phase done
BLOCK, BLOCK_END = b"b", b"e"
ASK_END = b"\n"
BLOCK_S = 0.01  # timing per block turn: within the host's ~10-30 ms of steady speed


class DriverGone(KeyboardInterrupt):
    """The driver that grants turns has exited. A KeyboardInterrupt so the side stops the
    way Ctrl-C stops a run: what it measured is recorded, and the run is resumable."""


def _drain(fd: int) -> None:
    """Drop a grant left in the pipe (a worker killed while it waited for a block turn)."""
    while select.select([fd], [], [], 0)[0]:
        if not os.read(fd, 64):
            return


class Gate:
    """A side's end, in its runner: `with gate.phase(key):` around each worker phase."""

    def __init__(self, read_fd: int, write_fd: int, whole_phases: bool = False) -> None:
        self.read_fd, self.write_fd = read_fd, write_fd
        self.whole_phases = whole_phases  # bench ab --turns passes
        self._phases: dict[str, int] = {}  # phases asked for per case: both sides count alike
        self._slot = 0

    def _ask(self, kind: bytes, key: str) -> None:
        try:
            _drain(self.read_fd)
            os.write(self.write_fd, kind + key.replace("\n", " ").encode() + ASK_END)
            answer = os.read(self.read_fd, 1)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise DriverGone("the bench ab driver went away") from exc
        if answer != GO:
            raise DriverGone("the bench ab driver went away")

    @contextlib.contextmanager
    def _held(self, kind: bytes, key: str) -> Iterator[None]:
        self._ask(kind, key)
        try:
            yield
        finally:
            with contextlib.suppress(BrokenPipeError):
                os.write(self.write_fd, DONE)

    def turn(self, key: str) -> contextlib.AbstractContextManager[None]:
        """The whole phase as one exclusive turn. key: the case (the order is balanced per key)."""
        return self._held(ASK, key)

    def phase(self, key: str) -> contextlib.AbstractContextManager[None]:
        """A phase whose worker asks for a turn per timed block (worker_turns)."""
        self._slot = self._phases.get(key, 0)
        self._phases[key] = self._slot + 1
        return self._held(ASK if self.whole_phases else PHASE, key)

    def worker_turns(self) -> BlockTurns | None:
        """What a worker process of this phase is handed (picklable into a forkserver child)."""
        if self.whole_phases:
            return None
        read = Connection(os.dup(self.read_fd), writable=False)
        write = Connection(os.dup(self.write_fd), readable=False)
        return BlockTurns(read, write, slot=self._slot)


class NoGate:
    """A run on its own: every phase starts at once."""

    def turn(self, key: str) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    phase = turn

    def worker_turns(self) -> None:
        return None


def cpu_group(threads: int, slot: int) -> list[int] | None:
    """The CPUs a worker of this slot times on: the host's CPUs (this process's affinity)
    cut into groups of `threads`, taken in turn slot by slot. None where the host cannot say."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    size = max(1, min(threads, len(cpus)))
    groups = [cpus[i : i + size] for i in range(0, len(cpus) - size + 1, size)]
    return groups[slot % len(groups)]


@dataclass
class BlockTurns:
    """A worker's end: `with turns.block():` around each stretch of timing.

    slot: which of its case's phases this is (the same on both sides), so both sides'
    workers of a pass pin themselves to the same CPUs (pin): on the 2-core VM this was
    built on, two processes on different vCPUs differ by up to 1.65x for seconds at a time,
    as if on two machines, while two on the same vCPU taking turns agree within a few
    percent (A/A, stretches of 17 blocks: 0.91-1.05 pinned to one vCPU, 0.82-1.65 on
    different ones, 0.72-1.33 unpinned). waited_s: time spent waiting for turns, which a time budget must not
    count. The machine's busy CPU time and the worker's own are summed over its turns
    only: while it waits, the other side is timing, which is no sign of a busy machine."""

    read: Connection
    write: Connection
    slot: int = 0
    cpus: list[int] | None = None
    blocks: int = 0
    waited_s: float = 0.0
    turn_s: float = 0.0
    machine_busy_s: float = 0.0
    own_cpu_s: float = 0.0

    def pin(self, threads: int) -> None:
        """Pin this process (and threads it starts later) to its slot's CPUs."""
        self.cpus = cpu_group(threads, self.slot)
        if self.cpus is not None:
            os.sched_setaffinity(0, self.cpus)

    @contextlib.contextmanager
    def block(self) -> Iterator[None]:
        asked = time.perf_counter()
        try:
            os.write(self.write.fileno(), BLOCK)
            answer = os.read(self.read.fileno(), 1)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise DriverGone("the bench ab driver went away") from exc
        if answer != GO:
            raise DriverGone("the bench ab driver went away")
        began, busy, own = time.perf_counter(), cpu_load.busy_seconds(), time.process_time()
        self.waited_s += began - asked
        self.blocks += 1
        try:
            yield
        finally:
            self.own_cpu_s += time.process_time() - own
            self.machine_busy_s += cpu_load.busy_seconds() - busy
            self.turn_s += time.perf_counter() - began
            with contextlib.suppress(BrokenPipeError):
                os.write(self.write.fileno(), BLOCK_END)

    def summary(self) -> dict[str, Any]:
        """What the case record keeps: turns taken, time waited, other processes' CPU share in turns."""
        other = cpu_load.other_share(self.machine_busy_s, self.own_cpu_s, self.turn_s)
        return {
            "blocks": self.blocks,
            "waited_s": self.waited_s,
            "turn_s": self.turn_s,
            "other_cpu_share": other,
            "cpus": self.cpus,
        }


class NoTurns:
    """A worker of a run on its own: every block starts at once."""

    blocks = 0
    waited_s = 0.0

    def block(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def pin(self, threads: int) -> None:
        pass

    def summary(self) -> None:
        return None


def gate_from_env() -> Gate | NoGate:
    value = os.environ.get(TURNS_ENV)
    if not value:
        return NoGate()
    read_fd, write_fd = (int(x) for x in value.split(","))
    return Gate(read_fd, write_fd, whole_phases=os.environ.get(TURN_UNIT_ENV) == "passes")


def interleaved_from_env() -> dict[str, Any] | None:
    """The side's record (run.json `interleaved`): what the driver said, and where this
    process's code came from, which bench ab checks against the side's checkout."""
    value = os.environ.get(INTERLEAVED_ENV)
    return {**json.loads(value), "imported": imported_code()} if value else None


def imported_code() -> dict[str, str | None]:
    """The folder each of attnbench's packages was imported from, resolved through an import
    root's links (attnbench.core.layout): the checkout's harness/, workloads/, backends/."""
    import importlib.util

    out: dict[str, str | None] = {}
    for name in ("attnbench", "attnbench.workloads", "attnbench.backends"):
        spec = importlib.util.find_spec(name)  # the imported module's spec; a subpackage is not imported
        origin = spec.origin if spec is not None else None
        out[name] = os.path.dirname(os.path.realpath(origin)) if origin else None
    return out


# ----------------------------------------------------------------------------- the driver's end

BUSY, ASKED, WAITING, TIMING, EXITED = "busy", "asked", "waiting", "timing", "exited"
QUIET = (ASKED, WAITING, EXITED)  # states in which a side uses no CPU


@dataclass
class Side:
    name: str
    to_side: int  # the driver writes GO here
    from_side: int  # and reads asks, ends and DONE here
    state: str = BUSY  # BUSY: untimed work; ASKED: wants a phase; WAITING: wants a block; TIMING: in a turn
    whole: bool = False  # the phase asked for is timed whole (an `r` ask)
    turns: int = 0  # phases granted
    blocks: int = 0  # blocks granted in the current phase
    total_blocks: int = 0
    key: str = ""  # the case of the phase asked for
    first: bool = False  # at equal block counts, goes first in its current phase (flips each pair)
    # Called once when the side has exited: waits until its processes are gone. Measured: a
    # side's exit (its fork server with torch loaded going down) took a whole core during the
    # other side's last turn (other-CPU share > 0.3 in 17 of 60 last passes before this wait,
    # 0 of 120 after). on_ask: called at each phase ask, while no side is timing (to note the
    # processes to wait for: once a side has exited, its children are no longer its).
    on_exit: Callable[[], None] | None = None
    on_ask: Callable[[], None] | None = None
    _buffer: bytes = field(default=b"", repr=False)

    @property
    def done(self) -> bool:
        return self.state == EXITED

    def _exited(self) -> None:
        self.state = EXITED
        if self.on_exit is not None:
            self.on_exit()
            self.on_exit = None

    def receive(self) -> None:
        """Read what the side has written (select said it is readable) and move its state."""
        try:
            data = os.read(self.from_side, 4096)
        except OSError:
            data = b""
        if not data:
            self._exited()
            return
        self._buffer += data
        while self._buffer:
            kind = self._buffer[:1]
            if kind in (ASK, PHASE):
                end = self._buffer.find(ASK_END)
                if end < 0:
                    return  # the rest of the key is on its way
                self.key = self._buffer[1:end].decode(errors="replace")
                self._buffer = self._buffer[end + 1 :]
                self.state, self.whole = ASKED, kind == ASK
                if self.on_ask is not None:
                    self.on_ask()
                continue
            self._buffer = self._buffer[1:]
            if kind == BLOCK:
                self.state = WAITING
            elif kind in (BLOCK_END, DONE):
                self.state = BUSY
            else:  # not a side speaking this protocol
                self._exited()
                return

    def grant(self, state: str) -> None:
        try:
            os.write(self.to_side, GO)
        except OSError:
            self._exited()
            return
        self.state = state


def _listen(sides: list[Side], timeout: float | None) -> None:
    """Take in whatever the live sides have said, waiting up to timeout for the first word."""
    live = {s.from_side: s for s in sides if s.state != EXITED}
    if not live:
        return
    ready, _, _ = select.select(list(live), [], [], timeout)
    for fd in ready:
        live[fd].receive()


def alternate(sides: list[Side], on_turn: Any = None) -> None:
    """Grant turns until every side has exited. on_turn(side): after each phase granted.

    Phases go in rounds: once every live side has asked for one, each gets one, in the
    order of the first side's case's alternation (its 1st, 3rd, ... round A B; 2nd, 4th,
    ... B A). Phases with block turns of a round start together; a phase asked for whole
    (`r`) is one exclusive turn. Blocks: granted one at a time, and only when every other
    side is quiet (waiting for a turn of either kind, or gone)."""
    rounds: dict[str, int] = {}
    queue: list[Side] = []  # the round's sides still to be granted their phase, in order
    while not all(s.done for s in sides):
        _listen(sides, None if any(s.state in (BUSY, TIMING) for s in sides) else 0)
        _listen(sides, 0)  # everything said so far, so a grant never answers a stale ask
        if not all(s.state in QUIET for s in sides):
            continue
        waiting = [s for s in sides if s.state == WAITING]
        if waiting:
            fewest = min(s.blocks for s in waiting)
            side = next(s for s in sorted(waiting, key=lambda s: not s.first) if s.blocks == fewest)
            side.blocks += 1
            side.total_blocks += 1
            if all(s.blocks == fewest + 1 for s in waiting) or len(waiting) == 1:
                for s in waiting:  # a pair done: the other side opens the next one
                    s.first = not s.first
            side.grant(TIMING)
            continue
        if not queue:  # a new round: every live side has asked for a phase
            asked = [s for s in sides if s.state == ASKED]
            if not asked:
                continue
            count = rounds.get(asked[0].key, 0)
            rounds[asked[0].key] = count + 1
            queue = asked if count % 2 == 0 else asked[::-1]
        side = queue.pop(0)
        if side.state != ASKED:  # exited meanwhile
            continue
        if side.whole:
            chosen, state = [side], TIMING
        else:  # every phase with block turns of the round starts now, together
            chosen, state = [side] + [s for s in queue if not s.whole], BUSY
            queue = [s for s in queue if s.whole]
        for position, s in enumerate(chosen):
            s.blocks, s.first = 0, position == 0
            s.turns += 1
            s.grant(state)
            if on_turn is not None:
                on_turn(s)
