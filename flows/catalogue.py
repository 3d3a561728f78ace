"""Recurring clustering of a growing catalogue: one crowd round per run for the items not yet labelled.

A run (typically scheduled) reads the catalogue file and asks Toloka which items its completed round
pools already hold (`tasks.rounds`). The rest are the round's new items; they go into HITs mixed
with anchors from the current clusters, into a main pool of their own, with the usual coverage.
The catalogue's other Toloka objects (exam project, training, exam pool, skill, main project, the
intruders project) are shared by all rounds, found by the catalogue key. Aggregation then runs on
the exports of *all* completed round pools, so every label bought so far is used.

With `hits.second_round_share`, the newest round is followed by a second round over the images
only the prior placed (`flows.second_round`), at most that share of the round's new items, in a
pool whose role names the round; its answers join every later aggregation. A round whose second
round completed is not shown again; one whose second round failed finds its pool on the next run.

An unchanged catalogue means no new items: no Toloka object is created, the exports and the
aggregation come back Cached (same inputs), and the intruder evaluation of an unchanged clustering
is Cached too (its HITs, hence its pool, are derived from the clusters). Evaluation therefore runs
on every run and only costs money when the clustering changed.

Entry point for deployments: `flows/catalogue.py:cluster_catalogue`.
"""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
from prefect import flow, get_run_logger

from flows.aggregate import aggregate_rounds
from flows.evaluate import evaluate_clusters
from flows.hooks import CLOSES_POOLS, overview_on_stop
from flows.labelling import claimed, collect_labels
from flows.run_names import CATALOGUE_FLOW
from flows.second_round import second_round
from tasks import artifacts, budget, dataset, hits, preflight, report, results, rounds
from tasks.exam_outcome import exam_outcome_task
from tasks.export_format import n_assignments
from tasks.params import PipelineParams
from tasks.run_folder import RunFolder
from tasks.run_lock import locked_run
from tasks.schedules import skip_missed_runs
from tasks.stages import (
    Aggregated,
    CatalogueInfo,
    Cost,
    CostEstimate,
    HitPlan,
    Labelled,
    RoundState,
    RunSummary,
    SecondRound,
)
from tasks.toloka_api import probe


def aggregate_pools(
    params: PipelineParams, pool_ids: list[str], folder: RunFolder
) -> tuple[Aggregated, dict[str, pd.DataFrame]]:
    """Cluster the concatenated accepted answers of `pool_ids` (completed pools).

    Also returns pool id -> its export. Each export is keyed by its pool's analytics now, not by
    the pool id alone: a round pool exported before it completed (a run that went on after the
    balance stopped the round) was served that part for good, and the 95 answers its pool got
    after a top-up never reached the clusters (16 images left out of `clusters.csv`).
    """
    frames = {
        pool_id: results.export_task(params.toloka, pool_id, results.pool_now_task(params.toloka, pool_id))
        for pool_id in pool_ids
    }
    return aggregate_rounds(params, list(frames.values()), folder), frames


def stopped_round(
    params: PipelineParams,
    folder: RunFolder,
    state: list[RoundState],
    seconds: list[RoundState],
    round_id: str,
    labelled: Labelled,
) -> budget.SpendGuardStopped:
    """The error of a run whose round the spend guard or the account's balance stopped.

    The round is not done: its accepted answers are exported to its folder, the rounds table shows
    it not completed, and nothing of it is aggregated or evaluated. Before, the run went on as if
    the round had completed: it clustered a part of the round (and cached that export for good),
    and either ended Completed with the round shown as completed or failed in the evaluation's
    balance check saying that no pool was opened.
    """
    export = results.export_task(params.toloka, labelled.ids.main_pool, labelled.wait)
    path = folder.round(round_id).write_export(export, "main")
    shown_state = rounds.with_round(
        state, round_id, labelled.ids.main_pool, labelled.plan.hits, completed=False
    )
    artifacts.catalogue_rounds(params.catalogue_key, shown_state, None, seconds)
    return budget.stopped_run(
        f"catalogue round {round_id} (pool {labelled.ids.main_pool}): {labelled.wait.stopped}", path
    )


