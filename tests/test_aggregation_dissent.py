"""A camp of workers who agree on another grouping is found, shown and kept apart from noise."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from aggregation import CrowdClustering, clustering_scores, crowd_shape, find_dissent, generate_crowd
from aggregation.consensus import PairGraph
from aggregation.dissent import agreement
from aggregation.pairs import build_pairs


def _fit(crowd, seed=0):
    model = CrowdClustering(random_state=seed, embedding_max_items=0).fit(crowd.labels)
    return model, find_dissent(model, crowd.labels)


def _types(crowd, workers) -> set[str]:
    return set(crowd.workers["type"].reindex(list(workers)))


@pytest.mark.parametrize("seed", [0, 1])
def test_a_colour_majority_wins_and_the_style_camp_is_shown(seed):
    """60% of the workers sort by colour: the clusters are the colours, and the 40% who sort by
    style are the camp, whose grouping is the styles."""
    crowd = generate_crowd(300, 8, seed=seed, shares={"diligent": 0.4, "colour": 0.6})
    model, dissent = _fit(crowd, seed)
    assert clustering_scores(model.labels_, crowd.truth)["ari"] < 0.1
    assert dissent is not None
    assert _types(crowd, dissent.workers) == {"diligent"}
    assert len(dissent.workers) >= 0.9 * int((crowd.workers["type"] == "diligent").sum())
    assert clustering_scores(dissent.clusters, crowd.truth)["ari"] > 0.9
    assert dissent.agreement > 0.6 and abs(dissent.across) < 0.2 and abs(dissent.similarity) < 0.1
    assert 0.3 < dissent.label_share < 0.5
    assert f"{len(dissent.workers)} workers ({dissent.label_share:.0%} of the labels)" in dissent.summary()


def test_a_colour_minority_is_the_camp_and_nothing_else_is():
    """The default crowd: 10% colour-biased workers among spammers, lumpers, splitters and careless
    ones. Only the colour workers agree with one another on a grouping of their own."""
    crowd = generate_crowd(400, 10, seed=2)
    model, dissent = _fit(crowd, 2)
    assert clustering_scores(model.labels_, crowd.truth)["ari"] > 0.9
    assert dissent is not None and _types(crowd, dissent.workers) == {"colour"}
    assert dissent.n_clusters <= 7  # six colours (and a stray image at most)
    assert dissent.agreement > 0.9


@pytest.mark.parametrize(
    "crowd",
    [
        pytest.param(
            lambda: generate_crowd(300, 8, seed=0, spammer_share=0.4, shares={"diligent": 1.0}), id="spam"
        ),
        pytest.param(
            lambda: generate_crowd(300, 8, seed=0, shares={"diligent": 0.7, "careless": 0.3}), id="careless"
        ),
        pytest.param(lambda: crowd_shape("queries", seed=0, hit_size=5), id="queries"),
    ],
)
def test_noise_is_no_camp(crowd):
    """Spammers agree with nobody; careless workers agree with the clusters as much as with one
    another; in one-answer queries nobody's labels meet, so there is no camp to measure."""
    made = crowd()
    _, dissent = _fit(made)
    assert dissent is None


def test_agreement_is_cohens_kappa_between_different_workers():
    # u and v agree on bc only; chance from their shares of "same" (1/3 each): kappa -1/2.
    labels = pd.DataFrame(
        {
            "task": ["t1"] * 3 + ["t2"] * 3 + ["t3", "t3", "t4", "t4"],
            "worker": ["u"] * 3 + ["v"] * 3 + ["w"] * 4,
            "item": list("abcabc") + list("abab"),
            "label": [1, 1, 2, 1, 2, 1, 1, 1, 1, 1],
        }
    )
    pairs = build_pairs(labels)
    graph = PairGraph(pairs)
    u, v, w = (pairs.workers == name for name in ("u", "v", "w"))
    per_worker, pooled, comparisons = agreement(graph, u | v, u | v)
    assert comparisons == 6 and pooled == pytest.approx(-0.5)
    assert per_worker[u][0] == pytest.approx(-0.5) and math.isnan(per_worker[w][0])
    # w labelled ab twice: a worker is never compared with themself.
    _, alone, none = agreement(graph, w, w)
    assert none == 0 and math.isnan(alone)
    # Across groups: w's "same" on ab against u's "same" and v's "same" on ab.
    per_worker, _, comparisons = agreement(graph, w, u | v)
    assert comparisons == 4 and np.isfinite(per_worker[w][0])
