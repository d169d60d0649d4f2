"""A/A and injected-slowdown experiment: how often does `bench compare` cry wolf, and how
often does it catch a real slowdown?

Runs the test-only workload `test.slowdown` (tests/plugins/slowdown.py) repeatedly with
an injected extra cost of 0 (A/A), 1% and 10%, interleaved so that slow drifts of the
machine's load hit every condition alike, then compares every baseline (extra 0) run with
every other run of each condition using the same code as `bench compare`:

    python tools/aa_experiment.py --reps 6 --out /tmp/aa
    python tools/aa_experiment.py --analyse /tmp/aa        # re-analyse stored runs only

"No history" judges each pair on its own samples (bench compare --noise-runs 0); "with the
noise floor" gives it the other A/A runs as its history. Each condition also prints the
ratios judged (host-relative when the runs pair samples with the reference kernel) and
the raw medians' ratios, and the verdicts that raw medians and Mann-Whitney alone give.

Rates are per case comparison: false-alarm rate = share of A/A comparisons judged
`regression` (or `improvement`), detection rate = share of injected comparisons judged
`regression`. Each run also records the machine's load (worker.other_cpu_share).
"""

from __future__ import annotations

import argparse
import atexit
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Where this checkout's code is imported from, here and in every bench this starts (set by main).
IMPORT_PATH: list[str] = []


def use_this_checkout() -> None:
    """Import attnbench from this checkout, installed or not: its folders are not its import
    names (harness/ is the package attnbench), so an import root of links to them is made
    (harness/core/layout.py) and put first; ROOT too, for the test workload's package."""
    dest = Path(tempfile.mkdtemp(prefix="attnbench-aa-"))
    atexit.register(shutil.rmtree, dest, True)
    script = ROOT / "harness" / "core" / "layout.py"
    subprocess.run([sys.executable, str(script), str(ROOT), str(dest)], check=True, stdout=subprocess.DEVNULL)
    IMPORT_PATH[:] = [str(dest), str(ROOT)]
    sys.path[:0] = IMPORT_PATH


