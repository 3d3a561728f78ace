"""Sub-flow: aggregate an export into clusters (deployable alone: re-aggregate with other settings).

Input is either a raw export TSV (as written to the run folder) or a pool id to export from.
Writes `clusters.csv` (item, cluster[, class]) and, with truth, `metrics.json` next to it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger

from flows.params import AggregationParams, TolokaTarget
from tasks import aggregate as agg
from tasks import dataset as ds
from tasks import results


@flow(name="crowdclust-aggregate")
def aggregate_export(
    out_dir: Path,
    export: Path | None = None,
    pool_id: str | None = None,
    toloka: TolokaTarget | None = None,
    aggregation: AggregationParams | None = None,
    seed: int = 0,
    dataset: Path | None = None,
) -> dict[str, Any]:
    """Cluster the accepted answers of `export` (TSV) or of pool `pool_id`; score against `dataset` truth."""
    logger = get_run_logger()
    aggregation = aggregation or AggregationParams()
    out_dir.mkdir(parents=True, exist_ok=True)
    if export is not None:
        frame = pd.read_csv(export, sep="\t")
    elif pool_id is not None:
        frame = results.export_task(toloka or TolokaTarget(), pool_id)
        results.write_tsv(frame, out_dir / "assignments_main.tsv")
    else:
        raise ValueError("aggregate_export needs `export` (a TSV path) or `pool_id`")
    result = agg.aggregate_task(frame, aggregation, seed, agg._version())
    clusters: pd.Series = result["clusters"]
    truth = ds.truth_of(ds.load_dataset(dataset)) if dataset is not None else None
    table = clusters.reset_index()
    if truth is not None:
        table["class"] = table["item"].map(truth)
    table.sort_values(["cluster", "item"]).to_csv(out_dir / "clusters.csv", index=False)
    if result.get("embedding") is not None:
        pd.DataFrame(result["embedding"]).to_csv(out_dir / "embedding.csv")
    metrics = agg.score(clusters, truth)
    if metrics is not None:
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        logger.info("against the truth: ARI %.3f, NMI %.3f", metrics["ari"], metrics["nmi"])
    logger.info("%d clusters, sizes %s", clusters.nunique(), clusters.value_counts().sort_index().tolist())
    return {"clusters": clusters, "metrics": metrics, "info": result["info"], "truth": truth}
