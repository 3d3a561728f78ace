"""The end-to-end crowdclust flow: label with the crowd, aggregate, evaluate, report.

A list of calls: every stage is a sub-flow or a `stage_task` whose result is persisted, so a new
run with the same parameters after a failure resumes where the failed one stopped, and Toloka
objects are looked up by the run key before anything is created.

Entry point for deployments: `flows/pipeline.py:crowdclust_pipeline`.
"""

from __future__ import annotations

from dataclasses import replace

from prefect import flow

from flows.aggregate import aggregate_export
from flows.evaluate import evaluate_clusters
from flows.hooks import CLOSES_POOLS, overview_on_stop
from flows.labelling import labelling
from flows.second_round import second_round
from tasks import budget, export_format, report
from tasks.exam_outcome import exam_outcome_task
from tasks.params import PipelineParams
from tasks.run_folder import RunFolder
from tasks.run_lock import locked_run
from tasks.schedules import skip_missed_runs
from tasks.stages import Cost, CostEstimate, RunSummary, SecondRound
from tasks.toloka_api import probe


@flow(name="crowdclust-pipeline", **CLOSES_POOLS)
@skip_missed_runs
@overview_on_stop()
@locked_run()
def crowdclust_pipeline(params: PipelineParams) -> RunSummary:
    """Cluster `params.dataset` with the crowd end to end; returns the summary (also in summary.json)."""
    # No token, a wrong one or no platform: one line within seconds, before the first stage asks
    # Toloka (the stage's retries took 75 s and ended in "stopped answering ... pools may be open").
    probe(params.toloka)
    folder = RunFolder.of(params)
    clock = report.Stopwatch(folder)
    spent_before = budget.total(budget.charges_at_start_task(params.toloka, params.resolved_run_key))
    with clock.lap("labelling"):
        labelled = labelling(params)
    with clock.lap("aggregation"):
        aggregated = aggregate_export(
            out_dir=folder.root,
            export=labelled.export_path,
            toloka=params.toloka,
            aggregation=params.aggregation,
            seed=params.seed,
            dataset=params.dataset,
        )
    second, done = None, None
    if params.hits.second_round_share > 0:
        with clock.lap("second round"):
            first = [export_format.read_export_file(labelled.export_path)]
            done = second_round(
                params, labelled.run_key, first, aggregated, folder, share_of=int(aggregated.clusters.size)
            )
    if done is not None:
        second, aggregated = done
    evaluated = None
    if params.intruders.enabled:
        with clock.lap("intruders"):
            evaluated = evaluate_clusters(params, skill_id=labelled.ids.skill)

    estimate = CostEstimate.of_rounds(labelled, second)
    estimate = None if estimate is None else estimate.with_evaluation(evaluated)
    charges = budget.pool_charges_task(params.toloka, labelled.run_key)  # read now, late ones included
    spent_after = budget.total(charges)
    exam = exam_outcome_task(params.toloka, labelled.ids, params.exam.min_skill)
    cost = Cost(
        spent=budget.spent(params, labelled, evaluated, second, charges),
        estimate=estimate,
        by_run_key=spent_after,
        added=round(max(0.0, spent_after - spent_before), 4),
    )
    if cost.over_estimate is not None:  # why: Toloka's price, or answers bought under earlier settings
        cost = replace(
            cost, price_ratio=budget.price_ratio_seen_task(params.toloka, labelled.run_key, params)
        )
    wall, timings, attempts = clock.finish()
    summary = report.finish_run(
        params,
        folder,
        aggregated,
        evaluated,
        cost,
        wall_seconds=wall,
        run_key=labelled.run_key,
        ids=labelled.ids,
        coverage=labelled.plan.coverage,
        timings=timings,
        second_round=None if second is None else SecondRound.of(second),
        attempts=attempts,
        exam=exam,
    )
    report.log_the_end(summary)
    return summary
