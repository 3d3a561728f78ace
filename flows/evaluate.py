"""Sub-flow: intruder evaluation of a clustering (deployable alone for an existing `clusters.csv`).

HITs (seeded; small clusters skipped with a log line) -> budget guard -> intruders project,
training and pool gated by the labelling skill -> wait -> export -> Dawid-Skene -> accuracy
overall and per cluster, bar chart PNG, artifacts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_image_artifact

from flows.hooks import close_pools_hook
from flows.params import PipelineParams
from tasks import budget, configs, intruders, results, setup
from tasks.connect import make_client


def _find_skill(params: PipelineParams) -> str:
    run_key, base_name = params.resolved_run_key, params.exam.skill_name
    skill = setup.find_skill(make_client(params.toloka), run_key, base_name)
    if skill is None:
        name = setup.run_skill_name(base_name, run_key)
        raise LookupError(f"no skill {name!r} on Toloka: run the labelling flow first or pass skill_id")
    return skill


@flow(name="crowdclust-evaluate", on_failure=[close_pools_hook], on_cancellation=[close_pools_hook])
def evaluate_clusters(
    params: PipelineParams, clusters_csv: Path | None = None, skill_id: str | None = None
) -> dict[str, Any]:
    """Intruder accuracy of the clusters in `clusters_csv` (default: the run folder's)."""
    logger = get_run_logger()
    run_dir = params.run_dir
    table = pd.read_csv(clusters_csv or run_dir / "clusters.csv")
    clusters = pd.Series(table["cluster"].to_numpy(), index=table["item"].astype(str).to_numpy())
    cfg = params.intruders
    hits, skipped = intruders.make_hits(clusters, cfg.n_hits, cfg.images_per_hit, params.seed)
    for cluster in skipped:
        logger.info(
            "cluster %s has fewer than %d images: no intruder HIT hosted by it",
            cluster,
            cfg.images_per_hit - 1,
        )
    if not hits:
        logger.warning("no cluster can host an intruder HIT: evaluation skipped")
        return {"accuracy": None, "n_hits": 0, "per_cluster": [], "skipped": skipped}
    cost = budget.pool_cost(len(hits), cfg.overlap, cfg.reward, params.budget.fee_rate)
    budget.check_budget({"intruders": cost, "total": cost}, params.budget.max_spend)
    (run_dir / "intruder_hits.json").write_text(json.dumps(hits, indent=1))

    skill = skill_id or _find_skill(params)
    values = {**configs.placeholder_values(params), "skill_id": skill}
    bundle = configs.load_bundle(params.toloka_dir)
    ids = intruders.setup_intruders_task(params.toloka, params.resolved_run_key, bundle, values, hits)
    waited = intruders.wait_intruders_task.with_options(retries=params.wait.retries)(
        params.toloka, ids, params.wait.period(params.toloka.environment), params.wait.timeout_seconds
    )
    export = waited["export"]
    results.write_tsv(export, run_dir / "assignments_intruders.tsv")
    result = {**intruders.accuracy(export, hits), "skipped": skipped, "ids": ids}
    result["n_assignments"] = results.n_assignments(export)
    result["spent"] = waited["spent"]
    chart = intruders.bar_chart(result, run_dir / "intruders.png")
    result["chart"] = str(chart) if chart else None
    if chart:
        create_image_artifact(
            image_url=chart.resolve().as_uri(), key="intruder-chart", description="accuracy per cluster"
        )
    logger.info("intruder accuracy %.3f over %d HITs", result["accuracy"] or 0.0, result["n_hits"])
    return result
