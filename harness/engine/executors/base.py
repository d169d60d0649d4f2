"""What every executor hands back for a case: its Outcome."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Outcome:
    status: str  # ok | oom | timeout | error | unsupported
    reason: str | None
    result: dict[str, Any] = field(default_factory=dict)  # the worker's measurements when ok
    traceback: str | None = None
    worker: dict[str, Any] = field(default_factory=dict)  # pid, exit code, wall and overhead seconds
    node: dict[str, Any] | None = None  # attnbench.core.nodes.describe_node() of where it ran; None: this host
