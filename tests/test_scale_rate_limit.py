"""The Toloka rate-limit hook: real toloka-kit client, emulator with a per-token limit, Prefect API.

- 429s the emulator answers above its limit are retried by toloka-kit and never reach the caller;
- with the hook on and the Prefect rate limit below the emulator's, no request is refused at all;
- with the hook on and no such limit on the server, the limit is looked up once, not per request;
- without the service's hook a run throttles in its process at `CROWDCLUST_TOLOKA_RATES` (sandbox and
  production by default), and with no rate for its environment the client is plain toloka-kit.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tasks import toloka_rate
from tasks.params import TolokaTarget
from tasks.toloka_api import RateLimitedClient, make_client


def _client(emu: Any, monkeypatch: pytest.MonkeyPatch, hook: bool, rates: str = "") -> Any:
    monkeypatch.setenv("TOLOKA_TOKEN", emu.token)
    monkeypatch.delenv("CROWDCLUST_LOCAL_URL", raising=False)
    monkeypatch.setenv("CROWDCLUST_TOLOKA_RATE_LIMIT", "true" if hook else "false")
    monkeypatch.setenv("CROWDCLUST_TOLOKA_RATES", rates)
    toloka_rate._missing.forget()
    return make_client(TolokaTarget(environment="local", url=emu.url))


def _hammer(client: Any, n: int, threads: int = 4) -> float:
    """`n` requests from `threads` threads at once; seconds they took."""
    started = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda _: list(client.get_projects()), range(n)))  # a lazy generator
    return time.monotonic() - started


def _least_seconds(n: int, rate: float) -> float:
    """Nine tenths of the time `n` requests take under `limit_shape(rate)`: a burst, then its refill."""
    limit, decay = toloka_rate.limit_shape(rate)
    burst, per_second = limit / toloka_rate.SLOTS_PER_REQUEST, decay / toloka_rate.SLOTS_PER_REQUEST
    return (n - burst) / per_second * 0.9


def _rate(emu: Any) -> tuple[int, int]:
    """Peak requests/s and 429s the emulator saw for its token (summed over token labels)."""
    rate = emu.stats()["rate"]
    return max(rate["peak_per_second"].values(), default=0), sum(rate["throttled"].values())


def test_429s_are_retried_by_toloka_kit(emulator_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    with emulator_factory(rate_limit=4.0) as emu:
        client = _client(emu, monkeypatch, hook=False)
        assert type(client) is not RateLimitedClient  # off outside the service: plain toloka-kit
        _hammer(client, 8)
        peak, refused = _rate(emu)
    assert refused > 0, "the emulator never refused: the test does not exercise 429s"
    assert peak <= 4


def test_prefect_rate_limit_keeps_requests_under_the_emulator_limit(
    prefect_harness: None, emulator_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    limit, decay = toloka_rate.limit_shape(8.0)  # at most 8 in any second: a burst of 2, then 6/s
    with get_client(sync_client=True) as api:
        api.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name="toloka-api-local", limit=limit, slot_decay_per_second=decay)
        )
    try:
        with emulator_factory(rate_limit=10.0) as emu:
            client = _client(emu, monkeypatch, hook=True)
            assert isinstance(client, RateLimitedClient)
            seconds = _hammer(client, 32)
            peak, refused = _rate(emu)
    finally:
        with get_client(sync_client=True) as api:
            api.delete_global_concurrency_limit_by_name("toloka-api-local")
    assert refused == 0, f"the emulator refused {refused} requests: the Prefect limit did not hold"
    assert peak <= 8, f"{peak} requests in one second: the limit admits 8"
    assert seconds >= _least_seconds(32, 8.0), f"32 requests in {seconds:.1f} s: not rate limited"
    print(f"32 requests through the Prefect rate limit (8 in any second): {seconds:.1f} s")


@pytest.mark.parametrize("rate", [2.0, 3.0, 10.0, 15.0, 100.0])
def test_limit_shape_keeps_every_second_under_the_rate(rate: float) -> None:
    limit, decay = toloka_rate.limit_shape(rate)
    burst, refill = limit / toloka_rate.SLOTS_PER_REQUEST, decay / toloka_rate.SLOTS_PER_REQUEST
    assert burst >= 1 and refill > 0 and burst + refill == rate


def test_missing_limit_is_looked_up_once(
    prefect_harness: None, emulator_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    lookups: list[str] = []
    real = toloka_rate._limit_exists
    monkeypatch.setattr(toloka_rate, "_limit_exists", lambda name: lookups.append(name) or real(name))
    with emulator_factory() as emu:
        client = _client(emu, monkeypatch, hook=True)
        _hammer(client, 10)
    assert lookups == ["toloka-api-local"]


def test_a_run_without_the_service_keeps_under_the_rate_it_is_given(
    emulator_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`crowdclust run` and `make demo` have no Prefect limits: the exam gating's 8 threads met a
    limit of 10/s at once, and toloka-kit's retries (4 s, then 8 s) left about one request a second."""
    with emulator_factory(rate_limit=10.0) as emu:
        client = _client(emu, monkeypatch, hook=False, rates="local=5")
        assert isinstance(client, RateLimitedClient)
        seconds = _hammer(client, 20, threads=8)
        peak, refused = _rate(emu)
    # The bucket sends at most 5 in any second; the emulator counts arrivals, and on a loaded machine
    # requests sent late reach it next to the following ones: a bucket of 8 under the emulator's 10
    # saw 9 arrivals in a second once in seven full `make test` runs, and a bucket of 6 had two of its
    # requests refused in a suite run on 5 lanes (more load than `make test`'s 4): half the limit.
    assert refused == 0, f"the emulator refused {refused} requests: the process's limit did not hold"
    assert peak < 10
    assert seconds >= _least_seconds(20, 5.0), f"20 requests in {seconds:.1f} s: not rate limited"
    print(f"20 requests through the process's rate limit (5 in any second): {seconds:.1f} s")


