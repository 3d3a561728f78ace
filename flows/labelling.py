"""Sub-flow: from a dataset to the accepted assignments of the main pool (deployable alone).

plan HITs -> cost estimate + budget guard -> Toloka objects -> upload -> open, poll with exam
gating, close -> export (raw TSV in the run folder).
"""

from __future__ import annotations

from dataclasses import replace

from prefect import flow, get_run_logger

from flows.hooks import CLOSES_POOLS, closed_when_suspended
from tasks import artifacts, budget, exam, hits, image_check, preflight, results, setup, wait
from tasks.export_format import n_assignments
from tasks.params import PipelineParams
from tasks.run_folder import RunFolder
from tasks.run_lock import locked_run
from tasks.second_round import SECOND_ROUND_POOL, most_images, pool_name
from tasks.stages import HitPlan, Labelled, PoolStats
from tasks.thumbnails import images_base, link_base
from tasks.toloka_api import (
    POOL_LIFETIME,
    Opening,
    close_all,
    count_assignments,
    make_client,
    probe,
)
from tasks.toloka_config import Placeholders, load_bundle, tightest_limit


def collect_labels(
    params: PipelineParams,
    run_key: str,
    plan: HitPlan,
    folder: RunFolder,
    main_pool_role: str = setup.MAIN_POOL,
    evaluations_behind: bool = False,
    exam_shared: bool = False,
) -> Labelled:
    """Budget guard, Toloka objects, upload, wait with exam gating for one HIT plan.

    Shared by the pipeline (one plan per run) and the catalogue flow (one plan per round, its own
    main pool under `main_pool_role`).

    The budget check counts the run key's pools that this plan's estimate does not. The estimate
    holds an evaluation, so in the pipeline, which may resume its latest evaluation, that intruder
    pool is left out of what was already spent; the earlier ones (clusterings or settings left
    behind), and all of them with `intruders.enabled` off, are in it. `evaluations_behind` (a
    catalogue: every round evaluates a new clustering) counts them all as spent: they are earlier
    rounds', paid. Before, a
    catalogue's fourth round saw $21.48 already spent where the key had spent $35.78, opened and
    paid its pool, and only its evaluation was refused.

    `exam_shared` (a catalogue: its rounds share one exam pool): what that pool was paid before
    this run is shown as paid, not in the estimate's total, which is what this run may spend.
    """
    logger = get_run_logger()
    bundle = load_bundle(params.toloka_dir)
    folder.write_plan(plan)
    logger.info("HIT plan (%s): %s", params.hits.design, plan.coverage.describe())
    second = main_pool_role.startswith(SECOND_ROUND_POOL)  # its artifacts beside the first round's
    coverage_key = "second-round-hit-coverage" if second else "hit-coverage"
    artifacts.hit_coverage(plan.coverage, link_base(params.toloka), params.hits.hits_per_item, coverage_key)

    costs = budget.estimate_labelling(params, bundle, len(plan.hits))
    counted = budget.main_overlap(params, bundle)  # per HIT, what quality rules may add included
    beyond = budget.answers_beyond_task(params.toloka, run_key, main_pool_role, counted)
    costs = budget.with_answers_beyond(costs, beyond, counted, params)
    if exam_shared:
        costs = replace(costs, exam_paid=budget.exam_paid_at_start_task(params.toloka, run_key))
    covers = (budget.EXAM_POOL, main_pool_role)
    # A pipeline may resume its latest evaluation (the estimate holds one); a catalogue's were paid.
    resumes = params.intruders.enabled and not evaluations_behind
    # A resumed run is checked at the price Toloka charged its labelling pools: what it paid already is
    # at that price, and set against an estimate at the config's (`fee_rate` below the platform's
    # fee) it left nothing due, so a run the balance had stopped passed the balance check with no
    # top-up and was stopped again. The spend guard applies that price itself (`costs` as they are).
    ratio = budget.price_ratio_seen_task(params.toloka, run_key, params)
    checked = budget.at_price_ratio(costs, ratio, params)
    before = budget.check_budget_task(
        params.toloka, run_key, checked, params.budget.max_spend, covers, resumes_evaluation=resumes
    )
    again = most_images(params, len(plan.coverage.per_item))
    if again >= params.hits.size and not second:  # a second round may follow: not in the estimate above
        logger.info(
            "the second round (hits.second_round_share %s) is not in this estimate: it is estimated and "
            "checked when it is planned, after this round's aggregation (the check before the run "
            "counted up to %d of its images)",
            params.hits.second_round_share,
            again,
        )

    if params.hits.check_images:  # before any paid object: an image nobody can see is paid for anyway
        image_check.check_images_task(
            [image for hit in plan.hits for image in hit], images_base(params.toloka), str(params.dataset)
        )
    values = Placeholders.of(params)
    ids = setup.setup_labelling_task(
        params.toloka, run_key, bundle, values, params.exam.skill_name, main_pool_role
    )
    preflight.verify_labelling_task(params.toloka, run_key, ids, main_pool_role, bundle, values)
    setup.upload_hits_task(params.toloka, run_key, ids.main_pool, plan.hits, main_pool_role)
    period = params.wait.period(params.toloka.environment)
    export_kind = "main" if main_pool_role == setup.MAIN_POOL else main_pool_role  # its file's name
    waiting = wait.waits_again_after_top_up(
        wait.wait_labelling_task, params.toloka, ids.main_pool, params.wait.retries
    )
    try:
        with closed_when_suspended():  # a Suspend in the wait stops the crowd at once
            waited = waiting(
                params.toloka,
                ids,
                bundle,
                params.exam.n_exams,
                period,
                params.wait.timeout_seconds,
                budget.SpendGuard.of(params, before, costs),
                exam.Staffing(
                    params.exam.min_skill,
                    params.hits.overlap,
                    len(plan.hits) * params.hits.overlap,
                    tightest_limit(bundle.main_pool, POOL_LIFETIME.total_seconds()),
                ),
                pool_name(main_pool_role),
            )
    except wait.WaitTimeout as timeout:
        advice = SHORT_OF_WORKERS if timeout.short_of_workers else SLOW_POOL
        kept = kept_after_stop(params, ids.main_pool, folder, export_kind, timeout, advice, timeout.stats)
        raise wait.WaitTimeout(kept, timeout.stats, timeout.short_of_workers) from None
    except wait.PoolStopped as stopped:
        kept = kept_after_stop(
            params, ids.main_pool, folder, export_kind, stopped, STOPPED_POOL, stopped.stats
        )
        raise wait.PoolStopped(kept, stopped.reason, stopped.stats) from None
    return Labelled(run_key=run_key, ids=ids, plan=plan, estimate=checked, wait=waited)


