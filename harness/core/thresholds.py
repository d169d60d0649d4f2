"""What `bench compare` counts as a change: thresholds, and a suite's [compare] table.

Config only (the comparison itself is attnbench.analysis.compare), so a suite file's
[compare] table is checked when the suite is loaded, before anything runs.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from attnbench.core.errors import UserError


@dataclass(frozen=True)
class Thresholds:
    time: float = 0.05  # relative change of the median that matters
    alpha: float = 0.01  # significance level of the Mann–Whitney test
    memory: float = 0.10  # relative change of peak memory that matters
    memory_floor_bytes: int = 1 << 20  # ...and never less than this many bytes (page jitter)
    energy: float = 0.10  # relative change of joules per call that matters
    # A time change measured while other processes used more than this share of the CPU (in
    # either run; worker.other_cpu_share) is `unstable`, not a verdict: a busy machine, not the code.
    busy_share: float = 0.25

    def __post_init__(self) -> None:
        for name in ("time", "memory", "energy"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 < value < 10):
                raise UserError(f"compare threshold '{name}' must be a fraction such as 0.05, got {value!r}")
        if not (isinstance(self.busy_share, (int, float)) and 0 < self.busy_share <= 1):
            raise UserError(f"busy_share must be a fraction in (0, 1], got {self.busy_share!r}")
        if not (isinstance(self.alpha, float) and 0 < self.alpha < 1):
            raise UserError(f"compare alpha must be a probability such as 0.01, got {self.alpha!r}")
        if not isinstance(self.memory_floor_bytes, int) or self.memory_floor_bytes < 0:
            raise UserError(f"memory_floor_bytes must be a whole number of bytes, got {self.memory_floor_bytes!r}")


# Keys of a [compare] table in a suite file (and of each [compare.cases."pattern"] table).
CONFIG_KEYS = {
    "threshold": "time",
    "alpha": "alpha",
    "memory_threshold": "memory",
    "memory_floor_bytes": "memory_floor_bytes",
    "energy_threshold": "energy",
    "busy_share": "busy_share",
}


@dataclass(frozen=True)
class CompareConfig:
    """Thresholds for a comparison: a default, and per-case overrides by glob pattern.

    A pattern matches a case's case_id or its variant name (fnmatch); when several match,
    the last one written wins.
    """

    default: Thresholds = field(default_factory=Thresholds)
    cases: tuple[tuple[str, dict[str, Any]], ...] = ()
    source: str = "built-in defaults"

    def for_case(self, case_id: str, variant: str) -> Thresholds:
        chosen = self.default
        for pattern, overrides in self.cases:
            if fnmatch.fnmatchcase(case_id, pattern) or fnmatch.fnmatchcase(variant, pattern):
                chosen = replace(chosen, **overrides)
        return chosen

    def with_overrides(self, **overrides: Any) -> CompareConfig:
        """Command-line flags replace the default (per-case overrides still apply on top)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return replace(self, default=replace(self.default, **given)) if given else self


def _translate(table: dict[str, Any], where: str) -> dict[str, Any]:
    out = {}
    for key, value in table.items():
        if key not in CONFIG_KEYS:
            raise UserError(f"{where}: unknown key '{key}' (known: {', '.join(CONFIG_KEYS)})")
        if isinstance(value, int) and not isinstance(value, bool) and key != "memory_floor_bytes":
            value = float(value)
        out[CONFIG_KEYS[key]] = value
    return out


def parse_compare_config(table: dict[str, Any], where: str) -> CompareConfig:
    """A suite's [compare] table: threshold, alpha, memory_threshold, memory_floor_bytes,
    energy_threshold, and [compare.cases."glob"] tables with the same keys."""
    if not isinstance(table, dict):
        raise UserError(f"{where}: [compare] must be a table of keys")
    table = dict(table)
    cases_table = table.pop("cases", {})
    if not isinstance(cases_table, dict):
        raise UserError(f'{where}: [compare.cases] must hold tables such as [compare.cases."sparse.*"]')
    default = Thresholds(**_translate(table, f"{where} [compare]"))
    cases = []
    for pattern, overrides in cases_table.items():
        if not isinstance(overrides, dict):
            raise UserError(f'{where}: [compare.cases."{pattern}"] must be a table, got {overrides!r}')
        translated = _translate(overrides, f'{where} [compare.cases."{pattern}"]')
        replace(default, **translated)  # validate now, not at the first matching case
        cases.append((pattern, translated))
    return CompareConfig(default=default, cases=tuple(cases), source=where)


def read_toml(path: Path) -> dict[str, Any]:
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: invalid TOML: {exc}") from None


def load_compare_config(path: Path) -> CompareConfig:
    """The [compare] table of a suite file or a thresholds file."""
    if not path.is_file():
        raise UserError(f"thresholds file {path} does not exist")
    data = read_toml(path)
    return parse_compare_config(data.get("compare", {}), str(path))
