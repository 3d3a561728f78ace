"""Sub-flow: intruder evaluation of a clustering (deployable alone for an existing `clusters.csv`).

HITs (seeded; small clusters skipped with a log line) -> enough workers hold the labelling skill
(`preflight.check_intruder_staffing`) -> budget guard -> intruders project,
training and pool gated by the labelling skill -> wait -> export -> Dawid-Skene -> accuracy
overall and per cluster, bar chart PNG, artifacts.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from prefect import flow, get_run_logger

from flows.hooks import CLOSES_POOLS, closed_when_suspended
from tasks import artifacts, budget, intruders, preflight
from tasks.export_format import n_assignments
from tasks.params import PipelineParams
from tasks.run_folder import RunFolder
from tasks.run_lock import locked_run
from tasks.schedules import skip_missed_runs
from tasks.stages import Evaluation
from tasks.toloka_api import RunRegistry, make_client
from tasks.toloka_config import Placeholders, load_bundle
from tasks.wait import waits_again_after_top_up


def labelling_skill(params: PipelineParams) -> str:
    """The skill the run's labelling created (the intruder pool admits the workers who hold it)."""
    run_key, base_name = params.resolved_run_key, params.exam.skill_name
    skill = RunRegistry(make_client(params.toloka), run_key).find_skill(base_name)
    if skill is None:
        name = RunRegistry.skill_name(base_name, run_key)
        raise LookupError(f"no skill {name!r} on Toloka: run the labelling flow first or pass skill_id")
    return skill


@flow(name="crowdclust-evaluate", **CLOSES_POOLS)
@skip_missed_runs
@locked_run()
def evaluate_clusters(
    params: PipelineParams, clusters_csv: Path | None = None, skill_id: str | None = None
) -> Evaluation:
    """Intruder accuracy of the clusters in `clusters_csv` (default: the run folder's).

    Inside a pipeline its files go to the run's folder, next to the report that shows them. Started
    on its own (the `evaluate` deployment), it writes them to `evaluations/<HITs' digest>/` in that
    folder, with an `evaluation.json` of its own: the run's report and summary stay those of the
    run's evaluation.
    """
    from prefect import runtime

    logger = get_run_logger()
    folder = RunFolder.of(params)
    run_key, cfg = params.resolved_run_key, params.intruders
    clusters = folder.read_clusters(clusters_csv)
    made, skipped = intruders.make_hits(clusters, cfg.n_hits, cfg.images_per_hit, params.seed)
    alone = runtime.flow_run.parent_flow_run_id is None
    if alone and made:
        folder = folder.evaluation(intruders.round_key(run_key, made))
    if skipped:
        logger.info("%s", intruders.skipped_line(skipped, clusters, cfg.images_per_hit - 1))
    if not made:
        logger.warning("no cluster can host an intruder HIT: evaluation skipped")
        return Evaluation(accuracy=None, n_hits=0, skipped=tuple(skipped))
    thin = intruders.thin_hosts(made, clusters.nunique() - len(skipped))
    if thin is not None:
        logger.warning("%s", thin)
    bundle = load_bundle(params.toloka_dir)
    skill = skill_id or labelling_skill(params)
    preflight.check_intruder_staffing_task(params.toloka, skill, params, bundle, len(made))
    at_config = budget.estimate_intruders(params, bundle, len(made))
    ratio = budget.price_ratio_seen_task(params.toloka, run_key, params)
    costs = budget.at_price_ratio(at_config, ratio, params)
    covers = (intruders.pool_role(run_key, made),)
    before = budget.check_budget_task(params.toloka, run_key, costs, params.budget.max_spend, covers)
    folder.write_intruder_hits(made)

    values = Placeholders.of(params).with_skill(skill)
    ids = intruders.setup_intruders_task(params.toloka, run_key, bundle, values, made)
    preflight.verify_intruders_task(
        params.toloka, run_key, ids, intruders.round_key(run_key, made), bundle, values
    )
    waiting = waits_again_after_top_up(
        intruders.wait_intruders_task, params.toloka, ids.pool, params.wait.retries
    )
    with closed_when_suspended():  # a Suspend in the wait stops the crowd at once
        waited = waiting(
            params.toloka,
            ids,
            params.wait.period(params.toloka.environment),
            params.wait.timeout_seconds,
            # At the config's price, as the labelling's: the guard applies the price Toloka charges
            # itself, and given the estimate at that price counted it twice (a pool the budget
            # covered was closed at 96%).
            budget.SpendGuard.of_intruders(params, before, at_config),
        )
    path = folder.write_export(waited.export, "intruders")
    if waited.stopped:
        raise budget.stopped_run(waited.stopped, path)
    scored = intruders.per_image(intruders.accuracy(waited.export, made), clusters)
    result = replace(
        scored,
        skipped=tuple(skipped),
        ids=ids,
        n_assignments=n_assignments(waited.export),
        spent=waited.spent,
        chart=intruders.bar_chart(scored, folder.intruder_chart),
        estimate=costs.intruders,
    )
    if result.chart is not None:
        artifacts.intruder_chart(result.chart)
    logger.info(
        "intruder accuracy %.3f over %s HITs, %.3f per image of the %s in clusters that hosted one "
        "(%.3f of %s single answers name the intruder)",
        result.accuracy or 0.0,
        f"{result.n_hits:,}",
        result.image_accuracy or 0.0,
        f"{result.images_hosted:,}",
        result.answer_accuracy or 0.0,
        f"{result.n_answers:,}",
    )
    if alone:
        written = folder.write_evaluation(result)
        artifacts.evaluation_metrics(result, written.parent)
        logger.info(
            "this evaluation's files: %s (its cost $%.2f in evaluation.json)",
            written.parent,
            result.spent or 0.0,
        )
    return result
