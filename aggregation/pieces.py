"""The linked pieces of a clustering, and how surely the prior put each piece where it is.

A cluster's labels vouch for its images only as far as chains of "same" answers reach: its *linked
pieces* are the images joined by pairs that most of the workers who saw both put in one group, and
its largest piece is its *core*. Every other piece is where it is because nothing placed it
elsewhere: in a large catalogue each image meets few of its own style, and the Ewens prior joins
pieces that no label separates (`aggregation.recheck` lists them to show again).

`piece_shares` says how surely. An item's conditional given every other item's cluster
(`aggregation.confidence`) cannot see it: the item's piece-mates sit in its cluster, so its labels
with them make the conditional near 1 wherever the piece was put. By the chain rule, the item's
probability of its cluster is where the rest of its piece goes, moved as one block (the question
the prior answered), times its conditional given that. The other m - 1 images go to cluster k with
probability

    ∝ exp(S_k) · n_k (n_k + 1) ... (n_k + m - 2),   or α (m - 2)! to a new cluster,

where S_k is the two-coin evidence of their labels with k's members and n_k is k's size without
the piece (Ewens: the images join one by one). The item's own labels and its own prior weight are
in its conditional, so they are left out here, not counted twice. A piece the labels never compared
with any cluster gets the share of its cluster among all the clusters the same size would fit, not
1; a piece whose "different" labels rule out every other cluster keeps most of it (against a
cluster of its own). An item's confidence is its conditional times that share (1 in a core and in
a piece of one item, whose block move is its conditional itself).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from aggregation.consensus import PairGraph, flatten_roots
from aggregation.pairs import PairLabels, together_pairs

__all__ = ["Pieces", "find_pieces", "linked_pieces", "piece_shares"]


@njit(cache=True)
def linked_pieces(a, b, labels):  # pragma: no cover - compiled
    """Per item, its piece: the connected component of the pairs (a[t], b[t]) inside its cluster.

    Union-find with path halving; a piece is named by its smallest item, so the result does not
    depend on the order of the pairs.
    """
    n = labels.shape[0]
    parent = np.arange(n)
    for t in range(a.shape[0]):
        if labels[a[t]] != labels[b[t]]:
            continue
        ri, rj = a[t], b[t]
        while parent[ri] != ri:
            parent[ri] = parent[parent[ri]]
            ri = parent[ri]
        while parent[rj] != rj:
            parent[rj] = parent[parent[rj]]
            rj = parent[rj]
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return flatten_roots(parent)


@dataclass(frozen=True)
class Pieces:
    """A clustering's linked pieces: `together` (the majority pairs a, b), each item's `piece` (named
    by its smallest item) and whether it is in its cluster's core (the largest piece; ties go to the
    piece of the smallest item)."""

    together: tuple[np.ndarray, np.ndarray]
    piece: np.ndarray
    in_core: np.ndarray


def find_pieces(pairs: PairLabels, clusters: np.ndarray, graph: PairGraph | None = None) -> Pieces:
    """The linked pieces of `clusters` (one id per item, in the pairs' order)."""
    clusters = np.asarray(clusters, dtype=np.int64)
    together = together_pairs(pairs, graph)
    piece = linked_pieces(*together, clusters)
    size = np.bincount(piece, minlength=len(clusters))
    order = np.lexsort((piece, -size[piece], clusters))
    first = np.r_[True, clusters[order][1:] != clusters[order][:-1]]
    core = np.empty(int(clusters.max()) + 1 if len(clusters) else 0, dtype=np.int64)
    core[clusters[order][first]] = piece[order][first]
    return Pieces(together, piece, piece == core[clusters])


@njit(cache=True, nogil=True)
def _evidence(
    i, item_ptr, item_lab, a, b, worker, label, w_yes, w_no, piece, clusters, into
):  # pragma: no cover
    """Add item i's evidence with the items outside its piece to `into`, per cluster."""
    for q in range(item_ptr[i], item_ptr[i + 1]):
        t = item_lab[q]
        other = b[t] if a[t] == i else a[t]
        if piece[other] != piece[i]:
            into[clusters[other]] += w_yes[worker[t]] if label[t] > 0 else w_no[worker[t]]


@njit(cache=True, nogil=True)
def _shares(
    members_ptr, members, item_ptr, item_lab, a, b, worker, label, w_yes, w_no, piece, clusters, size,
    log_alpha,
):  # pragma: no cover - compiled  # fmt: skip
    """Per item of a loose piece (members[members_ptr[p]:members_ptr[p+1]] for piece p, out in the
    same order), its cluster's share when the rest of its piece moves as a block (the module's
    formula with the m - 1 others and their evidence: the item's own is in its conditional).

    The evidence is summed through the labels-by-item index: no array of one entry per label. Every
    cluster is a candidate, so an item costs its piece's labels once, its own, and K.
    """
    k_max = size.shape[0]
    out = np.empty(members.shape[0])
    whole = np.zeros(k_max)
    mine = np.zeros(k_max)
    log_w = np.empty(k_max)
    for p in range(members_ptr.shape[0] - 1):
        first, last = members_ptr[p], members_ptr[p + 1]
        m, own = last - first, clusters[members[first]]
        for idx in range(first, last):
            _evidence(
                members[idx], item_ptr, item_lab, a, b, worker, label, w_yes, w_no, piece, clusters, whole
            )
        rest = m - 1  # the block without the item
        new = log_alpha + math.lgamma(rest)
        for idx in range(first, last):
            _evidence(
                members[idx], item_ptr, item_lab, a, b, worker, label, w_yes, w_no, piece, clusters, mine
            )
            top = new
            for k in range(k_max):
                n = size[k] - (m if k == own else 0)
                log_w[k] = whole[k] - mine[k] + math.lgamma(n + rest) - math.lgamma(n) if n > 0 else -np.inf
                top = max(top, log_w[k])
                mine[k] = 0.0
            total = math.exp(new - top)
            for k in range(k_max):
                total += math.exp(log_w[k] - top)
            out[idx] = math.exp(log_w[own] - top) / total
        for k in range(k_max):
            whole[k] = 0.0
    return out


def piece_shares(
    pairs: PairLabels,
    clusters: np.ndarray,
    pieces: Pieces,
    log_alpha: float,
    coins: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """Per item, the share of its cluster for the rest of its piece moved as a block (1 in a core).

    `coins`: each worker's evidence of a "same" and of a "different" label (`consensus.coin_weights`).
    """
    clusters = np.asarray(clusters, dtype=np.int64)
    shares = np.ones(len(clusters))
    # A piece of one item moved as a block is the item's own conditional, already its confidence.
    piece_size = np.bincount(pieces.piece, minlength=len(clusters))
    loose = ~pieces.in_core & (piece_size[pieces.piece] > 1)
    if not loose.any():
        return shares
    items = np.flatnonzero(loose)
    order = np.argsort(pieces.piece[items], kind="stable")  # each piece's items together
    members = items[order]
    starts = np.flatnonzero(np.r_[True, np.diff(pieces.piece[members]) != 0])
    members_ptr = np.r_[starts, len(members)].astype(np.int64)
    shares[members] = _shares(
        members_ptr, members, pairs.item_ptr, pairs.item_lab, pairs.a, pairs.b, pairs.worker, pairs.label,
        *coins, pieces.piece, clusters, np.bincount(clusters), log_alpha,
    )  # fmt: skip
    return shares
