"""attnbench.core.results: writing run folders and reading them back with schema checks."""

import errno
import json
import os
import signal
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from attnbench.core.errors import UserError, WriteFailed
from attnbench.core.record import CASE_SCHEMA, RUN_SCHEMA, CaseRecord, RunRecord
from attnbench.core.results import CASES_FILE, RUN_FILE, RunWriter, check_writable, load_run
from attnbench.core.stats import summarize


def run_dict(**changes):
    d = {
        "schema": RUN_SCHEMA,
        "run_id": "20240101-000000-smoke-abcd",
        "suite": "smoke",
        "started_at": "2024-01-01T00:00:00+00:00",
        "finished_at": None,
        "status": "running",
        "argv": ["bench", "run", "--suite", "smoke"],
        "git": {"commit": "deadbeef", "dirty": False},
        "host": {"hostname": "box", "physical_cores": 4},
        "packages": {"torch": "2.5.0"},
        "devices": [{"name": "cpu", "kind": "cpu"}],
        # fields added after the first version: optional
        "executor": "local",
        "sweep": {"variants": ["full.sdpa"], "seq_lens": [256]},
        "settings": {"max_time_per_case": 0.3},
        "cases_total": 2,
    }
    d.update(changes)
    return d


def case_dict(i=0, **changes):
    d = {
        "schema": CASE_SCHEMA,
        "run_id": "20240101-000000-smoke-abcd",
        "case_id": f"full.sdpa-cpu-n{256 + i}-0123456789",
        "variant": "full.sdpa",
        "family": "full",
        "params": {"causal": False},
        "backend": "cpu",
        "device": "cpu",
        "dtype": "float32",
        "mode": "forward",
        "batch": 1,
        "heads": 4,
        "head_dim": 32,
        "seq_len": 256 + i,
        "status": "ok",
        "reason": None,
        "time_s": summarize([0.001 * (i + 1)] * 6).to_json(),
        "compile_s": None,
        "tokens_per_s": 256000.0,
        "flops": 1.0e7,
        "flops_per_s": 1.0e10,
        "peak_memory_bytes": 4096,
        "memory_method": "rss",
        "energy_j": None,
        "energy_method": None,
        "energy_reason": "no counter",
        "stable": True,
        # fields added after the first version: optional
        "scope": "core",
        "threads": 2,
    }
    d.update(changes)
    return d


def write_folder(folder, run, lines_text):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RUN_FILE).write_text(json.dumps(run))
    if lines_text is not None:
        (folder / CASES_FILE).write_text(lines_text)


# ----------------------------------------------------------------------------- writing


def test_run_writer_creates_files(tmp_path):
    folder = tmp_path / "a" / "run"
    writer = RunWriter.create(folder, RunRecord.from_json(run_dict()))
    try:
        assert json.loads((folder / RUN_FILE).read_text()) == run_dict()
        assert (folder / CASES_FILE).read_text() == ""
        # The atomic write leaves no temporary file behind.
        assert sorted(p.name for p in folder.iterdir()) == [".lock", CASES_FILE, RUN_FILE]
    finally:
        writer.close()


def test_run_writer_save_replaces_run_json_atomically(tmp_path):
    folder = tmp_path / "run"
    writer = RunWriter.create(folder, RunRecord.from_json(run_dict()))
    try:
        before = (folder / RUN_FILE).stat().st_ino
        writer.save(replace(writer.run, status="complete"))
        # A new file renamed over the old one: readers see the old or the new, never a half.
        assert (folder / RUN_FILE).stat().st_ino != before
        assert json.loads((folder / RUN_FILE).read_text())["status"] == "complete"
        assert sorted(p.name for p in folder.iterdir()) == [".lock", CASES_FILE, RUN_FILE]
    finally:
        writer.close()


def test_run_writer_appends_case_lines(tmp_path):
    folder = tmp_path / "run"
    writer = RunWriter.create(folder, RunRecord.from_json(run_dict()))
    writer.append(CaseRecord.from_json(case_dict(0)))
    # Each line is on disk as soon as append returns, before close.
    assert (folder / CASES_FILE).read_text().count("\n") == 1
    writer.append(CaseRecord.from_json(case_dict(1)))
    writer.close()
    text = (folder / CASES_FILE).read_text()
    assert text.endswith("\n")
    lines = text.splitlines()
    assert [json.loads(line) for line in lines] == [case_dict(0), case_dict(1)]


