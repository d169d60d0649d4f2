"""The report's tables as plain rows, so HTML, Markdown and the terminal show the same numbers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from attnbench.report.analysis import (
    Crossover,
    MemoryPoint,
    SlopeFit,
    SpeedupPoint,
    crossover,
    fit_loglog,
    memory_crossover,
)
from attnbench.report.data import FAILED, Group, Point, ReportData, SeriesKey, case_label, curve_key


@dataclass(frozen=True)
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]
    right: frozenset[int] = frozenset()  # column indexes aligned right (numbers)
    notes: list[str] = field(default_factory=list)
    nowrap: frozenset[int] = frozenset({0})  # columns a narrow terminal must not fold (names, ids)
    links: dict[tuple[int, int], str] = field(default_factory=dict)  # (row, column) -> absolute file path


@dataclass(frozen=True)
class SeriesStats:
    """What one curve's analysis found: its fits, and its comparison with the baseline."""

    key: SeriesKey
    label: str
    points: list[Point]
    time_fit: SlopeFit | None
    memory_fit: SlopeFit | None
    baseline: SeriesKey | None
    speedups: list[SpeedupPoint]
    crossover: Crossover


def fmt_ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 1000 else f"{ms:,.0f}"


def fmt_bytes(n: float) -> str:
    for unit, div in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= div:
            return f"{n / div:.3g} {unit}"
    return f"{n:.0f} B"


def fmt_len(n: float) -> str:
    return f"{n / 1024:g}K" if n >= 1024 and n % 256 == 0 else f"{n:,.0f}"


def _is_baseline(data: ReportData, key: SeriesKey) -> bool:
    return key.curve.variant == data.baseline and key.curve.transform == "none" and key.curve.impl == "native"


def speedup_points(base: list[Point], var: list[Point]) -> list[SpeedupPoint]:
    """Baseline over variant at every length both curves reached.

    A length where only one of them ran counts as a win for it when the other ran out of
    memory or time or was skipped for that reason; errors and unsupported cases say nothing
    about speed and are left out.
    """
    by_len = {p.seq_len: p for p in base}
    out = []
    for v in var:
        b = by_len.get(v.seq_len)
        if b is None:
            continue
        tb, tv = b.time(), v.time()
        if tb and tv:
            out.append(SpeedupPoint(v.seq_len, tb[0] / tv[0], tb[1] / tv[2], tb[2] / tv[1], "measured"))
        elif tv and b.status in ("oom", "timeout", "skipped"):
            out.append(SpeedupPoint(v.seq_len, None, None, None, "baseline failed"))
        elif tb and v.status in ("oom", "timeout", "skipped"):
            out.append(SpeedupPoint(v.seq_len, None, None, None, "variant failed"))
    return out


def series_stats(data: ReportData, group: Group, fit_min_len: int = 0) -> list[SeriesStats]:
    out = []
    for key, pts in group.series.items():
        ok = [p for p in pts if p.ok and p.seq_len >= fit_min_len]
        time_fit = fit_loglog([p.seq_len for p in ok], [p.time()[0] for p in ok])  # type: ignore[index]
        mem = [p for p in ok if p.peak_memory]
        memory_fit = fit_loglog([p.seq_len for p in mem], [p.peak_memory for p in mem])  # type: ignore[misc]
        base = data.baseline_for(key, group.series)
        speedups = speedup_points(group.series[base], pts) if base else []
        out.append(
            SeriesStats(
                key, data.series_label(key, group), pts, time_fit, memory_fit, base, speedups, crossover(speedups)
            )
        )
    return out


