"""What the terminal shows: live progress during a run, a summary table after it, and how
every command's tables fit the terminal (80 columns included) without cutting a word.

The summary is rendered from the stored results, never from in-memory state, so what the
user reads is exactly what other tools will parse.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import os
import statistics
from collections.abc import Iterable, Sequence
from typing import IO, Any

from rich.console import Console, RenderableType
from rich.measure import Measurement
from rich.padding import Padding
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column, Table
from rich.text import Text

from attnbench.core.cases import Case
from attnbench.core.machine_check import HOST_SPREAD_LIMIT, host_spread
from attnbench.core.record import CaseRecord
from attnbench.core.results import RunResult
from attnbench.report.escaping import LiteralTable, line, literal, visible

BUSY_SHARE = 0.10  # other processes' share of the CPU above which timings are suspect


def fmt_time(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def fmt_rate(x: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


def status_cell(rec: CaseRecord) -> Text:
    if rec.status == "ok":
        return literal("ok") if rec.stable else literal("unstable", "yellow")
    colour = "red" if rec.status in ("error", "timeout", "oom") else "dim"
    return literal(rec.status, colour)


LOG_WIDTH = 120  # output to a file or CI log: room for the wide table layouts


def make_console(file: IO[str] | None = None, log_width: int = LOG_WIDTH) -> Console:
    """Rich's console (on stdout, or `file`). Output to a file or CI log is `log_width` wide,
    unless COLUMNS says how wide (rich reads it): the tables fit any width (print_table).

    Emoji codes are off (`:x:` in a record stays `:x:`); markup is never given user text:
    everything printed that the project did not write goes through attnbench.report.escaping.
    """
    console = Console(emoji=False, file=file)
    if not console.is_terminal and not os.environ.get("COLUMNS", "").strip().isdigit():
        console = Console(emoji=False, file=file, width=max(console.width, log_width))
    return console


# ----------------------------------------------------------------------------- tables that fit

FOLD_MIN = 12  # a column that may fold (overflow="fold": prose, reasons) keeps words this long whole


def _column_range(console: Console, column: Column) -> tuple[int, int]:
    """The narrowest width that cuts no word of the column (its longest word; at most
    FOLD_MIN in a column that may fold) and its natural width, padding excluded."""
    lo = hi = 1
    for cell in (column.header, *column.cells):
        m = Measurement.get(console, console.options, cell)
        lo, hi = max(lo, m.minimum), max(hi, m.maximum)
    if column.no_wrap:
        lo = hi
    elif column.overflow == "fold":
        lo = min(lo, FOLD_MIN)
    return lo, hi


def _frame(table: Table, columns: int) -> int:
    """Cells that `columns` columns of `table` spend on borders and padding."""
    _, right, _, left = table.padding
    pad = (left + right) * columns - (0 if table.pad_edge else left + right)
    borders = columns - 1 + (2 if table.show_edge else 0) if table.box else 0
    return pad + borders


def _share(ranges: Sequence[tuple[int, int]], room: int) -> list[int]:
    """Widths from the narrowest up: the room left over goes first to the columns that want
    least (short numbers get their natural width), the rest in equal shares (names, prose)."""
    wants = [hi - lo for lo, hi in ranges]
    give = [0] * len(ranges)
    spare = room - sum(lo for lo, _ in ranges)
    order = sorted(range(len(ranges)), key=lambda i: wants[i])
    for k, i in enumerate(order):
        give[i] = min(wants[i], spare // (len(order) - k))
        spare -= give[i]
    return [lo + g for (lo, _), g in zip(ranges, give, strict=True)]


def fit(console: Console, tables: Sequence[Table]) -> bool:
    """Fix the widths of the tables' columns (the same columns in each: one layout printed in
    parts, which then line up) so that no word is cut and each table fits the console.

    Names, parameters, numbers and status words are never cut: a column is at least as wide as
    its longest word (a column with overflow="fold" may fold words longer than FOLD_MIN). A cell
    wraps at its spaces. False, with the tables untouched, where that does not fit.
    """
    n = len(tables[0].columns)
    ranges = []
    for i in range(n):
        each = [_column_range(console, t.columns[i]) for t in tables]
        ranges.append((max(lo for lo, _ in each), max(hi for _, hi in each)))
    room = console.width - _frame(tables[0], n)
    if sum(lo for lo, _ in ranges) > room:
        return False
    widths = _share(ranges, room)
    for t in tables:
        for column, width in zip(t.columns, widths, strict=True):
            column.width = width
    return True


def _continued(title: Any) -> Any:
    if isinstance(title, Text):
        more = title.copy()
        more.append(" (continued)")
        return more
    return f"{title} (continued)" if title else title


def _part(table: Table, columns: Sequence[int], continued: bool) -> Table:
    """The table with only these columns (and its rows)."""
    part = copy.copy(table)
    part.columns = [dataclasses.replace(table.columns[c], _cells=[], _index=i) for i, c in enumerate(columns)]
    part.rows = []
    if continued:
        part.title = _continued(table.title)
    cells = [list(table.columns[c].cells) for c in columns]
    for r, row in enumerate(table.rows):
        Table.add_row(part, *(col[r] for col in cells), style=row.style, end_section=row.end_section)
    return part


def fold_everywhere(table: Table) -> Table:
    """Last resort for a console too narrow for the words: they fold, but nothing is left out."""
    for column in table.columns:
        column.no_wrap, column.overflow = False, "fold"
    return table


def table_parts(console: Console, table: Table, keys: int = 1) -> list[Table]:
    """The table as it is where it fits the console (fit); otherwise its columns in as few
    parts as fit, each part repeating the first `keys` columns (the names) and titled
    '(continued)' after the first. Of the ways to cut it into that many parts, the one whose
    most crowded part has to wrap its cells least."""
    if fit(console, [table]):
        return [table]
    ranges = [_column_range(console, c) for c in table.columns]
    names, rest = list(range(keys)), list(range(keys, len(ranges)))

    def excess(cols: Sequence[int], end: int) -> int:  # end 0: at the narrowest widths, 1: at natural ones
        return sum(ranges[i][end] for i in cols) + _frame(table, len(cols)) - console.width

    count, cur = 1, list(names)  # as few parts as fit at the narrowest widths, filled in turn
    for c in rest:
        if len(cur) > keys and excess([*cur, c], 0) > 0:
            count, cur = count + 1, list(names)
        cur.append(c)
    if count == 1:  # the names and one more column leave no room: nothing to gain by cutting
        return [fold_everywhere(table)]
    best: tuple[int, list[list[int]]] | None = None
    for cuts in itertools.combinations(range(1, len(rest)), count - 1):
        parts = [names + rest[a:b] for a, b in zip((0, *cuts), (*cuts, len(rest)), strict=True)]
        if all(excess(p, 0) <= 0 for p in parts):
            crowded = max(excess(p, 1) for p in parts)
            if best is None or crowded < best[0]:
                best = (crowded, parts)
    out = []
    for i, cols in enumerate(best[1] if best else [names + rest]):
        part = _part(table, cols, continued=i > 0)
        out.append(part if fit(console, [part]) else fold_everywhere(part))
    return out


def transposed(table: Table) -> Table:
    """The table turned: a row per column, headed by its first row's cells (for a table of a
    few records with many fields, such as the runs of a report)."""
    cells = [[column.header, *column.cells] for column in table.columns]
    turned = copy.copy(table)
    turned.columns, turned.rows = [], []
    overflow = table.columns[0].overflow  # its cells become headers: as protected as they were
    for r, head in enumerate(cells[0]):
        Table.add_column(turned, head, style="bold" if r == 0 else "", overflow=overflow)
    for row in cells[1:]:
        Table.add_row(turned, *row)
    return turned


def print_table(console: Console, table: Table, keys: int = 1) -> None:
    """Print the table (in parts where it is too wide: table_parts) without cutting a word."""
    for part in table_parts(console, table, keys):
        console.print(part)


class CaseProgress(Progress):
    """rich's progress bar with the case in flight on a line of its own below it: a case's
    label is longer than what 80 columns leave beside the bar, the counts and the clocks."""

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        for task in self.tasks:
            # A Text wraps at its spaces: the label is never cut, at any width.
            yield Padding(Text(task.description, style="cyan"), (0, 0, 0, 2))


def progress_bar(console: Console) -> CaseProgress:
    """The live display of a run: spinner, bar, cases done/total, elapsed and ETA on one
    line (the bar takes what the others leave), the case in flight on the next."""

    def fixed(**kwargs: Any) -> Column:
        return Column(no_wrap=True, **kwargs)

    return CaseProgress(
        SpinnerColumn(table_column=fixed()),
        BarColumn(bar_width=None, table_column=Column(ratio=1)),
        TextColumn("{task.completed:.0f}/{task.total:.0f} cases", table_column=fixed()),
        TextColumn("elapsed", table_column=fixed()),
        TimeElapsedColumn(table_column=fixed()),
        TextColumn("eta", table_column=fixed()),
        TimeRemainingColumn(table_column=fixed()),
        console=console,
        transient=True,
        expand=True,
    )


def in_flight(case: Case) -> str:
    """The case's label, its parameters ', '-separated so that a narrow terminal wraps
    between them rather than inside a name."""
    return visible(case.label().replace(",", ", "))


class RunProgress:
    """A rich progress bar on a terminal; one plain line per case elsewhere (CI logs)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._bar: Progress | None = None
        self._task: Any = None
        self._done = 0
        self._total = 0

    def start(self, total: int, done: int) -> None:
        self._total, self._done = total, done
        if self.console.is_terminal:
            self._bar = progress_bar(self.console)
            self._bar.start()
            self._task = self._bar.add_task("starting workers", total=total, completed=done)

    def case_started(self, case: Case) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=in_flight(case))

    def case_finished(self, case: Case, record: CaseRecord) -> None:
        self._done += 1
        if self._bar is not None:
            self._bar.advance(self._task)
            if record.status not in ("ok", "skipped", "unsupported"):
                self._bar.console.print(
                    line((record.status, "red"), f" {case.label()}: {record.reason}"), soft_wrap=True
                )
            return
        median = record.median_s
        figure = f"{fmt_time(median)} ms" if median is not None else record.reason
        self.console.print(
            line(f"[{self._done}/{self._total}] {case.label()}: {record.status} {figure}"), soft_wrap=True
        )

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _varying(cases: list[CaseRecord], key: str) -> bool:
    return len({str(getattr(c, key)) for c in cases}) > 1


