"""Rounds of a growing catalogue: what Toloka already labelled, and the HIT plan of the next round.

Toloka is the source of truth, not a local file that could be lost: every round has its own main
pool (role `main-pool-<round key>`) in the catalogue's main project, and an item counts as
clustered once it sits in a suite of a round pool that completed. The next round is every
catalogue item that is not clustered yet; its key is a digest of those items, so a round that
failed and is run again (same catalogue) finds its own pool instead of opening another one.

A round's HITs mix new items with anchors: already-clustered items picked round-robin across the
current clusters (seeded), so the new labels connect the new items to the old clusters.

With `hits.second_round_share`, a round is followed by a second round over the images only the
prior placed (`flows.second_round`), in a pool of its own whose role names the round it follows
(`second_round_role`): Toloka then tells which rounds had theirs, and a second round that failed
finds its pool again.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np
import pandas as pd
from prefect import get_run_logger

from aggregation.addresses import image_address
from tasks.hits import plan_hits
from tasks.params import HitParams, TolokaTarget
from tasks.second_round import SECOND_ROUND_POOL
from tasks.stage import stage_task
from tasks.stages import RoundState
from tasks.toloka_api import RunRegistry, make_client

ROUND_ROLE = "main-pool-"
SECOND_ROUND_ROLE = f"{SECOND_ROUND_POOL}-"


def second_round_role(round_id: str) -> str:
    """Pool role of the second round that follows catalogue round `round_id`."""
    return f"{SECOND_ROUND_ROLE}{round_id}"


def round_key(items: list[str]) -> str:
    """Digest of a round's new items (order-free): the same new items always make the same round."""
    return hashlib.sha256("\n".join(sorted(items)).encode()).hexdigest()[:12]


@stage_task(name="catalogue-state", toloka=True, cache=False)
def catalogue_state_task(
    target: TolokaTarget, catalogue_key: str
) -> tuple[list[RoundState], list[RoundState]]:
    """The catalogue's round pools and its second rounds' pools as Toloka sees them now (never
    cached: it is the question of each run)."""
    found = RunRegistry(make_client(target), catalogue_key).rounds(
        "main-project", ROUND_ROLE, SECOND_ROUND_ROLE
    )
    rounds, seconds = found[ROUND_ROLE], found[SECOND_ROUND_ROLE]
    get_run_logger().info(
        "catalogue %s: %d round pools (%d completed), %d second-round pools (%d completed)",
        catalogue_key,
        len(rounds),
        sum(r.completed for r in rounds),
        len(seconds),
        sum(r.completed for r in seconds),
    )
    return rounds, seconds


def round_to_follow(state: list[RoundState], seconds: list[RoundState], share: float) -> str | None:
    """The round a second round should follow now, or None.

    The newest completed round, unless its second round completed (then it had it) or `share` is 0.
    A second round that did not complete (a run that failed during it) is followed again: its pool,
    found by its role, is resumed, not paid twice.

    >>> one, two = RoundState("p1", "a", True, "t1", ()), RoundState("p2", "b", True, "t2", ())
    >>> round_to_follow([one, two], [], 0.3), round_to_follow([one, two], [], 0.0)
    ('b', None)
    >>> failed = RoundState("p3", "b", False, "t3", ())
    >>> done = replace(failed, completed=True)
    >>> round_to_follow([one, two], [failed], 0.3), round_to_follow([one, two], [done], 0.3)
    ('b', None)
    """
    latest = next((entry.round for entry in reversed(state) if entry.completed), None)
    followed = any(entry.round == latest and entry.completed for entry in seconds)
    return latest if share > 0 and not followed else None


def respelled(items: list[str], clustered: set[str]) -> dict[str, str]:
    """The `items` that are clustered images under another spelling of their URL (as a web server
    sees them, `aggregation.addresses.image_address`): item -> the spelling that was clustered.

    A catalogue file rewritten with %-encoded URLs made its images new again: the next round paid
    the crowd to label them a second time and clusters.csv listed each picture twice.

    >>> respelled(["http://h/a%20b.png", "http://h/c.png"], {"http://h/a b.png"})
    {'http://h/a%20b.png': 'http://h/a b.png'}
    """
    by_address = {image_address(url): url for url in sorted(clustered)}
    return {item: by_address[address] for item in items if (address := image_address(item)) in by_address}


def round_to_resume(
    state: list[RoundState], clustered: set[str], catalogue: set[str]
) -> tuple[str, list[str]] | None:
    """The oldest round pool that did not complete and can go on as planned, with its new items.

    A round's new items are the items of its pool not clustered yet; while they are what made its
    key and all still in the catalogue, the round's plan (and so its pool and HITs) comes out the
    same, so the pool goes on where it stopped. Without this, a round the budget or the balance
    stopped was given up as soon as images were added: its items went into a new round with the
    added ones, paid again, and its paid answers were never clustered.

    >>> stopped = RoundState("p2", round_key(["x", "y"]), False, "t2", ("a", "x", "y"))
    >>> round_to_resume([stopped], {"a"}, {"a", "x", "y", "z"})
    ('9ab9de25768a', ['x', 'y'])
    >>> round_to_resume([stopped], {"a"}, {"a", "x", "z"}) is None  # y was removed from the file
    True
    """
    for entry in state:
        items = sorted(set(entry.items) - clustered)
        if not entry.completed and items and round_key(items) == entry.round and set(items) <= catalogue:
            return entry.round, items
    return None


def new_items_of(state: list[RoundState], round_id: str) -> int:
    """How many items round `round_id` brought: its items less those of the completed rounds before it.

    >>> old = RoundState("p1", "a", True, "t1", ("x", "y"))
    >>> new = RoundState("p2", "b", True, "t2", ("x", "z", "w"))  # x: an anchor
    >>> new_items_of([old, new], "b"), new_items_of([old, new], "a")
    (2, 2)
    """
    before: set[str] = set()
    for entry in state:
        if entry.round == round_id:
            return len(set(entry.items) - before)
        if entry.completed:
            before.update(entry.items)
    raise KeyError(f"no round {round_id!r} in the catalogue's state")


def with_round(
    state: list[RoundState], round_id: str, pool_id: str, plan: list[list[str]], completed: bool = True
) -> list[RoundState]:
    """`state` once this run's round pool completed (or, `completed=False`, stopped) with the HITs
    of `plan`.

    Saves listing every suite of every round pool a second time just to show the table again.
    """
    items = tuple(sorted({x for h in plan for x in h}))
    if any(entry.pool_id == pool_id for entry in state):
        done = {"round": round_id, "completed": completed, "items": items}
        return [replace(entry, **done) if entry.pool_id == pool_id else entry for entry in state]
    return [*state, RoundState(pool_id=pool_id, round=round_id, completed=completed, created="", items=items)]


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
