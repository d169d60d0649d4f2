"""Which executor a run uses: the local one, or Ray with its options (bench run's --executor,
--ray-address and --ray-resource), checked before any run folder is made."""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass

import psutil

from attnbench.core.errors import UserError
from attnbench.core.record import RunRecord
from attnbench.core.settings import RunSettings
from attnbench.engine.executors.base import Executor
from attnbench.engine.executors.local import LocalExecutor
from attnbench.engine.executors.ray import RayExecutor, RayOptions, RaySpec, import_ray


@dataclass(frozen=True)
class ExecutorChoice:
    name: str | None = None  # local | ray; None: a resumed run's own, else local
    ray_address: str | None = None
    ray_resources: tuple[str, ...] = ()  # [BACKEND:]NAME=AMOUNT, as given


def check_choice(choice: ExecutorChoice, resuming: bool) -> None:
    """Flag mistakes and a missing Ray, said before any run folder is made."""
    ray_flags = choice.ray_address or choice.ray_resources
    if choice.name == "local" and ray_flags:
        raise UserError("--ray-address and --ray-resource go with --executor ray, not --executor local")
    if choice.name is None and not resuming and ray_flags:
        raise UserError("--ray-address and --ray-resource go with --executor ray; add --executor ray")
    if choice.name == "ray" and importlib.util.find_spec("ray") is None:
        import_ray()
    for spec in choice.ray_resources:
        RaySpec.parse(spec)


def make_executor(choice: ExecutorChoice, run: RunRecord, settings: RunSettings) -> tuple[Executor, RunRecord]:
    """The executor a run asked for; a resumed run keeps its own unless the choice names another.

    The choice and the Ray options go into the run record (run.json), so `--resume` finds them.
    """
    name = choice.name or run.executor or "local"
    run = dataclasses.replace(run, executor=name)
    if name == "local":
        if choice.ray_address or choice.ray_resources:
            raise UserError(
                "--ray-address and --ray-resource go with --executor ray; this run uses the local executor "
                "(add --executor ray to finish it on Ray)"
            )
        if settings.memory_limit_bytes is None:  # a Ray run finished here: guard with this host's memory
            settings = dataclasses.replace(settings, memory_limit_bytes=int(0.9 * psutil.virtual_memory().available))
        return LocalExecutor(settings), run
    stored = RayOptions.from_json(run.ray_options or {})
    if stored.address and not choice.ray_address:
        # run.json is untrusted input: a resume contacts only a host named on its command line.
        raise UserError(
            f"this run ran on the Ray cluster at {stored.address}; to finish it there, name it with "
            f"--ray-address {stored.address} (or finish it here with --executor local)"
        )
    options = RayOptions(
        choice.ray_address or stored.address,
        tuple(RaySpec.parse(r) for r in choice.ray_resources) or stored.resources,
    )
    return RayExecutor(settings, options), dataclasses.replace(run, ray_options=options.to_json())
