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
from tests.fixtures.service import service_config, service_folder

pytestmark = pytest.mark.slow


def test_sqlite_profile_up_twice_status_down_twice():
    folder = service_folder()
    cfg = service_config(folder, profile="sqlite", workers=1)
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
    shutil.rmtree(folder, ignore_errors=True)
