"""Aggregation: the export -> long-format labels -> one clustering (numba core in `aggregation/`)."""

from __future__ import annotations

import pandas as pd
from prefect import get_run_logger

import aggregation
from tasks.params import AggregationParams
from tasks.stage import stage_task
from tasks.stages import Aggregated, AggregationInfo, Scores


def aggregate(export: pd.DataFrame, params: AggregationParams, seed: int) -> Aggregated:
    """Clusters (item -> id, 0 = largest), each item's confidence, the embedding, and fit details."""
    reading = aggregation.read_export(export, strict=True)
    for note in reading.notes:  # an export of the user's own (the reaggregate deployment)
        get_run_logger().warning("export: %s", note)
    if reading.unanswered:  # in no cluster: said, so that they can be sent again
        get_run_logger().warning(
            "export: %d image(s) have no answer left (shown only by rejected, skipped, expired or active "
            "assignments) and are in no cluster: %s%s",
            len(reading.unanswered),
            ", ".join(reading.unanswered[:5]),
            ", ..." if len(reading.unanswered) > 5 else "",
        )
    labels = reading.labels
    if params.method == "gomes":
        model = aggregation.CrowdClustering(n_dims=params.n_dims, random_state=seed)
    else:
        model = aggregation.CoAssociationClustering(random_state=seed)
    clusters = model.fit_predict(labels).rename("cluster")
    clusters.index.name = "item"
    free_energy = getattr(model, "free_energy_", None)
    # Only the model's clusters are checked: the camp's grouping is the model's.
    dissent = aggregation.find_dissent(model, labels) if params.method == "gomes" else None
    recheck = aggregation.find_recheck(model, labels)
    from aggregation.crowd_warnings import crowd_warnings  # here: the module loads numba's kernels
    from aggregation.pairs import group_use

    warnings = crowd_warnings(model, labels, recheck, group_use(labels, clusters))
    info = AggregationInfo(
        method=params.method,
        n_labels=len(labels),
        n_hits=int(labels["task"].nunique()),
        n_assignments=len(labels[["task", "worker"]].drop_duplicates()),
        n_workers=int(labels["worker"].nunique()),
        n_clusters=int(clusters.nunique()),
        n_iter=getattr(model, "n_iter_", None),
        free_energy=None if free_energy is None else float(free_energy),
        dissent=None if dissent is None else dissent.summary(),
        recheck=recheck.summary(),
        n_pairwise_labels=model.pairs_.n_labels,  # what `crowdclust aggregate` prints
        unanchored=recheck.unanchored,
        warnings=tuple(warnings),
    )
    confidence = getattr(model, "confidence_", None)
    return Aggregated(
        clusters=clusters,
        embedding=getattr(model, "embedding_", None),
        info=info,
        confidence=None if confidence is None else confidence.reindex(clusters.index).rename("confidence"),
        dissent_clusters=None if dissent is None else dissent.clusters,
        dissent_workers=() if dissent is None else dissent.workers,
        recheck=recheck.table,
    )


def score(clusters: pd.Series, truth: pd.Series | None) -> Scores | None:
    """Agreement with the truth (ARI, NMI, ...) on the items both know; None without truth."""
    if truth is None:
        return None
    return {
        k: int(v) if k == "n_items" else float(v)
        for k, v in aggregation.clustering_scores(clusters, truth).items()
    }


@stage_task(name="aggregate", code=("aggregation",))
def aggregate_task(export: pd.DataFrame, params: AggregationParams, seed: int) -> Aggregated:
    """Prefect adapter of `aggregate` (cached on the export's content and the aggregation code)."""
    result = aggregate(export, params, seed)
    logger = get_run_logger()
    logger.info("aggregation: %s", result.info.describe())
    if result.info.recheck is not None:
        logger.info("images to show again: %s", result.info.recheck)
    if result.info.dissent is not None:
        logger.warning("workers who group another way: %s", result.info.dissent)
    result.info.log_warnings(logger)
    return result
