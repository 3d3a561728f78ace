"""The stages' helper modules log through their own loggers; this puts their lines in the run's log.

`tasks/toloka_api.py` and friends log with `logging.getLogger(__name__)` because they also run
outside any flow (tests, `crowdclust run`'s lock before its flow starts). Prefect sends a logger's
lines to the API only when it is one of its own or listed in `PREFECT_LOGGING_EXTRA_LOGGERS`, which
a worker's flow-run process would have to carry in its environment, set before Prefect is imported.
Without it, the warnings that explain money ("pool P was made with other settings; updating it:
overlap 7 -> 8", "pool P had expired ... it reopens until ...", a lost run-key lease) reached the
console of the process but never the flow run's log in the UI, where a team reads them.

`ship_library_logs` attaches Prefect's API handler to these loggers in any process that imports the
stages (`tasks.stage` calls it), whatever its environment. The handler takes only records emitted
inside a flow or task run: the others have no run to belong to, and Prefect would warn about each.
It ships what the loggers emit (warnings and above: their level follows the root logger's), so the
console's output does not change.

`bookkeeping_at_debug` (also called by `tasks.stage`) makes Prefect's `Finished in state Completed()`
of every task run and sub-flow run a DEBUG line, so the run's log is the stages' own lines.
"""

from __future__ import annotations

import copy
import logging

# The project's packages whose module loggers the UI should show.
SHIPPED = ("tasks", "flows", "crowdclust")


class _InsideARun(logging.Filter):
    """Pass a record only when a flow or task run is current (else the API has no run to file it under)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from prefect.context import FlowRunContext, TaskRunContext

        return FlowRunContext.get() is not None or TaskRunContext.get() is not None


# Prefect's line for the end of every task run and flow run, e.g. `Finished in state Completed()`,
# `Finished in state Cached(type=COMPLETED)`, `Finished in state Failed('Task run encountered ...')`.
FINISHED = "Finished in state "
DONE = ("Completed(", "Cached(")  # the states whose line is bookkeeping (failures and crashes are not)


class _BookkeepingAtDebug(logging.Filter):
    """Prefect's `Finished in state Completed()` (or `Cached(...)`) of a task run or a sub-flow run
    is a DEBUG line: dropped unless its logger shows DEBUG (`PREFECT_LOGGING_LEVEL=DEBUG`).

    A catalogue run's log was about one third these lines, one per stage and sub-flow, among the
    poll lines and the estimate that Prefect's same loggers carry. The task runs' states are on the
    run's page in the UI. A failed, crashed or cancelled task or flow run keeps its line (a task's
    at ERROR, a flow's at INFO), and so does the end of the run the user started (a top-level flow
    run logs it with no flow run around it: the sub-flow's is logged inside its parent's).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        from prefect.context import FlowRunContext

        message = record.msg if isinstance(record.msg, str) else ""
        if record.levelno != logging.INFO or not message.startswith(FINISHED):
            return True
        if not message[len(FINISHED) :].startswith(DONE):
            return True
        if record.name == "prefect.flow_runs" and FlowRunContext.get() is None:  # the top-level run's end
            return True
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def bookkeeping_at_debug() -> None:
    """Prefect's flow and task run loggers log a task run's or a sub-flow run's completion at DEBUG
    (`_BookkeepingAtDebug`); idempotent."""
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(found, _BookkeepingAtDebug) for found in logger.filters):
            logger.addFilter(_BookkeepingAtDebug())


def root_run_of_a_subflow() -> str | None:
    """The top-level flow run's id when the current run is a sub-flow's (else None)."""
    from prefect import runtime

    current, root = runtime.flow_run.id, runtime.flow_run.root_flow_run_id
    return None if current is None or root is None or str(root) == str(current) else str(root)


def ship_library_logs() -> None:
    """Attach the API handlers (records inside a run only) to each logger of `SHIPPED`; idempotent.

    One files a record under its own run; the other files a copy under the top-level run when the
    record comes from a sub-flow, where the user who started the run reads (a rerun's `pool 12 was
    made with other settings; updating it: overlap 7 -> 8` was only in the labelling sub-flow's log).
    """
    from prefect.logging.handlers import APILogHandler

    class ToTheTopLevelRun(APILogHandler):
        """Files a copy of a sub-flow's record under the top-level flow run."""

        def emit(self, record: logging.LogRecord) -> None:
            root = root_run_of_a_subflow()
            if root is not None:
                copied = copy.copy(record)
                copied.flow_run_id, copied.task_run_id = root, None
                super().emit(copied)

    for name in SHIPPED:
        logger = logging.getLogger(name)
        if not any(isinstance(handler, APILogHandler) for handler in logger.handlers):
            for handler in (APILogHandler(), ToTheTopLevelRun()):
                handler.addFilter(_InsideARun())
                logger.addHandler(handler)
