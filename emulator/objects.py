"""Creating tasks and task suites (validation, overlap defaults) and computing pool analytics."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from emulator import mixer
from emulator.errors import field_errors
from emulator.records import Doc, strip_read_only
from emulator.validate import input_values_errors, known_solutions_errors

if TYPE_CHECKING:
    from emulator.core import Emulator

TASK_KEYS = ("input_values", "known_solutions", "message_on_unknown_solution")


def item_index(pos: int, item: Any) -> str:
    """The key of a batch item in results, errors and operation logs: its `__item_idx`, else its position."""
    return str(item.get("__item_idx", pos)) if isinstance(item, dict) else str(pos)


def create_items(
    emu: Emulator, kind: str, items: list[Any], params: dict[str, str]
) -> tuple[dict[str, Doc], dict[str, Any]]:
    """Validate and create tasks (`kind="task"`) or suites (`kind="suite"`).

    Returns `({item index: document}, {item index: field errors})`. Unless `skip_invalid_items=true`,
    one invalid item means nothing is created (as on Toloka).
    """
    errors: dict[str, Any] = {}
    valid: list[tuple[str, dict[str, Any], Doc]] = []
    allow_defaults = params.get("allow_defaults", "false").lower() == "true"
    for pos, item in enumerate(items):
        idx = item_index(pos, item)
        problems = _validate(emu, kind, item, allow_defaults)
        if problems:
            errors[idx] = field_errors(problems)
        else:
            valid.append((idx, item, emu.store.data["pool"][str(item["pool_id"])]))
    if errors and params.get("skip_invalid_items", "false").lower() != "true":
        return {}, errors
    created = {idx: _create(emu, kind, item, pool) for idx, item, pool in valid}
    for pool_id in sorted({str(item["pool_id"]) for _, item, _ in valid}):
        pool = emu.store.data["pool"][pool_id]
        if pool["status"] == "OPEN":
            mixer.mix_pending(emu, pool)  # tasks added to an open mixing pool are issued at once
    if params.get("open_pool", "false").lower() == "true":
        for pool_id in {str(item["pool_id"]) for _, item, _ in valid}:
            pool = emu.store.data["pool"][pool_id]
            if pool["status"] != "OPEN":
                emu.set_pool_status(pool, "OPEN")
    return created, errors


def _validate(emu: Emulator, kind: str, item: Any, allow_defaults: bool) -> dict[str, tuple[str, str]]:
    if not isinstance(item, dict):
        return {"": ("INVALID_FORMAT", "expected a JSON object")}
    pool_id = item.get("pool_id")
    if pool_id is None:
        return {"pool_id": ("VALUE_REQUIRED", "pool_id is required")}
    pool = emu.store.get("pool", str(pool_id))
    if pool is None:
        return {"pool_id": ("DOES_NOT_EXIST", f"pool {pool_id} does not exist")}
    if pool["status"] == "ARCHIVED":
        return {"pool_id": ("INAPPROPRIATE_STATUS", f"pool {pool_id} is archived")}
    project = emu.store.get("project", str(pool["project_id"])) or {}
    input_spec = (project.get("task_spec") or {}).get("input_spec") or {}
    output_spec = emu.output_spec(pool["id"])
    tasks = [item] if kind == "task" else item.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        return {"tasks": ("VALUE_REQUIRED", "a task suite needs a non-empty list of tasks")}
    problems: dict[str, tuple[str, str]] = {}
    for pos, task in enumerate(tasks):
        prefix = "" if kind == "task" else f"tasks.{pos}."
        if not isinstance(task, dict):
            problems[prefix.rstrip(".") or "body"] = ("INVALID_FORMAT", "a task must be a JSON object")
            continue
        solutions = task.get("known_solutions")
        problems |= known_solutions_errors(solutions, output_spec, f"{prefix}known_solutions")
        values = task.get("input_values")
        if not isinstance(values, dict):
            problems[f"{prefix}input_values"] = ("VALUE_REQUIRED", "input_values is required")
            continue
        problems |= input_values_errors(values, input_spec, f"{prefix}input_values")
        if pool.get("_kind") == "training" and not solutions:
            problems[f"{prefix}known_solutions"] = ("VALUE_REQUIRED", "a training task needs known_solutions")
    overlap = item.get("overlap")
    if overlap is not None and (not isinstance(overlap, int) or overlap < 1):
        problems["overlap"] = ("INVALID_VALUE", "overlap must be a positive integer")
    elif (
        overlap is None
        and not allow_defaults
        and not item.get("infinite_overlap")
        and pool.get("_kind") != "training"
    ):
        problems["overlap"] = (
            "VALUE_REQUIRED",
            "overlap is required unless allow_defaults=true (then the pool's default overlap applies)",
        )
    return problems


def _overlap(kind: str, item: dict[str, Any], pool: Doc) -> int | None:
    if pool.get("_kind") == "training" or item.get("infinite_overlap"):
        return None
    if item.get("overlap") is not None:
        return int(item["overlap"])
    defaults = pool.get("defaults") or {}
    default = defaults.get(
        "default_overlap_for_new_tasks" if kind == "task" else "default_overlap_for_new_task_suites"
    )
    return int(default) if default else 1


def _create(emu: Emulator, kind: str, item: dict[str, Any], pool: Doc) -> Doc:
    overlap = _overlap(kind, item, pool)
    clean = strip_read_only(item)
    stamp = emu.stamp()
    if kind == "task":
        task = clean | {"id": emu.long_id(), "pool_id": pool["id"], "created": stamp}
        task.pop("overlap", None)
        task.pop("infinite_overlap", None)
        task["_overlap"] = overlap
        emu.store.put("task", task["id"], task)
        if mixer.counts(pool) is not None:
            # The pool's mixer issues it in a suite with others (`mixer.mix_pending`).
            task["_pending"] = mixer.waits(pool, task)
            return task
        # Without a mixer every task is issued as its own (hidden) suite.
        suite_tasks = [mixer.suite_task(task)]
        suite = {"pool_id": pool["id"], "tasks": suite_tasks, "_hidden": True}
        result = task
    else:
        suite_tasks = [
            {"id": emu.long_id(), **{k: t[k] for k in TASK_KEYS if k in t}} for t in clean.get("tasks", [])
        ]
        suite = {k: v for k, v in clean.items() if k not in ("tasks", "overlap", "infinite_overlap")}
        suite |= {"pool_id": pool["id"], "tasks": suite_tasks, "mixed": bool(clean.get("mixed", False))}
        suite.setdefault("automerged", False)
        result = suite
    suite |= {
        "id": emu.long_id(),
        "created": stamp,
        "_overlap": overlap,
        "_taken": 0,
        "_done": 0,
        "_workers": [],
    }
    emu.store.put("suite", suite["id"], suite)
    if kind == "task":
        task["_suite"] = suite["id"]
    emu.crowd.suite_added(pool, suite)
    return result


def analytics_value(emu: Emulator, pool: Doc, name: str, interval_hours: float | None = None) -> Any:
    """One pool metric as Toloka's analytics answers it (`completion_percentage` is an object);
    `interval_hours` is the window of `active_workers_by_filter_count`."""
    stats = pool["_stats"]
    if name == "completion_percentage":
        total, done = stats["total"], stats["done"]
        return {"value": 100 if total and done >= total else (int(100 * done / total) if total else 0)}
    if name == "estimated_assignments_count":
        return stats["total"]
    if name == "real_tasks_count":
        return mixer.real_tasks(emu, pool)
    if name == "active_workers_by_filter_count":
        return emu.crowd.count_admitted(pool, interval_hours)
    # The rest count the pool's assignments.
    data = emu.store.data["assignment"]
    assignments = [data[i] for i in emu.store.ids_in_pool("assignment", pool["id"])]
    by_status = Counter(a["status"] for a in assignments)
    submitted = [a for a in assignments if a["status"] in ("SUBMITTED", "ACCEPTED", "REJECTED")]
    if name == "submitted_assignments_count":
        return len(submitted)
    if name in ("skipped_assignments_count", "rejected_assignments_count"):
        return by_status[name.split("_")[0].upper()]
    if name == "approved_assignments_count":
        return by_status["ACCEPTED"]
    if name == "avg_submit_assignment_millis":
        spans = [a["_duration"] for a in submitted if "_duration" in a]
        return int(1000 * sum(spans) / len(spans)) if spans else 0
    if name == "spent_budget":
        # What was paid, each assignment at the price fixed when it was accepted.
        return round(sum(a.get("_cost", 0.0) for a in assignments if a["status"] == "ACCEPTED"), 6)
    if name == "unique_workers_count":
        return len({a["user_id"] for a in assignments})
    if name == "unique_submitters_count":
        return len({a["user_id"] for a in submitted})
    return 0
