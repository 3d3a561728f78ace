"""Settling the clusters against the crowd's labels: a MAP search under a prior on partitions.

Score of a partition z (what the search maximises):

    Σ over observed item pairs (a, b) with z_a = z_b of S_ab  +  log Ewens(z; α)

`S_ab` is the log-likelihood ratio of the pair's labels for "same cluster" against "different
clusters" under a two-coin model of each worker (P(says same | same) = sens_j, P(says different |
different) = spec_j, as in Dawid-Skene), so a spammer's labels weigh ~0 and a careful worker's a
lot. The Ewens (Chinese restaurant) prior, log P(z) = K log α + Σ_k log Γ(n_k) + const, is what
stops thin evidence from opening clusters: an item with no "same" label for anyone gains log n_c
by joining a cluster c it was never compared with, and pays S for every cluster its labels
contradict. So an item joins the largest cluster its labels allow instead of standing alone, and a
cluster exists only where "different" labels keep it apart.

The search runs entirely in numba and walks the sparse graph of observed pairs (no N×K array, no
Python loop over clusters); every order is fixed, so the result is deterministic. It has three stages:

1. Evidence: a Louvain-like search on Σ S alone (item moves, then whole-cluster moves on the coarse
   graph) gives clusters that the labels hold together, and leaves an item alone where they don't.
2. Model: the full score, prior included, on three levels. Clusters merge greedily, most decisive
   merge first (`greedy_merge`: the gain of the best merge over the next best choice, on the graph
   between clusters, pairs never compared included); then each cluster is cut into the pieces its
   own labels hold together (a Leiden-style refinement) and whole pieces move to the cluster where
   the score is highest (`prior_moves` on the graph between pieces), so a piece attached to the
   wrong cluster by an early merge can leave; then single items move. Each step raises the score;
   the rounds stop when the score stops rising.

3. Cross-validated cuts (`aggregation.splitting`): a cluster is cut in two where labels of tasks
   that did not shape the cut confirm it, since two classes that most workers confuse score
   better merged under the two-coin score.

Each image meets only a few of its own class in a large catalogue, so the labels alone leave a class
in pieces with no pair between them; only the prior, with the "different" labels that rule out the
other clusters, can put them together, and only a search that scores the prior at every level does.
Between rounds the workers' coins are re-estimated from the partition.

`aggregation.confidence` turns the same evidence into each item's probability of its cluster.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit

from aggregation.pairs import PairLabels, code_starts, labels_by_pair, pair_index

__all__ = [
    "ALPHA",
    "Csr",
    "MinClusterSizeError",
    "PairGraph",
    "SearchResult",
    "absorb_thin",
    "dissolve_small",
    "log_likelihood",
    "log_prior",
    "merge_clusters",
    "move_items",
    "move_pieces",
    "pair_scores",
    "partition_score",
    "pool_lone",
    "refine",
    "search",
    "settle",
    "worker_llr",
]

ALPHA = 1.0  # Ewens concentration: the prior odds of a new cluster against one of size 1
PRIOR_SENS = 0.8  # P(worker says "same" | same cluster) before any partition is known
PRIOR_SPEC = 0.9  # P(worker says "different" | different clusters)
EPS = 1e-9
CORE_MARGIN = 4.0  # nats (about two careful workers' labels): less than this is thin evidence
MODEL_ROUNDS = 4  # rounds of merges, piece moves and item moves under the full score
MERGE_MAX_NODES = 3000  # the greedy merge holds a dense table of this many clusters squared


@njit(cache=True, inline="always")
def _gather(i, indptr, indices, data, labels, acc, mark, touched):  # pragma: no cover - compiled
    """acc[c] = Σ S between node i and cluster c, for the clusters i touches; returns how many."""
    nt = 0
    for p in range(indptr[i], indptr[i + 1]):
        c = labels[indices[p]]
        if not mark[c]:
            mark[c] = True
            touched[nt] = c
            nt += 1
        acc[c] += data[p]
    return nt


@njit(cache=True, inline="always")
def _clear(acc, mark, touched, nt):  # pragma: no cover - compiled
    for q in range(nt):
        acc[touched[q]] = 0.0
        mark[touched[q]] = False


@njit(cache=True)
def log_gammas(total):  # pragma: no cover - compiled
    """lgamma(n) for n = 0..total (inf at 0): the Ewens prior's terms, looked up instead of computed.

    Cluster sizes are whole numbers of items, so every lgamma the moves and merges need is one of
    these, and the lookup gives the same value as the call. At 100,000 images the greedy merge of
    3,000 clusters took 23 s with the calls and 2.3 s with the table (same merges).
    """
    out = np.empty(total + 1)
    out[0] = np.inf
    for n in range(1, total + 1):
        out[n] = math.lgamma(n)
    return out


@njit(cache=True, inline="always")
def _sizes_and_free(labels, weight):  # pragma: no cover - compiled
    """Cluster sizes (Σ node weights) and a stack of the empty cluster ids, smallest on top."""
    n = labels.shape[0]
    size = np.zeros(n)
    for i in range(n):
        size[labels[i]] += weight[i]
    free = np.empty(n, dtype=np.int64)
    n_free = 0
    for c in range(n - 1, -1, -1):
        if size[c] < 0.5:
            free[n_free] = c
            n_free += 1
    return size, free, n_free


@njit(cache=True, inline="always")
def _relocate(labels, size, free, n_free, i, best, m):  # pragma: no cover - compiled
    """Move node i (weight m) to cluster `best`, keeping sizes and the free stack; returns n_free."""
    cur = labels[i]
    if size[best] < 0.5:
        n_free -= 1
    size[cur] -= m
    size[best] += m
    if size[cur] < 0.5:
        free[n_free] = cur
        n_free += 1
    labels[i] = best
    return n_free


@njit(cache=True)
def local_moves(indptr, indices, data, labels, order, max_passes):  # pragma: no cover - compiled
    """Move nodes one by one to the cluster with the largest Σ S (0 for a new cluster).

    Nodes are items, or whole clusters on a coarse graph (`coarsen`). Each move raises the score, so
    the loop ends; nodes are visited in `order` and ties keep the current cluster or the first
    candidate, so the result is deterministic. Returns the number of moves.

    A pass skips the nodes none of whose neighbours moved since their last visit: such a node sees
    the same Σ S to the same clusters and stays, as it did then (the graph has no self-loops, so a
    node with "different" evidence to its own cluster has a neighbour there, and "every cluster
    pulls it away" cannot turn true without a neighbour moving). So the moves, the passes and the
    partition are those of visiting every node, without the visits that could not move anything:
    on a crowd answering at random (10,000 images in 60-image HITs) these moves took 40% less time.
    """
    n = labels.shape[0]
    size, free, n_free = _sizes_and_free(labels, np.ones(n))
    acc = np.zeros(n)
    mark = np.zeros(n, dtype=np.bool_)
    touched = np.empty(n, dtype=np.int64)
    stale = np.ones(n, dtype=np.bool_)  # a neighbour (or the node) moved since its last visit
    total_moves = 0
    for _ in range(max_passes):
        moved = 0
        for pos in range(n):
            i = order[pos]
            if not stale[i]:
                continue
            stale[i] = False
            cur = labels[i]
            nt = _gather(i, indptr, indices, data, labels, acc, mark, touched)
            best = cur
            best_val = acc[cur]
            for q in range(nt):
                c = touched[q]
                if c != cur and acc[c] > best_val + EPS:
                    best, best_val = c, acc[c]
            if best_val < -EPS and size[cur] > 1.5:
                best = free[n_free - 1]  # every cluster pulls the node away: open a new one
            _clear(acc, mark, touched, nt)
            if best != cur:
                n_free = _relocate(labels, size, free, n_free, i, best, 1.0)
                moved += 1
                stale[i] = True
                for p in range(indptr[i], indptr[i + 1]):
                    stale[indices[p]] = True
        total_moves += moved
        if moved == 0:
            break
    return total_moves


@njit(cache=True)
def prior_moves(indptr, indices, data, labels, weight, order, max_passes, log_alpha):  # pragma: no cover
    """Move nodes one by one where Σ S plus the Ewens log prior rises most.

    A node is an item (weight 1) or a piece / cluster of `weight` items on a coarse graph. Placing a
    node of m items in a cluster of n others is worth Σ S to it plus log Γ(n+m) - log Γ(n), and
    opening a cluster log Γ(m) + log α. Candidates: the clusters the node touches, the largest
    cluster it touches not (S = 0 there, so only the largest can win), a new cluster. Each move
    raises the score, nodes are visited in `order` and ties keep the current cluster, so the loop
    ends and the result is deterministic. Returns the number of moves.
    """
    n = labels.shape[0]
    size, free, n_free = _sizes_and_free(labels, weight)
    lg = log_gammas(int(size.sum()))  # weights are whole numbers of items
    acc = np.zeros(n)
    mark = np.zeros(n, dtype=np.bool_)
    touched = np.empty(n, dtype=np.int64)
    total_moves = 0
    for _ in range(max_passes):
        by_size = np.argsort(-size, kind="mergesort")  # sizes drift within a pass: a fixed scan order
        moved = 0
        for pos in range(n):
            i = order[pos]
            cur = labels[i]
            m = weight[i]
            nt = _gather(i, indptr, indices, data, labels, acc, mark, touched)
            rest = size[cur] - m
            alone = lg[int(m)] + log_alpha
            best = cur
            best_val = acc[cur] + lg[int(rest + m)] - lg[int(rest)] if rest > 0.5 else alone
            for q in range(nt):
                c = touched[q]
                if c != cur and size[c] > 0.5:
                    value = acc[c] + lg[int(size[c] + m)] - lg[int(size[c])]
                    if value > best_val + EPS:
                        best, best_val = c, value
            for c in by_size:
                if size[c] < 0.5:
                    break
                if c != cur and not mark[c]:
                    value = lg[int(size[c] + m)] - lg[int(size[c])]
                    if value > best_val + EPS:
                        best, best_val = c, value
                    break
            if rest > 0.5 and alone > best_val + EPS:
                best = free[n_free - 1]
            _clear(acc, mark, touched, nt)
            if best != cur:
                n_free = _relocate(labels, size, free, n_free, i, best, m)
                moved += 1
        total_moves += moved
        if moved == 0:
            break
    return total_moves


@njit(cache=True, inline="always")
def _merge_gain(between, size, lg, r, q, log_alpha):  # pragma: no cover - compiled
    """Score change of merging clusters r and q: Σ S between them plus the Ewens log prior change."""
    return (
        between[r, q] + lg[int(size[r] + size[q])] - lg[int(size[r])] - lg[int(size[q])] - log_alpha
    )  # fmt: skip


@njit(cache=True)
def _two_best(between, size, lg, alive, r, log_alpha, out_gain, out_partner):  # pragma: no cover
    """The best and second-best merges of r (staying apart is worth 0), into out_*[r, 0..1]."""
    g1, p1, g2, p2 = 0.0, -1, 0.0, -1
    for q in range(size.shape[0]):
        if q != r and alive[q]:
            g = _merge_gain(between, size, lg, r, q, log_alpha)
            if g > g1:
                g2, p2, g1, p1 = g1, p1, g, q
            elif g > g2:
                g2, p2 = g, q
    out_gain[r, 0], out_partner[r, 0], out_gain[r, 1], out_partner[r, 1] = g1, p1, g2, p2


@njit(cache=True)
def greedy_merge(ptr, idx, val, sizes, log_alpha):  # pragma: no cover - compiled
    """Merge clusters while a merge raises Σ S + Ewens log prior, the most decisive merge first.

    Input: the graph between clusters (`coarsen`) and their sizes; every pair of clusters is a
    candidate, compared or not. A cluster's next merge is decisive when its best gain stands far
    above its second best choice (another merge, or staying apart): merges the evidence leaves open
    wait until the merges around them have made them clear. Returns each cluster's new cluster id.
    Dense k×k table: callers bound k (MERGE_MAX_NODES).
    """
    k = sizes.shape[0]
    between = np.zeros((k, k))
    for c in range(k):
        for p in range(ptr[c], ptr[c + 1]):
            between[c, idx[p]] = val[p]
    size = sizes.astype(np.float64)
    lg = log_gammas(int(size.sum()))  # sizes are whole numbers of items
    alive = np.ones(k, dtype=np.bool_)
    root = np.arange(k)
    gain = np.zeros((k, 2))
    partner = np.full((k, 2), -1, dtype=np.int64)
    for r in range(k):
        _two_best(between, size, lg, alive, r, log_alpha, gain, partner)
    while True:
        r, top = -1, EPS
        for x in range(k):
            if alive[x] and partner[x, 0] >= 0 and gain[x, 0] - gain[x, 1] > top:
                r, top = x, gain[x, 0] - gain[x, 1]
        if r < 0:
            break
        q = partner[r, 0]
        r, q = min(r, q), max(r, q)
        for x in range(k):
            between[r, x] += between[q, x]
            between[x, r] = between[r, x]
        between[r, r] = 0.0
        size[r] += size[q]
        alive[q] = False
        root[q] = r
        for x in range(k):
            if not alive[x]:
                continue
            if x == r or partner[x, 0] in (r, q) or partner[x, 1] in (r, q):
                _two_best(between, size, lg, alive, x, log_alpha, gain, partner)
                continue
            g = _merge_gain(between, size, lg, x, r, log_alpha)
            if g > gain[x, 0]:
                gain[x, 1], partner[x, 1] = gain[x, 0], partner[x, 0]
                gain[x, 0], partner[x, 0] = g, r
            elif g > gain[x, 1]:
                gain[x, 1], partner[x, 1] = g, r
    return flatten_roots(root)


@njit(cache=True)
def flatten_roots(parent):  # pragma: no cover - compiled
    """A union-find forest flattened in place: every node points at its root. Returns `parent`."""
    for i in range(parent.shape[0]):
        r = i
        while parent[r] != r:
            r = parent[r]
        parent[i] = r
    return parent


@njit(cache=True)
def margins(indptr, indices, data, labels):  # pragma: no cover - compiled
    """Per item: Σ S to its own cluster minus the best alternative (another cluster, or alone: 0)."""
    n = labels.shape[0]
    acc = np.zeros(n)
    mark = np.zeros(n, dtype=np.bool_)
    touched = np.empty(n, dtype=np.int64)
    out = np.empty(n)
    for i in range(n):
        cur = labels[i]
        nt = _gather(i, indptr, indices, data, labels, acc, mark, touched)
        other = 0.0
        for q in range(nt):
            c = touched[q]
            if c != cur:
                other = max(other, acc[c])
        out[i] = acc[cur] - other
        _clear(acc, mark, touched, nt)
    return out


@njit(cache=True)
def coarsen(indptr, indices, data, labels, n_clusters):  # pragma: no cover - compiled
    """The graph between clusters: S summed over the pairs between two clusters (no self-loops)."""
    order = np.argsort(labels, kind="mergesort")
    start = np.zeros(n_clusters + 1, dtype=np.int64)
    for i in range(labels.shape[0]):
        start[labels[i] + 1] += 1
    for c in range(n_clusters):
        start[c + 1] += start[c]
    out_ptr = np.zeros(n_clusters + 1, dtype=np.int64)
    out_idx = np.empty(indices.shape[0], dtype=np.int64)
    out_val = np.empty(indices.shape[0])
    acc = np.zeros(n_clusters)
    mark = np.zeros(n_clusters, dtype=np.bool_)
    touched = np.empty(n_clusters, dtype=np.int64)
    nnz = 0
    for c in range(n_clusters):
        nt = 0
        for pos in range(start[c], start[c + 1]):
            i = order[pos]
            for p in range(indptr[i], indptr[i + 1]):
                d = labels[indices[p]]
                if d == c:
                    continue
                if not mark[d]:
                    mark[d] = True
                    touched[nt] = d
                    nt += 1
                acc[d] += data[p]
        for q in range(nt):
            d = touched[q]
            out_idx[nnz] = d
            out_val[nnz] = acc[d]
            nnz += 1
            acc[d] = 0.0
            mark[d] = False
        out_ptr[c + 1] = nnz
    return out_ptr, out_idx[:nnz].copy(), out_val[:nnz].copy()


@njit(cache=True)
def dissolve_small(indptr, indices, data, labels, min_size, log_alpha, forced):  # pragma: no cover
    """Move the items of clusters smaller than `min_size` to their most likely cluster among the others.

    Most likely under the model: P(z_i = c) ∝ n_c · exp(S_ic) (`aggregation.confidence`). Unless
    `forced`, an item stays where it is when that beats every kept cluster (its own cluster counts as
    a new one, weight α). Kept clusters' sizes are fixed beforehand (one pass in item order:
    deterministic). Returns False when no cluster is big enough to keep.
    """
    n = labels.shape[0]
    size = np.zeros(n, dtype=np.int64)
    for i in range(n):
        size[labels[i]] += 1
    keep = size >= min_size
    if not keep.any():
        return False
    biggest = np.argsort(-size, kind="mergesort")
    acc = np.zeros(n)
    mark = np.zeros(n, dtype=np.bool_)
    touched = np.empty(n, dtype=np.int64)
    new = labels.copy()
    for i in range(n):
        if keep[labels[i]]:
            continue
        nt = 0
        for p in range(indptr[i], indptr[i + 1]):
            c = labels[indices[p]]
            if keep[c] and not mark[c]:
                mark[c] = True
                touched[nt] = c
                nt += 1
            if keep[c]:
                acc[c] += data[p]
        best = labels[i]
        best_val = -np.inf if forced else log_alpha
        for q in range(nt):
            c = touched[q]
            val = math.log(size[c]) + acc[c]
            if val > best_val:
                best, best_val = c, val
        for c in biggest:
            if not keep[c]:
                break
            if not mark[c]:
                if math.log(size[c]) > best_val:
                    best = c
                break
        if best < 0:
            best = labels[i]
        new[i] = best
        for q in range(nt):
            acc[touched[q]] = 0.0
            mark[touched[q]] = False
    labels[:] = new
    return True


@njit(cache=True)
def _lone_sums(indptr, indices, data, lone, pos, inside, contrib):  # pragma: no cover - compiled
    """contrib[j] = Σ S between lone item j and the lone items `inside` (0 for those outside)."""
    for j in range(lone.shape[0]):
        contrib[j] = 0.0
        if inside[j]:
            for p in range(indptr[lone[j]], indptr[lone[j] + 1]):
                q = pos[indices[p]]
                if q >= 0 and inside[q]:
                    contrib[j] += data[p]


@njit(cache=True)
def pool_lone(indptr, indices, data, labels, log_alpha):  # pragma: no cover - compiled
    """Put items that stand alone together where the Ewens prior outweighs their labels; in place.

    A lone item's labels rule out every cluster (`dissolve_small` left it alone). Against standing
    apart, a cluster of m lone items scores Σ S within + log (m-1)! - (m-1) log α: three that were
    never compared gain log 2, which no single move sees (joining another lone item gains its S,
    nothing when they never met). Peeling: of the lone items, drop the one whose leaving raises the
    group's score most, while one does; the rest form a cluster if it scores above 0; repeat on
    the dropped ones. Ties go to the lowest item, so the result is deterministic.
    """
    n = labels.shape[0]
    size = np.zeros(n, dtype=np.int64)
    for i in range(n):
        size[labels[i]] += 1
    lone = np.array([i for i in range(n) if size[labels[i]] == 1], dtype=np.int64)
    k = lone.shape[0]
    pos = np.full(n, -1, dtype=np.int64)
    for j in range(k):
        pos[lone[j]] = j
    free = np.ones(k, dtype=np.bool_)
    contrib = np.zeros(k)
    fresh = labels.max() + 1
    while True:
        inside = free.copy()
        m = int(inside.sum())
        if m < 2:
            break
        _lone_sums(indptr, indices, data, lone, pos, inside, contrib)
        while m >= 2:
            drop, top = -1, EPS
            for j in range(k):
                if inside[j]:
                    gain = log_alpha - contrib[j] - math.log(m - 1)
                    if gain > top:
                        drop, top = j, gain
            if drop < 0:
                break
            inside[drop] = False
            m -= 1
            for p in range(indptr[lone[drop]], indptr[lone[drop] + 1]):
                q = pos[indices[p]]
                if q >= 0 and inside[q]:
                    contrib[q] -= data[p]
        within = 0.0
        for j in range(k):
            if inside[j]:
                within += contrib[j]
        if m < 2 or 0.5 * within + math.lgamma(m) - (m - 1) * log_alpha <= EPS:
            break
        for j in range(k):
            if inside[j]:
                labels[lone[j]] = fresh
                free[j] = False
        fresh += 1


class MinClusterSizeError(ValueError):
    """`min_cluster_size` above every cluster's size: nothing is left for the items to join.

    A class of its own so that a caller can blame the setting (the command names its option)
    rather than the export; `largest` says how far off the setting is.
    """

    def __init__(self, size: int, largest: int) -> None:
        super().__init__(f"no cluster has {size:,} or more items (the largest has {largest:,})")
        self.size, self.largest = size, largest


class Csr(NamedTuple):
    """A symmetric sparse matrix in CSR form."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray


class PairGraph:
    """The symmetric item graph of the observed pairs, built once; `scores` fills in S for given llr.

    Besides the CSR structure it keeps the labels grouped by item pair (`pair_ptr`, with the
    workers and answers in that order) and each pair's two places in the CSR, so `evidence` reads
    the labels sequentially instead of scattering into a matrix of 2 × the pairs.
    """

    def __init__(self, pairs: PairLabels) -> None:
        n = pairs.n_items
        a, b, self.inverse = pair_index(pairs.a, pairs.b, n)
        # Both directions, sorted by (row, column): row a's entries are (a, b>a) after (a, b<a).
        rows, cols = np.r_[a, b], np.r_[b, a]
        order = np.lexsort((cols, rows))
        self.indptr = np.r_[0, np.cumsum(np.bincount(rows, minlength=n))].astype(np.int64)
        self.indices = cols[order].astype(np.int64)
        place = np.empty(len(order), dtype=np.int64)
        place[order] = np.arange(len(order))
        self.place_ab, self.place_ba = place[: len(a)], place[len(a) :]
        self.pair_ptr = code_starts(self.inverse, len(a))
        grouped = labels_by_pair(self.inverse, self.pair_ptr, pairs.worker, pairs.label)
        self.pair_worker, self.pair_yes = grouped

    def coassociation(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """`pairs.coassociation` of the labels the graph was built from, without sorting them again.

        Same arrays, same order. At 100,000 images the second sort of 31.5 M labels made the peak
        memory of `crowdclust aggregate` (for the images to show again, after the fit).
        """
        rows = np.repeat(np.arange(len(self.indptr) - 1, dtype=np.int64), np.diff(self.indptr))
        a, b = rows[self.place_ab], self.indices[self.place_ab]
        votes = np.diff(self.pair_ptr).astype(np.float64)
        same = np.add.reduceat(self.pair_yes, self.pair_ptr[:-1], dtype=np.int64).astype(np.float64)
        return a, b, same, votes

    def scores(self, llr: np.ndarray) -> Csr:
        """S_ab = Σ over labels of (a, b) of llr_t, as a symmetric CSR matrix."""
        upper = np.bincount(self.inverse, weights=llr, minlength=len(self.place_ab))
        data = np.empty(len(self.indices))
        data[self.place_ab] = upper
        data[self.place_ba] = upper
        return Csr(self.indptr, self.indices, data)

    def evidence(self, pairs: PairLabels, labels: np.ndarray, prior: float = 10.0) -> Csr:
        """`scores(worker_llr(pairs, labels))`, summed pair by pair without per-label arrays."""
        w_yes, w_no = _coin_weights(pairs, np.asarray(labels, dtype=np.int64), prior)
        data = _pair_sums(
            self.pair_ptr, self.pair_worker, self.pair_yes, w_yes, w_no, self.place_ab, self.place_ba
        )
        return Csr(self.indptr, self.indices, data)


def pair_scores(pairs: PairLabels, llr: np.ndarray) -> Csr:
    """Symmetric sparse S with S_ab = Σ over labels of (a, b) of llr_t."""
    return PairGraph(pairs).scores(llr)


@njit(cache=True, nogil=True)
def coin_counts(a, b, worker, label, labels, n_workers):  # pragma: no cover - compiled
    """Per worker: labels inside one cluster (said "same", all), across clusters (said "different", all)."""
    out = np.zeros((n_workers, 4))
    for t in range(a.shape[0]):
        j = worker[t]
        if labels[a[t]] == labels[b[t]]:
            out[j, 1] += 1.0
            if label[t] > 0:
                out[j, 0] += 1.0
        else:
            out[j, 3] += 1.0
            if label[t] < 0:
                out[j, 2] += 1.0
    return out


@njit(cache=True, nogil=True)
def _pair_sums(pair_ptr, worker, yes, w_yes, w_no, place_ab, place_ba):  # pragma: no cover - compiled
    """S of every observed pair (labels grouped by pair, summed in label order), at its two places."""
    out = np.empty(place_ab.shape[0] * 2)
    for u in range(place_ab.shape[0]):
        total = 0.0
        for t in range(pair_ptr[u], pair_ptr[u + 1]):
            total += w_yes[worker[t]] if yes[t] else w_no[worker[t]]
        out[place_ab[u]] = total
        out[place_ba[u]] = total
    return out


def _coin_weights(pairs: PairLabels, labels: np.ndarray, prior: float) -> tuple[np.ndarray, np.ndarray]:
    """Each worker's llr of a "same" and of a "different" label under their two coins, fitted to `labels`."""
    counts = coin_counts(pairs.a, pairs.b, pairs.worker, pairs.label, labels, pairs.n_workers)
    return coin_weights(counts, prior)


def coin_weights(counts: np.ndarray, prior: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """The llr of a "same" and of a "different" label per worker, from their `coin_counts`.

    `prior` pseudo-counts pull sens and spec toward 0.75, so a worker with few labels gets a
    moderate weight rather than an extreme one.
    """
    sens = (counts[:, 0] + 0.75 * prior) / (counts[:, 1] + prior)
    spec = (counts[:, 2] + 0.75 * prior) / (counts[:, 3] + prior)
    return np.log(sens / (1.0 - spec)), np.log((1.0 - sens) / spec)


def worker_llr(pairs: PairLabels, labels: np.ndarray, prior: float = 10.0) -> np.ndarray:
    """Per-label evidence for 'same' under each worker's two coins, estimated from `labels`."""
    w_yes, w_no = _coin_weights(pairs, np.asarray(labels, dtype=np.int64), prior)
    return np.where(pairs.label > 0, w_yes[pairs.worker], w_no[pairs.worker])


def log_likelihood(pairs: PairLabels, labels: np.ndarray) -> float:
    """Log-likelihood of all labels under the two-coin workers fitted to `labels`.

    It compares partitions with any number of clusters on the same footing: each worker has two
    coins whatever the partition, and a partition is better when the workers' answers are more
    predictable from it.
    """
    counts = coin_counts(
        pairs.a, pairs.b, pairs.worker, pairs.label, np.asarray(labels, dtype=np.int64), pairs.n_workers
    )
    total = 0.0
    for n_yes, n_all in ((counts[:, 0], counts[:, 1]), (counts[:, 3] - counts[:, 2], counts[:, 3])):
        rate = (n_yes + 0.5) / (n_all + 1.0)
        total += float((n_yes * np.log(rate) + (n_all - n_yes) * np.log1p(-rate)).sum())
    return total


def log_prior(labels: np.ndarray, alpha: float = ALPHA) -> float:
    """Ewens log prior of a partition, up to a constant: K log α + Σ_k log Γ(n_k)."""
    sizes = np.bincount(labels)
    sizes = sizes[sizes > 0]
    return float(len(sizes) * math.log(alpha) + sum(math.lgamma(s) for s in sizes.tolist()))


def partition_score(score: Csr, labels: np.ndarray) -> float:
    """Σ S_ab over observed pairs inside one cluster (each pair once)."""
    rows = np.repeat(np.arange(len(labels)), np.diff(score.indptr))
    inside = labels[rows] == labels[score.indices]
    return float(score.data[inside].sum() / 2.0)


def _relabel(labels: np.ndarray) -> np.ndarray:
    return np.unique(labels, return_inverse=True)[1].astype(np.int64)


def _cores(score: Csr, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`labels` with the items held by thin evidence (margin below CORE_MARGIN) set apart as singletons."""
    weak = margins(score.indptr, score.indices, score.data, labels) < CORE_MARGIN
    cores = labels.copy()
    cores[weak] = labels.max() + 1 + np.arange(int(weak.sum()))
    return _relabel(cores), weak


def _louvain(score: Csr, start: np.ndarray, order: np.ndarray, max_passes: int) -> np.ndarray:
    """Item moves, then whole-cluster moves on the coarse graph, repeated until clusters stay put.

    Before the clusters move, items held by thin evidence (margin below CORE_MARGIN) are set apart
    as singletons: one wrongly attached item would otherwise put "different" labels between two
    halves of one class and stop their merge. The item moves that follow put them back.
    """
    labels = _relabel(start)
    for _ in range(10):
        local_moves(score.indptr, score.indices, score.data, labels, order, max_passes)
        labels = _relabel(labels)
        cores, weak = _cores(score, labels)
        k = int(cores.max()) + 1
        nodes = np.arange(k, dtype=np.int64)
        local_moves(
            *coarsen(score.indptr, score.indices, score.data, cores, k), nodes, nodes.copy(), max_passes
        )
        core_ids = np.unique(cores[~weak])
        if len(np.unique(nodes[core_ids])) == len(core_ids):
            return labels  # no two cores merged: the item moves already settled everything
        labels = _relabel(nodes[cores])
    local_moves(score.indptr, score.indices, score.data, labels, order, max_passes)
    return _relabel(labels)


def refine(
    pairs: PairLabels,
    labels: np.ndarray | None,
    start: np.ndarray | None = None,
    order: np.ndarray | None = None,
    graph: PairGraph | None = None,
    n_rounds: int = 6,
    max_passes: int = 30,
) -> np.ndarray:
    """Alternate worker two-coin estimates and the move search until the partition is stable.

    `labels` gives the first estimate of the workers' coins (None: the prior coins PRIOR_SENS,
    PRIOR_SPEC for everyone); the search starts from `start` (default: `labels`, or singletons)
    and visits items in `order` (default: index order).
    """
    n = pairs.n_items
    order = np.arange(n, dtype=np.int64) if order is None else np.asarray(order, dtype=np.int64)
    graph = PairGraph(pairs) if graph is None else graph
    if labels is None:
        yes, no = np.log(PRIOR_SENS / (1 - PRIOR_SPEC)), np.log((1 - PRIOR_SENS) / PRIOR_SPEC)
        llr = np.where(pairs.label > 0, yes, no)
        first = np.arange(n, dtype=np.int64) if start is None else np.asarray(start, dtype=np.int64)
        labels = _louvain(graph.scores(llr), first, order, max_passes)
        start = labels
    labels = _relabel(np.asarray(labels, dtype=np.int64))
    current = labels if start is None else _relabel(np.asarray(start, dtype=np.int64))
    for _ in range(n_rounds):
        new = _louvain(graph.evidence(pairs, labels), current, order, max_passes)
        if np.array_equal(new, labels):
            break
        labels = current = new
    return labels


class SearchResult(NamedTuple):
    """The best partition, its score per start, and the score matrix the confidences come from."""

    labels: np.ndarray
    scores: list[tuple[str, float]]
    score: Csr


def absorb_thin(
    pairs: PairLabels, labels: np.ndarray, score: Csr, min_size: int | None, alpha: float
) -> np.ndarray:
    """Items of clusters below `min_size` join their most likely cluster (None: singletons, if likelier).

    With `min_size=None` the model decides: a singleton joins the cluster c maximising n_c·exp(S_ic)
    when that beats α, the weight of standing alone, so an item whose labels are few or
    contradictory ends in an existing cluster unless its labels rule every cluster out; the items
    left alone then form clusters of their own where the prior favours that (`pool_lone`: typically
    images of a small style that never met one another). With a number, every item of a smaller
    cluster moves, whatever the evidence.
    """
    new = np.asarray(labels, dtype=np.int64).copy()
    largest = int(np.bincount(new).max()) if len(new) else 0
    forced = min_size is not None
    size = 2 if min_size is None else int(min_size)
    if size <= 1:
        return new
    if not dissolve_small(score.indptr, score.indices, score.data, new, size, math.log(alpha), forced):
        if not forced:  # every item stands alone: its labels set it apart, and no cluster is left to join
            return _relabel(new)
        raise MinClusterSizeError(size, largest)
    if not forced:
        pool_lone(score.indptr, score.indices, score.data, new, math.log(alpha))
    return _relabel(new)


def merge_clusters(score: Csr, labels: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """`greedy_merge` over the cores of `labels` (thin-evidence items stay apart; the moves place them).

    Only the MERGE_MAX_NODES largest cores (of two items or more) take part, which bounds the dense
    table; the others are left to `move_pieces` and the item moves.
    """
    cores, _ = _cores(score, _relabel(labels))
    sizes = np.bincount(cores)
    nodes = np.argsort(-sizes, kind="mergesort")[: min(MERGE_MAX_NODES, int((sizes >= 2).sum()))]
    if len(nodes) < 2:
        return cores
    node_of = np.full(len(sizes), -1, dtype=np.int64)
    node_of[nodes] = np.arange(len(nodes))
    inside = node_of[cores] >= 0
    # The graph between the chosen cores: every other item is a node of its own, then cut away.
    coarse = np.where(inside, node_of[cores], len(nodes) + np.arange(len(cores)))
    ptr, idx, val = coarsen(score.indptr, score.indices, score.data, coarse, len(nodes) + len(cores))
    rows = np.repeat(np.arange(len(ptr) - 1), np.diff(ptr))
    keep = (rows < len(nodes)) & (idx < len(nodes))
    sub_ptr = np.r_[0, np.cumsum(np.bincount(rows[keep], minlength=len(nodes)))].astype(np.int64)
    root = greedy_merge(sub_ptr, idx[keep], val[keep], sizes[nodes], math.log(alpha))
    merged = np.where(inside, root[np.maximum(node_of[cores], 0)], len(nodes) + np.arange(len(cores)))
    return _relabel(merged)


def move_pieces(score: Csr, labels: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """Cut every cluster into the pieces its own labels hold together, then move pieces, then clusters.

    The pieces come from the evidence moves on the graph of pairs inside clusters (a piece never
    spans two clusters); on the graph between pieces, each piece then moves to the cluster where
    Σ S + Ewens log prior is highest (largest pieces first), and finally whole clusters may merge
    the same way. A piece an early merge put in the wrong cluster can so leave it as a whole, which
    no single item move would do.
    """
    n = len(labels)
    rows = np.repeat(np.arange(n), np.diff(score.indptr))
    inside = np.where(labels[rows] == labels[score.indices], score.data, 0.0)
    pieces = np.arange(n, dtype=np.int64)
    local_moves(score.indptr, score.indices, inside, pieces, np.arange(n, dtype=np.int64), 30)
    pieces = _relabel(pieces)
    k = int(pieces.max()) + 1
    parent = np.zeros(k, dtype=np.int64)
    parent[pieces] = labels
    parent = _relabel(parent)
    log_alpha = math.log(alpha)
    for _ in range(2):  # pieces, then the clusters they formed
        weight = np.bincount(pieces).astype(np.float64)
        ptr, idx, val = coarsen(score.indptr, score.indices, score.data, pieces, len(weight))
        order = np.argsort(-weight, kind="mergesort").astype(np.int64)
        prior_moves(ptr, idx, val, parent, weight, order, 30, log_alpha)
        pieces = _relabel(parent[pieces])
        parent = np.arange(int(pieces.max()) + 1, dtype=np.int64)
    return pieces


def move_items(score: Csr, labels: np.ndarray, alpha: float = ALPHA, max_passes: int = 30) -> np.ndarray:
    """`prior_moves` of single items, in index order."""
    labels = _relabel(np.asarray(labels, dtype=np.int64))
    n = len(labels)
    order = np.arange(n, dtype=np.int64)
    ones = np.ones(n)
    prior_moves(score.indptr, score.indices, score.data, labels, ones, order, max_passes, math.log(alpha))
    return _relabel(labels)


def settle(
    pairs: PairLabels,
    labels: np.ndarray,
    graph: PairGraph,
    alpha: float = ALPHA,
    n_rounds: int = MODEL_ROUNDS,
) -> tuple[np.ndarray, float]:
    """Stage 2 of the search: merges, piece moves, item moves under the full score, coins re-fitted.

    Returns the best partition met and its log-likelihood + log prior; stops when a round does not
    raise it.
    """
    best = _relabel(np.asarray(labels, dtype=np.int64))
    best_value = log_likelihood(pairs, best) + log_prior(best, alpha)
    current = best
    for _ in range(n_rounds):
        current = merge_clusters(graph.evidence(pairs, current), current, alpha)
        current = move_pieces(graph.evidence(pairs, current), current, alpha)
        current = move_items(graph.evidence(pairs, current), current, alpha)
        value = log_likelihood(pairs, current) + log_prior(current, alpha)
        if value <= best_value + EPS:
            break
        best, best_value = current, value
    return best, best_value


def search(
    pairs: PairLabels,
    starts: list[tuple[str, np.ndarray | None]],
    random_state: int = 0,
    alpha: float = ALPHA,
    graph: PairGraph | None = None,
) -> SearchResult:
    """From each start, `refine` (evidence), `settle` (full score), then cross-validated cuts.

    A start is (name, partition or None); None means singletons with the prior coins, visited in a
    seeded random order (one order per such start). `aggregation.splitting.split_clusters` then
    cuts a cluster that held-out tasks show to be two, and `absorb_thin` puts any singleton the
    moves left where the model finds it likelier. Between starts the best log-likelihood + Ewens
    log prior wins.
    """
    from aggregation.splitting import split_clusters  # it builds on this module's kernels

    rng = np.random.default_rng(random_state)
    graph = PairGraph(pairs) if graph is None else graph
    best, best_value, scores = None, -np.inf, []
    for name, start in starts:
        if start is None:
            labels = refine(pairs, None, order=rng.permutation(pairs.n_items), graph=graph)
        else:
            labels = refine(pairs, start, graph=graph)
        labels, _ = settle(pairs, labels, graph, alpha)
        labels = split_clusters(pairs, labels, alpha, random_state)
        labels = absorb_thin(pairs, labels, graph.evidence(pairs, labels), None, alpha)
        value = log_likelihood(pairs, labels) + log_prior(labels, alpha)
        scores.append((name, value))
        if value > best_value:
            best, best_value = labels, value
    assert best is not None
    return SearchResult(best, scores, graph.evidence(pairs, best))
