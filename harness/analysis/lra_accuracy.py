"""Long Range Arena's published accuracies (Tay et al. 2021, Table 1) and how its models and tasks
map onto this project's variants and quality tasks (reference_data/lra_accuracy.toml).

What is compared is the order of the methods on a task, not the percentages (LRA trained whole
models with its own budgets on TPUs): `published_order` gives the published accuracies of the
models this project has, keyed by a label that `label_for` also gives a measured case, so the
two dicts go straight into `quality_stats.rank_agreement`.

Labels are our variant names; where two LRA models share a variant (Local Attention and
Longformer are both sparse.sliding_window, without and with global tokens) the label adds the
model: "sparse.sliding_window (Longformer)".
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from importlib import resources
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

AVERAGE = "Avg"  # the paper's mean over `average_of`, as printed
NONZERO = "nonzero"  # a params predicate: present and not 0


@dataclass(frozen=True)
class LraTable:
    source: str
    tasks: tuple[str, ...]  # LRA's tasks, Path-X included
    models: dict[str, dict[str, float | None]]  # model -> task -> accuracy (%); None where the paper says FAIL
    average: dict[str, float]  # model -> the paper's printed Avg
    average_of: tuple[str, ...]  # the tasks the printed Avg is the mean of
    variant_of: dict[str, str]  # the models this project has -> our variant
    params_of: dict[str, dict[str, Any]]  # model -> predicate on a case's parameters (may be empty)
    note_of: dict[str, str]  # model -> how it maps onto our variant
    task_of: dict[str, str | None]  # LRA task -> our quality task, None where there is none
    task_note_of: dict[str, str]  # LRA task -> what it is and why it maps (or does not)

    def label(self, model: str) -> str:
        """The key a model has in `published_order`: its variant, plus the model where the variant is shared."""
        variant = self.variant_of[model]
        shared = sum(v == variant for v in self.variant_of.values()) > 1
        return f"{variant} ({model})" if shared else variant


def _read() -> dict[str, Any]:
    text = resources.files("attnbench.analysis.reference_data").joinpath("lra_accuracy.toml").read_text()
    return tomllib.loads(text)["lra_accuracy"]


def lra_table() -> LraTable:
    """The table as stored, checked for shape (a malformed row raises ValueError)."""
    data = _read()
    tasks = tuple(data["tasks"])
    columns = list(data["columns"])
    fail = data["fail"]
    models: dict[str, dict[str, float | None]] = {}
    average: dict[str, float] = {}
    for model, row in data["models"].items():
        if len(row) != len(columns):
            raise ValueError(f"lra_accuracy.toml: {model} has {len(row)} values for {len(columns)} columns")
        cells = dict(zip(columns, row, strict=True))
        for task, v in cells.items():
            if v != fail and not isinstance(v, (int, float)):
                raise ValueError(f"lra_accuracy.toml: {model} {task} is {v!r}, neither a number nor {fail!r}")
        models[model] = {t: None if cells[t] == fail else float(cells[t]) for t in tasks}
        average[model] = float(cells[AVERAGE])
    variants = data["variants"]
    for model, spec in variants.items():
        if model not in models:
            raise ValueError(f"lra_accuracy.toml: variant given for {model!r}, which the table does not have")
        for name, want in spec.get("params", {}).items():
            if isinstance(want, str) and want != NONZERO:
                raise ValueError(f"lra_accuracy.toml: {model} params.{name} = {want!r}; a number or {NONZERO!r}")
    return LraTable(
        source=data["source"],
        tasks=tasks,
        models=models,
        average=average,
        average_of=tuple(data["average_of"]),
        variant_of={m: s["variant"] for m, s in variants.items()},
        params_of={m: dict(s.get("params", {})) for m, s in variants.items()},
        note_of={m: s.get("note", "") for m, s in variants.items()},
        task_of={t: data["task_of"].get(t, {}).get("ours") for t in tasks},
        task_note_of={t: data["task_of"].get(t, {}).get("note", "") for t in tasks},
    )


def _matches(want: dict[str, Any], params: dict[str, Any]) -> bool:
    """Whether a case's resolved parameters satisfy a model's predicate (a missing parameter never does)."""
    for name, spec in want.items():
        if name not in params:
            return False
        value = params[name]
        if spec == NONZERO:
            if not value:
                return False
        elif value != spec:
            return False
    return True


def label_for(variant: str, params: dict[str, Any], table: LraTable | None = None) -> str | None:
    """The `published_order` label of a measured case (its variant and resolved parameters);
    None when no LRA model this project has matches it."""
    table = table or lra_table()
    for model, v in table.variant_of.items():
        if v == variant and _matches(table.params_of[model], params):
            return table.label(model)
    return None


def published_order(task: str) -> dict[str, float]:
    """Published accuracy (%) on an LRA task (or "Avg") of the models this project has, by label,
    best first. Path-X gives an empty dict: every model FAILed there."""
    table = lra_table()
    if task != AVERAGE and task not in table.tasks:
        known = ", ".join((*table.tasks, AVERAGE))
        raise ValueError(f"unknown LRA task {task!r} (known: {known})")
    figures: dict[str, float] = {}
    for model in table.variant_of:
        value = table.average[model] if task == AVERAGE else table.models[model][task]
        if value is not None:
            figures[table.label(model)] = value
    return dict(sorted(figures.items(), key=lambda kv: -kv[1]))
