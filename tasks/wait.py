"""Open pools, poll until the main pool completes (gating exams every tick), close the helpers.

`wait_for_pool` is a plain function: the Prefect task adds the progress artifact and log lines.
The main pool closes itself when all its suites are done (`last_close_reason: COMPLETED`); the
training and exam pools are closed here at the end, as the seed does.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from prefect import get_run_logger, task

from flows.params import TolokaTarget
from tasks import exam
from tasks.caching import source_version, toloka_cached
from tasks.connect import make_client
from tasks.exam import GatingState, gate_exams

log = logging.getLogger(__name__)
CODE_VERSION = source_version(exam, sys.modules[__name__])

METRICS = (
    "completion_percentage",
    "submitted_assignments_count",
    "approved_assignments_count",
    "spent_budget",
)


class WaitTimeout(RuntimeError):
    """The pool did not complete in time (the run fails; its hooks close the pools)."""


class PoolStopped(RuntimeError):
    """The pool closed for a reason other than completion (balance, expiry, manual close)."""


@dataclass(frozen=True)
class Opening:
    """A pool or training to open before waiting and to close afterwards (unless it is the main pool)."""

    kind: str  # "pool" | "training"
    id: str


def _status(obj: Any) -> str:
    return str(getattr(obj.status, "value", obj.status))


def _reason(obj: Any) -> str:
    reason = getattr(obj, "last_close_reason", None)
    return str(getattr(reason, "value", reason)) if reason is not None else ""


def is_completed(pool: Any) -> bool:
    return _status(pool) == "CLOSED" and _reason(pool) == "COMPLETED"


def open_all(client: Any, openings: list[Opening]) -> None:
    """Open every pool/training that is not open yet and has not completed."""
    for item in openings:
        if item.kind == "training":
            if _status(client.get_training(item.id)) != "OPEN":
                client.open_training(item.id)
        else:
            pool = client.get_pool(item.id)
            if _status(pool) != "OPEN" and not is_completed(pool):
                client.open_pool(item.id)


def close_all(client: Any, openings: list[Opening]) -> None:
    """Close pools/trainings (no-op for the ones already closed)."""
    for item in openings:
        if item.kind == "training":
            if _status(client.get_training(item.id)) == "OPEN":
                client.close_training(item.id)
        elif _status(client.get_pool(item.id)) == "OPEN":
            client.close_pool(item.id)


def pool_stats(client: Any, pool_id: str) -> dict[str, float | None]:
    """Completion %, assignments and spend from Toloka's analytics (None for what it cannot answer)."""
    from toloka.client.analytics_request import (
        ApprovedAssignmentsCountPoolAnalytics,
        CompletionPercentagePoolAnalytics,
        SpentBudgetPoolAnalytics,
        SubmittedAssignmentsCountPoolAnalytics,
    )

    requests = [
        CompletionPercentagePoolAnalytics(subject_id=pool_id),
        SubmittedAssignmentsCountPoolAnalytics(subject_id=pool_id),
        ApprovedAssignmentsCountPoolAnalytics(subject_id=pool_id),
        SpentBudgetPoolAnalytics(subject_id=pool_id),
    ]
    stats: dict[str, float | None] = dict.fromkeys(METRICS)
    try:
        operation = client.wait_operation(client.get_analytics(requests), timeout=timedelta(seconds=30))
        for name, entry in zip(METRICS, (operation.details or {}).get("value", []), strict=False):
            result = entry.get("result")
            value = result.get("value") if isinstance(result, dict) else result
            stats[name] = float(value) if value is not None else None
    except Exception as exc:  # analytics are for humans; never fail the wait because of them
        log.debug("analytics unavailable for pool %s: %s", pool_id, exc)
    return stats


def wait_for_pool(
    client: Any,
    pool_id: str,
    *,
    period: float,
    timeout: float,
    on_tick: Callable[[], Any] | None = None,
    report: Callable[[dict[str, Any]], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Poll `pool_id` until it completes. `on_tick` runs every tick and once after completion."""
    started = time.monotonic()
    ticks = 0
    while True:
        pool = client.get_pool(pool_id)
        if on_tick is not None:
            on_tick()
        stats = {
            **pool_stats(client, pool_id),
            "ticks": ticks,
            "elapsed": round(time.monotonic() - started, 1),
        }
        if report is not None:
            report(stats)
        if _status(pool) != "OPEN":
            if not is_completed(pool):
                raise PoolStopped(
                    f"pool {pool_id} is {_status(pool)} (reason: {_reason(pool) or 'unknown'}) "
                    "before completion"
                )
            return {**stats, "completion_percentage": 100.0}
        if time.monotonic() - started > timeout:
            raise WaitTimeout(f"pool {pool_id} not complete after {timeout:.0f} s (wait.timeout_seconds)")
        ticks += 1
        sleep(period)


class ProgressReporter:
    """A Prefect progress artifact plus one log line per tick (completion %, assignments, spend)."""

    def __init__(self, key: str, what: str) -> None:
        from prefect.artifacts import create_progress_artifact

        self.what = what
        self.logger = get_run_logger()
        self.artifact_id = create_progress_artifact(progress=0.0, key=key, description=what)

    def __call__(self, stats: dict[str, Any]) -> None:
        from prefect.artifacts import update_progress_artifact

        done = stats.get("completion_percentage") or 0.0
        line = (
            f"{self.what}: {done:.0f}% complete, {_fmt(stats.get('submitted_assignments_count'))} submitted, "
            f"{_fmt(stats.get('approved_assignments_count'))} accepted, "
            f"${_fmt(stats.get('spent_budget'), '.2f')} spent ({stats.get('elapsed', 0):.0f} s)"
        )
        self.logger.info(line)
        update_progress_artifact(artifact_id=self.artifact_id, progress=float(done), description=line)


def _fmt(value: float | None, spec: str = ".0f") -> str:
    return "?" if value is None else format(value, spec)


def goldens_of(exam_suites: list[dict[str, Any]]) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Images -> golden groups of the exam suites (from the run's config bundle)."""
    from tasks.configs import golden_partition

    return dict(golden_partition(suite) for suite in exam_suites)


@task(name="wait-labelling", **toloka_cached())
def wait_labelling_task(
    target: TolokaTarget,
    ids: dict[str, str],
    exam_suites: list[dict[str, Any]],
    n_exams: int,
    period: float,
    timeout: float,
    code_version: str = CODE_VERSION,
) -> dict[str, Any]:
    """Open training, exam and main pool; poll with exam gating every tick; close training and exam."""
    client = make_client(target)
    goldens = goldens_of(exam_suites)
    state = GatingState.empty()
    totals: Counter[str] = Counter()
    helpers = [Opening("training", ids["training"]), Opening("pool", ids["exam_pool"])]
    open_all(client, [*helpers, Opening("pool", ids["main_pool"])])

    def gate() -> None:
        tick = gate_exams(client, ids["exam_pool"], ids["skill"], goldens, n_exams, state)
        totals.update({k: v for k, v in tick.items() if k != "workers"})

    report = ProgressReporter("main-pool-progress", f"main pool {ids['main_pool']}")
    result = wait_for_pool(
        client, ids["main_pool"], period=period, timeout=timeout, on_tick=gate, report=report
    )
    close_all(client, helpers)
    get_run_logger().info("exam gating: %s; %d workers hold a skill value", dict(totals), len(state.sent))
    spent = {"main": result.get("spent_budget"), "exam": pool_stats(client, ids["exam_pool"])["spent_budget"]}
    return {**result, "exams": dict(totals), "skills": dict(state.sent), "spent": spent}
