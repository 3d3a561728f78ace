"""A pool's `mixer_config`: how tasks uploaded one by one are issued as task suites.

A pool filled with tasks (not suites) issues them in suites of `real_tasks_count` real tasks plus
`golden_tasks_count` golden tasks (known solutions, no hint) plus `training_tasks_count` training
tasks (known solutions and a hint, `message_on_unknown_solution`); the reward is paid per suite.
Without a mixer config, or with one real task and nothing else, each task is its own suite at once.

A training issues its tasks `training_tasks_in_task_suite_count` to a suite the same way.
Tasks of a mixing pool wait (`_pending`) until the pool opens, or are mixed at once when they are
added to an open pool; the last suite of a batch may hold fewer real tasks. Golden and training
tasks are reused across suites in a rotating order (each suite gets the next ones), as Toloka mixes
the same control tasks into many suites. A suite's overlap is the largest of its real tasks'.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from emulator.records import Doc

if TYPE_CHECKING:
    from emulator.core import Emulator

TASK_KEYS = ("input_values", "known_solutions", "message_on_unknown_solution")


def counts(pool: Doc) -> tuple[int, int, int] | None:
    """(real, golden, training) tasks per suite, or None when each task is issued alone.

    A training's tasks (all with known solutions) go `training_tasks_in_task_suite_count` to a
    suite: they count as the "real" part there."""
    if pool.get("_kind") == "training":
        per_suite = int(pool.get("training_tasks_in_task_suite_count") or 1)
        return (per_suite, 0, 0) if per_suite > 1 else None
    config = pool.get("mixer_config")
    if pool.get("_kind") != "pool" or not isinstance(config, dict):
        return None
    real = int(config.get("real_tasks_count") or 0)
    golden = int(config.get("golden_tasks_count") or 0)
    training = int(config.get("training_tasks_count") or 0)
    if real <= 1 and golden == 0 and training == 0:
        return None
    return max(real, 1), golden, training


def waits(pool: Doc, task: Doc) -> bool:
    """Does a new task of a mixing pool wait to be mixed? Real tasks of a pool, every training task;
    a pool's golden and training tasks are mixed into suites, never issued themselves."""
    return pool.get("_kind") == "training" or role(task) == "real"


def role(task: Doc) -> str:
    """`real`, `golden` or `training`: what a task of a pool is to the mixer and to analytics."""
    if not task.get("known_solutions"):
        return "real"
    return "training" if task.get("message_on_unknown_solution") else "golden"


def suite_task(task: Doc) -> Doc:
    """The copy of a task that a suite carries (what a worker is shown and answers)."""
    return {k: task[k] for k in ("id", *TASK_KEYS) if k in task}


def mix_pending(emu: Emulator, pool: Doc) -> int:
    """Issue a mixing pool's waiting real tasks as suites; returns how many suites were made."""
    per_suite = counts(pool)
    if per_suite is None:
        return 0
    data = emu.store.data["task"]
    tasks = [data[i] for i in emu.store.ids_in_pool("task", pool["id"])]
    pending = [t for t in tasks if t.get("_pending")]
    if not pending:
        return 0
    controls = {kind: [t for t in tasks if role(t) == kind] for kind in ("golden", "training")}
    real, golden, training = per_suite
    made = 0
    for start in range(0, len(pending), real):
        chosen = pending[start : start + real]
        extra = _rotate(pool, "golden", controls["golden"], golden) + _rotate(
            pool, "training", controls["training"], training
        )
        suite = _issue(emu, pool, chosen, extra)
        for task in chosen:
            task.pop("_pending", None)
            task["_suite"] = suite["id"]
            emu.store.touch("task", task["id"])
        made += 1
    emu.store.touch("pool", pool["id"])
    return made


def _rotate(pool: Doc, kind: str, tasks: list[Doc], n: int) -> list[Doc]:
    """The next `n` control tasks of a kind, in turn (a pool-wide cursor, so suites differ)."""
    if not tasks or n <= 0:
        return []
    cursor = pool.setdefault("_mix_cursor", {}).get(kind, 0)
    picked = [tasks[(cursor + k) % len(tasks)] for k in range(min(n, len(tasks)))]
    pool["_mix_cursor"][kind] = cursor + len(picked)
    return picked


def _issue(emu: Emulator, pool: Doc, real: list[Doc], extra: list[Doc]) -> Doc:
    overlaps = [t.get("_overlap") for t in real]
    overlap = None if any(o is None for o in overlaps) else max(overlaps)
    suite = {
        "id": emu.long_id(),
        "pool_id": pool["id"],
        "tasks": [suite_task(t) for t in [*real, *extra]],
        "created": emu.stamp(),
        "_hidden": True,
        "_overlap": overlap,
        "_taken": 0,
        "_done": 0,
        "_workers": [],
    }
    emu.store.put("suite", suite["id"], suite)
    emu.crowd.suite_added(pool, suite)
    return suite


def real_tasks(emu: Emulator, pool: Doc) -> int:
    """Analytics `real_tasks_count`: tasks that are neither golden nor training, counted once."""
    seen: dict[str, Any] = {}
    suites = emu.store.data["suite"]
    for suite_id in emu.store.ids_in_pool("suite", pool["id"]):
        for task in suites[suite_id]["tasks"]:
            seen.setdefault(task["id"], task)
    for task_id in emu.store.ids_in_pool("task", pool["id"]):
        seen.setdefault(task_id, emu.store.data["task"][task_id])
    return sum(1 for task in seen.values() if role(task) == "real")
