"""The one door to Toloka: toloka-kit's import, the client factory, and a run's objects by tag.

Everything the pipeline asks of Toloka goes through a `TolokaClient` made by `make_client` (from a
`TolokaTarget`, inside a task: a client holds the token and is never a task input). The objects a
run creates are owned by a `RunRegistry` (client + run key), which alone knows the tag format
`crowdclust:<run key>:<role>` stored in `private_comment` (projects, pools, skills) or `metadata`
(trainings, which have no comment). It looks every object up before it creates it, uploads only
the suites a pool lacks with deterministic operation ids, lists a catalogue's round pools, sums
what the run's pools cost, and closes what a failed run left open.

The token comes from `TOLOKA_TOKEN` or a Prefect Secret block, is held as `SecretStr`, and is never
returned, logged or persisted.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import ssl
import sys
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import httpx
import orjson
from pydantic import SecretStr

from tasks import toloka_rate
from tasks.params import TolokaTarget, endpoint
from tasks.pause import pause
from tasks.settings import Settings, token_problem
from tasks.stages import PoolStats, RoundState

# toloka-kit imports its optional `toloka.autoquality` when it can (a `try: import` in its
# `__init__`). We never use it, and it pulls in scipy.stats, crowd-kit and nltk: about a third of
# toloka-kit's import time, paid by every flow-run process. A `None` in sys.modules makes that
# optional import fail at once, as Python documents for blocked modules.
sys.modules.setdefault("toloka.autoquality", None)  # type: ignore[arg-type]

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # toloka-kit 1.2.3 imports pkg_resources (a deprecation warning)
    from toloka.client import Pool, Project, Task, TaskSuite, TolokaClient, Training
    from toloka.client.analytics_request import (
        ApprovedAssignmentsCountPoolAnalytics,
        CompletionPercentagePoolAnalytics,
        SpentBudgetPoolAnalytics,
        SubmittedAssignmentsCountPoolAnalytics,
    )
    from toloka.client.exceptions import (
        ApiError,
        ConflictStateApiError,
        DoesNotExistApiError,
        IncorrectActionsApiError,
        InternalApiError,
        RemoteServiceUnavailableApiError,
        TooManyRequestsApiError,
    )
    from toloka.client.task import CreateTasksParameters
    from toloka.client.task_suite import TaskSuiteOverlapPatch, TaskSuitesCreateRequestParameters
    from toloka.util._managing_headers import add_headers  # what its public methods wear; see platform_now

__all__ = [
    "ALREADY_DONE",
    "TRANSIENT",
    "ApiError",
    "BadToken",
    "MissingTokenError",
    "Opening",
    "PlatformUnreachable",
    "Pool",
    "Project",
    "RunRegistry",
    "StaleRunError",
    "Task",
    "TaskSuite",
    "TolokaClient",
    "TooManyRequestsApiError",
    "Training",
    "answers_owed",
    "close_all",
    "close_reason",
    "drop_credentials",
    "endpoint",
    "has_work",
    "is_completed",
    "make_client",
    "open_all",
    "operation_id",
    "pool_stats",
    "probe",
    "reopen_if_owed",
    "requester_digest",
    "resolve_token",
    "status_of",
    "suites_of",
]

log = logging.getLogger(__name__)
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)


class _DropExperimentalNotice(logging.Filter):
    """toloka-kit logs 'Experimental method' on every TSV export; it says nothing to a pipeline user."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "Experimental method"


logging.getLogger("toloka.client").addFilter(_DropExperimentalNotice())

TRANSIENT = (
    InternalApiError,
    RemoteServiceUnavailableApiError,
    TooManyRequestsApiError,
    httpx.TransportError,
    ConnectionError,
    TimeoutError,
)
# 409s: the object is not in the state the action needs (an assignment reviewed before, a pool
# already open): what was asked was done by an earlier request.
ALREADY_DONE = (ConflictStateApiError, IncorrectActionsApiError)
POOL_LIFETIME = timedelta(days=7)
ANALYTICS_BATCH = 10  # analytics requests per call: a catalogue's many round pools are asked in batches
NAMESPACE = uuid.UUID("6f1d2a52-8f0e-4f57-a0a4-1f0c2b7e9d31")


# ------------------------------------------------------------------------------------------ the client


class MissingTokenError(RuntimeError):
    """No token in the environment and no Secret block: say how to provide one."""


class TokenRefused(MissingTokenError):
    """The platform answered and refused the token (401/403): a setting to fix, like a missing one."""


class BadToken(TokenRefused):
    """The token holds a character an HTTP header cannot carry: no request could ever send it."""


def _usable(token: str, source: str, again: str) -> SecretStr:
    """`token` without surrounding whitespace (a newline from a file, a CRLF `.env`), or `BadToken`
    (see `tasks.settings.token_problem`), which says how to set it `again` and never shows it."""
    token = token.strip()
    problem = token_problem(token)
    if problem is not None:
        raise BadToken(
            f"the Toloka token in {source} cannot be used: {problem}; {again} (the token is not shown)"
        )
    return SecretStr(token)


def token_in_environment() -> SecretStr | None:
    """`TOLOKA_TOKEN` when set and not blank (no Prefect API needed to read it); `BadToken` when it
    holds a character no request could send."""
    token = Settings().toloka_token
    if token is None or not token.get_secret_value().strip():
        return None
    return _usable(token.get_secret_value(), "TOLOKA_TOKEN", "set TOLOKA_TOKEN again without it")


def resolve_token(target: TolokaTarget) -> SecretStr:
    """`TOLOKA_TOKEN` first, then the Prefect Secret block named in the target (see `_usable`)."""
    token = token_in_environment()
    if token is not None:
        return token
    try:
        from prefect.blocks.system import Secret

        value = Secret.load(target.token_secret_block).get()
    except Exception as exc:  # block missing, no API, ...
        raise MissingTokenError(
            f"no Toloka token: set TOLOKA_TOKEN or create a Prefect Secret block "
            f"'{target.token_secret_block}' ({type(exc).__name__})"
        ) from None
    block = target.token_secret_block
    again = f"save it again without it (`crowdclust token save --block {block}`)"
    return _usable(str(value), f"the Prefect Secret block '{block}'", again)