def _varying_params(cases: list[CaseRecord]) -> dict[str, list[str]]:
    """Per variant, the parameters whose values differ within this run (worth showing)."""
    seen: dict[str, dict[str, set[str]]] = {}
    for c in cases:
        derived = set(c.derived_params)
        for k, v in c.params.items():
            if k in derived:
                continue
            seen.setdefault(c.variant, {}).setdefault(k, set()).add(repr(v))
    return {v: sorted(k for k, vals in ps.items() if len(vals) > 1) for v, ps in seen.items()}


def _variant_label(rec: CaseRecord, shown: dict[str, list[str]], impl: bool = False) -> str:
    """The design as the summary names it; `impl`: with its implementation (several ran)."""
    keys = shown.get(rec.variant, [])
    transform = rec.transform or "none"
    name = rec.variant if transform == "none" else f"{rec.variant} +{transform}"
    if impl:
        name += f" impl={rec.impl}"
    if not keys:
        return name
    # ', ': a narrow column wraps between the parameters, never inside one
    return name + " " + ", ".join(f"{k}={rec.params[k]}" for k in keys)


SETTING_AXES = ("backend", "dtype", "mode", "scope", "batch", "heads", "head_dim")  # shown where they vary
FIGURE_COLUMNS = (
    ("n", "right"),
    ("median ms", "right"),
    ("±CI", "right"),
    ("tokens/s", "right"),
    ("GFLOP/s", "right"),
    ("peak MiB", "right"),
    ("status", "left"),
)


