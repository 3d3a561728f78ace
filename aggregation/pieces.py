"""The linked pieces of a clustering, and how surely the prior put each piece where it is.

A cluster's labels vouch for its images only as far as chains of "same" answers reach: its *linked
pieces* are the images joined by pairs that most of the workers who saw both put in one group, and
its largest piece is its *core*. Every other piece is where it is because nothing placed it
elsewhere: in a large catalogue each image meets few of its own style, and the Ewens prior joins
pieces that no label separates (`aggregation.recheck` lists them to show again).

`piece_shares` says how surely. An item's conditional given every other item's cluster
(`aggregation.confidence`) cannot see it: the item's piece-mates sit in its cluster, so its labels
with them make the conditional near 1 wherever the piece was put. Moving the piece as one block is
the question the prior answered: the piece of m images goes to cluster k with probability

    ∝ exp(S_Pk) · n_k (n_k + 1) ... (n_k + m - 1),   or α (m - 1)! to a new cluster,

where S_Pk is the two-coin evidence of the piece's labels with k's members and n_k is k's size
without the piece (Ewens: the m images join one by one). A piece the labels never compared with
any cluster gets the share of its cluster among all the clusters the same size would fit, not 1;
a piece whose "different" labels rule out every other cluster keeps a share near 1. An item's
confidence is its conditional times its piece's share (1 in a core).
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
def _shares(
    members_ptr, members, item_ptr, item_lab, a, b, worker, label, w_yes, w_no, piece, clusters, size,
    log_alpha,
):  # pragma: no cover - compiled  # fmt: skip
    """Per loose piece p (its items: members[members_ptr[p]:members_ptr[p+1]]), the share of its own
    cluster when it moves as a block (the module's formula).

    The piece's evidence with each cluster is summed over its items' labels with items outside it,
    through the labels-by-item index: no array of one entry per label. Every cluster is a candidate,
    so a piece costs its labels plus K.
    """
    n_pieces, k_max = members_ptr.shape[0] - 1, size.shape[0]
    out = np.empty(n_pieces)
    s = np.zeros(k_max)
    log_w = np.empty(k_max)
    for p in range(n_pieces):
        first = members[members_ptr[p]]
        m, own = members_ptr[p + 1] - members_ptr[p], clusters[first]
        for idx in range(members_ptr[p], members_ptr[p + 1]):
            i = members[idx]
            for q in range(item_ptr[i], item_ptr[i + 1]):
                t = item_lab[q]
                other = b[t] if a[t] == i else a[t]
                if piece[other] != piece[i]:
                    s[clusters[other]] += w_yes[worker[t]] if label[t] > 0 else w_no[worker[t]]
        new = log_alpha + math.lgamma(m)
        top = new
        for k in range(k_max):
            n = size[k] - (m if k == own else 0)
            log_w[k] = s[k] + math.lgamma(n + m) - math.lgamma(n) if n > 0 else -np.inf
            top = max(top, log_w[k])
            s[k] = 0.0
        total = math.exp(new - top)
        for k in range(k_max):
            total += math.exp(log_w[k] - top)
        out[p] = math.exp(log_w[own] - top) / total
    return out


def piece_shares(
    pairs: PairLabels,
    clusters: np.ndarray,
    pieces: Pieces,
    log_alpha: float,
    coins: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """Per item, the share of its cluster for its piece moved as a block (1 in a core).

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
    by_piece = _shares(
        members_ptr, members, pairs.item_ptr, pairs.item_lab, pairs.a, pairs.b, pairs.worker, pairs.label,
        *coins, pieces.piece, clusters, np.bincount(clusters), log_alpha,
    )  # fmt: skip
    shares[members] = np.repeat(by_piece, np.diff(members_ptr))
    return shares
