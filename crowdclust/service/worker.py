"""The service's process worker: `prefect worker start`, which ends its flow runs first when stopped.

Prefect 3.9's process worker, on SIGTERM or SIGINT, cancels its runner, and the runner's cancelled
tasks kill the processes of the flow runs still going with SIGKILL (anyio kills a child process whose
`async with` is cancelled): under `strace`, a flow run in its labelling wait was killed 6 ms after its
worker got a SIGTERM, and no hook of it ran. The run stayed Running until the heartbeat automation
crashed it 90 s later, its main pool open and its exam answers unreviewed, its run-key slot held. A
worker is stopped that way by whoever stops it outside `crowdclust service down`: `kill PID`, a
process manager, Ctrl-C in the terminal of a worker started by hand.

So on the first SIGTERM or SIGINT this worker first sends its flow-run processes SIGTERM, as
`crowdclust service down` does before it stops a worker: each one ends Crashed and its crash hook
closes its pools and frees its run key (SIGKILL after `RUN_GRACE_SECONDS`). Then Prefect's own
handler stops the worker as before. Before all that it writes its pid to the file that
`CROWDCLUST_STOPPING_FILE` names (the service sets it), so that a `make up` meanwhile waits for it to
end and starts a new worker instead of reporting it "already running". Run as
`python -m crowdclust.service.worker worker start ...` (the arguments of `prefect`).

It also reports a dead flow-run process's crash only to the attempt that process ran
(`guard_crash_reports`), says when a Suspended run's process ended (`say_when_suspended_runs_end`),
keeps watching for Cancel through an outage of the Prefect server (`keep_watching_for_cancels`), and
keeps its own temporary files in the service's folder (`use_service_temp`).
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from collections.abc import Callable
from types import FrameType
from typing import Any

from crowdclust.service.processes import (
    STOPPING_FILE_ENV,
    WORKER_TEMP_ENV,
    children,
    stat_fields,
    terminate,
)

RUN_GRACE_SECONDS = 15.0  # as `crowdclust service down` gives a worker's runs

Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None
Say = Callable[[str], None]
Setup = Callable[[int, str, Callable[..., Any]], None]


def _running(pid: int) -> bool:
    """Whether `pid` runs, without reaping it: its exit status belongs to the worker's own watcher."""
    try:
        return stat_fields(pid)[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def end_runs(say: Say, grace: float = RUN_GRACE_SECONDS) -> list[int]:
    """SIGTERM the flow-run processes this process started (`processes.terminate`: each leads its
    own session, so its group), SIGKILL what is left after `grace` s. Returns their pids."""
    runs = children(os.getpid(), running="prefect.engine")
    if runs:
        say(f"ending {len(runs)} flow run(s) before the worker stops (they end Crashed, closing their pools)")
        terminate(runs, grace, running=_running)
    return runs


def _say_stopping() -> None:
    """Write this worker's pid to the file `CROWDCLUST_STOPPING_FILE` names, if it names one."""
    path = os.environ.get(STOPPING_FILE_ENV)
    if path:
        try:
            with open(path, "w") as handle:
                handle.write(f"{os.getpid()}\n")
        except OSError:  # the state folder gone: nothing waits for the file then
            pass


def _runs_first(prefect_handler: Handler, say: Say) -> Callable[[int, FrameType | None], None]:
    """A handler that ends the worker's flow runs, then calls Prefect's handler for the signal."""
    busy = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal busy
        if busy:  # a second signal while the runs end: Prefect's handler follows once they have
            return
        busy = True
        _say_stopping()
        try:
            end_runs(say)
        finally:
            busy = False
        if callable(prefect_handler):
            prefect_handler(signum, frame)
        elif prefect_handler == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    return handler


def install(setup: Setup) -> Setup:
    """Wrap Prefect's `setup_signal_handlers_worker`: its handlers, each preceded by `end_runs`."""

    def setup_ending_runs_first(pid: int, process_name: str, print_fn: Callable[..., Any]) -> None:
        setup(pid, process_name, print_fn)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, _runs_first(signal.getsignal(signum), print_fn))

    return setup_ending_runs_first


def stale(started: Any, now: Any) -> bool:
    """Whether a crash report for the attempt that flow run `started` (as the worker picked it up)
    would land on something else, the run being `now`.

    Prefect 3.9's worker reports a flow-run process that exited non-zero as Crashed twice: its
    executor does at once and then runs the flow's crash hooks (5-13 s: ours close the run's pools),
    and the worker again when the executor returns. A user who pressed Retry on the first Crashed
    had the second land on the new attempt: Crashed, "exited with non-zero status code -9 ...
    exceeding memory limits", for ~9 s before it ran on and completed (2 of 2 tries on the service).

    Stale: the run has ended already (the executor's report took), a Retry waits for a worker
    (Scheduled), or a later attempt is under way (its run count is past the dead process's: one more
    than `started` once that process ran, none while it was Pending).
    """
    state = now.state
    if state is None:
        return False
    if state.is_final() or state.is_scheduled():
        return True
    return now.run_count > started.run_count + (1 if state.is_running() else 0)


