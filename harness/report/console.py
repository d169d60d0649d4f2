"""What the terminal shows: live progress during a run, a summary table after it.

The summary is rendered from the stored results, never from in-memory state, so what the
user reads is exactly what other tools will parse.
"""

from __future__ import annotations

import statistics
from typing import IO, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from attnbench.core.cases import Case
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


def make_console(file: IO[str] | None = None) -> Console:
    """Rich's console (on stdout, or `file`); wide enough for the summary table when output
    goes to a file or CI log.

    Emoji codes are off (`:x:` in a record stays `:x:`); markup is never given user text:
    everything printed that the project did not write goes through attnbench.report.escaping.
    """
    console = Console(emoji=False, file=file)
    if not console.is_terminal:
        console = Console(emoji=False, file=file, width=max(console.width, 120))
    return console


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
            self._bar = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}", style="cyan", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("elapsed"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task("starting workers", total=total, completed=done)

    def case_started(self, case: Case) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=visible(case.label()))

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


def _variant_label(rec: CaseRecord, shown: dict[str, list[str]]) -> str:
    keys = shown.get(rec.variant, [])
    transform = rec.transform or "none"
    name = rec.variant if transform == "none" else f"{rec.variant} +{transform}"
    if not keys:
        return name
    return name + " " + ",".join(f"{k}={rec.params[k]}" for k in keys)


def summary_table(result: RunResult) -> LiteralTable:
    cases = result.cases
    shown = _varying_params(cases)
    extra_cols = [k for k in ("backend", "dtype", "mode", "scope", "batch", "heads", "head_dim") if _varying(cases, k)]
    table = LiteralTable(title=f"run {result.run.run_id} ({result.run.suite})", title_justify="left")
    table.add_column("variant", style="bold")
    for k in extra_cols:
        table.add_column(k)
    table.add_column("n", justify="right")
    table.add_column("median ms", justify="right")
    table.add_column("±CI", justify="right")
    table.add_column("tokens/s", justify="right")
    table.add_column("GFLOP/s", justify="right")
    table.add_column("peak MiB", justify="right")
    table.add_column("status")

    def key(c: CaseRecord) -> tuple:
        return (_variant_label(c, shown), *(str(getattr(c, k)) for k in extra_cols), c.seq_len)

    previous = None
    for rec in sorted(cases, key=key):
        label = _variant_label(rec, shown)
        row = [label if label != previous else ""]
        previous = label
        row += [str(getattr(rec, k)) for k in extra_cols]
        row.append(str(rec.seq_len))
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
        row.append(status_cell(rec))
        table.add_row(*row)
    return table


def print_summary(console: Console, result: RunResult) -> None:
    console.print(summary_table(result))
    cases = result.cases
    counts: dict[str, int] = {}
    for c in cases:
        counts[c.status] = counts.get(c.status, 0) + 1
    unstable = sum(1 for c in cases if c.status == "ok" and not c.stable)
    parts = [f"{v} {k}" for k, v in sorted(counts.items())]
    if unstable:
        parts.append(f"{unstable} of them unstable (noisy or not converged: see notes in cases.jsonl)")
    console.print(line(f"{len(cases)} cases: " + ", ".join(parts)), soft_wrap=True)
    shown = _varying_params(cases)
    for c in cases:
        if c.status != "ok":
            console.print(
                line("  ", (c.status, "bold"), f" {_variant_label(c, shown)} n={c.seq_len}: {c.reason}"), soft_wrap=True
            )
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
