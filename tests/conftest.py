"""Shared fixtures. Each area keeps its fixtures in its own module, listed here."""

pytest_plugins = [
    "tests.fixtures_base",
    "tests.fixtures_dns",
    "tests.fixtures_server",
    "tests.fixtures_rspamd",
    "tests.fixtures_postgres",
    "tests.fixtures_unbound",
]
