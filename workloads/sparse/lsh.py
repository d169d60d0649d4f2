"""Placeholder until the variant lands."""
