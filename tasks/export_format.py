"""Toloka's assignment export (`get_assignments_df`): the column names and the array-cell parser.

One row per task of an assignment. `INPUT:`/`OUTPUT:`/`GOLDEN:` columns hold the task's input,
the worker's answer and the known solution; array fields arrive either as JSON text (`[...]`) or as
array_json without the brackets (`"a","b"`), so every reader parses them with `parse_array_cell`.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pandas as pd

import aggregation

IMAGES = "INPUT:images"
RESULT = "OUTPUT:result"
ANSWER = "OUTPUT:answer"
GOLDEN = "GOLDEN:result"
ASSIGNMENT = "ASSIGNMENT:assignment_id"
WORKER = "ASSIGNMENT:worker_id"
SUITE = "ASSIGNMENT:task_suite_id"
STATUS = "ASSIGNMENT:status"
LINK = "ASSIGNMENT:link"
STARTED = "ASSIGNMENT:started"

EXPORT_FIELDS = [LINK, ASSIGNMENT, SUITE, WORKER, STATUS, STARTED]  # besides INPUT/OUTPUT/GOLDEN


def parse_array_cell(cell: Any) -> list[Any]:
    """A JSON array cell, with or without its brackets."""
    text = str(cell).strip()
    return json.loads(text if text.startswith("[") else f"[{text}]")


def n_assignments(export: pd.DataFrame) -> int:
    """Accepted assignments in an export (one row per task; an empty export may have no columns)."""
    return int(export[ASSIGNMENT].nunique()) if len(export) else 0


def read_export_file(path: str | os.PathLike) -> pd.DataFrame:
    """An export TSV from disk, read as `crowdclust aggregate` reads it (`aggregation.load_export`).

    Every flow that reads an export back from a file goes through here: `pd.read_csv` with its
    defaults turned worker ids such as `0019` into numbers (the same worker as `19`), so a flow
    counted other workers, and clustered other answers, than the command on the same file.
    """
    try:
        return aggregation.load_export(path)
    except aggregation.ExportFormatError as exc:
        raise aggregation.ExportFormatError(f"{path}: {exc}") from None
