"""The pipeline's second round: the images only the prior placed, shown again with anchors.

A list of calls like the other flows. The round has its own main pool (role
`tasks.second_round.SECOND_ROUND_POOL`) in the run's main project, behind the same exam and
skill; its plan, pool and export are persisted stages like the first round's, so a run that
failed during it resumes without paying twice. Both rounds' exports are then aggregated together.
"""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
from prefect import get_run_logger

from flows.aggregate import aggregate_rounds
from flows.labelling import collect_labels
from tasks import budget, results
from tasks.export_format import n_assignments
from tasks.params import PipelineParams
from tasks.run_folder import RunFolder
from tasks.second_round import SECOND_ROUND_POOL, make_plan, pick_images
from tasks.stages import Aggregated, Labelled


def second_round(
    params: PipelineParams, first: Labelled, aggregated: Aggregated, folder: RunFolder
) -> tuple[Labelled, Aggregated] | None:
    """Label the images the first aggregation listed, then cluster both rounds' answers.

    None when fewer than a HIT's worth are listed (the first clustering stands).
    """
    logger = get_run_logger()
    n_items = int(aggregated.clusters.size)
    images = pick_images(aggregated.recheck, params, n_items)
    listed = 0 if aggregated.recheck is None else len(aggregated.recheck)
    if not images:
        logger.info("second round: none (%d images listed, fewer than a HIT of %d)", listed, params.hits.size)
        return None
    logger.info("second round: %d of the %d images listed (of %d)", len(images), listed, n_items)
    plan = make_plan(images, aggregated.clusters, params)
    second = collect_labels(params, first.run_key, plan, folder.round("second"), SECOND_ROUND_POOL)
    export = results.export_task(params.toloka, second.ids.main_pool, second.wait)
    path = folder.write_export(export, "second")
    if second.wait.stopped:
        raise budget.SpendGuardStopped(f"{second.wait.stopped}; accepted answers: {path}")
    assert first.export_path is not None  # the first round's export was written before aggregating it
    combined = aggregate_rounds(params, [pd.read_csv(first.export_path, sep="\t"), export], folder)
    return replace(second, export_path=path, n_assignments=n_assignments(export)), combined
