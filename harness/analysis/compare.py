"""Comparing two runs case by case: effect size *and* significance, then a verdict.

Per case present in both runs (matched by case_id):

- time: the ratio of medians (current / baseline) with a percentile-bootstrap 95% CI,
  and a two-sided Mann–Whitney U test on the samples. A change counts only when it beats
  the threshold (default 5%) *and* the test is significant (default p < 0.01); a change
  beyond the threshold that the test cannot confirm is `unstable`, and so is a small
  change whose CI cannot rule out one beyond the threshold.
  Basis: by default the raw samples, with guards that only ever turn a regression or
  improvement into `unstable`, with the reason: the fastest sample must have moved beyond
  the threshold in the same direction as the median, since interference only ever adds
  time (Chen & Revels, "Robust benchmarking in noisy environments", 2016; it needs
  samples from more than one stretch of the host's speed, which RunSettings.passes
  gives), and a case timed, in either run, only while the host was slow (reference-kernel
  readings never within HOST_SLOW of the fastest over both runs) is not judged.
  On request (time_basis="host-relative"), for cases whose samples both runs paired with
  a short reading of the host's reference kernel (attnbench.engine.machine_check), the statistics
  run on sample / paired reading instead, and those two guards are dropped. It is not the
  default because it is only as good as the reference is like the workload: on the 2-core
  VM this was built on it cancelled the host's 30-40% speed changes for a compute-bound
  workload of small matrix products, but on the real attention variants of the nightly
  suite it moved unchanged code by up to +100% between runs where raw medians moved a few
  percent (a neighbour that slows the reference's arithmetic need not slow memory-bound
  attention alike). The host-relative ratio is reported either way (host_relative_ratio).
  On both bases a change measured while other processes used much of the CPU is not
  judged; where both runs timed the case in MIN_PASSES or more passes, the change must
  also hold across them (Welch's t-test on the per-pass log medians, p < alpha): each pass
  is a fresh process, and processes of unchanged code differ by about 3% on that VM
  however many samples each takes, so the samples alone overstate the evidence (the
  process, not the sample, is the unit that is replicated). Given earlier runs of the
  same suite (the history), the judged figure (the host-relative ratio, or the fastest
  sample's) must exceed the case's run-to-run noise floor, the change runs of unchanged
  code show at the same significance level (attnbench.analysis.noise); otherwise it is `unstable`.
  Two runs that are the sides of one `bench ab` (attnbench.engine.turns: they took turns) are
  judged as a pair (_pass_test). Sides that timed in block turns: block k of one side
  was timed right after block k of the other (~20 ms apart, inside one of the host's
  speed states), so each pass's change is the Hodges–Lehmann estimate of its block log
  ratios, and the change across passes is tested with a t-test (the process is the
  replicated unit); the figure judged is exp of their mean (paired_ratio), and whether a
  change beyond the threshold can be ruled out is read from its t interval (paired_ci_*),
  not from the pooled samples' CI, which mixes the host's states. Sides that
  took whole passes in turn: each pass's log ratio, the Hodges–Lehmann estimate of their
  centre and the Wilcoxon signed-rank test (8 or more pass pairs to reach p < 0.01).
  The fastest-sample and host-slow guards and the history's noise floor do not
  apply to a pair (runs made at other times say nothing about a pair timed together);
  the busy guard does.
  The spread of the host's reference kernel over both runs is reported with each change
  (machine_drift).
- memory: deterministic (one metered call), so a threshold alone, with a floor in bytes
  below which page-granular jitter is not a change.
- energy: joules per call from a counter, a single figure, so a threshold alone.

Cases only in the current run are `new`, only in the baseline `missing`; a case whose
workload source or parameters changed (`workload_hash`) is `changed` and not compared;
one that ran in the baseline but failed now (error, timeout, oom) is `failed`.

Mann–Whitney U is implemented here (exact null distribution for small samples without
ties, normal approximation with tie and continuity corrections otherwise) rather than
taken from scipy, so the core install does not pull in scipy for one test; the tests
check it against scipy.
"""

from __future__ import annotations

import functools
import hashlib
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnbench.analysis.noise import MIN_RUNS, NoiseEstimate
from attnbench.analysis.noise import estimate as estimate_noise
from attnbench.core import machine_check
from attnbench.core.errors import UserError
from attnbench.core.thresholds import (  # noqa: F401 - the compare API
    CONFIG_KEYS,
    CompareConfig,
    Thresholds,
    load_compare_config,
    parse_compare_config,
    read_toml,
)

if TYPE_CHECKING:
    import numpy as np

    from attnbench.core.results import CaseRecord, RunInfo, RunResult

COMPARE_SCHEMA = "attnbench.compare/1"
VERDICTS = ("regression", "failed", "unstable", "improvement", "no change", "changed", "new", "missing")
FAILING = ("regression", "failed")  # what --fail-on-regression fails on
FAILED_STATUSES = ("error", "timeout", "oom")
N_BOOTSTRAP = 2000
EXACT_MAX_N = 50  # exact U distribution up to this many samples in all (and no ties)

# Packages whose version changes what is timed; a different version is a different environment.
COMPARED_PACKAGES = ("torch", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "torch_xla")
# Hardware identity of a host. The hostname is deliberately not part of it: CI runners are
# ephemeral machines of one class with a new name every run.
HOST_KEYS = ("cpu", "arch", "physical_cores", "logical_cores", "affinity_cores", "python")


# ----------------------------------------------------------------------------- statistics


def _ranks(values: Sequence[float]) -> tuple[list[float], list[int]]:
    """Ranks (1-based, ties averaged) and the sizes of tied groups."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    ties: list[int] = []
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        if j > i:
            ties.append(j - i + 1)
        i = j + 1
    return ranks, ties


@functools.lru_cache(maxsize=256)
def _u_counts(n1: int, n2: int) -> tuple[int, ...]:
    """Number of arrangements giving each U = 0..n1*n2 under the null (no ties)."""
    # f[m][u] for the current n2 column, built up by the standard recursion
    # f(n1, n2, u) = f(n1 - 1, n2, u - n2) + f(n1, n2 - 1, u).
    prev = [[1] for _ in range(n1 + 1)]  # n2 = 0: only U = 0
    for b in range(1, n2 + 1):
        cur = [[1]]  # n1 = 0: only U = 0
        for a in range(1, n1 + 1):
            size = a * b + 1
            row = [0] * size
            for u, c in enumerate(prev[a]):  # f(a, b-1, u)
                row[u] += c
            for u, c in enumerate(cur[a - 1]):  # f(a-1, b, u - b)
                row[u + b] += c
            cur.append(row)
        prev = cur
    return tuple(prev[n1])


def mann_whitney_u(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Two-sided Mann–Whitney U test: (U of x, p-value).

    Exact when there are no ties and at most EXACT_MAX_N samples in all; otherwise the
    normal approximation with tie correction and continuity correction (as scipy's
    method="asymptotic", use_continuity=True).
    """
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        raise ValueError("Mann–Whitney U needs samples on both sides")
    ranks, ties = _ranks([*x, *y])
    u1 = sum(ranks[:n1]) - n1 * (n1 + 1) / 2
    if not ties and n1 + n2 <= EXACT_MAX_N:
        counts = _u_counts(n1, n2)
        total = sum(counts)
        k = round(min(u1, n1 * n2 - u1))  # the distribution is symmetric
        p = 2 * sum(counts[: k + 1]) / total
        return u1, min(1.0, p)
    n = n1 + n2
    mu = n1 * n2 / 2
    tie_term = sum(t**3 - t for t in ties)
    var = n1 * n2 / 12 * ((n + 1) - tie_term / (n * (n - 1)))
    if var <= 0:  # every value equal: no evidence of any difference
        return u1, 1.0
    z = (abs(u1 - mu) - 0.5) / math.sqrt(var)
    return u1, min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2)))


