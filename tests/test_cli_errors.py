"""The real `bench` command in a subprocess: user errors are one line and exit 2; list and env work.

Every command here fails (or finishes) before a case would run. They start together in one
fixture, since each pays the torch import, and the tests read their results.
"""

import json
import os
import socket
import subprocess
import sys

import pytest

BAD_TOML = 'description = "broken"\n[sweep]\nseq_lens = [8, 16\nvariants = ["full.sdpa"]\n'
NAN_TOML = '[sweep]\nvariants = ["full.sdpa"]\nseq_lens = [8]\n[settings]\nmax_time_per_case = nan\n'
# Flags that keep a command short even if the error it tests were not caught.
QUICK = ["--seq-lens", "8", "--max-time-per-case", "0.01", "--no-verify"]


def commands(tmp):
    blocker = tmp / "a-file"
    blocker.write_text("")
    (tmp / "broken.toml").write_text(BAD_TOML)
    (tmp / "nan.toml").write_text(NAN_TOML)
    return {
        "unknown_variant": ["run", "--variants", "full.sdp", *QUICK, "--out", str(tmp / "o1")],
        "seq_len_zero": ["run", "--variants", "full.sdpa", "--seq-lens", "0", "--out", str(tmp / "o2")],
        "bad_toml": ["run", "--suite", str(tmp / "broken.toml"), "--out", str(tmp / "o3")],
        "out_under_file": ["run", "--variants", "full.sdpa", *QUICK, "--out", str(blocker / "run")],
        "unknown_param": ["run", "--variants", "full.chunked", *QUICK, "--param", "full.chunked.chunkz=4"],
        "bad_flag": ["run", "--no-such-flag"],
        "max_memory_nan": ["run", "--variants", "full.sdpa", *QUICK, "--max-memory", "nan", "--out", str(tmp / "o4")],
        "budget_inf": [
            "run",
            "--variants",
            "full.sdpa",
            "--seq-lens",
            "8",
            "--max-time-per-case",
            "inf",
            "--out",
            str(tmp / "o5"),
        ],
        "out_is_file": ["run", "--variants", "full.sdpa", *QUICK, "--out", str(blocker)],
        "suite_nan": ["run", "--suite", str(tmp / "nan.toml"), "--out", str(tmp / "o6")],
        "list": ["list"],
        "env_json": ["env", "--json"],
    }


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    cwd = tmp / "cwd"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "ATTNBENCH_PLUGINS"}
    env["COLUMNS"] = "200"  # rich tables: no wrapped names
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "attnbench", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, args in commands(tmp).items()
    }
    out = {}
    try:
        for name, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=120)
            out[name] = (proc.returncode, stdout, stderr)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    out["_tmp"] = tmp
    out["_cwd"] = cwd
    return out


def assert_user_error(result):
    rc, stdout, stderr = result
    assert rc == 2, (rc, stdout, stderr)
    assert "Traceback" not in stderr and "Traceback" not in stdout
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("bench: error: ")
    return lines[0]


def test_unknown_variant(results):
    line = assert_user_error(results["unknown_variant"])
    assert "unknown variant 'full.sdp'" in line
    assert "did you mean 'full.sdpa'" in line


def test_seq_len_zero(results):
    line = assert_user_error(results["seq_len_zero"])
    assert "--seq-lens" in line
    assert "must be positive, got 0" in line


def test_toml_syntax_error(results):
    line = assert_user_error(results["bad_toml"])
    assert str(results["_tmp"] / "broken.toml") in line
    assert "invalid TOML" in line
    assert "line 4" in line  # where the unclosed list runs into the next key


def test_out_under_regular_file(results):
    line = assert_user_error(results["out_under_file"])
    assert str(results["_tmp"] / "a-file" / "run") in line
    assert "cannot write results" in line
    assert "--out" in line


def test_unknown_param(results):
    line = assert_user_error(results["unknown_param"])
    assert "unknown parameter 'chunkz' for full.chunked" in line
    assert "chunk" in line.split("valid:", 1)[1]


def test_argparse_error_is_one_line(results):
    line = assert_user_error(results["bad_flag"])
    assert "--no-such-flag" in line


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("max_memory_nan", "--max-memory must be a positive, finite number of GiB, got nan"),
        ("budget_inf", "max_time_per_case must be a positive, finite number, got inf"),
        ("suite_nan", "max_time_per_case must be a positive, finite number, got nan"),
    ],
)
def test_non_finite_numbers_are_refused_in_one_line(results, name: str, said: str) -> None:
    assert said in assert_user_error(results[name])


def test_out_naming_an_existing_file(results):
    line = assert_user_error(results["out_is_file"])
    assert "is a file, not a folder" in line and str(results["_tmp"] / "a-file") in line


def test_errors_leave_no_results_behind(results):
    tmp, cwd = results["_tmp"], results["_cwd"]
    assert not (cwd / "results").exists()
    for name in ("o1", "o2", "o3", "o4", "o5", "o6"):
        assert not (tmp / name).exists(), name


def test_list(results):
    rc, stdout, stderr = results["list"]
    assert rc == 0, stderr
    assert "Traceback" not in stderr
    for name in ("full.sdpa", "full.naive", "full.chunked", "cpu", "smoke", "default", "long"):
        assert name in stdout, name
    assert "plugin failed to load" not in stdout


def test_env_json(results):
    rc, stdout, stderr = results["env_json"]
    assert rc == 0, stderr
    data = json.loads(stdout)
    assert data["host"]["hostname"] == socket.gethostname()
    assert {"host", "packages", "git"} <= set(data)
    assert data["packages"]["attnbench"]
