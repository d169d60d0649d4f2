"""`bench profile` and `bench run --profile`: real profiles of real cases, and the trace analysis.

The analysis tests replay hand-made traces with known answers; the command tests profile
one variant of each family on the CPU and read the files back. No timing is asserted
beyond a generous agreement of medians with and without profiling.
"""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from attnbench.cli.main import main
from attnbench.engine.profile_data import CALL_RANGE, OUTSIDE, analyze_ort_trace, analyze_torch_trace
from attnbench.workloads.base import step_range
from tests.conftest import BENCH, cli_env

SMALL = ["--backends", "cpu", "--batch", "1", "--heads", "2", "--head-dim", "16", "--threads", "1"]

# One variant per family, with the named steps its trace must show.
FAMILIES = {
    "full": (["--variants", "full.naive", "--seq-lens", "128"], {"naive.scores", "naive.softmax", "naive.output"}),
    "sparse": (
        ["--variants", "sparse.lsh", "--seq-lens", "200"],  # 4 chunks of 64, the last one padded
        {"lsh.hash", "lsh.sort", "lsh.gather", "lsh.attention", "lsh.unsort", "lsh.combine"},
    ),
    "adaptive": (
        ["--variants", "adaptive.universal", "--seq-lens", "64", "--param", "adaptive.universal.steps=2"],
        {"universal.step", "layer.qkv", "layer.attention", "layer.proj", "layer.ffn", "sdpa.attention"},
    ),
    "hierarchical": (
        [
            "--variants",
            "hierarchical.transformer_xl",
            "--seq-lens",
            "128",
            "--param",
            "hierarchical.transformer_xl.segment=32",
            "--param",
            "hierarchical.transformer_xl.memory=32",
        ],
        {"xl.relative_positions", "xl.memory", "xl.content_scores", "xl.position_scores", "xl.softmax_output"},
    ),
}


def _only_profile_folder(root: Path) -> Path:
    folders = [p for p in root.iterdir() if p.is_dir()]
    assert len(folders) == 1, folders
    return folders[0]


def _ranges(trace: dict[str, Any]) -> set[str]:
    return {e["name"] for e in trace["traceEvents"] if e.get("cat") == "user_annotation"}


