"""Built-in suites, as TOML files."""
