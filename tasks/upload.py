"""Upload tasks and task suites idempotently: only what the pool does not hold yet.

Before uploading, the pool's suites (or a training's tasks) are listed and compared, as a multiset
of their input values, with what should be there; only the difference is sent. The batch carries an
`operation_id` derived (uuid5) from the run key, the role and the batch content, so a POST retried
after a lost response is recognised by Toloka (409 OPERATION_ALREADY_EXISTS, then the client reads
the finished operation) instead of creating the suites twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
import warnings
from collections import Counter
from typing import Any

from prefect import get_run_logger, task

from flows.params import TolokaTarget
from tasks.caching import toloka_cached
from tasks.connect import make_client

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from toloka.client import Task, TaskSuite
    from toloka.client.task import CreateTasksParameters
    from toloka.client.task_suite import TaskSuitesCreateRequestParameters

NAMESPACE = uuid.UUID("6f1d2a52-8f0e-4f57-a0a4-1f0c2b7e9d31")
log = logging.getLogger(__name__)


def operation_id(run_key: str, role: str, payload: Any) -> uuid.UUID:
    """Deterministic operation id: same run, same role, same batch -> same id."""
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
    return uuid.uuid5(NAMESPACE, f"{run_key}:{role}:{digest}")


def _content_key(tasks: list[Any]) -> str:
    return json.dumps(
        [t.input_values if hasattr(t, "input_values") else t["input_values"] for t in tasks], sort_keys=True
    )


def suites_of(image_lists: list[list[str]]) -> list[dict[str, Any]]:
    """Task-suite JSON for HITs given as image lists (one task per suite, overlap from the pool)."""
    return [{"tasks": [{"input_values": {"images": images}}]} for images in image_lists]


def _missing(have: list[str], wanted: list[dict[str, Any]], key: Any) -> list[dict[str, Any]]:
    """Multiset difference: the wanted items the pool does not hold yet (repeated items count)."""
    stock = Counter(have)
    missing = []
    for item in wanted:
        if stock[key(item)] > 0:
            stock[key(item)] -= 1
        else:
            missing.append(item)
    return missing


def _structured(cls: Any, specs: list[dict[str, Any]], pool_id: str) -> list[Any]:
    objects = []
    for spec in specs:
        obj = cls.structure({k: v for k, v in spec.items() if k != "allow_defaults"})
        obj.pool_id = pool_id
        objects.append(obj)
    return objects


def ensure_suites(client: Any, run_key: str, role: str, pool_id: str, suites: list[dict[str, Any]]) -> int:
    """Upload the suites the pool does not hold yet; returns how many the pool holds afterwards."""
    have = [_content_key(s.tasks) for s in client.get_task_suites(pool_id=pool_id)]
    missing = _missing(have, suites, lambda suite: _content_key(suite["tasks"]))
    if missing:
        params = TaskSuitesCreateRequestParameters(
            operation_id=operation_id(run_key, role, missing), allow_defaults=True, async_mode=True
        )
        result = client.create_task_suites(_structured(TaskSuite, missing, pool_id), params)
        if result.validation_errors:
            raise ValueError(
                f"{role}: Toloka rejected {len(result.validation_errors)} suites: "
                f"{dict(list(result.validation_errors.items())[:3])}"
            )
        log.info("uploaded %d suites to pool %s (%s)", len(missing), pool_id, role)
    return len(suites)


def ensure_tasks(client: Any, run_key: str, role: str, pool_id: str, tasks: list[dict[str, Any]]) -> int:
    """Same as `ensure_suites` for single tasks (training tasks with known solutions)."""
    have = [_content_key([t]) for t in client.get_tasks(pool_id=pool_id)]
    missing = _missing(have, tasks, lambda spec: _content_key([spec]))
    if missing:
        params = CreateTasksParameters(
            operation_id=operation_id(run_key, role, missing), allow_defaults=True, async_mode=True
        )
        client.create_tasks(_structured(Task, missing, pool_id), params)
        log.info("uploaded %d tasks to %s (%s)", len(missing), pool_id, role)
    return len(tasks)


@task(name="upload-hits", **toloka_cached())
def upload_hits_task(target: TolokaTarget, run_key: str, pool_id: str, hits: list[list[str]]) -> int:
    """Upload the HIT plan to the main pool (only the suites it does not hold yet)."""
    count = ensure_suites(make_client(target), run_key, "main-suites", pool_id, suites_of(hits))
    get_run_logger().info("main pool %s holds the %d planned HITs", pool_id, count)
    return count
