"""Export the accepted assignments of a pool (toloka-kit's TSV export, one row per task).

The flow writes the raw export into the run folder before anything parses it, so a malformed row
never loses answers that were already paid for: fix the row (or the parser) and re-aggregate with
`flows/aggregate.py`.
"""

from __future__ import annotations

import pandas as pd
from prefect import get_run_logger

from tasks.export_format import EXPORT_FIELDS
from tasks.params import TolokaTarget
from tasks.stage import stage_task
from tasks.stages import LabellingWait
from tasks.toloka_api import TolokaClient, make_client


def export_accepted(client: TolokaClient, pool_id: str) -> pd.DataFrame:
    """All APPROVED (accepted) assignments of the pool."""
    return client.get_assignments_df(pool_id=pool_id, status=["APPROVED"], field=EXPORT_FIELDS)


@stage_task(name="export-results", code=("tasks.export_format", "tasks.toloka_api"), toloka=True)
def export_task(target: TolokaTarget, pool_id: str, after: LabellingWait | None = None) -> pd.DataFrame:
    """Export accepted assignments. `after` (the wait's result) orders it after the pool completed."""
    frame = export_accepted(make_client(target), pool_id)
    get_run_logger().info("pool %s: exported %d rows of accepted assignments", pool_id, len(frame))
    return frame
