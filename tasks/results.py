"""Export the accepted assignments of a pool; the raw TSV is kept in the run folder.

The raw export is written before anything parses it, so a malformed row never loses answers that
were already paid for: fix the row (or the parser) and re-aggregate with `flows/aggregate.py`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import get_run_logger, task

from flows.params import TolokaTarget
from tasks.caching import toloka_cached
from tasks.connect import make_client

FIELDS = [
    "ASSIGNMENT:link",
    "ASSIGNMENT:assignment_id",
    "ASSIGNMENT:task_suite_id",
    "ASSIGNMENT:worker_id",
    "ASSIGNMENT:status",
    "ASSIGNMENT:started",
]


def export_accepted(client, pool_id: str) -> pd.DataFrame:
    """All APPROVED (accepted) assignments of the pool, one row per task (toloka-kit's TSV export)."""
    return client.get_assignments_df(pool_id=pool_id, status=["APPROVED"], field=FIELDS)


def n_assignments(export: pd.DataFrame) -> int:
    """Accepted assignments in an export (one row per task; an empty export may have no columns)."""
    return int(export["ASSIGNMENT:assignment_id"].nunique()) if len(export) else 0


def write_tsv(frame: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, sep="\t", index=False)
    return path


@task(name="export-results", **toloka_cached())
def export_task(target: TolokaTarget, pool_id: str, after: dict | None = None) -> pd.DataFrame:
    """Export accepted assignments. `after` (the wait result) orders it after the pool completed."""
    frame = export_accepted(make_client(target), pool_id)
    get_run_logger().info("pool %s: exported %d rows of accepted assignments", pool_id, len(frame))
    return frame
