"""Shared pytest configuration.

Fixtures live in `tests/fixtures/*` modules, one per part of the system, so that each part's
fixtures can evolve without touching the others.
"""

pytest_plugins = [
    "tests.fixtures.emulator",
    "tests.fixtures.prefect",
    "tests.fixtures.service",
]
