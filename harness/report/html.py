"""index.html: one self-contained page (figures as data URIs, styles inline, no scripts, no network).

Every text and attribute value goes through html_text; links through relative_href, which
keeps only relative paths into the report folder or the runs it reads
(attnbench.report.escaping)."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from attnbench.report.data import FAILED
from attnbench.report.escaping import html_text as escape
from attnbench.report.escaping import relative_href
from attnbench.report.figures import FigureFile, Figures, impl_figure_name
from attnbench.report.impls import without_notes
from attnbench.report.quality import LRA_NOTE, QUALITY_TITLE, QualityReport
from attnbench.report.report import Report
from attnbench.report.tables import Table

CSS = """
:root { --fg:#1d2330; --muted:#5b6475; --line:#dfe3ea; --accent:#1f5fbf; --bad:#b42318; --warn:#9a6700; --bg:#fff; }
* { box-sizing: border-box; }
body { margin:0; font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color:var(--fg); background:var(--bg); }
header { padding: 24px 32px 12px; border-bottom: 1px solid var(--line); }
h1 { margin:0; font-size: 22px; }
header p { margin: 4px 0 0; color: var(--muted); }
nav { padding: 8px 32px; border-bottom: 1px solid var(--line); font-size: 13px; position: sticky; top: 0;
      background: rgba(255,255,255,.96); z-index: 1; }
nav a { margin-right: 14px; color: var(--accent); text-decoration: none; white-space: nowrap; }
main { padding: 8px 32px 40px; max-width: 1500px; }
section { margin-top: 28px; scroll-margin-top: 44px; }  /* anchors land below the sticky nav */
h2 { font-size: 18px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
h4 { font-size: 14px; margin: 14px 0 6px; }
.warn { border-left: 4px solid var(--warn); background: #fff8e5; padding: 8px 14px; margin-top: 18px; }
.warn p { margin: 2px 0; }
ul.highlights { margin: 6px 0 12px; padding-left: 20px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 18px; }
figure { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 10px; background: #fff; }
figure img { width: 100%; height: auto; display: block; }
figure.wide { grid-column: 1 / -1; }
figure.wide img { width: auto; max-width: 100%; margin: 0 auto; }
figcaption { color: var(--muted); font-size: 12.5px; margin-top: 6px; }
figcaption a { color: var(--accent); }
table { border-collapse: collapse; margin: 6px 0; font-size: 13px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f5f7fa; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.bad { color: var(--bad); font-weight: 600; }
td.muted { color: var(--muted); }
td.unstable { color: var(--warn); }
.notes { color: var(--muted); font-size: 12.5px; margin: 2px 0; }
.scroll { overflow-x: auto; }
details { margin: 10px 0; }
summary { cursor: pointer; font-weight: 600; }
pre { background: #f5f7fa; padding: 10px; overflow-x: auto; font-size: 12px; }
footer { color: var(--muted); font-size: 12.5px; padding: 16px 32px; border-top: 1px solid var(--line); }
"""


def _cell_class(text: str, right: bool) -> str:
    classes = ["num"] if right else []
    if text in FAILED:
        classes.append("bad")
    elif text in ("skipped", "unsupported"):
        classes.append("muted")
    elif text.endswith(" ~"):
        classes.append("unstable")
    return f' class="{" ".join(classes)}"' if classes else ""


def html_table(
    table: Table, heading: str = "h3", link_base: Path | None = None, link_roots: Sequence[Path] = ()
) -> str:
    parts = [f"<{heading}>{escape(table.title)}</{heading}>"]
    if not table.rows:
        parts.append("<p>None.</p>")
        return "\n".join(parts)
    parts.append('<div class="scroll"><table><thead><tr>')
    parts += [f"<th>{escape(h)}</th>" for h in table.headers]
    parts.append("</tr></thead><tbody>")
    for r, row in enumerate(table.rows):
        cells = []
        for i, c in enumerate(row):
            text = escape(c)
            href = relative_href(table.links[(r, i)], link_base, link_roots) if (r, i) in table.links else None
            if href is not None:
                text = f'<a href="{escape(href)}">{text}</a>'
            cells.append(f"<td{_cell_class(c, i in table.right)}>{text}</td>")
        parts.append(f"<tr>{''.join(cells)}</tr>")
    parts.append("</tbody></table></div>")
    parts += [f'<p class="notes">{escape(n)}</p>' for n in table.notes]
    return "\n".join(parts)


def _figure(f: FigureFile, wide: bool = False) -> str:
    # SVG keeps text sharp at any zoom; matplotlib draws glyphs as paths, so no font is needed.
    data = base64.b64encode(f.svg.read_bytes()).decode("ascii")
    return (
        f'<figure{" class=wide" if wide else ""}><img src="data:image/svg+xml;base64,{data}" alt="{escape(f.title)}">'
        f"<figcaption>{escape(f.caption)} "
        f'<a href="figures/{escape(quote(f.png.name))}">PNG</a> · <a href="figures/{escape(quote(f.svg.name))}">SVG</a>'
        "</figcaption></figure>"
    )


def _environment(report: Report) -> str:
    parts = []
    for r in report.data.runs:
        info = r.run
        env = {
            "host": info.host,
            "packages": info.packages,
            "devices": info.devices,
            "git": info.git,
            "argv": info.argv,
            "settings": info.settings,
        }
        parts.append(
            f"<details><summary>{escape(info.run_id)} — {escape(str(r.folder))}</summary>"
            f"<pre>{escape(json.dumps(env, indent=2, default=str))}</pre></details>"
        )
    return "\n".join(parts)


def _grid(figs: Figures, names: Sequence[str], wide: bool = False) -> str:
    files = [f for name in names if (f := figs.named(name)) is not None]
    return '<div class="grid">' + "".join(_figure(f, wide) for f in files) + "</div>" if files else ""


def _quality(quality: QualityReport, figs: Figures) -> str:
    """Per task its accuracy table and figures; then the approximation table and its figures."""
    sec = [f'<section id="quality"><h2>{escape(QUALITY_TITLE)}</h2>']
    for run in quality.runs:
        for task in run.tasks:
            sec.append(html_table(task.table))
            sec.append(_grid(figs, task.figure_names))
    if quality.approx_table is not None:
        sec.append(html_table(quality.approx_table))
        sec.append(_grid(figs, quality.approx_figure_names, wide=True))  # two panels side by side
    sec += [f'<p class="notes">{escape(n)}</p>' for n in figs.notes.get("quality", [])]
    sec.append("</section>")
    return "\n".join(s for s in sec if s)


def _published(report: Report) -> str:
    """The published comparison: reference suites' ratios, and LRA's accuracy ordering."""
    lra = report.quality.lra if report.quality is not None else []
    parts = ['<section id="published">']
    if report.published.rows:
        parts.append(html_table(report.published, "h2"))
    else:
        parts.append(f"<h2>{escape(report.published.title)}</h2>")
    if lra:
        parts.append(f'<p class="notes">{escape(LRA_NOTE)}</p>')
        parts += [html_table(t) for t in lra]
    parts.append("</section>")
    return "".join(parts)  # without LRA: the section as it was before quality runs existed


def render_html(report: Report, figs: Figures, link_base: Path | None = None) -> str:
    data = report.data
    nav = ['<a href="#runs">runs</a>']
    nav += [f'<a href="#{escape(g.key)}">{escape(g.title)}</a>' for g in data.groups]
    body = []
    if report.warnings:
        body.append('<div class="warn">' + "".join(f"<p>{escape(w)}</p>" for w in report.warnings) + "</div>")
    body.append(f'<section id="runs">{html_table(report.runs, "h2")}</section>')
    for g in data.groups:
        sec = [f'<section id="{escape(g.key)}"><h2>{escape(g.title)}</h2>']
        sec.append(
            '<ul class="highlights">' + "".join(f"<li>{escape(h)}</li>" for h in report.highlights[g.key]) + "</ul>"
        )
        files = figs.of(g.key)
        if files:
            sec.append('<div class="grid">' + "".join(_figure(f) for f in files) + "</div>")
        notes = figs.notes.get(g.key, [])
        sec += [f'<p class="notes">{escape(n)}</p>' for n in notes]
        sec.append(html_table(report.scaling[g.key]))
        sec.append(html_table(report.times[g.key]))
        sec += [html_table(t) for t in report.ratios[g.key]]
        if report.profiles[g.key].rows:
            roots = [r.folder for r in data.runs]  # links may point into the runs the report reads
            sec.append(html_table(report.profiles[g.key], link_base=link_base, link_roots=roots))
        sections = report.impls[g.key]
        for i, section in enumerate(sections):
            last = i == len(sections) - 1  # the notes are the same for every design: once, after the last
            sec.append(f"<h3>Implementations of {escape(section.title)}</h3>")
            f = figs.named(impl_figure_name(section))
            if f is not None:
                sec.append('<div class="grid">' + _figure(f, wide=True) + "</div>")
            for table in (section.fastest, section.crossovers):
                sec.append(html_table(table if last else without_notes(table), "h4"))
        sec.append("</section>")
        body.append("\n".join(sec))
    extra = figs.of("patterns") + figs.of("ponder") + figs.of("transforms")
    if extra or figs.notes.get("patterns"):
        nav.append('<a href="#patterns">patterns</a>')
        body.append(
            '<section id="patterns"><h2>Attention patterns and ponder steps</h2>'
            + '<div class="grid">'
            + "".join(_figure(f, wide=True) for f in extra)
            + "</div>"
            + "".join(f'<p class="notes">{escape(n)}</p>' for n in figs.notes.get("patterns", []))
            + "</section>"
        )
    if report.quality is not None:
        nav.append('<a href="#quality">quality</a>')
        body.append(_quality(report.quality, figs))
    if report.published.rows or (report.quality is not None and report.quality.lra):
        nav.append('<a href="#published">published</a>')
        body.append(_published(report))
    if data.points or report.failures.rows:  # a report of quality runs only has no cases to fail
        nav.append('<a href="#failures">not ok</a>')
        body.append(f'<section id="failures">{html_table(report.failures, "h2")}')
        if report.unstable.rows:
            body.append(
                f"<details><summary>{escape(report.unstable.title)}: {len(report.unstable.rows)}</summary>"
                f"{html_table(report.unstable, 'h3')}</details>"
            )
        body.append("</section>")
    nav.append('<a href="#environment">environment</a>')
    body.append(f'<section id="environment"><h2>Environment</h2>{_environment(report)}</section>')
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>attnbench report: {escape(report.title)}</title>
<style>{CSS}</style>
</head>
<body>
<header><h1>attnbench report</h1><p>{escape(report.title)} · generated {escape(report.generated_at)}</p></header>
<nav>{"".join(nav)}</nav>
<main>
{chr(10).join(body)}
</main>
<footer>{escape(report.footer)}</footer>
</body>
</html>
"""
