"""The nightly workflow (.github/workflows/nightly.yml), its own shell steps run here.

GitHub is not reachable from here, so the steps that are shell are run as GitHub runs them
(`bash --noprofile --norc -eo pipefail`, with the workflow's env and a step summary file), in
order and with their `if:` conditions, over three nights: the first in interleaved mode with no
history yet, the second comparing with the first, the third timing the first's commit beside
this one with `bench ab`. The `uses:` steps (checkout, Python, cache, upload) are GitHub's own;
keeping the history between nights stands in for the cache. Only the suite is smaller (the
workflow's SUITE and RUN_FLAGS), so that three nights take a minute or two, not an hour.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from attnbench.analysis.compare import FAILING
from tests.conftest import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "nightly.yml"
SMALL_RUN = "--variants full.sdpa,sparse.sliding_window --seq-lens 128 --max-time-per-case 0.2 --passes 2 --threads 1"


def load_workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def steps() -> list[dict]:
    return load_workflow()["jobs"]["nightly"]["steps"]


def resolve(text: str, expressions: dict[str, str]) -> str:
    """Replace each ${{ ... }} by its value; an expression this test does not know fails it."""

    def value(match: re.Match) -> str:
        expr = match.group(1).strip()
        if expr not in expressions:
            raise AssertionError(f"the workflow uses ${{{{ {expr} }}}}, which this test does not know")
        return expressions[expr]

    return re.sub(r"\$\{\{(.*?)\}\}", value, text)


def condition_holds(condition: str | None, env: dict[str, str], failed: bool) -> bool:
    """GitHub's `if:` for the forms the workflow uses; without one a step runs only if all before passed."""
    if condition is None:
        return not failed
    condition = condition.strip()
    if condition == "always()":
        return True
    match = re.fullmatch(r"env\.(\w+) (==|!=) '(.*)'", condition)
    assert match, f"the workflow uses `if: {condition}`, which this test does not know"
    name, op, literal = match.groups()
    equal = env.get(name, "") == literal
    return not failed and (equal if op == "==" else not equal)


def run_night(workdir: Path, night: int, ab_baseline: str, summary: Path) -> dict[str, int]:
    """Run the workflow's shell steps for one night; the exit status of each step that ran, by name."""
    expressions = {
        "github.run_id": str(1000 + night),
        "github.run_attempt": "1",
        "runner.os": "Linux",
        "inputs.ab_baseline || vars.ATTNBENCH_AB_BASELINE": ab_baseline,
        "inputs.baseline": "",
    }
    workflow = load_workflow()
    env = dict(os.environ)
    env.pop("ATTNBENCH_HISTORY", None)  # the workflow's own (results/history.sqlite) is the one used
    for name, value in workflow["env"].items():
        env[name] = resolve(str(value), expressions)
    env["RUN_FLAGS"] = SMALL_RUN
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])
    env["GITHUB_STEP_SUMMARY"] = str(summary)

    ran: dict[str, int] = {}
    failed = False
    for step in workflow["jobs"]["nightly"]["steps"]:
        if "run" not in step or step.get("name", "").startswith("Install"):
            continue  # GitHub's actions, and the install this test's environment already is
        if not condition_holds(step.get("if"), env, failed):
            continue
        step_env = dict(env)
        for name, value in step.get("env", {}).items():
            step_env[name] = resolve(str(value), expressions)
        script = resolve(step["run"], expressions)
        proc = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
            cwd=workdir,
            env=step_env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        (workdir.parent / f"night{night}-{len(ran)}.log").write_text(proc.stdout + proc.stderr)
        ran[step["name"]] = proc.returncode
        failed = failed or proc.returncode != 0
    return ran


