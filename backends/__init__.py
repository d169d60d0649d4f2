"""Backends: one module per device runtime behind `attnbench.backends.base.Backend`."""
