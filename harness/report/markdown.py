"""report.md: GitHub-flavoured Markdown for a pull-request comment or a CI step summary.

Tables and sentences carry the content, so it reads fine where images cannot be shown
(a PR comment cannot load local files); with `figure_base_url` the figures are linked
from wherever the report folder is published.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from attnbench.report.escaping import html_text, md_cell, md_code, md_text, md_url, relative_href
from attnbench.report.figures import FigureFile, Figures, impl_figure_name
from attnbench.report.impls import ImplSection, without_notes
from attnbench.report.quality import LRA_NOTE, QUALITY_TITLE, QualityReport
from attnbench.report.report import Report
from attnbench.report.tables import Table


def _linked(text: str, target: str, link_base: Path | None, link_roots: Sequence[Path]) -> str:
    href = relative_href(target, link_base, link_roots)
    return md_cell(text) if href is None else f"[{md_cell(text)}]({href})"


def md_table(
    table: Table, heading: str | None = "###", link_base: Path | None = None, link_roots: Sequence[Path] = ()
) -> str:
    """The table in GFM; links only as relative_href allows them (else the cell's text alone)."""
    lines = [f"{heading} {md_text(table.title)}", ""] if heading else []
    if not table.rows:
        return "\n".join([*lines, "None.", ""])
    lines.append("| " + " | ".join(md_cell(h) for h in table.headers) + " |")
    lines.append("|" + "|".join("---:" if i in table.right else "---" for i in range(len(table.headers))) + "|")
    for r, row in enumerate(table.rows):
        cells = [
            _linked(c, table.links[(r, i)], link_base, link_roots) if (r, i) in table.links else md_cell(c)
            for i, c in enumerate(row)
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"<sub>{md_text(n)}</sub>  " for n in table.notes]
    return "\n".join(lines) + "\n"


def _figures(figs: Figures, prefix: str, base_url: str | None) -> list[str]:
    files = figs.of(prefix)
    if not files:
        return []
    if base_url:
        base = md_url(base_url.rstrip("/"))
        return [f"![{md_text(f.title)}]({base}/figures/{quote(f.png.name)})" for f in files] + [""]
    return ["Figures (in the report folder): " + ", ".join(md_code(f"figures/{f.png.name}") for f in files), ""]


def _figure(f: FigureFile, base_url: str | None) -> list[str]:
    if base_url:
        return [f"![{md_text(f.title)}]({md_url(base_url.rstrip('/'))}/figures/{quote(f.png.name)})", ""]
    return [f"Figure (in the report folder): {md_code(f'figures/{f.png.name}')}", ""]


def _impls(sections: list[ImplSection], figs: Figures, base_url: str | None) -> list[str]:
    """A design's implementations side by side: its figure, the fastest at each length, the crossovers."""
    out = []
    for i, section in enumerate(sections):
        last = i == len(sections) - 1  # the notes are the same for every design: once, after the last
        out += [f"#### Implementations of {md_text(section.title)}", ""]
        f = figs.named(impl_figure_name(section))
        out += _figure(f, base_url) if f is not None else []
        for table in (section.fastest, section.crossovers):
            out.append(md_table(table if last else without_notes(table), heading="#####"))
    return out


def _named(figs: Figures, names: Sequence[str], base_url: str | None) -> list[str]:
    """The figures of these names that were drawn, as _figures shows a group's."""
    files = [f for name in names if (f := figs.named(name)) is not None]
    if not files:
        return []
    if base_url:
        base = md_url(base_url.rstrip("/"))
        return [f"![{md_text(f.title)}]({base}/figures/{quote(f.png.name)})" for f in files] + [""]
    return ["Figures (in the report folder): " + ", ".join(md_code(f"figures/{f.png.name}") for f in files), ""]


def _quality(quality: QualityReport, figs: Figures, base_url: str | None) -> list[str]:
    """Per task its accuracy table and figures; then the approximation table and figures."""
    out = [f"### {QUALITY_TITLE}", ""]
    for run in quality.runs:
        for task in run.tasks:
            out.append(md_table(task.table, heading="####"))
            out += _named(figs, task.figure_names, base_url)
    if quality.approx_table is not None:
        out.append(md_table(quality.approx_table, heading="####"))
        out += _named(figs, quality.approx_figure_names, base_url)
    notes = figs.notes.get("quality", [])
    out += [f"- {md_text(n)}" for n in notes] + ([""] if notes else [])
    return out


def _published(report: Report) -> list[str]:
    """The published comparison: reference suites' ratios, and LRA's accuracy ordering."""
    lra = report.quality.lra if report.quality is not None else []
    out = []
    if report.published.rows:
        out.append(md_table(report.published, "###"))
    elif lra:
        out += [f"### {md_text(report.published.title)}", ""]
    if lra:
        out += [md_text(LRA_NOTE), ""]
        out += [md_table(t, heading="####") for t in lra]
    return out


def render_markdown(report: Report, figs: Figures, base_url: str | None = None, link_base: Path | None = None) -> str:
    data = report.data
    roots = [r.folder for r in data.runs]  # links may point into the runs the report reads
    out = [f"## attnbench report: {md_text(report.title)}", ""]
    warnings = report.warnings
    if warnings:
        out += ["> [!WARNING]", *(f"> {md_text(w)}  " for w in warnings), ""]
    out.append(md_table(report.runs, "###"))
    for group in data.groups:
        out += [f"### {md_text(group.title)}", ""]
        out += [f"- {md_text(h)}" for h in report.highlights[group.key]] + [""]
        if group.backend is not None:
            out.append(md_table(report.scaling[group.key], heading="####"))
            out.append(md_table(report.times[group.key], heading="####"))
            out += [md_table(t, heading="####") for t in report.ratios[group.key]]
            if report.profiles[group.key].rows:
                profiles = report.profiles[group.key]
                out.append(md_table(profiles, heading="####", link_base=link_base, link_roots=roots))
        notes = figs.notes.get(group.key, [])
        out += [f"- {md_text(n)}" for n in notes] + ([""] if notes else [])
        out += _figures(figs, group.key, base_url)
        out += _impls(report.impls[group.key], figs, base_url)
    if figs.of("patterns") or figs.of("ponder") or figs.of("transforms"):
        out += ["### Attention patterns, ponder steps, transforms", ""]
        for name in ("patterns", "ponder", "transforms"):
            out += _figures(figs, name, base_url)
    out += [f"- {md_text(n)}" for n in figs.notes.get("patterns", [])]
    if report.quality is not None:
        out += _quality(report.quality, figs, base_url)
    out += _published(report)
    if data.points or report.failures.rows:  # a report of quality runs only has no cases to fail
        out.append(md_table(report.failures, "###"))
    if report.unstable.rows:
        out += [
            # An HTML block: its summary is HTML, not Markdown.
            f"<details><summary>{html_text(report.unstable.title)}: {len(report.unstable.rows)}</summary>",
            "",
            md_table(report.unstable, heading=None),
            "</details>",
            "",
        ]
    before, command, after = report.footer_parts
    out += ["", f"<sub>{md_text(before)} {md_code(command)} {md_text(after)}</sub>", ""]
    return "\n".join(out)
