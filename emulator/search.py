"""Search endpoints: exact and range filters, `sort`, `limit`, `id_gt` paging, as toloka-kit pages.

Numeric ids (projects, pools, trainings, skills, user skills) compare as numbers; long ids compare as
strings (they are fixed width, so string order is creation order). Timestamps compare as datetimes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from emulator.errors import validation
from emulator.util import parse_time

DEFAULT_LIMIT = 50
MAX_LIMIT = 100_000
RANGE_SUFFIXES = ("_lte", "_gte", "_lt", "_gt")
TIME_FIELDS = {
    "created",
    "submitted",
    "accepted",
    "rejected",
    "skipped",
    "expired",
    "last_started",
    "modified",
    "finished",
    "will_expire",
}
# Query parameters that are never filters.
NOT_FILTERS = {
    "sort",
    "limit",
    "operation_id",
    "async_mode",
    "allow_defaults",
    "open_pool",
    "skip_invalid_items",
}


# Per collection (the emulator's store kind): the fields toloka-kit's `*SortItems` allow, and the
# statuses a `status` filter may name. A search outside these is a 400, as on Toloka.
SORT_FIELDS = {
    "project": {"id", "created", "public_name", "private_comment"},
    "pool": {"id", "created", "last_started"},
    "skill": {"id", "created"},
    "task": {"id", "created"},
    "suite": {"id", "created"},
    "assignment": {"id", "created", "submitted", "accepted", "rejected", "skipped", "expired"},
    "user_skill": {"id", "created", "modified"},
    "user_restriction": {"id", "created"},
    "user_bonus": {"id", "created"},
    "operation": {"id", "submitted", "finished"},
    "aggregate": {"task_id"},
}
STATUSES = {
    "project": {"ACTIVE", "ARCHIVED"},
    "pool": {"OPEN", "CLOSED", "ARCHIVED", "LOCKED"},
    "assignment": {"ACTIVE", "SUBMITTED", "ACCEPTED", "REJECTED", "SKIPPED", "EXPIRED"},
    "operation": {"PENDING", "RUNNING", "SUCCESS", "FAIL"},
}
ID_BOUNDS = ("id_gt", "id_gte", "id_lt", "id_lte")
# The largest page a collection answers (toloka-kit's `find_*` docs); tasks, task suites, assignments
# and aggregated solutions go up to MAX_LIMIT.
MAX_LIMITS = {
    "project": 300,
    "pool": 300,  # pools and trainings
    "skill": 100,
    "operation": 500,
    "user_bonus": 300,
    "user_restriction": 500,
    "user_skill": 1000,
}
# Exact filters that take comma-joined lists (toloka-kit joins a list of statuses with `,`). Any other
# exact filter matches the whole value: a skill's `name` may itself contain a comma.
LIST_FILTERS = {"status"}
# Filters on integers (`overlap=3`, `overlap_gte=2`): compared as numbers, a bound must be one.
NUMBER_FIELDS = {"overlap"}


def check_params(kind: str, params: dict[str, str], numeric_ids: bool) -> None:
    """400 for a `sort`, `status` or id bound this collection cannot have (Toloka refuses them;
    silently ignoring them would make a client's typo look like an empty or unordered result)."""
    errors = {}
    allowed = SORT_FIELDS.get(kind)
    sort = [s.lstrip("-") for s in params.get("sort", "id").split(",") if s]
    bad = [s for s in sort if allowed is not None and s not in allowed]
    if bad:
        errors["sort"] = ("INVALID_VALUE", f"cannot sort by {bad[0]}; sort by {', '.join(sorted(allowed))}")
    statuses = STATUSES.get(kind)
    if statuses is not None and "status" in params:
        unknown = [v for v in params["status"].split(",") if v not in statuses]
        if unknown:
            errors["status"] = ("INVALID_VALUE", f"unknown status {unknown[0]}")
    most = MAX_LIMITS.get(kind)
    if most is not None and params.get("limit", "").isdigit() and not 1 <= int(params["limit"]) <= most:
        errors["limit"] = ("VALUE_OUT_OF_BOUNDS", f"limit must be from 1 to {most} in this collection")
    for name in ID_BOUNDS:
        value = params.get(name)
        if value is not None and not _valid_id(value, numeric_ids):
            errors[name] = ("INVALID_FORMAT", f"{name} must be an id of this collection")
    if errors:
        raise validation(errors)


def _valid_id(value: str, numeric: bool) -> bool:
    if numeric:
        return value.isdigit()
    return bool(value) and all(part and all(c in HEX_DIGITS for c in part) for part in value.split("--"))


HEX_DIGITS = frozenset("0123456789abcdefABCDEF-")


def id_key(value: Any, numeric: bool) -> Any:
    if numeric:
        try:
            return (0, int(value), "")
        except (TypeError, ValueError):
            return (1, 0, str(value))
    return str(value)


def _field_key(field: str, value: Any, numeric: bool) -> Any:
    if field == "id":
        return id_key(value, numeric)
    if field in TIME_FIELDS:
        return parse_time(value) if value else datetime.min
    if field in NUMBER_FIELDS and isinstance(value, str):
        return float(value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return float(value)
    return "" if value is None else str(value)


def search(
    docs: Iterable[dict[str, Any]],
    params: dict[str, str],
    *,
    numeric_ids: bool,
    presorted: bool = False,
    computed: dict[str, Callable[[dict[str, Any]], Any]] | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """Filter, sort and page documents; returns (page, has_more).

    `computed` gives the value of a field the stored document keeps elsewhere (a task's overlap)."""
    computed = computed or {}

    def value_of(doc: dict[str, Any], field: str) -> Any:
        return computed[field](doc) if field in computed else doc.get(field)

    try:
        limit = int(params.get("limit", DEFAULT_LIMIT))
    except ValueError:
        raise validation({"limit": ("INVALID_FORMAT", "limit must be an integer")}) from None
    if not 1 <= limit <= MAX_LIMIT:
        raise validation({"limit": ("VALUE_OUT_OF_BOUNDS", f"limit must be from 1 to {MAX_LIMIT}")})
    sort = [s for s in params.get("sort", "id").split(",") if s] or ["id"]
    exact: list[tuple[str, set[str]]] = []
    ranges: list[tuple[str, str, Any]] = []
    for name, raw in params.items():
        if name in NOT_FILTERS:
            continue
        suffix = next((s for s in RANGE_SUFFIXES if name.endswith(s)), None)
        if suffix:
            field = name[: -len(suffix)]
            try:
                bound = _field_key(field, raw, numeric_ids)
            except ValueError:
                what = "a number" if field in NUMBER_FIELDS else "a date and time like 2026-01-01T00:00:00"
                raise validation({name: ("INVALID_FORMAT", f"{name} must be {what}")}) from None
            ranges.append((field, suffix[1:], bound))
        else:
            exact.append((name, set(str(raw).split(",")) if name in LIST_FILTERS else {str(raw)}))

    def keep(doc: dict[str, Any]) -> bool:
        for field, wanted in exact:
            value = value_of(doc, field)
            text = str(value).lower() if isinstance(value, bool) else str(value)
            if text not in wanted:
                return False
        for field, op, bound in ranges:
            raw_value = value_of(doc, field)
            if raw_value is None:
                return False
            value = _field_key(field, raw_value, numeric_ids)
            if not (
                (op == "lt" and value < bound)
                or (op == "lte" and value <= bound)
                or (op == "gt" and value > bound)
                or (op == "gte" and value >= bound)
            ):
                return False
        return True

    if sort == ["id"] and presorted:
        page = []
        for doc in docs:
            if keep(doc):
                page.append(doc)
                if len(page) > limit:
                    break
    else:
        page = [doc for doc in docs if keep(doc)]
        # Ties keep the order of `docs` (creation order), reversed under a descending time field:
        # creation times on Toloka increase strictly, simulated ones repeat (speed 0, or one
        # millisecond), and `sort=-created&limit=1` must still answer the newest object.
        if sort[0].startswith("-") and sort[0].lstrip("-") in TIME_FIELDS:
            page.reverse()
        for field in reversed(sort):
            name = field.lstrip("-")
            page.sort(
                key=lambda d, n=name: _field_key(n, d.get(n), numeric_ids), reverse=field.startswith("-")
            )
    return page[:limit], len(page) > limit