def guard_crash_reports(worker_class: Any) -> None:
    """Make `worker_class` report a crash only when it is not `stale` (the run read from the API
    first; unread, it is reported as before)."""
    report = worker_class._propose_crashed_state

    async def report_unless_stale(self: Any, flow_run: Any, message: str, client: Any = None) -> None:
        try:
            now = await (client or self.client).read_flow_run(flow_run.id)
        except Exception:  # the API away: report as Prefect would (its own call says why it failed)
            now = None
        if now is not None and stale(flow_run, now):
            return
        await report(self, flow_run, message, client)

    worker_class._propose_crashed_state = report_unless_stale


def say_when_suspended_runs_end(worker_class: Any) -> None:
    """Make `worker_class` send `SUSPENDED_EVENT` for a flow run whose process ended while the run
    reads Suspended (or Paused).

    Suspend in the UI takes effect at the run's next state change: its process goes on with the stage
    in hand (a labelling wait until its pool completes) and goes on sending heartbeats, then ends with
    the run Suspended, waiting for Resume. The heartbeat automation took that end for a lost machine
    and set the run Crashed 90 s later, so Resume was gone. The event tells it the silence is meant.
    """
    run = worker_class.run

    async def run_then_say_if_suspended(self: Any, flow_run: Any, *args: Any, **kwargs: Any) -> Any:
        result = await run(self, flow_run, *args, **kwargs)
        try:
            now = await self.client.read_flow_run(flow_run.id)
        except Exception:  # the API away: the automation decides as before
            return result
        if now.state is not None and now.state.is_paused():
            from prefect.events import emit_event

            from crowdclust.service.config import SUSPENDED_EVENT

            emit_event(
                SUSPENDED_EVENT,
                resource={"prefect.resource.id": f"prefect.flow-run.{flow_run.id}"},
                payload={"state": now.state.name},
            )
        return result

    worker_class.run = run_then_say_if_suspended


# How many streaks of 3 failed polls (10 s apart, doubling after each streak) the worker's watch for
# cancelled runs outlives while the Prefect server is away: 3 x 10 s x (2**7 - 1), about an hour.
OUTAGE_BACKOFFS = 7


def keep_watching_for_cancels(delivery_module: Any) -> None:
    """Make the worker's watch for Cancel (Prefect's `FlowRunCancellingObserver`, which polls while
    its events stream is down) outlive an outage of the Prefect server.

    Prefect 3.9 gives that polling up after 3 failed polls in a row, about 26 s of a server away
    ("Cancellation observer failed. Flow run cancellation disabled."), for good: every run the
    worker had in flight then ignored Cancel. Found on a live service: the server killed and
    started again by `make up` 45 s later, a run's Cancel left it Cancelling while its process went
    on with its wait and its pool kept being paid for. The events stream reconnects by itself once
    the server is back (within Prefect's 300 s reconnect delay at most), and polling stops then.
    """
    loop = delivery_module.critical_service_loop

    async def patient(*args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("backoff", OUTAGE_BACKOFFS)
        await loop(*args, **kwargs)

    delivery_module.critical_service_loop = patient


def use_service_temp() -> None:
    """This process's temporary files (Prefect's per-run workspace folders among them) in the folder
    `CROWDCLUST_WORKER_TEMP` names, if it names one: `tempfile.tempdir`, not TMPDIR, so that the
    flow runs it starts keep the machine's (see `processes.WORKER_TEMP_ENV`)."""
    folder = os.environ.get(WORKER_TEMP_ENV)
    if folder:
        tempfile.tempdir = folder


def main() -> None:
    """`prefect` with this module's worker signal handling (`prefect worker start` reads the setup
    function from its module when it starts, so replacing the module's attribute is enough)."""
    from prefect._internal import _observation_delivery
    from prefect.cli import app
    from prefect.utilities import processutils
    from prefect.workers.process import ProcessWorker

    use_service_temp()
    processutils.setup_signal_handlers_worker = install(processutils.setup_signal_handlers_worker)
    guard_crash_reports(ProcessWorker)
    say_when_suspended_runs_end(ProcessWorker)
    keep_watching_for_cancels(_observation_delivery)
    sys.argv = ["prefect", *sys.argv[1:]]
    app()


if __name__ == "__main__":
    main()
