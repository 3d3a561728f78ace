"""Shared pytest configuration.

Fixtures live in `tests/fixtures/*` modules, one per part of the system, so that each part's
fixtures can evolve without touching the others.

`make test` runs the suite in parallel lanes (pytest-xdist, `-n 4 --dist loadscope`, scheduled by
`LaneScheduling` below). A lane is a test module, or a set of modules that share something costly
to start: every test of the shared local service (`svc`, `demo_run`) is in the `service` lane, so
one service serves them all; the flow tests on the Prefect test harness are in four lanes of their
own harness each (a harness start is 7-10 CPU-seconds): `prefect` (the end-to-end pipeline),
`money` (balance, top-ups, price, run locks, the catalogue's rounds through the CLI) and the fault
suite's two (`test_faults_pipeline.py` in process, `test_faults_signals.py` as processes of their
own). As one lane, `prefect` and `money` took 580-790 s of a 605-866 s suite on a loaded
2-core machine, alone on their worker at the end while the other three had finished (all four
lanes' tests: 2,120-3,030 s). The longest lanes start first (`LONGEST_FIRST`).
"""

from __future__ import annotations

import socket
from typing import Any

import pytest

pytest_plugins = [
    "tests.fixtures.emulator",
    "tests.fixtures.prefect",
    "tests.fixtures.service",
]

LANES = {
    "tests/test_service_integration.py": "service",
    "tests/test_browser_ui.py": "service",
    "tests/test_scale_service.py": "service",
    "tests/test_pipeline_e2e.py": "prefect",
    "tests/test_scale_rate_limit.py": "prefect",
    "tests/test_money_stops.py": "money",
    "tests/test_pipeline_topup.py": "money",
    "tests/test_run_lock_hosts.py": "money",
    "tests/test_cli_catalogue.py": "money",
    "tests/test_schedules.py": "money",
    # Services of their own that mostly wait (a server away for minutes, a Suspended run): one lane of
    # five tests. Apart, the outage lane's two tests had the lifecycle lane given to their worker as
    # they began (a lane of two tests or fewer pulls the next one), and it ran last, alone.
    "tests/test_service_outage.py": "waiting",
    "tests/test_service_lifecycle.py": "waiting",
}
# Fixture -> the lanes whose modules may use it (any other module would start a second copy).
SHARED = {
    "svc": {"service"},
    "demo_run": {"service"},
    "prefect_harness": {"prefect", "money", "tests/test_faults_pipeline.py", "tests/test_faults_signals.py"},
}
# The lanes in the order they start; the rest (short modules) follow in collection order. A worker is
# given its next lane while its current one has two tests left (pytest-xdist's `--dist loadscope`),
# so the order decides which lanes share a worker: the four longest start, and the fault suite's two
# follow the two flow lanes that end first. The `waiting` lane takes little CPU, so the three that
# keep the cores busy beside it do not slow down for it.
LONGEST_FIRST = [
    "service",
    "waiting",
    "prefect",
    "money",
    "tests/test_faults_pipeline.py",
    "tests/test_faults_signals.py",
    "tests/test_aggregation_cli.py",
    "tests/test_faults_cli.py",
]
# First in their lane, in this order: a worker is given its next lane while its current one has two
# tests left, and the next lane waits behind them; so a lane's longest tests come first. The
# outage tests (a server away for minutes) and the Suspended run end the `waiting` lane with its
# two short tests: last, they held the fault suite's lane back for 3.5 minutes (650 s).
FIRST_IN_LANE = [
    "tests/test_service_outage.py",
    "tests/test_service_lifecycle.py::test_a_run_suspended_in_the_ui_stays_suspended_and_can_be_resumed",
]
# Last in their lane: six runs at once load both cores for minutes, best once most lanes are done.
# While one is still to run, its worker's next lane is the last one waiting (a short module), not
# the next long one: the `money` lane, given to that worker as the scale test began, waited 2.5
# minutes behind it and then ran alone at the end of the suite (680 s instead of ~600).
LAST_IN_LANE = {"tests/test_scale_service.py"}


def _reserved_names_fail_at_once() -> None:
    """Names under `.example` (RFC 2606: they never resolve) fail in this process at once, as a
    resolver says NXDOMAIN, instead of being asked of the machine's resolver.

    The synthetic crowds' images are `https://img.example/...`: an aggregate flow fetches their
    thumbnails in 8 threads, and a resolver that answers one query at a time let the others wait
    out its 5 s timeout (measured here: one lookup 1 ms, 40 lookups in 8 threads 5.0 s each; one
    aggregate flow test 14 s, 4 CPU-s). The fetch fails as before (the image is absent from the
    galleries), only sooner.
    """
    resolve = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if isinstance(name, str) and name.rstrip(".").lower().endswith(".example"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return resolve(host, *args, **kwargs)

    socket.getaddrinfo = getaddrinfo


_reserved_names_fail_at_once()


def lane_of(nodeid: str) -> str:
    module = nodeid.split("::", 1)[0]
    return LANES.get(module, module)


def _rank(item: pytest.Item) -> tuple[int, int, bool]:
    lane = lane_of(item.nodeid)
    first = LONGEST_FIRST.index(lane) if lane in LONGEST_FIRST else len(LONGEST_FIRST)
    early = next(
        (i for i, start in enumerate(FIRST_IN_LANE) if item.nodeid.startswith(start)), len(FIRST_IN_LANE)
    )
    return first, early, item.nodeid.split("::", 1)[0] in LAST_IN_LANE


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse a module that uses a shared fixture outside its lane; put the longest lanes first."""
    for item in items:
        for fixture in getattr(item, "fixturenames", ()):
            if fixture in SHARED and lane_of(item.nodeid) not in SHARED[fixture]:
                raise pytest.UsageError(
                    f"{item.nodeid} uses `{fixture}`: add its module to LANES in tests/conftest.py "
                    f"(lane {sorted(SHARED[fixture])[0]!r}), or each lane would start its own"
                )
    items.sort(key=_rank)  # stable: otherwise modules and tests keep their order within a lane


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadscope` with our lanes as its scopes, in collection order (longest first)."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class LaneScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return lane_of(nodeid)

        def _assign_work_unit(self, node: Any) -> None:
            """The next lane, or the last one waiting while a LAST_IN_LANE test is still to run here."""
            pending = (
                nodeid
                for unit in self.assigned_work.get(node, {}).values()
                for nodeid, done in unit.items()
                if not done
            )
            if any(nodeid.split("::", 1)[0] in LAST_IN_LANE for nodeid in pending):
                self.workqueue.move_to_end(next(reversed(self.workqueue)), last=False)
            super()._assign_work_unit(node)

    config.option.loadscopereorder = False
    return LaneScheduling(config, log)
