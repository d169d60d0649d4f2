"""Does the regression gate see a real kernel slowdown? `bench ab` against copies of this
checkout whose attention kernels were edited to do more work.

Three conditions, each a copy of this checkout made fresh for the experiment:

- `aa`: unchanged (an A/A test between two folders of the same code);
- `1pct`, `10pct`: the `forward` of `full.sdpa`, `sparse.sliding_window` and `sparse.bigbird`
  edited in the variant's own module so that every call spends about 1% / 10% more time: after
  the real computation it keeps the CPU busy for that share of what the computation took. The
  output is unchanged and still matches the reference, so the definition hash is the same and
  only the implementation hash differs: `bench compare` must judge the time, not call the case
  `changed`.

Each repetition runs every condition once, in turn, so that slow drifts of the machine hit all
alike; each run is a real `bench ab --baseline THIS_CHECKOUT` from the copy's folder, with the
`nightly` suite's settings (6 passes, block turns) unless flags say otherwise:

    python tools/regression_experiment.py --reps 4 --out /tmp/regexp
    python tools/regression_experiment.py --analyse /tmp/regexp     # count the stored verdicts again

It prints, per condition, the verdicts over all case comparisons: the share flagged
`regression` is the detection rate of the slowed copies and the false-alarm rate of A/A.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANT_FILES = {  # variant -> (module file, class name) edited in the slowed copies
    "full.sdpa": ("workloads/full.py", "SdpaAttention"),
    "sparse.sliding_window": ("workloads/sparse/sliding_window.py", "SlidingWindowAttention"),
    "sparse.bigbird": ("workloads/sparse/bigbird.py", "BigBirdAttention"),
}
CONDITIONS = {"aa": 0.0, "1pct": 0.01, "10pct": 0.10}
COPIED = ("harness", "workloads", "backends", "tests", "tools", "pyproject.toml", "README.md")

SLOWDOWN = """

# --- tools/regression_experiment.py: this copy's kernel spends {share:.0%} more time ---------
def _slowed_forward(inner):  # noqa: ANN001, ANN202 - an experiment's edit, not project code
    import functools
    import time as _time

    @functools.wraps(inner)
    def forward(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        start = _time.perf_counter()
        out = inner(self, *args, **kwargs)
        until = _time.perf_counter() + {share!r} * (_time.perf_counter() - start)
        while _time.perf_counter() < until:  # busy, as extra work would be
            pass
        return out

    return forward


{cls}.forward = _slowed_forward({cls}.forward)
"""


def make_copy(dest: Path, share: float) -> Path:
    """A copy of this checkout's files (no history, no environments), its kernels slowed by share."""
    dest.mkdir(parents=True)
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    if share:
        for path, cls in VARIANT_FILES.values():
            with open(dest / path, "a") as f:
                f.write(SLOWDOWN.format(share=share, cls=cls))
    return dest


def run_pair(copy: Path, out: Path, flags: list[str]) -> int:
    cmd = [sys.executable, "-m", "attnbench", "ab", "--baseline", str(ROOT), "--history", "off", "--out", str(out)]
    proc = subprocess.run([*cmd, *flags], cwd=copy, capture_output=True, text=True)
    (out.parent / f"{out.name}.log").write_text(proc.stdout + proc.stderr)
    return proc.returncode


def verdicts(out: Path) -> list[dict[str, str]]:
    """The case comparisons `bench ab` stored: case, verdict, and why."""
    report = json.loads((out / "compare.json").read_text())
    return [{"case": c["case_id"], "verdict": c["verdict"], "reason": c.get("reason") or ""} for c in report["cases"]]


def analyse(folder: Path) -> dict[str, collections.Counter]:
    counts: dict[str, collections.Counter] = {}
    for cond in CONDITIONS:
        counter: collections.Counter = collections.Counter()
        for out in sorted(folder.glob(f"{cond}-rep*")):
            if out.is_dir() and (out / "compare.json").exists():
                counter.update(v["verdict"] for v in verdicts(out))
        counts[cond] = counter
    return counts


def report(counts: dict[str, collections.Counter]) -> None:
    print(f"{'condition':10} {'comparisons':>11} {'regression':>11} {'improvement':>12} {'no change':>10} other")
    for cond, counter in counts.items():
        total = sum(counter.values())
        other = {k: v for k, v in counter.items() if k not in ("regression", "improvement", "no change")}
        share = f"{counter['regression']} ({counter['regression'] / total:.0%})" if total else "-"
        print(f"{cond:10} {total:>11} {share:>11} {counter['improvement']:>12} {counter['no change']:>10} {other}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--analyse", type=Path, help="count the verdicts of a finished experiment folder")
    parser.add_argument("--conditions", default=",".join(CONDITIONS), help="comma list of aa, 1pct, 10pct")
    parser.add_argument("--suite", default="nightly")
    parser.add_argument("--variants", default=",".join(VARIANT_FILES))
    parser.add_argument("--seq-lens", default="512,1024")
    parser.add_argument("extra", nargs="*", help="more bench run flags, after --")
    args = parser.parse_args()
    if args.analyse:
        report(analyse(args.analyse))
        return 0
    if args.out is None or (args.out.exists() and any(args.out.iterdir())):
        parser.error("--out must name a new or empty folder")
    conditions = [c for c in args.conditions.split(",") if c]
    copies = {c: make_copy(args.out / "copies" / c, CONDITIONS[c]) for c in conditions}
    flags = ["--suite", args.suite, "--variants", args.variants, "--seq-lens", args.seq_lens, *args.extra]
    started = time.perf_counter()
    for rep in range(args.reps):
        for cond in conditions:
            out = args.out / f"{cond}-rep{rep}"
            code = run_pair(copies[cond], out, flags)
            found = verdicts(out) if (out / "compare.json").exists() else []
            print(f"{time.perf_counter() - started:6.0f} s  {cond:6} rep {rep}: exit {code}, "
                  + ", ".join(v["verdict"] for v in found), flush=True)  # fmt: skip
    report(analyse(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
