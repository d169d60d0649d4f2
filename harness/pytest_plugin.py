"""pytest plugin (entry point `pytest11: attnbench`): a suite's cases as pytest-benchmark benchmarks.

    pytest --attnbench-suite nightly --benchmark-json out.json --benchmark-only

Each case becomes one test item that uses the `benchmark` fixture, but is measured the
harness's way: in a fresh worker process (from the same fork server `bench run` uses),
verified against its float64 reference, warmed up and sampled with the backend's own
clock and synchronisation. The raw samples are handed to pytest-benchmark as rounds
(`iterations` = calls per sample), so its tables, `--benchmark-json`, `--benchmark-compare`
and storage work as usual, and the attnbench identity (case_id, workload_hash, memory)
travels in `extra_info`, which `bench history ingest out.json` reads back.

Without --attnbench-suite the plugin does nothing. Other tests collected in the same
session still run; add --benchmark-only to run the suite alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from attnbench.core.record import CaseRecord

_STATE_KEY = "_attnbench_state"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("attnbench", "attnbench suites as pytest-benchmark benchmarks")
    group.addoption("--attnbench-suite", metavar="SUITE", help="built-in suite name or .toml path to benchmark")
    group.addoption(
        "--attnbench-max-time", type=float, metavar="S", help="seconds of sampling per case (overrides the suite)"
    )
    group.addoption("--attnbench-variants", metavar="LIST", help="comma list of variants (overrides the suite)")
    group.addoption("--attnbench-seq-lens", metavar="LIST", help="comma list of sequence lengths (overrides the suite)")


class _Session:
    """The suite's cases and one executor (fork server) shared by all items of the session."""

    def __init__(self, config: pytest.Config) -> None:
        import os

        from attnbench.core.errors import UserError
        from attnbench.core.registry import PLUGINS_ENV
        from attnbench.core.settings import RunSettings
        from attnbench.engine.runner import new_run_id
        from attnbench.engine.suites import Overrides, load_suite, resolve

        def csv(text: str | None) -> list[str] | None:
            return [t.strip() for t in text.split(",") if t.strip()] if text else None

        name = config.getoption("attnbench_suite")
        try:
            spec = load_suite(name)
            sweep, suite_settings = resolve(
                spec,
                Overrides(
                    variants=csv(config.getoption("attnbench_variants")),
                    seq_lens=csv(config.getoption("attnbench_seq_lens")),
                    max_time_per_case=config.getoption("attnbench_max_time"),
                ),
            )
            # One pass per case: pytest runs a case's test at once, so there is no sweep to
            # spread passes over, and the case keeps the suite's whole sampling budget.
            suite_settings["passes"] = 1
            self.settings = RunSettings(**suite_settings, plugins=os.environ.get(PLUGINS_ENV, ""))
        except UserError as exc:
            raise pytest.UsageError(f"--attnbench-suite {name}: {exc}") from None
        from attnbench.engine.expand import expand

        self.suite = spec.name
        self.cases = expand(sweep)
        self.run_id = new_run_id(f"pytest-{spec.name}")
        self._executor: Any = None
        self.devices: list[dict[str, Any]] = []

    def executor(self) -> Any:
        if self._executor is None:
            from attnbench.engine.executors.local import LocalExecutor

            self._executor = LocalExecutor(self.settings)
            self._executor.warm()
        return self._executor

    def measure(self, case: Any) -> CaseRecord:
        from attnbench.engine.runner import finish_record

        outcome = self.executor().run(case)
        device = outcome.result.device if outcome.status == "ok" else None
        if device and device not in self.devices:
            self.devices.append(device)
        return finish_record(self.run_id, case, outcome)


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("attnbench_suite", None):
        config.addinivalue_line("markers", "attnbench: a case of an attnbench suite (added by --attnbench-suite)")


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_json(config: pytest.Config, benchmarks: Any, output_json: dict[str, Any]) -> None:
    """The attnbench fingerprint of the session in each benchmark's extra_info["run"], written
    once every case has run (so it names every device), so `bench history ingest` of the JSON
    knows the host, library versions and devices. machine_info stays exactly pytest-benchmark's:
    an extra key there makes `--benchmark-compare` warn that the machines differ, every time."""
    state = getattr(config, _STATE_KEY, None)
    if state is None:
        return
    from attnbench.core.environment import fingerprint

    env = fingerprint()
    run = {
        "run_id": state.run_id,
        "suite": state.suite,
        "host": env["host"],
        "packages": env["packages"],
        "devices": state.devices,
        "settings": state.settings.to_json(),
    }
    for bench in output_json.get("benchmarks", []):
        if isinstance(bench, dict) and isinstance(bench.get("extra_info"), dict) and "case_id" in bench["extra_info"]:
            bench["extra_info"]["run"] = run


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("attnbench_suite", None):
        return
    state = _Session(config)
    setattr(config, _STATE_KEY, state)
    parent = _SuiteCollector.from_parent(session, name=f"attnbench[{state.suite}]")
    for case in state.cases:
        item = pytest.Function.from_parent(parent, name=case.case_id, callobj=_make_test(state, case))
        item.add_marker("attnbench")
        items.append(item)


class _SuiteCollector(pytest.Collector):
    """The parent node of the suite's items (they are made from the suite, not from files)."""

    def collect(self) -> list[pytest.Item]:  # pragma: no cover - items are added directly
        return []


def _make_test(state: _Session, case: Any) -> Any:
    def test_case(benchmark: Any) -> None:
        record = state.measure(case)
        if record.status in ("unsupported", "skipped"):
            pytest.skip(f"{case.label()}: {record.reason}")
        if record.status != "ok":
            benchmark.has_error = True
            pytest.fail(f"{case.label()}: {record.status}: {record.reason}", pytrace=False)
        feed_benchmark(benchmark, record)

    test_case.__doc__ = case.label()
    return test_case


def feed_benchmark(benchmark: Any, rec: CaseRecord) -> None:
    """Hand the harness's measurement to a pytest-benchmark fixture as if it had timed it.

    pytest-benchmark has no public API for externally timed rounds; its fixture's
    `_make_stats(iterations)` and the returned object's `update(duration)` are what its own
    `pedantic` mode uses, stable since pytest-benchmark 3.
    """
    from attnbench.analysis.exporters import extra_info

    benchmark.group = f"{rec.variant} {rec.backend}/{rec.dtype}/{rec.mode}/{rec.scope}"
    benchmark.extra_info.update(extra_info(rec))
    benchmark._mode = "attnbench (harness-timed)"  # a second use of the fixture is an error, as in pytest-benchmark
    calls = int(rec.calls_per_sample or 1)
    stats = benchmark._make_stats(calls)
    for per_call in rec.samples:
        stats.update(per_call * calls)  # pytest-benchmark divides by iterations again
