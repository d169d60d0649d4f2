"""From stored runs to what a report draws: points, series (curves) and groups (figure sets).

A *point* is one case of one run. A *series* is one curve: the points of one source (run ×
backend × host) for one variant with one parameter set, scope and shape, over sequence
length. A *group* is one set of figures: per backend × dtype × mode, plus, when several
backends share a dtype and mode, an overlay group across them. Colours follow the curve
(variant, parameters, scope, shape) and line styles follow the source, so the same variant
looks the same in every figure and two machines or backends stay apart.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from attnbench.core.cases import BASELINE_VARIANT
from attnbench.core.errors import UserError
from attnbench.core.record import CaseRecord
from attnbench.core.results import RunResult, load_run

FAILED = ("oom", "timeout", "error")  # the run tried and did not get a figure
BUSY_SHARE = 0.10  # other processes' CPU share above which a run's timings are suspect


def find_run(arg: str | Path) -> Path:
    """A run folder from what the user typed: the folder, its run.json, or a bare run id under results/."""
    path = Path(arg)
    if path.name == "run.json" and path.is_file():
        return path.parent
    if not path.exists() and not path.is_absolute() and len(path.parts) == 1 and (Path("results") / path).is_dir():
        return Path("results") / path
    if not path.exists():
        raise UserError(f"{arg} does not exist; give a run folder such as results/<run_id> (see `ls results`)")
    return path


def load_runs(args: Iterable[str | Path]) -> list[RunResult]:
    runs = [load_run(find_run(a)) for a in args]
    seen: dict[str, Path] = {}
    for r in runs:
        if r.run.run_id in seen:
            raise UserError(
                f"run {r.run.run_id} is given twice ({seen[r.run.run_id]} and {r.folder}); give each run once"
            )
        seen[r.run.run_id] = r.folder
    return runs


@dataclass(frozen=True)
class Source:
    """Where a curve was measured: one backend of one run on one host."""

    run_index: int
    run_id: str
    host: str
    backend: str


@dataclass(frozen=True)
class Ceilings:
    """A device's roofline ceilings for one dtype, and where they came from."""

    flops_per_s: float | None
    bytes_per_s: float | None
    source: str | None  # "calibrated" | "datasheet" | None
    reason: str | None

    @property
    def any(self) -> bool:
        return self.flops_per_s is not None or self.bytes_per_s is not None


