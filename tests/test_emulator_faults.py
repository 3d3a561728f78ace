"""Fault injection: 429/500/503 with Toloka bodies, no Retry-After; the client retries; data ends complete."""

from __future__ import annotations

import json
import time

import httpx

from emulator import EmulatorSettings, run_in_background
from tests.fixtures.emulator import create_project, create_simple_pool, create_suites, make_client


def test_injected_faults_have_toloka_bodies_and_no_retry_after():
    with run_in_background(EmulatorSettings(port=0, speed=0, fail_rate=0.5, seed=4)) as emu:
        seen = {}
        with httpx.Client(base_url=emu.url, headers={"Authorization": f"OAuth {emu.token}"}) as raw:
            for _ in range(60):
                response = raw.get("/api/v1/requester")
                if response.status_code != 200:
                    seen[response.status_code] = response
                    assert "retry-after" not in response.headers
                    assert "interval" not in json.dumps(response.json().get("payload"))
        assert set(seen) == {429, 500, 503}
        assert {r.json()["code"] for r in seen.values()} == {
            "TOO_MANY_REQUESTS",
            "INTERNAL_ERROR",
            "REMOTE_SERVICE_UNAVAILABLE",
        }
        with httpx.Client(base_url=emu.url) as raw:  # control endpoints are never faulted
            assert all(raw.get("/_emulator/health").status_code == 200 for _ in range(20))


def test_client_retries_through_faults_and_the_data_ends_complete():
    with run_in_background(EmulatorSettings(port=0, speed=0, fail_rate=0.2, seed=7)) as emu:
        client = make_client(emu)
        project = create_project(client, "faults")
        pool = create_simple_pool(client, project.id, "faulty", 2, reward_per_assignment=0.01)
        urls = [f"{emu.url}/images/digits/d-{i:04d}.png" for i in range(100)]
        for batch in range(3):  # several async creates: some hit the lost-response + 409 idempotency path
            create_suites(client, pool.id, [urls[k : k + 5] for k in range(batch * 20, batch * 20 + 20)])
        assert len(list(client.get_task_suites(pool_id=pool.id))) == 60
        client.open_pool(pool.id)
        while client.get_pool(pool.id).is_open():
            emu.advance(600)
        df = client.get_assignments_df(pool_id=pool.id)
        assert len(df) == 60 * 2 and df["INPUT:images"].nunique() == 60
        stats = emu.stats()
        assert stats["faults_injected"] > 0
        # At least one async create was answered with a fault after its work was done: the client's retry
        # met 409 OPERATION_ALREADY_EXISTS and still no suite was duplicated (60 above).
        assert stats["lost_responses"] > 0


def test_latency_is_added_to_api_answers():
    # 0.8 s, so that "without it" stays far below even when the suite's other lanes load both cores.
    with run_in_background(EmulatorSettings(port=0, speed=0, latency_ms=800)) as emu:
        client = make_client(emu)
        start = time.monotonic()
        client.get_requester()
        assert time.monotonic() - start >= 0.8
        emu.configure(latency_ms=0)
        start = time.monotonic()
        client.get_requester()
        assert time.monotonic() - start < 0.8