SLOW_POOL = "with a larger wait.timeout_seconds if the pool is slow"
SHORT_OF_WORKERS = (
    "after raising exam.expected_workers, lowering exam.min_skill or hits.overlap, or loosening the "
    "pools' filters"
)
STOPPED_POOL = (
    "after fixing what stopped it (an expired pool is given a new lifetime and reopened; one closed "
    "by hand is reopened)"
)


def kept_after_stop(
    params: PipelineParams,
    pool_id: str,
    folder: RunFolder,
    kind: str,
    error: Exception,
    advice: str,
    last_poll: PoolStats | None = None,
) -> str:
    """Export what a pool that timed out or stopped before completion holds and say how to go on.

    The answers are paid whatever happens next: a run that waited out `wait.timeout_seconds`
    (4,340 answers, $116.74 in a user's try) failed with nothing but `hits.json` on disk and no
    word on what to do, and so did a 10,000-image run whose pool expired at 95% (66,816 answers,
    $1,774.27).

    The export is made after the close, so it can hold more than `last_poll` counted (the error
    read '568 answers submitted' next to '571 accepted answers', unexplained): the difference is
    said.
    """
    # Closed first (the failure hook would close it anyway): an export of a pool still open missed
    # what came in after it (56 exported, 99 paid in a user's try).
    client = make_client(params.toloka)
    close_all(client, [Opening("pool", pool_id)])
    in_hand = count_assignments(client, pool_id, ("ACTIVE",))
    waiting = count_assignments(client, pool_id, ("SUBMITTED",))
    export = results.export_task(params.toloka, pool_id, results.pool_now_task(params.toloka, pool_id))
    path = folder.write_export(export, kind)
    pending = [
        f"{count:,} {what}"
        for count, what in ((in_hand, "in progress"), (waiting, "submitted and not yet accepted"))
        if count
    ]
    late = (
        f" ({' and '.join(pending)} when the pool closed: they are paid as they are accepted, and the "
        "next run exports them)"
        if pending
        else ""
    )
    exported = n_assignments(export)
    polled = None if last_poll is None else last_poll.approved_assignments_count
    since = (
        f" ({int(polled):,} at the last poll, {exported - int(polled):,} accepted after it)"
        if polled is not None and exported > polled
        else ""
    )
    return (
        f"{error}. The pool is closed; its {artifacts.counted(exported, 'accepted answer')}{since} are in "
        f"{path}{late}. Run the same command again (or Retry the flow run), {advice}: the same pool "
        "goes on from where it stopped and nothing is paid twice"
    )


def claimed(params: PipelineParams, run_key: str) -> RunFolder:
    """The run folder, marked as `run_key`'s; a warning when `runs/<name>/` holds another key's
    files and this run writes a folder of its own (`RunFolder.of`)."""
    folder = RunFolder.take(params)
    other = folder.taken_by(params)
    if other is not None:
        artifacts.warn_up(
            f"{params.run_dir} holds the files of run key {other}: this run (key {run_key}) "
            f"writes {folder.root}"
        )
    return folder


@flow(name="crowdclust-labelling", **CLOSES_POOLS)
@locked_run()
def labelling(params: PipelineParams) -> Labelled:
    """Label the dataset with the crowd; returns Toloka ids, the export path, costs and coverage."""
    logger = get_run_logger()
    run_key = params.resolved_run_key
    try:
        checked = preflight.check_run(params)  # data errors stop here, before anything is created
    except (budget.BudgetExceeded, hits.HitPlanError) as refusal:
        for warning in preflight.warnings_of(refusal):  # a refused plan's log says them too
            artifacts.warn_up(warning)
        raise
    items = checked.items
    logger.info("run key %s: %s images, configs from %s", run_key, f"{len(items):,}", params.toloka_dir)
    for warning in checked.warnings:
        artifacts.warn_up(warning)
    probe(params.toloka)  # no token, a wrong one or no platform: fail before anything is created
    for warning in preflight.earlier_run_keys_task(params):
        artifacts.warn_up(warning)
    folder = claimed(params, run_key)  # after the checks: a refused run writes nothing

    labelled = collect_labels(params, run_key, hits.make_plan(items, params.hits, params.seed), folder)
    export = results.export_task(params.toloka, labelled.ids.main_pool, labelled.wait)
    path = folder.write_export(export, "main")
    logger.info("raw export: %s (%s rows)", path, f"{len(export):,}")
    if labelled.wait.stopped:
        raise budget.stopped_run(labelled.wait.stopped, path)
    short = results.unanswered_hits(export, len(labelled.plan.hits), labelled.ids.main_pool)
    if short is not None:
        artifacts.warn_up(short)
    return replace(labelled, export_path=path, n_assignments=n_assignments(export))
