"""What decides whether two records are compared: the definition hash, with real source edits
in temporary copies of this checkout (issue 24). A kernel edit keeps the definition and is
compared ("code changed"); an edit to a cost formula or to the attention pattern is `changed`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from attnbench.analysis.guards import workload_differences
from attnbench.cli.main import main
from attnbench.core.layout import make_import_root
from attnbench.core.record import CaseRecord
from attnbench.core.results import load_run
from tests.conftest import ROOT, cli_env

EDITS = {
    # An extra SDPA over the first 10% of the query rows, its result discarded: slower, same output.
    "kernel": (
        "workloads/full.py",
        "            return F.scaled_dot_product_attention(q, k, v, is_causal=self.params.causal)  # (B, h, n, d)",
        "            F.scaled_dot_product_attention(q[:, :, : max(1, q.shape[2] // 10)], k, v)\n"
        "            return F.scaled_dot_product_attention(q, k, v, is_causal=self.params.causal)  # (B, h, n, d)",
    ),
    # A cost formula: the useful FLOPs of the dense variants.
    "formula": (
        "workloads/full.py",
        "        return dense_flops(shape, params.causal)",
        "        return 1.01 * dense_flops(shape, params.causal)",
    ),
    # The pattern: LSH's random rotations drawn from other seeds (kernel and reference alike);
    # at n = 300 (5 chunks) the buckets decide which keys a query sees.
    "pattern": (
        "workloads/sparse/lsh.py",
        "manual_seed(seed * SEED_STRIDE + round_index)",
        "manual_seed(seed * SEED_STRIDE + round_index + 7)",
    ),
}
ARGS = ["--variants", "full.sdpa,sparse.lsh", "--seq-lens", "300", "--heads", "2", "--head-dim", "16"]
ARGS += ["--max-time-per-case", "0.05", "--history", "off"]


def _copy(tmp: Path, name: str) -> Path:
    """A copy of this checkout's code, with one edit."""
    copy = tmp / name
    for folder in ("harness", "workloads", "backends"):
        shutil.copytree(ROOT / folder, copy / folder, ignore=shutil.ignore_patterns("__pycache__"))
    if name in EDITS:
        path, old, new = EDITS[name]
        text = (copy / path).read_text()
        assert text.count(old) == 1, f"the {name} edit no longer applies to {path}"
        (copy / path).write_text(text.replace(old, new))
    return copy


def _run(tmp: Path, name: str) -> Path:
    root = make_import_root(_copy(tmp, name), tmp / f"{name}-root")
    out = tmp / f"{name}-run"
    env = cli_env(PYTHONPATH=str(root))
    proc = subprocess.run(
        [sys.executable, "-m", "attnbench", "run", *ARGS, "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    ran = json.loads((out / "run.json").read_text())
    assert ran["status"] == "complete"
    return out


def _records(folder: Path) -> dict[str, CaseRecord]:
    return {c.variant: c for c in load_run(folder).cases}


@pytest.mark.slow  # four real bench runs of two tiny cases, about 40 s
def test_definition_hash_decides_and_a_kernel_edit_is_compared(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    runs = {name: _run(tmp_path, name) for name in ("original", *EDITS)}
    original = _records(runs["original"])
    for rec in original.values():
        assert rec.status == "ok" and rec.definition_hash and rec.implementation_hash

    kernel = _records(runs["kernel"])["full.sdpa"]
    sdpa = original["full.sdpa"]
    assert kernel.definition_hash == sdpa.definition_hash  # what is computed: unchanged
    assert kernel.implementation_hash != sdpa.implementation_hash  # how: changed
    assert workload_differences(sdpa, kernel) == (
        None,
        "code changed (same definition, verified against it on both sides)",
    )

    formula = _records(runs["formula"])["full.sdpa"]
    assert formula.definition_hash != sdpa.definition_hash
    refusal, _ = workload_differences(sdpa, formula)
    assert refusal and "definition changed" in refusal

    pattern = _records(runs["pattern"])["sparse.lsh"]
    assert pattern.verification and pattern.verification["verified"] is True  # kernel and reference agree
    assert pattern.definition_hash != original["sparse.lsh"].definition_hash
    # and LSH is untouched by the full.sdpa edits: the same definition, the same code
    assert _records(runs["kernel"])["sparse.lsh"].definition_hash == original["sparse.lsh"].definition_hash

    # bench compare follows the rule: the kernel edit gets a verdict, the formula edit `changed`.
    for name, expected in (("kernel", "code changed"), ("formula", "definition changed")):
        main(["compare", str(runs["original"]), str(runs[name]), "--json", "-"])
        report = json.loads(capsys.readouterr().out)
        (case,) = [c for c in report["cases"] if c["case_id"] == sdpa.case_id]
        assert (case["verdict"] == "changed") is (name == "formula"), case
        assert expected in json.dumps(case), case


@pytest.mark.slow  # one real bench ab of one case against a slowed copy, about 30 s
def test_the_regression_experiment_sees_a_kernel_edit_as_code_not_definition(tmp_path: Path) -> None:
    # tools/regression_experiment.py, small: the slowed copy's case is judged on its time
    # (it was `changed`, never compared, before the definition hash).
    out = tmp_path / "exp"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "regression_experiment.py"), "--reps", "1", "--conditions", "10pct",
         "--variants", "full.sdpa", "--seq-lens", "256", "--out", str(out), "--", "--passes", "2",
         "--max-time-per-case", "1"],
        capture_output=True, text=True, timeout=600, env=cli_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    (case,) = json.loads((out / "10pct-rep0" / "compare.json").read_text())["cases"]
    assert case["verdict"] != "changed" and "code changed" in case["reason"], case
    assert case["time"]["ratio"] is not None  # compared: a time ratio, not a refusal
    assert "10pct" in proc.stdout and "comparisons" in proc.stdout
