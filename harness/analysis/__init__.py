"""Analysis of stored results: compare, noise, history, exporters, published data. Reads records
through core; never imports torch and never runs a case."""