def check_profile_folder(folder: Path, steps: set[str]) -> dict[str, Any]:
    """The files exist and parse; the trace and the tables name the variant's steps."""
    trace = json.loads((folder / "trace.json").read_text())
    assert isinstance(trace["traceEvents"], list) and trace["traceEvents"]
    assert steps <= _ranges(trace), steps - _ranges(trace)
    assert CALL_RANGE in _ranges(trace)
    tb = list((folder / "tensorboard").glob("*.pt.trace.json"))
    assert len(tb) == 1 and json.loads(tb[0].read_text())["traceEvents"]
    summary = json.loads((folder / "profile.json").read_text())
    assert steps <= {s["name"] for s in summary["steps_all"]}
    shares = [s["share"] for s in summary["steps"]]  # top-level steps and the rest tile the call
    assert sum(shares) == pytest.approx(1.0, abs=0.02)
    with open(folder / "ops.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(r["name"] for r in rows)
    assert sum(float(r["share"]) for r in rows) == pytest.approx(1.0, abs=1e-3)
    assert any(r["step"] in steps for r in rows)  # operators are attributed to steps
    assert sum(int(r["allocated_bytes"]) for r in rows) > 0
    md = (folder / "ops.md").read_text()
    assert "Top operators by " in md and "Top operators by memory allocated" in md
    assert (folder / "memory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return summary


@pytest.mark.parametrize("family", list(FAMILIES))
def test_bench_profile_each_family_on_cpu(
    family: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    flags, steps = FAMILIES[family]
    monkeypatch.setenv("COLUMNS", "200")
    code = main(["profile", *flags, *SMALL, "--calls", "2", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    folder = _only_profile_folder(tmp_path)
    summary = check_profile_folder(folder, steps)
    assert summary["calls"] == 2 and summary["profiler"] == "torch"
    assert summary["case"]["variant"] == flags[1]
    assert "top operators by host self time" in out and "named steps" in out
    assert summary["ops"][0]["name"] in out  # the top operator is printed


def test_profile_a_case_of_a_stored_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    flags, steps = FAMILIES["sparse"]
    assert main(["run", *flags, *SMALL, "--max-time-per-case", "0.05", "--out", str(run), "--history", "off"]) == 0
    case_id = json.loads((run / "cases.jsonl").read_text().splitlines()[0])["case_id"]
    capsys.readouterr()
    assert main(["profile", str(run / case_id), "--calls", "1"]) == 0
    check_profile_folder(run / "profiles" / case_id, steps)
    # The id alone with --run, or a unique prefix of it, names the same case.
    assert main(["profile", case_id[:-3], "--run", str(run), "--calls", "1", "--out", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / case_id / "trace.json").is_file()


def test_run_with_profile_records_the_same_medians(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Profiling never touches a measured figure: it runs after timing, in another process.

    Shown three ways. Deterministically: the probe variant counts its calls made while a
    profiler was recording, and the time worker's record says none of its calls were, while
    the profile worker (another pid) recorded its own. Structurally: the record has the same
    fields but `profile`. Statistically: the medians agree within a generous factor, since on
    a shared, noisy machine a tight bound would test the neighbours, not the code.
    """
    monkeypatch.setenv("ATTNBENCH_PLUGINS", "tests.plugins.profiler_probe")
    from attnbench.core.registry import load_plugins

    load_plugins()
    flags = ["--variants", "test.profiler_probe", "--seq-lens", "256", *SMALL, "--max-time-per-case", "0.2"]
    plain, profiled = tmp_path / "plain", tmp_path / "profiled"
    assert main(["run", *flags, "--out", str(plain), "--history", "off"]) == 0
    assert main(["run", *flags, "--profile", "--out", str(profiled), "--history", "off"]) == 0
    a = json.loads((plain / "cases.jsonl").read_text())
    b = json.loads((profiled / "cases.jsonl").read_text())
    assert a["status"] == b["status"] == "ok"
    assert a["case_id"] == b["case_id"]
    assert b["workload_metrics"]["calls"] > 10 and b["workload_metrics"]["profiled_calls"] == 0
    assert "profile" not in a
    p = b["profile"]
    assert p["status"] == "ok", p
    assert p["worker"]["pid"] != b["worker"]["pid"]  # never the timed process
    assert p["dir"] == f"profiles/{b['case_id']}"
    folder = profiled / p["dir"]
    check_profile_folder(folder, {"probe.attention"})
    for key in ("trace", "ops_csv", "ops_md", "memory_png", "summary"):
        assert (folder / p[key]).is_file()
    assert p["top_ops"] and {"name", "self_s", "share"} <= set(p["top_ops"][0])
    assert "probe.attention" in {s["name"] for s in p["steps"]}
    assert set(b) - set(a) == {"profile"}  # nothing else in the record changed shape
    ratio = b["time_s"]["median"] / a["time_s"]["median"]
    assert 1 / 4 < ratio < 4, ratio
    run = json.loads((profiled / "run.json").read_text())
    assert run["settings"]["profile"] is True
    assert run["settings"]["profile_dir"] == str((profiled / "profiles").resolve())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "name a case"),
        (["--variants", "full.naive", "--seq-lens", "128,256", "--backends", "cpu"], "the flags name 2 cases"),
        (["no-such-case", "--run", "RUN"], "no case matches 'no-such-case'"),
        (["RUN/nope"], "has no cases"),
        (["x/y"], "is not RUN_DIR/CASE_ID"),
        (["--run", "RUN"], "--run needs a CASE_ID"),
        (["RUN/x", "--variants", "full.naive"], "name the case once"),
        (["--variants", "full.naive", "--seq-lens", "128", "--calls", "0"], "--calls must be at least 1"),
    ],
)
def test_profile_user_errors_are_one_line(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(
        json.dumps(
            {
                "schema": "attnbench.run/1",
                "run_id": "r",
                "suite": "s",
                "started_at": "",
                "finished_at": None,
                "status": "complete",
                "argv": [],
                "git": {},
                "host": {},
                "packages": {},
                "devices": [],
            }
        )
    )
    from dataclasses import fields

    from attnbench.core.record import CaseRecord

    record = {f.name: None for f in fields(CaseRecord) if f.metadata["written"]}  # every JSON field
    record.update(schema="attnbench.case/1", case_id="full.naive-cpu-n128-0123456789", variant="full.naive")
    if "no-such-case" in args:
        (run / "cases.jsonl").write_text(json.dumps(record) + "\n")
    args = [a.replace("RUN", str(run)) for a in args]
    assert main(["profile", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--profile", "--executor", "ray"], "--profile runs with the local executor"),
        (["--profile", "--resume", "somewhere"], "drop --profile"),
    ],
)
def test_run_profile_flag_mistakes(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", *args]) == 2
    assert message in capsys.readouterr().err


# ----------------------------------------------------------------------------- analysis


def _x(name: str, cat: str, ts: float, dur: float, tid: int = 1, **args: Any) -> dict[str, Any]:
    return {"ph": "X", "cat": cat, "name": name, "pid": 7, "tid": tid, "ts": ts, "dur": dur, "args": args}


def _mem(ts: float, nbytes: int, total: int, tid: int = 1, device: int = 0) -> dict[str, Any]:
    args = {"Bytes": nbytes, "Total Allocated": total, "Device Type": device}
    return {"ph": "i", "cat": "cpu_instant_event", "name": "[memory]", "pid": 7, "tid": tid, "ts": ts, "args": args}


def test_torch_trace_analysis_attributes_time_memory_and_kernels() -> None:
    """Two calls; known self times, allocations and kernel times (µs in the trace)."""
    events = [_x("warmup op", "cpu_op", 0, 50)]  # outside any call: ignored
    for t0 in (100.0, 1100.0):
        events += [
            _x(CALL_RANGE, "user_annotation", t0, 1000),
            _x("v.hash", "user_annotation", t0 + 10, 300),
            _x("aten::matmul", "cpu_op", t0 + 20, 200),  # self 200 - 150 = 50
            _x("aten::mm", "cpu_op", t0 + 30, 150),
            _mem(t0 + 40, 4096, 4096),  # inside aten::mm
            _x("cudaLaunchKernel", "cuda_runtime", t0 + 50, 10, correlation=int(t0)),
            _x("v.attention", "user_annotation", t0 + 400, 500),
            _x("v.inner", "user_annotation", t0 + 410, 100),  # nested step
            _x("aten::softmax", "cpu_op", t0 + 420, 80),
            _mem(t0 + 430, 1024, 5120),
            _mem(t0 + 440, -4096, 1024),  # a free is not an allocation
            _x("cudaLaunchKernel", "cuda_runtime", t0 + 450, 10, correlation=int(t0) + 1),
            _x("aten::bmm", "cpu_op", t0 + 600, 100),
        ]
        kernel = {"ph": "X", "cat": "kernel", "name": "gemm", "pid": 0, "tid": 7}
        events.append({**kernel, "ts": t0 + 60, "dur": 30, "args": {"correlation": int(t0)}})
        events.append({**kernel, "name": "softmax_k", "ts": t0 + 460, "dur": 20, "args": {"correlation": int(t0) + 1}})
    a = analyze_torch_trace({"traceEvents": events}, calls=2)
    assert a.calls == 2 and a.call_s == pytest.approx(1000e-6)
    ops = {o.name: o for o in a.ops}
    assert "warmup op" not in ops
    assert ops["aten::matmul"].self_s == pytest.approx(50e-6)
    assert ops["aten::mm"].self_s == pytest.approx(150e-6)
    assert ops["aten::mm"].allocated_bytes == 4096 and ops["aten::mm"].step == "v.hash"
    assert ops["aten::mm"].device_s == pytest.approx(30e-6)
    assert ops["aten::softmax"].step == "v.inner" and ops["aten::softmax"].allocated_bytes == 1024
    assert ops["aten::softmax"].device_s == pytest.approx(20e-6)
    assert ops["aten::bmm"].step == "v.attention" and ops["aten::bmm"].count == 1
    assert sum(o.share for o in a.ops) == pytest.approx(1.0)
    assert a.ops[0].name == "aten::mm"  # ranked by device time when kernels exist
    steps = {s.name: s for s in a.steps}
    assert steps["v.hash"].total_s == pytest.approx(300e-6) and steps["v.hash"].depth == 1
    assert steps["v.hash"].share == pytest.approx(0.3) and steps["v.hash"].allocated_bytes == 4096
    assert steps["v.inner"].depth == 2 and steps["v.attention"].allocated_bytes == 1024
    assert steps["v.attention"].device_s == pytest.approx(20e-6)
    assert steps[OUTSIDE].total_s == pytest.approx(200e-6)
    assert [s for s, _, _ in a.spans] == ["v.hash", "v.attention"] * 2
    (cpu,) = a.memory
    assert cpu.bytes == [0, 1024, -3072] * 2 and cpu.times_s[1] == pytest.approx(430e-6)
    assert a.time_basis == "CUDA kernel time"


def test_ort_trace_analysis_keeps_only_the_profiled_runs() -> None:
    def node(name: str, ts: float, dur: float, op: str, size: str | None = None) -> dict[str, Any]:
        args = {"op_name": op, **({"output_size": size} if size else {})}
        return {"ph": "X", "cat": "Node", "pid": 1, "tid": 1, "name": name, "ts": ts, "dur": dur, "args": args}

    def run(ts: float) -> list[dict[str, Any]]:
        return [
            {"ph": "X", "cat": "Session", "name": "model_run", "pid": 1, "tid": 1, "ts": ts, "dur": 100},
            node("mm_kernel_time", ts + 10, 60, "MatMul", "800"),
            node("sm_kernel_time", ts + 75, 20, "Softmax", "400"),
            node("sm_fence_before", ts + 74, 1, "Softmax"),  # not a kernel: not counted
        ]

    events = [{"ph": "X", "cat": "Session", "name": "session_initialization", "ts": 0, "dur": 5}]
    events += run(10) + run(1000) + run(2000) + run(3000)  # the export check, warm-up, then 2 profiled
    a, kept = analyze_ort_trace(events, calls=2)
    assert a.calls == 2 and a.call_s == pytest.approx(100e-6)
    assert [o.name for o in a.ops] == ["MatMul", "Softmax"]
    assert a.ops[0].self_s == pytest.approx(60e-6) and a.ops[0].share == pytest.approx(0.75)
    assert a.ops[0].allocated_bytes == 800 and a.ops[0].count == 1
    assert min(e["ts"] for e in kept) == 2000 and len(kept) == 8


def test_step_range_costs_nothing_without_a_profiler() -> None:
    """Outside a profiler the range is one shared no-op context; inside, a real record_function."""
    assert step_range("a") is step_range("b")
    with torch.profiler.profile() as prof, step_range("x.step"):  # the range is made inside the profiler
        torch.ones(4).sum()
    assert "x.step" in {e.key for e in prof.key_averages()}


# ----------------------------------------------------------------------------- other backends


@pytest.mark.slow
def test_bench_profile_onnxruntime(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """ONNX Runtime's own session profiling: graph nodes by op type, only the profiled runs."""
    pytest.importorskip("onnxruntime")
    flags = ["--variants", "full.naive", "--seq-lens", "64", *SMALL]
    flags[flags.index("cpu")] = "onnxruntime"
    assert main(["profile", *flags, "--calls", "2", "--out", str(tmp_path)]) == 0
    folder = _only_profile_folder(tmp_path)
    trace = json.loads((folder / "trace.json").read_text())
    runs = [e for e in trace["traceEvents"] if e.get("name") == "model_run"]
    assert len(runs) == 2
    summary = json.loads((folder / "profile.json").read_text())
    assert summary["profiler"] == "onnxruntime" and summary["calls"] == 2
    assert {"MatMul", "Softmax"} & {o["name"] for o in summary["ops"]}
    assert (folder / "ort_profile.json").is_file() and (folder / "memory.png").is_file()
    assert "process RSS" in summary["memory_series"][0]


@pytest.mark.xla
def test_bench_profile_xla(tmp_path: Path) -> None:
    """torch-xla: host trace with the named steps, TensorBoard trace, metrics report."""
    pytest.importorskip("torch_xla", reason="torch_xla is not installed in this environment")
    flags = ["--variants", "sparse.lsh", "--seq-lens", "128", *SMALL]
    flags[flags.index("cpu")] = "xla"
    r = subprocess.run(
        [*BENCH, "profile", *flags, "--calls", "2", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=cli_env(PJRT_DEVICE="CPU"),
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    folder = _only_profile_folder(tmp_path)
    trace = json.loads((folder / "trace.json").read_text())
    assert {"lsh.hash", "lsh.sort", "lsh.attention"} <= _ranges(trace)
    summary = json.loads((folder / "profile.json").read_text())
    assert summary["profiler"] == "xla"
    assert summary["metrics"]["ExecuteTime"]["count"] >= 2
    assert "CompileTime" not in summary["metrics"]  # the graph traced under the profiler was compiled first
    assert (folder / "metrics.txt").read_text().strip()
    if summary.get("tensorboard"):
        assert list((folder / "tensorboard").rglob("*.xplane.pb"))


@pytest.mark.gpu
def test_bench_profile_cuda(tmp_path: Path) -> None:
    """CUDA activities: kernels are attributed to the operators (and steps) that launched them."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    flags = ["--variants", "sparse.lsh", "--seq-lens", "1024", "--backends", "cuda", "--heads", "4"]
    assert main(["profile", *flags, "--calls", "2", "--out", str(tmp_path)]) == 0
    folder = _only_profile_folder(tmp_path)
    summary = check_profile_folder(folder, FAMILIES["sparse"][1])
    assert summary["time_basis"] == "CUDA kernel time"
    assert summary["ops"][0]["device_s"] > 0
    assert "CUDA" in summary["activities"]


def test_profile_help_lists_run_flags() -> None:
    r = subprocess.run([*BENCH, "profile", "--help"], capture_output=True, text=True, env=cli_env(), timeout=120)
    assert r.returncode == 0
    for flag in ("--variants", "--seq-lens", "--backends", "--param", "--run", "--calls"):
        assert flag in r.stdout
