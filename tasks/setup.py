"""Create (or find) the Toloka objects of a run: projects, trainings, pools, the skill, their tasks.

Idempotence: every object carries the run key, `crowdclust:<run-key>:<role>`, in
`private_comment` (projects, pools, skills) or `metadata` (trainings, which have no comment), and
is looked up before it is created (`find_or_create`). Tasks and suites go through `tasks.upload`,
which sends only what a pool does not hold yet, with deterministic operation ids.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from prefect import get_run_logger, task

from flows.params import TolokaTarget
from tasks import configs, upload
from tasks.caching import TRANSIENT, source_version, toloka_cached
from tasks.connect import make_client
from tasks.upload import ensure_suites, ensure_tasks

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from toloka.client import Pool, Project, Training

POOL_LIFETIME = timedelta(days=7)
log = logging.getLogger(__name__)


def tag(run_key: str, role: str) -> str:
    """The marker stored on every object this run creates."""
    return f"crowdclust:{run_key}:{role}"


def _has_tag(obj: Any, marker: str) -> bool:
    if getattr(obj, "private_comment", None) == marker:
        return True
    metadata = getattr(obj, "metadata", None) or {}
    return marker in (metadata.get("crowdclust") or [])


def find_or_create(
    find: Callable[[], str | None], create: Callable[[], Any], what: str, attempts: int = 4
) -> str:
    """Look up, create if absent; after a transient failure of the create, look up again first.

    `create` must not retry by itself (a POST retried after a lost response makes a second object):
    the setup tasks create through a client with `retries=0` and let this loop do the retrying.
    """
    for attempt in range(attempts):
        found = find()
        if found is not None:
            return found
        try:
            created = create()
        except TRANSIENT as exc:
            if attempt == attempts - 1:
                raise
            log.warning(
                "creating %s failed (%s); looking it up before trying again", what, type(exc).__name__
            )
            time.sleep(min(2.0**attempt, 8.0))
            continue
        log.info("created %s %s", what, created.id)
        return str(created.id)
    raise AssertionError("unreachable")


def _first_tagged(objects: Any, marker: str) -> str | None:
    return next((str(obj.id) for obj in objects if _has_tag(obj, marker)), None)


def ensure_project(client: Any, run_key: str, role: str, spec: dict[str, Any], creator: Any = None) -> str:
    marker = tag(run_key, role)
    project = Project.structure(spec)
    project.private_comment = marker
    return find_or_create(
        lambda: _first_tagged(client.get_projects(status="ACTIVE"), marker),
        lambda: (creator or client).create_project(project),
        f"project ({role})",
    )


def ensure_training(
    client: Any, run_key: str, role: str, project_id: str, spec: dict[str, Any], creator: Any = None
) -> str:
    marker = tag(run_key, role)
    training = Training.structure(spec)
    training.project_id = project_id
    training.metadata = {**(training.metadata or {}), "crowdclust": [marker]}
    return find_or_create(
        lambda: _first_tagged(client.get_trainings(project_id=project_id), marker),
        lambda: (creator or client).create_training(training),
        f"training ({role})",
    )


def run_skill_name(base_name: str, run_key: str) -> str:
    """The name of a run's skill: the base name with the run key appended (`find_skill` looks it up)."""
    return f"{base_name} [{run_key}]"


def find_skill(client: Any, run_key: str, base_name: str) -> str | None:
    """The id of the run's skill (`<base name> [<run key>]`), None when it was never created."""
    name = run_skill_name(base_name, run_key)
    return next((str(s.id) for s in client.get_skills(name=name) if s.name == name), None)


def ensure_skill(client: Any, run_key: str, base_name: str, creator: Any = None) -> str:
    marker = tag(run_key, "skill")
    return find_or_create(
        lambda: find_skill(client, run_key, base_name),
        lambda: (creator or client).create_skill(
            name=run_skill_name(base_name, run_key), private_comment=marker, hidden=True
        ),
        "skill",
    )


def ensure_pool(
    client: Any,
    run_key: str,
    role: str,
    project_id: str,
    spec: dict[str, Any],
    training_id: str | None = None,
    creator: Any = None,
) -> str:
    marker = tag(run_key, role)
    pool = Pool.structure(spec)
    pool.project_id = project_id
    pool.private_comment = marker
    pool.will_expire = datetime.utcnow() + POOL_LIFETIME
    if training_id is not None:
        if pool.quality_control is None or pool.quality_control.training_requirement is None:
            raise configs.TolokaConfigError(f"{role}: pool config needs quality_control.training_requirement")
        pool.quality_control.training_requirement.training_pool_id = training_id
    return find_or_create(
        lambda: _first_tagged(client.get_pools(project_id=project_id), marker),
        lambda: (creator or client).create_pool(pool),
        f"pool ({role})",
    )


