"""`bench report`: scaling-curve and comparison reports rendered from stored runs.

Reads result folders only (never re-runs a benchmark) and writes, into one folder,
a self-contained ``index.html``, a GitHub-flavoured ``report.md``, ``figures/`` (PNG and
SVG) and ``data.csv``; or prints the tables in the terminal.

Modules, in the order data flows through them:
    data.py      runs -> points (one per case) -> series (one curve) -> groups (one set of figures)
    analysis.py  log-log slopes with their uncertainty, speedups and crossover lengths (pure Python)
    tables.py    the tables every format shows, as plain rows
    impls.py     a design's implementations side by side: the fastest at each length, crossovers per impl
    figures.py   matplotlib figures (imported only when rendering)
    html.py, markdown.py, terminal.py, csvdata.py   the output formats
    escaping.py  text the project did not write, made literal for each format (every renderer uses it)
    command.py   the CLI command
"""
