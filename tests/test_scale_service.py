"""Six runs at once on the session service (2 workers), under a per-token rate limit set at test time.

The shared service (`svc`) runs unthrottled. For this test only, the emulator gets a per-token limit
(`/_emulator/config?rate_limit=`, answering 429 above it) and the server the Prefect rate limit
`toloka-api-local` below it, through the Prefect API, as an operator would; both are removed
afterwards. New flow-run processes find the limit when they start.

Six tiny demo runs with distinct run keys are created at once through the server's REST API (what a
"Run" in the UI or `prefect deployment run` does). While they run, a worker host "dies" while one of
its runs is in its wait: that run's process and then the worker are killed with SIGKILL (the worker
reports the run Crashed before it dies). The run is Retried with `prefect flow-run retry` and finishes
on the other worker from its Cached steps. Then: every run completed, every Toloka object exists
exactly once per run key, the emulator answered no 429 at all (the Prefect limit kept every second
under its limit), and the money adds up: each run's summary.json cost is what Toloka charged its run
key, and the six together are what left the account.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from crowdclust import service
from crowdclust.service.processes import parent_pid, read_pid
from tasks.params import run_dir_of
from tasks.toloka_api import RunRegistry
from tasks.toloka_rate import limit_name, limit_shape
from tests.fixtures.service import (
    SCALE_EMULATOR_LIMIT,
    SCALE_IMAGES,
    SCALE_PREFECT_RATE,
    SCALE_RUNS,
    TERMINAL,
    Service,
    scale_runs,
)

WORKERS = ("worker-1", "worker-2")

# In `make test`, last in its lane (159 s there, 196 s alone at load 4, on a slow 2-core machine; its
# time is CPU: six flow-run processes, the server and the emulator share the cores); `make test-scale`
# runs it alone. The bound is generous: at a load average of 20 the six runs once took 13 minutes.
pytestmark = pytest.mark.timeout(1800)


@contextmanager
def scale_settings(svc: Service) -> Iterator[None]:
    """The scale test's emulator and Prefect settings on the shared service, restored afterwards.

    The emulator answers 429 above SCALE_EMULATOR_LIMIT requests/s per token; the Prefect rate limit
    `toloka-api-local` admits SCALE_PREFECT_RATE.
    """
    name = limit_name("local")
    limit, decay = limit_shape(SCALE_PREFECT_RATE)
    _emulator_config(svc, rate_limit=SCALE_EMULATOR_LIMIT)
    svc.api.delete(f"/v2/concurrency_limits/{name}")  # a leftover of an interrupted session
    svc.api.post(
        "/v2/concurrency_limits/", json={"name": name, "limit": limit, "slot_decay_per_second": decay}
    ).raise_for_status()
    try:
        yield
    finally:
        svc.api.delete(f"/v2/concurrency_limits/{name}")
        _emulator_config(svc, rate_limit=svc.cfg.emulator_rate_limit or 0)


def _emulator_config(svc: Service, **settings: float) -> dict[str, Any]:
    token = svc.cfg.token_file.read_text().strip()
    response = httpx.post(
        f"{svc.cfg.emulator_url}/_emulator/config",
        params=settings,
        headers={"Authorization": f"OAuth {token}"},
    )
    response.raise_for_status()
    return response.json()


def _emulator_stats(svc: Service) -> dict[str, Any]:
    return svc.api.get(f"{svc.cfg.emulator_url}/_emulator/stats").json()


def _worker_of(svc: Service, run: dict[str, Any]) -> str | None:
    """Which worker started the run's process (its parent chain, from /proc), if it still runs."""
    pid_text = str(run.get("infrastructure_pid") or "").rsplit(":", 1)[-1]
    if not pid_text.isdigit():
        return None
    workers = {read_pid(svc.cfg, name): name for name in WORKERS}
    pid, seen = int(pid_text), set()
    while pid > 1 and pid not in seen:
        if pid in workers:
            return workers[pid]
        seen.add(pid)
        try:
            pid = parent_pid(pid)
        except (OSError, ValueError, IndexError):
            return None
    return None


def _worker_while_it_runs(svc: Service, run_id: str, timeout: float = 600) -> str | None:
    """The worker that runs the flow run, seen while its process lives (after it ends, /proc cannot tell)."""
    seen, deadline = None, time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = svc.flow_run(run_id)
        seen = _worker_of(svc, run) or seen
        if run["state_type"] in TERMINAL:
            break
        time.sleep(0.5)
    return seen


