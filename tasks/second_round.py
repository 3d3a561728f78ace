"""The second round of a run: which images it shows again, in which HITs, under which pool role.

After the first aggregation the images only the prior placed (`aggregation.recheck`: outside
their cluster's largest piece of pairs most workers put together, or below confidence 0.5) are
shown again, in a main pool of their own with the same HIT size, HITs per image and overlap:
among themselves, plus two anchors per HIT from the linked pieces of their clusters
(`aggregation.followup.plan`). They are mostly the small styles' images, which the whole
catalogue diluted, so among themselves they meet their own style far more often; the anchors tie
each piece to its cluster or say it does not belong there.
"""

from __future__ import annotations

import math

import pandas as pd

from aggregation import followup
from tasks.hits import coverage
from tasks.params import PipelineParams
from tasks.stages import HitPlan

SECOND_ROUND_POOL = "second-round-pool"  # the pool role: its own, so its spend is told apart


def pool_name(role: str) -> str:
    """What the labelling pool of `role` is called in log lines and progress artifacts: the
    second-round pool, or the main pool (a run's, or a catalogue round's).

    The second round's setup lines called it "main pool 7" (`labelling objects: ..., main pool 7`,
    `main pool 7 holds the 4 planned HITs`) while its poll lines said "second-round pool 7".
    """
    return "second-round pool" if role.startswith(SECOND_ROUND_POOL) else "main pool"


def most_images(params: PipelineParams, n_items: int) -> int:
    """The most images a second round may show again (0 when there is no second round)."""
    return math.floor(params.hits.second_round_share * n_items + 1e-9)


def pick_images(recheck: pd.DataFrame | None, params: PipelineParams, n_items: int) -> list[str]:
    """The images to show again, sorted: the listed ones, the least confident first up to the cap.

    Fewer than fill a HIT beside its anchors (`followup.fills_a_hit`) give no round (an empty list).

    >>> confidence = [0.9, 0.2, 0.9, 0.4]
    >>> table = pd.DataFrame({"item": list("abcd"), "cluster": [0, 0, 1, 1], "confidence": confidence})
    >>> from tasks.params import HitParams
    >>> params = PipelineParams.model_construct(hits=HitParams(size=2, second_round_share=0.3))
    >>> pick_images(table, params, 10)
    ['b', 'd', 'a']
    """
    if recheck is None:
        return []
    chosen = recheck.sort_values(["confidence", "item"], kind="mergesort").head(most_images(params, n_items))
    return chosen["item"].tolist() if followup.fills_a_hit(len(chosen), params.hits.size) else []


def too_few(listed: int, params: PipelineParams, n_items: int) -> str:
    """Why `listed` images of `n_items` give no second round, for its log line: too few listed, or
    too few under the cap `hits.second_round_share` puts on them.

    >>> from tasks.params import HitParams
    >>> too_few(7, PipelineParams.model_construct(hits=HitParams(size=10, second_round_share=0.5)), 82)
    '7 images listed, fewer than the 8 a HIT of 10 holds beside its 2 anchors'
    >>> capped = PipelineParams.model_construct(hits=HitParams(size=10, second_round_share=0.05))
    >>> too_few(30, capped, 82).split(", fewer")[0]
    '30 images listed, at most 4 shown again (hits.second_round_share 0.05)'
    >>> too_few(1, PipelineParams.model_construct(hits=HitParams(size=3, second_round_share=0.5)), 82)
    '1 images listed, fewer than the 2 a HIT of 3 holds beside its 1 anchor'
    """
    size = params.hits.size
    most = most_images(params, n_items)
    capped = (
        f", at most {most:,} shown again (hits.second_round_share {params.hits.second_round_share:g})"
        if most < listed
        else ""
    )
    return (
        f"{listed:,} images listed{capped}, fewer than the {followup.listed_per_hit(size)} a HIT of "
        f"{size} holds beside its {_anchors(followup.anchors_per_hit(size))}"
    )


def _anchors(count: int) -> str:
    """`2 anchors`, `1 anchor`, `0 anchors`."""
    return f"{count} anchor{'' if count == 1 else 's'}"


def make_plan(images: list[str], clusters: pd.Series, params: PipelineParams) -> HitPlan:
    """The second round's HITs (`followup.plan` with the run's design and seed) and their coverage."""
    table = pd.DataFrame({"item": images})
    hits = followup.plan(table, clusters, params.hits.size, params.hits.hits_per_item, params.seed)
    return HitPlan(hits=hits, coverage=coverage(hits, images))
