"""Fixtures: base."""
