"""Export the accepted assignments of a pool (toloka-kit's TSV export, one row per task).

The flow writes the raw export into the run folder before anything parses it, so a malformed row
never loses answers that were already paid for: fix the row (or the parser) and re-aggregate with
`flows/aggregate.py`.
"""

from __future__ import annotations

import httpx
import pandas as pd
from prefect import get_run_logger

from tasks.export_format import EXPORT_FIELDS, SUITE
from tasks.params import TolokaTarget
from tasks.stage import stage_task
from tasks.stages import LabellingWait, PoolStats
from tasks.toloka_api import DEFAULT_TIMEOUT, TolokaClient, make_client, pool_stats

EXPORT_READ_SECONDS = 120.0
"""How long the export may go without a byte. A platform may prepare the file before it sends any
of it: the emulator did, and a pool of 90,000 answers on a busy machine took 101 s to its first byte
(3.5 s idle), past the 10 s every other request waits, so a 100,000-image run's export failed on
each of its tries."""


def export_accepted(client: TolokaClient, pool_id: str) -> pd.DataFrame:
    """All APPROVED (accepted) assignments of the pool."""
    return client.get_assignments_df(pool_id=pool_id, status=["APPROVED"], field=EXPORT_FIELDS)


def unanswered_hits(export: pd.DataFrame, planned: int, pool_id: str) -> str | None:
    """A warning when the export answers fewer HITs than the plan has, else None.

    The clusters are made from what was answered: a run whose new HITs were never answered
    reported the new plan's coverage with the old clusters, and nothing said a third of the plan
    had no answer.
    """
    answered = int(export[SUITE].nunique()) if SUITE in export.columns else 0
    if answered >= planned:
        return None
    return (
        f"pool {pool_id}: {planned - answered:,} of the plan's {planned:,} HITs have no accepted answer; "
        f"the clusters are made from the other {answered:,}"
    )


@stage_task(name="pool-now", toloka=True, cache=False)
def pool_now_task(target: TolokaTarget, pool_id: str) -> PoolStats:
    """Never cached: the pool's analytics now, to key an export made without a wait (see `export_task`)."""
    return pool_stats(make_client(target), pool_id)


@stage_task(name="export-results", code=("tasks.export_format", "tasks.toloka_api"), toloka=True)
def export_task(
    target: TolokaTarget, pool_id: str, after: LabellingWait | PoolStats | None = None
) -> pd.DataFrame:
    """Export accepted assignments.

    `after` is the wait's result (it orders the export after the pool completed) or, for a pool
    exported without waiting, its analytics just before (`pool_now_task`). Either is part of the
    cache key, so the export of a pool that is still filling is made again once it holds more
    answers instead of being served from the cache as it was the first time.
    """
    frame = export_accepted(
        make_client(target, timeout=httpx.Timeout(DEFAULT_TIMEOUT, read=EXPORT_READ_SECONDS)), pool_id
    )
    get_run_logger().info("pool %s: exported %s rows of accepted assignments", pool_id, f"{len(frame):,}")
    return frame
