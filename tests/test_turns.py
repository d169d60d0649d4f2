"""Turn taking between the two sides of bench ab (attnbench.engine.turns), with real processes and pipes."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from attnbench.engine.turns import TURNS_ENV, DriverGone, Gate, Side, alternate
from tests.conftest import ROOT

# A side: `turns` turns, each logging its start and end (monotonic clock) to a file.
SIDE = textwrap.dedent(
    """
    import json, sys, time
    from attnbench.engine.turns import gate_from_env
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
    turns = gate.worker_turns()  # a worker waiting for a block turn stops the same way
    with pytest.raises(DriverGone), turns.block():
        pass
    turns.read.close()
    turns.write.close()
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


def _start_side(name: str, log: Path, mode: str, phases: int, blocks: int) -> tuple[subprocess.Popen, Side]:
    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()
    env = {**os.environ, TURNS_ENV: f"{to_r},{from_w}", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "tests.turns_side", str(log), mode, str(phases), str(blocks)]
    proc = subprocess.Popen(cmd, env=env, pass_fds=(to_r, from_w), cwd=ROOT)
    os.close(to_r)
    os.close(from_w)
    return proc, Side(name, to_w, from_r)


def _spans(log: Path, name: str) -> list[tuple[float, float, str, str, int]]:
    return [(s, e, name, kind, phase) for kind, s, e, phase in map(json.loads, log.read_text().splitlines())]


def _overlap(a: tuple, b: tuple) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def test_workers_take_turns_block_by_block_and_never_time_beside_the_others_work(tmp_path: Path) -> None:
    """Both sides' workers of a case run at once (forkserver children handed the gate's
    worker_turns, as LocalExecutor starts them); their blocks alternate A B B A ..., the
    first block of a case's 1st pass going to the first side and of its 2nd pass to the
    second, and no block is timed while the other side does anything at all."""
    procs, sides = [], []
    for name in "ab":
        proc, side = _start_side(name, tmp_path / f"{name}.jsonl", "blocks", 4, 6)
        procs.append(proc)
        sides.append(side)
    alternate(sides)
    assert [p.wait(30) for p in procs] == [0, 0]
    assert [s.total_blocks for s in sides] == [4 * 6, 4 * 6] and [s.turns for s in sides] == [4, 4]
    spans = _spans(tmp_path / "a.jsonl", "a") + _spans(tmp_path / "b.jsonl", "b")
    blocks = sorted(s for s in spans if s[3] == "block")
    for block in blocks:
        assert not any(_overlap(block, o) for o in spans if o[2] != block[2]), block
    for phase in range(4):
        order = "".join(name for _, _, name, _, p in blocks if p == phase)
        # phases 0 and 1: the first passes of case0 and case1; 2 and 3 their second passes
        first, second = ("a", "b") if phase < 2 else ("b", "a")
        assert order == (first + second + second + first) * 3, (phase, order)


def test_a_side_timing_whole_phases_takes_turns_with_one_timing_blocks(tmp_path: Path) -> None:
    """A side without block turns (an older checkout's, or one phase timed whole) gets its
    phase as one exclusive turn; the other side's blocks wait for it and it for them."""
    a_proc, a = _start_side("a", tmp_path / "a.jsonl", "whole", 3, 0)
    b_proc, b = _start_side("b", tmp_path / "b.jsonl", "blocks", 3, 4)
    alternate([a, b])
    assert a_proc.wait(30) == 0 and b_proc.wait(30) == 0
    assert (a.turns, b.turns, b.total_blocks) == (3, 3, 12)
    spans = _spans(tmp_path / "a.jsonl", "a") + _spans(tmp_path / "b.jsonl", "b")
    for timed in (s for s in spans if s[3] == "block"):
        assert not any(_overlap(timed, o) for o in spans if o[2] != timed[2]), timed


def test_bench_ab_turns_passes_makes_every_phase_one_exclusive_turn() -> None:
    """--turns passes: the runner asks for each phase whole and hands its worker no turns."""
    import threading

    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()
    said = []

    def driver() -> None:
        said.append(os.read(from_r, 64))
        os.write(to_w, b"g")
        said.append(os.read(from_r, 64))

    thread = threading.Thread(target=driver)
    thread.start()
    gate = Gate(to_r, from_w, whole_phases=True)
    assert gate.worker_turns() is None
    with gate.phase("case0"):
        pass
    thread.join(5)
    assert said == [b"rcase0\n", b"d"]
    for fd in (to_r, to_w, from_r, from_w):
        os.close(fd)
