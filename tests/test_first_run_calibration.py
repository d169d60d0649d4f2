"""Hardware-aware by default (issue 22): the first `bench run` on a machine measures its device's
ceilings once (quick, in a fresh process), --no-calibrate skips it, a calibration taken on a busy
machine is no ceiling, and a case faster than its ceiling is flagged instead of given a fraction
above 1.

conftest.py sets ATTNBENCH_NO_CALIBRATE for the whole session; these tests clear it where they
want the first-run calibration, and each uses a cache of its own (ATTNBENCH_CACHE_DIR).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from attnbench.backends.cpu import CpuBackend
from attnbench.backends.peaks import fraction_of_peak, load_calibration, peaks_for, save_calibration
from attnbench.cli.main import main
from attnbench.core import cpu_load
from attnbench.core.record import RunRecord
from attnbench.core.settings import RunSettings
from attnbench.engine import calibrate as calibration
from attnbench.engine.calibrate import (
    NO_CALIBRATE_ENV,
    calibrate,
    devices_to_calibrate,
    first_run_calibration,
    over_ceiling_line,
)
from attnbench.engine.runner import new_run
from attnbench.engine.suites import load_suite, overrides_from_args, resolve
from attnbench.engine.turns import INTERLEAVED_ENV
from tests.conftest import BENCH, cli_env

QUIET = {"matmul_flops_per_s": {"float32": 2e11}, "memory_bytes_per_s": 2e10, "busy": False, "other_cpu_share": 0.01}


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ATTNBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(NO_CALIBRATE_ENV, raising=False)
    monkeypatch.delenv(INTERLEAVED_ENV, raising=False)
    return tmp_path / "cache"


def smoke_run(**axes: list[str]) -> RunRecord:
    """A run record of the smoke suite narrowed by bench run's sweep flags `axes` (nothing runs)."""
    sweep, settings = resolve(load_suite("smoke"), overrides_from_args(SimpleNamespace(**axes)))
    return new_run("r", "smoke", sweep, RunSettings(**settings), ["bench"], "local")


# ----------------------------------------------------------------------------- which devices


def test_a_device_without_calibration_is_calibrated_for_the_dtypes_the_run_uses(cache: Path, tmp_path: Path) -> None:
    run = smoke_run(variants=["full.sdpa"], backends=["cpu"], seq_lens=["64"], dtypes=["float32", "float64"])
    assert devices_to_calibrate(run, tmp_path / "run") == {"cpu": ("float32", "float64")}
    save_calibration("cpu", QUIET)
    assert devices_to_calibrate(run, tmp_path / "run") == {}  # once per machine


def test_no_calibration_when_every_case_would_be_skipped(cache: Path, tmp_path: Path) -> None:
    # 4M tokens of materialised attention: refused for memory before any worker starts.
    huge = smoke_run(variants=["full.naive"], backends=["cpu"], seq_lens=["4194304"])
    assert devices_to_calibrate(huge, tmp_path / "run") == {}
    # A backend that shares another's device (calibrates = False) is never calibrated for.
    assert not any(devices_to_calibrate(smoke_run(backends=["onnxruntime"], seq_lens=["64"]), tmp_path).values())


