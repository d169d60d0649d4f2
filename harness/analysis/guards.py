"""What makes two runs, or two records of a case, not comparable, and what can turn a time
verdict into `unstable` because the host, not the code, explains it.

Runs: a different machine (HOST_KEYS, memory, devices) or a different version of a
package that changes what is timed (COMPARED_PACKAGES) is refused; a new hostname or OS
build is a note. A case whose workload source or parameters changed (`workload_hash`) is
`changed` and not compared.

Host (host_guard), on the raw basis, the default, only ever turning a regression or
improvement into `unstable`, with the reason: the fastest sample must have moved beyond
the threshold in the same direction as the median, since interference only ever adds
time (Chen & Revels, "Robust benchmarking in noisy environments", 2016; it needs samples
from more than one stretch of the host's speed, which RunSettings.passes gives), and a
case timed, in either run, only while the host was slow (reference-kernel readings never
within HOST_SLOW of the fastest over both runs) is not judged. On the host-relative basis
each sample is already over the host's reference kernel timed around it, so those two
guards are dropped. It is not the default because it is only as good as the reference is
like the workload: on the 2-core VM this was built on it cancelled the host's 30-40% speed
changes for a compute-bound workload of small matrix products, but on the real attention
variants of the nightly suite it moved unchanged code by up to +100% between runs where
raw medians moved a few percent (a neighbour that slows the reference's arithmetic need
not slow memory-bound attention alike).

On both bases a change measured while other processes used much of the CPU is not
judged; where the runs' per-pass medians were tested (PassMedians), the change must hold
across the passes: processes of unchanged code differ by about 3% on that VM however many
samples each takes. Given earlier runs of the same suite (the history), the judged figure
(the host-relative ratio, or the fastest sample's) must exceed the case's run-to-run noise
floor (attnbench.analysis.noise). The fastest-sample and host-slow guards and the
history's floor do not apply to the two sides of one bench ab, judged as a pair (runs
made at other times say nothing about a pair timed together); the busy guard does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from attnbench.analysis.noise import MIN_RUNS, NO_HISTORY, NoiseEstimate
from attnbench.analysis.significance import p_text
from attnbench.analysis.time_judgements import RELATIVE, TimeJudgement
from attnbench.analysis.verdicts import MetricChange, change_text
from attnbench.core import machine_check

if TYPE_CHECKING:
    from attnbench.core.record import CaseRecord, RunRecord
    from attnbench.core.thresholds import Thresholds

# Packages whose version changes what is timed; a different version is a different environment.
COMPARED_PACKAGES = ("torch", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "torch_xla")
# Hardware identity of a host. The hostname is deliberately not part of it: CI runners are
# ephemeral machines of one class with a new name every run.
HOST_KEYS = ("cpu", "arch", "physical_cores", "logical_cores", "affinity_cores", "python")
HOST_SLOW = 0.15  # a case whose runs never saw the host this close to its fastest is not judged


# ----------------------------------------------------------------------------- runs and cases


def _devices(run: RunRecord) -> dict[str, str]:
    return {str(d.get("backend") or d.get("kind") or "?"): str(d.get("name")) for d in run.devices}


def environment_differences(base: RunRecord, cur: RunRecord) -> tuple[list[str], list[str]]:
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


def workload_differences(base: CaseRecord, cur: CaseRecord) -> tuple[str | None, str | None]:
    """(refusal, note) for the code behind a case's two records.

    Where both carry a definition hash, it decides: a different definition (parameters, mask,
    reference or useful-FLOP formula: attnbench.engine.identity) is not comparable; the same
    definition computed by different code is compared, with the note "code changed", so a
    slower kernel is a regression. Older records fall back to the workload hash (source and
    parameters together), as before."""
    if base.definition_hash and cur.definition_hash:
        if base.definition_hash != cur.definition_hash:
            return (
                "definition changed (definition_hash differs: parameters, mask, reference or useful-FLOP formula)",
                None,
            )
        if base.implementation_hash != cur.implementation_hash:
            return None, "code changed (same definition, verified against it on both sides)"
        return None, None
    bh, ch = base.workload_hash, cur.workload_hash
    if bh and ch and bh != ch:
        return "workload source or parameters changed (workload_hash differs)", None
    if not bh or not ch:
        return None, "workload_hash not recorded in both runs: code changes cannot be detected"
    return None, None


# ----------------------------------------------------------------------------- the host


def _busy(rec: CaseRecord) -> float:
    return rec.other_cpu_share or 0.0


def _slowest_reach(base: CaseRecord, cur: CaseRecord) -> float:
    """The slower of the two runs' best reference-kernel readings for this case (0: none)."""
    best = [min(v) for v in (machine_check.values(r.machine_check) for r in (base, cur)) if v]
    return max(best) if len(best) == 2 else 0.0


