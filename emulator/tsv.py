"""`GET /api/new/requester/pools/{id}/assignments.tsv`: the export `get_assignments_df` parses.

One row per task of each matching assignment; columns `INPUT:*`, `OUTPUT:*`, `GOLDEN:*` (always, empty
without control tasks), `HINT:text`, `HINT:default_language`, then the requested `ASSIGNMENT:*` fields.
`array_*` values are JSON elements joined by `,` without brackets, `json` values are JSON text; cells
are CSV-quoted (a cell starting with `"` would otherwise be mangled by pandas). The header is always
written, because an empty body makes `pd.read_csv` fail. Status `APPROVED` is the JSON API's `ACCEPTED`.
`excludeBanned=true` leaves out the workers banned from the pool (user restrictions covering it).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from emulator.errors import validation
from emulator.records import Doc
from emulator.util import parse_time

if TYPE_CHECKING:
    from emulator.core import Emulator

DEFAULT_FIELDS = (
    "ASSIGNMENT:link,ASSIGNMENT:assignment_id,ASSIGNMENT:worker_id,ASSIGNMENT:status,ASSIGNMENT:started"
)
TSV_TO_API = {"APPROVED": "ACCEPTED"}
API_TO_TSV = {"ACCEPTED": "APPROVED"}
ASSIGNMENT_FIELDS = {
    "assignment_id": "id",
    "worker_id": "user_id",
    "task_suite_id": "task_suite_id",
    "started": "created",
    "submitted": "submitted",
    "accepted": "accepted",
    "rejected": "rejected",
    "skipped": "skipped",
    "expired": "expired",
    "reward": "reward",
}


def encode(value: Any, kind: str) -> str:
    """A value as a TSV cell for a spec field type."""
    if value is None:
        return ""
    if kind.startswith("array_") and isinstance(value, list):
        return ",".join(json.dumps(v, ensure_ascii=False, separators=(",", ":")) for v in value)
    if kind == "json" or isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _time_param(params: dict[str, str], name: str) -> datetime | None:
    if not params.get(name):
        return None
    try:
        return parse_time(params[name])
    except ValueError:
        raise validation({name: ("INVALID_FORMAT", f"{name} must be a date and time")}) from None


ROWS_PER_CHUNK = 2_000
"""Assignments written per chunk of the streamed export, each under the store's lock once."""


def export(emu: Emulator, pool: Doc, params: dict[str, str]) -> Iterator[str]:
    """The export as chunks of text: the header and the assignments matching `params` at this instant.

    Checked at once (a bad parameter is an error before any byte is sent), then written
    `ROWS_PER_CHUNK` assignments at a time, each chunk under the store's lock, so the body flows as it
    is written, as Toloka's does, and the crowd and other requests go on in between. Written whole
    first, a pool of 90,000 answers sent its first byte after 3.5 s on an idle machine and 101 s on a
    busy one (load 12): past toloka-kit's 10 s read timeout, so a 100,000-image run's export failed
    on all four of its tries.
    """
    project = emu.store.get("project", str(pool["project_id"])) or {}
    spec = project.get("task_spec") or {}
    inputs = spec.get("input_spec") or {}
    outputs = spec.get("output_spec") or {}
    statuses = {TSV_TO_API.get(s, s) for s in params.get("status", "APPROVED").split(",") if s}
    fields = [f for f in params.get("field", DEFAULT_FIELDS).split(",") if f.startswith("ASSIGNMENT:")]
    start_from, start_to = _time_param(params, "startTimeFrom"), _time_param(params, "startTimeTo")
    # `get_assignments_df(exclude_banned=True)`: leave out the answers of workers banned from the pool
    # now (a restriction on it, its project or all projects), whatever the assignment's status.
    exclude_banned = params.get("excludeBanned", "").lower() == "true"
    header = (
        [f"INPUT:{n}" for n in inputs]
        + [f"OUTPUT:{n}" for n in outputs]
        + [f"GOLDEN:{n}" for n in outputs]
        + ["HINT:text", "HINT:default_language"]
        + fields
    )
    ids = list(emu.store.ids_in_pool("assignment", pool["id"]))

    def rows(chunk: list[str]) -> str:
        buffer = io.StringIO()
        writer = _writer(buffer)
        data, suites = emu.store.data["assignment"], emu.store.data["suite"]
        for aid in chunk:
            a = data[aid]
            if a["status"] not in statuses:
                continue
            started = parse_time(a["created"])
            if (start_from and started < start_from) or (start_to and started > start_to):
                continue
            if exclude_banned and emu.crowd.banned(a["user_id"], pool):
                continue
            suite_tasks = suites[a["task_suite_id"]]["tasks"]
            solutions = a.get("solutions") or []
            tail = [_assignment_cell(pool, a, f) for f in fields]
            for pos, task in enumerate(suite_tasks):
                values = task.get("input_values") or {}
                answer = solutions[pos]["output_values"] if pos < len(solutions) else {}
                known = (task.get("known_solutions") or [{}])[0].get("output_values") or {}
                hint = task.get("message_on_unknown_solution")
                writer.writerow(
                    [encode(values.get(n), (s or {}).get("type", "string")) for n, s in inputs.items()]
                    + [encode(answer.get(n), (s or {}).get("type", "string")) for n, s in outputs.items()]
                    + [encode(known.get(n), (s or {}).get("type", "string")) for n, s in outputs.items()]
                    + [hint or "", "EN" if hint else ""]
                    + [
                        task["id"] if f == "ASSIGNMENT:task_id" else cell
                        for f, cell in zip(fields, tail, strict=True)
                    ]
                )
        return buffer.getvalue()

    def chunks() -> Iterator[str]:
        buffer = io.StringIO()
        _writer(buffer).writerow(header)
        yield buffer.getvalue()
        for at in range(0, len(ids), ROWS_PER_CHUNK):
            with emu.store.lock:
                text = rows(ids[at : at + ROWS_PER_CHUNK])
            if text:
                yield text

    return chunks()


def _writer(buffer: io.StringIO) -> Any:
    """Tab-separated, CSV-quoted where needed, one row a line (the format `get_assignments_df` reads)."""
    return csv.writer(buffer, delimiter="\t", quotechar='"', quoting=csv.QUOTE_MINIMAL, lineterminator="\n")


def _assignment_cell(pool: Doc, a: Doc, field: str) -> str:
    name = field.split(":", 1)[1]
    if name == "link":
        return f"https://toloka.emulator/task/{pool['id']}/{a['id']}"
    if name == "status":
        return API_TO_TSV.get(a["status"], a["status"])
    key = ASSIGNMENT_FIELDS.get(name)
    value = a.get(key) if key else None
    return "" if value is None else str(value)