def test_not_on_ray_nor_as_a_side_of_bench_ab(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = smoke_run(variants=["full.sdpa"], backends=["cpu"], seq_lens=["64"])
    monkeypatch.setattr(calibration, "_calibrate_in_child", lambda *a: pytest.fail("calibrated"))
    assert first_run_calibration(run, tmp_path / "run", "ray") == []
    monkeypatch.setenv(INTERLEAVED_ENV, json.dumps({"group": "g", "side": "baseline"}))
    assert first_run_calibration(run, tmp_path / "run", "local") == []


def test_first_run_calibrates_once_in_a_fresh_process(cache: Path, tmp_path: Path) -> None:
    """The real quick calibration, in its own process (about 3 s here)."""
    run = smoke_run(variants=["full.sdpa"], backends=["cpu"], seq_lens=["64"])
    ((text, warning),) = first_run_calibration(run, tmp_path / "run", "local")
    entry = load_calibration()["cpu"]
    assert entry["quick"] is True and entry["matmul_flops_per_s"]["float32"] > 1e8
    assert 0 <= entry["other_cpu_share"] <= 1 and entry["busy"] == (entry["other_cpu_share"] > 0.10)
    assert text.startswith("calibrated cpu float32: ") and " TFLOP/s, " in text and " GB/s in " in text
    if entry["busy"]:  # this VM is shared: a busy first run is said so, and kept out of the ceilings
        assert warning and "not used as the ceiling" in text
    else:
        assert not warning and text.endswith(" s (first run on this machine; --no-calibrate skips)")
    assert first_run_calibration(run, tmp_path / "run", "local") == []  # cached: not again


def test_a_failed_calibration_is_one_warning(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess([], 1, "", "Traceback ...\nRuntimeError: no device\n")

    monkeypatch.setattr(calibration.subprocess, "run", broken)
    run = smoke_run(variants=["full.sdpa"], backends=["cpu"], seq_lens=["64"])
    ((text, warning),) = first_run_calibration(run, tmp_path / "run", "local")
    assert warning and text.startswith("could not calibrate cpu (RuntimeError: no device)")
    assert "\n" not in text and load_calibration() == {}


def test_bench_run_honours_no_calibrate_and_the_environment(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[str] = []

    def recorded(run: object, folder: Path, executor: str) -> list[tuple[str, bool]]:
        calls.append(executor)
        return [("calibrated cpu float32: 0.2 TFLOP/s, 20 GB/s in 2.0 s (first run on this machine; ...)", False)]

    monkeypatch.setattr(calibration, "first_run_calibration", recorded)
    # Every case is refused for memory, so no worker runs: seconds, not minutes.
    argv = ["run", "--suite", "smoke", "--variants", "full.naive", "--seq-lens", "4194304", "--backends", "cpu"]
    argv += ["--history", "off"]
    assert main([*argv, "--out", str(tmp_path / "a"), "--no-calibrate"]) == 0
    monkeypatch.setenv(NO_CALIBRATE_ENV, "1")
    assert main([*argv, "--out", str(tmp_path / "b")]) == 0
    assert calls == []
    monkeypatch.setenv(NO_CALIBRATE_ENV, "0")
    assert main([*argv, "--out", str(tmp_path / "c")]) == 0
    assert calls == ["local"]
    assert "calibrated cpu float32: 0.2 TFLOP/s" in capsys.readouterr().out


# ----------------------------------------------------------------------------- a busy machine


def test_a_busy_calibration_is_recorded_but_is_no_ceiling(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real quick measurement, with the load reading made to say others used half the CPU."""
    monkeypatch.setattr(cpu_load, "other_share", lambda *args: 0.5)
    result = calibrate(CpuBackend, ("float32",), None, quick=True)
    assert result is not None and result.stored
    stored = load_calibration()["cpu"]
    assert stored["busy"] is True and stored["other_cpu_share"] == 0.5 and stored["busy_threshold"] == 0.10
    peaks = peaks_for("cpu", "Some CPU")
    assert peaks["source"] is None and peaks["matmul_flops_per_s"] == {}  # not the ceiling...
    assert "other processes used 50% of the CPU" in peaks["reason"] and "bench calibrate" in peaks["reason"]
    assert peaks["busy_calibration"]["matmul_flops_per_s"] == stored["matmul_flops_per_s"]  # ...but kept, labelled
    frac = fraction_of_peak(peaks, "float32", 1e9, 1e8)
    assert frac["flops"] is None and "50% of the CPU" in frac["reason"]


def test_a_busy_calibration_never_replaces_a_quiet_one(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_calibration("cpu", {**QUIET, "calibrated_at": "2026-12-01T00:00:00+00:00"})
    monkeypatch.setattr(calibration, "measure_device", lambda *args: {"matmul_flops_per_s": {"float32": 5e10}})
    monkeypatch.setattr(cpu_load, "other_share", lambda *args: 0.3)
    result = calibrate(CpuBackend, ("float32",), None, quick=True)
    assert result is not None and not result.stored and result.entry["busy"]
    assert load_calibration()["cpu"]["matmul_flops_per_s"] == {"float32": 2e11}
    assert peaks_for("cpu", "Some CPU")["source"] == "calibrated"
    monkeypatch.setattr(cpu_load, "other_share", lambda *args: 0.02)  # quiet: replaces it
    assert calibrate(CpuBackend, ("float32",), None, quick=True).stored  # type: ignore[union-attr]
    assert load_calibration()["cpu"]["matmul_flops_per_s"] == {"float32": 5e10}


# ----------------------------------------------------------------------------- faster than the ceiling


def test_a_case_faster_than_its_ceiling_gets_no_fraction_but_a_note() -> None:
    peaks = {"source": "calibrated", "matmul_flops_per_s": {"float32": 1.16e11}, "memory_bytes_per_s": 50.0}
    f = fraction_of_peak(peaks, "float32", 1.9e11, 10.0)
    assert f["flops"] is None and f["bytes"] == 0.2
    assert f["over_ceiling"] == {"flops": pytest.approx(1.9 / 1.16)}
    assert "0.19 TFLOP/s achieved, above the calibrated float32 matmul ceiling of 0.116 TFLOP/s" in f["reason"]
    assert "bench calibrate" in f["reason"]
    cases = [
        SimpleNamespace(backend="cpu", dtype="float32", fraction_of_peak=f),
        SimpleNamespace(backend="cpu", dtype="float32", fraction_of_peak=fraction_of_peak(peaks, "float32", 1e9, 1.0)),
    ]
    text = over_ceiling_line(cases)  # type: ignore[arg-type]
    assert text is not None and text.startswith("1 case(s) ran faster than the stored ceiling (cpu float32 FLOP/s (1))")
    assert "bench calibrate" in text
    assert over_ceiling_line(cases[1:]) is None  # type: ignore[arg-type]


@pytest.mark.slow  # two `bench run`s, one calibrating for real: 30-50 s on the shared 2-core VM; CI runs it (-m slow)
def test_first_bench_run_calibrates_the_next_does_not_and_a_fast_case_is_flagged(tmp_path: Path) -> None:
    def bench(out: str) -> subprocess.CompletedProcess:
        argv = ["run", "--suite", "smoke", "--variants", "full.sdpa", "--seq-lens", "128", "--backends", "cpu"]
        argv += ["--max-time-per-case", "0.1", "--no-verify", "--history", "off", "--out", str(tmp_path / out)]
        env = cli_env(ATTNBENCH_CACHE_DIR=str(tmp_path / "cache"), **{NO_CALIBRATE_ENV: ""})
        return subprocess.run([*BENCH, *argv], capture_output=True, text=True, env=env, timeout=300)

    first = bench("first")
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("calibrated cpu float32: ") == 1
    (path,) = (tmp_path / "cache" / "peaks").glob("*.json")
    stored = json.loads(path.read_text())
    entry = stored["devices"]["cpu"]
    assert entry["quick"] and "other_cpu_share" in entry
    device = json.loads((tmp_path / "first" / "run.json").read_text())["devices"][0]
    assert device["peaks"]["source"] == ("calibrated" if not entry["busy"] else None)

    # A quiet ceiling far below what any case reaches: the next run does not calibrate, and flags the case.
    entry.update(busy=False, matmul_flops_per_s={"float32": 1e6})
    path.write_text(json.dumps(stored))
    second = bench("second")
    assert second.returncode == 0, second.stderr
    assert "calibrated cpu" not in second.stdout
    (case,) = [json.loads(line) for line in (tmp_path / "second" / "cases.jsonl").read_text().splitlines()]
    assert case["fraction_of_peak"]["flops"] is None and case["fraction_of_peak"]["over_ceiling"]["flops"] > 1
    assert "1 case(s) ran faster than the stored ceiling" in " ".join(second.stdout.split())