@flow(name=CATALOGUE_FLOW, **CLOSES_POOLS)
@skip_missed_runs
@overview_on_stop("catalogue_key")
@locked_run("catalogue_key")
def cluster_catalogue(params: PipelineParams, anchors_per_hit: int = 3) -> RunSummary:
    """Label the catalogue's new items (if any) in one round, re-cluster with all labels, evaluate.

    Args:
        params: the catalogue's parameters; `run_key` is the catalogue key (default `<name>-s<seed>`),
            `dataset` the catalogue file, re-read on every run.
        anchors_per_hit: already-clustered images added to every HIT of a later round.
    """
    logger = get_run_logger()
    key = params.catalogue_key
    params = params.model_copy(update={"run_key": key})  # sub-flows (intruders) share the catalogue key
    probe(params.toloka)  # no token, a wrong one or no platform: one line, before anything is written
    folder = claimed(params, key)
    clock = report.Stopwatch(folder)
    read = dataset.read_dataset(params.dataset)
    for warning in read.warnings:  # blank truth cells, an image under http:// and https://, ...
        artifacts.warn_up(warning)
    catalogue = read.frame["image"].tolist()
    # What this run spends is what the key's pools cost after it less before: the rounds share one
    # exam pool (counted whole in every round before) and a run may only finish an evaluation.
    # Before the run's first attempt, when the same command resumes it (`Stopwatch.charged_from`).
    spent_before = clock.charged_from(budget.total(budget.charges_at_start_task(params.toloka, key)))

    state, seconds = rounds.catalogue_state_task(params.toloka, key)
    clustered = {item for entry in state if entry.completed for item in entry.items}
    pools = sorted((*state, *seconds), key=lambda entry: (entry.created, entry.pool_id))
    done_pools = [entry.pool_id for entry in pools if entry.completed]
    new_items = sorted(set(catalogue) - clustered)
    again = rounds.respelled(new_items, clustered)
    if again:  # one picture is one item: never labelled (and paid) again under another URL
        examples = "; ".join(f"{new} (clustered as {old})" for new, old in list(again.items())[:3])
        artifacts.warn_up(
            f"catalogue {key}: {len(again)} images of {params.dataset} were clustered under another "
            f"spelling of their URL ({examples}{' ...' if len(again) > 3 else ''}): they are not labelled "
            f"again, and {folder.clusters.name} lists them under the spelling that was clustered"
        )
        new_items = [item for item in new_items if item not in again]
    logger.info(
        "catalogue %s: %s, %s already clustered, %s new",
        key,
        artifacts.counted(len(catalogue), "item"),
        f"{len(set(catalogue) & clustered):,}",
        f"{len(new_items):,}",
    )
    resumed = rounds.round_to_resume(state, clustered, set(catalogue))
    if resumed is not None and len(resumed[1]) < len(new_items):
        # A stopped round goes on in its own pool; the images added since wait for the next run.
        logger.warning(
            "catalogue %s: round %s stopped before it completed; this run finishes its pool (%d new "
            "images) and the %d images added since are labelled by the next run",
            key,
            resumed[0],
            len(resumed[1]),
            len(new_items) - len(resumed[1]),
        )
        new_items = resumed[1]
    waiting = len(set(catalogue) - clustered - set(again)) - len(new_items)  # clustered by the next run

    labelled = None
    round_id = None
    if new_items:
        # Before planning: a plan too big, or one the exam cannot staff, says no at once.
        bundle = preflight.check_plan(params, len(new_items))
        staffing = preflight.staffing_warning(params, bundle, len(new_items))
        if staffing:
            logger.warning(staffing)
        round_id = rounds.round_key(new_items)
        before = aggregate_pools(params, done_pools, folder.before_round())[0] if done_pools else None
        planned = rounds.plan_round(
            new_items, before.clusters if before else None, params.hits, params.seed, anchors_per_hit
        )
        plan = HitPlan(planned, hits.coverage(planned, new_items))
        role = f"{rounds.ROUND_ROLE}{round_id}"
        with clock.lap("labelling"):
            labelled = collect_labels(
                params, key, plan, folder.round(round_id), role, evaluations_behind=True, exam_shared=True
            )
        if labelled.wait.stopped:
            raise stopped_round(params, folder, state, seconds, round_id, labelled)
        done_pools.append(labelled.ids.main_pool)
        state = rounds.with_round(state, round_id, labelled.ids.main_pool, planned)
    with clock.lap("aggregation"):
        aggregated, frames = aggregate_pools(params, done_pools, folder)
    second = None
    latest = rounds.round_to_follow(state, seconds, params.hits.second_round_share)
    if latest is not None:
        with clock.lap("second round"):
            done = second_round(
                params, key, list(frames.values()), aggregated, folder,
                share_of=rounds.new_items_of(state, latest), role=rounds.second_round_role(latest),
                plan_folder=f"{latest}-second", evaluations_behind=True, exam_shared=True,
            )  # fmt: skip
        if done is not None:
            second, aggregated = done
            done_pools.append(second.ids.main_pool)
            seconds = rounds.with_round(seconds, latest, second.ids.main_pool, second.plan.hits)
    paid = labelled or second  # what this run labelled, if anything
    evaluated = None
    if params.intruders.enabled:
        with clock.lap("intruders"):
            evaluated = evaluate_clusters(params, skill_id=paid.ids.skill if paid else None)

    if labelled is not None:
        labelled = replace(labelled, n_assignments=n_assignments(frames[labelled.ids.main_pool]))
    spent_after = budget.total(budget.pool_charges_task(params.toloka, key))
    added = round(max(0.0, spent_after - spent_before), 4)
    cost = Cost(
        spent=added, estimate=CostEstimate.of_rounds(labelled, second), by_run_key=spent_after, added=added
    )
    artifacts.catalogue_rounds(key, state, round_id, seconds)
    wall, timings, attempts = clock.finish()
    summary = report.finish_run(
        params,
        folder,
        aggregated,
        evaluated,
        cost,
        wall_seconds=wall,
        run_key=key,
        ids=paid.ids if paid else None,
        coverage=labelled.plan.coverage if labelled else None,
        catalogue=CatalogueInfo(key, len(catalogue), len(new_items), round_id, tuple(done_pools), waiting),
        timings=timings,
        second_round=None if second is None else SecondRound.of(second),
        attempts=attempts,
        exam=exam_outcome_task(params.toloka, paid.ids, params.exam.min_skill) if paid else None,
    )
    logger.info(
        "catalogue %s: %s%s%s; clusters from %d pool%s",
        key,
        f"round {round_id} labelled ({artifacts.counted(len(new_items), 'new item')})"
        if round_id
        else "no new items",
        "" if second is None else f", a second round of {len(second.plan.coverage.per_item):,} images",
        f", {artifacts.counted(waiting, 'image')} wait for the next run" if waiting else "",
        len(done_pools),
        "s" * (len(done_pools) != 1),
    )
    report.log_the_end(summary)  # what a pipeline run's closing lines say
    return summary
