"""One run per run key: an exclusive lock held for the whole flow run, on one machine and across machines.

Two runs with the same key would look up, find nothing, and both create every object (then one
fails with a 409 and its failure hook closes the other's pools). The lock makes the second one
fail at once with a clear message (`RunKeyBusy`) instead. It has two layers, named after the
endpoint and the run key:

- an advisory `flock` on a file in the machine's temp folder: it works with Prefect's ephemeral API
  (`crowdclust run`, `make demo`) and with a server, for every process on this machine, and the
  kernel drops it when its process dies, even by `kill -9`. Every user of the machine shares the
  folder (mode 1777, as /tmp: anyone may add a file, only its owner remove it) and its files (0666):
  created with the umask's 0755 and 0644, the second user of a shared machine got a PermissionError
  traceback from every run, whatever its key;
- when the flow talks to a Prefect server (`PREFECT_API_URL`), the single slot of a Prefect global
  concurrency limit, under a lease the holder renews (`tasks/run_lease.py`): it spans every host
  and container that uses the server. A holder killed on another machine frees the key once its
  lease has run out (`CROWDCLUST_RUN_LOCK_LEASE_SECONDS`, 60 by default, plus up to 15 s for the
  server to notice); a run started before then fails at once saying so, or waits for it when
  `CROWDCLUST_RUN_LOCK_WAIT_SECONDS` allows. A holder killed on this machine frees the key at once:
  it wrote its lease id into the lock file, and whoever gets the `flock` next knows it is dead and
  releases its lease.

Re-entrant within a process (the pipeline flow holds it and its labelling sub-flow takes it again).

A refused run is told who holds the key in words a user can look up: the holder's process (`pid N on
this machine`, or `on host H` across machines) and, when the holder is a flow run, that flow run's
name, id and deployment, as it wrote them into the lock file (and the slot's holder record) when it
took the key. Before, a refusal named only the pid, which the Prefect UI shows nowhere. A holder that
took the key before its flow started (`crowdclust run`) names its flow run once the flow takes the
key again.

The failure/crash hook of a run (`flows/hooks.py`) takes the lock too while it closes the run's pools,
marked as such (`CLOSING`). When a worker runs a crashed run's hook (Prefect starts it in a process of
its own, seconds after the crash) and the user has already pressed Retry, the retried run finds the
key held by that hook: it waits for it (closing pools takes seconds; `HOOK_WAIT_SECONDS` at most)
instead of failing as if another run held the key.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import ipaddress
import os
import re
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import urlsplit
from uuid import UUID

from tasks import run_lease, schedules
from tasks.flow_wrapper import wraps_flow
from tasks.params import PipelineParams, TolokaTarget, endpoint
from tasks.refusals import is_refusal, refused
from tasks.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])
_held: dict[Path, tuple[IO[str], int]] = {}
_records: dict[Path, tuple[str, str]] = {}  # a held lock's file content: its first line, its flow run
_LEASE = re.compile(r"lease ([0-9a-f-]{36})")
CLOSING = "closing the pools of an ended run"  # how a hook's hold reads in the lock file and holder record
HOOK_WAIT_SECONDS = 120.0  # how long a run waits for a hook that holds its key (it takes seconds)
POLL_SECONDS = 0.25


class RunKeyBusy(RuntimeError):
    """Another live process runs the same run key against the same platform (`holder` says which)."""

    def __init__(self, message: str, run_key: str = "", holder: str = "") -> None:
        super().__init__(message)
        self.run_key, self.holder = run_key, holder


class RunLockUnusable(RuntimeError):
    """The run key's lock file cannot be taken (a folder or file another user made private, a
    symbolic link where the file should be); nothing has been opened or paid."""


LOCK_FOLDER_MODE = 0o1777  # every user may add a lock file; only its owner may remove it (sticky)
LOCK_FILE_MODE = 0o666  # every user may take and describe the lock (a pid and a flow run's name)


def is_loopback(host: str) -> bool:
    """Whether `host` is an address only this machine reaches (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: the network's


def same_platform(url: str) -> str:
    """One spelling of a platform URL: `http://localhost:4410/` and `http://127.0.0.1:4410` are the
    same emulator, and two runs of one key against it, spelled so, both ran and both paid gating."""
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower()
    host = "127.0.0.1" if is_loopback(host) else host
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    port = "" if parts.port in (None, default) else f":{parts.port}"
    return f"{parts.scheme.lower()}://{host}{port}{parts.path.rstrip('/')}"


def lock_path(target: TolokaTarget, run_key: str) -> Path:
    url = endpoint(target)
    where = same_platform(url) if url else target.environment
    digest = hashlib.sha256(f"{where}\0{run_key}".encode()).hexdigest()[:24]
    return Path(tempfile.gettempdir()) / "crowdclust-locks" / f"{digest}.lock"


def _ours_to_open_up(st: os.stat_result, mode: int) -> bool:
    """Whether a lock folder or file is ours and lacks the mode every user needs (the umask took
    its share, or an earlier version made it); another user's is left as it is."""
    return st.st_uid == os.geteuid() and st.st_mode & 0o7777 != mode


def _shared_folder(folder: Path) -> None:
    """The lock folder, made when missing, opened up to every user when it is ours.

    Never through a symbolic link: another user could have put one where the folder goes, pointing
    at a folder of ours, which would then be opened up to everyone.
    """
    with contextlib.suppress(FileExistsError):
        folder.mkdir(parents=True)
    st = folder.lstat()
    if stat.S_ISLNK(st.st_mode):
        raise OSError(errno.ELOOP, "a symbolic link", str(folder))
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.ENOTDIR, "not a folder", str(folder))
    if _ours_to_open_up(st, LOCK_FOLDER_MODE):
        os.chmod(folder, LOCK_FOLDER_MODE)  # ours, in a sticky temp folder: nobody else can swap it


