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

How a slot is taken: one call to the server's `increment` route per request, refusals waited out
with a growing pause (`_Slots`, which says why not Prefect's own `rate_limit`). That call is made
even when the limit does not exist; with no `PREFECT_API_URL` it would go to the ephemeral API. So
the hook is off unless
`CROWDCLUST_TOLOKA_RATE_LIMIT` is true (the service sets it for its workers, and `crowdclust run`
for itself when PREFECT_API_URL names a server, such as the service's, shared with other users), and
even then a limit found missing is remembered per process for `MISSING_TTL` seconds, so a server
without the limit costs one lookup a minute, not one per request; meanwhile the process's own bucket
(below) throttles its requests.

Without the service. A run on its own (`crowdclust run`, `make demo`, a worker without the flag)
throttles in its process instead: a token bucket of the same shape per environment, at
`CROWDCLUST_TOLOKA_RATES` or `DEFAULT_RATES` (10/s for sandbox and production, none for the
emulator). Without it the exam gating's 8 threads met a requester's limit at once; each 429 was
retried by toloka-kit after 4 and 8 s, so a run under a limit of 10/s sent about one request a
second (287 reviews in five minutes) and its pool waited for the skills.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from tasks.settings import Settings

LIMIT_PREFIX = "toloka-api"
MISSING_TTL = 60.0  # seconds a missing limit is remembered before it is looked up again
SLOTS_PER_REQUEST = 100  # Prefect slots one Toloka request takes (see "The shape of the limit")
BURST_SHARE = 0.25  # share of the per-second ceiling a quiet limit admits at once
MAX_RETRY_SECONDS = 1.0  # longest wait between two attempts at a slot (see `_Slots`)

# Toloka requests per second per environment; 0 = not throttled (the local emulator, unless it has
# its own per-token limit: the service then derives one from it, see crowdclust.service.deployer).
DEFAULT_RATES = {"local": 0.0, "sandbox": 10.0, "production": 10.0}

log = logging.getLogger(__name__)


def parse_rates(text: str | None) -> dict[str, float]:
    """`local=50,production=10` over `DEFAULT_RATES`; ValueError naming the part that is wrong."""
    rates = dict(DEFAULT_RATES)
    for part in (text or "").split(","):
        if not part.strip():
            continue
        env, _, value = (piece.strip() for piece in part.partition("="))
        if env not in rates:
            raise ValueError(
                f"CROWDCLUST_TOLOKA_RATES: unknown Toloka environment {env!r} in {text!r} "
                f"(known: {', '.join(rates)})"
            )
        try:
            rates[env] = float(value)
        except ValueError:
            raise ValueError(
                f"CROWDCLUST_TOLOKA_RATES: {part.strip()!r}: expected ENV=REQUESTS_PER_SECOND"
            ) from None
    return rates


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


class _OneAtATime:
    """A lock that knows which thread holds it.

    A flow-run process stopped by SIGTERM runs Prefect's handler, and so the crash hook that closes
    the run's pools, in its main thread, on top of whatever that thread was doing: possibly a slot's
    request or a limit's look-up under this lock. The hook's Toloka requests then came back here and
    would wait for the lock their own thread holds, for ever: the pools left open. `enter` says
    False to such a nested caller, which then throttles with the process's bucket.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: int | None = None

    @contextlib.contextmanager
    def enter(self) -> Iterator[bool]:
        """Yields True holding the lock, or False (not waiting) when this thread already holds it."""
        if self._owner == threading.get_ident():
            yield False
            return
        with self._lock:
            self._owner = threading.get_ident()
            try:
                yield True
            finally:
                self._owner = None


class _MissingLimits:
    """Per-process memory of limits the server does not have, so each is looked up once a minute."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._looking = _OneAtATime()
        self._checked: dict[str, tuple[float, bool]] = {}  # name -> (when, exists)

    def exists(self, name: str) -> bool:
        """Whether the server has `name`, as last looked up (again once MISSING_TTL has passed); False
        for a caller nested in this thread's own look-up (see `_OneAtATime`)."""
        with self._looking.enter() as mine:  # held during a look-up: concurrent requests wait for it
            if not mine:
                return False
            now = time.monotonic()
            checked = self._checked.get(name)
            if checked is not None and (checked[1] or now - checked[0] < MISSING_TTL):
                return checked[1]
            found = _limit_exists(name)
            if not found:
                log.info("no Prefect rate limit %s: Toloka requests are not throttled by Prefect", name)
            with self._lock:
                self._checked[name] = (now, found)
            return found

    def absent(self, name: str) -> None:
        """`name` taken as missing until the next look-up: the server did not answer for it, or
        answered that it has no such limit (deleted since it was looked up)."""
        with self._lock:
            self._checked[name] = (time.monotonic(), False)

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
        except httpx.TransportError as error:  # no server to ask (`crowdclust run --close`, the
            # service down): the process's bucket throttles until the next look-up
            log.info("cannot look up the Prefect rate limit %s (%s)", name, error)
            return False
    return True


class _Slots:
    """This process's one way to the server's rate limits: one Prefect client, one acquisition at a
    time (as Prefect's own `rate_limit` queues them), and its own pace after a refusal.

    Why not Prefect's `rate_limit`: measured on the service with six runs sharing 20 requests/s
    (the scale test), it made 3,109 refused attempts for 1,313 granted ones, each refusal a write to
    the limit's row that also throws away the slots decayed since the last write (see "The shape of
    the limit"), and it emits a `prefect.concurrency-limit.acquired` event for every grant, that is
    for every Toloka request, into the server's event tables and the UI's event feed. Here a refused
    attempt waits the server's `Retry-After` (its estimate of when the slots asked for and those
    refused before have decayed), doubled after each further refusal up to `MAX_RETRY_SECONDS` and
    stretched by a random factor of 1-2, so processes refused together do not come back together;
    a grant emits no event. The same six runs: 1,171 refusals for 1,227 grants, the server's CPU
    77 -> 58 seconds and the test's 189 -> 158 (every process sampled through /proc while
    `tests/test_scale_service.py` ran alone); `bench/bench_scale.py --workers 2`, the service's start
    and stop included: 165 -> 143 CPU-seconds, the six runs' wall time 110 s before and 116 s after.
    """

    def __init__(self) -> None:
        self._taking = _OneAtATime()
        self._client: Any = None
        self._api: tuple[str, str] | None = None  # (url, auth) the client was made for

    def take(self, name: str, sleep: Callable[[float], None] = time.sleep) -> bool | None:
        """One request's slots of `name`, waiting while the limit is used up; False when the server
        answers that it has no such limit; None, taking nothing, for a caller nested in this thread's
        own acquisition (see `_OneAtATime`: it throttles with the process's bucket)."""
        with self._taking.enter() as mine:
            if not mine:
                return None
            client = self._current_client()
            refused = 0
            while True:
                try:
                    granted = client.increment_concurrency_slots(
                        names=[name], slots=SLOTS_PER_REQUEST, mode="rate_limit"
                    )
                except httpx.HTTPStatusError as error:
                    if error.response.status_code != httpx.codes.LOCKED:
                        raise
                    retry_after = float(error.response.headers.get("Retry-After") or 0.1)
                    refused += 1
                    sleep(min(MAX_RETRY_SECONDS, retry_after * 2 ** (refused - 1)) * (1.0 + _jitter.random()))
                    continue
                return bool(granted.json())

    def _current_client(self) -> Any:
        """The process's Prefect client, made again when the API it should talk to changed (a
        test's harness, a profile switched)."""
        from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL

        api = (str(PREFECT_API_URL.value() or ""), str(PREFECT_API_AUTH_STRING.value() or ""))
        if self._client is None or api != self._api:
            self.close()
            self._client = _prefect_client()
            self._api = api
        return self._client

    def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.__exit__(None, None, None)
            self._client = None


def _prefect_client() -> Any:
    """An open synchronous Prefect client of this module's own (its `__exit__` closes it).

    `get_client(sync_client=True)` in a flow run's thread hands back that run's client, whose life
    is the run's; httpx settings of our own (the default, spelt out) make it build a new one, kept
    for the process's life, whichever run's thread first took a slot.
    """
    from prefect.client.orchestration import get_client

    return get_client(httpx_settings={}, sync_client=True).__enter__()


_slots = _Slots()
_jitter = random.Random(0)  # spreads retries only; what a run does never depends on it


def acquire(name: str) -> bool:
    """Take one request's slots of the rate limit `name` (blocks while the limit is used up); False,
    taking nothing, when the server has no such limit or cannot be asked.

    A server that does not answer (down, restarting: `make down` by another user of the service) is
    taken as one without the limit until the next look-up, so the caller throttles in its process.
    Prefect's client gives up only after its own retries, about a minute: raised on, that failed the
    stage that sent the request (a labelling wait ended `Unable to acquire concurrency slots on
    ['toloka-api-local']` once the server was back), and each Toloka request meanwhile waited that
    minute again.
    """
    if not _missing.exists(name):
        return False
    try:
        granted = _slots.take(name)
    except (httpx.TransportError, httpx.HTTPStatusError) as error:
        _missing.absent(name)
        log.warning(
            "cannot take a slot of the Prefect rate limit %s (%s: %s): this process throttles its "
            "Toloka requests itself for the next %d s",
            name,
            type(error).__name__,
            error,
            MISSING_TTL,
        )
        return False
    if granted is None:  # nested in this thread's own acquisition (a SIGTERM's hook): the bucket
        return False
    if not granted:  # deleted since it was looked up: said once, as a look-up that finds none says it
        _missing.absent(name)
        log.info(
            "the Prefect rate limit %s is gone: this process throttles its Toloka requests itself "
            "for the next %d s",
            name,
            MISSING_TTL,
        )
    return granted


class Bucket:
    """An in-process rate limit of `limit_shape(rate)`'s shape: a burst, then a steady refill.

    `acquire` reserves the next free slot under a lock and sleeps outside it, so threads are served
    in turn and any one-second window sees at most `rate` requests.
    """

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        limit, decay = limit_shape(rate)
        self.capacity = limit / SLOTS_PER_REQUEST
        self.refill = decay / SLOTS_PER_REQUEST
        self._tokens = self.capacity
        self._clock, self._sleep = clock, sleep
        self._at = clock()
        self._lock = threading.Lock()

    def acquire(self) -> None:
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.refill) - 1
            self._at = now
            wait = -self._tokens / self.refill if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)


