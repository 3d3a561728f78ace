"""A Prefect server of one command's own (`crowdclust run`, `make demo`) when PREFECT_API_URL names none.

Why not Prefect's ephemeral server: Prefect starts it as a child in the command's process group, so
a Ctrl-C in the terminal reaches it too and it stops at once. The flow run then can neither record
its end nor be closed cleanly: `crowdclust run` spent about two minutes retrying against the dead
server, left the run's pools open (the crowd kept working and charging) and blamed Toloka for the
connection errors. This server runs in a session of its own: Ctrl-C reaches only the command, which
closes the run's pools and exits 130, and then stops the server.

The server keeps its state where the ephemeral one did (SQLite under PREFECT_HOME), with the UI off.
When it stops while the command runs (the kernel's OOM killer, a `pkill -f prefect` meant for other
servers), it is started again on the same port and home, and the run goes on (`Watched`): before, the
run went on retrying against nothing for about four minutes, could not record its end, so its hooks
never closed its pools, and ended with an error that the Prefect API had stopped answering.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from crowdclust.service.processes import answers, bin_path, free_port, launch, wait_until

API_URL = "PREFECT_API_URL"
PRIVATE = "CROWDCLUST_PRIVATE_PREFECT"  # `tasks.settings.Settings.private_prefect`

# The server's loops that act on what one command never makes (deployments' schedules and late runs,
# workers and their pools, paused or cancelled runs, automations, concurrency leases: the run lock's
# server layer is off on a private server). Off, an idle private server costs 0.012 instead of
# 0.017 CPU-s a second and its start about 0.3 CPU-s less. What the run records (flow and task
# runs, logs, events) is still kept, for a later `prefect server start` on the same home. An
# environment that sets one of these keeps its own value.
LEAN_SERVER = {
    f"PREFECT_SERVER_SERVICES_{service}_ENABLED": "false"
    for service in (
        "SCHEDULER",
        "LATE_RUNS",
        "FOREMAN",
        "PAUSE_EXPIRATIONS",
        "CANCELLATION_CLEANUP",
        "CLEANUP_RECONCILER",
        "REPOSSESSOR",
        "TRIGGERS",
    )
}


def spawn(
    command: list[str], env: dict[str, str], log: Path | None = None, append: bool = False
) -> subprocess.Popen[bytes]:
    """Start `command` in its own session, to end with this process even when it is killed outright;
    output to `log` (added to its end with `append`), or to a pipe the caller drains."""
    if log is None:
        return launch(command, env, subprocess.PIPE, die_with_parent=True)
    with log.open("ab" if append else "wb") as output:
        return launch(command, env, output, die_with_parent=True)


def how_it_ended(code: int) -> str:
    """A process's exit status in words: `killed by SIGKILL`, `exit code 3`."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class Watched:
    """A private server's process, started again (same command, port and log) when it stops before
    the command is done with it, up to `RESTARTS` times.

    A server that dies again at once (its port taken, its disk full) is not started a fourth time: the
    run then fails as it would have, and `crowdclust run` closes its pools itself. One that never
    answered is not started again either: `Server.wait_ready` reports why it did not start.
    """

    RESTARTS = 3
    POLL_SECONDS = 0.5

    def __init__(self, command: list[str], env: dict[str, str], log: Path) -> None:
        self.command, self.env, self.log = command, env, log
        self.process = spawn(command, env, log)
        self.restarts = 0
        self.answered = threading.Event()  # set by `Server.wait_ready`
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="private-prefect-server", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._done.wait(self.POLL_SECONDS):
            code = self.process.poll()
            if code is None:
                continue
            if not self.answered.is_set():
                return
            ended = how_it_ended(code)
            if self.restarts >= self.RESTARTS:
                _warn(
                    f"the run's Prefect server stopped again ({ended}) and is not started a "
                    f"{self.RESTARTS + 1}th time: the run fails once its retries are spent; why it "
                    f"stopped may be in its log, {self.log}"
                )
                return
            self.restarts += 1
            self.process = spawn(self.command, self.env, self.log, append=True)
            _warn(
                f"the run's Prefect server stopped ({ended}); started again on the same port and home "
                f"(its log: {self.log}), and the run goes on"
            )

    def finish(self) -> subprocess.Popen[bytes]:
        """Stop watching; the process now running, for the caller to stop."""
        self._done.set()
        self._thread.join()
        return self.process


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGINT to all at once (each shuts down in about a second), then wait; SIGKILL after 10 s."""
    running = [process for process in processes if process.poll() is None]
    for process in running:
        os.killpg(process.pid, signal.SIGINT)
    deadline = time.monotonic() + 10
    for process in running:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def drain_prefect() -> None:
    """Send the logs and events Prefect still queues to the server before it stops: otherwise the
    exit handlers retry against a stopped server for more than a minute."""
    if "prefect" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    EventsWorker.drain_all(timeout=5)


@contextlib.contextmanager
def quiet_events_worker() -> Iterator[None]:
    """No "EventsWorker - Still processing items: N items remaining..." warnings in the block.

    Prefect's events worker prints it on the console when it is stopped with events queued, which
    happens as the command ends: after its last line (its `error:` line too), about events the user
    never asked for. The events themselves are still sent.
    """
    quiet = logging.getLogger("EventsWorker")  # Prefect's services log under their class name
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        yield
    finally:
        quiet.setLevel(level)


def no_heartbeats() -> contextlib.AbstractContextManager[object]:
    """Flow-run heartbeats off: they serve only crash detection on a shared server, and each flow
    run's end waits up to a second for its heartbeat thread. `private_server` turns them off for
    its block; a server of the user's own keeps them."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    return temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})


