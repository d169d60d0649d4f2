"""Backends: one module per device runtime behind `backends.base.Backend`."""
