"""The second round of a run: which images it shows again, and under which pool role.

After the first aggregation the images only the prior placed (`aggregation.recheck`: outside
their cluster's largest piece of pairs most workers put together, or below confidence 0.5) are
shown again among themselves, in a main pool of their own with the same HIT design. They are
mostly the small styles' images, which the whole catalogue diluted, so among themselves they
meet their own style far more often, and the labels of both rounds together link the pieces
that the prior alone had joined, often wrongly.
"""

from __future__ import annotations

import math

import pandas as pd

from tasks.params import PipelineParams

SECOND_ROUND_POOL = "second-round-pool"  # the pool role: its own, so its spend is told apart


def most_images(params: PipelineParams, n_items: int) -> int:
    """The most images a second round may show again (0 when there is no second round)."""
    return math.floor(params.hits.second_round_share * n_items + 1e-9)


def pick_images(recheck: pd.DataFrame | None, params: PipelineParams, n_items: int) -> list[str]:
    """The images to show again, sorted: the listed ones, the least confident first up to the cap.

    Fewer than a HIT's worth give no round (an empty list).

    >>> confidence = [0.9, 0.2, 0.9, 0.4]
    >>> table = pd.DataFrame({"item": list("abcd"), "cluster": [0, 0, 1, 1], "confidence": confidence})
    >>> from tasks.params import HitParams
    >>> params = PipelineParams.model_construct(hits=HitParams(size=2, second_round_share=0.3))
    >>> pick_images(table, params, 10)
    ['b', 'd', 'a']
    """
    most = most_images(params, n_items)
    if recheck is None or most < params.hits.size:
        return []
    chosen = recheck.sort_values(["confidence", "item"], kind="mergesort").head(most)["item"].tolist()
    return chosen if len(chosen) >= params.hits.size else []
