"""Published figures the reference suites are compared with (data files only)."""
