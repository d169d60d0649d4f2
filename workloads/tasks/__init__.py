"""Synthetic long-range tasks for `bench quality`: MQAR, ListOps and needle retrieval.

Each task draws token sequences with targets for a classifier that reads out a class at
every position (``IGNORE`` where nothing is asked), and solves its own sequences by brute
force so tests can check the targets follow from the tokens.
"""

from __future__ import annotations

from attnbench.workloads.tasks.base import IGNORE, Task, TaskBatch
from attnbench.workloads.tasks.listops import ListOpsTask
from attnbench.workloads.tasks.mqar import MqarTask
from attnbench.workloads.tasks.retrieval import RetrievalTask

TASKS: dict[str, type[Task]] = {
    cls.name: cls for cls in sorted((ListOpsTask, MqarTask, RetrievalTask), key=lambda c: c.name)
}


def get_task(name: str) -> type[Task]:
    """The task class called `name`; ValueError naming the known ones otherwise."""
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}") from None


__all__ = ["IGNORE", "TASKS", "Task", "TaskBatch", "get_task"]
