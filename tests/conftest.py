"""Shared pytest configuration.

Fixtures live in `tests/fixtures/*` modules, one per part of the system, so that each part's
fixtures can evolve without touching the others.

`make test` runs the suite in parallel lanes (pytest-xdist, `--dist loadgroup`). Each test module
stays on one lane, so its module-scoped emulator or scenario is built once; every test of the
shared local service (`svc`, `demo_run`) is on one lane, so one service serves them all; every flow
test on the Prefect test harness is on one lane, so one harness server serves them all (a server
start is ~20 CPU-seconds, and that lane is still shorter than the service's).
"""

import pytest

pytest_plugins = [
    "tests.fixtures.emulator",
    "tests.fixtures.prefect",
    "tests.fixtures.service",
]

SHARED = {"svc": "service", "demo_run": "service", "prefect_harness": "prefect"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        lanes = [lane for fixture, lane in SHARED.items() if fixture in fixtures]
        item.add_marker(pytest.mark.xdist_group(lanes[0] if lanes else item.nodeid.split("::", 1)[0]))