@dataclass(frozen=True)
class Server:
    """The server a command's flows talk to: a private one (`watched`, its `log`) or the user's own."""

    watched: Watched | None = None
    log: Path | None = None

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The private server's process (the one started last, after a restart)."""
        return self.watched.process if self.watched is not None else None

    def wait_ready(self) -> None:
        """Until the private server answers (nothing to wait for with a server of the user's own)."""
        if self.watched is not None:
            health = os.environ[API_URL] + "/health"
            pid = self.watched.process.pid
            wait_until(lambda: answers(health), 120, "the Prefect server", self.log, pid)
            self.watched.answered.set()


@contextlib.contextmanager
def private_server(
    log_name: str, stop_with: list[subprocess.Popen[bytes]] | None = None, needed: bool = True
) -> Iterator[Server]:
    """Start a server and point PREFECT_API_URL at it for the block, unless one is already named.

    Yields as soon as the process is started, so the caller can import while it comes up; call
    `Server.wait_ready` before the first flow. On the way out, what Prefect still queues is sent,
    then the server and the processes in `stop_with` (the caller may add to it in the block) are
    stopped together.

    `needed=False`: the block asks nothing of Prefect's API (`crowdclust run --close` with the token
    in TOLOKA_TOKEN), so no server is started: one costs 5-9 CPU-seconds and several seconds before
    the block could go on. The block still runs as on a private server (CROWDCLUST_PRIVATE_PREFECT:
    the run lock's server layer off), never on a server a Prefect profile names that the command
    would not have used.
    """
    companions = stop_with if stop_with is not None else []
    if os.environ.get(API_URL):
        try:
            yield Server()
        finally:
            stop(companions)
        return
    if not needed:
        with _environment({PRIVATE: "true"}):
            try:
                yield Server()
            finally:
                stop(companions)
        return
    port = free_port()
    log = Path(os.environ["PREFECT_HOME"]) / log_name
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [bin_path("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    watched = Watched(command, {**LEAN_SERVER, **os.environ, "PREFECT_SERVER_UI_ENABLED": "false"}, log)
    # The API for this command; no UI links into a server that is gone once the command ends; the
    # run lock's server layer off (`tasks.run_lease.server_url`).
    own = {API_URL: f"http://127.0.0.1:{port}/api", "PREFECT_UI_URL": "", PRIVATE: "true"}
    with _environment(own):
        try:
            with no_heartbeats(), quiet_events_worker():  # nothing watches heartbeats on this server
                try:
                    yield Server(watched, log)
                finally:
                    drain_prefect()
        finally:
            stop([watched.finish(), *companions])


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """`values` in os.environ (and an imported Prefect's settings) for the block, then as they were."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    _settings_from_environment()
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _settings_from_environment()


def _settings_from_environment() -> None:
    """Make an already imported Prefect read its settings from the environment again.

    Prefect reads them once, at import: imported before PREFECT_API_URL named this server, it would
    start an ephemeral server of its own at the first API call (the one this module replaces).
    """
    if "prefect.context" in sys.modules:
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()
