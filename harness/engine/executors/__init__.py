"""Executors: where a case's worker runs (this machine, or a Ray cluster)."""
