"""hierarchical attention variants (placeholder until they land)."""
