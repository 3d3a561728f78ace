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
def _shares(ptr, target, evidence, piece_size, piece_cluster, size, log_alpha):  # pragma: no cover
    """Per piece p, the share of its own cluster when it moves as a block (the module's formula).

    Piece p's evidence with cluster target[e] is evidence[e] for e in ptr[p]..ptr[p+1]-1 (other
    clusters: 0). Every cluster is a candidate, so a piece costs K; pieces outside a core are few.
    """
    n_pieces, k_max = piece_size.shape[0], size.shape[0]
    out = np.empty(n_pieces)
    s = np.zeros(k_max)
    log_w = np.empty(k_max)
    for p in range(n_pieces):
        for e in range(ptr[p], ptr[p + 1]):
            s[target[e]] += evidence[e]
        m, own = piece_size[p], piece_cluster[p]
        new = log_alpha + math.lgamma(m)
        top = new
        for k in range(k_max):
            n = size[k] - (m if k == own else 0)
            log_w[k] = s[k] + math.lgamma(n + m) - math.lgamma(n) if n > 0 else -np.inf
            top = max(top, log_w[k])
        total = math.exp(new - top)
        for k in range(k_max):
            total += math.exp(log_w[k] - top)
        out[p] = math.exp(log_w[own] - top) / total
        for e in range(ptr[p], ptr[p + 1]):
            s[target[e]] = 0.0
    return out


def piece_shares(
    pairs: PairLabels, clusters: np.ndarray, pieces: Pieces, llr: np.ndarray, log_alpha: float
) -> np.ndarray:
    """Per item, the share of its cluster for its piece moved as a block (1 in a core).

    `llr`: each label's evidence for "same" under its worker's two coins (`consensus.worker_llr`).
    """
    clusters = np.asarray(clusters, dtype=np.int64)
    shares = np.ones(len(clusters))
    # A piece of one item moved as a block is the item's own conditional, already its confidence.
    size = np.bincount(pieces.piece, minlength=len(clusters))
    loose = ~pieces.in_core & (size[pieces.piece] > 1)
    if not loose.any():
        return shares
    piece, a, b = pieces.piece, pairs.a, pairs.b
    across = piece[a] != piece[b]  # a piece's labels with items outside it
    ends = [(a, b, across & loose[a]), (b, a, across & loose[b])]
    source = np.concatenate([piece[this[keep]] for this, _, keep in ends])
    target = np.concatenate([clusters[other[keep]] for _, other, keep in ends])
    evidence = np.concatenate([llr[keep] for _, _, keep in ends])
    names, index = np.unique(piece[loose], return_inverse=True)  # the loose pieces, by name
    slot = np.full(len(clusters), -1, dtype=np.int64)
    slot[names] = np.arange(len(names))
    order = np.argsort(slot[source], kind="stable")  # each piece's labels together, in label order
    ptr = np.searchsorted(slot[source][order], np.arange(len(names) + 1))
    cluster_size = np.bincount(clusters, minlength=int(clusters.max()) + 1)
    by_piece = _shares(
        ptr, target[order], evidence[order], np.bincount(index), clusters[names], cluster_size, log_alpha
    )
    shares[loose] = by_piece[index]
    return shares
