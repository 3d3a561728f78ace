"""Checks a run must pass before anything is planned, created on Toloka or paid, or used again.

Every problem here is a data or configuration error of the user's (the dataset, the HIT design,
the exam suites, the budget): `crowdclust run` reports it as one line and exits 2, and the flows
call the same checks so that a run started from the Prefect UI stops just as early. Cached
Toloka ids are checked on every run too (`verify_labelling_task`): they must still name this run's
objects before anything is uploaded to them or paid through them, and their pools get the settings
the config asks for now. The intruder pool's workers are
known only once the labelling is done, so its staffing is checked when the evaluation starts,
before the pool is created (`check_intruder_staffing_task`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefect import get_run_logger

from aggregation import followup
from aggregation.design import ANCHOR_PARTNERS, design_for, design_information, memory_note
from tasks import budget, dataset, setup
from tasks.advice import run_again
from tasks.hits import HitPlanError
from tasks.params import PipelineParams, TolokaTarget
from tasks.run_folder import RunFolder
from tasks.second_round import most_images as second_round_images
from tasks.stage import stage_task
from tasks.stages import IntruderIds, LabellingIds
from tasks.toloka_api import (
    POOL_LIFETIME,
    RunRegistry,
    TolokaClient,
    derived_run_keys,
    make_client,
    search,
    skill_holders,
)
from tasks.toloka_config import (
    FILES,
    AnswerLimit,
    Placeholders,
    TolokaBundle,
    TolokaConfigError,
    load_bundle,
    tightest_limit,
)


class ExamSeatsShort(HitPlanError):
    """Too few workers can qualify through the exam for the main pool to collect its answers."""


@dataclass(frozen=True)
class Checked:
    """What the checks read: the dataset's image URLs and the Toloka configs, and what to warn of.

    `warnings`: the dataset's (`dataset.read_dataset`), the HIT design's (`design_warning`) and the
    staffing's (`staffing_warning`), each one line, shown before anything is paid.
    """

    items: list[str]
    bundle: TolokaBundle
    warnings: tuple[str, ...] = ()


def check_exams(params: PipelineParams, bundle: TolokaBundle) -> None:
    """A worker can only take as many exams as there are exam suites; more would never gate anyone."""
    have = len(bundle.exam_suites)
    if params.exam.n_exams > have:
        raise TolokaConfigError(
            f"exam.n_exams {params.exam.n_exams} exceeds the {have} exam suites of "
            f"{params.toloka_dir / FILES['exam_suites']}: no worker could ever reach the skill"
        )


def _read_for_hits(params: PipelineParams) -> dataset.Dataset:
    """The dataset, refused when its images cannot fill one HIT."""
    data = dataset.read_dataset(params.dataset)
    if len(data.frame) < params.hits.size:
        raise HitPlanError(
            f"{params.dataset}: {len(data.frame)} images cannot fill a HIT of hits.size {params.hits.size}"
        )
    return data


def check_run(params: PipelineParams) -> Checked:
    """Dataset, HIT size, and `check_plan` for all its images; the dataset's warnings come first.

    A refused plan carries the dataset's and the design's warnings (`warnings_of`): printed alone,
    a budget's refusal advised fewer HITs per image where the design needed more, and a dataset's
    blank classes went unsaid.
    """
    data = _read_for_hits(params)
    items = data.frame["image"].tolist()
    try:
        bundle = check_plan(params, len(items))
    except (budget.BudgetExceeded, HitPlanError) as refusal:
        design = None
        with contextlib.suppress(HitPlanError, TolokaConfigError):  # the refusal is the error to tell
            design = design_warning(params, load_bundle(params.toloka_dir), len(items))
        for warning in (*data.warnings, *([design] if design else [])):
            refusal.add_note(warning)
        raise
    found = (design_warning(params, bundle, len(items)), staffing_warning(params, bundle, len(items)))
    return Checked(items, bundle, (*data.warnings, *(warning for warning in found if warning)))


def warnings_of(error: BaseException) -> tuple[str, ...]:
    """The warnings a refused check carries as the exception's notes (`check_run`), to say before
    its error (`str(error)` leaves the notes out)."""
    return tuple(getattr(error, "__notes__", ()))


def check_catalogue(params: PipelineParams) -> tuple[str, ...]:
    """What holds for every round of a growing catalogue (`crowdclust run --catalogue`): the dataset,
    one HIT's worth of images, the exams; returns the dataset's warnings. A round's plan, its cost
    and its staffing depend on the images no round has clustered yet, which only the flow learns
    (from Toloka): it checks them before each round, as `check_run` does for a single run."""
    data = _read_for_hits(params)
    check_exams(params, load_bundle(params.toloka_dir))
    return tuple(data.warnings)


def design_warning(params: PipelineParams, bundle: TolokaBundle, n_items: int) -> str | None:
    """With `hits.expected_styles` set: a warning when the HIT design cannot place every image.

    An image ends up with its style only if it meets some of it in a HIT. With K styles the design
    shows it about m = r(h-1)(N/K-1)/(N-1) of them and a share e^-m meets none; below
    `ANCHOR_PARTNERS` the clusters mix the small styles whatever the crowd answers (10,000 images
    of 40 styles: ARI 0.84 with 10 HITs per image, 0.99 with 24). The user hears it before paying,
    with the `hits_per_item` that would show each image enough of its style, what that main
    pool would cost and the memory its aggregation needs (`design.memory_note`: at 100,000 images of
    200 styles, more than most machines have). A warning, not an error: a cheaper, coarser answer
    may be what they want.
    """
    styles, hits = params.hits.expected_styles, params.hits
    if styles is None:
        return None
    if styles > n_items:
        raise HitPlanError(f"hits.expected_styles {styles} exceeds the {n_items} images of {params.dataset}")
    now = design_information(n_items, styles, hits.size, hits.hits_per_item, hits.overlap)
    if now.same_style_partners >= ANCHOR_PARTNERS:
        return None
    better = design_for(n_items, styles, hits.size, hits.overlap)
    # The seed design gives at most `size` HITs per image (`HitParams`): beyond it, advise the balanced one.
    rebalanced = hits.design == "seed" and better.hits_per_item > hits.size
    advised = hits.model_copy(
        update={"hits_per_item": better.hits_per_item} | ({"design": "balanced"} if rebalanced else {})
    )
    cost_now, cost_advised = (
        budget.estimate_labelling(run, bundle, budget.planned_hits(n_items, run)).main
        for run in (params, params.model_copy(update={"hits": advised}))
    )
    over = (
        f", above budget.max_spend ${params.budget.max_spend:,.2f}"
        if cost_advised > params.budget.max_spend
        else ""
    )
    return (
        f"hits: with about {styles} styles, this design (hits.size {hits.size}, hits.hits_per_item "
        f"{hits.hits_per_item}) shows each image ~{now.same_style_partners:.1f} of its own style and leaves "
        f"~{now.alone_share:.0%} of the images with none: those cannot be placed, and small styles will "
        f"mix. {'hits.design balanced with ' if rebalanced else ''}hits.hits_per_item "
        f"{better.hits_per_item} would show ~{better.same_style_partners:.1f} and "
        f"leave ~{better.alone_share:.1%} with none; its "
        f"main pool would cost ${cost_advised:,.2f} instead of ${cost_now:,.2f}{over} "
        f"({memory_note(better)})"
    )


@dataclass(frozen=True)
class Staffing:
    """The answers a plan's main pool needs against what the workers the exam can qualify may give."""

    needed: int
    workers: int  # the most workers the exam can qualify
    exams_each: int  # the fewest exams whose mean reaches exam.min_skill
    suites: int
    limit: AnswerLimit  # the main pool's tightest ANSWER_COUNT restriction
    most_each: int  # answers one worker can give in the pool's lifetime

    pass_share: float  # exam.pass_share

    def seats_for(self, answers_each: int) -> int:
        """The exam.expected_workers that qualify enough workers at `answers_each` answers each."""
        workers = -(-self.needed // max(answers_each, 1))
        return math.ceil(workers * self.exams_each / self.suites / self.pass_share - 1e-9)

    def explain(self, params: PipelineParams, answers_each: int) -> str:
        """The need, the workers, the rule and the answers they allow: how both messages start."""
        exam = params.exam
        return (
            f"exam: the main pool needs {self.needed:,} answers ({self.needed // params.hits.overlap:,} "
            f"HITs x hits.overlap {params.hits.overlap}), but at most ~{self.workers:,} workers can qualify "
            f"(exam.expected_workers {exam.expected_workers} on each of {self.suites} exam suites, "
            f"{self.exams_each} exams each to reach exam.min_skill {exam.min_skill:g}, "
            f"exam.pass_share {exam.pass_share:g} of the takers passing) and main_pool.json "
            f"{self.limit.describe()}: {self.workers * answers_each:,} answers at most"
        )


def staffing(params: PipelineParams, bundle: TolokaBundle, n_items: int) -> Staffing | None:
    """The main pool's answers against what the workers the exam can qualify may give (None: no limit).

    Only workers whose skill reaches exam.min_skill enter the main pool, and a skill is the mean
    score over exam.n_exams exams, so each of them took at least ceil(min_skill x n_exams / 100)
    exams; every exam suite takes exam.expected_workers accepted answers, and only exam.pass_share of
    the takers pass (advised from seats that assumed every taker passes, a 10,000-image run on the
    emulator qualified 1,036 workers of 1,400 and its main pool expired at 95%). The main pool's tightest
    ANSWER_COUNT restriction bounds each worker's answers over the pool's lifetime. (A rejected
    exam answer frees its seat, so a few more workers may qualify on partial scores: the figure is
    what exact answers allow.)
    """
    lifetime = POOL_LIFETIME.total_seconds()
    limit = tightest_limit(bundle.main_pool, lifetime)
    if limit is None:
        return None
    exams_each = max(1, math.ceil(params.exam.min_skill * params.exam.n_exams / 100.0 - 1e-9))
    suites = len(bundle.exam_suites)
    workers = math.floor(params.exam.expected_workers * suites / exams_each * params.exam.pass_share + 1e-9)
    needed = budget.planned_hits(n_items, params) * params.hits.overlap
    return Staffing(
        needed, workers, exams_each, suites, limit, limit.most_per_worker(lifetime), params.exam.pass_share
    )


def check_staffing(params: PipelineParams, bundle: TolokaBundle, n_items: int) -> None:
    """Refuse a plan whose main pool cannot collect its answers before it expires, before anything opens.

    At 10,000 images with 100 exam seats the emulator's main pool expired with a third of its
    answers bought: its ANSWER_COUNT rule lets each of the ~100 qualified workers give 50 answers,
    then one per 5 hours, 8,400 at most in 7 days against the 9,000 the plan needed.
    """
    found = staffing(params, bundle, n_items)
    if found is None or found.needed <= found.workers * found.most_each:
        return
    raise ExamSeatsShort(
        f"{found.explain(params, found.most_each)} in the pool's {POOL_LIFETIME.days} days: it would "
        f"expire unfinished. Raise exam.expected_workers to {found.seats_for(found.limit.answers)}, "
        f"enough workers to finish without waiting out a restriction ({found.seats_for(found.most_each)} "
        "at the very least), or relax that rule; nothing was planned or opened"
    )


def staffing_warning(params: PipelineParams, bundle: TolokaBundle, n_items: int) -> str | None:
    """A warning when the main pool completes only if its workers keep coming back after each restriction."""
    found = staffing(params, bundle, n_items)
    first = found.limit.answers if found is not None else 0
    if found is None or found.needed <= found.workers * first:
        return None
    return (
        f"{found.explain(params, first)} before their first restriction; the other "
        f"{found.needed - found.workers * first:,} need them to come back after each restriction, one "
        f"answer at a time, so the pool may take days or expire unfinished. exam.expected_workers "
        f"{found.seats_for(first)} would qualify enough workers to finish without waiting for them"
    )


class IntrudersUnstaffed(HitPlanError):
    """Too few workers hold the labelling skill for the intruder pool ever to collect its answers."""


# Skill holders per intruders.overlap an intruder pool needs: with 71 holders for an overlap of 69,
# a few restricted by the pool's quality control left every HIT short, and the pool stuck at 99%
# for its whole timeout, paid ($177.87) for what it got.
INTRUDER_SPARE = 1.25


def check_intruder_staffing(
    qualified: int, params: PipelineParams, bundle: TolokaBundle, n_hits: int
) -> None:
    """Refuse an intruder pool that the workers holding the skill cannot complete, before it is created.

    The pool admits only the workers whose labelling skill reaches exam.min_skill, and the exam is
    closed by now, so `qualified` is final. Each HIT needs intruders.overlap different workers,
    with `INTRUDER_SPARE` to spare, and the pool's tightest ANSWER_COUNT rule bounds each worker's
    answers in the pool's lifetime.
    Without this check such a pool waits out wait.timeout_seconds (a week by default) and is paid
    for the answers it did get.
    """
    overlap = params.intruders.overlap
    tail = (
        f"or set intruders.enabled to false, and {run_again()}: finished stages are reused, "
        "and nothing was created or paid for the intruders"
    )
    workers = math.ceil(overlap * INTRUDER_SPARE - 1e-9)
    if qualified < workers:
        spare = (
            f" and a quarter to spare ({workers} in all) for those the pool's quality control restricts "
            "(fast answers, skipped HITs) or who stop coming"
            if workers > overlap
            else ""
        )
        raise IntrudersUnstaffed(
            f"intruders: {qualified} worker(s) hold the labelling skill at exam.min_skill "
            f"{params.exam.min_skill:g}, fewer than the {overlap} different workers each intruder HIT "
            f"needs (intruders.overlap){spare}: the intruder pool could stall unfinished. Lower "
            f"intruders.overlap to {max(1, math.floor(qualified / INTRUDER_SPARE + 1e-9))} or less, {tail}"
        )
    lifetime = POOL_LIFETIME.total_seconds()
    limit = tightest_limit(bundle.intruders_pool, lifetime)
    if limit is None or n_hits * overlap <= qualified * limit.most_per_worker(lifetime):
        return
    raise IntrudersUnstaffed(
        f"intruders: {n_hits:,} HITs x intruders.overlap {overlap} need {n_hits * overlap:,} answers, but "
        f"{qualified} worker(s) hold the labelling skill and intruders_pool.json {limit.describe()}: "
        f"{qualified * limit.most_per_worker(lifetime):,} answers at most in the pool's "
        f"{POOL_LIFETIME.days} days. Lower intruders.n_hits or intruders.overlap, relax that rule, {tail}"
    )


@stage_task(name="check-intruder-staffing", toloka=True, cache=False)
def check_intruder_staffing_task(
    target: TolokaTarget, skill_id: str, params: PipelineParams, bundle: TolokaBundle, n_hits: int
) -> int:
    """`check_intruder_staffing` with the skill holders counted on Toloka; never cached (skills change)."""
    qualified = skill_holders(make_client(target), skill_id, params.exam.min_skill)
    check_intruder_staffing(qualified, params, bundle, n_hits)
    get_run_logger().info(
        "%d workers hold the labelling skill at %g or more", qualified, params.exam.min_skill
    )
    return qualified


NOTHING_OPENED = "; nothing was planned or opened"


def refused_together(*checks: Callable[[], None]) -> None:
    """Run every check; raise the first refusal with the others' reasons after it.

    On 1,797 images the demo's config was refused for its budget, and once that was raised, for
    its exam seats: two runs to learn two settings, where one error line can name both.
    """
    refusals: list[Exception] = []
    for check in checks:
        try:
            check()
        except (budget.BudgetExceeded, HitPlanError) as refusal:
            refusals.append(refusal)
    if len(refusals) > 1:
        first, *others = refusals
        reasons = [str(r).removesuffix(NOTHING_OPENED) for r in refusals]
        raise type(first)("; and ".join(reasons) + NOTHING_OPENED) from others[0]
    if refusals:
        raise refusals[0]


def check_plan(params: PipelineParams, n_items: int) -> TolokaBundle:
    """Exam count, overlap rules, staffing, and the size and cost of a plan for `n_items` against the budget.

    The estimate counts the second round of the most images it may show again
    (`hits.second_round_share` of `n_items`). The catalogue flow calls it for each round's new
    items, before the round is planned.
    """
    bundle = load_bundle(params.toloka_dir)
    check_exams(params, bundle)
    refused_together(
        lambda: budget.check_plan_size(params, bundle, n_items),
        lambda: check_staffing(params, bundle, n_items),
    )
    n_hits = budget.planned_hits(n_items, params)
    again = second_round_images(params, n_items)
    if followup.fills_a_hit(again, params.hits.size):  # as `pick_images` and `followup.plan` do
        n_hits += followup.count_hits(again, params.hits.size, params.hits.hits_per_item)
    costs = budget.estimate_labelling(params, bundle, n_hits)
    budget.check_budget(costs, params.budget.max_spend)
    return bundle


@stage_task(name="verify-ids", toloka=True, cache=False)
def verify_labelling_task(
    target: TolokaTarget,
    run_key: str,
    ids: LabellingIds,
    main_pool_role: str,
    bundle: TolokaBundle,
    values: Placeholders,
) -> None:
    """Never cached: check that the (possibly cached) ids still name this run's objects, and give
    their pools the settings the config asks for now (`setup.refresh_labelling`)."""
    registry = RunRegistry.connect(target, run_key)
    registry.verify(setup.owned_labelling(ids, main_pool_role))
    setup.refresh_labelling(registry, ids, bundle, values, main_pool_role)


@stage_task(name="verify-intruder-ids", toloka=True, cache=False)
def verify_intruders_task(
    target: TolokaTarget,
    run_key: str,
    ids: IntruderIds,
    round_key: str,
    bundle: TolokaBundle,
    values: Placeholders,
) -> None:
    """Never cached: check that the (possibly cached) intruder ids still name this run's objects,
    and give the pool the settings the config asks for now (`setup.refresh_intruders`), as
    `verify_labelling_task` does for the labelling."""
    registry = RunRegistry.connect(target, run_key)
    registry.verify(setup.owned_intruders(ids, round_key))
    setup.refresh_intruders(registry, ids, bundle, values, round_key)


class EarlierRunKeys(ValueError):
    """A derived run key new to the account while earlier keys of its name and seed were paid for:
    stopped before anything is created, with the way to go on (a data error: exit 2)."""


DATA_ERRORS: tuple[type[Exception], ...] = (
    dataset.DatasetError,
    HitPlanError,
    TolokaConfigError,
    budget.BudgetExceeded,
    EarlierRunKeys,
)


def _labelled_images(client: TolokaClient, key: str) -> set[str] | None:
    """The images the main pool of run key `key` holds (None: it has no main pool)."""
    pool = RunRegistry(client, key).pools().get(setup.MAIN_POOL)
    if pool is None:
        return None

    def images(suite: dict[str, Any]) -> list[str]:
        return [str(image) for task in suite.get("tasks") or () for image in task["input_values"]["images"]]

    suites = search(client, "/v1/task-suites", {"pool_id": pool.id}, images)
    return {image for suite in suites for image in suite}


@stage_task(name="earlier-run-keys", toloka=True, cache=False)
def earlier_run_keys_task(params: PipelineParams) -> list[str]:
    """Stop a run whose derived key is new while others of its name and seed were paid for.

    A derived key follows the dataset's images: a run after its dataset changed gets a new key and
    pays the whole job again. It was a warning 0.3 s before the pools opened, and its advice (the
    earlier `--run-key`) failed when the images had changed (that key's pool holds HITs the new
    plan has not): a user who corrected one URL paid $38.74 a second time. Now nothing is created:
    the error says how the images differ and which command goes on, and a key given with
    `--run-key` (the `run_key` parameter) is never stopped this way. Keys that were never charged
    are only a warning. Only for a key that was not given and holds nothing yet.
    """
    if params.run_key:
        return []
    client, key = make_client(params.toloka), params.resolved_run_key
    others = [k for k in derived_run_keys(client, params.name, params.seed) if k != key]
    if not others or RunRegistry(client, key).projects():
        return []
    paid = {other: RunRegistry(client, other).spent() for other in others}
    listed = ", ".join(f"{other} (${value:,.2f} charged)" for other, value in paid.items())
    earlier = max(paid, key=lambda k: (paid[k], k))
    where = f"Its files would go to {RunFolder.of(params).root}"
    if paid[earlier] < 0.005:
        return [
            f"run key {key} is new on this account, but {listed} of the same name and seed exist, "
            f"unpaid: this run goes on with new pools. {where}"
        ]
    images = set(dataset.load_dataset(params.dataset)["image"])
    before = _labelled_images(client, earlier)
    start = (
        f"run key {key} is new on this account, but {listed} of the same name and seed exist; nothing "
        f"was created. {earlier} labelled "
    )
    if before == images:
        raise EarlierRunKeys(
            f"{start}the same {len(images):,} images (the rows are in another order, or the key was "
            f"derived from the whole file before this version): run again with --run-key {earlier} (a "
            "deployment: its run_key parameter) to go on with what was paid"
        )
    if before is None:
        differ = "no main pool yet"
    else:
        differ = (
            f"other images: {len(images - before):,} of this dataset's {len(images):,} images are new "
            f"to it, and {len(before - images):,} of the {len(before):,} it labelled are not in this dataset"
        )
    if before is not None and images <= before:  # fewer images, all labelled: nothing to buy
        export = RunFolder.of(params.model_copy(update={"run_key": earlier})).export("main")
        raise EarlierRunKeys(
            f"{start}{differ}. Every image of this dataset was labelled under {earlier}: cluster them "
            f"without paying with `crowdclust aggregate {export} -o OUT.csv` (an image no longer "
            f"in the dataset can be dropped from its output), or restore the dataset and run again; "
            f"--run-key {key} would pay for all {len(images):,} images again"
        )
    raise EarlierRunKeys(
        f"{start}{differ}. To label this dataset in full, run again with --run-key {key} (a deployment: "
        "its run_key parameter); to go on with the earlier run, restore its dataset. (A catalogue that "
        "grows is labelled round by round, paying only for new images, by the growing-catalogue flow: "
        "docs/catalogues.md.) "
        f"{where}"
    )
