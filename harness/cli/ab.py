"""`bench ab --baseline DIR [bench run flags]`: two versions of the code timed in one job,
taking turns block by block, then compared block by block.

Runs made one after the other see different stretches of a shared host, whose speed can
drift by tens of percent over minutes and switch between states within a second;
interleaving puts both versions on the same stretches (attnbench.engine.turns: both sides' workers
of a case run at once and take turns per ~10 ms block of samples), so the comparison can
pair each block of a case with the other side's block timed right beside it (bench
compare does so whenever two runs are the sides of one `bench ab`).

The baseline is another checkout of attnbench (e.g. `git worktree add ../base <commit>`),
new enough to take turns (it has harness/engine/turns.py). The candidate is the checkout
holding the current folder, or the one --candidate names; run from a folder in no checkout,
it is the checkout of the code this `bench` imports, and the first line says so. That line
names both checkouts with their commits (and uncommitted changes) and says when they are the
same commit. A checkout is not compared with itself (the same folder) unless --allow-same
asks for an A/A test.

Each side's `bench run` gets the same flags and runs in its checkout with that checkout's
import root first on PYTHONPATH (attnbench.core.layout), so each imports its own code
(workloads, plugins) whichever attnbench the Python has installed: an editable install's
finder comes after PYTHONPATH. That is checked rather than trusted: before the sides start,
each side's Python says where it finds attnbench and its subpackages, and a side that would
import another checkout's code is refused in one line; a side new enough to record where its
code came from (run.json `interleaved.imported`) is checked again after its run.
--baseline-env and --candidate-env set variables on one side only. OUT holds baseline/ and
candidate/ (two ordinary run folders), each side's log, and the comparison (compare.json,
compare.md). Only the candidate's run is recorded in the history. --json prints the comparison
(compare.json) on stdout instead of the table, everything else on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnbench.cli.compare import ALLOW_MISSING_HELP, FAIL_HELP
from attnbench.cli.parsing import add_documented_command
from attnbench.cli.run_flags import add_run_flags
from attnbench.core.errors import EXIT_CASES_FAILED, EXIT_INTERRUPTED, UserError
from attnbench.core.layout import SUBPACKAGE_FOLDERS, CheckoutCommand, bench_command, is_checkout

if TYPE_CHECKING:  # the rest is imported where used, so `bench --help` stays fast
    import psutil

    from attnbench.engine.turns import Side

ROOT = Path(__file__).resolve().parents[2]  # the imported code's checkout (this file is harness/cli/ab.py)
SIDES = ("baseline", "candidate")
# bench ab's own flags, with whether each takes a value; the rest go to both sides' bench run.
OWN_FLAGS = {
    "--baseline": True,
    "--candidate": True,
    "--baseline-env": True,
    "--candidate-env": True,
    "--python": True,
    "--out": True,
    "--history": True,
    "--threshold": True,
    "--alpha": True,
    "--fail-on-regression": False,
    "--allow-missing": False,
    "--json": False,
    "--allow-same": False,
    "--turns": True,
}
REFUSED = {
    "--resume": "an interrupted bench ab cannot be resumed as a pair; run it again",
    "--executor": "the two sides take turns on this machine; drop --executor",
    "--ray-address": "the two sides take turns on this machine; drop --ray-address",
    "--profile": "profile the cases with bench profile, outside the timed pair",
}


HELP = "time a baseline checkout and the candidate (this folder's) interleaved, block by block, and compare them"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    # allow_abbrev=False: the flags not ours are passed on verbatim; no abbreviations to untangle
    p = add_documented_command(subparsers, "ab", HELP, __doc__, allow_abbrev=False)
    p.add_argument("--baseline", type=Path, required=True, metavar="DIR", help="the baseline's attnbench checkout")
    p.add_argument(
        "--candidate",
        type=Path,
        metavar="DIR",
        help="the candidate's checkout (default: the checkout holding the current folder; in none, the checkout "
        "of the code this bench imports)",
    )
    p.add_argument(
        "--allow-same",
        action="store_true",
        help="compare a checkout with itself (an A/A test). Without it, bench ab refuses when the baseline and the "
        "candidate are the same folder (resolved); two folders at the same commit are compared, and the first line "
        "says 'same commit'",
    )
    for side in SIDES:
        p.add_argument(
            f"--{side}-env",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help=f"an environment variable for the {side}'s run only (repeatable)",
        )
    p.add_argument("--python", metavar="EXE", help="the Python both sides run with (default: this one)")
    p.add_argument(
        "--turns",
        choices=("blocks", "passes"),
        default="blocks",
        help="what the sides take turns with: blocks of samples (default; both sides' workers of a case are "
        "alive at once, each holding its inputs) or whole passes (one worker at a time: for cases that fill "
        "the device's memory)",
    )
    p.add_argument("--threshold", type=float, help="relative time change that counts (default 0.05, or the suite's)")
    p.add_argument("--alpha", type=float, help="significance level (default 0.01)")
    p.add_argument("--fail-on-regression", action="store_true", help=FAIL_HELP)
    p.add_argument("--allow-missing", action="store_true", help=ALLOW_MISSING_HELP)
    p.add_argument(
        "--json",
        action="store_true",
        help="print the comparison as JSON on stdout (as OUT/compare.json holds it) instead of the table; "
        "everything else goes to stderr",
    )
    out_help = "folder for the pair: baseline/, candidate/, logs, compare.* (default: results/ab-<time>)"
    add_run_flags(p, out_help=out_help)
    return p


# Run flags the sides do without: a side never calibrates (the other side loads the machine),
# and a baseline checkout older than the flag would refuse it.
NOT_FOR_SIDES = ("--no-calibrate",)


def side_flags(argv: list[str]) -> list[str]:
    """The `bench run` flags in bench ab's command line: everything but bench ab's own."""
    out: list[str] = []
    tokens = iter(argv[1:] if argv and argv[0] == "ab" else argv)
    for token in tokens:
        name = token.split("=", 1)[0]
        if name in NOT_FOR_SIDES:
            continue
        if name in REFUSED:
            raise UserError(f"bench ab does not take {name}: {REFUSED[name]}")
        if name in OWN_FLAGS:
            if OWN_FLAGS[name] and "=" not in token:
                next(tokens, None)
            continue
        out.append(token)
    return out


def _checkout(path: Path, flag: str) -> Path:
    path = path.resolve()
    if not is_checkout(path):
        raise UserError(
            f"{flag} {path} is not an attnbench checkout (no harness/ package); make one with "
            f"`git worktree add {path} <commit>`"
        )
    if not any((path / "harness" / p / "turns.py").is_file() for p in ("engine", ".")):
        raise UserError(
            f"{flag} {path} predates bench ab (no turns.py under harness/), so its runs cannot take turns; "
            "compare runs made one after the other with bench compare instead"
        )
    return path


def _enclosing_checkout(folder: Path) -> Path | None:
    """The checkout holding folder (folder itself or the nearest folder above it), or None."""
    folder = folder.resolve()
    return next((f for f in (folder, *folder.parents) if is_checkout(f)), None)


def _candidate(given: Path | None) -> tuple[Path, str, bool]:
    """The candidate's checkout, how it was chosen, and whether that was the fallback (which the
    first line says, since it is not the folder the user is in)."""
    if given is not None:
        return _checkout(given, "--candidate"), "named by --candidate", False
    here = _enclosing_checkout(Path.cwd())
    if here is not None:
        return _checkout(here, "--candidate"), f"the checkout holding the current folder {Path.cwd()}", False
    how = f"the current folder {Path.cwd()} is in no checkout: the imported code's"
    return _checkout(ROOT, "--candidate"), how, True


def _describe(checkouts: dict[str, Path], note: str) -> str:
    """Both checkouts with their commits (note: said of the candidate), and whether they are the
    same folder or commit."""
    from attnbench.core.environment import git_info

    infos = {name: git_info(checkouts[name]) for name in SIDES}
    commits = {name: (info["commit"], bool(info["dirty"])) for name, info in infos.items()}

    def one(name: str) -> str:
        commit, dirty = commits[name]
        state = "not a git checkout" if commit is None else f"commit {commit[:12]}" + (", dirty" if dirty else "")
        chosen = f"; {note}" if name == "candidate" and note else ""
        return f"{name} {checkouts[name]} ({state}{chosen})"

    text = f"{one('baseline')} and {one('candidate')}"
    (base, base_dirty), (cand, cand_dirty) = commits["baseline"], commits["candidate"]
    if checkouts["baseline"] == checkouts["candidate"]:
        text += ": the same checkout (--allow-same: an A/A test)"
    elif base is not None and base == cand:
        text += ": the same commit" + (", both clean" if not (base_dirty or cand_dirty) else "")
    return text


def _expected_code(checkout: Path, command: CheckoutCommand) -> dict[str, str]:
    """Where a side running checkout's code finds each of its packages: import name -> folder."""
    if command.module == "harness.cli":  # before one namespace: top-level harness, workloads, backends
        names = {"harness": "harness", **{folder: folder for folder in SUBPACKAGE_FOLDERS.values()}}
    else:
        names = {"attnbench": "harness", **{f"attnbench.{name}": f for name, f in SUBPACKAGE_FOLDERS.items()}}
    return {name: str(checkout / folder) for name, folder in names.items() if (checkout / folder).is_dir()}


