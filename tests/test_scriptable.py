"""bench for scripts: --json on every command that prints results, --version, shell completion,
and the exit codes of bench run --fail-on-error and bench compare --fail-on-regression."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from attnbench.cli.ab import side_flags
from attnbench.cli.compare import CompareRequest, compare
from attnbench.cli.main import PYPROJECT, main, version
from attnbench.cli.run import _exit_code
from attnbench.core.errors import EXIT_CASES_FAILED, EXIT_INTERRUPTED, EXIT_REGRESSION, EXIT_USER_ERROR
from attnbench.core.results import RunResult, load_run
from attnbench.core.thresholds import read_toml
from tests.conftest import BENCH, FAULTY, cli_env
from tests.synthetic_runs import Case, noisy, write_run

TINY = ["--seq-lens", "64", "--heads", "1", "--head-dim", "8", "--max-time-per-case", "0.05", "--no-verify"]


def bench(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


# ----------------------------------------------------------------------------- bench run


def test_run_json_is_all_of_stdout_and_fail_on_error_exits_3(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real run, captured at the file descriptors: only the JSON on stdout (the workers inherit
    it too), the progress on stderr; one case failed, so --fail-on-error exits EXIT_CASES_FAILED."""
    monkeypatch.setenv("ATTNBENCH_PLUGINS", FAULTY)
    out = tmp_path / "run"
    argv = ["run", "--variants", "full.sdpa,test.raises", *TINY, "--history", "off", "--out", str(out)]
    code = main([*argv, "--json", "--fail-on-error"])
    stdout, stderr = capfd.readouterr()
    assert code == EXIT_CASES_FAILED, stderr
    summary = json.loads(stdout)  # the whole of stdout is one JSON document
    run = load_run(out).run
    assert summary["schema"] == "attnbench.run-summary/1"
    assert (summary["run_id"], summary["folder"], summary["status"]) == (run.run_id, str(out), "complete")
    assert summary["counts"]["ok"] == 1 and summary["counts"]["error"] == 1 and summary["failed"] == 1
    by = {c["variant"]: c for c in summary["cases"]}
    ok, failed = by["full.sdpa"], by["test.raises"]
    assert set(ok) >= {
        "case_id", "variant", "params", "scope", "backend", "dtype", "mode", "seq_len", "status", "reason",
        "median_s", "ci95", "peak_memory_bytes", "stable",
    }  # fmt: skip
    assert ok["status"] == "ok" and ok["seq_len"] == 64 and ok["median_s"] > 0
    assert ok["ci95"][0] <= ok["median_s"] <= ok["ci95"][1]
    assert failed["status"] == "error" and "deliberate failure" in failed["reason"] and failed["median_s"] is None
    assert "[2/2]" in stderr and str(out) in stderr  # progress and the header went to stderr
    assert f"exit {EXIT_CASES_FAILED} (--fail-on-error)" in stderr


def _result(tmp_path: Path, *statuses: str) -> RunResult:
    cases = [
        Case(f"c{i}", noisy(0.01, 5, 0.01, seed=i) if s == "ok" else None, status=s) for i, s in enumerate(statuses)
    ]
    return load_run(write_run(tmp_path / "-".join(statuses), "run-x", cases))


@pytest.mark.parametrize(
    ("statuses", "plain", "with_flag"),
    [
        (("ok", "ok"), 0, 0),
        (("ok", "error"), 0, EXIT_CASES_FAILED),  # a failure among measured cases: only with the flag
        (("ok", "timeout", "skipped", "unsupported"), 0, EXIT_CASES_FAILED),
        (("ok", "skipped", "unsupported"), 0, 0),  # the sweep's decisions are no failures
        (("error", "oom", "skipped"), EXIT_CASES_FAILED, EXIT_CASES_FAILED),  # none ok: a failed run
        (("skipped", "unsupported"), 0, 0),  # nothing failed either
    ],
)
def test_run_exit_codes(tmp_path: Path, statuses: tuple[str, ...], plain: int, with_flag: int) -> None:
    result = _result(tmp_path, *statuses)
    assert _exit_code(result, 0, fail_on_error=False) == plain
    assert _exit_code(result, 0, fail_on_error=True) == with_flag
    assert _exit_code(result, EXIT_INTERRUPTED, fail_on_error=True) == EXIT_INTERRUPTED


