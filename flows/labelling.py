"""Sub-flow: from a dataset to the accepted assignments of the main pool (deployable alone).

plan HITs -> cost estimate + budget guard -> Toloka objects -> upload -> open, poll with exam
gating, close -> export (raw TSV in the run folder).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from flows.hooks import close_pools_hook
from flows.params import PipelineParams
from tasks import budget, configs, dataset, hits, results, setup, upload, wait
from tasks.connect import resolve_token


def collect_labels(
    params: PipelineParams,
    run_key: str,
    plan: list[list[str]],
    items: list[str],
    out_dir: Path,
    main_pool_role: str = "main-pool",
) -> dict[str, Any]:
    """Coverage, budget guard, Toloka objects, upload, wait with exam gating for one HIT plan.

    Shared by the pipeline (one plan per run) and the catalogue flow (one plan per round, its own
    main pool under `main_pool_role`); `items` are the images whose coverage is reported.
    """
    logger = get_run_logger()
    bundle = configs.load_bundle(params.toloka_dir)
    cover = hits.coverage(plan, items)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "hits.json").write_text(json.dumps({"hits": plan, "coverage": cover}, indent=1))
    summary = {k: v for k, v in cover.items() if k != "per_item"}
    logger.info("HIT plan (%s): %s", params.hits.design, summary)
    create_table_artifact(
        key="hit-coverage",
        table=[{"item": k, "hits": v} for k, v in cover["per_item"].items()],
        description=f"HITs per image: {summary}",
    )

    costs = budget.estimate(params, len(plan))
    logger.info("cost estimate (USD): %s; budget %.2f", costs, params.budget.max_spend)
    budget.check_budget(costs, params.budget.max_spend)

    values = configs.placeholder_values(params)
    ids = setup.setup_labelling_task(
        params.toloka, run_key, bundle, values, params.exam.skill_name, main_pool_role
    )
    upload.upload_hits_task(params.toloka, run_key, ids["main_pool"], plan)
    waited = wait.wait_labelling_task.with_options(retries=params.wait.retries)(
        params.toloka,
        ids,
        bundle["exam_suites"],
        params.exam.n_exams,
        params.wait.period(params.toloka.environment),
        params.wait.timeout_seconds,
    )
    return {"ids": ids, "waited": waited, "costs": costs, "coverage": summary}


@flow(name="crowdclust-labelling", on_failure=[close_pools_hook], on_cancellation=[close_pools_hook])
def labelling(params: PipelineParams) -> dict[str, Any]:
    """Label the dataset with the crowd; returns Toloka ids, the export path, costs and coverage."""
    logger = get_run_logger()
    run_key = params.resolved_run_key
    run_dir = params.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    data = dataset.load_dataset(params.dataset)
    logger.info("run key %s: %d images, configs from %s", run_key, len(data), params.toloka_dir)
    resolve_token(params.toloka)  # fail before anything is planned or created when there is no token

    items = data["image"].tolist()
    plan = hits.plan_hits(items, params.hits, params.seed)
    labelled = collect_labels(params, run_key, plan, items, run_dir)
    export = results.export_task(params.toloka, labelled["ids"]["main_pool"], labelled["waited"])
    export_path = results.write_tsv(export, run_dir / "assignments_main.tsv")
    logger.info("raw export: %s (%d rows)", export_path, len(export))
    return {
        **labelled,
        "run_key": run_key,
        "export_path": str(export_path),
        "n_assignments": results.n_assignments(export),
    }
