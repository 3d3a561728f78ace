"""The service's Prefect server away while runs go on: a run lost with its host is Crashed once the
server returns, and a run that outlived an outage still stops on Cancel. Each on a SQLite service
of its own (the server is stopped and started), apart from the shared one; in the `waiting` lane with
the lifecycle tests (`tests/conftest.py`), so that its waits run beside the other lanes' work.
"""

from __future__ import annotations

import contextlib
import shutil
import time

import pytest

from crowdclust import service
from tests.fixtures.service import (
    SLEEPER,
    api_post,
    one_deployment_yaml,
    service_config,
    service_folder,
    until,
    watched,
)

pytestmark = pytest.mark.slow


def test_a_run_lost_while_the_server_was_down_is_crashed_when_the_server_returns(monkeypatch):
    """The whole service's host lost (a power cut: server, worker and flow run killed at once) and
    `make up` three minutes later: the run showed Running for good. Prefect sweeps an automation's
    bucket 60 s after its end without evaluating it, and a server that starts sweeps before its
    proactive triggers first look, so the heartbeat automation never crashed a run whose silence
    began while the server was down for longer than that. Found on a live service (`kill -9` of
    every part mid-labelling, `make up` after 175 s: Running 2 minutes later; with the server's
    longer buffer, Crashed 45 s after `make up`). Here a real flow run beats once and dies with the
    server; the server returns a minute after the automation's window closed."""
    import os
    import signal
    import sqlite3
    import subprocess
    import sys
    from datetime import UTC, datetime

    import httpx
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from crowdclust.service import deployer, supervisor
    from crowdclust.service.processes import read_pid

    monkeypatch.setattr(deployer, "HEARTBEAT_SECONDS", 5)  # a window of 15 s, not 90: a shorter test
    folder = service_folder()
    cfg = service_config(folder, profile="sqlite", workers=1)
    database = cfg.state_dir / "prefect" / "prefect.db"
    with watched(cfg, folder):
        sleeper = None
        try:
            cfg.state_dir.mkdir(parents=True, exist_ok=True)
            supervisor.start(cfg, "server", say=lambda _: None)
            with temporary_settings(updates={PREFECT_API_URL: cfg.api_url}):
                deployer.ensure_unresponsive_run_automation()
            sleeper = subprocess.Popen(
                [sys.executable, "-c", SLEEPER], env=cfg.env(), stdout=subprocess.PIPE, text=True
            )
            assert sleeper.stdout is not None
            run_id = sleeper.stdout.readline().strip()
            assert run_id, sleeper.communicate()

            def window_end() -> float | None:
                """When the automation's window after the run's heartbeat closes (None: not heard yet)."""
                with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
                    rows = db.execute('select "end" from automation_bucket').fetchall()
                ends = [datetime.fromisoformat(end).replace(tzinfo=UTC).timestamp() for (end,) in rows]
                return max(ends, default=None)

            deadline = time.monotonic() + 120
            while (end := window_end()) is None:
                assert time.monotonic() < deadline, "the server never heard the run's heartbeat"
                time.sleep(0.5)
            # Still Running: with its window 15 s long, a slow poll here could let the server crash
            # it before it goes down, and the check below would pass without a restart to test.
            running = httpx.get(f"{cfg.api_url}/flow_runs/{run_id}", timeout=10).json()["state"]
            assert running["type"] == "RUNNING", running
            # The host goes: the run and the server die together, nobody reports anything.
            sleeper.kill()
            server = read_pid(cfg, "server")
            assert server is not None
            os.killpg(server, signal.SIGKILL)
            # Back after Prefect's own 60 s of keeping an expired bucket (and the server's start).
            time.sleep(max(0.0, end + 60 + 5 - time.time()))
            supervisor.start(cfg, "server", say=lambda _: None)
            state: dict = {}
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                state = httpx.get(f"{cfg.api_url}/flow_runs/{run_id}", timeout=10).json()["state"]
                if state["type"] != "RUNNING":
                    break
                time.sleep(2)
            assert state["type"] == "CRASHED", state
            assert state["message"].startswith("no heartbeat for 15 s"), state
        finally:
            if sleeper is not None and sleeper.poll() is None:
                sleeper.kill()
            service.down(service.load(cfg.state_dir), say=lambda _: None)
    shutil.rmtree(folder, ignore_errors=True)


def test_cancel_still_stops_a_run_that_was_running_while_the_server_was_away():
    """The worker's watch for Cancel gave up for good after ~26 s of a Prefect server away (Prefect's
    polling fallback quits after 3 failed polls): on a live service whose server was killed and
    started again by `make up` 45 s later, Cancel left a 1,000-image run Cancelling while its
    process went on with its wait and its pool kept being paid for. Here a real deployment run on
    the service's own worker outlives a 45 s outage of the server, then is cancelled as the UI does;
    its process must end, and the run read Cancelled."""
    from dataclasses import replace

    import httpx

    from crowdclust.service import supervisor
    from crowdclust.service.processes import children, read_pid

    folder = service_folder()
    (folder / "prefect.yaml").write_text(one_deployment_yaml("long_sleeper"))
    cfg = replace(service_config(folder, profile="sqlite", workers=1), prefect_yaml=folder / "prefect.yaml")
    api = httpx.Client(base_url=cfg.api_url, timeout=10)

    with watched(cfg, folder):
        try:
            service.up(cfg, say=lambda _: None)
            (deployment,) = api.post("/deployments/filter", json={}).json()
            run_id = api_post(api, f"/deployments/{deployment['id']}/create_flow_run", {})["id"]
            until(
                "the worker never started the run",
                lambda: api.get(f"/flow_runs/{run_id}").json()["state_type"] == "RUNNING",
            )
            worker = read_pid(cfg, "worker-1")
            assert worker is not None
            flow_run_process = children(worker, running="prefect.engine")
            assert flow_run_process, "the run has no process"
            supervisor.stop(cfg, "server", say=lambda _: None)
            # The outage: past the 3 failed polls (10 s apart) after which Prefect's watch quit.
            time.sleep(45)
            supervisor.start(cfg, "server", say=lambda _: None)
            api.close()
            api = httpx.Client(base_url=cfg.api_url, timeout=10)
            assert children(worker, running="prefect.engine") == flow_run_process  # it outlived the outage
            cancel = {"state": {"type": "CANCELLING", "name": "Cancelling"}}  # the run page's Cancel
            assert api_post(api, f"/flow_runs/{run_id}/set_state", cancel)["status"] == "ACCEPT"
            until(
                "the cancelled run's process went on", lambda: not children(worker, running="prefect.engine")
            )
            until(
                "the run never read Cancelled",
                lambda: api.get(f"/flow_runs/{run_id}").json()["state_type"] == "CANCELLED",
            )
        finally:
            api.close()
            service.down(service.load(cfg.state_dir), say=lambda _: None)
    shutil.rmtree(folder, ignore_errors=True)