def scaling_table(data: ReportData, group: Group, stats: list[SeriesStats], fit_min_len: int = 0) -> Table:
    has_peak = any(p.fraction_of_peak.get("flops") is not None or _over_ceiling(p) for p in group.points)
    headers = ["variant", "lengths", "ok", "time exp.", "memory exp.", "median @ longest", "speedup @ longest"]
    headers.append("crossover")
    if has_peak:
        headers.append("best % of peak FLOP/s")
    rows = []
    for s in stats:
        lens = sorted({p.seq_len for p in s.points})
        ok = [p for p in s.points if p.ok]
        longest = max(ok, key=lambda p: p.seq_len) if ok else None
        measured = [sp for sp in s.speedups if sp.outcome == "measured"]
        if _is_baseline(data, s.key):
            speed, cross = "baseline", "—"
        elif s.baseline is None:
            speed, cross = f"no {data.baseline} in scope {s.key.curve.scope}", "n/a"
        else:
            last = max(measured, key=lambda sp: sp.seq_len) if measured else None
            speed = f"{last.speedup:.2f}× @ {fmt_len(last.seq_len)}" if last else "—"
            if last and not last.significant:
                speed += " (n.s.)"
            cross = s.crossover.text()
        row = [
            s.label,
            f"{fmt_len(lens[0])}–{fmt_len(lens[-1])} ({len(lens)})" if len(lens) > 1 else fmt_len(lens[0]),
            f"{len(ok)}/{len(s.points)}",
            s.time_fit.text() if s.time_fit else "—",
            s.memory_fit.text() if s.memory_fit else "—",
            f"{fmt_ms(longest.time()[0])} ms @ {fmt_len(longest.seq_len)}" if longest else "—",  # type: ignore[index]
            speed,
            cross,
        ]
        if has_peak:
            over = sum(_over_ceiling(p) for p in ok)
            fr = [p.fraction_of_peak["flops"] for p in ok if p.fraction_of_peak.get("flops") is not None]
            fr = [f for f in fr if f <= 1]  # above 1: over the ceiling, counted below
            best = f"{max(fr):.1%}" if fr else "—"
            row.append(f"{best} ({over} over ceiling)" if over else best)
        rows.append(row)
    notes = [
        "exp.: least-squares slope of log(figure) on log(n) over the ok cases"
        + (f" with n ≥ {fit_min_len}" if fit_min_len else "")
        + ", ± its 95% interval (Student's t); ~1 grows linearly, ~2 quadratically.",
        f"crossover: the smallest measured length from which the variant beats {data.baseline} at every longer "
        "measured length; ≈ where the log speedup, interpolated linearly in log n between the bracketing lengths, "
        "crosses 1; '?' when the 95% band of the speedup there includes 1; n.s.: not significant (band includes 1).",
    ]
    if any(_over_ceiling(p) for p in group.points):
        notes.append(
            "over ceiling: cases that ran faster than the recorded peak FLOP/s, which is then too low (e.g. "
            "calibrated on a busy machine); they get no fraction; `bench calibrate` on a quiet machine re-measures."
        )
    return Table(
        f"Scaling — {group.title} (speedups vs {data.baseline})", headers, rows, frozenset({2, 3, 4, 5}), notes
    )


def _over_ceiling(p: Point) -> bool:
    """A case faster than its peak FLOP/s (over_ceiling, or a fraction above 1 from before it was
    flagged): the ceiling is wrong, so the fraction is no figure of the case."""
    f = p.fraction_of_peak
    flops = f.get("flops")
    return "flops" in (f.get("over_ceiling") or {}) or (isinstance(flops, (int, float)) and flops > 1)


def time_table(data: ReportData, group: Group) -> Table:
    """Median milliseconds per call by length: the whole sweep at a glance."""
    lens = sorted({p.seq_len for p in group.points})
    rows = []
    for key, pts in group.series.items():
        by = {p.seq_len: p for p in pts}
        row = [data.series_label(key, group)]
        for n in lens:
            p = by.get(n)
            if p is None:
                row.append("")
            elif p.ok:
                row.append(fmt_ms(p.time()[0]) + ("" if p.stable else " ~"))  # type: ignore[index]
            else:
                row.append(p.status)
        rows.append(row)
    return Table(
        f"Median ms per call — {group.title}",
        ["variant", *(fmt_len(n) for n in lens)],
        rows,
        frozenset(range(1, len(lens) + 1)),
        ["~: unstable (the CI target was not reached or IQR/median over 10%); words: the case's status."],
    )


RATIO_LENGTHS = 3  # length columns of the ratio tables: the longest ones, so the tables fit 80 columns


def fmt_ratio(r: float) -> str:
    return f"{r:.0f}×" if r >= 100 else f"{r:.2f}×" if r >= 0.1 else f"{r:.2g}×"


def memory_points(base: list[Point], var: list[Point]) -> list[MemoryPoint]:
    """Variant peak over baseline peak at every length both curves reached.

    A length where only one of them ran counts for it when the other ran out of memory; other
    failures (time, errors, skips) and cases without a peak figure say nothing about memory and
    are left out.
    """
    by_len = {p.seq_len: p for p in base}
    out = []
    for v in var:
        b = by_len.get(v.seq_len)
        if b is None:
            continue
        mb, mv = b.peak_memory, v.peak_memory
        if mb and mv:
            out.append(MemoryPoint(v.seq_len, mv / mb))
        elif v.ok and b.status == "oom":
            out.append(MemoryPoint(v.seq_len, None, "baseline failed"))
        elif b.ok and v.status == "oom":
            out.append(MemoryPoint(v.seq_len, None, "variant failed"))
    return out