def test_a_server_without_the_limit_leaves_the_process_bucket_in_charge(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the Prefect limit on (a worker, or `crowdclust run` against a server of one's own) and
    the server without `toloka-api-<env>`, every request still waits for the process's bucket: it
    went through unthrottled, so turning the shared limit on for `crowdclust run` would have taken a
    run's own 10/s away from it on a server that never had the limits."""
    import httpx

    waits: list[str] = []

    class Counting:
        def acquire(self) -> None:
            waits.append("bucket")

    monkeypatch.setenv("CROWDCLUST_TOLOKA_RATE_LIMIT", "true")
    monkeypatch.setattr(toloka_rate, "_limit_exists", lambda name: False)
    monkeypatch.setattr(toloka_rate, "local_bucket", lambda environment: Counting())
    toloka_rate._missing.forget()
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={}))
    with toloka_rate.throttle(httpx.Client(transport=transport), "sandbox") as session:
        for _ in range(3):
            session.get("http://toloka.test/api/v1/projects")
    toloka_rate._missing.forget()
    assert waits == ["bucket"] * 3


def _requests_through_the_hook(monkeypatch: pytest.MonkeyPatch, server: type) -> list[str]:
    """Three requests through a sandbox client's hook with the shared limit on and found by its
    look-up, slots asked of `server` (a stand-in for Prefect's client); returns the process bucket's
    waits."""
    import httpx

    waits: list[str] = []

    class Counting:
        def acquire(self) -> None:
            waits.append("bucket")

    monkeypatch.setenv("CROWDCLUST_TOLOKA_RATE_LIMIT", "true")
    monkeypatch.setattr(toloka_rate, "_limit_exists", lambda name: True)
    monkeypatch.setattr(toloka_rate, "local_bucket", lambda environment: Counting())
    monkeypatch.setattr(toloka_rate, "_prefect_client", server)
    toloka_rate._missing.forget()
    toloka_rate._slots.close()
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={}))
    try:
        with toloka_rate.throttle(httpx.Client(transport=transport), "sandbox") as session:
            for _ in range(3):
                assert session.get("http://toloka.test/api/v1/projects").status_code == 200
    finally:
        toloka_rate._missing.forget()
        toloka_rate._slots.close()
    return waits