def _env(**extra: str) -> dict[str, str]:
    """bench's environment for the experiment: the test workload registered, no history."""
    env = dict(os.environ)
    env.update(
        ATTNBENCH_PLUGINS="tests.plugins.slowdown",
        ATTNBENCH_HISTORY="off",
        PYTHONPATH=os.pathsep.join([*IMPORT_PATH, env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        **extra,
    )
    return env


def run_once(folder: Path, extra: float, args: argparse.Namespace) -> None:
    env = _env(ATTNBENCH_SLOWDOWN=str(extra))
    cmd = [sys.executable, "-m", "attnbench", "run", "--variants", "test.slowdown", "--backends", args.backends]
    cmd += ["--seq-lens", args.seq_lens, "--heads", "4", "--head-dim", "32", "--threads", str(args.threads)]
    cmd += ["--max-time-per-case", str(args.budget), "--target-ci", "0.002", "--passes", str(args.passes)]
    cmd += ["--out", str(folder)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if r.returncode != 0:
        raise SystemExit(f"bench run failed for {folder}:\n{r.stderr}")


def run_pair(folder: Path, extra: float, args: argparse.Namespace) -> None:
    """One bench ab: the baseline (extra 0) and the candidate (extra) taking turns block by block."""
    env = _env()
    cmd = [sys.executable, "-m", "attnbench", "ab", "--baseline", str(ROOT), "--allow-same"]
    cmd += ["--baseline-env", "ATTNBENCH_SLOWDOWN=0", "--candidate-env", f"ATTNBENCH_SLOWDOWN={extra}"]
    cmd += ["--variants", "test.slowdown", "--backends", args.backends]
    cmd += ["--seq-lens", args.seq_lens, "--heads", "4", "--head-dim", "32", "--threads", str(args.threads)]
    cmd += ["--max-time-per-case", str(args.budget), "--target-ci", "0.002", "--passes", str(args.passes)]
    cmd += ["--threshold", str(args.threshold), "--alpha", str(args.alpha), "--out", str(folder)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if r.returncode != 0:
        raise SystemExit(f"bench ab failed for {folder}:\n{r.stderr}")


def analyse_pairs(out: Path, extras: list[float], threshold: float, alpha: float) -> dict:
    """Each bench ab pair judged on its own (the comparison pairs their blocks, or passes)."""
    from attnbench.analysis.compare import compare_runs
    from attnbench.core.results import load_run
    from attnbench.core.thresholds import CompareConfig, Thresholds

    config = CompareConfig(default=Thresholds(time=threshold, alpha=alpha), source="experiment")
    report: dict = {"threshold": threshold, "alpha": alpha, "interleaved": True, "conditions": {}}
    for extra in extras:
        verdicts: list[str] = []
        ratios: list[float] = []
        paired: list[float] = []
        pass_ps: list[float] = []
        tests: dict[str, int] = {}
        reasons: dict[str, int] = {}
        folders = sorted(f for f in out.glob(f"rep*-x{extra:g}") if (f / "candidate" / "run.json").is_file())
        for folder in folders:
            cmp = compare_runs(load_run(folder / "baseline"), load_run(folder / "candidate"), config)
            for case in cmp.cases:
                verdicts.append(case.verdict)
                if case.time and case.time.ratio:
                    ratios.append(case.time.ratio)
                    if case.time.pass_p is not None:
                        pass_ps.append(case.time.pass_p)
                    if case.time.paired_ratio is not None:
                        paired.append(case.time.paired_ratio)
                    tests[str(case.time.pass_test)] = tests.get(str(case.time.pass_test), 0) + 1
                if case.verdict == "unstable" and case.time and case.time.note:
                    note = case.time.note
                    kinds = (("not significant", "passes disagree"), ("95% CI", "wide CI"), ("other processes", "busy"))
                    key = next((k for marker, k in kinds if marker in note), note[:40])
                    reasons[key] = reasons.get(key, 0) + 1
        n = len(verdicts)
        counts = {v: verdicts.count(v) for v in sorted(set(verdicts))}
        report["conditions"][f"{extra:g}"] = {
            "pairs": len(folders),
            "case_comparisons": n,
            "verdicts": counts,
            "regression_rate": counts.get("regression", 0) / n if n else None,
            "improvement_rate": counts.get("improvement", 0) / n if n else None,
            "median_ratio": statistics.median(ratios) if ratios else None,
            "ratio_range": [min(ratios), max(ratios)] if ratios else None,
            "median_paired_ratio": statistics.median(paired) if paired else None,
            "paired_range": [min(paired), max(paired)] if paired else None,
            "median_pass_p": statistics.median(pass_ps) if pass_ps else None,
            "pass_tests": tests,
            "unstable_because": reasons,
        }
    return report


def analyse(out: Path, extras: list[float], threshold: float, alpha: float, noise: bool, basis: str = "raw") -> dict:
    """noise: give each comparison the other A/A runs (not in the pair) as its history of
    unchanged code, for the run-to-run noise floor, as a nightly history would."""
    from attnbench.analysis.compare import compare_runs
    from attnbench.analysis.significance import mann_whitney_u
    from attnbench.core.results import load_run
    from attnbench.core.thresholds import CompareConfig, Thresholds

    runs: dict[float, list] = {x: [] for x in extras}
    for folder in sorted(out.glob("rep*-x*")):
        extra = float(folder.name.split("-x", 1)[1])
        if extra in runs and (folder / "run.json").is_file():
            runs[extra].append(load_run(folder))
    config = CompareConfig(default=Thresholds(time=threshold, alpha=alpha), source="experiment")
    baselines = runs[0.0]
    report: dict = {"threshold": threshold, "alpha": alpha, "noise_floor": noise, "basis": basis, "conditions": {}}
    for extra, currents in runs.items():
        if extra == 0.0:
            pairs = list(itertools.combinations(baselines, 2))
        else:
            pairs = [(b, c) for b in baselines for c in currents]
        verdicts: list[str] = []
        # The raw medians and Mann-Whitney on the raw samples alone: no host-relative basis, no guards.
        naive: list[str] = []
        guards: dict[str, int] = {}
        ratios: list[float] = []
        raw_ratios: list[float] = []
        rel_ratios: list[float] = []
        bases: dict[str, int] = {}
        for b, c in pairs:
            history = [r for r in baselines if r is not b and r is not c] if noise else None
            cmp = compare_runs(b, c, config, noise_runs=history, time_basis=basis)
            base_cases = {r.case_id: r for r in b.cases}
            cur_cases = {r.case_id: r for r in c.cases}
            for case in cmp.cases:
                verdicts.append(case.verdict)
                t = case.time
                if t and t.ratio and t.raw_ratio:
                    ratios.append(t.ratio)
                    raw_ratios.append(t.raw_ratio)
                    if t.host_relative_ratio:
                        rel_ratios.append(t.host_relative_ratio)
                    bases[t.basis or "?"] = bases.get(t.basis or "?", 0) + 1
                    _, p_raw = mann_whitney_u(base_cases[case.case_id].samples, cur_cases[case.case_id].samples)
                    up, down = t.raw_ratio > 1 + threshold, t.raw_ratio < 1 / (1 + threshold)
                    significant = p_raw < alpha
                    naive.append("regression" if up and significant else "improvement" if down and significant else "-")
                    note = t.note or ""
                    for key, marker in (
                        ("busy", "other processes"),
                        ("fastest sample", "but the fastest"),
                        ("passes disagree", "across the runs' passes"),
                        ("noise floor", "run-to-run noise"),
                        ("not significant", "not significant"),
                        ("wide CI", "95% CI"),
                    ):
                        if marker in note:
                            guards[key] = guards.get(key, 0) + 1
        n = len(verdicts)
        counts = {v: verdicts.count(v) for v in sorted(set(verdicts))}
        loads = [rec.other_cpu_share or 0.0 for r in (currents if extra else baselines) for rec in r.cases]
        report["conditions"][f"{extra:g}"] = {
            "runs": len(currents),
            "run_pairs": len(pairs),
            "case_comparisons": n,
            "verdicts": counts,
            "regression_rate": counts.get("regression", 0) / n if n else None,
            "improvement_rate": counts.get("improvement", 0) / n if n else None,
            "naive_regression_rate": naive.count("regression") / len(naive) if naive else None,
            "naive_improvement_rate": naive.count("improvement") / len(naive) if naive else None,
            "unstable_because": guards,
            "bases": bases,
            "median_ratio": statistics.median(ratios) if ratios else None,
            "ratio_range": [min(ratios), max(ratios)] if ratios else None,
            "median_raw_ratio": statistics.median(raw_ratios) if raw_ratios else None,
            "raw_ratio_range": [min(raw_ratios), max(raw_ratios)] if raw_ratios else None,
            "median_host_relative_ratio": statistics.median(rel_ratios) if rel_ratios else None,
            "host_relative_ratio_range": [min(rel_ratios), max(rel_ratios)] if rel_ratios else None,
            "median_other_cpu_share": statistics.median(loads) if loads else None,
        }
    return report


def run_conditions(out: Path, extras: list[float], args: argparse.Namespace, interleaved: bool) -> None:
    """args.reps runs (or bench ab pairs) of every condition, into out/repNN-xEXTRA; those
    already there are kept. Conditions take turns, rotated each repetition, so slow drifts
    of the machine's load hit every condition alike."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for rep in range(args.reps):
        order = extras[rep % len(extras) :] + extras[: rep % len(extras)]
        for extra in order:
            folder = out / f"rep{rep:02d}-x{extra:g}"
            if not (folder / "candidate" / "run.json" if interleaved else folder / "run.json").is_file():
                (run_pair if interleaved else run_once)(folder, extra, args)
                print(f"{folder.name} done at {time.perf_counter() - t0:.0f} s", flush=True)


def interleaved_experiment(out: Path, extras: list[float], args: argparse.Namespace) -> int:
    if args.analyse is None:
        run_conditions(out, extras, args, interleaved=True)
    report = analyse_pairs(out, extras, args.threshold, args.alpha)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"interleaved pairs (bench ab), threshold {report['threshold']:.0%}, alpha {report['alpha']}")
    for extra, c in report["conditions"].items():
        lo, hi = c["paired_range"] or (0, 0)
        print(
            f"  extra {float(extra):>5.0%}: {c['case_comparisons']:>3} comparisons ({c['pairs']} pairs), "
            f"regression {c['regression_rate'] or 0:.1%}, improvement {c['improvement_rate'] or 0:.1%}, "
            f"verdicts {c['verdicts']}; paired ratio median {c['median_paired_ratio'] or 0:.3f} range "
            f"{lo:.3f}-{hi:.3f}; median pass p {c['median_pass_p']}; tests {c['pass_tests']}; "
            f"unstable because {c['unstable_because']}"
        )
    return 0


def main() -> int:
    use_this_checkout()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=6, help="runs per condition")
    p.add_argument("--extras", default="0,0.01,0.10", help="injected extra cost fractions (0 must be first)")
    p.add_argument("--seq-lens", default="64,128,256", help="one case per length")
    p.add_argument("--budget", type=float, default=3.0, help="seconds of sampling per case, over all its passes")
    p.add_argument("--passes", type=int, default=3, help="passes over the cases per run (bench run --passes)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--backends", default="cpu", help="backend to time on (bench run --backends)")
    p.add_argument("--threshold", type=float, default=0.05)
    p.add_argument("--alpha", type=float, default=0.01)
    p.add_argument("--out", type=Path, help="folder for the runs (new experiment)")
    p.add_argument("--analyse", type=Path, help="analyse the runs already in this folder")
    p.add_argument("--time-basis", default="raw", choices=("raw", "host-relative"), help="as bench compare's")
    p.add_argument(
        "--interleaved",
        action="store_true",
        help="each condition as one bench ab (baseline and candidate taking turns), judged pair by pair",
    )
    args = p.parse_args()
    extras = [float(x) for x in args.extras.split(",")]
    if extras[0] != 0.0:
        raise SystemExit("--extras must start with 0 (the baseline condition)")
    out = args.analyse or args.out
    if out is None:
        raise SystemExit("give --out DIR (run the experiment) or --analyse DIR")
    if args.interleaved:
        return interleaved_experiment(out, extras, args)
    if args.analyse is None:
        run_conditions(out, extras, args, interleaved=False)
    # Each pair on its own samples, then with the other A/A runs as its history (noise floor).
    reports = [analyse(out, extras, args.threshold, args.alpha, noise, args.time_basis) for noise in (False, True)]
    (out / "report.json").write_text(json.dumps(reports, indent=2) + "\n")
    for report in reports:
        floor = "with the noise floor from the other A/A runs" if report["noise_floor"] else "no history"
        print(f"threshold {report['threshold']:.0%}, alpha {report['alpha']}, {floor}, time basis {report['basis']}")
        for extra, c in report["conditions"].items():
            print(
                f"  extra {float(extra):>5.0%}: {c['case_comparisons']:>3} comparisons ({c['run_pairs']} run pairs), "
                f"regression {c['regression_rate'] or 0:.1%}, improvement {c['improvement_rate'] or 0:.1%}, "
                f"verdicts {c['verdicts']}, median other-CPU share {c['median_other_cpu_share'] or 0:.0%}"
            )
            lo, hi = c["ratio_range"] or (0, 0)
            rlo, rhi = c["raw_ratio_range"] or (0, 0)
            print(
                f"      judged ratio (bases {c['bases']}): median {c['median_ratio'] or 0:.3f}, "
                f"range {lo:.3f}-{hi:.3f}; raw medians: {c['median_raw_ratio'] or 0:.3f}, range {rlo:.3f}-{rhi:.3f}"
            )
            hlo, hhi = c["host_relative_ratio_range"] or (0, 0)
            print(
                f"      host-relative medians (reported, not judged by default): "
                f"{c['median_host_relative_ratio'] or 0:.3f}, range {hlo:.3f}-{hhi:.3f}"
            )
            print(
                f"      raw medians and Mann-Whitney alone: regression {c['naive_regression_rate'] or 0:.1%}, "
                f"improvement {c['naive_improvement_rate'] or 0:.1%}; unstable because {c['unstable_because']}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