def _figures(rec: CaseRecord) -> list[Any]:
    """The length, the measured figures and the status of one case."""
    row: list[Any] = [str(rec.seq_len)]
    if rec.status == "ok" and rec.time_s:
        t = rec.time_s
        ci = max(t.median - t.ci95_low, t.ci95_high - t.median) / t.median
        peak = rec.peak_memory_bytes
        row += [
            fmt_time(t.median),
            f"{ci:.1%}",
            fmt_rate(rec.tokens_per_s or 0),
            f"{(rec.flops_per_s or 0) / 1e9:.1f}",
            f"{peak / 2**20:.1f}" if peak is not None else "n/a",
        ]
    else:
        row += ["-", "-", "-", "-", "-"]
    return [*row, status_cell(rec)]


def _summary_table(title: str, title_style: str, names: Sequence[str]) -> LiteralTable:
    table = LiteralTable(title=title, title_justify="left", title_style=title_style)
    for name in names:
        table.add_column(name, style="bold" if name == "variant" else "")
    for header, justify in FIGURE_COLUMNS:
        table.add_column(header, justify=justify)  # type: ignore[arg-type]
    return table


def summary_tables(result: RunResult, console: Console) -> list[RenderableType]:
    """The end-of-run summary, laid out for the console's width (fit: no name, parameter or
    status cut): one table where it fits; otherwise a line naming the run, then one table
    per design titled with its variant, transform, implementation (where several ran) and varying
    parameters (the backend, dtype, ... that vary within the run as columns, or in the titles too
    where those do not fit)."""
    cases = result.cases
    shown = _varying_params(cases)
    impls = _varying(cases, "impl")
    axes = [k for k in SETTING_AXES if _varying(cases, k)]

    def setting(c: CaseRecord) -> list[str]:
        return [str(getattr(c, k)) for k in axes]

    ordered = sorted(cases, key=lambda c: (_variant_label(c, shown, impls), *setting(c), c.seq_len))
    heading = f"run {result.run.run_id} ({result.run.suite})"
    one = _summary_table(heading, "table.title", ["variant", *axes])
    previous = None
    for rec in ordered:
        label = _variant_label(rec, shown, impls)
        one.add_row(label if label != previous else "", *setting(rec), *_figures(rec))
        previous = label
    if fit(console, [one]):
        return [one]
    tables: list[Table] = []
    for in_title in dict.fromkeys((0, len(axes))):  # the setting as columns, else in the titles too
        groups: dict[str, list[CaseRecord]] = {}
        for rec in ordered:
            groups.setdefault(" · ".join([_variant_label(rec, shown, impls), *setting(rec)[:in_title]]), []).append(rec)
        tables = []
        for title, recs in groups.items():
            table = _summary_table(title, "bold", axes[in_title:])
            for rec in recs:
                table.add_row(*setting(rec)[in_title:], *_figures(rec))
            tables.append(table)
        if fit(console, tables):
            return [literal(heading, "table.title"), *tables]
    return [literal(heading, "table.title"), *map(fold_everywhere, tables)]


