"""The cuda backend on a real NVIDIA GPU. Marked gpu: deselected by default, skipped without a GPU.

scripts/gpu_check.sh runs these and a smoke sweep in one go on a GPU machine.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import BENCH, cli_env

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with a CUDA build of torch"),
]


def _long_step() -> object:
    a = torch.randn(4096, 4096, device="cuda")

    def step() -> object:
        return a @ a @ a @ a  # tens of milliseconds of GPU work per call on any current GPU

    return step


def test_events_agree_with_a_synchronised_host_clock_for_long_calls() -> None:
    from attnbench.backends.cuda import host_vs_event_seconds

    step = _long_step()
    step()
    torch.cuda.synchronize()
    host, events = host_vs_event_seconds(step, 10)
    assert events > 0.005
    assert abs(host - events) / events < 0.10  # launch overhead is small against long calls


def test_an_unsynchronised_host_clock_would_have_been_wrong() -> None:
    """Why events: a host clock read right after launching measures the launch, not the work."""
    from attnbench.backends.cuda import CudaEventTimer

    step = _long_step()
    step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        step()
    launched = time.perf_counter() - t0
    torch.cuda.synchronize()
    events = CudaEventTimer(flush=False).time(step, 10)
    assert launched < 0.5 * events


def test_allocator_peak_follows_the_scores_matrix() -> None:
    from attnbench.backends.cuda import CudaMemoryMeter

    n = 4096
    q = torch.randn(1, 8, n, 64, device="cuda")
    meter = CudaMemoryMeter(torch.cuda.current_device())
    meter.start()
    scores = (q @ q.transpose(-1, -2)).softmax(-1)  # (1, 8, n, n) float32: 512 MiB
    del scores
    reading = meter.stop()
    scores_bytes = 8 * n * n * 4
    assert scores_bytes <= reading.peak_bytes <= 3 * scores_bytes
    assert reading.details["reserved_peak_bytes"] >= reading.peak_bytes
    assert reading.details.get("nvml_device")  # torch's device matched to NVML's


def test_smoke_suite_on_cuda(tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = subprocess.run(
        [*BENCH, "run", "--suite", "smoke", "--backends", "cuda", "--dtypes", "float32,float16", "--out", str(out)],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    recs = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
    ok = [x for x in recs if x["status"] == "ok"]
    assert len(ok) >= 0.8 * len(recs), [(x["variant"], x["status"], x["reason"]) for x in recs if x not in ok]
    for x in ok:
        assert x["clock"].startswith("torch.cuda.Event")
        assert x["peak_memory_bytes"] is not None and x["peak_memory_bytes"] < 4 * 2**30
        assert x["energy_j"] is not None and x["energy_j"] > 0, x["energy_reason"]
        assert "nvml" in x["energy_method"]
    sdpa = [x for x in ok if x["variant"] == "full.sdpa" and x["dtype"] == "float16"]
    assert sdpa and any("scaled_dot_product" in k for k in sdpa[0]["attention_ops"])