@functools.lru_cache(maxsize=64)
def _signed_rank_counts(n: int) -> tuple[int, ...]:
    """Number of sign assignments giving each W+ = 0..n(n+1)/2 under the null (no ties, no zeros)."""
    counts = [1]
    for rank in range(1, n + 1):
        nxt = counts + [0] * rank
        for w, c in enumerate(counts):
            nxt[w + rank] += c
        counts = nxt
    return tuple(counts)


def wilcoxon_signed_rank(d: Sequence[float]) -> tuple[float, float]:
    """Two-sided Wilcoxon signed-rank test of the differences d against 0: (W+, p-value).

    Zeros are dropped (Wilcox); exact null distribution up to EXACT_MAX_N differences
    without ties, normal approximation with tie and continuity corrections otherwise."""
    nonzero = [x for x in d if x != 0]
    n = len(nonzero)
    if n == 0:
        return 0.0, 1.0
    ranks, ties = _ranks([abs(x) for x in nonzero])
    w_plus = sum(r for r, x in zip(ranks, nonzero, strict=True) if x > 0)
    total = n * (n + 1) / 2
    if n <= EXACT_MAX_N and not ties:
        counts = _signed_rank_counts(n)
        w = round(min(w_plus, total - w_plus))
        p = 2 * sum(counts[: w + 1]) / 2**n
        return w_plus, min(1.0, p)
    mu = total / 2
    var = n * (n + 1) * (2 * n + 1) / 24 - sum(t**3 - t for t in ties) / 48
    if var <= 0:
        return w_plus, 1.0
    z = (abs(w_plus - mu) - 0.5) / math.sqrt(var)
    return w_plus, min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2)))


def hodges_lehmann(d: Sequence[float]) -> float:
    """The one-sample Hodges–Lehmann estimate: the median of the Walsh averages (d_i + d_j) / 2, i ≤ j."""
    return statistics.median((d[i] + d[j]) / 2 for i in range(len(d)) for j in range(i, len(d)))


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1 + num * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1 - front * _betacf(b, a, 1 - x) / b


def welch_t_test(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float]:
    """Two-sided Welch t-test of mean(y) against mean(x): (t, degrees of freedom, p)."""
    if len(x) < 2 or len(y) < 2:
        raise ValueError("Welch's t-test needs two values on each side")
    vx, vy = statistics.variance(x) / len(x), statistics.variance(y) / len(y)
    diff = statistics.fmean(y) - statistics.fmean(x)
    if vx + vy == 0:
        return (0.0 if diff == 0 else math.copysign(math.inf, diff)), math.inf, 1.0 if diff == 0 else 0.0
    t = diff / math.sqrt(vx + vy)
    df = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
    return t, df, betainc(df / 2, 0.5, df / (df + t * t))


def one_sample_t_test(d: Sequence[float]) -> tuple[float, float, float]:
    """Two-sided t-test of mean(d) against 0: (t, degrees of freedom, p)."""
    if len(d) < 2:
        raise ValueError("a t-test needs two values")
    mean, se = statistics.fmean(d), statistics.stdev(d) / math.sqrt(len(d))
    df = len(d) - 1
    if se == 0:
        return (0.0 if mean == 0 else math.copysign(math.inf, mean)), df, 1.0 if mean == 0 else 0.0
    t = mean / se
    return t, df, betainc(df / 2, 0.5, df / (df + t * t))


