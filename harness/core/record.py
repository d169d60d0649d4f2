"""The result format: the run record (run.json) and the case record (one line of cases.jsonl).

This module is the one owner of both. It says which fields a record has and of what type,
in which order they are written, when a field may be left out of the JSON, the schema
versions, and how each version is read. Every other module builds and reads records
through these classes: adding a field means adding it here (and to docs/schema/).
docs/result-format.md describes the format for people, docs/schema/*.schema.json for tools.

The JSON keeps one key order, the order of the fields below, so a record read and written
again is the same text. Keys another tool added that this project does not know are kept in
`unknown` and written back after the known ones; no project code reads them.

Reading is per schema version (RUN_READERS, CASE_READERS). Records written by attnbench 0.1.0
are `attnbench.run/1` and `attnbench.case/1` too; a field added since is given its default
when missing, noted in `not_recorded` (`recorded(name)` is False), and left out again when the
record is written back with that default: an old record stays as it was.
A schema this module has no reader for is refused with one clear line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, ClassVar, TypeVar

from attnbench.core.cases import Case
from attnbench.core.errors import UserError
from attnbench.core.stats import TimeStats

RUN_SCHEMA = "attnbench.run/1"
CASE_SCHEMA = "attnbench.case/1"
CASE_STATUSES = ("ok", "oom", "timeout", "error", "unsupported", "skipped")
RUN_STATUSES = ("running", "interrupted", "complete")

# When a field's key is written (the field's metadata "written"):
ALWAYS = "always"  # in every record; None is written as null
WHEN_SET = "when set"  # left out while the value is None
WHEN_OK = "when ok"  # a case's measurement details: written (null when None) exactly when its status is ok
WHEN_RAN = "when ran"  # a case that reached a worker (worker is not None): refused cases have neither key


# ... as dataclass field metadata; M_NOT_JSON: not a key of the record. A field without a
# default is required: a stored record lacking it is refused as damaged.
M_ALWAYS = {"written": ALWAYS}
M_WHEN_SET = {"written": WHEN_SET}
M_WHEN_OK = {"written": WHEN_OK}
M_WHEN_RAN = {"written": WHEN_RAN}
M_NOT_JSON = {"written": None}


# ----------------------------------------------------------------------------- time_s

TIME_FIELDS = tuple(f.name for f in fields(TimeStats))


def time_stats_from_json(data: Any, where: str) -> TimeStats:
    """A stored time_s (attnbench.core.stats.TimeStats.to_json) back into TimeStats."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: time_s holds a JSON {type(data).__name__}, not an object; the file is damaged")
    missing = [k for k in TIME_FIELDS if k not in data]
    if missing:
        raise UserError(f"{where}: time_s lacks {', '.join(missing)}; the file is damaged")
    return TimeStats(**{k: data[k] for k in TIME_FIELDS if k != "samples"}, samples=tuple(data["samples"]))


def _encode(value: Any) -> Any:
    return value.to_json() if isinstance(value, TimeStats) else value


def _decode(name: str, value: Any, where: str) -> Any:
    return time_stats_from_json(value, where) if name == "time_s" and value is not None else value


# ----------------------------------------------------------------------------- what both records share


class JsonRecord:
    """What the run and the case record share: which fields their writer knew, and JSON both
    ways through the reader of the record's schema version (READERS, filled in below)."""

    KIND: ClassVar[str]  # "run" or "case"
    not_recorded: frozenset[str]

    def recorded(self, name: str) -> bool:
        """False for a field the version that wrote this record did not have yet (e.g. a case's
        pattern before 0.2.0): its value is the default, not something measured."""
        return name not in self.not_recorded

    def to_json(self) -> dict[str, Any]:
        return _to_json(self)

    @classmethod
    def from_json(cls: type[J], data: Any, where: str | None = None) -> J:
        """A record from its JSON, by the reader of its schema version."""
        where = where or f"{cls.KIND} record"
        return _reader(data, READERS[cls.KIND], where)(data, where)


J = TypeVar("J", bound=JsonRecord)