def _not_run(b: Point, v: Point) -> str | None:
    """The cell for a length where a side has no figure ("baseline skipped", "variant oom"), else None."""
    if b.ok and v.ok:
        return None
    if not b.ok and not v.ok:
        return f"both {b.status}" if b.status == v.status else f"baseline {b.status}, variant {v.status}"
    return f"variant {v.status}" if b.ok else f"baseline {b.status}"


def _speedup_cell(b: Point | None, v: Point | None) -> str:
    if b is None or v is None:
        return "—"
    sp = next(iter(speedup_points([b], [v])), None)
    if sp is None or sp.outcome != "measured" or sp.speedup is None:
        return _not_run(b, v) or "—"
    return fmt_ratio(sp.speedup) + ("" if sp.significant else " (n.s.)")


def _memory_cell(b: Point | None, v: Point | None) -> str:
    if b is None or v is None:
        return "—"
    not_run = _not_run(b, v)
    if not_run:
        return not_run
    mb, mv = b.peak_memory, v.peak_memory
    return fmt_ratio(mv / mb) if mb and mv else "not measured"


def _ratio_rows(data: ReportData, group: Group, stats: list[SeriesStats]) -> tuple[list[int], list[SeriesStats]]:
    """The length columns (the longest at which the baseline has a case of any status) and the
    rows (every series but the baseline's) of the ratio tables; no rows when there is nothing to compare."""
    base_lens = sorted({p.seq_len for key, pts in group.series.items() if _is_baseline(data, key) for p in pts})
    rows = [s for s in stats if not _is_baseline(data, s.key)]
    if not base_lens or not rows:
        return [], []
    return base_lens[-RATIO_LENGTHS:], rows


def _ratio_table(
    data: ReportData,
    group: Group,
    stats: list[SeriesStats],
    what: str,
    cell: Callable[[Point | None, Point | None], str],
    cross: Callable[[SeriesStats, list[Point]], Crossover],
    notes: list[str],
) -> Table | None:
    lens, series = _ratio_rows(data, group, stats)
    if not series:
        return None
    rows = []
    for s in series:
        base = group.series[s.baseline] if s.baseline else []
        b_at = {p.seq_len: p for p in base}
        v_at = {p.seq_len: p for p in s.points}
        rows.append([s.label, *(cell(b_at.get(n), v_at.get(n)) for n in lens), cross(s, base).text()])
    return Table(
        f"{what} vs {data.baseline} — {group.title}",
        ["variant", *(fmt_len(n) for n in lens), "crossover"],
        rows,
        frozenset(range(1, len(lens) + 1)),
        notes,
    )


def ratio_tables(data: ReportData, group: Group, stats: list[SeriesStats]) -> list[Table]:
    """Speedup and memory ratio of each variant against the baseline at the group's longest lengths,
    with the crossovers; none where the group has no baseline or nothing besides it."""
    b = data.baseline
    failed = (
        "baseline oom, variant skipped, ...: that side has no figure there (its status); "
        "—: a side has no case at that length."
    )
    speed = _ratio_table(
        data,
        group,
        stats,
        "Speedup",
        _speedup_cell,
        lambda s, base: s.crossover,
        [
            f"speedup = {b} time / variant time, medians (above 1: faster); (n.s.): its 95% band includes 1.",
            failed,
            "crossover: as in the scaling table.",
        ],
    )
    memory = _ratio_table(
        data,
        group,
        stats,
        "Memory",
        _memory_cell,
        lambda s, base: memory_crossover(memory_points(base, s.points)),
        [
            f"memory = variant peak / {b} peak (below 1: less).",
            failed,
            f"crossover: the smallest measured length from which the variant's peak is below {b}'s at every longer "
            "measured length; ≈ where the log ratio, interpolated linearly in log n between the bracketing lengths, "
            "crosses 1; a length where only the variant ran because the baseline ran out of memory counts as below.",
        ],
    )
    return [t for t in (speed, memory) if t is not None]


