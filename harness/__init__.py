"""attnbench harness: suites, cases, executors, the worker, measurement, results and the CLI."""

__version__ = "0.1.0"