def test_run_writer_reopen_appends(tmp_path):
    folder = tmp_path / "run"
    w = RunWriter.create(folder, RunRecord.from_json(run_dict()))
    w.append(CaseRecord.from_json(case_dict(0)))
    w.close()
    w = RunWriter(folder, RunRecord.from_json(run_dict()))
    w.append(CaseRecord.from_json(case_dict(1)))
    w.close()
    assert [c.seq_len for c in load_run(folder).cases] == [256, 257]


# ----------------------------------------------------------------------------- reading


def test_load_run_round_trip(tmp_path):
    folder = tmp_path / "run"
    writer = RunWriter.create(folder, RunRecord.from_json(run_dict()))
    writer.append(CaseRecord.from_json(case_dict(0)))
    writer.append(CaseRecord.from_json(case_dict(1, status="oom", reason="out of memory", time_s=None, stable=None)))
    writer.close()

    result = load_run(str(folder))  # a str path works too
    assert result.folder == folder
    run = result.run
    assert isinstance(run, RunRecord)
    assert run.schema == RUN_SCHEMA
    assert run.run_id == "20240101-000000-smoke-abcd"
    assert run.suite == "smoke"
    assert run.finished_at is None
    assert run.argv == ["bench", "run", "--suite", "smoke"]
    assert run.host["hostname"] == "box"
    assert run.devices == [{"name": "cpu", "kind": "cpu"}]
    assert run.executor == "local"
    assert run.sweep == {"variants": ["full.sdpa"], "seq_lens": [256]}
    assert run.settings == {"max_time_per_case": 0.3}
    assert run.cases_total == 2
    assert run.unknown == {}

    assert len(result.cases) == 2
    first, second = result.cases
    assert isinstance(first, CaseRecord)
    assert first.case_id == "full.sdpa-cpu-n256-0123456789"
    assert first.params == {"causal": False}
    assert first.seq_len == 256
    assert first.status == "ok"
    assert first.median_s == pytest.approx(0.001)
    assert (first.scope, first.threads, first.unknown) == ("core", 2, {})
    assert second.status == "oom"
    assert second.reason == "out of memory"
    assert second.median_s is None
    assert second.stable is None


def test_load_run_without_cases_file(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / RUN_FILE).write_text(json.dumps(run_dict()))
    result = load_run(folder)
    assert result.cases == []
    assert result.run.suite == "smoke"


def test_load_run_skips_blank_lines(tmp_path):
    folder = tmp_path / "run"
    write_folder(folder, run_dict(), json.dumps(case_dict(0)) + "\n\n" + json.dumps(case_dict(1)) + "\n")
    assert [c.seq_len for c in load_run(folder).cases] == [256, 257]


def test_missing_run_json(tmp_path):
    with pytest.raises(UserError) as e:
        load_run(tmp_path)
    msg = str(e.value)
    assert str(tmp_path) in msg
    assert "run.json is missing" in msg


def test_run_json_not_json(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / RUN_FILE).write_text('{"schema": "attnbench.run/1",\n  oops\n}')
    with pytest.raises(UserError) as e:
        load_run(folder)
    assert str(folder / RUN_FILE) in str(e.value)
    assert "line 2" in str(e.value)


def test_unknown_run_schema_refused(tmp_path):
    folder = tmp_path / "run"
    write_folder(folder, run_dict(schema="attnbench.run/2"), "")
    with pytest.raises(UserError) as e:
        load_run(folder)
    msg = str(e.value)
    assert str(folder / RUN_FILE) in msg
    assert "'attnbench.run/2'" in msg
    assert RUN_SCHEMA in msg  # what it can read


def test_missing_run_schema_refused(tmp_path):
    folder = tmp_path / "run"
    run = run_dict()
    del run["schema"]
    write_folder(folder, run, "")
    with pytest.raises(UserError, match="schema None"):
        load_run(folder)


def test_unknown_case_schema_refused(tmp_path):
    folder = tmp_path / "run"
    lines = [json.dumps(case_dict(0)), json.dumps(case_dict(1, schema="attnbench.case/9"))]
    write_folder(folder, run_dict(), "\n".join(lines) + "\n")
    with pytest.raises(UserError) as e:
        load_run(folder)
    msg = str(e.value)
    assert f"{folder / CASES_FILE}:2" in msg  # the file and the line
    assert "'attnbench.case/9'" in msg
    assert CASE_SCHEMA in msg


