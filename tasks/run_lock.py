"""One run per run key: an exclusive file lock held for the whole flow run.

Two runs with the same key would look up, find nothing, and both create every object (then one
fails with a 409 and its failure hook closes the other's pools). The lock makes the second one
fail at once with a clear message instead. It is an advisory `flock` on a file named after the
endpoint and the run key in the machine's temp folder, so:

- it works with Prefect's ephemeral API (`crowdclust run`, `make demo`) and with a server, for every
  process on this machine (the local service's worker included);
- the kernel drops it when its process dies, even by `kill -9`: a crashed run never blocks its
  resume (a Prefect concurrency slot would stay taken until its lease ran out);
- it does not span machines: workers on several hosts must use distinct run keys.

Re-entrant within a process (the pipeline flow holds it and its labelling sub-flow takes it again).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

from tasks.params import PipelineParams, TolokaTarget
from tasks.toloka_api import endpoint

F = TypeVar("F", bound=Callable[..., Any])
_held: dict[Path, tuple[IO[str], int]] = {}


class RunKeyBusy(RuntimeError):
    """Another live process runs the same run key against the same platform."""


def lock_path(target: TolokaTarget, run_key: str) -> Path:
    where = endpoint(target) or target.environment
    digest = hashlib.sha256(f"{where}\0{run_key}".encode()).hexdigest()[:24]
    return Path(tempfile.gettempdir()) / "crowdclust-locks" / f"{digest}.lock"


@contextlib.contextmanager
def run_lock(target: TolokaTarget, run_key: str) -> Iterator[None]:
    """Hold the run key's lock, or raise `RunKeyBusy` naming the process that has it."""
    path = lock_path(target, run_key)
    if path in _held:
        handle, depth = _held[path]
        _held[path] = (handle, depth + 1)
        try:
            yield
        finally:
            handle, depth = _held[path]
            _held[path] = (handle, depth - 1)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise RunKeyBusy(
            f"run key {run_key} is already running ({owner}); wait for it to end, "
            "or give this run another --run-key"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    _held[path] = (handle, 1)
    try:
        yield
    finally:
        handle, depth = _held[path]
        if depth > 1:
            _held[path] = (handle, depth - 1)
        else:
            del _held[path]
            handle.close()  # closing the descriptor releases the flock


def locked_run(key: str = "resolved_run_key") -> Callable[[F], F]:
    """Flow decorator (under `@flow`): hold the lock of `params.<key>` for the whole flow run.

    The flow's first argument (or `params=`) is its `PipelineParams`; the signature Prefect shows
    is the flow function's own.
    """

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            params: PipelineParams = kwargs["params"] if "params" in kwargs else args[0]
            with run_lock(params.toloka, getattr(params, key)):
                return fn(*args, **kwargs)

        return run  # type: ignore[return-value]

    return wrap