def _open_lock_file(path: Path, run_key: str) -> IO[str]:
    """The key's lock file, opened for reading and writing (created when missing), shared with
    every user of the machine; `RunLockUnusable` saying what to do when it cannot be."""
    try:
        _shared_folder(path.parent)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, LOCK_FILE_MODE)
    except OSError as error:
        raise _unusable(path, run_key, error) from None
    if _ours_to_open_up(os.fstat(fd), LOCK_FILE_MODE):
        with contextlib.suppress(OSError):  # not changeable (a read-only mount): it still works for us
            os.fchmod(fd, LOCK_FILE_MODE)
    return os.fdopen(fd, "a+")


def _unusable(path: Path, run_key: str, error: OSError) -> RunLockUnusable:
    """What stops `path` from being a lock file, who can mend it, and how."""
    where = error.filename or path
    if error.errno == errno.ELOOP:
        problem = f"{where} is a symbolic link, which the run-key locks never are; remove it"
    elif error.errno == errno.ENOTDIR:
        problem = f"{path.parent} is not a folder; remove it"
    else:
        owners = []
        for place in (path.parent, path):
            with contextlib.suppress(OSError):
                st = place.lstat()
                owners.append(f"{place} belongs to uid {st.st_uid}, mode {st.st_mode & 0o7777:o}")
        problem = (
            f"{error.strerror} ({'; '.join(owners) or path}): every user of this machine needs to "
            f"write there; its owner (or root) can allow it with `chmod {LOCK_FOLDER_MODE:o} "
            f"{path.parent}` and `chmod {LOCK_FILE_MODE:o} {path.parent}/*.lock`, or set TMPDIR to a "
            "folder of your own (then runs of other users no longer see yours)"
        )
    nothing = "nothing was opened or paid"
    return RunLockUnusable(f"cannot take the lock of run key {run_key}: {problem}; {nothing}")


def _busy(run_key: str, holder: str, more: str = "") -> RunKeyBusy:
    return RunKeyBusy(
        f"run key {run_key} is already running ({holder}); wait for it to end, "
        f"or give this run another run key (--run-key; in a deployment, its run_key parameter){more}",
        run_key,
        holder,
    )


def _flock(path: Path, run_key: str) -> IO[str]:
    """This machine's layer: the open lock file, its `flock` held, or `RunKeyBusy` naming the pid.

    A hook closing the key's pools is waited for (up to HOOK_WAIT_SECONDS); a run fails at once.
    """
    handle = _open_lock_file(path, run_key)
    deadline = None
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            if CLOSING in owner:
                if deadline is None:
                    deadline = time.monotonic() + HOOK_WAIT_SECONDS
                    _log().warning("run key %s: waiting for %s", run_key, owner)
                if time.monotonic() < deadline:
                    time.sleep(POLL_SECONDS)
                    continue
            handle.close()
            raise _busy(run_key, _local_holder(owner)) from None


def _local_holder(owner: str) -> str:
    """The lock file's `pid N [lease ID][ role]` (and, on a line of its own, the holder's flow run)
    for a person: `pid N on this machine[, role][, flow run ...]` (the lease id is for the next
    holder, should this one die)."""
    first, _, run = owner.partition("\n")
    found = re.fullmatch(r"pid (\d+)(?: lease \S+)?(.*)", first.strip())
    said = first.strip()
    if found is not None:
        role = found[2].strip()
        said = f"pid {found[1]} on this machine" + (f", {role}" if role else "")
    run = " ".join(run.split())
    return f"{said}, {run}" if run else said


