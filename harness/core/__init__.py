"""Core: cases, settings, the registry, errors and exit codes, the record format, statistics and
the host fingerprint. Imports nothing else of attnbench, and no torch."""
