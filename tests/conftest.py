"""Shared pytest configuration.

Fixtures live in `tests/fixtures/*` modules, one per part of the system, so that each part's
fixtures can evolve without touching the others.

`make test` runs the suite in parallel lanes (pytest-xdist, `--dist loadgroup`). Each test module
stays on one lane, so its module-scoped emulator or scenario is built once; every test of the
shared local service (`svc`, `demo_run`) is on one lane, so one service serves them all.
"""

import pytest

pytest_plugins = [
    "tests.fixtures.emulator",
    "tests.fixtures.prefect",
    "tests.fixtures.service",
]

SERVICE_FIXTURES = {"svc", "demo_run"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        uses_service = SERVICE_FIXTURES & set(getattr(item, "fixturenames", ()))
        group = "service" if uses_service else item.nodeid.split("::", 1)[0]
        item.add_marker(pytest.mark.xdist_group(group))