# ----------------------------------------------------------------------------- the run record


@dataclass(frozen=True, kw_only=True)
class RunRecord(JsonRecord):
    """run.json: what was run, where, with which settings, and how far it got."""

    KIND: ClassVar[str] = "run"

    schema: str = field(default=RUN_SCHEMA, metadata=M_ALWAYS)
    run_id: str = field(metadata=M_ALWAYS)  # <yyyymmdd-hhmmss>-<suite>-<4 hex>
    suite: str = field(metadata=M_ALWAYS)
    started_at: str = field(metadata=M_ALWAYS)  # ISO 8601, UTC
    finished_at: str | None = field(metadata=M_ALWAYS)  # None until the run is complete
    status: str = field(metadata=M_ALWAYS)  # RUN_STATUSES
    argv: list[str] = field(metadata=M_ALWAYS)  # the command line, from "bench" on
    git: dict[str, Any] = field(metadata=M_ALWAYS)  # {"commit": str | None, "dirty": bool | None}
    # attnbench.core.environment.host_info(): hostname, os, cpu, cores, memory
    host: dict[str, Any] = field(metadata=M_ALWAYS)
    packages: dict[str, Any] = field(metadata=M_ALWAYS)  # package -> version (None: not installed)
    devices: list[dict[str, Any]] = field(metadata=M_ALWAYS)  # one backend.describe() per backend that ran a case
    executor: str | None = field(default=None, metadata=M_WHEN_SET)  # local | ray; absent in runs from before Ray
    sweep: dict[str, Any] | None = field(default=None, metadata=M_WHEN_SET)  # attnbench.core.cases.Sweep.to_json()
    # attnbench.core.settings.RunSettings.to_json()
    settings: dict[str, Any] | None = field(default=None, metadata=M_WHEN_SET)
    # cases the sweep expands to; None before expansion
    cases_total: int | None = field(default=None, metadata=M_ALWAYS)
    resumed_at: list[str] = field(default_factory=list, metadata=M_ALWAYS)  # the command line of each --resume
    suite_notes: str | None = field(default=None, metadata=M_ALWAYS)  # how the run differs from what its suite mirrors
    # the published dataset a reference suite compares with
    reference: str | None = field(default=None, metadata=M_ALWAYS)
    # bench ab: {group, side, checkout, turns, imported: {import name: folder its code came from}}
    interleaved: dict[str, Any] | None = field(default=None, metadata=M_WHEN_SET)
    # --executor ray: RayOptions.to_json()
    ray_options: dict[str, Any] | None = field(default=None, metadata=M_WHEN_SET)
    # seconds the executor took to get ready
    worker_server_start_s: float | None = field(default=None, metadata=M_WHEN_SET)
    # --executor ray: the cluster as the run found it
    ray: dict[str, Any] | None = field(default=None, metadata=M_WHEN_SET)
    # each machine once: describe_node() + devices, cases
    nodes: list[dict[str, Any]] | None = field(default=None, metadata=M_WHEN_SET)
    # a run imported from another tool's file: that file
    imported_from: str | None = field(default=None, metadata=M_WHEN_SET)
    # an imported run: the pytest-benchmark that wrote its file
    pytest_benchmark_version: str | None = field(default=None, metadata=M_WHEN_SET)
    unknown: dict[str, Any] = field(default_factory=dict, metadata=M_NOT_JSON)  # keys the project does not know
    not_recorded: frozenset[str] = field(default_factory=frozenset, metadata=M_NOT_JSON)  # see recorded()


# ----------------------------------------------------------------------------- the case record