def _kill_a_worker_host(svc: Service, ids: list[str]) -> tuple[str, str]:
    """A worker host dies while one of its runs is in its wait; returns (worker, run id).

    The run's process is killed first (SIGKILL, as a lost machine), so the worker sees it die and
    reports it Crashed; then the worker itself gets SIGKILL. (A host that vanishes with both is
    crashed by the service's heartbeat automation instead, 90 s later.) Flow-run processes have their
    own session: the worker's other runs keep going and report their own states.
    """
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        # One request for all six until some run waits; only then which (a request each).
        for run_id in filter(svc.in_wait, ids if svc.in_wait(*ids) else []):
            run = svc.flow_run(run_id)
            worker = _worker_of(svc, run) if run["state_type"] == "RUNNING" else None
            if worker:
                os.kill(int(str(run["infrastructure_pid"]).rsplit(":", 1)[-1]), signal.SIGKILL)
                crashed = svc.wait(run_id, timeout=60)
                assert crashed["state_type"] == "CRASHED", crashed["state"]
                worker_pid = read_pid(svc.cfg, worker)
                assert worker_pid is not None
                os.kill(worker_pid, signal.SIGKILL)
                return worker, run_id
        time.sleep(0.5)
    raise TimeoutError("no run reached its wait on a known worker")


def test_six_runs_at_once_share_the_rate_limit_and_survive_a_worker(svc: Service) -> None:
    balance = _emulator_stats(svc)["balance"]
    started = time.monotonic()
    with scale_settings(svc):
        runs = scale_runs(svc, uuid.uuid4().hex[:6])
        keys, ids = list(runs), list(runs.values())
        victim, crashed_id = _kill_a_worker_host(svc, ids)
        try:
            svc.prefect("flow-run", "retry", crashed_id)
            survivor = _worker_while_it_runs(svc, crashed_id)
            finals = {run_id: svc.wait(run_id, timeout=600) for run_id in ids}
        finally:
            service.up(svc.cfg, say=lambda _: None)  # restarts the killed worker
        stats = _emulator_stats(svc)
    wall = time.monotonic() - started
    rate = stats["rate"]
    print(
        f"{SCALE_RUNS} runs ({SCALE_IMAGES} images, 8 HITs, overlap 2), 2 workers, {victim} killed: "
        f"{wall:.1f} s; "
        f"emulator peak {rate['peak_per_second']} req/s (limit {rate['limit_per_second']}, Prefect "
        f"{SCALE_PREFECT_RATE:g}), 429s {rate['throttled']}; load {os.getloadavg()}; "
        f"{sum(rate['requests'].values())} requests, most: {dict(list(rate['requests'].items())[:8])}"
    )

    failed = [svc.why(i) for i, r in finals.items() if r["state_type"] != "COMPLETED"]
    assert not failed, "\n\n".join(failed)
    # The retried run resumed on the other worker from what was done before the kill.
    states = svc.tasks_of(crashed_id)
    assert survivor not in (None, victim), survivor
    assert {"setup-labelling", "upload-hits"} <= {t for t, s in states.items() if s[-1] == "Cached"}, states
    # The Prefect limit kept every second under the emulator's limit: not a single 429.
    assert sum(rate["throttled"].values()) == 0, rate
    assert 0 < max(rate["peak_per_second"].values()) <= SCALE_EMULATOR_LIMIT, rate

    client = svc.toloka()
    charged_per_key = {}
    for key in keys:
        objects = svc.objects(f"crowdclust:{key}:")
        # Exam and main project, exam and main pool, one training, one skill: none created twice.
        shape = (objects["projects"], objects["pools"], objects["trainings"], objects["skills"])
        assert shape == (2, 2, 1, 1) and len(set(objects["pool_tags"])) == 2, objects
        summary = json.loads((run_dir_of(svc.cfg.runs_dir, key, key) / "summary.json").read_text())
        charged_per_key[key] = RunRegistry(client, key).spent()
        assert summary["cost"]["spent"] == charged_per_key[key] > 0, (
            key,
            summary["cost"],
            charged_per_key[key],
        )
    assert round(balance - stats["balance"], 4) == round(sum(charged_per_key.values()), 4), charged_per_key
