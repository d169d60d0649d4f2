"""What the Runner asks of an executor, and what every executor hands back for a case.

An executor decides where a case's workers run: `LocalExecutor` on this machine, one case
after another; `RayExecutor` on a cluster's nodes, several cases side by side (a
`ConcurrentExecutor`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from attnbench.core.cases import Case
from attnbench.engine.turns import Gate, NoGate


@dataclass
class Outcome:
    status: str  # ok | oom | timeout | error | unsupported
    reason: str | None
    # When ok, what the phase measured: a record.Measurement (time), record.MemoryMeasurement
    # (memory) or the profile phase's dict; None otherwise.
    result: Any = None
    traceback: str | None = None
    worker: dict[str, Any] = field(default_factory=dict)  # pid, exit code, wall and overhead seconds
    node: dict[str, Any] | None = None  # attnbench.core.nodes.describe_node() of where it ran; None: this host


class Executor(ABC):
    """Runs one case at a time, start to end, for the Runner."""

    name: ClassVar[str]  # run.json's "executor", and the key describe() is recorded under

    def __init__(self) -> None:
        # bench ab: the Runner hands each executor the gate of its side; an executor whose
        # timing workers take turns per block of samples passes it on to them.
        self.gate: Gate | NoGate = NoGate()

    @abstractmethod
    def warm(self) -> float:
        """Get ready before the first case (start a fork server, connect to a cluster); seconds taken."""

    @abstractmethod
    def run(self, case: Case) -> Outcome:
        """One case, timed and metered."""

    def run_pass(self, case: Case) -> Outcome:
        """One more timing pass of a case already verified and metered (settings.passes > 1)."""
        raise NotImplementedError(f"the {self.name} executor times each case in one pass")

    @abstractmethod
    def abandon(self) -> None:
        """Ctrl-C: stop whatever is in flight."""

    def describe(self) -> dict[str, Any] | None:
        """What run.json records of where the cases run (e.g. a Ray cluster); None: nothing to add."""
        return None

    def close(self) -> None:
        """After the run, finished or interrupted: release what warm() took (nothing, unless overridden)."""
        return None


class ConcurrentExecutor(Executor):
    """An executor that runs several cases at once, on other machines (attnbench.engine.executors.ray).

    The Runner submits the next case of every scaling curve and records outcomes in the
    order they finish; a curve has one case in flight at a time, so its longer lengths are
    still skipped after an oom or timeout. Availability and the memory fit are the
    executor's to judge, since the driver's own host says nothing about the nodes'.
    """

    @abstractmethod
    def cannot_run(self, case: Case) -> str | None:
        """Why no machine of the executor can run the case, or None."""

    @abstractmethod
    def submit(self, case: Case) -> None:
        """Start the case; its outcome comes from next_finished()."""

    @abstractmethod
    def next_finished(self) -> tuple[Case, Outcome]:
        """Block until a submitted case has an outcome; outcomes come in the order cases end."""
