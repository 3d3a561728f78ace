"""How much a synthetic crowd's answers say about the cut between each class and its partner class.

In `aggregation.synthetic`, a diligent or careless worker's mistakes send an image to its class's
partner class, so a class and its partner are the hardest pair to tell apart, and a merged or
miscut partner pair is most of what a clustering of those crowds gets wrong. This module puts a
number on how hard each pair is, from the answers actually drawn and the generator's own answer
model (every worker's type and error rate known), so that a benchmark can tell a cut the labels
do not hold from one the model misses.

The number is the Kesten-Stigum ratio of the two-group problem inside the pair:

    ks = sum over the pair's labels of D_w / (n - 1),
    D_w = (s - t)^2 * (1 / (s + t) + 1 / (2 - s - t)),

with n the pair's images and s / t the chance that the label's worker calls two images "same"
when both are of one class / one of each. It is the signal-to-noise ratio of a two-block
stochastic block model whose edges are the labels, each edge read with its worker's chances
(HITs draw their images without regard to class, so only the label values carry the classes).
In large sparse graphs no cut agrees with the two blocks better than chance when ks < 1, and
spectral or belief-propagation cuts recover most of them when ks is well above 1. A pair has about
a hundred images, far from that limit, and the ratio assumes the worker types are known, which no
method is told; read it as a scale of difficulty, not as a bound.

Images that sit between two styles (`between_share`) are left out: their answers follow another
rule. The 10-group cap of an answer is ignored (it matters only for HITs of more than 10 groups).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from aggregation.metrics import clustering_scores
from aggregation.pairs import build_pairs
from aggregation.synthetic import N_COLOURS, SyntheticCrowd, partner_classes

__all__ = ["partner_signal"]


def _inside_chances(kinds: np.ndarray, errors: np.ndarray) -> np.ndarray:
    """Per worker: the chance of "same" for two images of one class (the same for every class)."""
    careful = np.isin(kinds, ("diligent", "careless"))  # each image read as its class, or its partner
    return np.select(
        [careful, kinds == "lumper", kinds == "splitter"],  # lumpers read class // 2; splitters add colour
        [(1 - errors) ** 2 + errors**2, 1.0, 1.0 / N_COLOURS],
        0.5,  # colour-biased workers and spammers: "same" has nothing to do with the class
    )


def _across_chances(kinds: np.ndarray, errors: np.ndarray, c: int, p: int, partner: np.ndarray) -> np.ndarray:
    """Per worker: the chance of "same" for one image of class c and one of its partner p."""
    careful = np.isin(kinds, ("diligent", "careless"))  # one of the two misread onto the other's class
    return np.select(
        [careful, kinds == "lumper", kinds == "splitter"],
        [errors * (1 - errors) * (1 + (partner[p] == c)), float(c // 2 == p // 2), 0.0],
        0.5,
    )


def _information(inside: np.ndarray, across: np.ndarray) -> np.ndarray:
    """D_w of the module docstring per worker (0 where the worker's answers do not depend on the cut)."""
    gap = (inside - across) ** 2
    total = inside + across
    same = np.divide(gap, total, out=np.zeros_like(gap), where=total > 0)
    different = np.divide(gap, 2 - total, out=np.zeros_like(gap), where=total < 2)
    return same + different


def partner_signal(crowd: SyntheticCrowd, clusters: pd.Series | None = None) -> pd.DataFrame:
    """One row per partner pair: its classes, images, labels and Kesten-Stigum ratio `ks`.

    `crowd` comes from `generate_crowd` or `crowd_shape` (classes 0..K-1, the generator's workers);
    images between two styles count in neither `images` nor `labels`.

    With `clusters` (item -> cluster, e.g. a model's `labels_`), `cut_ari` is the ARI of the
    clusters against the classes on the pair's images that `clusters` holds: about 0 when the two
    classes are merged or cut at random, 1 when they are told apart.

    >>> from aggregation.synthetic import generate_crowd
    >>> careful = generate_crowd(60, 4, seed=0, shares={"diligent": 1.0}, error_range=(0.0, 0.0))
    >>> partner_signal(careful)[["classes", "images"]].to_dict("list")
    {'classes': ['0-1', '2-3'], 'images': [29, 31]}
    >>> bool((partner_signal(careful)["ks"] > 10).all())  # error-free answers: easy to cut
    True
    """
    pairs = build_pairs(crowd.labels)
    truth = crowd.truth.reindex(pairs.items).to_numpy()
    usable = ~crowd.between.reindex(pairs.items).fillna(False).to_numpy(dtype=bool)
    keep = usable[pairs.a] & usable[pairs.b]
    first, second = truth[pairs.a[keep]], truth[pairs.b[keep]]
    workers = crowd.workers.reindex(pairs.workers)
    kinds, errors = workers["type"].to_numpy(dtype=str), workers["error_rate"].to_numpy(dtype=np.float64)
    inside = _inside_chances(kinds, errors)
    worker = pairs.worker[keep]
    n_classes = int(crowd.truth.max()) + 1
    partner = partner_classes(n_classes)
    rows = []
    for c in range(n_classes):
        p = int(partner[c])
        if p < c and partner[p] == c:
            continue  # the pair was listed under its first class
        within = np.isin(first, (c, p)) & np.isin(second, (c, p))
        info = _information(inside, _across_chances(kinds, errors, c, p, partner))
        images = int((np.isin(truth, (c, p)) & usable).sum())
        row = {
            "classes": f"{c}-{p}",
            "images": images,
            "labels": int(within.sum()),
            "ks": float(info[worker[within]].sum() / max(images - 1, 1)),
        }
        if clusters is not None:
            mine = crowd.truth[crowd.truth.isin((c, p)) & crowd.truth.index.isin(clusters.index)]
            scores = clustering_scores(clusters.reindex(mine.index), mine) if len(mine) else {"ari": np.nan}
            row["cut_ari"] = scores["ari"]
        rows.append(row)
    return pd.DataFrame(rows)
