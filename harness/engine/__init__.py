"""Engine: suites, the runner, executors, the worker and its measurements, transforms. Imports
core, workloads and backends; the worker side imports torch."""
