"""Suites: TOML files that declare a sweep, plus command-line overrides.

description = "..."
[sweep]                      # every axis is a list; the cases are their product
variants = ["all"]           # names, or "all", or "subquadratic"
backends = ["available"]     # names, or "available"
seq_lens = [512, 1024]
batch = [1]; heads = [8]; head_dim = [64]
dtypes = ["float32"]; modes = ["forward"]; scopes = ["core"]; threads = [2]
[settings]
max_time_per_case = 1.0      # also target_rel_ci, timeout_s, seed, verify, passes
[params."full.chunked"]      # per-variant parameters; a list sweeps
chunk = [256, 1024]
[backend_options.onnxruntime]  # backend settings (see `bench env`); not sweep axes
providers = ["CPUExecutionProvider"]
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from attnbench.backends.base import DTYPES
from attnbench.core.cases import Sweep, freeze_params
from attnbench.core.errors import UserError
from attnbench.core.registry import BACKENDS, IMPLS, WORKLOADS, get_backend, get_impl, get_workload, load_plugins
from attnbench.workloads.base import MODES, SCOPES

SWEEP_KEYS = (
    "variants",
    "backends",
    "seq_lens",
    "batch",
    "heads",
    "head_dim",
    "dtypes",
    "modes",
    "scopes",
    "threads",
    "transforms",
    "impls",
)
SETTING_KEYS = ("max_time_per_case", "target_rel_ci", "timeout_s", "seed", "verify", "passes", "quality")
TOP_KEYS = (
    "description",
    "notes",
    "reference",
    "sweep",
    "settings",
    "params",
    "backend_options",
    "backend_overrides",
    "compare",
    "quality",
)
OVERRIDE_KEYS = ("dtypes", "batch")  # axes a backend may replace, e.g. float32 where a CPU lacks float16


@dataclass(frozen=True)
class SuiteSpec:
    """A suite as written: raw axes still holding selectors such as "all"."""

    name: str
    source: str  # "built-in" or the file path
    description: str
    sweep: dict[str, list[Any]]
    settings: dict[str, Any]
    params: dict[str, dict[str, list[Any]]]
    backend_options: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    # backend -> axis -> values replacing the sweep's for that backend (OVERRIDE_KEYS)
    backend_overrides: dict[str, dict[str, list[Any]]] = dataclasses.field(default_factory=dict)
    notes: str = ""  # what differs from the set-up the suite mirrors; printed and stored with the run
    reference: str | None = None  # published figures to compare with (attnbench.analysis.published)
    # a quality suite's [quality] table (bench quality; attnbench.engine.quality.runner), raw
    quality: dict[str, Any] | None = None


def builtin_suites() -> dict[str, str]:
    """Built-in suite name -> description."""
    out = {}
    for entry in sorted(resources.files("attnbench.engine.suite_files").iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".toml"):
            data = tomllib.loads(entry.read_text())
            out[entry.name[:-5]] = data.get("description", "")
    return out


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _check_values(values: list[Any], what: str) -> None:
    """A suite's list of values: not empty, plain values (no tables or nested lists), no repeats."""
    if not values:
        raise UserError(f"{what} is an empty list; give at least one value")
    for v in values:
        if isinstance(v, (dict, list)):
            raise UserError(f"{what} must hold plain values (numbers, strings, true/false), got {v!r}")
    _no_repeats(values, what)


def _no_repeats(values: list[Any], what: str) -> None:
    """A value given twice is a typo: say so, rather than silently measure it once."""
    seen: list[Any] = []
    for v in values:
        # type too: 1 and true, or 1 and 1.0, are different values in a suite
        if any(type(v) is type(u) and v == u for u in seen):
            raise UserError(f"{what} lists {v!r} twice; give each value once")
        seen.append(v)


