"""Test-only plugins, loaded through ATTNBENCH_PLUGINS=tests.plugins.faulty."""
