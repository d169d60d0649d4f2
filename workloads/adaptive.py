"""adaptive attention variants (placeholder until they land)."""
