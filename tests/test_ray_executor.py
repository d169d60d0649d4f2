"""`bench run --executor ray` against a real local Ray cluster: a head and two worker nodes.

The cluster is started once for the module (about 15 s on 2 cores) with token
authentication on, as a team's cluster would be; `bench` connects to it from a subprocess
with --ray-address, like a nightly job pointed at its cluster.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import BENCH, FAULTY, cli_env

pytestmark = pytest.mark.ray

PLUGINS = f"{FAULTY},tests.plugins.ray_probe"
TINY = ["--heads", "1", "--head-dim", "8", "--threads", "1", "--max-time-per-case", "0.1"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    markers = tmp_path_factory.mktemp("markers")
    # Token authentication, and the marker folder the probe workload writes to, must be in
    # the environment before Ray is imported and before its node processes start.
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "ATTNBENCH_TEST_MARKERS")}
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), ATTNBENCH_TEST_MARKERS=str(markers))
    from ray.cluster_utils import Cluster

    from attnbench.engine.executors.ray import CPU_RESOURCE

    # The head runs no case (no CPU, no attnbench_cpu); each worker node offers one CPU slot.
    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "include_dashboard": False, "object_store_memory": 80 * 2**20},
    )
    # The second node alone offers `pinned`, which the test_pinned backend asks for.
    c.add_node(num_cpus=1, resources={CPU_RESOURCE: 1}, object_store_memory=80 * 2**20)
    c.pinned = c.add_node(num_cpus=1, resources={CPU_RESOURCE: 1, "pinned": 1}, object_store_memory=80 * 2**20)
    c.markers = markers
    try:
        yield c
    finally:
        c.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def bench_env() -> dict[str, str]:
    keys = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "ATTNBENCH_TEST_MARKERS")
    return cli_env(ATTNBENCH_PLUGINS=PLUGINS, **{k: os.environ[k] for k in keys})


def bench(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([*BENCH, *args], capture_output=True, text=True, timeout=timeout, env=bench_env())


def records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "cases.jsonl").read_text().splitlines()]


def worker_node_ids(cluster: Any) -> set[str]:
    return {n.node_id for n in cluster.worker_nodes}


def test_local_cluster_needs_no_setup(tmp_path: Path) -> None:
    """No address, no token, no ~/.ray: bench starts a secured local cluster for the run and stops it."""
    env = {k: v for k, v in cli_env().items() if not k.startswith("RAY_")}
    env["HOME"] = str(tmp_path / "home")  # nothing to find there, and nothing may be written there
    out = tmp_path / "run"
    args = ["run", "--executor", "ray", "--variants", "full.sdpa", "--backends", "cpu", "--seq-lens", "32", *TINY]
    proc = subprocess.run([*BENCH, *args, "--out", str(out)], capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr
    (rec,) = records(out)
    assert rec["status"] == "ok" and rec["node"]["ray_node_id"]
    ray_info = json.loads((out / "run.json").read_text())["ray"]
    assert ray_info["local_cluster"] is True and ray_info["dashboard"] is False
    assert ray_info["auth"].startswith("token") and ray_info["cluster_resources"]["attnbench_cpu"] == 1
    # Ray 2.60's GCS and raylet listen on every interface whatever node_ip_address says: the
    # record says where the cluster listened, so nobody reads "local" as "unreachable".
    assert ray_info["listening"] and "127.0.0.1" in ray_info["listening"]
    assert not (tmp_path / "home" / ".ray" / "auth_token").exists()


def test_ray_sweep_matches_local(cluster: Any, tmp_path: Path) -> None:
    sweep = [
        "run", "--variants", "full.sdpa,test.torch_oom", "--backends", "cpu,test_gpu",
        "--seq-lens", "64,128", *TINY,
    ]  # fmt: skip
    local = bench(*sweep, "--out", str(tmp_path / "local"))
    assert local.returncode == 0, local.stderr
    ray_run = bench(*sweep, "--executor", "ray", "--ray-address", cluster.address, "--out", str(tmp_path / "ray"))
    assert ray_run.returncode == 0, ray_run.stderr

    by_local = {r["case_id"]: r for r in records(tmp_path / "local")}
    by_ray = {r["case_id"]: r for r in records(tmp_path / "ray")}
    assert len(by_ray) == len(records(tmp_path / "ray")) == 8  # each case once
    assert by_ray.keys() == by_local.keys()
    assert {k: r["status"] for k, r in by_ray.items()} == {k: r["status"] for k, r in by_local.items()}
    statuses = sorted(r["status"] for r in by_ray.values())
    assert statuses == ["ok"] * 2 + ["oom", "skipped"] + ["unsupported"] * 4

    nodes = worker_node_ids(cluster)
    run = json.loads((tmp_path / "ray" / "run.json").read_text())
    assert run["status"] == "complete" and run["executor"] == "ray"
    assert run["ray_options"]["address"] == cluster.address
    assert run["ray"]["local_cluster"] is False and run["ray"]["cluster_resources"]["attnbench_cpu"] == 2
    listed = {n["id"]: n for n in run["nodes"]}
    for rec in by_ray.values():
        if rec["backend"] == "test_gpu":  # no node has a GPU: said so, never silently dropped
            assert rec["status"] == "unsupported" and "no node of the Ray cluster offers" in rec["reason"]
            assert "GPU=1" in rec["reason"] and rec.get("node") is None
            continue
        if rec["status"] == "skipped":
            assert "ran out of memory at n=64" in rec["reason"]
            continue
        node = rec["node"]
        assert node["ray_node_id"] in nodes and node["id"] in listed
        assert node["fingerprint"] == listed[node["id"]]["fingerprint"]
        assert listed[node["id"]]["host"]["hostname"] == node["hostname"]
        if rec["status"] == "ok":
            assert rec["backend_settings"]["threads"] == 1  # pinned, whatever Ray set OMP_NUM_THREADS to
            assert rec["device"] in listed[node["id"]]["devices"]
            assert rec["peak_memory_bytes"] is not None
    assert sum(n["cases"] for n in listed.values()) == 3  # all but the skipped one ran

    # One case at a time per device: on each node, the cases' run times never overlap.
    spans: dict[str, list[tuple[float, float]]] = {}
    for rec in by_ray.values():
        if rec.get("node"):
            spans.setdefault(rec["node"]["id"], []).append((rec["worker"]["started_unix"], rec["worker"]["ended_unix"]))
    for intervals in spans.values():
        intervals.sort()
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(intervals)), intervals


def test_interrupt_then_resume_keeps_ray(cluster: Any, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [
        "run", "--executor", "ray", "--ray-address", cluster.address, "--variants", "test.sleepy",
        "--param", "test.sleepy.sleep=0.2", "--seq-lens", "16,32,48", "--backends", "cpu", *TINY,
        "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.Popen(
        [*BENCH, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=bench_env(),
        # A shell without job control (CI's, running this in the background) starts jobs with
        # SIGINT ignored, which bench keeps: give it the default, as a terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    cases = out / "cases.jsonl"
    deadline = time.monotonic() + 240  # a busy 2-core machine with three Ray nodes is slow to start
    while time.monotonic() < deadline and not (cases.exists() and cases.read_text().count("\n") >= 1):
        time.sleep(0.05)
    assert cases.exists() and cases.read_text().count("\n") >= 1, "no case finished within 240 s"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    first = records(out)
    assert 1 <= len(first) < 3 and all(r["status"] == "ok" for r in first)
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"

    # run.json is untrusted: a resume contacts the cluster it names only when told to again.
    refused = bench("run", "--resume", str(out))
    assert refused.returncode == 2 and f"--ray-address {cluster.address}" in refused.stderr, refused.stderr
    resumed = bench("run", "--resume", str(out), "--ray-address", cluster.address)  # no --executor: the run's own
    assert resumed.returncode == 0, resumed.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete" and run["executor"] == "ray" and len(run["resumed_at"]) == 1
    recs = records(out)
    assert [r["seq_len"] for r in recs] == [16, 32, 48]
    assert all(r["status"] == "ok" and r["node"]["ray_node_id"] for r in recs)


def _runs_on(node: Any, pid: int) -> bool:
    """Whether the node's raylet is an ancestor of the process (case worker < fork server < Ray worker)."""
    try:
        ancestors = {p.pid for p in psutil.Process(pid).parents()}
    except psutil.NoSuchProcess:
        return False
    return node.all_processes["raylet"][0].process.pid in ancestors