# ----------------------------------------------------------------------------- --version, completion


def test_version_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = f"bench {metadata.version('attnbench')}"
    module = subprocess.run([*BENCH, "--version"], capture_output=True, text=True, timeout=60, env=cli_env())
    assert (module.returncode, module.stdout.strip()) == (0, expected)
    script = Path(sys.executable).with_name("bench")  # the console script pip installed beside this Python
    if script.exists():
        r = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60, env=cli_env())
        assert (r.returncode, r.stdout.strip()) == (0, expected)

    def not_installed(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    assert version() == read_toml(PYPROJECT)["project"]["version"]  # a checkout never installed


def test_completion_scripts_know_the_commands(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pytest.importorskip("shtab")
    code, bash_script, _ = bench(capsys, "completion", "bash")
    assert code == 0
    code, zsh_script, _ = bench(capsys, "completion", "zsh")
    assert code == 0 and zsh_script.startswith("#compdef bench")
    for command in ("run", "compare", "history", "export", "completion"):
        assert command in bash_script and f"{command}:" in zsh_script
    assert "--fail-on-error" in bash_script and "--allow-missing" in zsh_script
    if shutil.which("bash"):  # bash completes with it, as a shell would on TAB
        path = tmp_path / "bench.bash"
        path.write_text(bash_script)
        probe = (
            f"source {path}; complete() {{ :; }}; "
            'COMP_WORDS=(bench com); COMP_CWORD=1; _shtab_bench; echo "${COMPREPLY[*]}"; '
            'COMP_WORDS=(bench run --fail-on); COMP_CWORD=2; _shtab_bench; echo "${COMPREPLY[*]}"'
        )
        r = subprocess.run(["bash", "--noprofile", "--norc", "-c", probe], capture_output=True, text=True, timeout=30)
        assert r.stdout.splitlines() == ["compare completion", "--fail-on-error"], r.stderr
    if shutil.which("zsh"):  # zsh parses its script (zsh is on few CI machines)
        path = tmp_path / "_bench"
        path.write_text(zsh_script)
        r = subprocess.run(["zsh", "-n", str(path)], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr


def test_completion_without_shtab_says_how_to_get_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "shtab", None)  # import shtab now raises ImportError
    code, out, err = bench(capsys, "completion", "zsh")
    assert code == EXIT_USER_ERROR and out == ""
    assert err.count("\n") == 1 and "pip install shtab" in err


# ----------------------------------------------------------------------------- --json elsewhere


def test_list_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = bench(capsys, "list", "--json")
    data = json.loads(out)
    assert code == 0
    sdpa = next(v for v in data["variants"] if v["name"] == "full.sdpa")
    assert sdpa["family"] == "full" and "core" in sdpa["scopes"] and "causal" in sdpa["defaults"]
    cpu = next(b for b in data["backends"] if b["name"] == "cpu")
    assert cpu["available"] is True and cpu["reason"] is None
    assert "smoke" in {s["name"] for s in data["suites"]}


def test_calibrate_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = bench(capsys, "calibrate", "--backends", "cpu", "--dtypes", "float32", "--quick", "--json")
    assert code == 0, err
    (device,) = json.loads(out)["devices"]
    assert device["backend"] == "cpu" and device["matmul_flops_per_s"]["float32"] > 1e6
    assert device["memory_bytes_per_s"] > 1e6
    assert "calibrating cpu" in err  # progress on stderr


def test_profile_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    argv = ["profile", "--variants", "full.sdpa", "--backends", "cpu", *TINY[:6], "--calls", "1", "--top", "3"]
    code, out, err = bench(capsys, *argv, "--out", str(tmp_path), "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["status"] == "ok" and data["case_id"].startswith("full.sdpa-cpu-n64")
    assert data["calls"] == 1 and 0 < len(data["ops"]) <= 3 and data["steps"]
    assert (Path(data["folder"]) / data["files"]["summary"]).is_file()
    assert "profiling" in err


def _branch_run(root: Path, run_id: str, branch: str, case_id: str, day: int) -> Path:
    git = {"commit": f"{run_id}".ljust(40, "0"), "dirty": False, "branch": branch, "commit_time": None}
    started = f"2026-11-{day:02d}T00:00:00+00:00"
    cases = [Case(case_id, noisy(0.01, 10, 0.01, seed=day))]
    return write_run(root / run_id, run_id, cases, started_at=started, run_extra={"git": git})


def test_history_show_json_and_export_branch(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # where a default plot would go (reports/history/)
    db = str(tmp_path / "h.sqlite")
    _branch_run(tmp_path / "runs", "run-main", "main", "on-main", day=1)
    _branch_run(tmp_path / "runs", "run-feature", "feature", "on-feature", day=2)
    assert bench(capsys, "history", "ingest", str(tmp_path / "runs"), "--history", db)[0] == 0

    code, out, err = bench(capsys, "history", "show", "--case", "on-main", "--branch", "any", "--json", "--history", db)
    assert code == 0, err
    trend = json.loads(out)
    assert trend["metric"] == "time" and trend["plot"] is None
    assert [r["run_id"] for r in trend["rows"]] == ["run-main"] and trend["rows"][0]["value"] == pytest.approx(
        0.01, 0.1
    )
    assert not (tmp_path / "reports").exists()  # --json draws a plot only when --plot asks for one

    for branch, case_id in (("main", "on-main"), ("feature", "on-feature"), ("any", "on-feature")):
        code, out, err = bench(capsys, "export", "latest", "--branch", branch, "--format", "bmf", "--history", db)
        assert code == 0, err
        assert [case_id in name for name in json.loads(out)] == [True], (branch, out)


# ----------------------------------------------------------------------------- compare --fail-on-regression


def test_fail_on_regression_counts_lost_measurements_unless_allowed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    same = noisy(0.01, 20, 0.01, seed=1)
    base = write_run(
        tmp_path / "base",
        "run-base",
        [
            Case("steady", same),
            Case("gone", same),  # not in the current run
            Case("broken", None, status="error"),  # failing on both sides
            Case("never", None, status="unsupported"),  # unsupported on both sides: no one's failure
            Case("dropped", same),  # measured in the baseline, skipped now
        ],
    )
    cur = write_run(
        tmp_path / "cur",
        "run-cur",
        [
            Case("steady", same),
            Case("broken", None, status="error"),
            Case("never", None, status="unsupported"),
            Case("dropped", None, status="skipped"),
        ],
        started_at="2026-11-02T00:00:00+00:00",
    )
    argv = ["compare", str(base), str(cur), "--noise-runs", "0", "--fail-on-regression", "--json", "-"]
    code, out, err = bench(capsys, *argv)
    verdicts = {c["case_id"]: c["verdict"] for c in json.loads(out)["cases"]}
    assert set(verdicts.values()) == {"no change", "missing"}  # no regression, nothing newly failing
    assert code == EXIT_REGRESSION
    assert err.count("\n") == 1 and "3 case(s) missing or not measured now" in err and "--allow-missing" in err
    assert all(c in err for c in ("gone", "broken", "dropped")) and "never" not in err and "steady" not in err

    code, out, err = bench(capsys, *argv, "--allow-missing")
    assert code == 0 and err == ""
    assert json.loads(out)["summary"]["counts"]["missing"] == 4

    # bench ab's --json: the comparison on stdout (and in its file), no table.
    written = tmp_path / "ab" / "compare.json"
    request = CompareRequest(str(base), str(cur), noise_runs=0, json=str(written), print_json=True, allow_missing=True)
    assert compare(request) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(written.read_text())


def test_bench_ab_keeps_its_own_flags_from_the_sides() -> None:
    argv = ["ab", "--baseline", "b", "--json", "--allow-missing", "--fail-on-regression", "--variants", "full.sdpa"]
    assert side_flags(argv) == ["--variants", "full.sdpa"]
