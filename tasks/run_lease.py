"""The cross-machine layer of the run-key lock: a Prefect global concurrency slot under a lease.

A `flock` only protects one machine. When the flow talks to a Prefect server (`PREFECT_API_URL`
is set: every worker of a deployment, on any host, shares it), the run key also takes the single
slot of the global concurrency limit `crowdclust-run-<digest>` (limit 1, created on first use), with
a lease the holder renews every third of its length from a daemon thread while it runs:

- a second run of the key on any machine is refused the slot (HTTP 423) and fails at once, naming
  the holder (a Prefect variable of the same name says `pid N on host H since T`, and the holder's
  flow run: its name, id and deployment);
- a holder that ends releases the slot; one killed by `kill -9` (or whose machine died) stops
  renewing, and the server revokes the lease once it has run out: within `lease_seconds` (60 by
  default, the shortest the server allows) plus its repossessor loop (15 s by default);
- a holder killed on *this* machine is known dead at once: it wrote its lease id into the lock file
  that the new run now holds the `flock` of, so the new run releases that lease and goes on.

The ephemeral API (no `PREFECT_API_URL`) lives and dies with each process, and so does the private
server of `crowdclust run` and `make demo`: a slot there protects nothing, so this layer is skipped
and the `flock` alone applies.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from uuid import UUID

import httpx

from tasks.settings import Settings

LIMIT_PREFIX = "crowdclust-run"
REPOSSESSOR_SECONDS = 15.0  # the server's PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS default
RETRY_SECONDS = 1.0  # while waiting for a slot, how often to ask again

log = logging.getLogger(__name__)


class SlotTaken(Exception):
    """Another live run (or one killed less than a lease ago) holds the run key's slot."""

    def __init__(self, limit: str, holder: str | None) -> None:
        super().__init__(limit)
        self.limit = limit
        self.holder = holder


def server_url() -> str | None:
    """The Prefect API this process uses, or None in ephemeral mode or on a command's private server
    (`Settings.private_prefect`): neither outlives the process, so a slot there guards nothing."""
    from prefect.settings import get_current_settings

    if Settings().private_prefect:
        return None
    return get_current_settings().api.url or None


def limit_name(digest: str) -> str:
    """The global concurrency limit (and holder variable) of a run key's digest."""
    return f"{LIMIT_PREFIX}-{digest}"


def release(lease_id: UUID) -> bool:
    """Give the slot back: False when the server no longer has the lease (revoked, or forgotten by
    a restart with its leases in memory, which keeps the slot taken)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        try:
            client.release_concurrency_slots_with_lease(lease_id)
        except httpx.HTTPStatusError:
            return False
    return True


def _names_this_process(limit: str) -> bool:
    """The slot's holder record names this process (a slot a restarted server forgot is our own)."""
    return (_holder(limit) or "").startswith(f"pid {os.getpid()} on host {socket.gethostname()} ")


def _ensure_limit(limit: str) -> None:
    """Create the key's limit (1 slot) unless it exists.

    Read before creating: the server logs every create of an existing limit as an error with a
    traceback (an IntegrityError), which would be once per run of the key after its first.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(limit)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another host created it meanwhile
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=limit, limit=1))


def _try_acquire(limit: str, lease_seconds: float) -> UUID | None:
    """One request for the slot: the lease id, or None (423)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        try:
            response = client.increment_concurrency_slots_with_lease(
                names=[limit], slots=1, mode="concurrency", lease_duration=lease_seconds
            )
        except httpx.HTTPStatusError as error:
            if error.response.status_code == 423:
                return None
            raise
        return UUID(response.json()["lease_id"])


def _holder(limit: str) -> str | None:
    from prefect.variables import Variable

    try:
        value = Variable.get(limit, default=None)
    except Exception:  # naming the holder is a courtesy: never fail the refusal for it
        return None
    return str(value) if value else None


def acquire(limit: str, lease_seconds: float, wait_seconds: float, role: str = "") -> UUID:
    """The slot's lease id, asking again every second for up to `wait_seconds`; else `SlotTaken`.

    `role` is added to the holder record that a refused run reads (e.g. that a hook holds the key).
    """
    deadline = time.monotonic() + wait_seconds
    _ensure_limit(limit)
    while True:
        lease_id = _try_acquire(limit, lease_seconds)
        if lease_id is not None:
            from prefect.variables import Variable

            since = datetime.now(UTC).isoformat(timespec="seconds")
            holder = f"pid {os.getpid()} on host {socket.gethostname()} since {since}" + (
                f", {role}" if role else ""
            )
            with contextlib.suppress(Exception):  # a courtesy to a refused run: never lose the slot for it
                Variable.set(limit, holder, overwrite=True)
            return lease_id
        if time.monotonic() >= deadline:
            raise SlotTaken(limit, _holder(limit))
        time.sleep(min(RETRY_SECONDS, max(deadline - time.monotonic(), 0.0)))


