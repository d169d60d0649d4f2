"""Imported once by the fork server, so every worker it forks starts with torch loaded."""

from attnbench.engine.lifeline import die_with_parent

die_with_parent()  # the fork server goes with the driver (attnbench.engine.lifeline)

import torch  # noqa: E402, F401

import attnbench.engine.worker  # noqa: E402, F401
from attnbench.core.registry import load_plugins  # noqa: E402

load_plugins()