def parse_suite(text: str, name: str, source: str) -> SuiteSpec:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{source}: invalid TOML: {exc}") from None
    for key in data:
        if key not in TOP_KEYS:
            raise UserError(f"{source}: unknown top-level key '{key}' (known: {', '.join(TOP_KEYS)})")
    if "compare" in data:  # thresholds for `bench compare`; checked now so a typo fails before the run
        from attnbench.core.thresholds import parse_compare_config

        parse_compare_config(data["compare"], source)
    for section in ("sweep", "settings", "params", "backend_options", "backend_overrides", "quality"):
        if not isinstance(data.get(section, {}), dict):
            raise UserError(f"{source}: [{section}] must be a table of keys, got {data[section]!r}")
    for variant, ps in data.get("params", {}).items():
        if not isinstance(ps, dict):
            raise UserError(f'{source}: [params."{variant}"] must be a table of parameter = values, got {ps!r}')
    sweep = data.get("sweep", {})
    for key in sweep:
        if key not in SWEEP_KEYS:
            raise UserError(f"{source}: unknown key '{key}' in [sweep] (known: {', '.join(SWEEP_KEYS)})")
    settings = data.get("settings", {})
    for key in settings:
        if key not in SETTING_KEYS:
            raise UserError(f"{source}: unknown key '{key}' in [settings] (known: {', '.join(SETTING_KEYS)})")
    for key in ("description", "notes", "reference"):
        if key in data and not isinstance(data[key], str):
            raise UserError(f"{source}: {key} must be a string, got {data[key]!r}")
    for key, value in sweep.items():
        _check_values(_as_list(value), f"{source}: [sweep] {key}")
    for variant, ps in data.get("params", {}).items():
        for key, value in ps.items():
            _check_values(_as_list(value), f'{source}: [params."{variant}"] {key}')
    params = {v: {k: _as_list(x) for k, x in ps.items()} for v, ps in data.get("params", {}).items()}
    overrides: dict[str, dict[str, list[Any]]] = {}
    for backend, axes in data.get("backend_overrides", {}).items():
        if not isinstance(axes, dict) or any(k not in OVERRIDE_KEYS for k in axes):
            raise UserError(
                f"{source}: [backend_overrides.{backend}] may set only {', '.join(OVERRIDE_KEYS)}, got {axes!r}"
            )
        overrides[backend] = {k: _as_list(v) for k, v in axes.items()}
    return SuiteSpec(
        name=name,
        source=source,
        description=data.get("description", ""),
        sweep={k: _as_list(v) for k, v in sweep.items()},
        settings=dict(settings),
        params=params,
        backend_options={b: dict(o) for b, o in data.get("backend_options", {}).items()},
        backend_overrides=overrides,
        notes=str(data.get("notes", "")).strip(),
        reference=data.get("reference"),
        quality=dict(data["quality"]) if "quality" in data else None,
    )


def load_suite(name_or_path: str, kind: str = "timing") -> SuiteSpec:
    """A suite by built-in name or file path. `kind`: "timing" (bench run and the commands built
    on it) refuses a quality suite, "quality" (bench quality) refuses any other."""
    path = Path(name_or_path)
    if name_or_path.endswith(".toml") or "/" in name_or_path or path.is_file():
        if not path.is_file():
            raise UserError(f"suite file {name_or_path} does not exist")
        spec = parse_suite(path.read_text(), path.stem, str(path))
    else:
        known = builtin_suites()
        if name_or_path not in known:
            raise UserError(
                f"unknown suite '{name_or_path}'; built-in suites: {', '.join(known)}, or give a path to a .toml file"
            )
        text = resources.files("attnbench.engine.suite_files").joinpath(f"{name_or_path}.toml").read_text()
        spec = parse_suite(text, name_or_path, f"built-in suite {name_or_path}")
    if kind == "timing" and spec.quality is not None:
        raise UserError(
            f"suite '{spec.name}' is a quality suite (it has a [quality] table): "
            f"run it with bench quality --suite {name_or_path}"
        )
    if kind == "quality" and spec.quality is None:
        quality = ", ".join(n for n in builtin_suites() if n.startswith("quality"))
        raise UserError(
            f"suite '{spec.name}' has no [quality] table, so bench quality cannot train it; "
            f"quality suites: {quality}, or a file with a [quality] table"
        )
    return spec


# ----------------------------------------------------------------------------- resolving


