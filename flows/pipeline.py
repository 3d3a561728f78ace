"""The end-to-end crowdclust flow: label with the crowd, aggregate, evaluate, report.

Thin on purpose: every stage is a sub-flow or task whose result is persisted with
`INPUTS + TASK_SOURCE`, so a new run with the same parameters after a failure resumes where the
failed one stopped, and Toloka objects are looked up by the run key before anything is created.

Entry point for deployments: `flows/pipeline.py:crowdclust_pipeline`.
"""

from __future__ import annotations

import os
import time
from typing import Any

from prefect import flow, get_run_logger

from flows.aggregate import aggregate_export
from flows.evaluate import evaluate_clusters
from flows.hooks import close_pools_hook
from flows.labelling import labelling
from flows.params import PipelineParams
from tasks import budget, report

FAIL_ENV = "CROWDCLUST_FAIL_AT"  # test hook: "after-labelling" | "after-aggregation" forces a failure


class ForcedFailure(RuntimeError):
    """Raised at a stage named in CROWDCLUST_FAIL_AT (used by the resume tests)."""


def _checkpoint(stage: str) -> None:
    if os.environ.get(FAIL_ENV) == stage:
        raise ForcedFailure(f"forced failure {stage} ({FAIL_ENV})")


@flow(
    name="crowdclust-pipeline",
    on_failure=[close_pools_hook],
    on_cancellation=[close_pools_hook],
)
def crowdclust_pipeline(params: PipelineParams) -> dict[str, Any]:
    """Cluster `params.dataset` with the crowd end to end; returns the summary (also in summary.json)."""
    logger = get_run_logger()
    started = time.monotonic()
    timings: dict[str, float] = {}

    def lap(stage: str, since: float) -> float:
        now = time.monotonic()
        timings[stage] = round(now - since, 1)
        return now

    t = time.monotonic()
    labelled = labelling(params)
    t = lap("labelling", t)
    _checkpoint("after-labelling")

    aggregated = aggregate_export(
        out_dir=params.run_dir,
        export=labelled["export_path"],
        aggregation=params.aggregation,
        seed=params.seed,
        dataset=params.dataset,
    )
    t = lap("aggregation", t)
    _checkpoint("after-aggregation")

    evaluated = None
    if params.intruders.enabled:
        evaluated = evaluate_clusters(params, skill_id=labelled["ids"]["skill"])
        t = lap("intruders", t)

    cost = {"spent": budget.spent(params, labelled, evaluated), "estimate": labelled["costs"]}
    extra = {
        "run_key": labelled["run_key"],
        "toloka_ids": labelled["ids"],
        "coverage": labelled["coverage"],
        "aggregation": aggregated["info"],
        "timings": timings,
    }
    data = report.finish_run(params, aggregated, evaluated, cost, time.monotonic() - started, extra)
    logger.info(
        "done: %d clusters, ARI %s, intruder accuracy %s, cost $%.2f, %.0f s; report %s",
        data["clusters"],
        data["ari"],
        data["intruder_accuracy"],
        cost["spent"],
        data["wall_seconds"],
        data["report"],
    )
    return data
