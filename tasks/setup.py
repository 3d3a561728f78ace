"""Create (or find) the Toloka objects of a run: projects, trainings, pools, the skill, their tasks.

Idempotent through the `RunRegistry`: every object carries the run key and is looked up before it
is created; tasks and suites are uploaded only where a pool lacks them, with operation ids derived
from the run key. A resumed run therefore creates nothing twice, even without its cached results.
"""

from __future__ import annotations

from prefect import get_run_logger

from tasks.budget import INTRUDER_POOLS
from tasks.params import TolokaTarget
from tasks.second_round import pool_name
from tasks.stage import stage_task
from tasks.stages import IntruderIds, LabellingIds
from tasks.toloka_api import Owned, RunRegistry, suites_of
from tasks.toloka_config import Placeholders, TolokaBundle

CODE = ("tasks.toloka_api", "tasks.toloka_config")
MAIN_POOL = "main-pool"


def ensure_trained_project(
    registry: RunRegistry, prefix: str, project: dict, training: dict, tasks: list[dict]
) -> tuple[str, str]:
    """A project with its training and the training's tasks: (project id, training id).

    `prefix` names the roles (`<prefix>project`, `<prefix>training`, `<prefix>training-tasks`).
    """
    project_id = registry.ensure_project(f"{prefix}project", project)
    training_id = registry.ensure_training(f"{prefix}training", project_id, training)
    registry.ensure_tasks(f"{prefix}training-tasks", training_id, tasks)
    return project_id, training_id


def setup_labelling(
    registry: RunRegistry,
    bundle: TolokaBundle,
    values: Placeholders,
    skill_name: str,
    main_pool_role: str = MAIN_POOL,
) -> LabellingIds:
    """Training + exam project, training with tasks, exam pool with suites, skill, main project + pool.

    `main_pool_role` names the main pool's tag: one pool per run in the pipeline, one pool per round
    (`main-pool-<round key>`) under a catalogue key, all other objects shared by the rounds.
    """
    exam_project, training = ensure_trained_project(
        registry, "exam-", bundle.exam_project, bundle.training, bundle.training_tasks
    )
    skill = registry.ensure_skill(skill_name)
    filled = bundle.filled(values.with_skill(skill))
    exam_pool = registry.ensure_pool("exam-pool", exam_project, filled.exam_pool, training)
    registry.ensure_suites("exam-suites", exam_pool, filled.exam_suites)
    main_project = registry.ensure_project("main-project", filled.main_project)
    main_pool = registry.ensure_pool(main_pool_role, main_project, filled.main_pool)
    return LabellingIds(exam_project, training, skill, exam_pool, main_project, main_pool)


def refresh_labelling(
    registry: RunRegistry,
    ids: LabellingIds,
    bundle: TolokaBundle,
    values: Placeholders,
    main_pool_role: str = MAIN_POOL,
) -> None:
    """Give the exam and main pools of `ids` the settings the config asks for now.

    `setup_labelling_task` is cached by its inputs: a run whose settings are back at an earlier run's
    (`hits.overlap` 3, then 2, then 3 under one key; a reward raised and put back) gets that earlier
    run's ids from the cache, and the pools kept the settings of the run in between (overlap 2 while
    the config said 3: fewer answers than asked; the raised reward paid on)."""
    filled = bundle.filled(values.with_skill(ids.skill))
    registry.refresh_pool(ids.exam_pool, "exam-pool", ids.exam_project, filled.exam_pool, ids.training)
    registry.refresh_pool(ids.main_pool, main_pool_role, ids.main_project, filled.main_pool)


def setup_intruders(
    registry: RunRegistry, bundle: TolokaBundle, values: Placeholders, round_key: str
) -> IntruderIds:
    """Intruders project, its training with tasks and its pool (gated by the main skill).

    The pool is tagged with `round_key` (a digest of the HITs): evaluating a different clustering
    under the same run key gets a fresh pool instead of mixing its HITs into a finished one.
    """
    filled = bundle.filled(values)
    project, training = ensure_trained_project(
        registry,
        "intruders-",
        filled.intruders_project,
        filled.intruders_training,
        filled.intruders_training_tasks,
    )
    pool = registry.ensure_pool(intruder_pool_role(round_key), project, filled.intruders_pool, training)
    return IntruderIds(project, training, pool)


def intruder_pool_role(round_key: str) -> str:
    """The tag role of the intruder pool of one evaluated clustering (`round_key`: its HITs' digest)."""
    return f"{INTRUDER_POOLS}{round_key}"


def refresh_intruders(
    registry: RunRegistry, ids: IntruderIds, bundle: TolokaBundle, values: Placeholders, round_key: str
) -> None:
    """Give the intruder pool of `ids` the settings the config asks for now, as `refresh_labelling`
    does for the labelling's pools: `setup-intruders` is cached by its inputs, and a run whose
    intruder settings were back at an earlier run's (`intruders.overlap` 3, then 2, then 3; a
    reward raised and put back) got that run's ids from the cache while the pool kept the settings
    of the run in between (overlap 2 while the config said 3; the raised reward paid on)."""
    filled = bundle.filled(values)
    role = intruder_pool_role(round_key)
    registry.refresh_pool(ids.pool, role, ids.project, filled.intruders_pool, ids.training)


def owned_intruders(ids: IntruderIds, round_key: str) -> list[Owned]:
    """The intruder ids with the role the run's tag shows on each."""
    return [
        Owned("project", ids.project, "intruders-project"),
        Owned("training", ids.training, "intruders-training"),
        Owned("pool", ids.pool, intruder_pool_role(round_key)),
    ]


@stage_task(name="setup-labelling", code=CODE, toloka=True)
def setup_labelling_task(
    target: TolokaTarget,
    run_key: str,
    bundle: TolokaBundle,
    values: Placeholders,
    skill_name: str,
    main_pool_role: str = MAIN_POOL,
) -> LabellingIds:
    """Prefect adapter of `setup_labelling` (cached: a resumed run makes no Toloka call here)."""
    ids = setup_labelling(RunRegistry.connect(target, run_key), bundle, values, skill_name, main_pool_role)
    get_run_logger().info("labelling objects: %s", ids.describe(pool_name(main_pool_role)))
    return ids


def owned_labelling(ids: LabellingIds, main_pool_role: str = MAIN_POOL) -> list[Owned]:
    """The labelling ids with the role the run's tag shows on each."""
    return [
        Owned("project", ids.exam_project, "exam-project"),
        Owned("training", ids.training, "exam-training"),
        Owned("skill", ids.skill, "skill"),
        Owned("pool", ids.exam_pool, "exam-pool"),
        Owned("project", ids.main_project, "main-project"),
        Owned("pool", ids.main_pool, main_pool_role),
    ]


@stage_task(name="upload-hits", code=CODE, toloka=True)
def upload_hits_task(
    target: TolokaTarget, run_key: str, pool_id: str, hits: list[list[str]], role: str = MAIN_POOL
) -> int:
    """Upload the HIT plan to the main pool of `role` (only the suites it does not hold yet)."""
    registry = RunRegistry.connect(target, run_key)
    count = registry.ensure_suites("main-suites", pool_id, suites_of(hits), exclusive=True)
    get_run_logger().info("%s %s holds the %s planned HITs", pool_name(role), pool_id, f"{count:,}")
    return count
