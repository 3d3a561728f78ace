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
from tasks import report

FAIL_ENV = "CROWDCLUST_FAIL_AT"  # test hook: "after-labelling" | "after-aggregation" forces a failure


class ForcedFailure(RuntimeError):
    """Raised at a stage named in CROWDCLUST_FAIL_AT (used by the resume tests)."""


def _checkpoint(stage: str) -> None:
    if os.environ.get(FAIL_ENV) == stage:
        raise ForcedFailure(f"forced failure {stage} ({FAIL_ENV})")


def _spent(params: PipelineParams, labelled: dict[str, Any], evaluated: dict[str, Any] | None) -> float:
    """Money paid: Toloka's `spent_budget` per pool, or accepted assignments x reward x (1 + fee)."""
    fee = 1.0 + params.budget.fee_rate
    reported = labelled["waited"].get("spent") or {}
    exams = labelled["waited"].get("exams", {}).get("accepted", 0)
    parts = [
        reported.get("main") or labelled["n_assignments"] * params.hits.reward * fee,
        reported.get("exam") or exams * params.exam.reward * fee,
    ]
    if evaluated:
        parts.append(
            evaluated.get("spent") or evaluated.get("n_assignments", 0) * params.intruders.reward * fee
        )
    return round(sum(parts), 4)


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

    clusters = aggregated["clusters"]
    cost = {"spent": _spent(params, labelled, evaluated), "estimate": labelled["costs"]}
    data = report.summary(
        clusters=clusters,
        metrics=aggregated["metrics"],
        intruders=evaluated,
        cost=cost,
        wall_seconds=time.monotonic() - started,
        report_path=params.run_dir / "report.html",
        extra={
            "run_key": labelled["run_key"],
            "toloka_ids": labelled["ids"],
            "coverage": labelled["coverage"],
            "aggregation": aggregated["info"],
            "timings": timings,
            "summary": str(params.run_dir / "summary.json"),
        },
    )
    sources = None
    if params.toloka.environment == "local" and params.toloka.url:  # the emulator stops after the run
        sources = report.inline_images(report.shown_images(clusters), params.toloka.url)
    report_path, _ = report.write_outputs(
        params.run_dir,
        data,
        clusters,
        aggregated["truth"],
        params.run_dir / "intruders.png" if evaluated and evaluated.get("chart") else None,
        f"crowdclust: {params.name}",
        sources,
    )
    report.publish_artifacts(data, clusters, report_path)
    logger.info(
        "done: %d clusters, ARI %s, intruder accuracy %s, cost $%.2f, %.0f s; report %s",
        data["clusters"],
        data["ari"],
        data["intruder_accuracy"],
        cost["spent"],
        data["wall_seconds"],
        report_path,
    )
    return data
