"""The isolated worker: every way a case can go wrong is recorded, and the parent survives."""

from __future__ import annotations

import pytest

from attnbench.core.cases import Case
from attnbench.core.settings import RunSettings
from attnbench.engine.executors.local import LocalExecutor


def case(variant: str, n: int = 64, **kw) -> Case:
    return Case(variant, (), "core", "cpu", "float32", "forward", 1, 2, 16, n, **kw)


@pytest.fixture
def executor(faulty_plugins: str) -> LocalExecutor:
    # A generous timeout: on a busy 2-core machine even a tiny case can take seconds.
    settings = RunSettings(
        max_time_per_case=0.2, timeout_s=30.0, memory_limit_bytes=768 * 2**20, plugins=faulty_plugins
    )
    return LocalExecutor(settings)


def test_ok_case_reports_measurements(executor: LocalExecutor) -> None:
    out = executor.run(Case("full.sdpa", (("causal", False),), "core", "cpu", "float32", "forward", 1, 2, 16, 100))
    assert out.status == "ok", out.reason
    assert out.result.time_s.n >= 3
    assert out.result.verification["verified"] is True
    assert out.worker["exitcode"] == 0
    assert 0 < out.worker["overhead_s"] < out.worker["wall_s"]


def test_raising_workload_is_an_error_with_traceback(executor: LocalExecutor) -> None:
    out = executor.run(case("test.raises"))
    assert out.status == "error"
    assert "ValueError: deliberate failure in forward" in out.reason
    assert "Traceback" in out.traceback and "forward" in out.traceback


def test_hanging_workload_times_out(executor: LocalExecutor) -> None:
    fast = LocalExecutor(RunSettings(timeout_s=2.0, plugins=executor.settings.plugins))
    out = fast.run(case("test.hangs"))
    assert out.status == "timeout"
    assert "2 s" in out.reason


def test_memory_exhausting_workload_is_stopped_as_oom(executor: LocalExecutor) -> None:
    out = executor.run(case("test.eats_memory"))
    assert out.status == "oom"
    assert "exceeded the limit" in out.reason


def test_allocator_refusal_is_oom(executor: LocalExecutor) -> None:
    out = executor.run(case("test.torch_oom"))
    assert out.status == "oom", out.reason
    assert "allocate" in out.reason


@pytest.mark.parametrize(("variant", "signal_name"), [("test.self_kill", "SIGKILL"), ("test.segfault", "SIGSEGV")])
def test_worker_that_dies_is_an_error(executor: LocalExecutor, variant: str, signal_name: str) -> None:
    out = executor.run(case(variant))
    assert out.status == "error"
    assert signal_name in out.reason


def test_executor_keeps_working_after_failures(executor: LocalExecutor) -> None:
    statuses = [executor.run(case(v)).status for v in ("test.segfault", "test.raises", "full.naive")]
    assert statuses == ["error", "error", "ok"]


def test_unsupported_dtype_is_recorded_not_raised(executor: LocalExecutor) -> None:
    out = executor.run(Case("full.sdpa", (("causal", False),), "core", "cpu", "int8", "forward", 1, 2, 16, 64))
    assert out.status == "unsupported"
    assert "does not run dtype int8" in out.reason


def test_a_timing_worker_takes_block_turns_from_its_runners_gate(executor: LocalExecutor) -> None:
    """bench ab: the worker (a forkserver child) is handed the gate's pipes and asks for a
    turn per block; here a driver grants every ask at once. When the driver is gone the
    worker stops with DriverGone, which the runner turns into an interrupted run."""
    import os
    import threading

    from attnbench.engine.turns import BLOCK, BLOCK_END, DONE, GO, Gate

    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()
    asks = []

    def driver() -> None:  # grants each block ask, counts them, ends at the phase's DONE
        while (b := os.read(from_r, 1)) not in (DONE, b""):
            if b == BLOCK:
                asks.append(b)
                os.write(to_w, GO)
            else:
                assert b == BLOCK_END

    executor.gate = Gate(to_r, from_w)
    thread = threading.Thread(target=driver)
    thread.start()
    out = executor.run_pass(case("full.sdpa"))
    os.write(from_w, DONE)
    thread.join(10)
    assert out.status == "ok", out.reason
    blocks = out.result.block_samples
    assert sum(blocks) == out.result.time_s.n and out.result.turns["blocks"] == len(blocks) + 2 == len(asks)
    assert out.worker["other_cpu_share"] == out.result.turns["other_cpu_share"]
    os.close(to_w)  # the driver exits
    gone = executor.run_pass(case("full.sdpa"))
    assert gone.status == "error" and (gone.reason or "").startswith("DriverGone")
    for fd in (to_r, from_r, from_w):
        os.close(fd)


def test_a_worker_taking_block_turns_gets_twice_the_timeout(executor: LocalExecutor) -> None:
    """bench ab: a worker waits for the other side's blocks about as long as it times, so its
    wall clock gets twice --timeout. Here the other side never hands the turn back."""
    import os
    import time

    from attnbench.engine.turns import Gate

    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()
    fast = LocalExecutor(RunSettings(timeout_s=1.5, plugins=executor.settings.plugins))
    fast.gate = Gate(to_r, from_w)  # nothing is ever granted
    t0 = time.perf_counter()
    out = fast.run(case("full.sdpa"))
    waited = time.perf_counter() - t0
    assert out.status == "timeout", out.reason
    assert out.reason == "no result within 3 s; worker stopped (twice --timeout: it took turns)"
    assert waited >= 3.0
    for fd in (to_r, to_w, from_r, from_w):
        os.close(fd)