_buckets: dict[tuple[str, float], Bucket] = {}
_buckets_lock = threading.Lock()


def local_bucket(environment: str) -> Bucket | None:
    """This process's bucket for `environment` (one per environment and rate), or None when its
    rate (`CROWDCLUST_TOLOKA_RATES`, else `DEFAULT_RATES`) is 0."""
    rate = parse_rates(Settings().toloka_rates).get(environment, 0.0)
    if rate <= 0:
        return None
    with _buckets_lock:
        return _buckets.setdefault((environment, rate), Bucket(rate))


def enabled() -> bool:
    """Whether Toloka requests take Prefect rate-limit slots in this process."""
    return Settings().toloka_rate_limit


def throttled(environment: str) -> bool:
    """Whether a client of `environment` needs the request hook: Prefect's limit or a local one."""
    return enabled() or local_bucket(environment) is not None


def throttle(session: httpx.Client, environment: str) -> httpx.Client:
    """Make `session` take a slot of `environment`'s rate limit before every request it sends: the
    Prefect limit where it is on and the server has it, else this process's bucket (a server without
    the limits leaves a run throttled as on its own, not unthrottled)."""
    name = limit_name(environment)
    shared, bucket = enabled(), local_bucket(environment)

    def before_request(request: httpx.Request) -> None:
        if shared and acquire(name):
            return
        if bucket is not None:
            bucket.acquire()

    hooks: dict[str, list[Any]] = dict(session.event_hooks)
    hooks["request"] = [*hooks.get("request", []), before_request]
    session.event_hooks = hooks
    return session