def failures_table(data: ReportData) -> Table:
    rows = [
        [case_label(p, data), p.status, p.case.reason or "(no reason recorded)"]
        for p in sorted(data.points, key=lambda p: (p.status not in FAILED, p.case.variant, p.seq_len))
        if p.status != "ok"
    ]
    return Table("Cases not ok", ["case", "status", "reason"], rows)


def unstable_table(data: ReportData) -> Table:
    rows = []
    for p in data.points:
        if p.ok and not p.stable:
            t = p.time()
            assert t is not None
            ci = max(t[0] - t[1], t[2] - t[0]) / t[0]
            notes = "; ".join(p.case.notes or []) or str(p.case.stop_reason or "")
            rows.append([case_label(p, data), fmt_ms(t[0]), f"±{ci:.1%}", notes])
    return Table("Unstable cases (status ok, figure not trusted)", ["case", "median ms", "95% CI", "why"], rows)


def runs_table(data: ReportData) -> Table:
    rows = []
    for i, r in enumerate(data.runs):
        info = r.run
        backends = sorted({c.backend for c in r.cases})
        devices = ", ".join(
            f"{d.get('backend', '?')}: {d.get('name', '?')}" for d in info.devices if d.get("backend") in backends
        )
        git = info.git or {}
        commit = str(git.get("commit") or "?")[:10] + (" (dirty)" if git.get("dirty") else "")
        host = info.host or {}
        cores = host.get("physical_cores")
        rows.append(
            [
                data.run_label(i),
                info.run_id,
                str(host.get("hostname", "?")),
                f"{host.get('cpu', '?')}" + (f", {cores} cores" if cores else ""),
                devices or ", ".join(backends),
                info.suite,
                info.status,
                str(len(r.cases)),
                commit,
                str(info.started_at)[:19].replace("T", " "),
            ]
        )
    headers = ["label", "run", "host", "cpu", "devices", "suite", "status", "cases", "commit", "started"]
    return Table("Runs", headers, rows, nowrap=frozenset({0, 1}))


def warnings(data: ReportData) -> list[str]:
    """Things a reader must know before trusting the figures."""
    out = []
    for r, share, n in data.busy_runs():
        out.append(
            f"run {r.run.run_id}: other processes used up to {share:.0%} of the CPU during {n} case(s); "
            "timings from a busy machine are not comparable."
        )
    for r in data.runs:
        if r.run.status != "complete":
            out.append(f"run {r.run.run_id} is {r.run.status}: some cases are missing.")
    counts = data.status_counts()
    if counts.get("unstable"):
        out.append(f"{counts['unstable']} of {len(data.points)} cases are unstable (drawn hollow; see the table).")
    failed = sum(v for k, v in counts.items() if k not in ("ok", "unstable"))
    if failed:
        out.append(f"{failed} case(s) are not ok (drawn as ×; see 'Cases not ok').")
    if not data.baseline_present:
        out.append(f"baseline {data.baseline} is not in these runs: no speedups or crossovers (choose --baseline).")
    return out


def highlights(data: ReportData, group: Group, stats: list[SeriesStats]) -> list[str]:
    """A few sentences that answer the usual questions for one group, from its numbers only."""
    out = []
    ok = [p for p in group.points if p.ok]
    if not ok:
        return ["no case ran successfully."]
    longest = max(p.seq_len for p in ok)
    at_longest = sorted((p for p in ok if p.seq_len == longest), key=lambda p: p.time()[0])  # type: ignore[index]
    best = at_longest[0]
    label = data.series_label(SeriesKey(best.source, curve_key(best)), group)
    out.append(f"fastest at n={fmt_len(longest)}: {label}, {fmt_ms(best.time()[0])} ms per call.")  # type: ignore[index]
    crossing = [s for s in stats if s.crossover.kind in ("at", "always")]
    for s in crossing:
        out.append(f"{s.label} beats {data.baseline} from n={s.crossover.text()}.")
    fits = [s for s in stats if s.time_fit and s.time_fit.points >= 2]
    if fits:
        steep = max(fits, key=lambda s: s.time_fit.slope)  # type: ignore[union-attr]
        flat = min(fits, key=lambda s: s.time_fit.slope)  # type: ignore[union-attr]
        if steep is not flat:
            out.append(
                f"time grows as n^{steep.time_fit.text()} for {steep.label} "  # type: ignore[union-attr]
                f"and n^{flat.time_fit.text()} for {flat.label}."  # type: ignore[union-attr]
            )
    return out