@dataclass(frozen=True, kw_only=True)
class CaseRecord(JsonRecord):
    """One case of a run: what was measured (its identity and analytic figures) and what came of it."""

    KIND: ClassVar[str] = "case"

    schema: str = field(default=CASE_SCHEMA, metadata=M_ALWAYS)
    run_id: str = field(metadata=M_ALWAYS)
    case_id: str = field(metadata=M_ALWAYS)  # attnbench.core.cases.Case.case_id of the fields below
    variant: str = field(metadata=M_ALWAYS)
    family: str = field(metadata=M_ALWAYS)
    params: dict[str, Any] = field(metadata=M_ALWAYS)  # the variant's resolved parameters
    derived_params: list[str] = field(default_factory=list, metadata=M_ALWAYS)  # parameters that follow from the length
    # source and configuration of what was measured; records before definition_hash compare by it
    workload_hash: str | None = field(default=None, metadata=M_ALWAYS)
    scope: str = field(default="core", metadata=M_ALWAYS)  # core | layer
    backend: str = field(metadata=M_ALWAYS)
    device: str | None = field(metadata=M_ALWAYS)  # the device's name; None when the case never ran
    dtype: str = field(metadata=M_ALWAYS)
    mode: str = field(metadata=M_ALWAYS)  # forward | train
    batch: int = field(metadata=M_ALWAYS)
    heads: int = field(metadata=M_ALWAYS)
    head_dim: int = field(metadata=M_ALWAYS)
    seq_len: int = field(metadata=M_ALWAYS)
    threads: int | None = field(default=None, metadata=M_ALWAYS)  # None: the backend's default
    transform: str = field(default="none", metadata=M_ALWAYS)
    # what the transform did (kernels, heads, ...)
    transform_details: dict[str, Any] | None = field(default=None, metadata=M_ALWAYS)
    # {rel_err, cosine, tolerance, within, ...}
    fidelity: dict[str, Any] | None = field(default=None, metadata=M_ALWAYS)
    status: str = field(metadata=M_ALWAYS)  # CASE_STATUSES
    reason: str | None = field(metadata=M_ALWAYS)  # why the status is not ok
    time_s: TimeStats | None = field(metadata=M_ALWAYS)  # seconds per call
    compile_s: float | None = field(metadata=M_ALWAYS)
    tokens_per_s: float | None = field(metadata=M_ALWAYS)
    flops: float | None = field(metadata=M_ALWAYS)  # useful FLOPs per call
    flops_per_s: float | None = field(metadata=M_ALWAYS)
    # FLOPs the kernels execute, masked work included
    flops_executed: float | None = field(default=None, metadata=M_ALWAYS)
    peak_memory_bytes: int | None = field(metadata=M_ALWAYS)
    memory_method: str | None = field(metadata=M_ALWAYS)
    analytic_min_bytes: int | None = field(default=None, metadata=M_ALWAYS)  # bytes a call must move at least
    energy_j: float | None = field(metadata=M_ALWAYS)  # per call
    energy_method: str | None = field(metadata=M_ALWAYS)
    energy_reason: str | None = field(metadata=M_ALWAYS)  # why energy_j is None
    energy_per_token_j: float | None = field(default=None, metadata=M_ALWAYS)
    stable: bool | None = field(metadata=M_ALWAYS)  # None when not ok
    # {pid, exitcode, wall_s, overhead_s, other_cpu_share, ...}
    worker: dict[str, Any] | None = field(default=None, metadata=M_WHEN_RAN)
    traceback: str | None = field(default=None, metadata=M_WHEN_SET)
    # what the workload counted (e.g. ACT's steps)
    workload_metrics: dict[str, Any] | None = field(default=None, metadata=M_WHEN_OK)
    analytic_flops: float | None = field(default=None, metadata=M_WHEN_SET)  # flops before workload_metrics replaced it
    analytic_flops_executed: float | None = field(default=None, metadata=M_WHEN_SET)  # ... and flops_executed
    bytes_per_s: float | None = field(default=None, metadata=M_WHEN_OK)  # analytic_min_bytes over the median
    fraction_of_peak: dict[str, Any] | None = field(default=None, metadata=M_WHEN_OK)  # {flops, bytes, source, reason}
    memory_reason: str | None = field(default=None, metadata=M_WHEN_SET)  # why peak_memory_bytes is None
    first_call_s: float | None = field(default=None, metadata=M_WHEN_OK)
    warmup: dict[str, Any] | None = field(default=None, metadata=M_WHEN_OK)  # {calls, seconds}
    calls_per_sample: int | None = field(default=None, metadata=M_WHEN_OK)
    converged: bool | None = field(default=None, metadata=M_WHEN_OK)  # the median's CI reached the target
    stop_reason: str | None = field(default=None, metadata=M_WHEN_OK)
    notes: list[str] | None = field(default=None, metadata=M_WHEN_OK)
    clock: str | None = field(default=None, metadata=M_WHEN_OK)
    sync: str | None = field(default=None, metadata=M_WHEN_OK)
    backend_settings: dict[str, Any] | None = field(default=None, metadata=M_WHEN_OK)  # e.g. {threads, interop_threads}
    # {verified, seq_len, max_abs_err, tolerance} or reason
    verification: dict[str, Any] | None = field(default=None, metadata=M_WHEN_OK)
    prepare_s: float | None = field(default=None, metadata=M_WHEN_SET)
    memory_details: dict[str, Any] | None = field(default=None, metadata=M_WHEN_SET)
    energy_details: dict[str, Any] | None = field(default=None, metadata=M_WHEN_SET)
    attention_ops: dict[str, int] | None = field(default=None, metadata=M_WHEN_SET)  # kernel name -> calls per step
    backend_details: dict[str, Any] | None = field(default=None, metadata=M_WHEN_SET)
    # --profile: {status, dir, files, top_ops, steps, worker}
    profile: dict[str, Any] | None = field(default=None, metadata=M_WHEN_SET)
    # attnbench.core.machine_check.record()
    machine_check: dict[str, Any] | None = field(default=None, metadata=M_WHEN_SET)
    # passes > 1: attnbench.engine.passes.pass_summary()
    passes: list[dict[str, Any]] | None = field(default=None, metadata=M_WHEN_SET)
    block_samples: list[int] | None = field(default=None, metadata=M_WHEN_SET)  # bench ab: samples per block turn
    # bench ab: {blocks, waited_s, turn_s, other_cpu_share, ...}
    turns: dict[str, Any] | None = field(default=None, metadata=M_WHEN_SET)
    # attnbench.core.pattern_grid.PatternGrid.to_json(); None: nothing to draw
    pattern: dict[str, Any] | None = field(default=None, metadata=M_WHEN_OK)
    # --quality approx: the design's output against exact full attention on structured inputs
    # (attnbench.engine.approx_quality.approx_figures), or {"unavailable": reason}
    approx_quality: dict[str, Any] | None = field(default=None, metadata=M_WHEN_SET)
    revision: int = field(default=1, metadata=M_ALWAYS)  # the variant's definition revision (Case.revision)
    # parameters at the value that reproduces the definition from before they existed (Case.neutral_params)
    neutral_params: list[str] = field(default_factory=list, metadata=M_ALWAYS)
    # what the case computes (decides comparability) and how (attnbench.engine.identity)
    definition_hash: str | None = field(default=None, metadata=M_ALWAYS)
    implementation_hash: str | None = field(default=None, metadata=M_ALWAYS)
    # the code that computed the attention (attnbench.workloads.impls); records before it: native
    impl: str = field(default="native", metadata=M_ALWAYS)
    # attnbench.core.nodes.case_node(); None: it reached none
    node: dict[str, Any] | None = field(default=None, metadata=M_WHEN_RAN)
    wall_s: float | None = field(default=None, metadata=M_WHEN_SET)  # driver seconds for the case, queueing included
    finished_at: str | None = field(default=None, metadata=M_WHEN_SET)  # ISO 8601, UTC
    # imported: {name, fullname, group}
    pytest_benchmark: dict[str, Any] | None = field(default=None, metadata=M_WHEN_SET)
    unknown: dict[str, Any] = field(default_factory=dict, metadata=M_NOT_JSON)  # keys the project does not know
    not_recorded: frozenset[str] = field(default_factory=frozenset, metadata=M_NOT_JSON)  # see recorded()

    @property
    def median_s(self) -> float | None:
        return self.time_s.median if self.time_s else None

    @property
    def samples(self) -> list[float]:
        """Seconds per call of each sample; none when the case has no timing."""
        return list(self.time_s.samples) if self.time_s else []

    @property
    def other_cpu_share(self) -> float | None:
        """The largest share of the CPU other processes took while the case was timed."""
        share = (self.worker or {}).get("other_cpu_share")
        return float(share) if isinstance(share, (int, float)) else None

    def case(self) -> Case:
        """The case this record measured (its case_id is the record's, for records of this project)."""
        return Case(
            self.variant,
            tuple(sorted(self.params.items())),
            self.scope,
            self.backend,
            self.dtype,
            self.mode,
            self.batch,
            self.heads,
            self.head_dim,
            self.seq_len,
            self.threads,
            self.transform,
            self.revision,
            tuple(self.neutral_params),
            self.impl,
        )

    def with_measurement(self, m: Measurement) -> CaseRecord:
        """This record with what the workers measured: every field the two share, by name.
        Figures derived from them (rates, fraction of peak) are the runner's to add."""
        shared = {name: getattr(m, name) for name in _SHARED}
        shared["workload_metrics"] = m.workload_metrics or {}
        shared["memory_reason"] = m.memory_reason or None
        return replace(self, device=m.device.get("name"), **shared)