def coerce_value(raw: Any, default: Any, what: str, text: bool = True) -> Any:
    """Give a parameter value the type of its default. Strings are parsed only where they come
    from the command line (`text`); in a suite file "64" or "false" is a wrong type."""
    if isinstance(raw, str) and not text and not isinstance(default, str) and default is not None:
        expected = "true or false" if isinstance(default, bool) else type(default).__name__
        raise UserError(f"{what} must be {expected}, not the string {raw!r}")
    if not isinstance(raw, str) or isinstance(default, str):
        if isinstance(default, bool) != isinstance(raw, bool):
            expected = "true or false" if isinstance(default, bool) else type(default).__name__
            raise UserError(f"{what} must be {expected}, got {raw!r}")
        if isinstance(default, float) and isinstance(raw, int) and not isinstance(raw, bool):
            return float(raw)
        if isinstance(raw, float) and not math.isfinite(raw):
            raise UserError(f"{what} must be a finite number, got {raw!r}")
        if default is not None and not isinstance(raw, type(default)):
            raise UserError(f"{what} must be {type(default).__name__}, got {raw!r}")
        return raw
    text = raw.strip()
    if isinstance(default, bool):
        low = text.lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise UserError(f"{what} must be true or false, got '{text}'")
    try:
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            value = float(text)
            if not math.isfinite(value):
                raise UserError(f"{what} must be a finite number, got '{text}'")
            return value
    except ValueError:
        raise UserError(f"{what} must be {type(default).__name__}, got '{text}'") from None
    return text


def _positive_ints(values: list[Any], what: str, text: bool = False) -> tuple[int, ...]:
    """Whole positive numbers, each once; strings only where they come from the command line."""
    out = []
    for v in values:
        if isinstance(v, bool) or (isinstance(v, str) and not text):
            raise UserError(f"{what} must be whole numbers, got {v!r}")
        try:
            i = int(v)
        except (TypeError, ValueError, OverflowError):
            raise UserError(f"{what} must be whole numbers, got {v!r}") from None
        if i != v and not isinstance(v, str):
            raise UserError(f"{what} must be whole numbers, got {v!r}")
        if i <= 0:
            raise UserError(f"{what} must be positive, got {i}")
        out.append(i)
    if not out:
        raise UserError(f"{what} is empty")
    _no_repeats(out, what)
    return tuple(out)