def _host_varied(rec: CaseRecord) -> bool:
    spread = host_spread(rec.machine_check)
    return spread is not None and spread > HOST_SPREAD_LIMIT


def print_summary(console: Console, result: RunResult) -> None:
    for renderable in summary_tables(result, console):
        console.print(renderable)
    cases = result.cases
    counts: dict[str, int] = {}
    for c in cases:
        counts[c.status] = counts.get(c.status, 0) + 1
    unstable = sum(1 for c in cases if c.status == "ok" and not c.stable)
    parts = [f"{v} {k}" for k, v in sorted(counts.items())]
    if unstable:
        parts.append(f"{unstable} of them unstable (noisy or not converged: see notes in cases.jsonl)")
    console.print(line(f"{len(cases)} cases: " + ", ".join(parts)), soft_wrap=True)
    host_noisy = sum(1 for c in cases if c.status == "ok" and not c.stable and _host_varied(c))
    if host_noisy:
        console.print(
            line(
                f"  in {host_noisy} of the {unstable} unstable cases the host's own speed varied by over "
                f"{HOST_SPREAD_LIMIT:.0%} (its reference kernel's IQR/median while they were sampled): "
                "a quieter machine may steady them"
            ),
            soft_wrap=True,
        )
    shown = _varying_params(cases)
    impls = _varying(cases, "impl")
    for c in cases:
        if c.status != "ok":
            label = _variant_label(c, shown, impls)
            console.print(line("  ", (c.status, "bold"), f" {label} n={c.seq_len}: {c.reason}"), soft_wrap=True)
    overheads = [o for c in cases if (o := (c.worker or {}).get("overhead_s"))]
    if overheads:
        server = result.run.worker_server_start_s
        server_txt = f"; fork server start {server:.2f} s once" if server else ""
        console.print(
            line(
                f"worker isolation overhead: median {statistics.median(overheads) * 1e3:.0f} ms per case"
                f" (max {max(overheads) * 1e3:.0f} ms){server_txt}"
            ),
            soft_wrap=True,
        )
    busy = [share for c in cases if (share := c.other_cpu_share)]
    if busy and max(busy) > BUSY_SHARE:
        n_busy = sum(1 for b in busy if b > BUSY_SHARE)
        console.print(
            line(
                ("warning", "bold yellow"),
                f": other processes used up to {max(busy):.0%} of the CPU during {n_busy} case(s) "
                "(worker.other_cpu_share in cases.jsonl); timings from a busy machine are not comparable",
            ),
            soft_wrap=True,
        )
    energy = next((c.energy_reason for c in cases if c.status == "ok" and c.energy_j is None), None)
    if energy:
        console.print(line(f"energy: not measured ({energy})"), soft_wrap=True)
    console.print(line(f"results: {result.folder}/run.json and cases.jsonl"), soft_wrap=True)