def flow_run_holder() -> str:
    """The flow run this code runs in, as a refused run names the key's holder: `flow run 'NAME'
    (id ID) of deployment 'FLOW/DEPLOYMENT'` (no deployment for a run started without one), or ""
    outside a flow run. Names are user text: kept to one line."""
    from prefect import runtime

    try:
        run_id = runtime.flow_run.id
        if not run_id:
            return ""
        name = " ".join(str(runtime.flow_run.name or "").split())
        deployment = runtime.deployment.name if runtime.deployment.id else None
        flow_name = runtime.flow_run.flow_name
    except Exception:  # naming the holder is a courtesy: never fail taking the key for it
        return ""
    said = f"flow run '{name}' (id {run_id})" if name else f"flow run {run_id}"
    if deployment:
        said += f" of deployment '{' '.join(f'{flow_name}/{deployment}'.split())}'"
    return said


def _log() -> Any:
    """Prefect's console logger (a run's logger is not there yet: the lock is taken before the flow)."""
    from prefect.logging import get_logger

    return get_logger("crowdclust.run_lock")


def _write(handle: IO[str], text: str, run: str = "") -> None:
    """The lock file's content: `text` (`pid N[ lease ID][ role]`), then the holder's flow run."""
    handle.seek(0)
    handle.truncate()
    handle.write(f"{text}\n{run}" if run else text)
    handle.flush()


def _stale_hint(limit: str, holder: str | None) -> str:
    """What to do about a slot no run named itself the holder of ("" when one did).

    A holder writes its name next to the slot as it takes it and deletes it as it gives the slot
    back. A slot taken with no name is most often one a Prefect server forgot: restarted while a run
    held the key, with its leases in memory, it keeps the slot taken for good and no wait helps.
    """
    if holder is not None:
        return ""
    return (
        ". No run named itself as the holder: if no run of this key is going on (the Prefect server "
        "restarted while one held the key, say), the slot is stale and stays taken; free it with "
        f"`prefect gcl delete {limit}`"
    )


def _acquire_freeing_the_dead(limit: str, run_key: str, lease: float, role: str) -> UUID:
    """The slot at once; one whose named holder no longer runs on this host is freed first.

    A Prefect server restarted while a run held the key forgets the lease: the run's release then
    fails, its name stays on the slot, and every later run of the key was refused for good, told to
    wait 75 s (a user paid a new run key to get out).
    """
    try:
        return run_lease.acquire(limit, lease, 0.0, role)
    except run_lease.SlotTaken as taken:
        if not run_lease.dead_here(taken.holder):
            raise
        _log().warning(
            "run key %s: its slot names %s, which no longer runs on this host (a Prefect server that "
            "restarts forgets its leases): freeing the slot",
            run_key,
            taken.holder,
        )
        run_lease.free(limit)
        return run_lease.acquire(limit, lease, 0.0, role)


@contextlib.contextmanager
def _server_slot(limit: str, run_key: str, dead_lease: UUID | None, role: str) -> Iterator[UUID | None]:
    """The cross-machine layer, when a Prefect server is configured: hold the key's slot, renewed."""
    server = run_lease.server_url()
    if server is None:
        yield None
        return
    if dead_lease is not None:  # left by a holder on this machine that died: its flock is ours now
        run_lease.release(dead_lease)
    settings = Settings()
    lease, wait = settings.run_lock_lease_seconds, settings.run_lock_wait_seconds
    frees = lease + run_lease.REPOSSESSOR_SECONDS
    try:
        lease_id = _acquire_freeing_the_dead(limit, run_key, lease, role.strip())
    except run_lease.SlotTaken as taken:
        holder = f"{taken.holder or 'holder unknown'}: Prefect concurrency limit {limit} on {server}"
        if taken.holder and CLOSING in taken.holder:  # a hook on another machine: it takes seconds
            wait = max(wait, HOOK_WAIT_SECONDS)
        if wait <= 0:
            raise _busy(
                run_key,
                holder,
                f"; if that run was killed, the server frees the key {frees:.0f} s after its last lease "
                f"renewal at the latest: run again then, or set CROWDCLUST_RUN_LOCK_WAIT_SECONDS={frees:.0f} "
                "to wait for it" + _stale_hint(limit, taken.holder),
            ) from None
        _log().warning(
            "run key %s is held (%s): waiting up to %.0f s for it (a run killed on another machine "
            "holds its key %.0f s after its last lease renewal at the latest)",
            run_key,
            holder,
            wait,
            frees,
        )
        try:
            lease_id = run_lease.acquire(limit, lease, wait, role.strip())
        except run_lease.SlotTaken as still:
            raise _busy(
                run_key,
                f"{still.holder or 'holder unknown'}: Prefect concurrency limit {limit} on {server}",
                f"; waited {wait:.0f} s for it" + _stale_hint(limit, still.holder),
            ) from None
    with run_lease.renewed(limit, lease_id, lease):
        yield lease_id