def energy_note(group: Group) -> str | None:
    """Why the group has no energy figure, or None when some case measured energy."""
    if any(p.energy_per_token is not None for p in group.points):
        return None
    reasons = sorted({str(p.case.energy_reason) for p in group.points if p.ok and p.case.energy_reason})
    return "energy: not measured" + (f" ({'; '.join(reasons)})" if reasons else "") + "."


def calibration_notes(data: ReportData, group: Group) -> list[str]:
    """One line per source of the group whose device has no roofline ceilings."""
    out = []
    for s in sorted({k.source for k in group.series}, key=lambda s: (s.run_index, s.backend)):
        c = data.ceilings(s, group.dtype)
        if not c.any:
            where = data.source_label(s, group.sources) or s.backend
            out.append(f"roofline: no calibration for {where} ({c.reason}).")
    return out


def group_notes(data: ReportData, group: Group) -> list[str]:
    energy = energy_note(group)
    return ([energy] if energy else []) + calibration_notes(data, group)


def published_table(data: ReportData) -> Table:
    """For runs of a reference suite (flash-e6, lra): published ratios beside those measured here."""
    from attnbench.analysis.published import compare, published

    rows: list[list[str]] = []
    notes: list[str] = []
    for r in data.runs:
        found = compare(r)
        if not found:
            continue
        info = published()[found[0].reference]
        notes.append(f"{r.run.run_id}: published figures from {info['source']} ({info['hardware']}).")
        if r.run.suite_notes:
            notes.append(f"{r.run.run_id}: {r.run.suite_notes}")
        for c in found:
            if c.verdict == "holds":
                verdict = f"holds: {c.published_claim}"
            elif c.verdict == "flips":
                verdict = f"FLIPS: {c.measured_claim} here, {c.published_claim} published"
            else:
                verdict = f"not measured ({c.why})"
            rows.append(
                [
                    f"{c.method} ({c.variant})",
                    c.backend,
                    c.dtype,
                    c.mode,
                    c.metric,
                    fmt_len(c.seq_len),
                    f"{c.published:.2f}",
                    f"{c.measured:.2f}" if c.measured is not None else "–",
                    verdict,
                ]
            )
    notes.append(
        "speed = dense time / method time (above 1: faster than dense); memory = method peak / dense peak "
        "(below 1: less). A conclusion holds when the measured ratio is on the same side of 1 as the published one."
    )
    return Table(
        "Published comparison",
        ["method (ours)", "backend", "dtype", "mode", "metric", "n", "published", "measured here", "conclusion"],
        rows,
        right=frozenset({5, 6, 7}),
        notes=notes,
    )


def _profile_of(data: ReportData, point: Point) -> tuple[dict, Path] | None:
    """A case's profile summary and its folder: from the record (`bench run --profile`), or the
    profile.json that `bench profile RUN/CASE` leaves beside the run."""
    import json

    folder = data.runs[point.source.run_index].folder
    prof = point.case.profile
    if isinstance(prof, dict) and prof.get("status", "ok") == "ok" and prof.get("dir"):
        return prof, folder / prof["dir"]
    on_disk = folder / "profiles" / point.case.case_id / "profile.json"
    if on_disk.is_file():
        try:
            return json.loads(on_disk.read_text()), on_disk.parent
        except (OSError, ValueError):
            return None
    return None


def profiles_table(data: ReportData, group: Group) -> Table:
    """The profiled cases of a group: where their time went, with links to the trace and tables."""
    rows: list[list[str]] = []
    links: dict[tuple[int, int], str] = {}
    for points in group.series.values():
        for p in sorted(points, key=lambda q: q.seq_len):
            found = _profile_of(data, p)
            if found is None:
                continue
            prof, where = found
            steps = prof.get("steps") or []
            top_step = f"{steps[0]['name']} {steps[0]['share']:.0%}" if steps else "–"
            ops = ", ".join(f"{o['name']} {o['share']:.0%}" for o in (prof.get("top_ops") or [])[:3]) or "–"
            i = len(rows)
            rows.append([case_label(p, data), fmt_len(p.seq_len), top_step, ops, "trace", "operators"])
            links[(i, 4)] = str(where / prof.get("trace", "trace.json"))
            links[(i, 5)] = str(where / prof.get("ops_md", "ops.md"))
    return Table(
        "Profiles",
        ["case", "n", "top step", "top operators (self time)", "trace", "tables"],
        rows,
        right=frozenset({1}),
        notes=["From `bench run --profile` or `bench profile`, in a worker of its own after timing."] if rows else [],
        links=links,
    )
