"""The report links each profiled case and shows its top operators beside its curve (stored results only)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from attnbench.core.results import load_run
from attnbench.report.data import ReportData
from attnbench.report.markdown import render_markdown
from attnbench.report.report import build

FIXTURE = Path(__file__).parent / "fixtures" / "published"


def test_profiled_cases_are_linked_with_their_top_operators(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(FIXTURE, run_dir)
    run = load_run(run_dir)
    case = next(c for c in run.cases if c.variant == "sparse.lsh" and c.mode == "forward")
    prof_dir = run_dir / "profiles" / case.case_id
    prof_dir.mkdir(parents=True)
    (prof_dir / "profile.json").write_text(
        json.dumps(
            {
                "trace": "trace.json",
                "ops_md": "ops.md",
                "steps": [{"name": "lsh.attention", "total_s": 0.002, "share": 0.4}],
                "top_ops": [{"name": "aten::bmm", "self_s": 0.001, "share": 0.3, "step": "lsh.attention"}],
            }
        )
    )
    report = build(ReportData([run]), "bench report run")
    tables = [t for t in report.profiles.values() if t.rows]
    assert len(tables) == 1 and len(tables[0].rows) == 1
    row = tables[0].rows[0]
    assert row[2] == "lsh.attention 40%" and row[3] == "aten::bmm 30%"
    out = tmp_path / "report"
    out.mkdir()
    from attnbench.report.figures import Figures

    text = render_markdown(report, Figures(folder=out / "figures", files=[], notes={}), link_base=out)
    assert f"[trace](../run/profiles/{case.case_id}/trace.json)" in text
