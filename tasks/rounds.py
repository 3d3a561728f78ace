"""Rounds of a growing catalogue: what Toloka already labelled, and the HIT plan of the next round.

Toloka is the source of truth, not a local file that could be lost: every round has its own main
pool tagged `crowdclust:<catalogue key>:main-pool-<round key>` in the catalogue's main project, and
an item counts as clustered once it sits in a suite of a round pool that completed. The next round
is every catalogue item that is not clustered yet; its key is a digest of those items, so a round
that failed and is run again (same catalogue) finds its own pool instead of opening another one.

A round's HITs mix new items with anchors: already-clustered items picked round-robin across the
current clusters (seeded), so the new labels connect the new items to the old clusters.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.params import HitParams, TolokaTarget
from tasks.caching import toloka_retries
from tasks.connect import make_client
from tasks.hits import plan_hits
from tasks.setup import tag
from tasks.wait import is_completed

ROUND_ROLE = "main-pool-"


def round_key(items: list[str]) -> str:
    """Digest of a round's new items (order-free): the same new items always make the same round."""
    return hashlib.sha256("\n".join(sorted(items)).encode()).hexdigest()[:12]


def find_rounds(client: Any, catalogue_key: str) -> list[dict[str, Any]]:
    """Every round pool of the catalogue, oldest first: id, round key, completed, the items it holds.

    Read-only: a catalogue that was never labelled (no main project yet) has no rounds.
    """
    project_tag = tag(catalogue_key, "main-project")
    pool_prefix = tag(catalogue_key, ROUND_ROLE)
    rounds = []
    for project in client.get_projects(status="ACTIVE"):
        if project.private_comment != project_tag:
            continue
        for pool in client.get_pools(project_id=project.id):
            comment = str(pool.private_comment or "")
            if not comment.startswith(pool_prefix):
                continue
            items = {
                image
                for suite in client.get_task_suites(pool_id=pool.id)
                for t in suite.tasks
                for image in t.input_values["images"]
            }
            rounds.append(
                {
                    "pool_id": str(pool.id),
                    "round": comment[len(pool_prefix) :],
                    "completed": is_completed(pool),
                    "created": str(pool.created),
                    "items": sorted(items),
                }
            )
    return sorted(rounds, key=lambda r: (r["created"], r["pool_id"]))


@task(name="catalogue-state", cache_policy=NO_CACHE, **toloka_retries())
def catalogue_state_task(target: TolokaTarget, catalogue_key: str) -> list[dict[str, Any]]:
    """The catalogue's rounds as Toloka sees them now (never cached: it is the question of each run)."""
    rounds = find_rounds(make_client(target), catalogue_key)
    get_run_logger().info(
        "catalogue %s: %d round pools (%d completed)",
        catalogue_key,
        len(rounds),
        sum(r["completed"] for r in rounds),
    )
    return rounds


def with_round(
    state: list[dict[str, Any]], round_id: str, pool_id: str, plan: list[list[str]]
) -> list[dict[str, Any]]:
    """`state` (from `find_rounds`) once this run's round pool completed with the HITs of `plan`.

    Saves listing every suite of every round pool a second time just to show the table again.
    """
    done = {
        "pool_id": pool_id,
        "round": round_id,
        "completed": True,
        "items": sorted({x for h in plan for x in h}),
    }
    if any(entry["pool_id"] == pool_id for entry in state):
        return [{**entry, **done} if entry["pool_id"] == pool_id else entry for entry in state]
    return [*state, done]


def pick_anchors(clusters: pd.Series, n_hits: int, per_hit: int, rng: np.random.Generator) -> list[list[str]]:
    """`per_hit` distinct clustered items per HIT, taken round-robin over clusters in a random order.

    Consecutive slots visit different clusters, so a HIT's anchors come from `per_hit` clusters and
    every cluster gets anchors across the round (small clusters as often as large ones).
    """
    groups = [sorted(str(i) for i in members.index) for _, members in clusters.groupby(clusters)]
    order = rng.permutation(len(groups))
    per_hit = min(per_hit, len(clusters))
    hits: list[list[str]] = []
    slot = 0
    for _ in range(n_hits):
        chosen: list[str] = []
        while len(chosen) < per_hit:
            members = groups[order[slot % len(groups)]]
            slot += 1
            candidates = [m for m in members if m not in chosen]
            if candidates:
                chosen.append(candidates[int(rng.integers(len(candidates)))])
        hits.append(chosen)
    return hits


def plan_round(
    new_items: list[str],
    clusters: pd.Series | None,
    params: HitParams,
    seed: int,
    anchors_per_hit: int,
) -> list[list[str]]:
    """HITs of `params.size` images: new items (each in `hits_per_item` HITs) plus anchors.

    The first round (no clusters) is the ordinary plan. Later rounds plan the new items into HITs of
    `size - anchors_per_hit` and top each HIT up with anchors; with very few new items the HITs hold
    all of them and more anchors.
    """
    new_items = sorted(dict.fromkeys(new_items))
    if clusters is None or clusters.empty:
        return plan_hits(new_items, params, seed)
    rng = np.random.default_rng([seed, int(round_key(new_items), 16)])
    n_new = min(params.size - min(anchors_per_hit, params.size - 1), len(new_items))
    if n_new >= 2:
        cores = plan_hits(new_items, params.model_copy(update={"size": n_new}), seed)
    else:
        cores = [list(new_items) for _ in range(params.hits_per_item)]
    anchors = pick_anchors(clusters, len(cores), params.size - n_new, rng)
    return [core + extra for core, extra in zip(cores, anchors, strict=True)]
