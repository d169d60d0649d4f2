"""The ONNX Runtime backend, end to end with real exports and real sessions.

Exports take seconds each, so one sweep covers most checks: a variant that exports and
is timed (verified through the session), one whose export fixes the length, and a test
workload whose padding branch a trace at a multiple of the block bakes out.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BENCH, cli_env

PLUGINS = "tests.plugins.shape_branch"


def _bench(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    env = cli_env(ATTNBENCH_PLUGINS=PLUGINS, ATTNBENCH_CACHE_DIR=str(tmp / "cache"))
    return subprocess.run([*BENCH, *args], capture_output=True, text=True, env=env, timeout=900)


def _cases(folder: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for line in (folder / "cases.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out[f"{rec['variant']}/{rec['mode']}"] = rec
    return out


@pytest.fixture(scope="module")
def ort_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    tmp = tmp_path_factory.mktemp("ort")
    out = tmp / "run"
    r = _bench(
        tmp,
        *("run", "--suite", "smoke", "--backends", "onnxruntime", "--seq-lens", "128"),
        *("--variants", "full.sdpa,full.chunked,test.padded_blocks", "--mode", "forward,train"),
        *("--max-time-per-case", "0.1", "--out", str(out)),
    )
    return tmp, out, r


def test_exported_variant_is_timed_and_verified_through_the_session(ort_run: Any) -> None:
    _, out, r = ort_run
    assert r.returncode == 0, r.stderr
    rec = _cases(out)["full.sdpa/forward"]
    assert rec["status"] == "ok", rec["reason"]
    assert rec["verification"]["verified"] is True  # the session's output against float64
    check = rec["backend_details"]["export_check"]
    assert [c["seq_len"] for c in check["lengths"]] == [128, 127]  # its own length and an odd one
    assert all(c["max_abs_err"] <= c["bound"] for c in check["lengths"])
    assert rec["backend_details"]["graph_ops"].get("Attention")  # opset 23 keeps attention fused
    assert rec["backend_details"]["export_cached"] is False
    assert rec["compile_s"] > 0 and rec["compile_s"] == pytest.approx(
        rec["backend_details"]["export_s"] + rec["backend_details"]["session_s"]
    )
    settings = rec["backend_settings"]
    assert settings["providers"] == ["CPUExecutionProvider"]
    assert settings["graph_optimization_level"] == "all" and settings["opset"] == 23
    assert settings["threads"] >= 1
    assert "InferenceSession" in rec["clock"]
    assert rec["time_s"]["median"] > 0 and rec["peak_memory_bytes"] is not None
    assert "arena" in rec["memory_method"]
    run = json.loads((out / "run.json").read_text())
    device = next(d for d in run["devices"] if d["backend"] == "onnxruntime")
    assert device["providers"] == ["CPUExecutionProvider"]


def test_a_length_fixed_at_export_is_unsupported_with_the_reason(ort_run: Any) -> None:
    _, out, _ = ort_run
    rec = _cases(out)["full.chunked/forward"]
    assert rec["status"] == "unsupported"
    assert "does not run at n=" in rec["reason"] and "exported at n=" in rec["reason"]


def test_a_shape_branch_baked_in_at_export_is_caught_before_timing(ort_run: Any) -> None:
    _, out, _ = ort_run
    rec = _cases(out)["test.padded_blocks/forward"]
    assert rec["status"] == "unsupported"
    assert "n=127" in rec["reason"] and "exported at n=128" in rec["reason"]
    assert rec["time_s"] is None


def test_training_is_refused_plainly(ort_run: Any) -> None:
    _, out, _ = ort_run
    rec = _cases(out)["full.sdpa/train"]
    assert rec["status"] == "unsupported"
    assert "does not run mode train" in rec["reason"]


def test_a_second_run_reuses_the_cached_export(ort_run: Any) -> None:
    tmp, _, _ = ort_run
    out = tmp / "again"
    r = _bench(
        tmp,
        *("run", "--suite", "smoke", "--backends", "onnxruntime", "--seq-lens", "128", "--variants", "full.sdpa"),
        *("--max-time-per-case", "0.1", "--out", str(out)),
    )
    assert r.returncode == 0, r.stderr
    rec = _cases(out)["full.sdpa/forward"]
    assert rec["status"] == "ok"
    assert rec["backend_details"]["export_cached"] is True and rec["backend_details"]["export_s"] is None


def test_a_damaged_cached_export_is_exported_again(ort_run: Any) -> None:
    # A cache file cut short by a full disk, or edited, no longer matches the digest beside it.
    tmp, _, _ = ort_run
    files = sorted((tmp / "cache" / "onnx").glob("*.onnx"))
    assert files and all((f.parent / (f.name + ".sha256")).exists() for f in files)
    for f in files:
        f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    out = tmp / "damaged"
    r = _bench(
        tmp,
        *("run", "--suite", "smoke", "--backends", "onnxruntime", "--seq-lens", "128", "--variants", "full.sdpa"),
        *("--max-time-per-case", "0.1", "--out", str(out)),
    )
    assert r.returncode == 0, r.stderr
    details = _cases(out)["full.sdpa/forward"]["backend_details"]
    assert details["export_cached"] is False and "did not match its digest" in details["export_cache"]


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("onnxruntime.colour=blue", "has no option 'colour'"),
        ("onnxruntime.opt_level=max", "expected one of disable, basic, extended, all"),
        ("onnxruntime", "should look like backend.key=value"),
        ("tpu.cores=8", "unknown backend 'tpu'"),
    ],
)
def test_bad_backend_options_are_one_line(tmp_path: Path, flag: str, message: str) -> None:
    r = _bench(tmp_path, "run", "--suite", "smoke", "--backend-option", flag, "--out", str(tmp_path / "x"))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and message in r.stderr


def test_a_missing_provider_is_unsupported_not_a_crash(tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = _bench(
        tmp_path,
        *("run", "--suite", "smoke", "--backends", "onnxruntime", "--variants", "full.sdpa", "--seq-lens", "64"),
        *("--backend-option", "onnxruntime.providers=TensorrtExecutionProvider,CPUExecutionProvider"),
        *("--out", str(out)),
    )
    assert r.returncode == 0, r.stderr
    rec = _cases(out)["full.sdpa/forward"]
    assert rec["status"] == "unsupported" and "TensorrtExecutionProvider" in rec["reason"]
