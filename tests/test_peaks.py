"""Hardware peaks: datasheet lookup, the calibration cache, `bench calibrate`, fraction_of_peak in a run."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from attnbench.backends.peaks import (
    datasheet_for,
    fraction_of_peak,
    load_calibration,
    machine_fingerprint,
    peaks_for,
    save_calibration,
)
from tests.conftest import BENCH, cli_env


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ATTNBENCH_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_datasheet_matches_the_most_specific_name() -> None:
    h100_pcie = datasheet_for("NVIDIA H100 PCIe")
    h100 = datasheet_for("NVIDIA H100 80GB HBM3")
    assert h100_pcie and h100
    assert h100_pcie["memory_bytes_per_s"] == 2.0e12 and h100["memory_bytes_per_s"] == 3.35e12
    assert datasheet_for("NVIDIA H200")["memory_bytes_per_s"] == 4.8e12  # type: ignore[index]
    assert datasheet_for("Some CPU") is None


def test_peaks_prefer_measured_then_datasheet_then_null(cache: Path) -> None:
    unknown = peaks_for("cpu", "Some CPU")
    assert unknown["source"] is None and "bench calibrate" in unknown["reason"]
    sheet = peaks_for("cuda:NVIDIA H200", "NVIDIA H200")
    assert sheet["source"] == "datasheet" and "datasheet" in sheet["reason"]
    save_calibration(
        "cuda:NVIDIA H200",
        {"matmul_flops_per_s": {"bfloat16": 7e14}, "memory_bytes_per_s": 4.1e12, "calibrated_at": "now"},
    )
    measured = peaks_for("cuda:NVIDIA H200", "NVIDIA H200")
    assert measured["source"] == "calibrated"
    assert measured["matmul_flops_per_s"] == {"bfloat16": 7e14}
    assert measured["datasheet"]["memory_bytes_per_s"] == 4.8e12  # kept beside, labelled


def test_calibration_is_per_machine(cache: Path) -> None:
    save_calibration("cpu", {"matmul_flops_per_s": {"float32": 1e11}, "memory_bytes_per_s": 1e10})
    path = cache / "peaks" / f"{machine_fingerprint()}.json"
    data = json.loads(path.read_text())
    assert data["fingerprint"] == machine_fingerprint()
    data["fingerprint"] = "another-machine"
    path.write_text(json.dumps(data))
    assert load_calibration() == {}  # a copied cache from elsewhere is not believed


def test_fraction_of_peak() -> None:
    peaks = {"source": "calibrated", "matmul_flops_per_s": {"float32": 100.0}, "memory_bytes_per_s": 50.0}
    f = fraction_of_peak(peaks, "float32", 25.0, 10.0)
    assert f == {"flops": 0.25, "bytes": 0.2, "source": "calibrated", "reason": None}
    f16 = fraction_of_peak(peaks, "float16", 25.0, 10.0)
    assert f16["flops"] is None and "no float16 matmul peak" in f16["reason"] and f16["bytes"] == 0.2
    none = fraction_of_peak({"source": None, "reason": "never calibrated"}, "float32", 1.0, 1.0)
    assert none["flops"] is None and none["bytes"] is None and none["reason"] == "never calibrated"


@pytest.mark.slow  # `bench calibrate` then `bench run`: about 8 s; CI runs it (-m slow)
def test_calibrate_then_run_records_peaks_and_fractions(tmp_path: Path) -> None:
    env = cli_env(ATTNBENCH_CACHE_DIR=str(tmp_path / "cache"))
    cal = subprocess.run(
        [*BENCH, "calibrate", "--backends", "cpu", "--dtypes", "float32", "--quick"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert cal.returncode == 0, cal.stderr
    assert "float32" in cal.stdout
    cached = json.loads(next((tmp_path / "cache" / "peaks").glob("*.json")).read_text())
    cpu = cached["devices"]["cpu"]
    assert cpu["matmul_flops_per_s"]["float32"] > 1e8  # any CPU of this century
    assert cpu["memory_bytes_per_s"] > 1e8
    assert "other_cpu_share" in cpu
    if cpu["busy"]:  # a shared machine: stored, but no ceiling; make it one to test the run's use of it
        cpu["busy"] = False
        next((tmp_path / "cache" / "peaks").glob("*.json")).write_text(json.dumps(cached))
    out = tmp_path / "run"
    run = subprocess.run(
        [
            *BENCH,
            *("run", "--suite", "smoke", "--variants", "full.sdpa", "--seq-lens", "128", "--backends", "cpu"),
            *("--max-time-per-case", "0.1", "--out", str(out)),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    device = json.loads((out / "run.json").read_text())["devices"][0]
    assert device["peaks"]["source"] == "calibrated"
    assert device["peaks"]["matmul_flops_per_s"]["float32"] == cpu["matmul_flops_per_s"]["float32"]
    case = json.loads((out / "cases.jsonl").read_text().splitlines()[0])
    frac = case["fraction_of_peak"]
    assert frac["source"] == "calibrated"
    assert frac["flops"] == pytest.approx(case["flops_per_s"] / cpu["matmul_flops_per_s"]["float32"])
    assert frac["bytes"] == pytest.approx(case["bytes_per_s"] / cpu["memory_bytes_per_s"])
    assert case["attention_ops"]  # the kernel SDPA chose is recorded
    assert any("scaled_dot_product" in k for k in case["attention_ops"])


def test_calibrate_refuses_an_unknown_backend() -> None:
    r = subprocess.run([*BENCH, "calibrate", "--backends", "tpu9"], capture_output=True, text=True, env=cli_env())
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "unknown backend tpu9" in r.stderr
