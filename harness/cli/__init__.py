"""The `bench` command line: one module per command, the shared run flags in one place."""