@contextlib.contextmanager
def run_lock(target: TolokaTarget, run_key: str, closing: bool = False) -> Iterator[None]:
    """Hold the run key's lock, or raise `RunKeyBusy` naming the process that has it.

    `closing`: the holder is a hook closing an ended run's pools (see the module docstring).
    """
    path = lock_path(target, run_key)
    if path in _held:
        handle, depth = _held[path]
        _held[path] = (handle, depth + 1)
        _name_the_flow_run(path, handle)
        try:
            yield
        finally:
            handle, depth = _held[path]
            _held[path] = (handle, depth - 1)
        return
    handle = _flock(path, run_key)
    role = f" {CLOSING}" if closing else ""  # kept to the end: whoever waits reads it until we let go
    run = flow_run_holder()
    try:
        handle.seek(0)
        dead = _LEASE.search(handle.read().partition("\n")[0])
        _write(handle, f"pid {os.getpid()}{role}", run)
        named = ", ".join(filter(None, [run, role.strip()]))  # the slot's holder record adds them
        limit = run_lease.limit_name(path.stem)
        with _server_slot(limit, run_key, dead and UUID(dead[1]), named) as lease_id:
            first = f"pid {os.getpid()}" + (f" lease {lease_id}" if lease_id else "") + role
            _write(handle, first, run)
            _held[path], _records[path] = (handle, 1), (first, run)
            try:
                yield
            finally:
                del _held[path], _records[path]
                _write(handle, f"pid {os.getpid()}{role}", run)  # released: no lease left to take over
    finally:
        handle.close()  # closing the descriptor releases the flock


def _name_the_flow_run(path: Path, handle: IO[str]) -> None:
    """A key taken outside a flow run (`crowdclust run` takes it before its flow starts) names the
    flow run that takes it again, so a refused run can find it."""
    first, run = _records.get(path, ("", ""))
    if not first or run:
        return
    run = flow_run_holder()
    if run:
        _write(handle, first, run)
        _records[path] = (first, run)
        run_lease.add_to_holder(run_lease.limit_name(path.stem), run)


def flow_params(args: tuple[Any, ...], kwargs: dict[str, Any]) -> PipelineParams:
    """A flow's `PipelineParams`: its first argument, or `params=` (the decorators' convention)."""
    return kwargs["params"] if "params" in kwargs else args[0]


def locked_run(key: str = "resolved_run_key") -> Callable[[F], F]:
    """Flow decorator (under `@flow`): hold the lock of `params.<key>` for the whole flow run.

    A transient error that outlived the stage's retries leaves the flow as `StoppedAnswering`,
    whose message names the URL and what to do (the UI shows it as the run's state message). Any
    other error leaves it without the token of the requests it holds (`drop_credentials`): a failed
    flow run's exception is persisted like its result. A refusal (the key busy, a plan over budget,
    ...) ends the run Failed without Prefect's tracebacks (`tasks.refusals.refused`); the key busy
    ends a run of a deployment's schedule `Skipped` instead (`tasks.schedules`).

    The flow's first argument (or `params=`) is its `PipelineParams`; the signature Prefect shows
    is the flow function's own.
    """

    def wrap(fn: F) -> F:
        @wraps_flow(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            from tasks.toloka_api import (
                TRANSIENT,
                drop_credentials,
                stopped_answering,
            )  # toloka-kit: once a flow runs

            params = flow_params(args, kwargs)
            held = False
            try:
                with run_lock(params.toloka, getattr(params, key)):
                    held = True
                    try:
                        return fn(*args, **kwargs)
                    except TRANSIENT as error:  # past every retry: say who and what to do
                        raise stopped_answering(error, params.toloka) from error
                    except BaseException as error:  # a flow's failure is persisted too: no token in it
                        drop_credentials(error)
                        raise
            except RunKeyBusy as error:
                mine = None if held else schedules.this_scheduled_run()
                if mine is not None:  # the key's holder does its work
                    return schedules.skipped(
                        f"skipped: run key {error.run_key} is busy ({error.holder}), which does the "
                        f"key's work; this run of the schedule ({schedules.when(mine)}) did nothing"
                    )
                return refused(error)
            except Exception as error:  # refused on purpose: Failed, without Prefect's tracebacks
                if is_refusal(error):
                    return refused(error)
                raise

        return run  # type: ignore[return-value]

    return wrap
