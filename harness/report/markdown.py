"""report.md: GitHub-flavoured Markdown for a pull-request comment or a CI step summary.

Tables and sentences carry the content, so it reads fine where images cannot be shown
(a PR comment cannot load local files); with `figure_base_url` the figures are linked
from wherever the report folder is published.
"""

from __future__ import annotations

from pathlib import Path

from attnbench.report.figures import Figures
from attnbench.report.html import link_href
from attnbench.report.report import Report
from attnbench.report.tables import Table


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").strip() or " "


def md_table(table: Table, heading: str | None = "###", link_base: Path | None = None) -> str:
    lines = [f"{heading} {table.title}", ""] if heading else []
    if not table.rows:
        return "\n".join([*lines, "None.", ""])
    lines.append("| " + " | ".join(_cell(h) for h in table.headers) + " |")
    lines.append("|" + "|".join("---:" if i in table.right else "---" for i in range(len(table.headers))) + "|")
    for r, row in enumerate(table.rows):
        cells = [
            f"[{_cell(c)}]({link_href(table.links[(r, i)], link_base)})" if (r, i) in table.links else _cell(c)
            for i, c in enumerate(row)
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"<sub>{n}</sub>  " for n in table.notes]
    return "\n".join(lines) + "\n"


def _figures(figs: Figures, prefix: str, base_url: str | None) -> list[str]:
    files = figs.of(prefix)
    if not files:
        return []
    if base_url:
        base = base_url.rstrip("/")
        return [f"![{f.title}]({base}/figures/{f.png.name})" for f in files] + [""]
    return ["Figures (in the report folder): " + ", ".join(f"`figures/{f.png.name}`" for f in files), ""]


def render_markdown(report: Report, figs: Figures, base_url: str | None = None, link_base: Path | None = None) -> str:
    data = report.data
    out = [f"## attnbench report: {report.title}", ""]
    warnings = report.warnings
    if warnings:
        out += ["> [!WARNING]", *(f"> {w}  " for w in warnings), ""]
    out.append(md_table(report.runs, "###"))
    for group in data.groups:
        out += [f"### {group.title}", ""]
        out += [f"- {h}" for h in report.highlights[group.key]] + [""]
        if group.backend is not None:
            out.append(md_table(report.scaling[group.key], heading="####"))
            out.append(md_table(report.times[group.key], heading="####"))
            if report.profiles[group.key].rows:
                out.append(md_table(report.profiles[group.key], heading="####", link_base=link_base))
        notes = figs.notes.get(group.key, [])
        out += [f"- {n}" for n in notes] + ([""] if notes else [])
        out += _figures(figs, group.key, base_url)
    if figs.of("patterns") or figs.of("ponder") or figs.of("transforms"):
        out += ["### Attention patterns, ponder steps, transforms", ""]
        for name in ("patterns", "ponder", "transforms"):
            out += _figures(figs, name, base_url)
    out += [f"- {n}" for n in figs.notes.get("patterns", [])]
    if report.published.rows:
        out.append(md_table(report.published, "###"))
    out.append(md_table(report.failures, "###"))
    if report.unstable.rows:
        out += [
            f"<details><summary>{report.unstable.title}: {len(report.unstable.rows)}</summary>",
            "",
            md_table(report.unstable, heading=None),
            "</details>",
            "",
        ]
    out += ["", f"<sub>{report.footer}</sub>", ""]
    return "\n".join(out)