def test_a_server_that_does_not_answer_leaves_the_process_bucket_in_charge(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Prefect server down under a run that takes its rate limit (`make down` by another user of
    the service, a restart): Prefect's client gives up after about a minute and raises; raised on,
    that failed the run's wait (`Unable to acquire concurrency slots on ['toloka-api-local']`). One
    failure now hands the requests to the process's bucket until the next look-up."""
    import httpx

    tries: list[list[str]] = []

    class Refused:  # what Prefect's client raises once it gave up on the server
        def increment_concurrency_slots(self, names: list[str], slots: int, mode: str) -> None:
            tries.append(names)
            raise httpx.ConnectError("[Errno 111] Connection refused")

    waits = _requests_through_the_hook(monkeypatch, Refused)
    assert tries == [["toloka-api-sandbox"]] and waits == ["bucket"] * 3


def test_the_process_bucket_admits_a_burst_then_the_rest_of_the_rate() -> None:
    now = [0.0]
    bucket = toloka_rate.Bucket(10.0, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    sent = []
    for _ in range(40):
        bucket.acquire()
        sent.append(now[0])
    assert max(sum(1 for t in sent if start <= t < start + 1.0) for start in sent) <= 10
    assert sent[1] == 0.0 and sent[2] > 0  # a burst of 2, then 8 a second
    assert sent[-1] == pytest.approx((40 - 2) / 8)


def test_rates_name_what_is_wrong() -> None:
    assert toloka_rate.parse_rates("local=8, production=20") == {
        "local": 8.0,
        "sandbox": 10.0,
        "production": 20.0,
    }
    with pytest.raises(ValueError, match="unknown Toloka environment 'prod'"):
        toloka_rate.parse_rates("prod=5")
    with pytest.raises(ValueError, match="'local=fast': expected ENV=REQUESTS_PER_SECOND"):
        toloka_rate.parse_rates("local=fast")


def test_a_refused_slot_is_asked_again_after_a_growing_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server refuses (423) with its `Retry-After`; each further refusal doubles the pause, up to
    MAX_RETRY_SECONDS, stretched by 1-2 so that processes refused together come back apart. Prefect's
    own `rate_limit` came back after `Retry-After` every time: six runs sharing a limit made 3,109
    refused calls for 1,313 grants, each a write that loses the slots decayed since the last one."""
    import httpx

    answers = [423, 423, 423, 423, 423, 200]
    asked: list[tuple[list[str], int, str]] = []

    class Server:
        def increment_concurrency_slots(self, names: list[str], slots: int, mode: str) -> httpx.Response:
            asked.append((names, slots, mode))
            request = httpx.Request("POST", "http://prefect.test/api/v2/concurrency_limits/increment")
            code = answers[len(asked) - 1]
            body = [{"id": "x", "name": names[0], "limit": 500}] if code == 200 else {"detail": "locked"}
            response = httpx.Response(code, json=body, headers={"Retry-After": "0.3"}, request=request)
            response.raise_for_status()
            return response

    monkeypatch.setattr(toloka_rate, "_prefect_client", Server)
    slots, pauses = toloka_rate._Slots(), []
    assert slots.take("toloka-api-local", sleep=pauses.append) is True
    assert asked == [(["toloka-api-local"], toloka_rate.SLOTS_PER_REQUEST, "rate_limit")] * 6
    floors = [0.3, 0.6, 1.0, 1.0, 1.0]  # Retry-After, doubled, capped at MAX_RETRY_SECONDS
    assert len(pauses) == 5 and all(f <= p <= 2 * f for p, f in zip(pauses, floors, strict=True)), pauses
    assert toloka_rate.MAX_RETRY_SECONDS == 1.0


def test_a_limit_deleted_after_its_look_up_hands_the_requests_to_the_bucket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server answers a slot with no limit (an operator deleted `toloka-api-<env>` after the
    process looked it up): the request, and those after it until the next look-up, wait for the
    process's bucket, and the server is not asked a slot again meanwhile."""
    import httpx

    asked: list[list[str]] = []

    class Gone:
        def increment_concurrency_slots(self, names: list[str], slots: int, mode: str) -> httpx.Response:
            asked.append(names)
            request = httpx.Request("POST", "http://prefect.test/api/v2/concurrency_limits/increment")
            return httpx.Response(200, json=[], request=request)

    waits = _requests_through_the_hook(monkeypatch, Gone)
    assert asked == [["toloka-api-sandbox"]] and waits == ["bucket"] * 3


def test_a_hook_run_by_a_signal_mid_acquisition_throttles_with_the_bucket_instead_of_waiting_for_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A SIGTERM's handler (Prefect's, then the crash hook that closes the pools) runs in the main
    thread on top of what it was doing, here a slot's request or a limit's look-up: the hook's own
    Toloka requests came back to the lock their thread held and would have waited for ever, the
    pools left open. Nested so, they now take no slot and go through the process's bucket."""
    import threading

    import httpx

    nested: list[bool] = []

    class Interrupted:  # the handler runs while this thread is inside the server's call
        def increment_concurrency_slots(self, names: list[str], slots: int, mode: str) -> httpx.Response:
            nested.append(toloka_rate.acquire(names[0]))
            request = httpx.Request("POST", "http://prefect.test/api/v2/concurrency_limits/increment")
            return httpx.Response(200, json=[{"id": "x", "name": names[0]}], request=request)

    def looked_up(name: str) -> bool:  # ... or inside the limit's look-up
        nested.append(toloka_rate.acquire(name))
        return True

    monkeypatch.setattr(toloka_rate, "_limit_exists", looked_up)
    monkeypatch.setattr(toloka_rate, "_prefect_client", Interrupted)
    toloka_rate._missing.forget()
    toloka_rate._slots.close()
    done: list[bool] = []
    thread = threading.Thread(
        target=lambda: done.append(toloka_rate.acquire("toloka-api-sandbox")), daemon=True
    )
    try:
        thread.start()
        thread.join(10)
    finally:
        toloka_rate._missing.forget()
        toloka_rate._slots.close()
    assert not thread.is_alive(), "the nested request waited for its own thread's lock"
    assert done == [True] and nested == [False, False], (done, nested)
