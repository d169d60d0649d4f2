"""Published ratios beside the ones measured here: does a paper's conclusion hold on this hardware?

The reference suites (`flash-e6`, `lra`) name their dataset in run.json (`reference`).
For each published method, length and metric this finds the matching stored cases (the
method's variant and the dense baseline, same backend, dtype, mode, scope and shape),
forms the same ratio, and says whether the published conclusion (faster or slower than
dense; less or more memory) holds or flips. It reads stored results only.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from importlib import resources
from typing import Any

from attnbench.core.record import CaseRecord
from attnbench.core.results import RunResult

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def published() -> dict[str, Any]:
    text = resources.files("attnbench.analysis.reference_data").joinpath("published.toml").read_text()
    return tomllib.loads(text)


@dataclass(frozen=True)
class Comparison:
    reference: str
    backend: str
    dtype: str
    mode: str
    metric: str  # speed (dense time / method time) | memory (method peak / dense peak)
    method: str  # as the paper names it
    variant: str
    seq_len: int
    published: float
    measured: float | None
    verdict: str  # holds | flips | not measured
    why: str | None = None

    @property
    def published_claim(self) -> str:
        return _claim(self.metric, self.published)

    @property
    def measured_claim(self) -> str | None:
        return _claim(self.metric, self.measured) if self.measured is not None else None


def _claim(metric: str, ratio: float) -> str:
    if metric == "speed":
        return "faster than dense" if ratio > 1 else "slower than dense"
    return "less memory than dense" if ratio < 1 else "more memory than dense"


def _forward_speed(data: dict[str, Any]) -> tuple[list[int], dict[str, list[float]]]:
    """Forward speed ratios (dense ms / method ms) from the published milliseconds."""
    fwd = data.get("forward", {})
    ms = fwd.get("ms", {})
    dense = ms.get("dense")
    if not dense:
        return [], {}
    ratios = {m: [d / t for d, t in zip(dense, v, strict=True)] for m, v in ms.items() if m != "dense"}
    return list(fwd["lengths"]), ratios


def _tables(data: dict[str, Any]) -> list[tuple[str, str, list[int], dict[str, list[float]]]]:
    """(mode, metric, lengths, method -> values) for every published table of a dataset."""
    out = []
    lengths_fwd, speed_fwd = _forward_speed(data)
    if speed_fwd:
        out.append(("forward", "speed", lengths_fwd, speed_fwd))
    for metric in ("speed", "memory"):
        table = dict(data.get("train", {}).get(metric, {}))
        if table:
            lengths = table.pop("lengths", data["lengths"])
            out.append(("train", metric, list(lengths), table))
    return out


def _key(c: CaseRecord) -> tuple:
    return (c.backend, c.dtype, c.mode, c.scope, c.batch, c.heads, c.head_dim, c.seq_len)


def compare(run: RunResult) -> list[Comparison]:
    """Every published figure of the run's reference dataset beside its measured counterpart."""
    name = run.run.reference
    if not name:
        return []
    data = published().get(name)
    if data is None:
        return []
    baseline = data["baseline"]
    methods: dict[str, str] = data["methods"]
    by_variant: dict[str, dict[tuple, CaseRecord]] = {}
    for c in run.cases:
        by_variant.setdefault(c.variant, {})[_key(c)] = c
    rows: list[Comparison] = []
    groups = sorted({k[:7] for k in by_variant.get(baseline, {})})  # everything but the length
    for group in groups:
        backend, dtype, mode = group[:3]
        for table_mode, metric, lengths, table in _tables(data):
            if table_mode != mode:
                continue
            for method, values in table.items():
                variant = methods.get(method)
                if variant is None:
                    continue
                for n, value in zip(lengths, values, strict=True):
                    base = by_variant.get(baseline, {}).get((*group, n))
                    ours = by_variant.get(variant, {}).get((*group, n))
                    if base is None and ours is None:
                        continue  # a length this run did not sweep
                    measured, why = _ratio(metric, base, ours)
                    if measured is None:
                        verdict = "not measured"
                    else:
                        same = _claim(metric, measured) == _claim(metric, value)
                        verdict = "holds" if same else "flips"
                    where = (name, backend, dtype, mode, metric, method, variant, n)
                    rows.append(Comparison(*where, value, measured, verdict, why))
    return rows


def _ratio(metric: str, base: CaseRecord | None, ours: CaseRecord | None) -> tuple[float | None, str | None]:
    if base is None or ours is None:
        return None, "length not in this run"
    for who, c in (("dense", base), ("method", ours)):
        if c.status != "ok":
            return None, f"{who} case {c.status}: {c.reason}"
    if metric == "speed":
        return base.median_s / ours.median_s, None  # type: ignore[operator]
    if not base.peak_memory_bytes or ours.peak_memory_bytes is None:
        return None, "peak memory not measured"
    return ours.peak_memory_bytes / base.peak_memory_bytes, None


def markdown(rows: list[Comparison]) -> str:
    """A GitHub table: published beside measured, and whether the conclusion holds."""
    if not rows:
        return ""
    info = published()[rows[0].reference]
    lines = [
        f"Published: {info['source']} — {info['hardware']}. Speed = dense time / method time "
        "(above 1: faster than dense); memory = method peak / dense peak (below 1: less).",
        "",
        "| backend | dtype | mode | metric | method (ours) | n | published | measured here | conclusion |",
        "|---|---|---|---|---|---:|---:|---:|---|",
    ]
    for r in rows:
        measured = f"{r.measured:.2f}" if r.measured is not None else "–"
        verdict = {
            "holds": f"holds ({r.published_claim})",
            "flips": f"**flips**: {r.measured_claim} here, {r.published_claim} published",
            "not measured": f"not measured ({r.why})",
        }[r.verdict]
        lines.append(
            f"| {r.backend} | {r.dtype} | {r.mode} | {r.metric} | {r.method} ({r.variant}) | {r.seq_len} "
            f"| {r.published:.2f} | {measured} | {verdict} |"
        )
    return "\n".join(lines) + "\n"
