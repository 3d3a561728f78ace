"""Errors a run is refused with on purpose, and how a flow ends with one: no tracebacks.

A run refused up front (a plan over budget, an account that cannot pay it, a run key another run
holds, a bad dataset or Toloka config, no token, no platform) fails with a message that says why and
what to do. Raised out of a flow, it was logged by Prefect's engine with a full traceback, as a bug
is: "Encountered exception during execution" by every flow it left (the labelling sub-flow, then
the pipeline), "Engine execution exited with unexpected exception" by a deployment's flow-run
process, and "Task run failed with exception" by the stage that refused. The run's page in the UI
showed the reason above two tracebacks of some 60 lines each.

Instead, a flow that meets a refusal (`locked_run`, which wraps every flow that takes a run key,
calls `refused`) returns a Failed state: its data is the error, so whoever called the flow gets it
raised as before (`crowdclust run`'s messages and exit codes do not change), and its message is the
one Prefect gives a raised error (`Flow run encountered an exception: BudgetExceeded: ...`). The
flow logs the reason as one error line.

Two tracebacks are Prefect's own doing, and `quiet_refusals` (a filter on Prefect's flow and task
run loggers) handles them by the error they carry, never by their text:
- Prefect 3.9 raises a top-level flow run's failure out of a deployment's flow-run process whatever
  the flow returned, and logs it with its traceback ("Engine execution exited with unexpected
  exception"): that record is dropped when its error is one a flow returned as refused (`failed`
  marks it), the flow's own line having said why;
- a stage (a task) that refuses is logged as "Task run failed with exception: BudgetExceeded(...)"
  with its traceback: the line stays, without the traceback. A task cannot return a Failed state
  instead: Prefect hands a task's returned state to its caller as a value, not as the error.
Any other error keeps its traceback: a bug is never a refusal type.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

REFUSED = "crowdclust_refused"  # the attribute that marks an error a flow returned as refused


def refusal_types() -> tuple[type[Exception], ...]:
    """The errors a run is refused with on purpose, each with a message that says what to do."""
    from tasks.preflight import DATA_ERRORS  # dataset, HIT plan, Toloka config, budget, earlier keys
    from tasks.run_lock import RunKeyBusy, RunLockUnusable
    from tasks.toloka_api import MissingTokenError, PlatformUnreachable

    return (*DATA_ERRORS, RunKeyBusy, RunLockUnusable, MissingTokenError, PlatformUnreachable)


_DEFINED_IN = ("tasks.preflight", "tasks.run_lock", "tasks.toloka_api")  # a filter imports none of them


def is_refusal(error: BaseException) -> bool:
    return isinstance(error, refusal_types())


def failed(error: Exception) -> Any:
    """The Failed state a flow refused with `error` returns: `error` as its data (marked as a
    refusal), Prefect's own message for a raised error (`Flow run encountered an exception:
    <Type>: <message>`)."""
    from prefect.states import Failed, format_exception

    setattr(error, REFUSED, True)
    state = Failed(data=error, message=f"Flow run encountered an exception: {format_exception(error)}")
    state.state_details.retriable = False  # as for a raised error
    return state


def refused(error: Exception) -> Any:
    """What a flow returns when it meets a refusal (`locked_run` does this for every flow it wraps):
    the reason in one error line of its log, and a Failed state carrying it (`failed`)."""
    from prefect import get_run_logger
    from prefect.states import format_exception

    quiet_refusals()
    get_run_logger().error("%s", format_exception(error))
    return failed(error)


class _RefusalsQuietly(logging.Filter):
    """Drops the engine's copy of an error a flow returned as refused (`failed` marked it), and the
    traceback (not the line) of a refusal a stage raised."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is None:
            return True
        if getattr(error, REFUSED, False):
            return False
        if all(name in sys.modules for name in _DEFINED_IN) and is_refusal(error):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_refusals() -> None:
    """Prefect's flow and task run loggers leave out the tracebacks of refusals; idempotent."""
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(found, _RefusalsQuietly) for found in logger.filters):
            logger.addFilter(_RefusalsQuietly())