# Run by a side's Python, in its checkout, with its environment: the folder each package named
# would be imported from (resolved through the import root's links; null where none). It imports
# no more than the side's attnbench/__init__.py, so it works for a checkout of any age.
_PROBE = """
import importlib.util, json, os, sys
def where(name):
    try:
        spec = importlib.util.find_spec(name)
    except ImportError:
        return None
    if spec is None:
        return None
    if spec.origin and os.path.isfile(spec.origin):
        return os.path.dirname(os.path.realpath(spec.origin))
    locations = list(spec.submodule_search_locations or [])
    return os.path.realpath(locations[0]) if locations else None
print(json.dumps({name: where(name) for name in sys.argv[1:]}))
"""


def _wrong_code(name: str, checkout: Path, found: dict[str, Any], expected: dict[str, str], when: str) -> str | None:
    """The refusal when a side's code came (or would come) from elsewhere than its checkout."""
    for module, folder in expected.items():
        if found.get(module) != folder:
            return (
                f"the {name}'s bench run {when} {module} from {found.get(module)}, not from its checkout {checkout} "
                f"({folder}): its import root was not first (a PYTHONPATH in --{name}-env, or an attnbench "
                "install whose finder runs before PYTHONPATH?); drop that, or give --python a Python without it"
            )
    return None


