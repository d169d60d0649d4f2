"""Imported once by the fork server, so every worker it forks starts with torch loaded."""

import torch  # noqa: F401

import attnbench.engine.worker  # noqa: F401
from attnbench.core.registry import load_plugins

load_plugins()