def _number(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 else None


def device_ceilings(run: RunResult, backend: str, dtype: str) -> Ceilings:
    """The `peaks` of the run's device entry for this backend.

    Reads the contract's form, {"source", "reason", "matmul_flops_per_s": {dtype: x},
    "memory_bytes_per_s": y}, and the placeholder earlier runs wrote, {"flops_per_s",
    "bytes_per_s", "method"}, so old runs say why they have no ceilings.
    """
    devices = [d for d in run.run.devices if d.get("backend") == backend] or (
        run.run.devices if len(run.run.devices) == 1 else []
    )
    if not devices:
        return Ceilings(None, None, None, f"run.json lists no device for backend {backend}")
    peaks = devices[0].get("peaks") or {}
    flops = peaks.get("matmul_flops_per_s", peaks.get("flops_per_s"))
    if isinstance(flops, dict):
        flops = flops.get(dtype)
    bw = peaks.get("memory_bytes_per_s", peaks.get("bytes_per_s"))
    source = peaks.get("source")
    reason = peaks.get("reason") or peaks.get("method")
    c = Ceilings(_number(flops), _number(bw), source, reason)
    if not c.any and not reason:
        reason = "run.json records no peak figures for this device"
        c = Ceilings(None, None, source, reason)
    return c


@dataclass(frozen=True)
class Point:
    source: Source
    case: CaseRecord

    @property
    def seq_len(self) -> int:
        return self.case.seq_len

    @property
    def status(self) -> str:
        return self.case.status

    @property
    def ok(self) -> bool:
        return self.case.status == "ok" and (self.case.median_s or 0) > 0

    @property
    def stable(self) -> bool:
        return bool(self.case.stable)

    @property
    def scope(self) -> str:
        return self.case.scope or "core"

    @property
    def tokens(self) -> int:
        return self.case.batch * self.case.seq_len

    def time(self) -> tuple[float, float, float] | None:
        """(median, ci95_low, ci95_high) seconds per call."""
        t = self.case.time_s
        if not self.ok or t is None:
            return None
        return t.median, t.ci95_low, t.ci95_high

    def throughput(self) -> tuple[float, float, float] | None:
        t = self.time()
        if t is None:
            return None
        return self.tokens / t[0], self.tokens / t[2], self.tokens / t[1]

    @property
    def peak_memory(self) -> int | None:
        m = self.case.peak_memory_bytes
        return m if self.ok and isinstance(m, int) and m > 0 else None

    @property
    def analytic_min_bytes(self) -> int | None:
        m = self.case.analytic_min_bytes
        return m if isinstance(m, int) and m > 0 else None

    @property
    def energy_per_token(self) -> float | None:
        if not self.ok:
            return None
        e = _number(self.case.energy_per_token_j)
        if e is None and _number(self.case.energy_j) is not None:
            e = self.case.energy_j / self.tokens
        return e

    @property
    def flops_per_s(self) -> float | None:
        return _number(self.case.flops_per_s) if self.ok else None

    @property
    def bytes_per_s(self) -> float | None:
        """Minimum bytes over the median: the case's own figure, else analytic_min_bytes / median."""
        if not self.ok:
            return None
        b = _number(self.case.bytes_per_s)
        if b is None and self.analytic_min_bytes and self.case.median_s:
            b = self.analytic_min_bytes / self.case.median_s
        return b

    @property
    def intensity(self) -> float | None:
        """Arithmetic intensity, useful FLOPs per minimum byte (the roofline's x)."""
        f, b = self.flops_per_s, self.bytes_per_s
        return f / b if f and b else None

    @property
    def fraction_of_peak(self) -> dict[str, Any]:
        f = self.case.fraction_of_peak
        return f if isinstance(f, dict) else {}

    @property
    def ponder_histogram(self) -> list[int] | None:
        h = (self.case.workload_metrics or {}).get("ponder_histogram")
        return h if isinstance(h, list) and h and sum(h) > 0 else None

    @property
    def other_cpu_share(self) -> float | None:
        return _number(self.case.other_cpu_share)


def _freeze(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


@dataclass(frozen=True)
class CurveKey:
    """What a curve measures, apart from where: colours follow it across figures and sources."""

    variant: str
    scope: str
    batch: int
    heads: int
    head_dim: int
    params: str  # JSON of the parameters that do not follow from the length
    transform: str = "none"  # an optimisation applied to the workload (compile, int8, ...): its own curve
    impl: str = "native"  # the code that computed it (native, flex, masked_sdpa, ...): its own curve too

    @property
    def param_dict(self) -> dict[str, Any]:
        return json.loads(self.params)


@dataclass(frozen=True)
class SeriesKey:
    source: Source
    curve: CurveKey


def curve_key(point: Point) -> CurveKey:
    c = point.case
    derived = set(c.derived_params)
    params = {k: v for k, v in c.params.items() if k not in derived}
    transform = c.transform or "none"
    impl = c.impl or "native"
    return CurveKey(c.variant, point.scope, c.batch, c.heads, c.head_dim, _freeze(params), transform, impl)


@dataclass(frozen=True)
class Group:
    """One set of figures: `key` names it in file names, `title` on the page."""

    key: str
    title: str
    backend: str | None  # None for an overlay across backends
    dtype: str
    mode: str
    series: dict[SeriesKey, list[Point]]

    @property
    def points(self) -> list[Point]:
        return [p for pts in self.series.values() for p in pts]

    @property
    def sources(self) -> list[Source]:
        return sorted({k.source for k in self.series}, key=lambda s: (s.run_index, s.backend))


class ReportData:
    """Every point of the given runs, with the labels, groups and matching a report needs."""

    def __init__(
        self, runs: list[RunResult], baseline: str = BASELINE_VARIANT, labels: list[str] | None = None
    ) -> None:
        if not runs:
            raise UserError("give at least one run folder")
        if labels is not None and len(labels) != len(runs):
            raise UserError(f"--labels gives {len(labels)} name(s) for {len(runs)} run(s); give one per run, in order")
        self.runs = runs
        self.baseline = baseline
        self.labels = labels
        self._varying_cache: dict[frozenset, tuple[dict[str, list[str]], bool, bool]] = {}
        self.points: list[Point] = []
        for i, r in enumerate(runs):
            host = str(r.run.host.get("hostname") or "unknown host")
            for c in r.cases:
                self.points.append(Point(Source(i, r.run.run_id, host, c.backend), c))

    # ---------------------------------------------------------------- labels
    @cached_property
    def sources(self) -> list[Source]:
        return sorted({p.source for p in self.points}, key=lambda s: (s.run_index, s.backend))

    def source_label(self, source: Source, among: Iterable[Source] | None = None) -> str:
        """The parts that tell this source apart from the others (all, or those `among`): backend, host, run."""
        srcs = list(among) if among is not None else self.sources
        parts = []
        if len({s.backend for s in srcs}) > 1:
            parts.append(source.backend)
        if self.labels is not None:
            if len({s.run_index for s in srcs}) > 1:
                parts.append(self.labels[source.run_index])
            return "@".join(parts)
        if len({s.host for s in srcs}) > 1:
            parts.append(source.host)
        same_place = [s for s in srcs if (s.backend, s.host) == (source.backend, source.host)]
        if len(same_place) > 1:
            parts.append(self.run_label(source.run_index))
        return "@".join(parts)

    def run_label(self, index: int) -> str:
        """A run's short name: the one the user gave, else its run id without the date and time."""
        if self.labels is not None:
            return self.labels[index]
        run_id = self.runs[index].run.run_id
        parts = run_id.split("-", 2)
        return parts[2] if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit() else run_id

    def _varying(self, curves: Iterable[CurveKey]) -> tuple[dict[str, list[str]], bool, bool]:
        """Among these curves: per variant the parameters that differ, and whether shapes or scopes do."""
        curves = frozenset(curves)
        if curves in self._varying_cache:
            return self._varying_cache[curves]
        values: dict[str, dict[str, set[str]]] = {}
        for c in curves:
            for k, v in c.param_dict.items():
                values.setdefault(c.variant, {}).setdefault(k, set()).add(_freeze(v))
        params = {v: sorted(k for k, vals in ps.items() if len(vals) > 1) for v, ps in values.items()}
        shapes = len({(c.batch, c.heads, c.head_dim) for c in curves}) > 1
        scopes = len({c.scope for c in curves}) > 1
        self._varying_cache[curves] = (params, shapes, scopes)
        return params, shapes, scopes

    def curve_label(self, curve: CurveKey, group: Group | None = None) -> str:
        """Variant, plus what tells it apart from the other curves (of the group, or of the report)."""
        params, shapes, scopes = self._varying(self.curves if group is None else (k.curve for k in group.series))
        label = curve.variant
        shown = params.get(curve.variant, [])
        if shown:
            pd = curve.param_dict
            label += " " + ",".join(f"{k}={pd.get(k)}" for k in shown)
        if shapes:
            label += f" B{curve.batch} h{curve.heads} d{curve.head_dim}"
        if scopes and curve.scope != "core":
            label += f" [{curve.scope}]"
        if curve.transform != "none":
            label += f" +{curve.transform}"
        if curve.impl != "native":
            label += f" impl={curve.impl}"
        return label

    def series_label(self, key: SeriesKey, group: Group | None = None) -> str:
        """Curve and source; within a group, only what tells the group's curves apart."""
        src = self.source_label(key.source, None if group is None else group.sources)
        return self.curve_label(key.curve, group) + (f" · {src}" if src else "")

    @cached_property
    def curves(self) -> list[CurveKey]:
        """Every curve, in a stable order: colour i belongs to curves[i]."""
        return sorted(
            {curve_key(p) for p in self.points},
            key=lambda c: (
                c.variant,
                c.impl != "native",
                c.impl,
                c.transform != "none",
                c.transform,
                c.scope,
                c.params,
                c.batch,
            ),
        )

    # ---------------------------------------------------------------- grouping
    def _series_of(self, points: list[Point]) -> dict[SeriesKey, list[Point]]:
        out: dict[SeriesKey, list[Point]] = {}
        for p in points:
            out.setdefault(SeriesKey(p.source, curve_key(p)), []).append(p)
        for pts in out.values():
            pts.sort(key=lambda p: p.seq_len)
        order = {c: i for i, c in enumerate(self.curves)}
        return dict(
            sorted(out.items(), key=lambda kv: (order[kv[0].curve], kv[0].source.run_index, kv[0].source.backend))
        )

    @cached_property
    def groups(self) -> list[Group]:
        """Per backend × dtype × mode; then an overlay per dtype × mode that spans backends."""
        by: dict[tuple[str, str, str], list[Point]] = {}
        for p in self.points:
            by.setdefault((p.case.backend, p.case.dtype, p.case.mode), []).append(p)
        groups = [
            Group(f"{b}-{d}-{m}", f"{b} · {d} · {m}", b, d, m, self._series_of(pts))
            for (b, d, m), pts in sorted(by.items())
        ]
        across: dict[tuple[str, str], list[Point]] = {}
        for p in self.points:
            across.setdefault((p.case.dtype, p.case.mode), []).append(p)
        for (d, m), pts in sorted(across.items()):
            backends = sorted({p.case.backend for p in pts})
            if len(backends) > 1:
                title = f"{' vs '.join(backends)} · {d} · {m}"
                groups.append(Group(f"all-{d}-{m}", title, None, d, m, self._series_of(pts)))
        return groups

    # ---------------------------------------------------------------- baseline
    def baseline_for(self, key: SeriesKey, series: dict[SeriesKey, list[Point]]) -> SeriesKey | None:
        """The baseline curve this one is compared with: same source, scope and shape; the
        baseline under the same transform if there is one (compiled against compiled), else
        untransformed (so a transformed baseline is compared with itself as it was); when the
        baseline has several parameter sets, the one with the same `causal` setting."""
        c = key.curve
        if c.variant == self.baseline and c.transform == "none" and c.impl == "native":
            return None
        candidates = [
            k
            for k in series
            if k.source == key.source
            and k != key
            and k.curve.variant == self.baseline
            and (k.curve.scope, k.curve.batch, k.curve.heads, k.curve.head_dim)
            == (c.scope, c.batch, c.heads, c.head_dim)
        ]
        # The baseline's own kernel (native), whatever computes this curve; another impl of it
        # only where the baseline ran no other way.
        candidates = [k for k in candidates if k.curve.impl == "native"] or candidates
        same = [k for k in candidates if k.curve.transform == c.transform]
        candidates = same or [k for k in candidates if k.curve.transform == "none"]
        causal = c.param_dict.get("causal")
        matching = [k for k in candidates if k.curve.param_dict.get("causal") == causal]
        return (matching or candidates or [None])[0]

    @property
    def baseline_present(self) -> bool:
        return any(p.case.variant == self.baseline for p in self.points)

    # ---------------------------------------------------------------- run-level facts
    def busy_runs(self) -> list[tuple[RunResult, float, int]]:
        """Runs measured while other processes held the CPU: (run, worst share, cases affected)."""
        out = []
        for r in self.runs:
            shares = [p.other_cpu_share or 0.0 for p in self.points if p.source.run_id == r.run.run_id]
            busy = [s for s in shares if s > BUSY_SHARE]
            if busy:
                out.append((r, max(busy), len(busy)))
        return out

    def status_counts(self) -> Counter[str]:
        return Counter("unstable" if p.ok and not p.stable else p.status for p in self.points)

    def ceilings(self, source: Source, dtype: str) -> Ceilings:
        return device_ceilings(self.runs[source.run_index], source.backend, dtype)


def case_label(p: Point, data: ReportData) -> str:
    """A case in one line for tables of failures."""
    c = p.case
    # The backend is named already; the host or run tell apart sources of the same backend.
    src = data.source_label(p.source, [s for s in data.sources if s.backend == p.source.backend])
    where = f"{c.backend}/{c.dtype}/{c.mode}" + (f" @ {src}" if src else "")
    return f"{data.curve_label(curve_key(p))} n={c.seq_len} ({where})"
