"""Recurring clustering of a growing catalogue: one crowd round per run for the items not yet labelled.

A run (typically scheduled) reads the catalogue file and asks Toloka which items its completed round
pools already hold (`tasks.rounds`). The rest are the round's new items; they go into HITs mixed
with anchors from the current clusters, into a main pool of their own, with the usual coverage.
The catalogue's other Toloka objects (exam project, training, exam pool, skill, main project, the
intruders project) are shared by all rounds, found by the catalogue key. Aggregation then runs on
the exports of *all* completed round pools, so every label bought so far is used.

An unchanged catalogue means no new items: no Toloka object is created, the exports and the
aggregation come back Cached (same inputs), and the intruder evaluation of an unchanged clustering
is Cached too (its HITs, hence its pool, are derived from the clusters). Evaluation therefore runs
on every run and only costs money when the clustering changed.

Entry point for deployments: `flows/catalogue.py:cluster_catalogue`.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.aggregate import aggregate_export
from flows.evaluate import evaluate_clusters
from flows.hooks import CATALOGUE_FLOW, close_pools_hook
from flows.labelling import collect_labels
from flows.params import PipelineParams
from tasks import budget, dataset, report, results, rounds
from tasks.connect import resolve_token


def aggregate_pools(params: PipelineParams, pool_ids: list[str], out_dir: Path) -> dict[str, Any]:
    """Cluster the concatenated accepted answers of `pool_ids` (completed pools: exports are final).

    Besides the aggregation result: `n_assignments`, pool id -> accepted assignments in its export.
    """
    frames = {pool_id: results.export_task(params.toloka, pool_id) for pool_id in pool_ids}
    path = results.write_tsv(pd.concat(frames.values(), ignore_index=True), out_dir / "assignments_all.tsv")
    get_run_logger().info(
        "aggregating %d answers of %d round pools (%s, sha256 %s)",
        sum(len(f) for f in frames.values()),
        len(pool_ids),
        path,
        hashlib.sha256(path.read_bytes()).hexdigest()[:12],
    )
    aggregated = aggregate_export(
        out_dir=out_dir,
        export=path,
        aggregation=params.aggregation,
        seed=params.seed,
        dataset=params.dataset,
    )
    return {**aggregated, "n_assignments": {pool: results.n_assignments(f) for pool, f in frames.items()}}


def _round_table(state: list[dict[str, Any]], labelled_now: str | None) -> str:
    lines = ["| round | pool | items | status |", "|---|---|---|---|"]
    for entry in state:
        status = "completed" if entry["completed"] else "not completed"
        lines.append(f"| {entry['round']} | {entry['pool_id']} | {len(entry['items'])} | {status} |")
    if labelled_now:
        lines.append(f"\nRound `{labelled_now}` was labelled by this run.")
    return "\n".join(lines)


@flow(name=CATALOGUE_FLOW, on_failure=[close_pools_hook], on_cancellation=[close_pools_hook])
def cluster_catalogue(
    params: PipelineParams,
    anchors_per_hit: int = 3,
) -> dict[str, Any]:
    """Label the catalogue's new items (if any) in one round, re-cluster with all labels, evaluate.

    Args:
        params: the catalogue's parameters; `run_key` is the catalogue key (default `<name>-s<seed>`),
            `dataset` the catalogue file, re-read on every run.
        anchors_per_hit: already-clustered images added to every HIT of a later round.
    """
    logger = get_run_logger()
    started = time.monotonic()
    key = params.catalogue_key
    params = params.model_copy(update={"run_key": key})  # sub-flows (intruders) share the catalogue key
    params.run_dir.mkdir(parents=True, exist_ok=True)
    catalogue = dataset.load_dataset(params.dataset)["image"].tolist()
    resolve_token(params.toloka)

    state = rounds.catalogue_state_task(params.toloka, key)
    clustered = {item for entry in state if entry["completed"] for item in entry["items"]}
    done_pools = [entry["pool_id"] for entry in state if entry["completed"]]
    new_items = sorted(set(catalogue) - clustered)
    logger.info(
        "catalogue %s: %d items, %d already clustered, %d new",
        key,
        len(catalogue),
        len(set(catalogue) & clustered),
        len(new_items),
    )

    labelled = None
    round_id = None
    if new_items:
        round_id = rounds.round_key(new_items)
        before = aggregate_pools(params, done_pools, params.run_dir / "before-round") if done_pools else None
        plan = rounds.plan_round(
            new_items, before["clusters"] if before else None, params.hits, params.seed, anchors_per_hit
        )
        labelled = collect_labels(
            params,
            key,
            plan,
            new_items,
            params.run_dir / "rounds" / round_id,
            f"{rounds.ROUND_ROLE}{round_id}",
        )
        done_pools.append(labelled["ids"]["main_pool"])
        state = rounds.with_round(state, round_id, labelled["ids"]["main_pool"], plan)
    aggregated = aggregate_pools(params, done_pools, params.run_dir)
    evaluated = None
    if params.intruders.enabled:
        evaluated = evaluate_clusters(params, skill_id=labelled["ids"]["skill"] if labelled else None)

    if labelled is not None:
        labelled["n_assignments"] = aggregated["n_assignments"][labelled["ids"]["main_pool"]]
    cost = {
        "spent": budget.spent(params, labelled, evaluated if labelled else None),
        "estimate": labelled["costs"] if labelled else None,
    }
    create_markdown_artifact(
        key="catalogue-rounds",
        markdown=_round_table(state, round_id),
        description=f"rounds of catalogue {key}",
    )
    extra = {
        "catalogue_key": key,
        "n_items": len(catalogue),
        "new_items": len(new_items),
        "round": round_id,
        "round_pools": done_pools,
        "toloka_ids": labelled["ids"] if labelled else None,
        "coverage": labelled["coverage"] if labelled else None,
        "aggregation": aggregated["info"],
    }
    data = report.finish_run(params, aggregated, evaluated, cost, time.monotonic() - started, extra)
    logger.info(
        "catalogue %s: %s; %d clusters over %d rounds, ARI %s, spent $%.2f this run",
        key,
        f"round {round_id} labelled ({len(new_items)} new items)" if round_id else "no new items",
        data["clusters"],
        len(done_pools),
        data["ari"],
        cost["spent"],
    )
    return data
