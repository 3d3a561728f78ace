"""`make up` / `make status` / `make down` of the default (SQLite) profile, from nothing and back.

The shared service of the other service tests runs the PostgreSQL profile; this one checks the
default a new user gets: a cold `up` starts everything and deploys, a second `up` only checks
(a few seconds), `status` needs no variables, `down` stops everything, a second `down` finds
nothing to stop. No flow run here (the shared service runs them).
"""

from __future__ import annotations

import shutil
import time

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