@dataclass(frozen=True)
class HostEvidence:
    """What the host did while a case was timed in the two runs, and what earlier runs say."""

    busy: float  # the largest share of the CPU other processes used while it was timed, either run
    drift: float | None  # spread of the host's reference-kernel readings over both runs
    slowest_reach: float  # the slower of the two runs' best reference-kernel readings (0: none)
    host_fast_s: float | None  # the fastest reference-kernel reading over both runs, on the case's threads
    noise: NoiseEstimate | None  # run-to-run noise from the history; NO_HISTORY: too few runs; None: not asked

    @classmethod
    def of(
        cls, base: CaseRecord, cur: CaseRecord, noise: NoiseEstimate | None, host_fast_s: float | None
    ) -> HostEvidence:
        drift = machine_check.drift(base.machine_check, cur.machine_check)
        return cls(max(_busy(base), _busy(cur)), drift, _slowest_reach(base, cur), host_fast_s, noise)


def host_guard(time: MetricChange, th: Thresholds, judgement: TimeJudgement, host: HostEvidence) -> MetricChange:
    """The time change with the host's drift and the noise floor filled in, and a regression
    or improvement turned into `unstable` when the host, not the code, can explain it (see the
    module's docstring for which guards apply to which way of judging)."""
    noise = host.noise
    floor = noise.floor(th.alpha) if noise is not None and noise is not NO_HISTORY else None
    time = replace(
        time, machine_drift=host.drift, noise_floor=floor, noise_runs=noise.runs if noise is not None else None
    )
    if time.verdict not in ("regression", "improvement") or time.ratio is None:
        return time
    change = f"{change_text(time.ratio)} (p={p_text(time.p_value)})"
    relative = judgement.basis == RELATIVE
    fastest = time.fastest_ratio
    # The figure the noise floor applies to: what the verdict rests on.
    judged = time.ratio if relative else fastest
    if judgement.paired:
        change = f"paired {change_text(time.paired_ratio)} ({judgement.p_label}={p_text(time.pass_p)})"
    if host.busy > th.busy_share:
        note = f"{change} measured while other processes used up to {host.busy:.0%} of the CPU: not trusted"
    elif judgement.paired:
        note = None
    elif time.pass_p is not None and time.pass_p >= th.alpha:
        note = (
            f"{change} over the samples, but not across the runs' passes (Welch p={p_text(time.pass_p)} on the "
            "per-pass medians): each process sees its own speed, and these differ by as much"
        )
    elif noise is NO_HISTORY:
        what = f"{change} host-relative" if relative else f"{change}, fastest sample {change_text(fastest)}"
        note = (
            f"{what}: no run-to-run noise estimate yet (fewer than {MIN_RUNS} runs of this suite in the history), "
            "and two runs alone cannot tell the code from the host; --noise-runs 0 judges on them anyway"
        )
    elif (
        not relative
        and fastest is not None
        and not (fastest > 1 + th.time if time.verdict == "regression" else fastest < 1 / (1 + th.time))
    ):
        drift = f"; the host's reference kernel ran {host.drift:.0%} apart over the runs" if host.drift else ""
        note = (
            f"median {change} but the fastest sample {fastest - 1:+.1%}: the mix of fast and slow "
            f"stretches of the host moved, not the code{drift}"
        )
    elif not relative and host.host_fast_s is not None and host.slowest_reach > host.host_fast_s * (1 + HOST_SLOW):
        note = (
            f"{change}: in one run the host's reference kernel never came within {HOST_SLOW:.0%} of its fastest "
            f"({host.slowest_reach * 1e3:.2f} ms at best against {host.host_fast_s * 1e3:.2f} ms) while this case "
            "was timed, so its fastest sample is the host's, not the code's"
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