def t_quantile(two_sided_p: float, df: float) -> float:
    """The t with P(|T| > t) = two_sided_p for df degrees of freedom (bisection on betainc)."""
    lo, hi = 0.0, 1.0
    while betainc(df / 2, 0.5, df / (df + hi * hi)) > two_sided_p:
        lo, hi = hi, hi * 2
    for _ in range(100):
        mid = (lo + hi) / 2
        if betainc(df / 2, 0.5, df / (df + mid * mid)) > two_sided_p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def hodges_lehmann_ci(d: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """The distribution-free CI of the Hodges–Lehmann estimate: the Walsh averages ranked k
    and N - k + 1, k from the signed-rank statistic's normal approximation."""
    n = len(d)
    walsh = sorted((d[i] + d[j]) / 2 for i in range(n) for j in range(i, n))
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    k = max(1, math.floor(n * (n + 1) / 4 - z * math.sqrt(n * (n + 1) * (2 * n + 1) / 24)))
    return walsh[min(k, len(walsh)) - 1], walsh[max(len(walsh) - k, 0)]


def _seed(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def bootstrap_median_ratios(base: Sequence[float], cur: Sequence[float], n_boot: int, seed: int) -> np.ndarray:
    """n_boot bootstrap replicates of median(cur) / median(base), each side resampled alone."""
    import numpy as np

    rng = np.random.default_rng(seed)
    b = np.asarray(base, dtype=float)
    c = np.asarray(cur, dtype=float)
    mb = np.median(b[rng.integers(0, b.size, (n_boot, b.size))], axis=1)
    mc = np.median(c[rng.integers(0, c.size, (n_boot, c.size))], axis=1)
    return mc / mb


def percentile_ci(replicates: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    import numpy as np

    tail = (1 - confidence) / 2
    lo, hi = np.quantile(replicates, [tail, 1 - tail])
    return float(lo), float(hi)


# ----------------------------------------------------------------------------- thresholds


def suite_compare_config(run: RunInfo) -> CompareConfig:
    """The [compare] table of the suite a run was made with, when its file can be found:
    a built-in suite by name, or the --suite file named in the run's argv if it still exists."""
    from importlib import resources

    argv = list(run.argv)
    path: Path | None = None
    if "--suite" in argv[:-1]:
        given = argv[argv.index("--suite") + 1]
        if given.endswith(".toml") or "/" in given:
            path = Path(given)
    if path is not None:
        return load_compare_config(path) if path.is_file() else CompareConfig()
    builtin = resources.files("attnbench.engine.suite_files").joinpath(f"{run.suite}.toml")
    if builtin.is_file():
        data = read_toml(Path(str(builtin)))
        return parse_compare_config(data.get("compare", {}), f"built-in suite {run.suite}")
    return CompareConfig()


# ----------------------------------------------------------------------------- environments


def _devices(run: RunInfo) -> dict[str, str]:
    return {str(d.get("backend") or d.get("kind") or "?"): str(d.get("name")) for d in run.devices}


def environment_differences(base: RunInfo, cur: RunInfo) -> tuple[list[str], list[str]]:
    """(refusals, notes): differences that make timings incomparable, and harmless ones."""
    refusals: list[str] = []
    notes: list[str] = []
    for key in HOST_KEYS:
        b, c = base.host.get(key), cur.host.get(key)
        if b is not None and c is not None and b != c:
            refusals.append(f"host {key}: {b} → {c}")
    bm, cm = base.host.get("memory_bytes"), cur.host.get("memory_bytes")
    if bm and cm and round(bm / 2**30) != round(cm / 2**30):
        refusals.append(f"host memory: {bm / 2**30:.0f} GiB → {cm / 2**30:.0f} GiB")
    for name in COMPARED_PACKAGES:
        b, c = base.packages.get(name), cur.packages.get(name)
        if b != c and (name in base.packages and name in cur.packages):
            refusals.append(f"package {name}: {b or 'absent'} → {c or 'absent'}")
    bd, cd = _devices(base), _devices(cur)
    for backend in sorted(set(bd) & set(cd)):
        if bd[backend] != cd[backend]:
            refusals.append(f"device for {backend}: {bd[backend]} → {cd[backend]}")
    if base.host.get("hostname") != cur.host.get("hostname"):
        notes.append(f"hostname {base.host.get('hostname')} → {cur.host.get('hostname')} (same hardware)")
    if base.host.get("os") != cur.host.get("os"):
        notes.append(f"os {base.host.get('os')} → {cur.host.get('os')}")
    return refusals, notes


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class MetricChange:
    """One metric of one case, baseline against current."""

    metric: str  # time | memory | energy
    baseline: float | None
    current: float | None
    ratio: float | None  # current / baseline
    ci_low: float | None = None  # bootstrap 95% CI of the ratio (time only)
    ci_high: float | None = None
    p_value: float | None = None  # Mann–Whitney (time only)
    # What time ratio, CI and p rest on: "raw" samples, or "host-relative" ones (each sample over
    # the host's reference kernel timed around it, attnbench.engine.machine_check) when asked for and both
    # runs have them.
    basis: str | None = None
    raw_ratio: float | None = None  # ratio of the raw medians (time only; equals ratio when raw)
    host_relative_ratio: float | None = None  # ratio of the host-relative medians, when both runs paired
    # The two sides of one bench ab: their paired change (_pass_test), what their verdict rests
    # on (with pass_p).
    paired_ratio: float | None = None
    paired_ci_low: float | None = None  # its 95% CI, where the sides timed in block turns
    paired_ci_high: float | None = None
    fastest_ratio: float | None = None  # ratio of the fastest raw samples (time only)
    # Whether the change holds across processes, not only across samples (time, MIN_PASSES+ passes
    # each): Welch's t-test on the two runs' per-pass log medians (each pass a fresh process), or,
    # for the two sides of one bench ab, the paired test of _pass_test (pass_test names it).
    pass_p: float | None = None
    pass_test: str | None = None  # "welch" | "paired" | "paired blocks" | "blocks"
    machine_drift: float | None = None  # spread of the host's reference-kernel times over both runs
    noise_floor: float | None = None  # smallest change beyond run-to-run noise (of ratio when host-relative,
    # of fastest_ratio when raw)
    noise_runs: int | None = None  # earlier runs holding this case that the floor rests on
    threshold: float | None = None
    verdict: str | None = None  # regression | improvement | no change | unstable; None: not measured
    note: str | None = None

    @property
    def change(self) -> float | None:
        return None if self.ratio is None else self.ratio - 1


@dataclass(frozen=True)
class CaseComparison:
    case_id: str
    variant: str
    label: str
    seq_len: int | None
    verdict: str
    reason: str | None
    time: MetricChange | None = None
    memory: MetricChange | None = None
    energy: MetricChange | None = None
    baseline_status: str | None = None
    current_status: str | None = None
    thresholds: Thresholds | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return d


@dataclass(frozen=True)
class Summary:
    """Geometric means of the per-case ratios over every case compared."""

    cases_compared: int
    time_geomean: float | None
    time_ci_low: float | None
    time_ci_high: float | None
    memory_geomean: float | None
    memory_cases: int  # cases in memory_geomean: those whose relative threshold decides (not the byte floor)
    counts: dict[str, int]


@dataclass(frozen=True)
class Comparison:
    baseline: dict[str, Any]  # run_id, suite, started_at, git, host summary, source
    current: dict[str, Any]
    environment_notes: list[str]
    environment_refusals: list[str]  # non-empty only when --allow-env-mismatch let it through
    config_source: str
    cases: list[CaseComparison]
    summary: Summary

    @property
    def failing(self) -> list[CaseComparison]:
        return [c for c in self.cases if c.verdict in FAILING]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": COMPARE_SCHEMA,
            "baseline": self.baseline,
            "current": self.current,
            "environment_notes": self.environment_notes,
            "environment_refusals": self.environment_refusals,
            "config_source": self.config_source,
            "summary": asdict(self.summary),
            "cases": [c.to_json() for c in self.cases],
        }


# ----------------------------------------------------------------------------- comparing


RELATIVE, RAW = "host-relative", "raw"
TIME_BASES = (RAW, RELATIVE)


def judged_basis(base: CaseRecord, cur: CaseRecord, wanted: str = RAW) -> str:
    """host-relative when asked for and both records pair their samples with the host's
    reference kernel; raw otherwise."""
    if wanted != RELATIVE:
        return RAW
    return RELATIVE if all(_relative(r) for r in (base, cur)) else RAW


def _relative(rec: CaseRecord) -> list[float] | None:
    return machine_check.relative_samples(rec.time_s, rec.extra.get("machine_check"))


MIN_PASSES = 3  # passes in each run for the pass-level test


def pass_log_medians(rec: CaseRecord, basis: str) -> list[float] | None:
    """The log median of each pass of a case (its samples on the given basis), or None when
    the record does not say how many samples each pass gave."""
    passes = rec.extra.get("passes")
    samples = _relative(rec) if basis == RELATIVE else list((rec.time_s or {}).get("samples") or [])
    if not isinstance(passes, list) or not samples:
        return None
    counts = [p.get("n") if isinstance(p, dict) else None for p in passes]
    if not all(isinstance(n, int) and n > 0 for n in counts):
        return None
    sizes = [int(n) for n in counts if n is not None]
    if sum(sizes) != len(samples):
        return None
    out, start = [], 0
    for n in sizes:
        out.append(math.log(statistics.median(samples[start : start + n])))
        start += n
    return out


def interleaved(baseline: RunInfo, current: RunInfo) -> bool:
    """Whether the two runs are the two sides of one bench ab (attnbench.engine.turns): their passes
    of each case were timed seconds apart, taking turns, and pair up."""
    b, c = baseline.extra.get("interleaved"), current.extra.get("interleaved")
    if not isinstance(b, dict) or not isinstance(c, dict):
        return False
    return b.get("group") is not None and b.get("group") == c.get("group") and b.get("side") != c.get("side")


def _block_sizes(blocks: Any) -> bool:
    """Whether a pass's record of samples per block turn is usable."""
    return isinstance(blocks, list) and bool(blocks) and all(isinstance(n, int) and n > 0 for n in blocks)


def pass_blocks(rec: CaseRecord) -> list[list[list[float]]] | None:
    """Each pass's raw samples cut into the blocks it timed on its turns in a bench ab
    (attnbench.engine.turns), or None when the record has no block turns."""
    samples = list((rec.time_s or {}).get("samples") or [])
    passes = rec.extra.get("passes")
    if isinstance(passes, list) and passes:
        sizes = [p.get("blocks") if isinstance(p, dict) else None for p in passes]
    else:
        sizes = [rec.extra.get("block_samples")]
    if not samples or not all(_block_sizes(b) for b in sizes):
        return None
    if sum(sum(b) for b in sizes) != len(samples):  # type: ignore[arg-type]
        return None
    out, start = [], 0
    for blocks in sizes:
        cut = []
        for n in blocks:  # type: ignore[union-attr]
            cut.append(samples[start : start + n])
            start += n
        out.append(cut)
    return out


def block_log_ratios(base: CaseRecord, cur: CaseRecord) -> list[list[float]] | None:
    """Per pass, log(median of the current's block k / median of the baseline's block k):
    the two blocks were timed one right after the other. None without block turns on both
    sides or with different numbers of passes; blocks past the shorter side's are unpaired."""
    bp, cp = pass_blocks(base), pass_blocks(cur)
    if bp is None or cp is None or len(bp) != len(cp):
        return None
    ratios = [
        [math.log(statistics.median(c) / statistics.median(b)) for b, c in zip(bb, cb, strict=False)]
        for bb, cb in zip(bp, cp, strict=True)
    ]
    return ratios if all(ratios) else None


@dataclass(frozen=True)
class PassTest:
    p: float | None = None
    test: str | None = None  # "paired blocks", "blocks", "paired" (bench ab) or "welch"
    paired_ratio: float | None = None
    pairs: int = 0  # what the test's units are: passes, or blocks for "blocks"
    ci: tuple[float, float] | None = None  # 95% CI of paired_ratio (block turns only)


def _pass_test(
    bp: list[float] | None, cp: list[float] | None, blocks: list[list[float]] | None, paired: bool
) -> PassTest:
    """The test of the change across the runs' processes, and for a bench ab pair its estimate.

    Two sides of one bench ab whose samples were timed in block turns (blocks: each pass's
    block log ratios): each pass's change is the Hodges–Lehmann estimate of its block
    ratios (paired within ~20 ms, so the host's speed states mostly cancel), and with
    MIN_PASSES or more passes the test is the one-sample t-test of those per-pass changes
    against 0: the process is the replicated unit, since processes of unchanged code
    differ by a few percent however many blocks each times; the change is exp of their
    mean. With fewer passes, the Wilcoxon signed-rank test on all the blocks, which cannot
    see process-to-process differences (the note says so). Sides timed in whole-phase
    turns (no blocks): each pass's log ratio d_k, the Hodges–Lehmann estimate of their
    centre, and the Wilcoxon signed-rank test (those ratios are heavy-tailed: a pass pair
    split by one of the host's speed switches is off by 30-90%). Otherwise Welch's t-test
    on the per-pass log medians, with MIN_PASSES or more passes each."""
    if paired and blocks is not None:
        per_pass = [hodges_lehmann(r) for r in blocks]
        if len(per_pass) >= MIN_PASSES:
            mean = statistics.fmean(per_pass)
            half = t_quantile(0.05, len(per_pass) - 1) * statistics.stdev(per_pass) / math.sqrt(len(per_pass))
            ci = (math.exp(mean - half), math.exp(mean + half))
            return PassTest(one_sample_t_test(per_pass)[2], "paired blocks", math.exp(mean), len(per_pass), ci)
        pooled = [x for r in blocks for x in r]
        low, high = hodges_lehmann_ci(pooled)
        change = math.exp(hodges_lehmann(pooled))
        return PassTest(wilcoxon_signed_rank(pooled)[1], "blocks", change, len(pooled), (math.exp(low), math.exp(high)))
    if bp is None or cp is None:
        return PassTest()
    if paired and len(bp) == len(cp) and len(bp) >= 2:
        d = [y - x for x, y in zip(bp, cp, strict=True)]
        return PassTest(wilcoxon_signed_rank(d)[1], "paired", math.exp(hodges_lehmann(d)), len(d))
    if min(len(bp), len(cp)) < MIN_PASSES:
        return PassTest()
    return PassTest(welch_t_test(bp, cp)[2], "welch")


def _time_change(
    base: CaseRecord, cur: CaseRecord, th: Thresholds, wanted: str = RAW, paired: bool = False
) -> tuple[MetricChange, Any]:
    """The time comparison and its bootstrap replicates (for the geometric-mean CI).

    On the host-relative basis the ratio, its CI and the test are those of the samples in
    units of the reference kernel; baseline and current stay the raw medians in seconds.
    paired: the runs took turns (bench ab), so block k (or pass k) of one is tested against that of the other."""
    bmed, cmed = base.median_s, cur.median_s
    assert bmed is not None and cmed is not None
    raw_ratio = cmed / bmed
    rel_b, rel_c = _relative(base), _relative(cur)
    host_relative = statistics.median(rel_c) / statistics.median(rel_b) if rel_b and rel_c else None
    basis = RELATIVE if wanted == RELATIVE and host_relative is not None else RAW
    if rel_b and rel_c and basis == RELATIVE:
        bs, cs, ratio = rel_b, rel_c, host_relative
    else:
        bs = list((base.time_s or {}).get("samples") or [])
        cs = list((cur.time_s or {}).get("samples") or [])
        ratio = raw_ratio
    blocks = block_log_ratios(base, cur) if paired else None
    tested = _pass_test(pass_log_medians(base, basis), pass_log_medians(cur, basis), blocks, paired)
    pass_p, pass_test, paired_ratio = tested.p, tested.test, tested.paired_ratio
    # A pair timed in turn is judged on its passes' own ratios: pooled samples mix the
    # host's speed states in proportions that differ between the sides by chance.
    judged = paired_ratio if paired_ratio is not None else ratio
    up, down = judged > 1 + th.time, judged < 1 / (1 + th.time)
    common = {
        "basis": basis,
        "raw_ratio": raw_ratio,
        "host_relative_ratio": host_relative,
        "paired_ratio": paired_ratio,
        "paired_ci_low": tested.ci[0] if tested.ci else None,
        "paired_ci_high": tested.ci[1] if tested.ci else None,
        "threshold": th.time,
    }
    if not bs or not cs:
        # Without raw samples (e.g. imported summaries) significance cannot be tested.
        verdict = "unstable" if up or down else "no change"
        note = "no raw samples: significance not tested"
        return MetricChange("time", bmed, cmed, ratio, **common, verdict=verdict, note=note), None
    reps = bootstrap_median_ratios(bs, cs, N_BOOTSTRAP, _seed(base.case_id))
    lo, hi = percentile_ci(reps)
    # Whether a change beyond the threshold can be ruled out: on a pair timed in block turns,
    # by the paired change's own CI (the pooled one mixes the host's states).
    reach_lo, reach_hi = tested.ci or (lo, hi)
    _, p = mann_whitney_u(bs, cs)
    raw_b = (base.time_s or {}).get("samples") or [bmed]
    raw_c = (cur.time_s or {}).get("samples") or [cmed]
    fastest = min(raw_c) / min(raw_b)
    significant = p < th.alpha
    note = None
    if paired_ratio is not None and pass_p is not None:
        significant = pass_p < th.alpha
        if (up or down) and not significant:
            note = _paired_note(tested, th.alpha)
        elif tested.test == "blocks":
            note = f"one process per side ({tested.pairs} block pairs): process-to-process differences not tested"
    if (up or down) and significant:
        verdict = "regression" if up else "improvement"
    elif up or down:
        verdict = "unstable"
        note = note or f"{ratio - 1:+.1%} but not significant (p={p:.2g}, n={len(bs)}/{len(cs)})"
    elif reach_hi > 1 + th.time or reach_lo < 1 / (1 + th.time):
        # Inside the threshold, but the data cannot rule out a change beyond it.
        verdict = "unstable" if not significant else "no change"
        if verdict == "unstable":
            which = "paired 95% CI" if tested.ci else "95% CI"
            note = f"{which} [{reach_lo:.3f}, {reach_hi:.3f}] reaches beyond ±{th.time:.0%}"
    else:
        verdict = "no change"
    change = MetricChange(
        "time",
        bmed,
        cmed,
        ratio,
        lo,
        hi,
        p,
        **common,
        fastest_ratio=fastest,
        pass_p=pass_p,
        pass_test=pass_test,
        verdict=verdict,
        note=note,
    )
    return change, reps


PAIRED_TESTS = {"paired blocks": "t-test p", "blocks": "Wilcoxon p, blocks", "paired": "Wilcoxon p"}


def _paired_note(tested: PassTest, alpha: float) -> str:
    """Why a bench ab pair's change beyond the threshold is not called."""
    change = f"paired {tested.paired_ratio - 1:+.1%}"  # type: ignore[operator]
    if tested.test == "paired blocks":
        return f"{change} over {tested.pairs} passes, not significant (t-test of the per-pass changes p={_p(tested.p)})"
    if tested.test == "blocks":
        return f"{change} over {tested.pairs} block pairs of one process each, not significant (p={_p(tested.p)})"
    note = f"{change} over {tested.pairs} pass pairs, not significant (Wilcoxon signed-rank p={_p(tested.p)})"
    floor = 2 / 2**tested.pairs  # the exact test's smallest two-sided p: every sign alike
    if floor >= alpha:
        note += f"; with so few passes p cannot go below {_p(floor)}: bench ab needs 8 or more"
    return note


HOST_SLOW = 0.15  # a case whose runs never saw the host this close to its fastest is not judged


def _slowest_reach(base: CaseRecord, cur: CaseRecord) -> float:
    """The slower of the two runs' best reference-kernel readings for this case (0: none)."""
    best = [min(v) for v in (machine_check.values(r.extra.get("machine_check")) for r in (base, cur)) if v]
    return max(best) if len(best) == 2 else 0.0


# Stands for "a history was asked for but holds too few runs": no change can be called.
_NO_HISTORY = NoiseEstimate(runs=0, case_sigma=None, suite_sigma=math.inf)


def _host_guard(
    time: MetricChange,
    base: CaseRecord,
    cur: CaseRecord,
    th: Thresholds,
    noise: NoiseEstimate | None,
    host_fast_s: float | None,
) -> MetricChange:
    """Turn a regression or improvement into `unstable` when the host, not the code, can
    explain it: a busy machine, passes that do not agree on the change, or a change within
    the run-to-run noise. On the raw basis
    also a median that moved while the fastest sample did not, and a case timed while the
    host never reached its fast speed (its reference kernel, host_fast_s being the fastest
    reading over both runs); the host-relative basis has taken the host's speed out of
    each sample already, and the two sides of one bench ab saw the same stretches of the
    host block by block or pass by pass (their verdict rests on those pairs), so for those
    only a busy machine counts."""
    drift = machine_check.drift(base.extra.get("machine_check"), cur.extra.get("machine_check"))
    floor = noise.floor(th.alpha) if noise is not None and noise is not _NO_HISTORY else None
    time = replace(time, machine_drift=drift, noise_floor=floor, noise_runs=noise.runs if noise is not None else None)
    if time.verdict not in ("regression", "improvement") or time.ratio is None:
        return time
    change = f"{time.ratio - 1:+.1%} (p={_p(time.p_value)})"
    relative = time.basis == RELATIVE
    fastest = time.fastest_ratio
    # The figure the noise floor applies to: what the verdict rests on.
    judged = time.ratio if relative else fastest
    busy = max(_busy(base), _busy(cur))
    if time.paired_ratio is not None:
        test = PAIRED_TESTS.get(time.pass_test or "", "p")
        change = f"paired {time.paired_ratio - 1:+.1%} ({test}={_p(time.pass_p)})"
    if busy > th.busy_share:
        note = f"{change} measured while other processes used up to {busy:.0%} of the CPU: not trusted"
    elif time.paired_ratio is not None:
        note = None
    elif time.pass_p is not None and time.pass_p >= th.alpha:
        note = (
            f"{change} over the samples, but not across the runs' passes (Welch p={_p(time.pass_p)} on the "
            "per-pass medians): each process sees its own speed, and these differ by as much"
        )
    elif noise is _NO_HISTORY:
        what = f"{change} host-relative" if relative else f"{change}, fastest sample {_pct(fastest)}"
        note = (
            f"{what}: no run-to-run noise estimate yet (fewer than {MIN_RUNS} runs of this suite in the history), "
            "and two runs alone cannot tell the code from the host; --noise-runs 0 judges on them anyway"
        )
    elif (
        not relative
        and fastest is not None
        and not (fastest > 1 + th.time if time.verdict == "regression" else fastest < 1 / (1 + th.time))
    ):
        host = f"; the host's reference kernel ran {drift:.0%} apart over the runs" if drift else ""
        note = (
            f"median {change} but the fastest sample {fastest - 1:+.1%}: the mix of fast and slow "
            f"stretches of the host moved, not the code{host}"
        )
    elif (
        not relative
        and host_fast_s is not None
        and (slowest := _slowest_reach(base, cur)) > host_fast_s * (1 + HOST_SLOW)
    ):
        note = (
            f"{change}: in one run the host's reference kernel never came within {HOST_SLOW:.0%} of its fastest "
            f"({slowest * 1e3:.2f} ms at best against {host_fast_s * 1e3:.2f} ms) while this case was timed, so "
            "its fastest sample is the host's, not the code's"
        )
    else:
        note = None
    if note is None and floor is not None and judged is not None and abs(math.log(judged)) <= math.log1p(floor):
        runs = f"{noise.runs} other runs" if noise is not None and noise.runs >= MIN_RUNS else "the suite's other runs"
        what = f"{change} host-relative" if relative else f"{change}, fastest sample {judged - 1:+.1%}"
        note = f"{what}: within this case's run-to-run noise (±{floor:.1%} from {runs}, at alpha {th.alpha:g})"
    if note is None:
        return time
    return replace(time, verdict="unstable", note=note)


def _memory_ratio_counts(case: CaseComparison) -> bool:
    """Whether a case's memory ratio enters the summary's geometric mean: only where its
    relative threshold, not the byte floor, decides. Below that, page jitter moves small
    peaks by tens of percent (an A/A of two cases of 0.2 and 2.8 MiB gave -8.7%)."""
    m, th = case.memory, case.thresholds or Thresholds()
    if m is None or m.ratio is None or m.baseline is None:
        return False
    return m.baseline * th.memory >= th.memory_floor_bytes


def _memory_change(base: CaseRecord, cur: CaseRecord, th: Thresholds) -> MetricChange:
    b, c = base.peak_memory_bytes, cur.peak_memory_bytes
    if b is None or c is None:
        return MetricChange("memory", b, c, None, threshold=th.memory, note="not measured in both runs")
    delta = c - b
    allowed = max(th.memory * b, th.memory_floor_bytes)
    ratio = c / b if b > 0 else None
    if delta > allowed:
        verdict = "regression"
    elif -delta > allowed:
        verdict = "improvement"
    else:
        verdict = "no change"
    return MetricChange("memory", b, c, ratio, threshold=th.memory, verdict=verdict)


def _energy_change(base: CaseRecord, cur: CaseRecord, th: Thresholds) -> MetricChange | None:
    b, c = base.energy_j, cur.energy_j
    if b is None and c is None:
        return None
    if b is None or c is None or b <= 0:
        return MetricChange("energy", b, c, None, threshold=th.energy, note="not measured in both runs")
    ratio = c / b
    verdict = "regression" if ratio > 1 + th.energy else "improvement" if ratio < 1 / (1 + th.energy) else "no change"
    return MetricChange("energy", b, c, ratio, threshold=th.energy, verdict=verdict)


def _busy(rec: CaseRecord) -> float:
    share = (rec.extra.get("worker") or {}).get("other_cpu_share")
    return float(share) if isinstance(share, (int, float)) else 0.0


def case_label(rec: CaseRecord) -> str:
    scope = rec.extra.get("scope", "core")
    return f"{rec.variant} {rec.backend}/{rec.dtype}/{rec.mode}/{scope} n={rec.seq_len}"


def compare_case(
    base: CaseRecord | None,
    cur: CaseRecord | None,
    config: CompareConfig,
    noise: NoiseEstimate | None = None,
    host_fast_s: float | None = None,
    time_basis: str = RAW,
    paired: bool = False,
) -> tuple[CaseComparison, Any]:
    rec = cur or base
    assert rec is not None
    common = {
        "case_id": rec.case_id,
        "variant": rec.variant,
        "label": case_label(rec),
        "seq_len": rec.seq_len,
        "baseline_status": base.status if base else None,
        "current_status": cur.status if cur else None,
    }
    th = config.for_case(rec.case_id, rec.variant)
    if base is None:
        return CaseComparison(**common, verdict="new", reason="not in the baseline run"), None
    if cur is None:
        return CaseComparison(**common, verdict="missing", reason="not in the current run"), None
    if base.status == "ok" and cur.status in FAILED_STATUSES:
        return CaseComparison(**common, verdict="failed", reason=f"now {cur.status}: {cur.reason}"), None
    if base.status != "ok" or cur.status != "ok":
        if base.status != "ok" and cur.status == "ok":
            reason = f"the baseline has no measurement ({base.status})"
            return CaseComparison(**common, verdict="new", reason=reason), None
        return CaseComparison(
            **common, verdict="missing", reason=f"not measured: {base.status} → {cur.status}: {cur.reason}"
        ), None
    bh, ch = base.extra.get("workload_hash"), cur.extra.get("workload_hash")
    if bh and ch and bh != ch:
        return CaseComparison(
            **common, verdict="changed", reason="workload source or parameters changed (workload_hash differs)"
        ), None
    time, reps = _time_change(base, cur, th, time_basis, paired)
    time = _host_guard(time, base, cur, th, noise, host_fast_s)
    memory = _memory_change(base, cur, th)
    energy = _energy_change(base, cur, th)
    verdicts = [m.verdict for m in (time, memory, energy) if m is not None and m.verdict]
    if "regression" in verdicts:
        verdict = "regression"
    elif time.verdict == "unstable":
        verdict = "unstable"
    elif "improvement" in verdicts:
        verdict = "improvement"
    else:
        verdict = "no change"
    reasons = [f"{m.metric} {m.verdict}" for m in (time, memory, energy) if m and m.verdict in ("regression",)]
    if time.note:
        reasons.append(time.note)
    if not bh or not ch:
        reasons.append("workload_hash not recorded in both runs: code changes cannot be detected")
    return (
        CaseComparison(
            **common,
            verdict=verdict,
            reason="; ".join(reasons) or None,
            time=time,
            memory=memory,
            energy=energy,
            thresholds=th,
        ),
        reps,
    )


def _run_summary(result: RunResult, ref: str) -> dict[str, Any]:
    info = result.run
    return {
        "ref": ref,
        "run_id": info.run_id,
        "suite": info.suite,
        "started_at": info.started_at,
        "status": info.status,
        "git": info.git,
        "hostname": info.host.get("hostname"),
        "cpu": info.host.get("cpu"),
        "source": str(result.folder),
    }


def _geomean(values: Iterable[float]) -> float | None:
    vals = [v for v in values if v is not None and v > 0]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else None


def compare_runs(
    baseline: RunResult,
    current: RunResult,
    config: CompareConfig | None = None,
    allow_env_mismatch: bool = False,
    refs: tuple[str, str] = ("baseline", "current"),
    noise_runs: Sequence[RunResult] | None = None,
    time_basis: str = RAW,
) -> Comparison:
    """Compare every case of two runs. Refuses (UserError) runs from different environments
    unless allow_env_mismatch. noise_runs: other runs of unchanged code on this kind of host
    (from the history) for each case's run-to-run noise floor; None: no floor. time_basis:
    "raw" or "host-relative" (see the module's docstring)."""
    if time_basis not in TIME_BASES:
        raise UserError(f"time basis must be one of {', '.join(TIME_BASES)}, got {time_basis!r}")
    import numpy as np

    refusals, notes = environment_differences(baseline.run, current.run)
    if refusals and not allow_env_mismatch:
        raise UserError(
            f"runs {baseline.run.run_id} and {current.run.run_id} come from different environments ("
            + "; ".join(refusals)
            + "), so their timings are not comparable; compare runs from the same machine and library "
            "versions, or pass --allow-env-mismatch to compare anyway"
        )
    config = config or suite_compare_config(current.run)
    for result in (baseline, current):
        if result.run.status == "running":
            notes.append(
                f"run {result.run.run_id} has status 'running': it is still being measured (or its driver died), so "
                "cases not yet written are missing; compare it once `bench run` has finished (or --resume it)"
            )
        elif result.run.status != "complete":
            notes.append(f"run {result.run.run_id} is {result.run.status}: cases it did not finish are missing")
    noise: dict[str, NoiseEstimate] = {}
    paired = interleaved(baseline.run, current.run)
    if paired:
        notes.append(
            "the two runs took turns (bench ab): each case is judged on the pair alone, block by block (or pass by "
            "pass where a side timed whole passes in turn); "
            "runs made at other times (the history's noise floor) say nothing about a pair timed together"
        )
    elif noise_runs is not None:
        others = [r for r in noise_runs if r.run.run_id != current.run.run_id]
        others = [r for r in others if not environment_differences(r.run, current.run)[0]]
        if all(r.run.run_id != baseline.run.run_id for r in others):
            others.append(baseline)
        bases = {
            c.case_id: judged_basis(b, c, time_basis)
            for c in current.cases
            if (b := next((r for r in baseline.cases if r.case_id == c.case_id), None)) is not None
        }
        noise, used = estimate_noise(others, current, bases)
        if noise:
            notes.append(f"run-to-run noise floor from {used} other run(s) of this suite on this kind of host")
        else:
            noise = {c.case_id: _NO_HISTORY for c in current.cases}
            notes.append(
                f"no run-to-run noise floor: {used} run(s) of this suite on this kind of host, {MIN_RUNS} needed; "
                "time changes are reported but not called (unstable) until then (--noise-runs 0: judge the two "
                "runs alone)"
            )
    base_cases = {c.case_id: c for c in baseline.cases}
    cur_cases = {c.case_id: c for c in current.cases}
    # The host's fastest reference-kernel reading over both runs, per thread count (it runs on the case's threads).
    host_fast: dict[Any, float] = {}
    for rec in [*baseline.cases, *current.cases]:
        check = rec.extra.get("machine_check")
        for value in machine_check.values(check):
            key = check.get("threads")
            host_fast[key] = min(value, host_fast.get(key, value))
    results: list[CaseComparison] = []
    replicates: list[Any] = []
    for case_id in [*cur_cases, *(k for k in base_cases if k not in cur_cases)]:
        b, c = base_cases.get(case_id), cur_cases.get(case_id)
        threads = ((c or b).extra.get("machine_check") or {}).get("threads")  # type: ignore[union-attr]
        comparison, reps = compare_case(b, c, config, noise.get(case_id), host_fast.get(threads), time_basis, paired)
        results.append(comparison)
        if reps is not None:
            replicates.append(reps)
    timed = [c.time for c in results if c.time is not None and c.time.ratio is not None]
    relative = sum(1 for m in timed if m.basis == RELATIVE)
    if relative:
        notes.append(
            f"time judged host-relative for {relative} of {len(timed)} cases: each sample over the host's reference "
            "kernel timed around it, so the host's changes of speed cancel (base/cur ms stay raw medians)"
        )
    geo = _geomean(m.ratio for m in timed)  # type: ignore[misc]
    lo = hi = None
    if replicates:
        # The geometric mean of each bootstrap replicate across cases: a CI for the summary.
        logs = np.log(np.vstack(replicates))
        lo, hi = percentile_ci(np.exp(logs.mean(axis=0)))
    mem = [c.memory.ratio for c in results if _memory_ratio_counts(c)]
    counts = {v: sum(1 for c in results if c.verdict == v) for v in VERDICTS}
    summary = Summary(len(timed), geo, lo, hi, _geomean(mem), len(mem), counts)
    order = {v: i for i, v in enumerate(VERDICTS)}
    results.sort(key=lambda c: (order[c.verdict], c.variant, c.seq_len or 0, c.case_id))
    return Comparison(
        baseline=_run_summary(baseline, refs[0]),
        current=_run_summary(current, refs[1]),
        environment_notes=notes,
        environment_refusals=refusals,
        config_source=config.source,
        cases=results,
        summary=summary,
    )


# ----------------------------------------------------------------------------- rendering


def _pct(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio - 1:+.1%}"


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}"


def _p(p: float | None) -> str:
    return "-" if p is None else (f"{p:.1e}" if p < 1e-3 else f"{p:.3f}")


def _host_rel(m: MetricChange | None) -> str:
    """The change of the host-relative medians, where both runs paired their samples."""
    return "-" if m is None or m.host_relative_ratio is None else _pct(m.host_relative_ratio)


def _ci(m: MetricChange | None) -> str:
    if m is None or m.ci_low is None or m.ci_high is None:
        return "-"
    return f"[{m.ci_low - 1:+.1%}, {m.ci_high - 1:+.1%}]"


def _mem_cell(m: MetricChange | None) -> str:
    if m is None or m.verdict is None:
        return "-"
    delta = (m.current or 0) - (m.baseline or 0)
    return f"{_mib(m.current)} ({delta / 2**20:+.1f})"


def headline(cmp: Comparison) -> str:
    s = cmp.summary
    counts = ", ".join(f"{n} {v}" for v, n in s.counts.items() if n)
    geo = ""
    if s.time_geomean is not None:
        ci = ""
        if s.time_ci_low is not None and s.time_ci_high is not None:
            ci = f" (95% CI {s.time_ci_low - 1:+.1%} … {s.time_ci_high - 1:+.1%})"
        geo = f"; time geometric mean {s.time_geomean - 1:+.1%}{ci} over {s.cases_compared} cases"
    if s.memory_geomean is not None:
        geo += f"; memory geometric mean {s.memory_geomean - 1:+.1%} over {s.memory_cases} cases"
    return f"{len(cmp.cases)} cases: {counts or 'none'}{geo}"


VERDICT_STYLE = {
    "regression": "bold red",
    "failed": "bold red",
    "unstable": "yellow",
    "improvement": "green",
    "no change": "dim",
    "changed": "cyan",
    "new": "cyan",
    "missing": "magenta",
}


def _paired_cell(m: MetricChange | None) -> str:
    if m is None or m.paired_ratio is None:
        return "-"
    return f"{_pct(m.paired_ratio)} (p={_p(m.pass_p)})"


def is_paired(cmp: Comparison) -> bool:
    """Whether the runs are the two sides of one bench ab (judged on the passes' ratios)."""
    return any(c.time is not None and c.time.paired_ratio is not None for c in cmp.cases)


def time_basis_used(cmp: Comparison) -> bool:
    """Whether any case's time was judged host-relative."""
    return any(c.time is not None and c.time.basis == RELATIVE for c in cmp.cases)


def render_table(cmp: Comparison, console: Any) -> None:
    """The comparison as a rich table on the terminal."""
    from rich.table import Table

    b, c = cmp.baseline, cmp.current
    console.print(
        f"baseline [bold]{b['run_id']}[/] ({b['ref']}, {b['started_at']})  →  current [bold]{c['run_id']}[/] "
        f"({c['ref']}, {c['started_at']})",
        highlight=False,
        soft_wrap=True,
    )
    for line in cmp.environment_refusals:
        console.print(f"[bold yellow]environment differs[/] (allowed by --allow-env-mismatch): {line}", highlight=False)
    for line in cmp.environment_notes:
        console.print(f"[dim]note: {line}[/]", highlight=False)
    table = Table(title_justify="left")
    table.add_column("case", min_width=24, ratio=3, overflow="fold")
    paired = is_paired(cmp)
    for col, just in (
        ("base ms", "right"),
        ("cur ms", "right"),
        ("change", "right"),
        ("paired (p)" if paired else "host-rel", "right"),
        ("95% CI", "right"),
        ("p", "right"),
        ("memory MiB (Δ)", "right"),
        ("verdict", "left"),
    ):
        table.add_column(col, justify=just, no_wrap=col == "verdict")  # type: ignore[arg-type]
    table.add_column("why", ratio=2, overflow="fold")
    for case in cmp.cases:
        t = case.time
        style = VERDICT_STYLE[case.verdict]
        table.add_row(
            case.label,
            _ms(t.baseline if t else None),
            _ms(t.current if t else None),
            _pct(t.ratio if t else None),
            _paired_cell(t) if paired else _host_rel(t),
            _ci(t),
            _p(t.p_value if t else None),
            _mem_cell(case.memory),
            f"[{style}]{case.verdict}[/]",
            case.reason or "",
        )
    console.print(table)
    console.print(headline(cmp), highlight=False, soft_wrap=True)


def render_markdown(cmp: Comparison) -> str:
    b, c = cmp.baseline, cmp.current
    n_fail = len(cmp.failing)
    status = f":x: **{n_fail} regression(s)**" if n_fail else ":white_check_mark: **no regression**"
    lines = [
        "## attnbench comparison",
        "",
        f"{status} — {headline(cmp)}",
        "",
        f"- baseline: `{b['run_id']}` ({b['ref']}; {b['started_at']}; commit `{(b['git'] or {}).get('commit')}`)",
        f"- current: `{c['run_id']}` ({c['ref']}; {c['started_at']}; commit `{(c['git'] or {}).get('commit')}`)",
    ]
    paired = is_paired(cmp)
    if paired:
        lines += [
            f"- thresholds: {cmp.config_source}; the runs took turns (bench ab), so a change counts when the paired "
            "estimate is beyond the threshold *and* its test's p is below alpha (sides timed in block turns: the "
            "mean over passes of each pass's Hodges–Lehmann change over its block pairs, t-test across passes; "
            "in whole-pass turns: Hodges–Lehmann and Wilcoxon signed-rank over the pass pairs); change, CI and "
            "p (Mann–Whitney) are those of the pooled samples, for reading",
        ]
    else:
        lines += [
            f"- thresholds: {cmp.config_source}; a change counts when beyond the threshold *and* Mann–Whitney "
            "p below alpha",
            f"- change, CI and p on {'host-relative' if time_basis_used(cmp) else 'raw'} samples; host-rel: the "
            "change of each sample over the host's reference kernel timed around it (for reading; see the README)",
        ]
    lines += [f"- environment differs (allowed): {r}" for r in cmp.environment_refusals]
    lines += [f"- note: {n}" for n in cmp.environment_notes]
    lines += [
        "",
        f"| case | base ms | cur ms | change | {'paired (p)' if paired else 'host-rel'} | 95% CI | p | "
        "memory MiB (Δ) | verdict | why |",
        "|---|--:|--:|--:|--:|--:|--:|--:|---|---|",
    ]
    for case in cmp.cases:
        t = case.time
        verdict = f"**{case.verdict}**" if case.verdict in FAILING else case.verdict
        why = (case.reason or "").replace("|", "\\|")
        lines.append(
            f"| `{case.label}` | {_ms(t.baseline if t else None)} | {_ms(t.current if t else None)} | "
            f"{_pct(t.ratio if t else None)} | {_paired_cell(t) if paired else _host_rel(t)} | {_ci(t)} | "
            f"{_p(t.p_value if t else None)} | "
            f"{_mem_cell(case.memory)} | {verdict} | {why} |"
        )
    return "\n".join(lines) + "\n"