def ensure_trained_project(
    client: Any, run_key: str, prefix: str, specs: tuple[Any, Any, Any], creator: Any = None
) -> tuple[str, str]:
    """A project with its training and the training's tasks: (project id, training id).

    `prefix` names the roles (`<prefix>project`, `<prefix>training`, `<prefix>training-tasks`).
    """
    project_spec, training_spec, task_specs = specs
    project = ensure_project(client, run_key, f"{prefix}project", project_spec, creator)
    training = ensure_training(client, run_key, f"{prefix}training", project, training_spec, creator)
    ensure_tasks(client, run_key, f"{prefix}training-tasks", training, task_specs)
    return project, training


def setup_labelling(
    client: Any,
    run_key: str,
    bundle: dict[str, Any],
    values: dict[str, Any],
    skill_name: str,
    creator: Any = None,
    main_pool_role: str = "main-pool",
) -> dict[str, str]:
    """Training + exam project, training with tasks, exam pool with suites, skill, main project + pool.

    `main_pool_role` names the main pool's tag: one pool per run in the pipeline, one pool per round
    (`main-pool-<round key>`) under a catalogue key, all other objects shared by the rounds.
    """
    c, ids = creator, {}
    specs = (bundle["exam_project"], bundle["training"], bundle["training_tasks"])
    ids["exam_project"], ids["training"] = ensure_trained_project(client, run_key, "exam-", specs, c)
    ids["skill"] = ensure_skill(client, run_key, skill_name, c)
    filled = configs.fill(bundle, {**values, "skill_id": ids["skill"]})
    ids["exam_pool"] = ensure_pool(
        client, run_key, "exam-pool", ids["exam_project"], filled["exam_pool"], ids["training"], c
    )
    ensure_suites(client, run_key, "exam-suites", ids["exam_pool"], filled["exam_suites"])
    ids["main_project"] = ensure_project(client, run_key, "main-project", filled["main_project"], c)
    ids["main_pool"] = ensure_pool(
        client, run_key, main_pool_role, ids["main_project"], filled["main_pool"], None, c
    )
    return ids


def setup_intruders(
    client: Any,
    run_key: str,
    bundle: dict[str, Any],
    values: dict[str, Any],
    round_key: str,
    creator: Any = None,
) -> dict[str, str]:
    """Intruders project, its training with tasks and its pool (gated by the main skill).

    The pool is tagged with `round_key` (a digest of the HITs): evaluating a different clustering
    under the same run key gets a fresh pool instead of mixing its HITs into a finished one.
    """
    filled, c, ids = configs.fill(bundle, values), creator, {}
    specs = (filled["intruders_project"], filled["intruders_training"], filled["intruders_training_tasks"])
    ids["project"], ids["training"] = ensure_trained_project(client, run_key, "intruders-", specs, c)
    pool_role = f"intruders-pool-{round_key}"
    ids["pool"] = ensure_pool(
        client, run_key, pool_role, ids["project"], filled["intruders_pool"], ids["training"], c
    )
    return ids


CODE_VERSION = source_version(configs, upload, sys.modules[__name__])


@task(name="setup-labelling", **toloka_cached())
def setup_labelling_task(
    target: TolokaTarget,
    run_key: str,
    bundle: dict[str, Any],
    values: dict[str, Any],
    skill_name: str,
    main_pool_role: str = "main-pool",
    code_version: str = CODE_VERSION,
) -> dict[str, str]:
    """Prefect adapter of `setup_labelling` (cached: a resumed run makes no Toloka call here)."""
    creator = make_client(target, retries=0)  # creates are retried by find_or_create, never blindly
    ids = setup_labelling(make_client(target), run_key, bundle, values, skill_name, creator, main_pool_role)
    get_run_logger().info("labelling objects: %s", ids)
    return ids


def close_run_pools(client: Any, run_key: str) -> list[str]:
    """Close every open pool and training carrying this run's key (failure/cancellation hooks)."""
    prefix = f"crowdclust:{run_key}:"
    closed = []
    for project in client.get_projects(status="ACTIVE"):
        if not str(project.private_comment or "").startswith(prefix):
            continue
        for pool in client.get_pools(project_id=project.id, status="OPEN"):
            client.close_pool(pool.id)
            closed.append(f"pool {pool.id}")
        for training in client.get_trainings(project_id=project.id, status="OPEN"):
            client.close_training(training.id)
            closed.append(f"training {training.id}")
    return closed
