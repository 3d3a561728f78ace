"""How much of the truth a crowd's labels hold: two bounds that no aggregation can be expected to beat.

Both need the truth, so they are for benchmarks and for choosing a HIT design on a synthetic crowd,
not for a user's run (`aggregation.design` gives the same information from the design alone).

- `placement_oracle`: every image placed in its most likely cluster under the model, knowing every
  *other* image's true class: P(i in class c) ∝ n_c · exp(S_ic), α for a cluster of its own, with S
  the log-likelihood ratio of i's labels under the workers' two coins fitted to the truth (see
  `aggregation.consensus`). It uses the real, noisy answers and gives every image the best possible
  company, so it bounds what any method that decides image by image can reach. An image whose
  labels say "same" to nobody of its class lands in the largest class that nothing rules out.
- `piece_oracle`: the same, for each *linked piece* of a class as one block (the images its class's
  pairs that most workers called "same" join; see `aggregation.pieces`) instead of each image: a
  piece moves as a whole, P(piece in c) ∝ Γ(n_c + m)/Γ(n_c) · exp(S_pc), α Γ(m) on its own. An
  image's neighbours in its own piece are of its class whatever the labels say, so the image
  bound credits a method with knowing what no label links; the piece bound does not, and sits
  below it where classes fall in many pieces (a large catalogue of many small classes).
- `linked_oracle`: perfect answers on the same HITs, and a method that joins only what "same"
  labels link: the connected components of the observed pairs whose two images share a class.
  It shows how far the HIT design alone cuts each class into pieces with no pair between them.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from numba import njit

from aggregation.consensus import ALPHA, PairGraph, _clear, _gather, log_gammas
from aggregation.pairs import PairLabels
from aggregation.pieces import find_pieces

__all__ = ["best_clusters", "linked_oracle", "piece_oracle", "placement_oracle", "truth_codes"]


@njit(cache=True)
def best_clusters(indptr, indices, data, labels, log_alpha):  # pragma: no cover - compiled
    """Each node's most likely cluster with every other node where `labels` puts it (no node moves).

    Candidates: the clusters the node touches (weight log n_c + S_ic, n_c without the node), the
    largest cluster it does not touch (log n_c), a cluster of its own (log α, returned as -1).
    """
    n = labels.shape[0]
    size = np.zeros(n)
    for i in range(n):
        size[labels[i]] += 1.0
    by_size = np.argsort(-size, kind="mergesort")
    acc = np.zeros(n)
    mark = np.zeros(n, dtype=np.bool_)
    touched = np.empty(n, dtype=np.int64)
    out = np.empty(n, dtype=np.int64)
    for i in range(n):
        cur = labels[i]
        size[cur] -= 1.0
        nt = _gather(i, indptr, indices, data, labels, acc, mark, touched)
        best, best_val = -1, log_alpha
        for q in range(nt):
            c = touched[q]
            if size[c] > 0.5 and math.log(size[c]) + acc[c] > best_val:
                best, best_val = c, math.log(size[c]) + acc[c]
        largest = -1
        for c in by_size:  # sorted by the full sizes: the own cluster may be one smaller now
            if size[c] < 0.5:
                break
            if not mark[c] and (largest < 0 or size[c] > size[largest]):
                largest = c
            if largest >= 0 and size[c] < size[largest] - 1.5:
                break
        if largest >= 0 and math.log(size[largest]) > best_val:
            best = largest
        out[i] = best
        _clear(acc, mark, touched, nt)
        size[cur] += 1.0
    return out


def truth_codes(pairs: PairLabels, truth: pd.Series) -> np.ndarray:
    """The true class of every item of `pairs` as codes 0..K-1 (items without truth: a class each)."""
    known = truth.reindex(pd.Index(pairs.items))
    codes, _ = pd.factorize(known.astype(str).where(known.notna()), sort=True)
    missing = codes < 0
    codes[missing] = codes.max() + 1 + np.arange(int(missing.sum()))
    return codes.astype(np.int64)


def placement_oracle(pairs: PairLabels, truth: pd.Series, graph: PairGraph | None = None) -> pd.Series:
    """Each image in its most likely class given every other image's true class (see module docstring).

    Returns a Series item -> class code (an image better alone gets a cluster of its own).
    """
    graph = PairGraph(pairs) if graph is None else graph
    codes = truth_codes(pairs, truth)
    score = graph.evidence(pairs, codes)
    best = best_clusters(score.indptr, score.indices, score.data, codes, math.log(ALPHA))
    alone = best < 0
    best[alone] = codes.max() + 1 + np.flatnonzero(alone)
    return pd.Series(best, index=pd.Index(pairs.items, name="item"), name="cluster")


def piece_oracle(pairs: PairLabels, truth: pd.Series, graph: PairGraph | None = None) -> pd.Series:
    """Each linked piece of a true class in its most likely class, given every other image's true
    class (see module docstring). Returns a Series item -> class code (a piece better on its own
    gets a cluster of its own)."""
    graph = PairGraph(pairs) if graph is None else graph
    codes = truth_codes(pairs, truth)
    score = graph.evidence(pairs, codes)
    _, piece = np.unique(find_pieces(pairs, codes, graph).piece, return_inverse=True)
    n_pieces, n_classes = int(piece.max()) + 1, int(codes.max()) + 1
    rows = np.repeat(np.arange(len(codes)), np.diff(score.indptr))
    outside = piece[rows] != piece[score.indices]  # evidence with the images outside the piece
    evidence = np.bincount(
        piece[rows[outside]] * n_classes + codes[score.indices[outside]],
        weights=score.data[outside],
        minlength=n_pieces * n_classes,
    ).reshape(n_pieces, n_classes)
    size = np.bincount(piece, minlength=n_pieces)
    own = np.zeros(n_pieces, dtype=np.int64)
    own[piece] = codes
    others = np.tile(np.bincount(codes, minlength=n_classes), (n_pieces, 1))
    others[np.arange(n_pieces), own] -= size  # the class without the piece itself
    lgamma = log_gammas(len(codes) + 1)
    joined = np.where(
        others > 0, evidence + lgamma[others + size[:, None]] - lgamma[np.maximum(others, 1)], -np.inf
    )
    best = joined.argmax(axis=1)
    alone = joined[np.arange(n_pieces), best] < math.log(ALPHA) + lgamma[size]
    best[alone] = n_classes + np.flatnonzero(alone)
    return pd.Series(best[piece], index=pd.Index(pairs.items, name="item"), name="cluster")


def linked_oracle(pairs: PairLabels, truth: pd.Series) -> pd.Series:
    """Connected components of the observed pairs within one class (perfect answers, these HITs)."""
    codes = truth_codes(pairs, truth)
    same = codes[pairs.a] == codes[pairs.b]
    parent = np.arange(pairs.n_items)
    a, b = pairs.a[same], pairs.b[same]
    # Label propagation to the smallest index of each component (vectorised; O(diameter) rounds).
    while True:
        low = np.minimum(parent[a], parent[b])
        new = parent.copy()
        np.minimum.at(new, a, low)
        np.minimum.at(new, b, low)
        new = new[new]
        if np.array_equal(new, parent):
            break
        parent = new
    return pd.Series(parent, index=pd.Index(pairs.items, name="item"), name="cluster")