def test_workflow_triggers_and_keeps_history() -> None:
    workflow = load_workflow()
    triggers = workflow[True] if True in workflow else workflow["on"]  # YAML 1.1 reads `on` as true
    assert "schedule" in triggers and "workflow_dispatch" in triggers
    uses = [(s.get("uses", ""), s.get("if")) for s in steps()]
    names = [s.get("name", "") for s in steps()]
    restore = next(i for i, (u, _) in enumerate(uses) if u.startswith("actions/cache/restore"))
    save = next(i for i, (u, _) in enumerate(uses) if u.startswith("actions/cache/save"))
    upload = next(i for i, (u, _) in enumerate(uses) if u.startswith("actions/upload-artifact"))
    first_run = next(i for i, n in enumerate(names) if n.startswith("Run the nightly suite"))
    assert restore < first_run < upload < save
    # The report and the history are kept even on the night that fails the job.
    assert uses[upload][1] == "always()" and uses[save][1] == "always()"
    scripts = "\n".join(s.get("run", "") for s in steps())
    assert scripts.count("--fail-on-regression") == 2  # rolling compare and bench ab


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="no shellcheck here (apt-get install shellcheck)")
def test_workflow_shell_steps_pass_shellcheck(tmp_path: Path) -> None:
    placeholders = {
        "github.run_id": "1",
        "github.run_attempt": "1",
        "runner.os": "Linux",
        "inputs.ab_baseline || vars.ATTNBENCH_AB_BASELINE": "",
        "inputs.baseline": "",
    }
    for i, step in enumerate(s for s in steps() if "run" in s):
        script = tmp_path / f"step{i}.sh"
        script.write_text("#!/bin/bash\n" + resolve(step["run"], placeholders))
        # SC2154: the variables come from the workflow's env, which shellcheck cannot see.
        proc = subprocess.run(["shellcheck", "-e", "SC2154", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{step['name']}:\n{proc.stdout}"


@pytest.mark.slow
def test_three_nights_of_the_workflow(tmp_path: Path) -> None:
    workdir = tmp_path / "checkout"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(workdir)], check=True)
    summary = tmp_path / "summary.md"
    history = workdir / "results" / "history.sqlite"

    # Night 1, interleaved with the previous night's commit, but there is no history yet.
    ran = run_night(workdir, 1, "previous", summary)
    assert ran == {
        "Run the nightly suite interleaved with the baseline's commit (bench ab)": 0,
        "Export for dashboards": 0,
    }, ran
    assert "no earlier nightly in the history: running alone tonight" in summary.read_text()
    assert history.exists()
    for name in ("pytest-benchmark.json", "bmf.json", "github-action-benchmark.json"):
        assert (workdir / "reports" / "nightly" / name).stat().st_size > 0

    # Night 2, rolling: compared with night 1 from the history.
    ran = run_night(workdir, 2, "", summary)
    compare = "Compare with the baseline"
    assert ran["Run the nightly suite"] == 0 and ran["Export for dashboards"] == 0, ran
    report = json.loads((workdir / "reports" / "nightly" / "compare.json").read_text())
    verdicts = {c["verdict"] for c in report["cases"]}
    # Same code both nights: the step fails only if a case is judged failing (a false alarm).
    assert ran[compare] == (1 if verdicts & set(FAILING) else 0), (ran, verdicts)
    assert len(report["cases"]) == 2
    assert "first nightly" not in summary.read_text().split("running alone tonight")[1]

    # Night 3, interleaved with the last nightly's commit, checked out beside this one.
    ran = run_night(workdir, 3, "previous", summary)
    ab = "Run the nightly suite interleaved with the baseline's commit (bench ab)"
    assert set(ran) == {ab, "Export for dashboards"}, ran
    ab_dir = workdir / "results" / "ab-1003-1"
    assert (ab_dir / "baseline" / "run.json").exists() and (ab_dir / "candidate" / "run.json").exists()
    assert (tmp_path / "attnbench-baseline" / ".git").exists()
    assert (workdir / "results" / "nightly-1003-1").resolve() == (ab_dir / "candidate").resolve()
    assert ran["Export for dashboards"] == 0
    ab_summary = summary.read_text().split("running alone tonight")[1]
    assert ran[ab] in (0, 1) and (ran[ab] == 0 or "regression" in ab_summary), ran
