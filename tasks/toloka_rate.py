"""Every Toloka HTTP request takes a slot of the Prefect global rate limit `toloka-api-<environment>`.

Concurrent runs on any number of workers talk to Toloka with the same requester token, so they share
one API quota. The service creates one Prefect global concurrency limit per Toloka environment, with
slot decay (a rate limit); this module makes the toloka-kit client take one slot before each HTTP
request it sends, retries included (a retry is a request the quota counts too). The hook sits on
toloka-kit's per-thread `httpx.Client` (an httpx request event hook), so no call site can forget it.

The shape of the limit. Prefect 3.9's server computes a limit's free slots as
`active - floor(decay x seconds since the row was last updated)` and every acquisition, granted
or denied, updates the row: the fraction of a slot that decayed since the last update is lost
each time, and a denied attempt throws away all the decay since the last update. With one slot
per request and `decay = rate`, requests closer together than `1/rate` never let a slot decay, so
six runs at a nominal 8 requests/s got 1.7/s. So a request takes `SLOTS_PER_REQUEST` slots (the
rounding then loses at most 1/100 of a request per update) and the limit holds a small burst:
`limit_shape(rate)` gives `burst + decay = rate` requests, so any one-second window still sees at
most `rate` requests across all runs and workers, and a run that was quiet can send `burst` at once.

When it is on. Prefect 3.9.1's `rate_limit(name, strict=False)` makes one API call per request even
when the limit does not exist (and then logs a warning per request in a flow run); with no
`PREFECT_API_URL` that call goes to the ephemeral API. So the hook is off unless
`CROWDCLUST_TOLOKA_RATE_LIMIT` is true (the service sets it for its workers), and even then a limit
found missing is remembered per process for `MISSING_TTL` seconds, so a server without the limit
costs one lookup a minute, not one per request.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import httpx

from tasks.settings import Settings

LIMIT_PREFIX = "toloka-api"
MISSING_TTL = 60.0  # seconds a missing limit is remembered before it is looked up again
SLOTS_PER_REQUEST = 100  # Prefect slots one Toloka request takes (see "The shape of the limit")
BURST_SHARE = 0.25  # share of the per-second ceiling a quiet limit admits at once

log = logging.getLogger(__name__)


def limit_name(environment: str) -> str:
    """The Prefect global rate limit of a Toloka environment (`toloka-api-local`, ...)."""
    return f"{LIMIT_PREFIX}-{environment}"


def limit_shape(rate: float) -> tuple[int, float]:
    """Prefect `(limit, slot_decay_per_second)` admitting at most `rate` requests in any second.

    A burst of `b` requests (a quarter of the ceiling, at least one) plus a decay of `rate - b`
    requests per second, both in slots (`SLOTS_PER_REQUEST` to a request). Below 2 requests/s the
    burst is one request refilled at `rate`, so a second may see `1 + rate`.
    """
    if rate <= 0:
        raise ValueError(f"a rate limit needs a positive rate, not {rate}")
    burst = max(1, round(rate * BURST_SHARE)) if rate >= 2 else 1
    decay = rate - burst if rate >= 2 else rate
    return burst * SLOTS_PER_REQUEST, round(decay * SLOTS_PER_REQUEST, 6)


class _MissingLimits:
    """Per-process memory of limits the server does not have, so each is looked up once a minute."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._checked: dict[str, tuple[float, bool]] = {}  # name -> (when, exists)

    def exists(self, name: str) -> bool:
        with self._lock:  # held during a look-up too: concurrent requests wait for its answer
            now = time.monotonic()
            checked = self._checked.get(name)
            if checked is not None and (checked[1] or now - checked[0] < MISSING_TTL):
                return checked[1]
            found = _limit_exists(name)
            if not found:
                log.info("no Prefect rate limit %s: Toloka requests are not throttled by Prefect", name)
            self._checked[name] = (now, found)
            return found

    def forget(self) -> None:
        with self._lock:
            self._checked.clear()


_missing = _MissingLimits()


def _limit_exists(name: str) -> bool:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            return False
    return True


def acquire(name: str) -> None:
    """Take one slot of the rate limit `name` (blocks while the limit is used up); no-op if absent."""
    if not _missing.exists(name):
        return
    from prefect.concurrency.sync import rate_limit

    rate_limit(name, occupy=SLOTS_PER_REQUEST, strict=False)


def enabled() -> bool:
    """Whether Toloka requests take Prefect rate-limit slots in this process."""
    return Settings().toloka_rate_limit


def throttle(session: httpx.Client, environment: str) -> httpx.Client:
    """Make `session` take a slot of `environment`'s rate limit before every request it sends."""
    name = limit_name(environment)

    def before_request(request: httpx.Request) -> None:
        acquire(name)

    hooks: dict[str, list[Any]] = dict(session.event_hooks)
    hooks["request"] = [*hooks.get("request", []), before_request]
    session.event_hooks = hooks
    return session
