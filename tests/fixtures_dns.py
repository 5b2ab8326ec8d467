"""Fixtures: dns."""