def drop_credentials(error: BaseException) -> None:
    """Blank the `Authorization` header of every HTTP request `error` (or its cause or context) holds.

    httpx keeps the request on its errors, headers included, and a stage's failure is persisted
    like its result (pickled, in the result storage every worker shares, perhaps a bucket): a
    `ConnectError` from a wait on a stopped emulator put `OAuth <token>` there. The request has been
    sent (or given up) by the time its error leaves the stage, so nothing else needs the header.
    """
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        state = getattr(current, "__dict__", {})
        response = state.get("response")
        for request in (state.get("_request"), state.get("request"), getattr(response, "_request", None)):
            headers = getattr(request, "headers", None)
            if headers is not None and "authorization" in headers:
                headers["authorization"] = "[removed]"
        pending += [current.__cause__, current.__context__]


class RateLimitedClient(TolokaClient):
    """A toloka-kit client whose every HTTP request (retries too) takes a rate-limit slot.

    toloka-kit 1.2.3 sends everything through one `httpx.Client` per thread (`_session_for_thread`);
    the hook is added to each of them once (see `tasks.toloka_rate`).
    """

    def __init__(self, token: str, *, rate_environment: str, **kwargs: Any) -> None:
        self._rate_environment = rate_environment  # before __init__: it opens the first session
        super().__init__(token, **kwargs)

    @functools.lru_cache(maxsize=128)  # noqa: B019 (as toloka-kit's own: one session per client and thread)
    def _session_for_thread(self, thread_id: int) -> httpx.Client:
        return toloka_rate.throttle(super()._session_for_thread(thread_id), self._rate_environment)


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The TLS settings every Toloka client of this process shares: httpx's own for `verify=True`
    (certifi's CA bundle, or SSL_CERT_FILE / SSL_CERT_DIR as set when it is first asked for).

    toloka-kit opens one `httpx.Client` per client and thread, and each built its TLS context anew,
    reading the whole CA bundle (~25 ms of CPU), even for an emulator's http:// URL: 14% of the
    CPU of a flow test's process went there (py-spy). One context serves any number of clients.
    """
    return httpx.create_ssl_context()


def _where(target: TolokaTarget) -> dict[str, Any]:
    """toloka-kit's keyword for where to send requests: the endpoint's URL, else the environment."""
    url = endpoint(target)
    return {"url": url} if url else {"environment": target.environment.upper()}


DEFAULT_TIMEOUT = 10.0  # s to connect, and to wait for each read: toloka-kit's own default


def make_client(
    target: TolokaTarget, retries: int = 3, timeout: float | httpx.Timeout = DEFAULT_TIMEOUT
) -> TolokaClient:
    """A toloka-kit client for the target (emulator URL, sandbox or production).

    `retries=0` gives a client for non-idempotent creates (see `find_or_create`); `timeout` is
    toloka-kit's (seconds, or an `httpx.Timeout`: the export waits longer for its file). With
    `CROWDCLUST_TOLOKA_RATE_LIMIT` on (the service's workers), every request takes a slot of the
    Prefect rate limit `toloka-api-<environment>`, shared by all runs on all workers; otherwise one
    of this process's bucket for the environment, where it has a rate (`tasks.toloka_rate`).
    """
    token = resolve_token(target).get_secret_value()
    where = _where(target)
    if toloka_rate.throttled(target.environment):
        return RateLimitedClient(
            token,
            rate_environment=target.environment,
            retries=retries,
            timeout=timeout,
            verify=tls_context(),
            **where,
        )
    return TolokaClient(token, retries=retries, timeout=timeout, verify=tls_context(), **where)


_requesters: dict[tuple[str | None, str], str] = {}


class PlatformUnreachable(RuntimeError):
    """The Toloka URL does not answer: nothing was created."""


class StoppedAnswering(RuntimeError):
    """Toloka (or the Prefect API) stopped answering mid-run, after the stage's retries.

    What a person reads in the UI's state message or as `crowdclust run`'s error line, instead of a
    bare `ConnectError: [Errno 111] Connection refused` that names neither the URL nor what to do.
    `prefect_api`: the silent one was Prefect's API, so the run could not record its end and its hooks
    may not have closed its pools (`crowdclust run` closes them itself); `cause`: the error, in words;
    `where`: who went silent ("Toloka at URL", "the Prefect API at URL").
    """

    def __init__(self, message: str, prefect_api: bool = False, cause: str = "", where: str = "") -> None:
        super().__init__(message)
        self.prefect_api, self.cause, self.where = prefect_api, cause, where


def stopped_answering(error: BaseException, target: TolokaTarget) -> StoppedAnswering:
    """`StoppedAnswering` for a transient error that outlived its retries: who, and what to do."""
    import os

    where = f"Toloka at {endpoint(target) or target.environment}"
    api = os.environ.get("PREFECT_API_URL")
    try:
        url = str(error.request.url)  # type: ignore[attr-defined]  # httpx errors carry their request
    except (AttributeError, RuntimeError):  # httpx raises RuntimeError for an error without one
        url = ""
    again = (
        "then run the same command again or Retry the flow run: finished stages are reused and nothing "
        "paid is lost"
    )
    prefect_api = bool(api and url.startswith(api))
    if prefect_api:
        where = f"the Prefect API at {api}"
    elif isinstance(error, TooManyRequestsApiError):  # it answered: too many requests, not silence
        return StoppedAnswering(
            f"{where} kept refusing requests over its rate limit (429 TOO_MANY_REQUESTS) after the "
            "stage's retries: lower the run's request rate (with the service, CROWDCLUST_TOLOKA_RATES "
            f"below the requester's limit; raise wait.poll_seconds), {again}"
        )
    cause = f"{type(error).__name__}: {error}"
    return StoppedAnswering(
        f"{where} stopped answering ({cause}) after the stage's retries. The run's open pools were "
        "closed if Toloka let them be (the log says), else the crowd may go on answering them. Check "
        f"that it runs, {again}",
        prefect_api=prefect_api,
        cause=cause,
        where=where,
    )


def probe(target: TolokaTarget, attempts: int = 3, timeout: float = 5.0) -> str:
    """Ask who the token belongs to, once, quickly; returns `requester_digest`.

    Run before anything else so that a stopped emulator, a wrong URL or a wrong token is one
    clear line within about `attempts x timeout` seconds (15 s by default) instead of minutes of
    retried stages.
    """
    token = resolve_token(target).get_secret_value()
    url = endpoint(target)
    known = {env.name: env.value for env in TolokaClient.Environment}.get(target.environment.upper())
    where = url or f"Toloka {target.environment}" + (f" ({known})" if known else "")
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            client = TolokaClient(token, retries=0, timeout=timeout, verify=tls_context(), **_where(target))
            requester = client.get_requester()
        except ApiError as exc:
            if exc.status_code in (401, 403):
                raise TokenRefused(
                    f"{where} refused the token ({exc.status_code} {exc.code}): check TOLOKA_TOKEN or the "
                    f"Secret block '{target.token_secret_block}'"
                ) from None
            last = exc
        except (*TRANSIENT, OSError) as exc:
            last = exc
        else:
            digest = hashlib.sha256(f"requester:{requester.id}".encode()).hexdigest()[:16]
            _requesters[_slot(target, token)] = digest
            return digest
        if attempt < attempts - 1:
            pause(min(2.0**attempt, 4.0))
    # Toloka itself (no toloka.url) is not something to start: what fails is this machine's way to it.
    fix = (
        "start it (`crowdclust emulator` for a local run) or fix toloka.url / --url"
        if url
        else "check that this machine can reach it (network, proxy, firewall)"
    )
    raise PlatformUnreachable(
        f"cannot reach Toloka at {where} ({type(last).__name__} after {attempts} tries): {fix}, then run "
        "the same command again (or Retry the flow run)"
    )


def _slot(target: TolokaTarget, token: str) -> tuple[str | None, str]:
    return (endpoint(target) or target.environment, hashlib.sha256(token.encode()).hexdigest())


def requester_digest(target: TolokaTarget) -> str:
    """A hash of the id of the requester the token belongs to (never the token): who is asking.

    Part of the cache key of every Toloka stage, so results cached for one account are never
    handed to another, and a wrong token fails at its first call instead of hitting a warm cache.
    Asked once per process and token (`probe`).
    """
    known = _requesters.get(_slot(target, resolve_token(target).get_secret_value()))
    return known if known is not None else probe(target)


# ------------------------------------------------------------------------------------ object states


def status_of(obj: Any) -> str:
    return str(getattr(obj.status, "value", obj.status))


def close_reason(obj: Any) -> str:
    reason = getattr(obj, "last_close_reason", None)
    return str(getattr(reason, "value", reason)) if reason is not None else ""


def is_completed(pool: Pool) -> bool:
    return status_of(pool) == "CLOSED" and close_reason(pool) == "COMPLETED"


BALANCE_CLOSE = "NOT_ENOUGH_BALANCE"  # Toloka's close reason when the account's balance ran out


def closed_for_balance(client: TolokaClient, pool_id: str) -> bool:
    """Whether Toloka closed the pool because the account's balance ran out (NOT_ENOUGH_BALANCE).

    A wait that ended so is a result like any other to the stage cache, and nothing a top-up
    changes is in its key: the same command after the top-up was handed the cached stop again, and
    again said to top up. Its caller runs such a wait anew (`refresh_cache`).
    """
    pool = client.get_pool(pool_id)
    return status_of(pool) != "OPEN" and close_reason(pool) == BALANCE_CLOSE


@dataclass(frozen=True)
class Opening:
    """A pool or training to open before waiting and to close afterwards."""

    kind: str  # "pool" | "training"
    id: str


def open_all(client: TolokaClient, openings: Iterable[Opening]) -> None:
    """Open every pool/training that is not open yet and still has work: a pool that has not
    completed, or one that closed COMPLETED and was given task suites since (`answers_owed`).

    A completed pool keeps its status when suites are added: a run that grew its plan and failed
    before reopening it (the pool had expired meanwhile) was resumed into a wait that took the
    closed pool for done, and reported the old clusters with a third of the plan unanswered.
    """
    for item in openings:
        if item.kind == "training":
            if status_of(client.get_training(item.id)) != "OPEN":
                client.open_training(item.id)
        else:
            pool = client.get_pool(item.id)
            if status_of(pool) == "OPEN":
                continue
            if not is_completed(pool):
                _renew_lifetime(client, pool)
                client.open_pool(item.id)
            else:
                reopen_if_owed(client, pool)


def has_work(client: TolokaClient, pool_id: str) -> bool:
    """Whether a pool has answers to collect: it has not completed, or it has and was given task
    suites since (`answers_owed`)."""
    return not is_completed(client.get_pool(pool_id)) or answers_owed(client, pool_id) > 0


@add_headers("client")  # toloka-kit's request headers come from context its public methods set
def answers_owed(client: TolokaClient, pool_id: str) -> int:
    """How many answers the task suites of `pool_id` still need (the sum of Toloka's
    `remaining_overlap`, read `ASSIGNMENT_PAGE` suites a request).

    A pool's status says nothing of the suites uploaded after it completed: Toloka leaves it
    CLOSED (COMPLETED) with them unanswered. The suites do: every suite not yet answered to its
    overlap has a remaining overlap.
    """
    owed = search(client, "/v1/task-suites", {"pool_id": pool_id}, lambda item: item.get("remaining_overlap"))
    return sum(int(value or 0) for value in owed)


def reopen_if_owed(client: TolokaClient, pool: Pool) -> int:
    """Reopen a pool that closed COMPLETED while its suites still need answers (`answers_owed`),
    with a new lifetime if its `will_expire` has passed; how many answers it owes (0: left closed).

    Opened as it was, a pool whose lifetime had passed was refused (`move will_expire first`), and
    the user was told to fix a cause that was the run's to fix.
    """
    owed = answers_owed(client, str(pool.id))
    if owed:
        _renew_lifetime(client, pool)
        client.open_pool(pool.id)
        log.warning(
            "pool %s had closed as completed with %d answers of its task suites still owed: reopened",
            pool.id,
            owed,
        )
    return owed


def reopen_expired(client: TolokaClient, pool: Pool) -> bool:
    """Reopen `pool` with a new lifetime if it closed EXPIRED; whether it did.

    A pool lives POOL_LIFETIME on the platform's clock, which is this project's choice, not the
    user's: the user's limit is `wait.timeout_seconds`. A 10,000-image run whose wait allowed two
    hours failed when its main pool expired at 96% (the emulator's clock runs 600x), and only a
    Retry, which renews the lifetime, finished it; a wait longer than a week on Toloka met the same.
    """
    if status_of(pool) != "CLOSED" or close_reason(pool) != "EXPIRED":
        return False
    _renew_lifetime(client, pool)  # says so in the log
    client.open_pool(pool.id)
    return True


def _renew_lifetime(client: TolokaClient, pool: Pool) -> None:
    """A pool about to reopen whose `will_expire` has passed (or is within an hour) runs another
    POOL_LIFETIME: opened as it was, it closed EXPIRED at once, and a run whose pool expired a few
    answers short (interrupted, then resumed) could never finish, however often it was resumed,
    with everything it had bought unusable."""
    if not _extend_lifetime(client, pool):
        return
    client.update_pool(pool.id, pool)
    log.warning(
        "pool %s %s with work left: it reopens until %s (platform time)",
        pool.id,
        "had expired" if close_reason(pool) == "EXPIRED" else "had reached or neared the end of its lifetime",
        pool.will_expire.isoformat(timespec="minutes"),
    )


def _extend_lifetime(client: TolokaClient, pool: Pool) -> bool:
    """Give `pool` (not yet sent) another POOL_LIFETIME if its `will_expire` has passed or is within
    an hour; True if it did. Toloka refuses an update or an open with a past `will_expire`."""
    if pool.will_expire is None:
        return False
    now, expires = platform_now(client), pool.will_expire  # toloka-kit reads it back with a time zone
    if expires.tzinfo is not None:
        expires = expires.astimezone(UTC).replace(tzinfo=None)
    if expires > now + timedelta(hours=1):
        return False
    pool.will_expire = now + POOL_LIFETIME
    return True


def close_all(client: TolokaClient, openings: Iterable[Opening]) -> None:
    """Close pools/trainings (no-op for the ones already closed)."""
    for item in openings:
        if item.kind == "training":
            if status_of(client.get_training(item.id)) == "OPEN":
                client.close_training(item.id)
        elif status_of(client.get_pool(item.id)) == "OPEN":
            client.close_pool(item.id)


@add_headers("client")  # toloka-kit's request headers come from context its public methods set
def platform_now(client: TolokaClient) -> datetime:
    """The platform's current time (naive UTC) from the HTTP `Date` of a cheap request.

    Deadlines sent to Toloka (a pool's `will_expire`) are instants on the platform's clock. Toloka's
    is the real one; the emulator's runs ahead of it when its crowd is accelerated (a service at
    600x is seven simulated days ahead after 17 minutes), so "now + 7 days" on the local clock would
    be a pool that expires as it opens. Without a usable header: the local clock.
    """
    response = client._raw_request("get", "/v1/requester")
    try:
        return parsedate_to_datetime(response.headers["date"]).astimezone(UTC).replace(tzinfo=None)
    except (KeyError, TypeError, ValueError):
        return datetime.now(UTC).replace(tzinfo=None)


def _analytics(client: TolokaClient, requests: list[Any]) -> list[float | None]:
    """Values of Toloka analytics requests, in order (None for what it could not answer)."""
    values: list[float | None] = [None] * len(requests)
    try:
        operation = client.wait_operation(client.get_analytics(requests), timeout=timedelta(seconds=30))
        for i, entry in enumerate((operation.details or {}).get("value", [])[: len(requests)]):
            result = entry.get("result")
            value = result.get("value") if isinstance(result, dict) else result
            values[i] = float(value) if value is not None else None
    except Exception as exc:  # analytics are for humans and estimates; never fail a run because of them
        log.debug("analytics unavailable: %s", exc)
    return values


def pool_stats(client: TolokaClient, pool_id: str, ticks: int = 0, elapsed: float = 0.0) -> PoolStats:
    """Completion %, assignments and spend of a pool from Toloka's analytics."""
    kinds = (
        CompletionPercentagePoolAnalytics,
        SubmittedAssignmentsCountPoolAnalytics,
        ApprovedAssignmentsCountPoolAnalytics,
        SpentBudgetPoolAnalytics,
    )
    done, submitted, approved, spent = _analytics(client, [kind(subject_id=pool_id) for kind in kinds])
    return PoolStats(done, submitted, approved, spent, ticks, elapsed)


def count_assignments(client: TolokaClient, pool_id: str, statuses: tuple[str, ...]) -> int:
    """How many assignments of `pool_id` are in one of `statuses` (pages through the search)."""
    return sum(1 for _ in client.get_assignments(pool_id=pool_id, status=list(statuses)))


ASSIGNMENT_PAGE = 10_000  # items per search request (Toloka allows up to 100,000)
T = TypeVar("T")


@add_headers("client")  # toloka-kit's request headers come from context its public methods set
def search(
    client: TolokaClient, path: str, params: dict[str, Any], keep: Callable[[dict[str, Any]], T]
) -> list[T]:
    """`keep` of every item a Toloka search (`/v1/assignments`, `/v1/task-suites`) finds, read from
    its JSON `ASSIGNMENT_PAGE` items a request, in id order (`id_gt` paging).

    toloka-kit's own searches page 50 items at a time and build a full object (an assignment's
    solutions included) of each: a resumed run's count of the answers beyond the overlap took 19.5 s
    at 70,000 answers, 1,400 requests, two thirds of the time building objects nobody read. `keep`
    takes what is needed of each item as the pages come, so a page's JSON is not held.
    """
    query: dict[str, Any] = {**params, "sort": "id", "limit": ASSIGNMENT_PAGE}
    kept: list[T] = []
    while True:
        page = orjson.loads(client._raw_request("get", path, params=query).content)
        items = page.get("items") or []
        kept.extend(keep(item) for item in items)
        if not page.get("has_more") or not items:
            return kept
        query["id_gt"] = items[-1]["id"]


def assignment_suites(client: TolokaClient, pool_id: str, statuses: tuple[str, ...]) -> list[str]:
    """The task suite of every assignment of `pool_id` in one of `statuses`, one entry each."""
    query = {"pool_id": pool_id, "status": ",".join(statuses)}
    return search(client, "/v1/assignments", query, lambda item: str(item["task_suite_id"]))


def accepted_rewards(client: TolokaClient, pool_id: str, default: float) -> float:
    """The rewards of the accepted assignments of `pool_id`, each at the reward it was issued with
    (`default` for one that does not say), fee not included.

    Toloka pays an answer the reward it was issued at, whatever the pool's reward is now: set
    against the pool's reward of today, the answers of a pool whose reward was updated misread the
    platform's price (`tasks.budget.price_ratio_seen_task`).
    """
    query = {"pool_id": pool_id, "status": "ACCEPTED"}
    rewards = search(client, "/v1/assignments", query, lambda item: item.get("reward"))
    return round(sum(default if value is None else float(value) for value in rewards), 6)


def derived_run_keys(client: TolokaClient, name: str, seed: int) -> list[str]:
    """The run keys on the account that `PipelineParams.default_run_key` made for `name` and `seed`
    (`name-<digest>-s<seed>`, any dataset), sorted."""
    pattern = re.compile(rf"crowdclust:({re.escape(name)}-[0-9a-f]{{10}}-s{seed}):")
    found = (pattern.match(str(project.private_comment or "")) for project in client.get_projects())
    return sorted({match[1] for match in found if match})


def skill_values(client: TolokaClient, skill_id: str) -> dict[str, float]:
    """Worker -> the value Toloka holds for `skill_id`, to 6 decimals (exact: not rounded to an int)."""
    values = {}
    for skill in client.get_user_skills(skill_id=skill_id):
        value = skill.exact_value if skill.exact_value is not None else skill.value
        if value is not None:
            values[str(skill.user_id)] = round(float(value), 6)
    return values


def skill_holders(client: TolokaClient, skill_id: str, min_value: float) -> int:
    """How many workers hold `skill_id` at `min_value` or more: the most a pool gated by it admits."""
    return sum(1 for value in skill_values(client, skill_id).values() if value >= min_value)


# ------------------------------------------------------------------------------------ idempotent creates


def find_or_create(
    find: Callable[[], str | None], create: Callable[[], Any], what: str, attempts: int = 4
) -> str:
    """Look up, create if absent; after a transient failure of the create, look up again first.

    `create` must not retry by itself (a POST retried after a lost response makes a second object):
    the registry creates through a client with `retries=0` and lets this loop do the retrying.
    """
    for attempt in range(attempts):
        found = find()
        if found is not None:
            return found
        try:
            created = create()
        except TRANSIENT as exc:
            if attempt == attempts - 1:
                raise
            log.warning(
                "creating %s failed (%s); looking it up before trying again", what, type(exc).__name__
            )
            pause(min(2.0**attempt, 8.0))
            continue
        except ApiError as exc:  # the platform refused the object: `crowdclust run` says which one
            exc.add_note(f"creating the {what}")
            raise
        log.info("created %s %s", what, created.id)
        return str(created.id)
    raise AssertionError("unreachable")


def operation_id(run_key: str, role: str, payload: Any) -> uuid.UUID:
    """Deterministic operation id: same run, same role, same batch -> same id. An upload's batch
    names its pool: the same suites for another pool of the key are another operation."""
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
    return uuid.uuid5(NAMESPACE, f"{run_key}:{role}:{digest}")


def suites_of(image_lists: Iterable[Iterable[str]]) -> list[dict[str, Any]]:
    """Task-suite JSON for HITs given as image lists (one task per suite, overlap from the pool)."""
    return [{"tasks": [{"input_values": {"images": list(images)}}]} for images in image_lists]


def _content_key(tasks: list[Any]) -> str:
    return json.dumps(
        [t.input_values if hasattr(t, "input_values") else t["input_values"] for t in tasks], sort_keys=True
    )


def _missing(
    have: list[str], wanted: list[dict[str, Any]], key: Callable[[Any], str]
) -> list[dict[str, Any]]:
    """Multiset difference: the wanted items the pool does not hold yet (repeated items count)."""
    stock = Counter(have)
    missing = []
    for item in wanted:
        if stock[key(item)] > 0:
            stock[key(item)] -= 1
        else:
            missing.append(item)
    return missing


def _structured(cls: Any, specs: list[dict[str, Any]], pool_id: str) -> list[Any]:
    objects = []
    for spec in specs:
        obj = cls.structure({k: v for k, v in spec.items() if k != "allow_defaults"})
        obj.pool_id = pool_id
        objects.append(obj)
    return objects


class StaleRunError(RuntimeError):
    """A cached id no longer names this run's object on the platform (gone, or tagged otherwise)."""


class PlanChanged(RuntimeError):
    """A pool of the run holds HITs the run's plan does not have: its design changed since."""


# Pool fields the platform or the registry set, not the config: never compared with the config's.
MANAGED_POOL_FIELDS = frozenset(
    {"id", "project_id", "private_comment", "status", "created", "last_started", "last_stopped",
     "last_close_reason", "will_expire", "owner", "type", "metadata"}
)  # fmt: skip


def _differs(have: Any, want: Any) -> bool:
    """Whether `have` (read back from the platform) disagrees with `want` (from the config).

    Only what the config states counts: a key the platform added (a default, an id) is no change.
    Numbers compare by value ("0.02" from JSON and 0.02 from a number are the same reward).
    """
    if isinstance(want, dict):
        return not isinstance(have, dict) or any(
            _differs(have.get(key), value) for key, value in want.items()
        )
    if isinstance(want, list):
        return (
            not isinstance(have, list)
            or len(have) != len(want)
            or any(_differs(a, b) for a, b in zip(have, want, strict=True))
        )
    if isinstance(want, int | float) and not isinstance(want, bool):
        try:
            return float(have) != float(want)
        except (TypeError, ValueError):
            return True
    return have != want


def pool_changes(have: Pool, wanted: Pool) -> list[str]:
    """The top-level settings the config gives `wanted` that the platform's pool `have` holds otherwise."""
    now, new = have.unstructure(), wanted.unstructure()
    return sorted(
        key for key, value in new.items() if key not in MANAGED_POOL_FIELDS and _differs(now.get(key), value)
    )


def _default_overlap(pool: Pool) -> int | None:
    defaults = pool.defaults
    return None if defaults is None else defaults.default_overlap_for_new_task_suites


@dataclass(frozen=True)
class Owned:
    """An id a stage cached, with the kind and role the run's tag must show on it."""

    kind: str  # "project" | "training" | "pool" | "skill"
    id: str
    role: str


def _changes_overlap(pool: Pool) -> bool:
    """Whether a quality-control rule of `pool` raises a task suite's overlap (CHANGE_OVERLAP)."""
    configs = pool.quality_control.configs if pool.quality_control is not None else None
    return any(
        str(getattr(rule.action, "type", "")).endswith("CHANGE_OVERLAP")
        for config in configs or []
        for rule in config.rules or []
    )


@dataclass
class RunRegistry:
    """The Toloka objects of one run key: found by their tag, created only when absent.

    `client` reads and does idempotent writes with retries; `creator` (retries=0) makes the
    creates that must not be retried blindly (see `find_or_create`). Same key, same objects: a
    resumed or retried run, or a later round of a catalogue, finds what an earlier one made.
    """

    client: TolokaClient
    run_key: str
    creator: TolokaClient | None = None
    _make: TolokaClient = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._make = self.creator or self.client

    @classmethod
    def connect(cls, target: TolokaTarget, run_key: str) -> RunRegistry:
        """A registry with a retrying client and a non-retrying creator for `target`."""
        return cls(make_client(target), run_key, make_client(target, retries=0))

    # -------------------------------------------------------------------------------------- tags

    def tag(self, role: str) -> str:
        """The marker stored on every object of this run with this role."""
        return f"crowdclust:{self.run_key}:{role}"

    @property
    def prefix(self) -> str:
        return self.tag("")

    def _has_tag(self, obj: Any, marker: str) -> bool:
        if getattr(obj, "private_comment", None) == marker:
            return True
        metadata = getattr(obj, "metadata", None) or {}
        return marker in (metadata.get("crowdclust") or [])

    def _first(self, objects: Iterable[Any], role: str) -> str | None:
        marker = self.tag(role)
        return next((str(obj.id) for obj in objects if self._has_tag(obj, marker)), None)

    def projects(self) -> list[Project]:
        """The run's active projects."""
        return [
            p
            for p in self.client.get_projects(status="ACTIVE")
            if str(p.private_comment or "").startswith(self.prefix)
        ]

    # ----------------------------------------------------------------------------------- ensure_*

    def ensure_project(self, role: str, spec: dict[str, Any]) -> str:
        project = Project.structure(spec)
        project.private_comment = self.tag(role)
        return find_or_create(
            lambda: self._first(self.client.get_projects(status="ACTIVE"), role),
            lambda: self._make.create_project(project),
            f"project ({role})",
        )

    def ensure_training(self, role: str, project_id: str, spec: dict[str, Any]) -> str:
        training = Training.structure(spec)
        training.project_id = project_id
        training.metadata = {**(training.metadata or {}), "crowdclust": [self.tag(role)]}
        return find_or_create(
            lambda: self._first(self.client.get_trainings(project_id=project_id), role),
            lambda: self._make.create_training(training),
            f"training ({role})",
        )

    def _wanted_pool(
        self, role: str, project_id: str, spec: dict[str, Any], training_id: str | None = None
    ) -> Pool:
        """The pool `spec` describes, as this run makes it: its project, its tag, its training."""
        pool = Pool.structure(spec)
        pool.project_id = project_id
        pool.private_comment = self.tag(role)
        if training_id is not None:
            if pool.quality_control is None or pool.quality_control.training_requirement is None:
                raise ValueError(f"{role}: pool config needs quality_control.training_requirement")
            pool.quality_control.training_requirement.training_pool_id = training_id
        return pool

    def refresh_pool(
        self, pool_id: str, role: str, project_id: str, spec: dict[str, Any], training_id: str | None = None
    ) -> None:
        """Give the run's pool `pool_id` the settings `spec` asks for, as `ensure_pool` does when it
        finds it: for a setup stage that came from its cache (see `preflight.verify_labelling_task`)."""
        self._apply_settings(pool_id, self._wanted_pool(role, project_id, spec, training_id), role)

    def ensure_pool(
        self, role: str, project_id: str, spec: dict[str, Any], training_id: str | None = None
    ) -> str:
        pool = self._wanted_pool(role, project_id, spec, training_id)

        def create() -> Any:
            pool.will_expire = platform_now(self.client) + POOL_LIFETIME
            return self._make.create_pool(pool)

        found = self._first(self.client.get_pools(project_id=project_id), role)
        if found is not None:
            self._apply_settings(found, pool, role)
            return found
        return find_or_create(
            lambda: self._first(self.client.get_pools(project_id=project_id), role),
            create,
            f"pool ({role})",
        )

    def _apply_settings(self, pool_id: str, wanted: Pool, role: str) -> None:
        """Give an existing pool of the run the settings the config now asks for.

        A pool is found by its tag and was kept as it was made: a run resumed after the user raised
        `exam.expected_workers` (as a starved exam's error advises), a reward, an overlap or
        `exam.min_skill` went on with the old pool, so the advice never took effect and only a new
        run key (paying for everything again) got out. Now the pool is closed for the update if open
        (the wait reopens it, as it reopens a completed one that now owes answers), updated, and when
        its default overlap changed every task suite's overlap moves by the same amount (never below
        the answers it has: `set-overlap-or-min`); in a pool whose rules add overlap for rejected
        answers each suite gets the new overlap plus its rejected answers, so the overlap quality
        control added stays and no more.
        """
        have = self.client.get_pool(pool_id)
        changes = pool_changes(have, wanted)
        if not changes:
            return
        old_overlap, new_overlap = _default_overlap(have), _default_overlap(wanted)
        shown = {  # the values a user changes most; other fields by name
            "reward_per_assignment": f"reward {have.reward_per_assignment} -> {wanted.reward_per_assignment}",
            "defaults": f"overlap {old_overlap} -> {new_overlap}"
            if old_overlap != new_overlap
            else "defaults",
        }
        described = ", ".join(shown.get(key, key) for key in changes)
        log.warning("pool %s (%s) was made with other settings; updating it: %s", pool_id, role, described)
        if have.status == Pool.Status.OPEN:
            # Closed as any run closes it, not *for update*: Toloka opens a pool closed for update
            # again by itself 15 minutes later, and a run refused after its setup (the new reward's
            # budget check) left it to reopen and pay the crowd, its failure hook closing open pools
            # only. The wait opens it.
            self.client.close_pool(pool_id)
        for key in changes:
            setattr(have, key, getattr(wanted, key))
        _extend_lifetime(self.client, have)  # an expired pool's update would be refused
        self.client.update_pool(pool_id, have)
        if old_overlap is not None and new_overlap is not None and old_overlap != new_overlap:
            adds = _changes_overlap(wanted)
            # A rule of the pool adds overlap for each rejected answer (the exam's): a suite owes the
            # new overlap besides them. Moved by the change from what it had instead, a suite left
            # above the lowered overlap by the answers it held (set-overlap-or-min) went up by the
            # whole raise from there: exam.expected_workers 8 -> 4 -> 8 left 12 seats a suite.
            rejected = (
                Counter(
                    str(a.task_suite_id)
                    for a in self.client.get_assignments(pool_id=pool_id, status="REJECTED")
                )
                if adds
                else Counter()
            )
            for suite in self.client.get_task_suites(pool_id=pool_id):
                target = max(1, (suite.overlap or old_overlap) + new_overlap - old_overlap)
                if adds:
                    target = max(1, new_overlap + rejected[str(suite.id)])
                if new_overlap > old_overlap and not adds:
                    # No rule of the pool adds overlap, so what a suite holds above the old overlap is
                    # answers it kept when the overlap was lowered (set-overlap-or-min stops at what
                    # a suite holds), not overlap to keep: 8 -> 7 -> 8 left every suite at 9, and
                    # the crowd was paid an answer per HIT more than the config asked.
                    target = max(suite.overlap or 0, new_overlap)
                if target != suite.overlap:
                    self.client.patch_task_suite_overlap_or_min(
                        suite.id, TaskSuiteOverlapPatch(overlap=target)
                    )
        # A completed pool given a higher overlap is left closed here: the wait opens it for the added
        # answers (`open_all`: a completed pool whose suites owe answers), once every check before it
        # has passed. Reopened here, a run that the HIT plan's check then refused (a changed
        # hits.size along with the overlap) had the crowd answer, and be paid, until its failure
        # hook closed the pool.

    def _reopen_completed(self, pool: Pool, work: str) -> None:
        """Open a completed pool that was given more work, with a new lifetime if its own has
        passed: a finished run topped up after its pool's week was over was refused the open
        (`move will_expire first`), and its new HITs stayed unanswered."""
        if is_completed(pool):
            _renew_lifetime(self.client, pool)
            self.client.open_pool(pool.id)
            log.warning("pool %s had completed; reopened for %s", pool.id, work)

    @staticmethod
    def skill_name(base_name: str, run_key: str) -> str:
        """The name of a run's skill: the base name with the run key appended."""
        return f"{base_name} [{run_key}]"

    def find_skill(self, base_name: str) -> str | None:
        """The id of the run's skill, None when it was never created."""
        name = self.skill_name(base_name, self.run_key)
        return next((str(s.id) for s in self.client.get_skills(name=name) if s.name == name), None)

    def ensure_skill(self, base_name: str) -> str:
        return find_or_create(
            lambda: self.find_skill(base_name),
            lambda: self._make.create_skill(
                name=self.skill_name(base_name, self.run_key), private_comment=self.tag("skill"), hidden=True
            ),
            "skill",
        )

    def ensure_suites(
        self, role: str, pool_id: str, suites: list[dict[str, Any]], exclusive: bool = False
    ) -> int:
        """Upload the suites the pool does not hold yet; returns how many the pool holds afterwards.

        The pool's suites are compared, as a multiset of their input values, with what should be
        there; only the difference is sent, with an operation id derived from the run key, the role
        and the batch, so a POST retried after a lost response is recognised by Toloka.

        `exclusive`: the pool must hold nothing but `suites` (a main pool and its HIT plan). A pool
        that holds other suites was filled under another plan, and the run's settings that shape
        the plan (`hits.*`) changed since: adding the new plan would have the crowd answer both
        designs, paid, into one export. `PlanChanged` stops the run before anything is uploaded.
        """
        have = [_content_key(s.tasks) for s in self.client.get_task_suites(pool_id=pool_id)]
        if exclusive:
            planned = Counter(_content_key(suite["tasks"]) for suite in suites)
            foreign = sum((Counter(have) - planned).values())  # multiset difference
            if foreign:
                raise PlanChanged(
                    f"{role}: pool {pool_id} of run key {self.run_key} holds {foreign} HIT(s) that are not "
                    f"in this run's plan of {len(suites)}: what shapes the plan changed since the pool "
                    "was filled (the dataset's images, or hits.*; for a second round also "
                    "aggregation.*, which shapes the first round's clusters). Put them back to resume "
                    "this run, or give the new plan its own --run-key (a new pool, exam and skill); "
                    "nothing was uploaded"
                )
        missing = _missing(have, suites, lambda suite: _content_key(suite["tasks"]))
        if missing:
            params = TaskSuitesCreateRequestParameters(
                operation_id=operation_id(self.run_key, role, {"pool": pool_id, "suites": missing}),
                allow_defaults=True,
                async_mode=True,
            )
            result = self.client.create_task_suites(_structured(TaskSuite, missing, pool_id), params)
            if result.validation_errors:
                raise ValueError(
                    f"{role}: Toloka rejected {len(result.validation_errors)} suites: "
                    f"{dict(list(result.validation_errors.items())[:3])}"
                )
            log.info("uploaded %d suites to pool %s (%s)", len(missing), pool_id, role)
            # A finished run whose plan grew (more HITs per image) would otherwise keep its new HITs
            # unanswered, and report their coverage.
            self._reopen_completed(self.client.get_pool(pool_id), f"{role}: its {len(missing)} new suites")
        return len(suites)

    def ensure_tasks(self, role: str, pool_id: str, tasks: list[dict[str, Any]]) -> int:
        """Same as `ensure_suites` for single tasks (training tasks with known solutions)."""
        have = [_content_key([t]) for t in self.client.get_tasks(pool_id=pool_id)]
        missing = _missing(have, tasks, lambda spec: _content_key([spec]))
        if missing:
            params = CreateTasksParameters(
                operation_id=operation_id(self.run_key, role, {"pool": pool_id, "tasks": missing}),
                allow_defaults=True,
                async_mode=True,
            )
            self.client.create_tasks(_structured(Task, missing, pool_id), params)
            log.info("uploaded %d tasks to %s (%s)", len(missing), pool_id, role)
        return len(tasks)

    # ------------------------------------------------------------------------------- find, close

    def pools(self) -> dict[str, Pool]:
        """Role -> pool, for every pool of the run."""
        return {
            str(pool.private_comment)[len(self.prefix) :]: pool
            for project in self.projects()
            for pool in self.client.get_pools(project_id=project.id)
            if str(pool.private_comment or "").startswith(self.prefix)
        }

    def balance(self) -> float | None:
        """The requester's balance, USD (None when the platform does not say)."""
        value = self.client.get_requester().balance
        return None if value is None else float(value)

    def answers_beyond(self, role: str, overlap: int) -> int:
        """Answers the run's pool `role` holds (taken, submitted or accepted) above `overlap` per HIT.

        A resumed run whose overlap went down (7 -> 5) still pays for the answers its HITs already
        hold: the plan at the new overlap does not count them (0 when the pool does not exist yet).
        """
        pool = self.pools().get(role)
        if pool is None:
            return 0
        held = Counter(assignment_suites(self.client, str(pool.id), ("ACTIVE", "SUBMITTED", "ACCEPTED")))
        return sum(max(0, count - overlap) for count in held.values())

    def spent(self, include: Callable[[str], bool] = lambda role: True) -> float:
        """What Toloka charged so far for the run's pools whose role passes `include`, USD."""
        return round(sum(v or 0.0 for _, _, v in self.charged(include)), 4)

    def charged(
        self, include: Callable[[str], bool] = lambda role: True
    ) -> list[tuple[str, str, float | None]]:
        """(role, pool id, what Toloka charged so far) for the run's pools whose role passes `include`."""
        pools = [(role, pool) for role, pool in sorted(self.pools().items()) if include(role)]
        requests = [SpentBudgetPoolAnalytics(subject_id=pool.id) for _, pool in pools]
        batches = [requests[i : i + ANALYTICS_BATCH] for i in range(0, len(requests), ANALYTICS_BATCH)]
        values = [v for batch in batches for v in _analytics(self.client, batch)]
        return [(role, str(pool.id), value) for (role, pool), value in zip(pools, values, strict=True)]

    def verify(self, owned: Iterable[Owned]) -> None:
        """Check every cached id against the platform: it exists and carries this run's tag.

        A 404 or another tag means the platform lost this run's objects (a reset, another
        account, ids reused by someone else's run): never use them, say how to start anew.
        """
        getters: dict[str, Callable[[str], Any]] = {
            "project": self.client.get_project,
            "training": self.client.get_training,
            "pool": self.client.get_pool,
            "skill": self.client.get_skill,
        }
        for item in owned:
            try:
                obj = getters[item.kind](item.id)
            except DoesNotExistApiError:
                problem = "not found"
            else:
                if self._has_tag(obj, self.tag(item.role)):
                    continue
                problem = f"it does not carry the tag {self.tag(item.role)}"
            raise StaleRunError(
                f"the platform no longer has this run's objects ({item.kind} {item.id} of run key "
                f"{self.run_key}: {problem}); run again with --fresh to recreate them "
                "(nothing of another run is used)"
            )

    def close_open(self) -> list[str]:
        """Close every open pool and training of the run (failure and cancellation hooks)."""
        closed = []
        for project in self.projects():
            for pool in self.client.get_pools(project_id=project.id, status="OPEN"):
                self.client.close_pool(pool.id)
                closed.append(f"pool {pool.id}")
            for training in self.client.get_trainings(project_id=project.id, status="OPEN"):
                self.client.close_training(training.id)
                closed.append(f"training {training.id}")
        return closed

    def rounds(self, project_role: str, *pool_prefixes: str) -> dict[str, list[RoundState]]:
        """Per prefix, the round pools (roles `<prefix><round>`) of the project `project_role`, oldest
        first; one listing of the projects and pools serves every prefix.

        Read-only: a catalogue that was never labelled (no such project yet) has no rounds.
        """
        project_tag = self.tag(project_role)
        rounds: dict[str, list[RoundState]] = {prefix: [] for prefix in pool_prefixes}
        for project in self.client.get_projects(status="ACTIVE"):
            if project.private_comment != project_tag:
                continue
            for pool in self.client.get_pools(project_id=project.id):
                comment = str(pool.private_comment or "")
                prefix = next((p for p in pool_prefixes if comment.startswith(self.tag(p))), None)
                if prefix is None:
                    continue
                items = {
                    image
                    for suite in self.client.get_task_suites(pool_id=pool.id)
                    for t in suite.tasks
                    for image in t.input_values["images"]
                }
                rounds[prefix].append(
                    RoundState(
                        pool_id=str(pool.id),
                        round=comment[len(self.tag(prefix)) :],
                        completed=is_completed(pool),
                        created=str(pool.created),
                        items=tuple(sorted(items)),
                    )
                )
        return {
            prefix: sorted(found, key=lambda r: (r.created, r.pool_id)) for prefix, found in rounds.items()
        }