def add_to_holder(limit: str, more: str) -> None:
    """Add `more` (the flow run that holds the key) to the slot's holder record, when this process
    holds the slot: a refused run reads it."""
    if server_url() is None or not _names_this_process(limit):
        return
    from prefect.variables import Variable

    with contextlib.suppress(Exception):  # a courtesy to a refused run
        Variable.set(limit, f"{_holder(limit)}, {more}", overwrite=True)


def dead_here(holder: str | None) -> bool:
    """True when the holder record names a process of this host that no longer runs.

    Such a slot is stale: its holder would hold it only while alive, and a dead holder's lease is
    revoked by the server unless the server forgot it (restarted with its leases in memory). Hosts
    are told apart by name, so containers that share a host name and not a process table must not
    share run keys.
    """
    found = re.match(r"pid (\d+) on host (\S+) since ", holder or "")
    if found is None or found[2] != socket.gethostname() or int(found[1]) == os.getpid():
        return False
    try:
        os.kill(int(found[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def free(limit: str) -> None:
    """Empty the key's slot (limit 1): only for a slot whose holder is known dead (`dead_here`)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    with get_client(sync_client=True) as client:
        client.update_global_concurrency_limit(limit, GlobalConcurrencyLimitUpdate(active_slots=0))


def _renew_until(
    stop: threading.Event, limit: str, held: list[UUID], lease_seconds: float, every: float | None = None
) -> None:
    """Renew every third of the lease, so two renewals may fail before it runs out.

    A lease the server no longer knows (404, or 410 once it repossessed it: down longer than the
    lease) is taken again at once when the key's slot is free, as it is unless another run took it;
    `held[0]` is the lease now held. Before, the run went on unprotected with a warning every 20 s.
    `every`: seconds between renewals (a third of the lease unless given).
    """
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        while not stop.wait(every or lease_seconds / 3):
            try:
                client.renew_concurrency_lease(held[0], lease_duration=lease_seconds)
            except httpx.HTTPStatusError as error:
                if error.response.status_code not in (404, 410):
                    log.warning("could not renew the run key's lease %s: %s", held[0], error)
                    continue
                try:
                    again = _try_acquire(limit, lease_seconds)
                    if again is None and _names_this_process(limit):  # taken by our own lost lease
                        free(limit)
                        again = _try_acquire(limit, lease_seconds)
                except Exception as failed:  # the server may still be starting: try again next time
                    log.warning("could not take the run key's slot again: %s", failed)
                    continue
                if again is None:
                    log.error(
                        "the run key's lease %s ran out (the Prefect server was unreachable for longer "
                        "than %.0f s) and another run holds the key now: two runs of one key may be "
                        "paying for the same pools",
                        held[0],
                        lease_seconds,
                    )
                    return
                log.warning(
                    "the run key's lease %s ran out (the Prefect server was unreachable for longer than "
                    "%.0f s); the key was free and is held again (lease %s)",
                    held[0],
                    lease_seconds,
                    again,
                )
                held[0] = again
            except Exception as error:  # the server may be restarting: try again next time
                log.warning("could not renew the run key's lease %s: %s", held[0], error)


@contextlib.contextmanager
def renewed(limit: str, lease_id: UUID, lease_seconds: float) -> Iterator[None]:
    """Keep the lease alive while the block runs; release it and forget the holder afterwards."""
    stop, held = threading.Event(), [lease_id]
    # In the caller's context: inside a flow run, a lost lease is logged to that run (tasks.run_log).
    thread = threading.Thread(
        target=contextvars.copy_context().run,
        args=(_renew_until, stop, limit, held, lease_seconds),
        name=f"{limit}-lease",
        daemon=True,
    )
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        from prefect.variables import Variable

        if release(held[0]):
            with contextlib.suppress(Exception):  # the record is only a courtesy to a refused run
                Variable.unset(limit)
        else:  # the record stays: once this process has ended, the next run here frees the slot
            log.warning(
                "the run key's slot %s could not be given back (the Prefect server no longer knows its "
                "lease): the next run of the key on this host frees it",
                limit,
            )
