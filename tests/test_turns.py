"""Turn taking between the two sides of bench ab (harness.turns), with real processes and pipes."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.turns import TURNS_ENV, DriverGone, Gate, Side, alternate
from tests.conftest import ROOT

# A side: `turns` turns, each logging its start and end (monotonic clock) to a file.
SIDE = textwrap.dedent(
    """
    import json, sys, time
    from harness.turns import gate_from_env
    gate = gate_from_env()
    log = []
    for i in range(int(sys.argv[2])):
        with gate.turn(f"case{i % 2}"):  # two cases, alternately, as a run's passes go
            start = time.monotonic()
            time.sleep(0.02)
            log.append((start, time.monotonic()))
        time.sleep(0.01)  # bookkeeping between turns, which must not overlap the other side's turn
    open(sys.argv[1], "w").write(json.dumps(log))
    """
)


def _start(name: str, log: Path, turns: int) -> tuple[subprocess.Popen, Side]:
    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()
    env = {**os.environ, TURNS_ENV: f"{to_r},{from_w}", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", SIDE, str(log), str(turns)], env=env, pass_fds=(to_r, from_w))
    os.close(to_r)
    os.close(from_w)
    return proc, Side(name, to_w, from_r)


def test_sides_take_turns_in_an_order_balanced_per_case_and_never_overlap(tmp_path: Path) -> None:
    a_proc, a = _start("a", tmp_path / "a.json", 6)
    b_proc, b = _start("b", tmp_path / "b.json", 4)  # b has fewer phases: a goes on alone
    order: list[str] = []
    alternate([a, b], lambda side: order.append(side.name))
    assert a_proc.wait(10) == 0 and b_proc.wait(10) == 0
    # case0 (round 1): a b; case1 (round 2): a b; case0 again: b a; case1 again: b a; then a alone
    assert order == ["a", "b", "a", "b", "b", "a", "b", "a", "a", "a"]
    assert (a.turns, b.turns) == (6, 4) and a.done and b.done
    spans = sorted(
        (start, end, name) for name in "ab" for start, end in json.loads((tmp_path / f"{name}.json").read_text())
    )
    for (_, end, _), (start, _, _) in itertools.pairwise(spans):
        assert end <= start  # one side at a time
    assert [name for _, _, name in spans] == order


def test_a_side_that_dies_lets_the_other_finish(tmp_path: Path) -> None:
    a_proc, a = _start("a", tmp_path / "a.json", 3)
    b_proc, b = _start("b", tmp_path / "b.json", 3)
    b_proc.kill()
    alternate([a, b])
    assert a_proc.wait(10) == 0 and a.turns == 3 and b.done


def test_a_side_whose_driver_is_gone_stops_as_if_interrupted() -> None:
    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()
    os.close(to_w)  # the driver exited: the side reads end of file
    gate = Gate(to_r, from_w)
    with pytest.raises(DriverGone), gate.turn("case"):
        pass
    assert issubclass(DriverGone, KeyboardInterrupt)  # the runner records what it has and stops, resumable
    for fd in (to_r, from_r, from_w):
        os.close(fd)


def test_the_driver_notes_each_ask_and_waits_for_each_side_once(tmp_path: Path) -> None:
    """on_ask runs while no side is timing (bench ab notes the side's processes then);
    on_exit once per side, before the other side's next turn is granted."""
    events: list[str] = []
    procs, sides = [], []
    for name, turns in (("a", 3), ("b", 1)):
        proc, side = _start(name, tmp_path / f"{name}.json", turns)
        side.on_ask = lambda n=name: events.append(f"ask {n}")
        side.on_exit = lambda n=name, p=proc: events.append(f"exit {n} rc={p.wait(10)}")
        procs.append(proc)
        sides.append(side)
    alternate(sides, lambda side: events.append(f"turn {side.name}"))
    assert events.count("exit a rc=0") == 1 and events.count("exit b rc=0") == 1
    assert events.count("ask a") == 3 and events.count("ask b") == 1
    # b's last turn ends, b exits and is waited for, and only then does a get its next turn
    assert events.index("exit b rc=0") < len(events) - 1 - events[::-1].index("turn a")
