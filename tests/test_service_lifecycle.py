"""`make up` / `make status` / `make down` of the default (SQLite) profile, from nothing and back.

The shared service of the other service tests runs the PostgreSQL profile; this one checks the
default a new user gets: a cold `up` starts everything and deploys, a second `up` only checks
(a few seconds), `status` needs no variables, `down` stops everything, a second `down` finds
nothing to stop. No flow run here (the shared service runs them).
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable

import pytest

from crowdclust import service
from tests.fixtures.service import service_config, service_folder, watched

pytestmark = pytest.mark.slow


def test_sqlite_profile_up_twice_status_down_twice():
    folder = service_folder()
    cfg = service_config(folder, profile="sqlite", workers=1)
    with watched(cfg, folder):
        _up_twice_status_down_twice(cfg)
    shutil.rmtree(folder, ignore_errors=True)


def _up_twice_status_down_twice(cfg) -> None:
    try:
        started = time.monotonic()
        seconds = service.up(cfg, say=lambda _: None)
        print(f"cold up (sqlite): {time.monotonic() - started:.1f} s {seconds}")
        assert (cfg.state_dir / "prefect" / "prefect.db").exists()

        said: list[str] = []
        started = time.monotonic()
        service.up(service.load(cfg.state_dir), say=said.append)
        warm = time.monotonic() - started
        print(f"warm up (sqlite): {warm:.1f} s")
        assert "deployments: unchanged" in said and not [s for s in said if "started" in s], said

        parts = service.status(service.load(cfg.state_dir))
        assert parts == {"server": True, "emulator": True, "files": True, "worker-1": True}, parts
    finally:
        said = []
        started = time.monotonic()
        service.down(service.load(cfg.state_dir), say=said.append)
        print(f"down: {time.monotonic() - started:.1f} s")
    assert set(said) == {"worker-1: stopped", "emulator: stopped", "files: stopped", "server: stopped"}, said
    assert not any(service.status(service.load(cfg.state_dir)).values())
    again: list[str] = []
    service.down(service.load(cfg.state_dir), say=again.append)
    assert all(line.endswith("not running") for line in again), again


def test_stopping_a_worker_terminates_its_flow_runs_while_it_still_runs(monkeypatch, tmp_path):
    """`make down` during a run's wait: terminated after their worker had begun to shut down, the
    flow runs died within half a second with no crash hook, their pools open, their state Running
    and their run-key slot held (the stopping worker kills its runs' processes with SIGKILL).
    Measured on a live service: in that order main pool and training stayed open; runs first, the
    run ended Crashed and its hook closed them. The order is what this checks."""
    from crowdclust.service import supervisor

    calls: list[str] = []
    monkeypatch.setattr(supervisor, "read_pid", lambda cfg, name: 4242)
    monkeypatch.setattr(supervisor, "children", lambda pid, running="": [4343])
    monkeypatch.setattr(supervisor, "terminate", lambda pids: calls.append(f"terminate {pids}"))
    monkeypatch.setattr(supervisor, "stop_process", lambda cfg, name: calls.append(f"stop {name}") or True)
    said: list[str] = []
    supervisor.stop(service_config(tmp_path), "worker-1", said.append)
    assert calls == ["terminate [4343]", "stop worker-1"], calls
    assert said == ["worker-1: terminated its 1 flow-run process(es)", "worker-1: stopped"]


SLEEPER = """
import time
from prefect import flow
from prefect.runtime import flow_run

@flow(name="lost-with-its-host")
def sleeper():
    print(flow_run.id, flush=True)
    time.sleep(600)

sleeper()
"""


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

    monkeypatch.setattr(deployer, "HEARTBEAT_SECONDS", 10)  # a window of 30 s, not 90: a shorter test
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
            # The host goes: the run and the server die together, nobody reports anything.
            sleeper.kill()
            server = read_pid(cfg, "server")
            assert server is not None
            os.killpg(server, signal.SIGKILL)
            # Back after Prefect's own 60 s of keeping an expired bucket, and some.
            time.sleep(max(0.0, end + 60 + 15 - time.time()))
            supervisor.start(cfg, "server", say=lambda _: None)
            state: dict = {}
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                state = httpx.get(f"{cfg.api_url}/flow_runs/{run_id}", timeout=10).json()["state"]
                if state["type"] != "RUNNING":
                    break
                time.sleep(2)
            assert state["type"] == "CRASHED", state
            assert state["message"].startswith("no heartbeat for 30 s"), state
        finally:
            if sleeper is not None and sleeper.poll() is None:
                sleeper.kill()
            service.down(service.load(cfg.state_dir), say=lambda _: None)
    shutil.rmtree(folder, ignore_errors=True)


SUSPENDABLE_YAML = """
name: suspendable
prefect-version: 3.9.1
build: null
push: null
pull: null
deployments:
  - name: suspendable
    entrypoint: tests/fixtures/suspendable_flow.py:suspendable
    work_pool: {name: crowdclust, work_queue_name: default}
"""


def test_a_run_suspended_in_the_ui_stays_suspended_and_can_be_resumed(monkeypatch):
    """Suspend on a running run's page takes effect at the run's next state change: its process goes
    on with the stage in hand, sending heartbeats, and then ends with the run Suspended. The heartbeat
    automation took that silence for a lost machine and set the run Crashed 90 s later, so its Resume
    button was gone (found on a live service: a 1,000-image demo run Suspended during its wait went on
    to complete its pool, ended Suspended, and was Crashed 90 s after that, Resume or no). Here a real
    deployment run on the service's own worker is Suspended as the UI does it. A second run, not a
    worker's, beats after the first one's process ended and is then killed: once the automation has
    crashed it, the window of the suspended run's last heartbeat has closed too. The suspended run must
    still read Suspended, and its Resume must hand it to the worker again."""
    import subprocess
    import sys
    from dataclasses import replace
    from datetime import UTC, datetime, timedelta

    import httpx
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from crowdclust.service import deployer
    from crowdclust.service.processes import children, read_pid

    # A window of 60 s, not 90 (a shorter test), still longer than the runs' 30 s between heartbeats.
    monkeypatch.setattr(deployer, "HEARTBEAT_SECONDS", 20)
    folder = service_folder()
    (folder / "prefect.yaml").write_text(SUSPENDABLE_YAML)
    cfg = replace(service_config(folder, profile="sqlite", workers=1), prefect_yaml=folder / "prefect.yaml")
    api = httpx.Client(base_url=cfg.api_url, timeout=10)

    def state(run_id: str) -> dict:
        return api.get(f"/flow_runs/{run_id}").json()["state"]

    def until(what: str, done: Callable[[], bool], seconds: float = 180) -> None:
        deadline = time.monotonic() + seconds
        while not done():
            assert time.monotonic() < deadline, what
            time.sleep(1)

    lost = None
    with watched(cfg, folder):
        try:
            service.up(cfg, say=lambda _: None)
            with temporary_settings(updates={PREFECT_API_URL: cfg.api_url}):
                deployer.ensure_unresponsive_run_automation()
            (deployment,) = api.post("/deployments/filter", json={}).json()
            run_id = api.post(f"/deployments/{deployment['id']}/create_flow_run", json={}).json()["id"]
            until("the worker never started the run", lambda: state(run_id)["type"] == "RUNNING")
            # What the run page's Suspend button sends (Prefect's UI, its suspend modal).
            details = {
                "pause_timeout": (datetime.now(UTC) + timedelta(minutes=30)).isoformat(),
                "pause_reschedule": True,
            }
            suspend = {"state": {"type": "PAUSED", "name": "Suspended", "state_details": details}}
            assert api.post(f"/flow_runs/{run_id}/set_state", json=suspend).json()["status"] == "ACCEPT"
            worker = read_pid(cfg, "worker-1")
            until(
                "the suspended run's process did not end",
                lambda: not children(worker, running="prefect.engine"),
            )
            lost = subprocess.Popen(
                [sys.executable, "-c", SLEEPER], env=cfg.env(), stdout=subprocess.PIPE, text=True
            )
            assert lost.stdout is not None
            lost_id = lost.stdout.readline().strip()
            time.sleep(2)  # its first heartbeat on its way
            lost.kill()
            until("the automation never crashed the silent run", lambda: state(lost_id)["type"] == "CRASHED")
            after = state(run_id)
            assert (after["type"], after["name"]) == ("PAUSED", "Suspended"), after
            assert api.post(f"/flow_runs/{run_id}/resume", json={}).json()["status"] == "ACCEPT"
            until("the worker never ran the resumed run", lambda: state(run_id)["type"] == "RUNNING")
        finally:
            if lost is not None and lost.poll() is None:
                lost.kill()
            api.close()
            service.down(service.load(cfg.state_dir), say=lambda _: None)
    shutil.rmtree(folder, ignore_errors=True)


SLEEPER_YAML = SUSPENDABLE_YAML.replace(
    "name: suspendable\n    entrypoint", "name: long-sleeper\n    entrypoint"
).replace("suspendable_flow.py:suspendable", "suspendable_flow.py:long_sleeper")


def test_cancel_still_stops_a_run_that_was_running_while_the_server_was_away():
    """The worker's watch for Cancel gave up for good after ~26 s of a Prefect server away (Prefect's
    polling fallback quits after 3 failed polls): on a live service whose server was killed and
    started again by `make up` 45 s later, Cancel left a 1,000-image run Cancelling while its
    process went on with its wait and its pool kept being paid for. Here a real deployment run on
    the service's own worker outlives a 75 s outage of the server, then is cancelled as the UI does;
    its process must end, and the run read Cancelled."""
    from dataclasses import replace

    import httpx

    from crowdclust.service import supervisor
    from crowdclust.service.processes import children, read_pid

    folder = service_folder()
    (folder / "prefect.yaml").write_text(SLEEPER_YAML)
    cfg = replace(service_config(folder, profile="sqlite", workers=1), prefect_yaml=folder / "prefect.yaml")
    api = httpx.Client(base_url=cfg.api_url, timeout=10)

    def until(what: str, done: Callable[[], bool], seconds: float = 240) -> None:
        deadline = time.monotonic() + seconds
        while not done():
            assert time.monotonic() < deadline, what
            time.sleep(1)

    with watched(cfg, folder):
        try:
            service.up(cfg, say=lambda _: None)
            (deployment,) = api.post("/deployments/filter", json={}).json()
            run_id = api.post(f"/deployments/{deployment['id']}/create_flow_run", json={}).json()["id"]
            until(
                "the worker never started the run",
                lambda: api.get(f"/flow_runs/{run_id}").json()["state_type"] == "RUNNING",
            )
            worker = read_pid(cfg, "worker-1")
            assert worker is not None
            flow_run_process = children(worker, running="prefect.engine")
            assert flow_run_process, "the run has no process"
            supervisor.stop(cfg, "server", say=lambda _: None)
            time.sleep(75)  # the outage: past the 3 failed polls after which Prefect's watch quit
            supervisor.start(cfg, "server", say=lambda _: None)
            api.close()
            api = httpx.Client(base_url=cfg.api_url, timeout=10)
            assert children(worker, running="prefect.engine") == flow_run_process  # it outlived the outage
            cancel = {"state": {"type": "CANCELLING", "name": "Cancelling"}}  # the run page's Cancel
            assert api.post(f"/flow_runs/{run_id}/set_state", json=cancel).json()["status"] == "ACCEPT"
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