def _choices(values: list[Any], allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    for v in values:
        if v not in allowed:
            raise UserError(f"unknown {what} '{v}'; choose from {', '.join(allowed)}")
    if not values:
        raise UserError(f"no {what} given")
    _no_repeats(values, what)
    return tuple(values)


def _transforms(values: list[Any]) -> tuple[str, ...]:
    from attnbench.engine.transforms import check_names

    if not values:
        raise UserError("no transform given (--transforms); use 'none' for the variants as built")
    try:
        return check_names(str(v) for v in values)
    except ValueError as exc:
        raise UserError(f"{exc} (--transforms or [sweep] transforms)") from None


def _impls(values: list[Any]) -> tuple[str, ...]:
    """The implementations to sweep, each registered (attnbench.workloads.impls); "all": every
    registered one, native first (one that cannot run a case here records it unsupported)."""
    load_plugins()
    if not values:
        raise UserError("no implementation given (--impls or [sweep] impls); use 'native' for the variants' own")
    out: list[str] = []
    for v in values:
        if not isinstance(v, str):
            raise UserError(f"implementations must be names (strings), got {v!r}; known: {', '.join(sorted(IMPLS))}")
        if v == "all":
            out += sorted(IMPLS, key=lambda name: (name != "native", name))
        else:
            out.append(get_impl(v).name)  # unknown: one line with the closest name and the known ones
    _no_repeats(values, "implementations")
    return tuple(dict.fromkeys(out))


def _selectors(selectors: list[Any], what: str) -> None:
    for s in selectors:
        if not isinstance(s, str):
            raise UserError(f"{what} must be names (strings), got {s!r}")
    _no_repeats(selectors, what)


def resolve_variants(selectors: list[str]) -> tuple[str, ...]:
    load_plugins()
    _selectors(selectors, "variants")
    out: list[str] = []
    for s in selectors:
        if s == "all":
            out += sorted(WORKLOADS)
        elif s == "subquadratic":
            out += sorted(n for n, c in WORKLOADS.items() if c.subquadratic)
        else:
            out.append(get_workload(s).name)
    return tuple(dict.fromkeys(out))


def resolve_backends(selectors: list[str]) -> tuple[str, ...]:
    load_plugins()
    _selectors(selectors, "backends")
    out: list[str] = []
    for s in selectors:
        if s == "available":
            # Backends that must export or convert first (ONNX Runtime) run only when named.
            out += sorted(n for n, c in BACKENDS.items() if c.in_available and c.availability().available)
        else:
            out.append(get_backend(s).name)
    return tuple(dict.fromkeys(out))


def resolve_params(raw: dict[str, dict[str, list[Any]]], source: str) -> dict[str, dict[str, tuple]]:
    out: dict[str, dict[str, tuple]] = {}
    for variant, ps in raw.items():
        cls = get_workload(variant)
        defaults = cls.default_params()
        for name, values in ps.items():
            if name not in defaults:
                raise UserError(
                    f"{source}: unknown parameter '{name}' for {variant}; valid: {', '.join(defaults) or '(none)'}"
                )
            what = f"{variant}.{name}"
            if not values:
                raise UserError(f"{source}: {what} is an empty list; give at least one value")
            coerced = [coerce_value(v, defaults[name], what, text=source == "--param") for v in values]
            _no_repeats(coerced, what)
            out.setdefault(variant, {})[name] = tuple(coerced)
    return out


def parse_param_flags(flags: list[str]) -> dict[str, dict[str, list[str]]]:
    """--param family.variant.name=v1,v2 (repeatable) -> {variant: {name: [v1, v2]}}."""
    out: dict[str, dict[str, list[str]]] = {}
    for flag in flags:
        key, sep, values = flag.partition("=")
        variant, dot, name = key.strip().rpartition(".")
        items = [v for v in values.split(",") if v.strip()]
        if not sep or not dot or not variant or not name or not items:
            raise UserError(f"--param '{flag}' should look like family.variant.parameter=value[,value...]")
        out.setdefault(variant, {})[name] = items
    return out


@dataclass(frozen=True)
class Overrides:
    """Command-line flags; None leaves the suite's value."""

    variants: list[str] | None = None
    backends: list[str] | None = None
    seq_lens: list[str] | None = None
    batch: list[str] | None = None
    heads: list[str] | None = None
    head_dim: list[str] | None = None
    dtypes: list[str] | None = None
    modes: list[str] | None = None
    scopes: list[str] | None = None
    threads: list[str] | None = None
    transforms: list[str] | None = None
    impls: list[str] | None = None
    params: list[str] = dataclasses.field(default_factory=list)
    backend_options: list[str] = dataclasses.field(default_factory=list)
    max_time_per_case: float | None = None
    timeout_s: float | None = None
    target_rel_ci: float | None = None
    passes: int | None = None
    quality: str | None = None


def overrides_from_args(args: Any) -> Overrides:
    """The sweep flags of `bench run` (also borrowed by `bench profile`) as suite overrides;
    a flag a command does not offer counts as not given."""

    def flag(name: str, default: Any = None) -> Any:
        return getattr(args, name, default)

    return Overrides(
        variants=flag("variants"),
        backends=flag("backends"),
        seq_lens=flag("seq_lens"),
        batch=flag("batch"),
        heads=flag("heads"),
        head_dim=flag("head_dim"),
        dtypes=flag("dtypes"),
        modes=flag("mode"),
        scopes=flag("scope"),
        threads=flag("threads"),
        transforms=flag("transforms"),
        impls=flag("impls"),
        params=flag("param") or [],
        backend_options=flag("backend_option") or [],
        max_time_per_case=flag("max_time_per_case"),
        timeout_s=flag("timeout"),
        target_rel_ci=flag("target_ci"),
        passes=flag("passes"),
        quality=flag("quality"),
    )


def resolve(spec: SuiteSpec, over: Overrides) -> tuple[Sweep, dict[str, Any]]:
    """The concrete sweep (selectors expanded, values checked) and the settings overrides."""
    axes = {k: list(v) for k, v in spec.sweep.items()}
    from_flags: set[str] = set()  # axes given on the command line: their values are text
    for key in SWEEP_KEYS:
        flag = getattr(over, key)
        if flag is not None:
            axes[key] = flag
            from_flags.add(key)
    variants = resolve_variants(axes.get("variants", ["all"]))
    if not variants:
        raise UserError(f"suite '{spec.name}' selects no registered variant ({', '.join(axes.get('variants', []))})")
    backends = resolve_backends(axes.get("backends", ["available"]))
    if not backends:
        raise UserError("no backend selected or available; see `bench list`")
    params = resolve_params(spec.params, spec.source)
    for variant, ps in resolve_params(parse_param_flags(over.params), "--param").items():
        params.setdefault(variant, {}).update(ps)
    threads_raw = axes.get("threads", [None])
    threads: tuple[int | None, ...] = (
        (None,)
        if threads_raw in ([None], ["auto"])
        else _positive_ints(threads_raw, "threads", "threads" in from_flags)
    )
    sweep = Sweep(
        variants=variants,
        backends=backends,
        seq_lens=_positive_ints(axes.get("seq_lens", []), "sequence lengths (--seq-lens)", "seq_lens" in from_flags),
        batch=_positive_ints(axes.get("batch", [1]), "batch sizes (--batch)", "batch" in from_flags),
        heads=_positive_ints(axes.get("heads", [8]), "head counts (--heads)", "heads" in from_flags),
        head_dim=_positive_ints(axes.get("head_dim", [64]), "head dims (--head-dim)", "head_dim" in from_flags),
        dtypes=_choices(axes.get("dtypes", ["float32"]), tuple(DTYPES), "dtype"),
        modes=_choices(axes.get("modes", ["forward"]), MODES, "mode"),
        scopes=_choices(axes.get("scopes", ["core"]), SCOPES, "scope"),
        threads=threads,
        transforms=_transforms(axes.get("transforms", ["none"])),
        impls=_impls(axes.get("impls", ["native"])),
        params=freeze_params({v: dict(ps) for v, ps in params.items()}),
        per_backend=_per_backend(spec, over, backends),
    )
    settings = dict(spec.settings)
    for key in ("max_time_per_case", "timeout_s", "target_rel_ci", "passes", "quality"):
        if getattr(over, key) is not None:
            settings[key] = getattr(over, key)
    for key in ("max_time_per_case", "timeout_s", "target_rel_ci"):
        value = settings.get(key)
        # Finite too: an infinite budget never ends a case, and run.json (strict JSON) cannot hold it.
        if key in settings and not (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
        ):
            raise UserError(f"{key} must be a positive, finite number, got {value!r}")
    if "verify" in settings and not isinstance(settings["verify"], bool):
        raise UserError(f"verify must be true or false, got {settings['verify']!r}")
    seed = settings.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise UserError(f"seed must be a whole number from 0 to 2**63 - 1, got {seed!r}")
    if settings.get("quality") not in (None, "approx"):
        raise UserError(f'quality must be "approx" (or absent), got {settings["quality"]!r}')
    passes = settings.get("passes", 1)
    if not (isinstance(passes, int) and not isinstance(passes, bool) and 1 <= passes <= 20):
        raise UserError(f"passes must be a whole number from 1 to 20, got {passes!r}")
    backend_options = resolve_backend_options(spec, over.backend_options)
    if backend_options:
        settings["backend_options"] = backend_options
    return sweep, settings


def _per_backend(spec: SuiteSpec, over: Overrides, backends: tuple[str, ...]) -> tuple:
    """The suite's per-backend axes, minus any the command line set for every backend."""
    out = []
    for backend, axes in sorted(spec.backend_overrides.items()):
        if backend not in BACKENDS:
            load_plugins()
        if backend not in BACKENDS:
            raise UserError(f"{spec.source}: [backend_overrides.{backend}] names an unknown backend")
        if backend not in backends:
            continue
        kept = []
        if "dtypes" in axes and over.dtypes is None:
            kept.append(("dtypes", _choices(axes["dtypes"], tuple(DTYPES), "dtype")))
        if "batch" in axes and over.batch is None:
            kept.append(("batch", _positive_ints(axes["batch"], f"batch sizes for {backend}")))
        if kept:
            out.append((backend, tuple(kept)))
    return tuple(out)


def resolve_backend_options(spec: SuiteSpec, flags: list[str]) -> tuple[tuple[str, str, Any], ...]:
    """[backend_options.NAME] of the suite, then --backend-option NAME.KEY=VALUE; checked by each backend."""
    raw: dict[str, dict[str, Any]] = {b: dict(o) for b, o in spec.backend_options.items()}
    for flag in flags:
        head, eq, value = flag.partition("=")
        backend, dot, key = head.partition(".")
        if not (eq and dot and backend and key):
            raise UserError(f"--backend-option '{flag}' should look like backend.key=value")
        raw.setdefault(backend, {})[key] = value
    out: list[tuple[str, str, Any]] = []
    for backend, options in raw.items():
        if backend not in BACKENDS:
            load_plugins()
        if backend not in BACKENDS:
            raise UserError(f"backend options for unknown backend '{backend}'; known: {', '.join(sorted(BACKENDS))}")
        try:
            get_backend(backend).parse_options(options)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        for key, value in sorted(options.items()):
            out.append((backend, key, tuple(value) if isinstance(value, list) else value))
    return tuple(out)
