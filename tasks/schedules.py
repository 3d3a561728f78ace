"""Runs of a deployment's schedule that were missed: only the latest of them does the work.

Prefect's scheduler creates a scheduled deployment's runs ahead (three of a nightly schedule), and a
worker starts every run whose time has come, however late. After a service that was down over three
nights, the three runs of the nightly catalogue started together: one labelled the new images, the
other two failed at once on the busy catalogue key (`RunKeyBusy`), red on the Runs page for a job
that was done. A run the schedule made (`auto_scheduled`) now ends `Skipped` (a Completed state),
doing nothing, when

- a later run of the same schedule is due too (`superseded_by`): only the latest missed run runs,
  as a crontab that was off does not run its missed hours one by one;
- its run key is busy (`locked_run`): the run before it still goes (a crowd slower than the
  schedule) or someone runs the key by hand; that run does the key's work.

The Skipped state's message says which, naming the other run. A run started by hand, from the UI or
`crowdclust run`, never skips: it fails on a busy key as before. Backfills made through Prefect's
`/deployments/{id}/schedule` endpoint are scheduler runs too and collapse the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, TypeVar

from tasks.flow_wrapper import wraps_flow

F = TypeVar("F", bound=Callable[..., Any])

SKIPPED = "Skipped"  # the name of a skipped run's (Completed) state
# A later run that ended so does not stand in for this one: it did not do the work (nor did a
# `SKIPPED` one: a run skipped for a run that then failed left the work to the next night).
NOT_DONE = ("FAILED", "CRASHED", "CANCELLED", "CANCELLING")


def this_scheduled_run() -> Any | None:
    """The flow run this code runs in, if the deployment's schedule made it (else None)."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    run = context.flow_run if context is not None else None
    if run is None or not run.auto_scheduled or run.deployment_id is None:
        return None
    return run


def supersedes(later: Any, run: Any, now: datetime) -> bool:
    """Whether `later`, another flow run of `run`'s deployment, stands in for `run`: made by the
    schedule too, due for a later time than `run` and by `now`, and not ended without doing its work."""
    if later.id == run.id or not later.auto_scheduled or later.expected_start_time is None:
        return False
    if later.state_name == SKIPPED:
        return False
    if run.expected_start_time is None or not run.expected_start_time < later.expected_start_time <= now:
        return False
    state = later.state_type.value if later.state_type is not None else None
    return state not in NOT_DONE


def latest(runs: Iterable[Any]) -> Any | None:
    """The run of `runs` due last (ties: the greatest id), or None."""
    return max(runs, key=lambda r: (r.expected_start_time, str(r.id)), default=None)


def superseded_by(run: Any, now: datetime | None = None) -> Any | None:
    """The latest run of `run`'s deployment that `supersedes` it, read from the Prefect API."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterExpectedStartTime,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    now = now or datetime.now(UTC)
    runs_filter = FlowRunFilter(
        deployment_id=FlowRunFilterDeploymentId(any_=[run.deployment_id]),
        expected_start_time=FlowRunFilterExpectedStartTime(after_=run.expected_start_time, before_=now),
    )
    try:
        with get_client(sync_client=True) as client:
            # The latest first: the server's page (200 runs) holds them when more are due.
            latest_first = FlowRunSort.EXPECTED_START_TIME_DESC
            later = client.read_flow_runs(flow_run_filter=runs_filter, sort=latest_first)
    except Exception as error:  # the check saves a run's work, never costs it: the run goes on
        from prefect import get_run_logger

        get_run_logger().warning("schedule's later runs unread (%s): this run goes on", error)
        return None
    return latest(other for other in later if supersedes(other, run, now))


def skipped(message: str) -> Any:
    """The state a skipped run returns: Completed, named `SKIPPED`, saying why (the engine's
    "Finished in state Skipped(...)" line puts the message in the run's log too)."""
    from prefect.states import Completed

    return Completed(name=SKIPPED, message=message)


def when(run: Any) -> str:
    """When `run` was due, in UTC, as the skip messages say it."""
    due = run.expected_start_time
    return f"{due.astimezone(UTC):%Y-%m-%d %H:%M} UTC" if due is not None else "unscheduled"


def skip_missed_runs(fn: F) -> F:
    """Flow decorator (under `@flow`, above `locked_run`): a scheduled run that a later due run of
    its schedule `supersedes` ends `Skipped` before it takes its run key or asks Toloka anything."""

    @wraps_flow(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        mine = this_scheduled_run()
        later = superseded_by(mine) if mine is not None else None
        if later is not None:
            return skipped(
                f"skipped: this run of the schedule ({when(mine)}) was missed, and a later one is due "
                f"too: the flow run of {when(later)} (id {later.id}) does the work"
            )
        return fn(*args, **kwargs)

    return run  # type: ignore[return-value]
