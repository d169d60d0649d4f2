"""A side of bench ab for tests/test_turns.py, shaped like a `bench run` under attnbench.engine.turns.

`python -m tests.turns_side LOG MODE PHASES BLOCKS`: PHASES worker phases over two cases
taken alternately. MODE "blocks": each phase starts a worker the way LocalExecutor does (a
forkserver child, handed the gate's worker_turns), which does untimed work and then times
BLOCKS blocks, each on its turn. MODE "whole": each phase is one exclusive turn (a side
without block turns). Every span of work is logged as (kind, start, end, phase), kind
"block" for timed work and "busy" for untimed work, on the monotonic clock.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

from attnbench.engine.turns import gate_from_env


def _busy(log: Path, seconds: float, phase: int) -> None:
    start = time.monotonic()
    while time.monotonic() - start < seconds:  # real work: a side's untimed CPU use
        pass
    _log(log, "busy", start, phase)


def _log(log: Path, kind: str, start: float, phase: int) -> None:
    with open(log, "a") as f:
        f.write(json.dumps([kind, start, time.monotonic(), phase]) + "\n")


def worker(turns: Any, log: str, blocks: int, phase: int) -> None:
    path = Path(log)
    _busy(path, 0.02, phase)  # build and verify the case
    for _ in range(blocks):
        with turns.block():
            start = time.monotonic()
            time.sleep(0.005)
            _log(path, "block", start, phase)
    _busy(path, 0.005, phase)  # send the result back


def main() -> None:
    log, mode, phases, blocks = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    gate = gate_from_env()
    ctx = mp.get_context("forkserver")
    for i in range(phases):
        key = f"case{i % 2}"
        if mode == "whole":
            with gate.turn(key):
                start = time.monotonic()
                time.sleep(0.02)
                _log(log, "block", start, i)
        else:
            with gate.phase(key):
                turns = gate.worker_turns()
                proc = ctx.Process(target=worker, args=(turns, str(log), blocks, i))
                proc.start()
                if turns is not None:  # the worker has its own copies
                    turns.read.close()
                    turns.write.close()
                proc.join()
                assert proc.exitcode == 0
        _busy(log, 0.01, i)  # the runner's bookkeeping between phases


if __name__ == "__main__":
    main()