def _check_sides_import_their_own(
    python: str, checkouts: dict[str, Path], commands: dict[str, CheckoutCommand], envs: dict[str, dict[str, str]]
) -> None:
    """Ask each side's Python, as the side will run, where its code would come from."""
    for name in SIDES:
        expected = _expected_code(checkouts[name], commands[name])
        r = subprocess.run(
            [python, "-c", _PROBE, *expected],
            cwd=checkouts[name],
            env=_side_env(commands[name], envs[name]),
            capture_output=True,
            text=True,
            timeout=120,
        )
        try:
            found = json.loads(r.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            tail = " / ".join(r.stderr.strip().splitlines()[-3:])
            raise UserError(f"{python} could not say where the {name}'s code comes from: {tail}") from None
        refusal = _wrong_code(name, checkouts[name], found, expected, "would import")
        if refusal:
            raise UserError(refusal)


def _check_sides_ran_their_own(out: Path, checkouts: dict[str, Path], commands: dict[str, CheckoutCommand]) -> None:
    """A side that recorded where its code came from (interleaved.imported) ran its own checkout's."""
    from attnbench.core.results import load_run

    for name in SIDES:
        found = (load_run(out / name).run.interleaved or {}).get("imported")
        if found is None:  # a baseline from before the record: the check before the run stands alone
            continue
        refusal = _wrong_code(name, checkouts[name], found, _expected_code(checkouts[name], commands[name]), "imported")
        if refusal:
            raise UserError(refusal + f"; its numbers in {out / name} are not its checkout's")


def _side_env(command: CheckoutCommand, extra: dict[str, str]) -> dict[str, str]:
    """A side's environment: this one, the side's import root first on PYTHONPATH (so that `-m`
    imports that checkout's code, not the installed one), and the side's own variables."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(command.pythonpath), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def _env_pairs(values: list[str], flag: str) -> dict[str, str]:
    out = {}
    for value in values:
        name, sep, setting = value.partition("=")
        if not sep or not name:
            raise UserError(f"{flag} takes NAME=VALUE, got {value!r}")
        out[name] = setting
    return out


def _absolute_suite(flags: list[str]) -> list[str]:
    """A --suite given as a file path, made absolute: each side runs in its own checkout."""
    out = list(flags)
    for i, token in enumerate(out):
        if token.startswith("--suite="):
            value = token.split("=", 1)[1]
            if Path(value).is_file():
                out[i] = f"--suite={Path(value).resolve()}"
        elif token == "--suite" and i + 1 < len(out) and Path(out[i + 1]).is_file():
            out[i + 1] = str(Path(out[i + 1]).resolve())
    return out


class _Family:
    """A side's process and those it started (its fork server): noted while it runs, waited for at its end."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.children: list[psutil.Process] = []

    def note(self) -> None:
        import psutil

        with contextlib.suppress(psutil.Error):
            self.children = psutil.Process(self.proc.pid).children(recursive=True)

    def wait(self) -> None:
        self.proc.wait()
        import psutil

        psutil.wait_procs(self.children, timeout=30)


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from attnbench.analysis.history import history_path
    from attnbench.report.console import make_console
    from attnbench.report.escaping import line

    console = make_console(file=sys.stderr if args.json else None)
    flags = _absolute_suite(side_flags(argv))
    baseline = _checkout(args.baseline, "--baseline")
    candidate, how, fallback = _candidate(args.candidate)
    checkouts = {"baseline": baseline, "candidate": candidate}
    envs = {side: _env_pairs(getattr(args, f"{side}_env"), f"--{side}-env") for side in SIDES}
    if baseline == candidate and not args.allow_same:
        raise UserError(
            f"the baseline and the candidate are the same checkout, {baseline} ({how}); name the candidate with "
            "--candidate (or run bench ab from its folder), or add --allow-same for an A/A test"
        )
    described = _describe(checkouts, how if fallback else "")
    out = (args.out or Path("results") / time.strftime("ab-%Y%m%dT%H%M%S")).resolve()
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} already holds files; choose an empty --out")
    history = history_path(args.history)
    python = args.python or sys.executable
    scratch = Path(tempfile.mkdtemp(prefix="attnbench-ab-"))  # the sides' import roots
    try:
        commands = {name: bench_command(checkouts[name], scratch / name) for name in SIDES}
        _check_sides_import_their_own(python, checkouts, commands, envs)
        out.mkdir(parents=True, exist_ok=True)
        console.print(
            line(f"bench ab: {described}, taking turns → {out} (logs: baseline.log, candidate.log)"), soft_wrap=True
        )
        return _run_sides(args, console, flags, checkouts, commands, envs, out, history, python)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run_sides(
    args: argparse.Namespace,
    console: Any,
    flags: list[str],
    checkouts: dict[str, Path],
    commands: dict[str, CheckoutCommand],
    envs: dict[str, dict[str, str]],
    out: Path,
    history: Path | None,
    python: str,
) -> int:
    from attnbench.engine.turns import INTERLEAVED_ENV, TURN_UNIT_ENV, TURNS_ENV, Side, alternate
    from attnbench.report.escaping import line

    group = uuid.uuid4().hex[:12]
    sides: list[Side] = []
    procs: dict[str, subprocess.Popen] = {}
    logs = {}
    for name in SIDES:
        to_side_r, to_side_w = os.pipe()
        from_side_r, from_side_w = os.pipe()
        side = {"group": group, "side": name, "checkout": str(checkouts[name]), "turns": args.turns}
        turns = {TURNS_ENV: f"{to_side_r},{from_side_w}", TURN_UNIT_ENV: args.turns, INTERLEAVED_ENV: json.dumps(side)}
        env = _side_env(commands[name], {**turns, **envs[name]})
        # Resolved here: the side runs in its checkout, where a relative path would mean another file.
        record = str(Path(history).resolve()) if name == "candidate" and history is not None else "off"
        cmd = [python, "-m", commands[name].module, "run", *flags, "--out", str(out / name), "--history", record]
        logs[name] = out / f"{name}.log"
        with open(logs[name], "w") as log:
            # env: the side's import root first (checked by _check_sides_import_their_own); cwd: the
            # side's checkout, where its relative paths mean what they say.
            procs[name] = subprocess.Popen(
                cmd,
                cwd=checkouts[name],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(to_side_r, from_side_w),
            )
        os.close(to_side_r)
        os.close(from_side_w)
        family = _Family(procs[name])
        sides.append(Side(name, to_side_w, from_side_r, on_exit=family.wait, on_ask=family.note))
    started = time.perf_counter()
    last = [started]

    def progress(side: Side) -> None:
        now = time.perf_counter()
        if now - last[0] > 30:
            last[0] = now
            counts = ", ".join(f"{s.name} {s.turns}" for s in sides)
            console.print(line(f"  {now - started:5.0f} s: worker phases done: {counts}"))

    try:
        alternate(sides, progress)
        codes = {name: p.wait() for name, p in procs.items()}
    except KeyboardInterrupt:
        _stop_sides(procs)
        console.print(line(("interrupted", "bold yellow"), f": the sides' runs so far are in {out}"))
        return EXIT_INTERRUPTED
    finally:
        for s in sides:
            os.close(s.to_side)
            os.close(s.from_side)
    # EXIT_CASES_FAILED: the side's run finished with failing cases, which the comparison reports.
    failed = {name: code for name, code in codes.items() if code not in (0, EXIT_CASES_FAILED)}
    if failed:
        name, code = next(iter(failed.items()))
        tail = logs[name].read_text().strip().splitlines()[-5:]
        raise UserError(f"the {name}'s bench run exited with {code}: " + " / ".join(tail))
    _check_sides_ran_their_own(out, checkouts, commands)
    console.print(
        line(
            f"both sides done in {time.perf_counter() - started:.0f} s "
            f"({sides[0].turns} and {sides[1].turns} worker phases)"
        )
    )
    return _compare(out, args)


def _stop_sides(procs: dict[str, subprocess.Popen], grace_s: float = 60.0) -> None:
    """Pass the driver's interrupt on to the sides, which mark their runs interrupted. A Ctrl-C
    reached them already (the terminal signals the whole group); a SIGTERM sent to the driver
    alone did not, and waiting for them would have waited for both whole runs."""
    from attnbench.core import interrupts

    sig = interrupts.received() or signal.SIGINT
    for p in procs.values():
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(sig)
    deadline = time.monotonic() + grace_s
    for p in procs.values():
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()  # its workers go with it (attnbench.engine.lifeline)
            p.wait()


def _compare(out: Path, args: argparse.Namespace) -> int:
    """The pair judged as `bench compare` judges two runs, on their own samples (no history)."""
    from attnbench.cli.compare import CompareRequest, compare

    return compare(
        CompareRequest(
            baseline=str(out / "baseline"),
            current=str(out / "candidate"),
            noise_runs=0,
            json=str(out / "compare.json"),
            markdown=out / "compare.md",
            threshold=args.threshold,
            alpha=args.alpha,
            fail_on_regression=args.fail_on_regression,
            allow_missing=args.allow_missing,
            print_json=args.json,
        )
    )
