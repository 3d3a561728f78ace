"""Aggregation: the export -> long-format labels -> one clustering (numba core in `aggregation/`)."""

from __future__ import annotations

import sys
from typing import Any

import pandas as pd
from prefect import get_run_logger, task

from flows.params import AggregationParams
from tasks.caching import cached, source_version


def aggregate_export(export: pd.DataFrame, params: AggregationParams, seed: int) -> dict[str, Any]:
    """Clusters (item -> id, 0 = largest), the embedding when the model has one, and fit details."""
    import aggregation

    reading = aggregation.read_export(export, strict=True)
    labels = reading.labels
    if params.method == "crowd":
        model = aggregation.CrowdClustering(n_dims=params.n_dims, random_state=seed)
    else:
        model = aggregation.CoAssociationClustering(random_state=seed)
    clusters = model.fit_predict(labels).rename("cluster")
    clusters.index.name = "item"
    info = {
        "method": params.method,
        "n_labels": len(labels),
        "n_hits": int(labels["task"].nunique()),
        "n_assignments": len(labels[["task", "worker"]].drop_duplicates()),
        "n_workers": int(labels["worker"].nunique()),
        "n_clusters": int(clusters.nunique()),
        "n_iter": getattr(model, "n_iter_", None),
        "free_energy": _float(getattr(model, "free_energy_", None)),
    }
    embedding = getattr(model, "embedding_", None)
    return {"clusters": clusters, "embedding": embedding, "info": info}


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def score(clusters: pd.Series, truth: pd.Series | None) -> dict[str, Any] | None:
    """Agreement with the truth (ARI, NMI, ...) on the items both know; None without truth."""
    if truth is None:
        return None
    import aggregation

    return {
        k: _float(v) if k != "n_items" else int(v)
        for k, v in aggregation.clustering_scores(clusters, truth).items()
    }


def _version() -> str:
    import aggregation

    return source_version(aggregation, sys.modules[__name__])


@task(name="aggregate", **cached())
def aggregate_task(
    export: pd.DataFrame, params: AggregationParams, seed: int, code_version: str
) -> dict[str, Any]:
    """Prefect adapter of `aggregate_export` (cached on the export's content and the code version)."""
    result = aggregate_export(export, params, seed)
    get_run_logger().info("aggregation: %s", result["info"])
    return result
