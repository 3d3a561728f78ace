"""Sub-flow: aggregate an export into clusters (deployable alone: re-aggregate with other settings).

Input is either a raw export TSV (as written to the run folder) or a pool id to export from.
Writes `clusters.csv` (item, cluster, confidence[, class]), with truth `metrics.json`, and the
galleries' thumbnails (`thumbnails.json`, fetched once here from the image URLs) into `out_dir`;
started on its own, it shows the clusters in its own artifacts (`cluster-galleries`,
`aggregation-metrics`).
`toloka` also says where a `local` run's images are served (its emulator).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger

from flows.run_names import by_run_folder
from tasks import aggregate as agg
from tasks import artifacts, export_format, results, thumbnails
from tasks import dataset as ds
from tasks.params import AggregationParams, PipelineParams, TolokaTarget
from tasks.run_folder import RunFolder
from tasks.run_log import root_run_of_a_subflow
from tasks.stages import Aggregated, sizes_shown, truth_share


@flow(name="crowdclust-aggregate", flow_run_name=by_run_folder)
def aggregate_export(
    out_dir: Path,
    export: Path | None = None,
    pool_id: str | None = None,
    toloka: TolokaTarget | None = None,
    aggregation: AggregationParams | None = None,
    seed: int = 0,
    dataset: Path | None = None,
) -> Aggregated:
    """Cluster the accepted answers of pool `pool_id` or of `export` (TSV); score against `dataset` truth.

    A pool id wins over an export: the `reaggregate` deployment has a default `export`, and a user
    who names a pool in the run form means that pool (before, the default export was clustered
    instead, silently, another run's answers).
    """
    logger = get_run_logger()
    folder = RunFolder(out_dir).create()
    if pool_id is not None:
        if export is not None:
            logger.warning("pool_id %s given: clustering its answers, not the export %s", pool_id, export)
        target = toloka or TolokaTarget()
        now = results.pool_now_task(target, pool_id)
        done = now.completion_percentage
        if done is None or done < 100:
            logger.warning(
                "pool %s is %s complete: clustering the answers accepted so far",
                pool_id,
                "not known to be" if done is None else f"{done:.0f}%",
            )
        frame = results.export_task(target, pool_id, now)
        folder.write_export(frame, "main")
    elif export is not None:
        frame = export_format.read_export_file(export)
    else:
        raise ValueError("aggregate_export needs `export` (a TSV path) or `pool_id`")
    result = agg.aggregate_task(frame, aggregation or AggregationParams(), seed)
    truth = ds.truth_of(ds.load_dataset(dataset)) if dataset is not None else None
    truth = ds.truth_for(truth, result.clusters.index)  # an image the file spells otherwise keeps its class
    result = replace(result, truth=truth, metrics=agg.score(result.clusters, truth))
    folder.write_clustering(result)
    thumbs, unfetched = thumbnails.for_galleries(result, toloka)
    folder.write_thumbnails(thumbs)
    logger.info(
        "%s embedded for the galleries (%s KB)",
        artifacts.counted(len(thumbs), "thumbnail"),
        f"{sum(map(len, thumbs.values())) // 1024:,}",
    )
    if unfetched:
        logger.warning(thumbnails.unfetched_line(unfetched))
    if result.metrics is not None:
        logger.info(
            "against the truth: ARI %.3f, NMI %.3f%s",
            result.metrics["ari"],
            result.metrics["nmi"],
            truth_share(result.metrics, len(result.clusters)),
        )
    sizes = result.clusters.value_counts().sort_index().tolist()  # cluster 0 the largest
    logger.info("%s clusters, sizes %s", f"{result.info.n_clusters:,}", sizes_shown(sizes))
    if root_run_of_a_subflow() is None:  # started on its own: no run above it shows the clusters
        artifacts.aggregation_alone(result, thumbs, folder.root)
    return result


def aggregate_rounds(
    params: PipelineParams,
    exports: list[pd.DataFrame],
    folder: RunFolder,
    run_name: Callable[[], str] = by_run_folder,
) -> Aggregated:
    """Cluster several rounds' accepted answers together (a catalogue's round pools, a run's two rounds).

    They are concatenated into the run folder's `all` export first, so what was clustered is on disk.
    `run_name` names the aggregation's flow run (`flows.run_names.with_second_round` for the one a
    second round ends with).
    """
    path = folder.write_export(pd.concat(exports, ignore_index=True), "all")
    get_run_logger().info(
        "aggregating %s of %s (%s, sha256 %s)",
        artifacts.counted(sum(len(frame) for frame in exports), "answer"),
        artifacts.counted(len(exports), "round"),
        path,
        hashlib.sha256(path.read_bytes()).hexdigest()[:12],
    )
    return aggregate_export.with_options(flow_run_name=run_name)(
        out_dir=folder.root,
        export=path,
        toloka=params.toloka,
        aggregation=params.aggregation,
        seed=params.seed,
        dataset=params.dataset,
    )
