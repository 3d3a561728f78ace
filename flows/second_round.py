"""The second round: the images only the prior placed, shown again with anchors.

A list of calls like the other flows, shared by the pipeline (one second round per run) and the
growing catalogue (one per catalogue round, after it). The round has its own main pool (role
`tasks.second_round.SECOND_ROUND_POOL`, or `rounds.second_round_role(round)` in a catalogue) in
the main project, behind the same exam and skill; its plan, pool and export are persisted stages
like the first round's, so a run that failed during it resumes without paying twice. The earlier
rounds' exports and this one's are then aggregated together.
"""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
from prefect import get_run_logger

from flows.aggregate import aggregate_rounds
from flows.labelling import collect_labels
from flows.run_names import with_second_round
from tasks import artifacts, budget, results
from tasks.export_format import n_assignments
from tasks.params import PipelineParams
from tasks.run_folder import RunFolder
from tasks.second_round import SECOND_ROUND_POOL, make_plan, pick_images, too_few
from tasks.stages import Aggregated, Labelled


def second_round(
    params: PipelineParams,
    run_key: str,
    earlier: list[pd.DataFrame],
    aggregated: Aggregated,
    folder: RunFolder,
    *,
    share_of: int,
    role: str = SECOND_ROUND_POOL,
    plan_folder: str = "second",
    evaluations_behind: bool = False,
    exam_shared: bool = False,
) -> tuple[Labelled, Aggregated] | None:
    """Label the images `aggregated` listed, then cluster the `earlier` exports and this round's.

    At most `hits.second_round_share` x `share_of` images are shown again (the least confident
    first): `share_of` is the number of images the round that made `aggregated` brought, so a
    round's budget check can count its second round before anything is paid. The HIT plan is kept
    under `rounds/<plan_folder>` of the run folder. None when fewer than a HIT's worth are listed
    (the clustering stands). `evaluations_behind`, `exam_shared`: see `flows.labelling.collect_labels`.
    """
    logger = get_run_logger()
    images = pick_images(aggregated.recheck, params, share_of)
    listed = 0 if aggregated.recheck is None else len(aggregated.recheck)
    n_items = int(aggregated.clusters.size)
    if not images:
        logger.info("second round: none (%s)", too_few(listed, params, share_of))
        return None
    logger.info(
        "second round: %s of the %s images listed (of %s)", f"{len(images):,}", f"{listed:,}", f"{n_items:,}"
    )
    plan = make_plan(images, aggregated.clusters, params)
    second = collect_labels(
        params,
        run_key,
        plan,
        folder.round(plan_folder),
        role,
        evaluations_behind=evaluations_behind,
        exam_shared=exam_shared,
    )
    # Keyed by the pool's analytics read now, as a catalogue's later runs export it (`aggregate_pools`):
    # keyed by the wait, the export was made once more by the next run, which has no wait to give.
    pool = second.ids.main_pool
    export = results.export_task(params.toloka, pool, results.pool_now_task(params.toloka, pool))
    path = folder.write_export(export, "second")
    if second.wait.stopped:
        raise budget.stopped_run(second.wait.stopped, path)
    short = results.unanswered_hits(export, len(plan.hits), second.ids.main_pool)
    if short is not None:
        artifacts.warn_up(short)
    combined = aggregate_rounds(params, [*earlier, export], folder, with_second_round)
    return replace(second, export_path=path, n_assignments=n_assignments(export)), combined