def test_missing_field_refused(tmp_path):
    folder = tmp_path / "run"
    case = case_dict(0)
    del case["seq_len"]
    write_folder(folder, run_dict(), json.dumps(case) + "\n")
    with pytest.raises(UserError) as e:
        load_run(folder)
    assert f"{folder / CASES_FILE}:1" in str(e.value)
    assert "seq_len" in str(e.value)


def test_torn_last_line_ignored(tmp_path):
    folder = tmp_path / "run"
    good = [json.dumps(case_dict(0)), json.dumps(case_dict(1))]
    torn = json.dumps(case_dict(2))[:57]  # a run killed mid-write: no trailing newline
    write_folder(folder, run_dict(), "\n".join(good) + "\n" + torn)
    cases = load_run(folder).cases
    assert [c.seq_len for c in cases] == [256, 257]


@pytest.mark.parametrize("fragment_len", [1, 57, None])  # None: a fragment with no newline before it at all
def test_writing_again_after_a_torn_line_sets_the_fragment_aside(tmp_path, fragment_len):
    """A resume appends to cases.jsonl: after a torn last line, gluing the next record to the
    fragment made every reader fail ("cases.jsonl:3 is not valid JSON"). The writer moves the
    fragment to cases.jsonl.torn first; its case was never recorded, so the resume runs it again."""
    folder = tmp_path / "run"
    good = "" if fragment_len is None else json.dumps(case_dict(0)) + "\n" + json.dumps(case_dict(1)) + "\n"
    torn = json.dumps(case_dict(2))[: fragment_len or 30]
    write_folder(folder, run_dict(), good + torn)
    writer = RunWriter(folder, load_run(folder).run)
    assert writer.torn == len(torn)
    writer.append(CaseRecord.from_json(case_dict(3)))
    writer.close()
    expected = [259] if fragment_len is None else [256, 257, 259]
    assert [c.seq_len for c in load_run(folder).cases] == expected
    assert (folder / CASES_FILE).read_text().endswith("\n")
    assert (folder / (CASES_FILE + ".torn")).read_text() == torn + "\n"  # kept, not dropped


def test_writing_again_after_a_whole_last_line_keeps_everything(tmp_path):
    folder = tmp_path / "run"
    write_folder(folder, run_dict(), json.dumps(case_dict(0)) + "\n")
    writer = RunWriter(folder, load_run(folder).run)
    assert writer.torn == 0
    writer.close()
    assert len(load_run(folder).cases) == 1
    assert not (folder / (CASES_FILE + ".torn")).exists()


def test_a_second_writer_is_refused_naming_the_first(tmp_path):
    folder = tmp_path / "run"
    write_folder(folder, run_dict(), "")
    first = RunWriter(folder, load_run(folder).run)
    with pytest.raises(UserError) as e:
        RunWriter(folder, load_run(folder).run)
    assert f"pid {os.getpid()} on host" in str(e.value) and "--out" in str(e.value)
    first.close()
    RunWriter(folder, load_run(folder).run).close()  # free again once the first is done


def test_a_dead_writers_lock_is_taken_over(tmp_path):
    # The kernel drops a flock with its holder, however it dies: a SIGKILLed writer's lock
    # file still names it, and the next writer takes the folder over.
    folder = tmp_path / "run"
    write_folder(folder, run_dict(), "")
    code = (
        "import os, sys; from pathlib import Path; from attnbench.core.results import RunLock; "
        "RunLock(Path(sys.argv[1])); os.kill(os.getpid(), 9)"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(folder)], check=False)
    assert proc.returncode == -signal.SIGKILL
    assert "pid" in (folder / ".lock").read_text()  # the dead holder's note is still there
    RunWriter(folder, load_run(folder).run).close()


