"""Attention variants: one module per family, one class per variant."""
