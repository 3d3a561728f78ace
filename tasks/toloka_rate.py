"""Every Toloka HTTP request takes a slot of the Prefect global rate limit `toloka-api-<environment>`.

Concurrent runs on any number of workers talk to Toloka with the same requester token, so they share
one API quota. The service creates one Prefect global concurrency limit per Toloka environment, with
slot decay (a rate limit); this module makes the toloka-kit client take one slot before each HTTP
request it sends, retries included (a retry is a request the quota counts too). The hook sits on
toloka-kit's per-thread `httpx.Client` (an httpx request event hook), so no call site can forget it.

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

log = logging.getLogger(__name__)


def limit_name(environment: str) -> str:
    """The Prefect global rate limit of a Toloka environment (`toloka-api-local`, ...)."""
    return f"{LIMIT_PREFIX}-{environment}"


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

    rate_limit(name, occupy=1, strict=False)


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