def test_a_failed_write_raises_write_failed_and_leaves_no_temp_file(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    write_folder(folder, run_dict(), "")
    writer = RunWriter(folder, load_run(folder).run)

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(WriteFailed, match="No space left on device"):
        writer.append(CaseRecord.from_json(case_dict(0)))
    monkeypatch.undo()

    def fsync_fails(fd):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    monkeypatch.setattr(os, "fsync", fsync_fails)
    with pytest.raises(WriteFailed, match=str(folder / RUN_FILE)):
        writer.save()
    monkeypatch.undo()
    writer.close()
    assert sorted(p.name for p in folder.iterdir()) == [".lock", CASES_FILE, RUN_FILE]


def test_files_follow_the_umask(tmp_path):
    folder = tmp_path / "run"
    old = os.umask(0o027)
    try:
        writer = RunWriter.create(folder, RunRecord.from_json(run_dict()))
        writer.append(CaseRecord.from_json(case_dict(0)))
        writer.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((folder / RUN_FILE).stat().st_mode) == 0o640
    assert stat.S_IMODE((folder / CASES_FILE).stat().st_mode) == 0o640


def test_writes_never_follow_a_planted_symlink(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / ".write-probe").symlink_to(victim)  # the name the probe used to write through
    check_writable(folder)
    write_folder(folder, run_dict(), None)
    (folder / CASES_FILE).symlink_to(victim)
    with pytest.raises(UserError, match="symbolic link"):
        RunWriter(folder, RunRecord.from_json(run_dict()))
    assert victim.read_text() == "precious\n"


def test_damaged_middle_line_refused(tmp_path):
    folder = tmp_path / "run"
    lines = [json.dumps(case_dict(0)), json.dumps(case_dict(1))[:40], json.dumps(case_dict(2))]
    write_folder(folder, run_dict(), "\n".join(lines) + "\n")
    with pytest.raises(UserError) as e:
        load_run(folder)
    assert f"{folder / CASES_FILE}:2 is not valid JSON" in str(e.value)


def test_torn_line_with_newline_is_damage(tmp_path):
    # Only a line lacking its newline can be a write cut short; with one, the file is damaged.
    folder = tmp_path / "run"
    write_folder(folder, run_dict(), json.dumps(case_dict(0)) + "\n" + json.dumps(case_dict(1))[:40] + "\n")
    with pytest.raises(UserError, match="is not valid JSON"):
        load_run(folder)


def test_case_line_not_an_object_refused(tmp_path):
    folder = tmp_path / "run"
    write_folder(folder, run_dict(), json.dumps(case_dict(0)) + "\n[1, 2]\n")
    with pytest.raises(UserError):
        load_run(folder)


# ----------------------------------------------------------------------------- check_writable


def test_check_writable_creates_folder(tmp_path):
    folder = tmp_path / "x" / "y"
    check_writable(folder)
    assert folder.is_dir()
    assert list(folder.iterdir()) == []  # the probe is removed


def test_check_writable_under_regular_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    folder = blocker / "run"
    with pytest.raises(UserError) as e:
        check_writable(folder)
    msg = str(e.value)
    assert str(folder) in msg
    assert "--out" in msg
    assert "Not a directory" in msg


def test_check_writable_under_proc():
    # /proc refuses new entries, even to root.
    with pytest.raises(UserError, match=r"cannot write results to /proc/attnbench-test/run: .*--out"):
        check_writable(Path("/proc/attnbench-test/run"))


def test_check_writable_folder_is_a_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("keep")
    with pytest.raises(UserError, match="cannot write results to"):
        check_writable(blocker)
    assert blocker.read_text() == "keep"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only folders")
def test_check_writable_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(UserError, match="cannot write results to"):
            check_writable(folder)
    finally:
        folder.chmod(0o700)


def test_non_finite_figures_are_written_as_null_with_the_reason(tmp_path):
    folder = tmp_path / "run"
    writer = RunWriter.create(folder, RunRecord.from_json(run_dict()))
    rec = CaseRecord.from_json(case_dict(0))
    writer.append(replace(rec, flops_per_s=float("inf"), energy_j=float("nan")))
    writer.close()
    text = (folder / CASES_FILE).read_text()
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert data["flops_per_s"] is None and data["energy_j"] is None
    assert "flops_per_s was inf, written as null" in data["notes"]
    assert "energy_j was nan, written as null" in data["notes"]


def test_a_record_torn_at_any_byte_is_set_aside_and_the_rest_kept(tmp_path):
    """A write cut at every possible byte of the last record: the whole records before it are
    kept, the fragment goes to cases.jsonl.torn byte for byte, and the next append is clean."""
    whole = json.dumps(case_dict(0)) + "\n" + json.dumps(case_dict(1)) + "\n"
    last = json.dumps(case_dict(2)) + "\n"
    for cut in range(1, len(last)):  # cut == len(last) is a whole record
        folder = tmp_path / f"cut{cut}"
        write_folder(folder, run_dict(), whole + last[:cut])
        writer = RunWriter(folder, RunRecord.from_json(run_dict()))
        writer.append(CaseRecord.from_json(case_dict(3)))
        writer.close()
        assert [c.seq_len for c in load_run(folder).cases] == [256, 257, 259], cut
        assert (folder / (CASES_FILE + ".torn")).read_text() == last[:cut] + "\n", cut