def _pinned_case_on(node: Any, marker: Path) -> bool:
    try:
        backend = marker.read_text().split()[0]
    except (OSError, IndexError):  # being written
        return False
    return backend == "test_pinned" and _runs_on(node, int(marker.name))


def test_node_dies_mid_case(cluster: Any, tmp_path: Path) -> None:
    """Kill the node running a case: that case is an error naming the node, the rest completes.

    Last in the module: it leaves the cluster one node short. The marked case runs on the
    test_pinned backend, which only the second node offers, so after its death the cases of
    that backend that have not run can run nowhere and must say so.
    """
    out = tmp_path / "run"
    args = [
        "run", "--executor", "ray", "--ray-address", cluster.address, "--variants", "full.sdpa,test.marked_sleep",
        "--param", "test.marked_sleep.sleep=0.2", "--backends", "cpu,test_pinned", "--seq-lens", "32,64", *TINY,
        "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.Popen([*BENCH, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=bench_env())
    try:
        victim = cluster.pinned
        deadline = time.monotonic() + 120
        # The test_pinned case, not a cpu one that Ray may also have placed on the pinned node.
        while not any(_pinned_case_on(victim, m) for m in cluster.markers.iterdir()):
            assert time.monotonic() < deadline, "the marked test_pinned case never started on the pinned node"
            time.sleep(0.05)
        cluster.remove_node(victim, allow_graceful=False)  # mid-case: its worker is sleeping in forward()
        _, stderr = proc.communicate(timeout=180)
        assert proc.returncode == 0, stderr
        run = json.loads((out / "run.json").read_text())
        assert run["status"] == "complete"
        recs = {(r["variant"], r["backend"], r["seq_len"]): r for r in records(out)}
        assert len(recs) == run["cases_total"] == 8  # the sweep completed, each case once
        summary = {k: (r["status"], r["reason"]) for k, r in recs.items()}

        died = recs[("test.marked_sleep", "test_pinned", 32)]
        assert died["status"] == "error" and died["reason"].startswith("node died:"), summary
        assert died["node"]["ray_node_id"] == victim.node_id  # attributed to the node that died
        for n in (32, 64):  # the other nodes carry on
            assert recs[("full.sdpa", "cpu", n)]["status"] == "ok", summary
            assert recs[("test.marked_sleep", "cpu", n)]["status"] == "ok", summary
        # Only the dead node offered `pinned`: what had not run there is unsupported, with the reason.
        later = recs[("test.marked_sleep", "test_pinned", 64)]
        assert later["status"] == "unsupported" and "no node has enough pinned" in later["reason"], summary
        assert later["node"] is None  # it ran nowhere
        for n in (32, 64):
            rec = recs[("full.sdpa", "test_pinned", n)]
            assert rec["status"] in ("ok", "unsupported"), summary  # ok if it ran before the kill
            if rec["status"] == "ok":
                assert rec["node"]["ray_node_id"] == victim.node_id
            else:
                assert "no node has enough pinned" in rec["reason"] and rec["node"] is None, summary
    finally:
        if proc.poll() is None:
            proc.kill()
        for f in cluster.markers.iterdir():
            f.unlink()