def case_fields(case: Case) -> dict[str, Any]:
    """A case's own fields as a record holds them (params as a dict): the inverse of CaseRecord.case()."""
    record = {f.name: getattr(case, f.name) for f in fields(Case)}
    record["params"] = case.params_dict
    record["neutral_params"] = list(case.neutral_params)
    return record


# ----------------------------------------------------------------------------- what the workers hand back


@dataclass(frozen=True, kw_only=True)
class MemoryMeasurement:
    """The memory worker's reading (attnbench.engine.worker.measure_memory)."""

    peak_memory_bytes: int | None
    memory_method: str | None
    memory_reason: str | None
    memory_details: dict[str, Any] | None
    attention_ops: dict[str, int] | None = None  # recorded there when the timing worker cannot
    pattern: dict[str, Any] | None = None  # attnbench.engine.patterns.pattern_of(case)
    approx_quality: dict[str, Any] | None = None  # --quality approx: attnbench.engine.approx_quality


@dataclass(frozen=True, kw_only=True)
class Measurement:
    """What the timing worker hands back for a case that ran (attnbench.engine.worker.measure_time),
    completed by the memory worker, --profile and later passes. A field named like a CaseRecord
    field goes into the record as it is (CaseRecord.with_measurement)."""

    device: dict[str, Any]  # backend.describe(): name, kind, peaks, ...
    backend_settings: dict[str, Any]
    verification: dict[str, Any]
    time_s: TimeStats
    compile_s: float | None
    prepare_s: float | None
    first_call_s: float
    warmup: dict[str, Any]
    calls_per_sample: int
    block_samples: list[int] | None
    turns: dict[str, Any] | None
    machine_check: dict[str, Any] | None
    converged: bool
    stable: bool
    stop_reason: str
    notes: list[str]
    clock: str
    sync: str
    energy_j: float | None
    energy_method: str | None
    energy_reason: str | None
    energy_details: dict[str, Any] | None
    attention_ops: dict[str, int] | None
    backend_details: dict[str, Any] | None
    workload_metrics: dict[str, Any] | None
    transform: str  # the transform applied: the case's
    transform_details: dict[str, Any] | None
    fidelity: dict[str, Any] | None
    # Filled in from the memory worker (with_memory), which runs once per case.
    pattern: dict[str, Any] | None = None
    peak_memory_bytes: int | None = None
    memory_method: str | None = None
    memory_reason: str | None = None
    memory_details: dict[str, Any] | None = None
    profile: dict[str, Any] | None = None
    passes: list[dict[str, Any]] | None = None
    approx_quality: dict[str, Any] | None = None

    def with_memory(self, memory: MemoryMeasurement) -> Measurement:
        ops = memory.attention_ops if memory.attention_ops is not None else self.attention_ops
        return replace(
            self,
            peak_memory_bytes=memory.peak_memory_bytes,
            memory_method=memory.memory_method,
            memory_reason=memory.memory_reason,
            memory_details=memory.memory_details,
            attention_ops=ops,
            pattern=memory.pattern,
            approx_quality=memory.approx_quality,
        )

    def without_memory(self, reason: str) -> Measurement:
        return replace(self, peak_memory_bytes=None, memory_method=None, memory_reason=reason)

    def to_json(self) -> dict[str, Any]:
        """For passes.jsonl (attnbench.engine.passes), which keeps finished passes across a resume."""
        return {f.name: _encode(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Measurement:
        known = {f.name for f in fields(cls)}
        return cls(**{k: _decode(k, v, "passes.jsonl") for k, v in data.items() if k in known})


_CASE_FIELDS = {f.name for f in fields(CaseRecord)}
_SHARED = tuple(f.name for f in fields(Measurement) if f.name in _CASE_FIELDS and f.name != "device")


# ----------------------------------------------------------------------------- reading and writing

R = TypeVar("R", RunRecord, CaseRecord)


def _default(f: Any) -> Any:
    return f.default if f.default is not MISSING else f.default_factory()


def _written(record: Any, name: str, rule: str) -> bool:
    if rule == ALWAYS:
        return True
    if rule == WHEN_OK:
        return record.status == "ok"
    if rule == WHEN_RAN:
        return record.worker is not None
    return getattr(record, name) is not None


def _to_json(record: RunRecord | CaseRecord) -> dict[str, Any]:
    out = {}
    for f in fields(record):
        rule, value = f.metadata["written"], getattr(record, f.name)
        if rule is None or not _written(record, f.name, rule):
            continue
        if f.name in record.not_recorded and value == _default(f):
            continue  # a record from before the field existed is written back as it was
        out[f.name] = _encode(value)
    return {**out, **record.unknown}


def _read_v1(cls: type[R]) -> Callable[[dict[str, Any], str], R]:
    """Version 1: every field present in 0.1.0's records is required; later ones default."""

    def read(data: dict[str, Any], where: str) -> R:
        known = [f for f in fields(cls) if f.metadata["written"] is not None]
        required = [f.name for f in known if f.default is MISSING and f.default_factory is MISSING]
        missing = [n for n in required if n not in data]
        if missing:
            raise UserError(f"{where} lacks required field(s) {', '.join(missing)}; the file is damaged")
        names = {f.name for f in known}
        values = {f.name: _decode(f.name, data[f.name], where) for f in known if f.name in data}
        record = cls(**values, unknown={k: v for k, v in data.items() if k not in names})
        # Keys the writer of this record would have written had it known them (not those it
        # leaves out, e.g. a traceback of a case without one).
        lacking = [f.name for f in known if f.name not in data and _written(record, f.name, f.metadata["written"])]
        return replace(record, not_recorded=frozenset(lacking)) if lacking else record

    return read


RUN_READERS: dict[str, Callable[[dict[str, Any], str], RunRecord]] = {RUN_SCHEMA: _read_v1(RunRecord)}
CASE_READERS: dict[str, Callable[[dict[str, Any], str], CaseRecord]] = {CASE_SCHEMA: _read_v1(CaseRecord)}
READERS: dict[str, dict[str, Callable[[dict[str, Any], str], Any]]] = {"run": RUN_READERS, "case": CASE_READERS}


def _reader(data: Any, readers: dict[str, Callable[[dict[str, Any], str], R]], where: str) -> Callable[..., R]:
    if not isinstance(data, dict):
        raise UserError(f"{where} holds a JSON {type(data).__name__}, not a result object; the file is damaged")
    schema = data.get("schema")
    if schema not in readers:
        raise UserError(
            f"{where} has schema {schema!r}, which this attnbench cannot read "
            f"(it reads {', '.join(readers)}); upgrade attnbench to read newer results"
        )
    return readers[schema]
