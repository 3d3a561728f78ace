"""Checks a run must pass before anything is planned, created on Toloka or paid, or used again.

Every problem here is a data or configuration error of the user's (the dataset, the HIT design,
the exam suites, the budget): `crowdclust run` reports it as one line and exits 2, and the flows
call the same checks so that a run started from the Prefect UI stops just as early. Cached
Toloka ids are checked on every run too (`verify_labelling_task`): they must still name this run's
objects before anything is uploaded to them or paid through them.
"""

from __future__ import annotations

from dataclasses import dataclass

from tasks import budget, dataset, setup
from tasks.hits import HitPlanError
from tasks.params import PipelineParams, TolokaTarget
from tasks.stage import stage_task
from tasks.stages import LabellingIds
from tasks.toloka_api import RunRegistry
from tasks.toloka_config import FILES, TolokaBundle, TolokaConfigError, load_bundle


@dataclass(frozen=True)
class Checked:
    """What the checks read: the dataset's image URLs and the Toloka configs."""

    items: list[str]
    bundle: TolokaBundle


def check_exams(params: PipelineParams, bundle: TolokaBundle) -> None:
    """A worker can only take as many exams as there are exam suites; more would never gate anyone."""
    have = len(bundle.exam_suites)
    if params.exam.n_exams > have:
        raise TolokaConfigError(
            f"exam.n_exams {params.exam.n_exams} exceeds the {have} exam suites of "
            f"{params.toloka_dir / FILES['exam_suites']}: no worker could ever reach the skill"
        )


def check_run(params: PipelineParams) -> Checked:
    """Dataset, HIT size, and `check_plan` for all its images."""
    items = dataset.load_dataset(params.dataset)["image"].tolist()
    if len(items) < params.hits.size:
        raise HitPlanError(
            f"{params.dataset}: {len(items)} images cannot fill a HIT of hits.size {params.hits.size}"
        )
    return Checked(items, check_plan(params, len(items)))


def check_plan(params: PipelineParams, n_items: int) -> TolokaBundle:
    """Exam count, overlap rules, and the size and cost of a plan for `n_items` against the budget.

    The catalogue flow calls it for each round's new items, before the round is planned.
    """
    bundle = load_bundle(params.toloka_dir)
    check_exams(params, bundle)
    budget.check_plan_size(params, bundle, n_items)
    costs = budget.estimate_labelling(params, bundle, budget.planned_hits(n_items, params))
    budget.check_budget(costs, params.budget.max_spend)
    return bundle


@stage_task(name="verify-ids", toloka=True, cache=False)
def verify_labelling_task(target: TolokaTarget, run_key: str, ids: LabellingIds, main_pool_role: str) -> None:
    """Never cached: check that the (possibly cached) ids still name this run's objects."""
    RunRegistry.connect(target, run_key).verify(setup.owned_labelling(ids, main_pool_role))


DATA_ERRORS: tuple[type[Exception], ...] = (
    dataset.DatasetError,
    HitPlanError,
    TolokaConfigError,
    budget.BudgetExceeded,
)
