"""What a fitted clustering must not be shown without: warnings about the crowd and the design.

The model finds clusters in any labels, with confidences that describe the model, not the crowd.
Some answers cannot hold a clustering whatever the model does, and the user must hear it where the
clusters are shown: `crowdclust aggregate` prints these lines as `warning:` and the pipeline's
aggregation stage logs them and puts them in report.html. They are written once, here, so that the
two say the same thing of the same answers (a pipeline run of 1,139 images, 36% unanchored, and one
of 300 images answered once each ended with exit 0 and no warning, while the command said of each
run's own export that its clusters were unreliable).

Each check has its threshold beside it; what is measured behind each is in docs/aggregation.md
("Warnings").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from aggregation.dissent import crowd_agreement, no_better_than_chance
from aggregation.pairs import GroupUse

if TYPE_CHECKING:
    import pandas as pd

    from aggregation.estimators import _Base
    from aggregation.recheck import Recheck

__all__ = [
    "APART_WARNING",
    "SATURATION_WARNING",
    "SINGLE_ANSWER_WARNING",
    "apart_share",
    "crowd_warnings",
    "single_answer_share",
    "unlinked_sets",
]

# Above this share of answers that used every group for images of more clusters, the workers ran
# out of groups (35-image HITs with 10 groups: 52-53% for 13 styles, 83-87% for 20; the 10-image
# shoes design: 0%).
SATURATION_WARNING = 0.25
# Above this share of HITs answered by one worker only, no answer is checked (queries of 3-5
# images, one answer each, 10,000 images: ARI 0.36 and no other warning).
SINGLE_ANSWER_WARNING = 0.5


def single_answer_share(labels: pd.DataFrame) -> float:
    """The share of HITs (`task`) that one worker only answered."""
    per_hit = labels[["task", "worker"]].drop_duplicates().groupby("task").size()
    return float((per_hit == 1).mean()) if len(per_hit) else 0.0


# Above this share of the images outside their cluster's compared core (`apart_share`), the
# clusters join parts the answers never compared. The bench's crowds: 1-4% (shoes design, queries,
# 35-image HITs, uneven classes), 20% at 2,000 and 10,000 images of 40 styles; HITs of 4 styles out
# of 12 or 48 (3 and 5 rounds): 50% and 83%, with 6 clusters for 12 and 8 for 48.
APART_WARNING = 1 / 3


def apart_share(model: _Base) -> tuple[int, int]:
    """How many images are outside their cluster's compared core, and how many there are.

    A cluster's compared core is its largest set of images joined by pairs some answer compared
    (whatever it said), inside the cluster. An image outside it was compared with none of the core,
    not even through other images of the cluster: what put it there is the prior, which joins
    groups nothing parts, the more surely the larger they are. HITs that each show a few styles, with
    other styles in other HITs, never compare most pairs of styles, and the prior joined whole
    styles, 40 images each, 6 to a cluster (48 styles in 8 clusters), 1,880 of the 1,920 images
    above confidence 0.5.
    """
    from aggregation.pieces import linked_pieces  # numba's kernels, loaded with the model already

    pairs = model.pairs_
    clusters = np.asarray(model.labels_.to_numpy(), dtype=np.int64)  # in the pairs' item order
    parts = linked_pieces(pairs.a, pairs.b, clusters)
    size = np.bincount(parts, minlength=len(clusters))
    core = np.zeros(int(clusters.max()) + 1 if len(clusters) else 0, dtype=np.int64)
    np.maximum.at(core, clusters, size[parts])
    return int(len(clusters) - core.sum()), len(clusters)


def _apart_warning(model: _Base) -> str | None:
    """That the clusters join parts no answer compared, above APART_WARNING of the images."""
    outside, n = apart_share(model)
    if n == 0 or outside <= APART_WARNING * n:
        return None
    return (
        f"{outside:,} of {n:,} images ({outside / n:.0%}) are in a cluster with images that no answer "
        "compared them with, directly or through other images of that cluster: the HITs showed those "
        "parts of the cluster apart (HITs of a few styles each, say), and only the prior joined them, "
        f"at confidences up to 1 (above {APART_WARNING:.0%} of the images the clusters are more the "
        "prior's than the answers'). Such parts may be styles of their own: HITs that show images of "
        "different parts together would tell."
    )


def unlinked_sets(model: _Base) -> tuple[np.ndarray, int, int]:
    """The sets of images that no HIT links, and what the clusters made of them: each set's size
    (largest first), how many clusters hold images of two or more sets, and how many images are in
    a cluster whose largest set is not theirs.

    A set is a connected component of the graph of every pair some answer compared. No label joins
    or parts two sets, so only the Ewens prior puts their images in one cluster, and it does so
    whenever nothing parts them, the more surely the larger the linked groups (a style of 30
    images well linked by its answers joins another set's style of 30 at confidence ~1). A shop's
    HITs made per category (shoes, bags, hats; 10 styles of 30 each) came out as 10 clusters of one
    shoe, one bag and one hat style each, at ARI 0.47, every confidence above 0.5, and no warning.
    """
    from aggregation.pieces import linked_pieces  # numba's kernels, loaded with the model already

    pairs = model.pairs_
    clusters = np.asarray(model.labels_.to_numpy(), dtype=np.int64)  # in the pairs' item order
    sets = linked_pieces(pairs.a, pairs.b, np.zeros(pairs.n_items, dtype=np.int64))
    sizes = np.bincount(sets)
    sizes = np.sort(sizes[sizes > 0])[::-1]
    _, set_codes = np.unique(sets, return_inverse=True)
    if len(sizes) < 2:
        return sizes, 0, 0
    both = np.unique(clusters * len(sizes) + set_codes, return_counts=True)
    cluster_of = both[0] // len(sizes)
    spans = np.bincount(cluster_of)  # sets per cluster
    largest = np.zeros(int(clusters.max()) + 1, dtype=np.int64)
    np.maximum.at(largest, cluster_of, both[1])
    return sizes, int((spans > 1).sum()), int(len(clusters) - largest.sum())


def _unlinked_warning(model: _Base) -> str | None:
    """That clusters join images no answer links, when they do (`unlinked_sets`)."""
    sizes, mixed, outside = unlinked_sets(model)
    if mixed == 0:
        return None
    shown = ", ".join(f"{int(size):,}" for size in sizes[:3])
    return (
        f"the answers fall into {len(sizes):,} sets of images that no HIT links (the largest: {shown} "
        f"images): no answer compares images of two sets, yet {mixed:,} "
        f"cluster{' holds' if mixed == 1 else 's hold'} images of several, and {outside:,} "
        f"image{' is' if outside == 1 else 's are'} in a cluster with another set's images only "
        "because the prior joins what no label parts, "
        "at confidences up to 1. If the HITs were made per category, aggregate each category's "
        "answers on its own; otherwise show images of different sets together in some HITs."
    )


def crowd_warnings(model: _Base, labels: pd.DataFrame, recheck: Recheck, use: GroupUse) -> list[str]:
    """The warnings a fitted `model` of `labels` (long format) comes with, each one sentence.

    `recheck` and `use` are the model's `find_recheck` and `group_use`, which the callers have
    computed for lines of their own. In this order: images the labels cannot place, clusters that
    join images no HIT links (or, the HITs linked, parts no answer compared), workers who agree no
    better than chance, HITs answered once, answers
    of one group, workers out of groups.
    """
    said = []
    unanchored = recheck.unanchored_warning()
    if unanchored is not None:
        said.append(unanchored)
    unlinked = _unlinked_warning(model)
    # The sets say it already; so do unanchored images, which a random design leaves outside the
    # cores (the design advice of their warning is the one to follow).
    apart = _apart_warning(model) if unlinked is None and unanchored is None else None
    said += [warning for warning in (unlinked, apart) if warning is not None]
    kappa, comparisons, compared = crowd_agreement(model)
    lone = single_answer_share(labels)
    if no_better_than_chance(kappa, comparisons, compared):
        said.append(_chance_warning(kappa, comparisons, lone > SINGLE_ANSWER_WARNING))
    if lone > SINGLE_ANSWER_WARNING:
        said.append(
            f"{lone:.0%} of the HITs have a single answer: nothing checks it against another "
            "worker's, so a careless or spamming worker's groups stand as given and the clusters are "
            "unreliable. Three or more answers per HIT (the overlap) let the model weigh the workers."
        )
    if use.most == 1 and recheck.n_items > 1:
        said.append(
            "every answer put all its images in one group, so the labels cannot tell any two "
            "images apart and all are one cluster: check that the task's interface records the groups "
            "and that the instructions ask for several"
        )
    if use.saturated > SATURATION_WARNING:
        said.append(
            f"{use.saturated:.0%} of the answers used all {use.most} groups for ~{use.images:.0f} "
            f"images of more than {use.most} clusters: the workers ran out of groups and had to put "
            "different styles together. The model takes such merges as noise (they differ from HIT to "
            "HIT), but HITs that show fewer styles than there are groups give cleaner labels: smaller "
            "HITs, or more groups in the task interface."
        )
    return said


def _chance_warning(kappa: float, comparisons: int, answered_once: bool) -> str:
    """That the workers' agreement with one another cannot be told from chance, and where to look.

    With most HITs answered once only the pairs two workers met in different HITs are compared: a
    tester's 3,000 images in queries of 3-5 (80% diligent workers) gave 558 comparisons and kappa
    0.12, and the advice to check the interface and the crowd pointed away from the design, which
    is what left the agreement unmeasured (the clusters were noise all the same: ARI 0.01).
    """
    measured = (
        f"Cohen's kappa {kappa:.3f} over {comparisons:,} comparisons of two workers' labels of one "
        "pair; a working crowd's is 0.2 or more"
    )
    if answered_once:
        return (
            f"the workers' agreement with one another cannot be told from chance ({measured}): the "
            "clusters are likely noise, whatever their confidences say. With most HITs answered once, "
            "few pairs were labelled by two workers: more answers per HIT (the overlap) first; if the "
            "agreement stays under 0.2, check the task's interface and the crowd."
        )
    return (
        f"the workers agree with one another no more than chance would ({measured}): the clusters are "
        "likely noise, whatever their confidences say. Check that the task's interface records the "
        "groups the workers chose, and the crowd (an exam, a skill filter)."
    )
