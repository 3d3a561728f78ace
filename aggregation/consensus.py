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

The search is Louvain-like and runs entirely in numba: move single items to the cluster that raises
the score most, then treat the clusters as nodes and move whole clusters (a merge is a move), level
after level, then move single items again; re-estimate the workers' coins from the partition and
repeat. Everything walks the sparse graph of observed pairs (no N×K array, no Python loop over
clusters), and every order is fixed, so the result is deterministic.

`item_confidence` turns the same score into each item's posterior probability of its cluster (the
Gibbs conditional of z_i given everybody else).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit

from aggregation.pairs import PairLabels

__all__ = [
    "ALPHA",
    "Csr",
    "PairGraph",
    "SearchResult",
    "absorb_thin",
    "dissolve_small",
    "embedding_merges",
    "item_confidence",
    "log_likelihood",
    "log_prior",
    "pair_scores",
    "partition_score",
    "refine",
    "search",
    "worker_llr",
]

ALPHA = 1.0  # Ewens concentration: the prior odds of a new cluster against one of size 1
PRIOR_SENS = 0.8  # P(worker says "same" | same cluster) before any partition is known
PRIOR_SPEC = 0.9  # P(worker says "different" | different clusters)
EPS = 1e-9
MERGE_ROUNDS = 3  # embedding-proposed merges, each followed by the move search
CORE_MARGIN = 4.0  # nats (about two careful workers' labels): less than this is thin evidence


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
def local_moves(indptr, indices, data, labels, order, max_passes):  # pragma: no cover - compiled
    """Move nodes one by one to the cluster with the largest Σ S (0 for a new cluster).

    Nodes are items, or whole clusters on a coarse graph (`coarsen`). Each move raises the score, so
    the loop ends; nodes are visited in `order` and ties keep the current cluster or the first
    candidate, so the result is deterministic. Returns the number of moves.
    """
    n = labels.shape[0]
    size = np.zeros(n, dtype=np.int64)
    for i in range(n):
        size[labels[i]] += 1
    free = np.empty(n, dtype=np.int64)  # stack of empty cluster ids, smallest on top
    n_free = 0
    for c in range(n - 1, -1, -1):
        if size[c] == 0:
            free[n_free] = c
            n_free += 1
    acc = np.zeros(n)
    mark = np.zeros(n, dtype=np.bool_)
    touched = np.empty(n, dtype=np.int64)
    total_moves = 0
    for _ in range(max_passes):
        moved = 0
        for pos in range(n):
            i = order[pos]
            cur = labels[i]
            nt = _gather(i, indptr, indices, data, labels, acc, mark, touched)
            best = cur
            best_val = acc[cur]
            for q in range(nt):
                c = touched[q]
                if c != cur and acc[c] > best_val + EPS:
                    best, best_val = c, acc[c]
            if best_val < -EPS and size[cur] > 1:
                best = free[n_free - 1]  # every cluster pulls the node away: open a new one
            _clear(acc, mark, touched, nt)
            if best != cur:
                if size[best] == 0:
                    n_free -= 1
                size[cur] -= 1
                size[best] += 1
                if size[cur] == 0:
                    free[n_free] = cur
                    n_free += 1
                labels[i] = best
                moved += 1
        total_moves += moved
        if moved == 0:
            break
    return total_moves


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
def item_confidence(indptr, indices, data, labels, log_alpha):  # pragma: no cover - compiled
    """P(z_i = z_i's cluster | everybody else) for every item: the Gibbs conditional of the model.

    Over existing clusters c it is ∝ n_c · exp(S_ic) (n_c without i; S_ic = 0 for clusters i was
    never compared with), and ∝ α for a new cluster. Clusters i was never compared with are summed
    in one term, so the cost is the item's degree, not the number of clusters.
    """
    n = labels.shape[0]
    size = np.zeros(n, dtype=np.int64)
    for i in range(n):
        size[labels[i]] += 1
    acc = np.zeros(n)
    mark = np.zeros(n, dtype=np.bool_)
    touched = np.empty(n, dtype=np.int64)
    out = np.empty(n)
    alpha = math.exp(log_alpha)
    for i in range(n):
        cur = labels[i]
        size[cur] -= 1
        nt = _gather(i, indptr, indices, data, labels, acc, mark, touched)
        # Untouched clusters share S = 0: their mass is their total size.
        untouched = n - 1.0
        top = log_alpha
        for q in range(nt):
            c = touched[q]
            untouched -= size[c]
            if size[c] > 0:
                top = max(top, math.log(size[c]) + acc[c])
        if untouched > 0.5:
            top = max(top, math.log(untouched))
        total = alpha * math.exp(-top) + max(untouched, 0.0) * math.exp(-top)
        own = 0.0
        if not mark[cur]:
            own = size[cur] * math.exp(-top)  # i was compared with none of its cluster
        for q in range(nt):
            c = touched[q]
            if size[c] > 0:
                value = math.exp(math.log(size[c]) + acc[c] - top)
                total += value
                if c == cur:
                    own = value
        if size[cur] == 0:
            own = alpha * math.exp(-top)  # a singleton: the "new cluster" term is its own
        out[i] = min(max(own / total, 0.0), 1.0)
        _clear(acc, mark, touched, nt)
        size[cur] += 1
    return out


@njit(cache=True)
def dissolve_small(indptr, indices, data, labels, min_size, log_alpha, forced):  # pragma: no cover
    """Move the items of clusters smaller than `min_size` to their most likely cluster among the others.

    Most likely under the model: P(z_i = c) ∝ n_c · exp(S_ic) (see `item_confidence`). Unless
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


class Csr(NamedTuple):
    """A symmetric sparse matrix in CSR form."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray


class PairGraph:
    """The symmetric item graph of the observed pairs, built once; `scores` fills in S for given llr."""

    def __init__(self, pairs: PairLabels) -> None:
        n = pairs.n_items
        key = np.r_[pairs.a * n + pairs.b, pairs.b * n + pairs.a]
        uniq, self.inverse = np.unique(key, return_inverse=True)
        self.indptr = np.r_[0, np.cumsum(np.bincount(uniq // n, minlength=n))].astype(np.int64)
        self.indices = (uniq % n).astype(np.int64)

    def scores(self, llr: np.ndarray) -> Csr:
        """S_ab = Σ over labels of (a, b) of llr_t, as a symmetric CSR matrix."""
        return Csr(self.indptr, self.indices, np.bincount(self.inverse, weights=np.r_[llr, llr]))


def pair_scores(pairs: PairLabels, llr: np.ndarray) -> Csr:
    """Symmetric sparse S with S_ab = Σ over labels of (a, b) of llr_t."""
    return PairGraph(pairs).scores(llr)


def worker_llr(pairs: PairLabels, labels: np.ndarray, prior: float = 10.0) -> np.ndarray:
    """Per-label evidence for 'same' under each worker's two coins, estimated from `labels`.

    `prior` pseudo-counts pull sens and spec toward 0.75, so a worker with few labels gets a
    moderate weight rather than an extreme one.
    """
    same = labels[pairs.a] == labels[pairs.b]
    yes = pairs.label > 0
    count = pairs.per_worker
    sens = (count(same & yes) + 0.75 * prior) / (count(same) + prior)
    spec = (count(~same & ~yes) + 0.75 * prior) / (count(~same) + prior)
    w_yes = np.log(sens / (1.0 - spec))
    w_no = np.log((1.0 - sens) / spec)
    return np.where(yes, w_yes[pairs.worker], w_no[pairs.worker])


def log_likelihood(pairs: PairLabels, labels: np.ndarray) -> float:
    """Log-likelihood of all labels under the two-coin workers fitted to `labels`.

    It compares partitions with any number of clusters on the same footing: each worker has two
    coins whatever the partition, and a partition is better when the workers' answers are more
    predictable from it.
    """
    same = labels[pairs.a] == labels[pairs.b]
    yes = pairs.label > 0
    total = 0.0
    for inside in (same, ~same):
        n_yes = pairs.per_worker(inside & yes)
        n_all = pairs.per_worker(inside)
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
        weak = margins(score.indptr, score.indices, score.data, labels) < CORE_MARGIN
        cores = labels.copy()
        cores[weak] = labels.max() + 1 + np.arange(int(weak.sum()))
        cores = _relabel(cores)
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
        new = _louvain(graph.scores(worker_llr(pairs, labels)), current, order, max_passes)
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
    contradictory ends in an existing cluster unless its labels rule every cluster out. With a
    number, every item of a smaller cluster moves, whatever the evidence.
    """
    new = np.asarray(labels, dtype=np.int64).copy()
    forced = min_size is not None
    size = 2 if min_size is None else int(min_size)
    if size <= 1:
        return new
    if not dissolve_small(score.indptr, score.indices, score.data, new, size, math.log(alpha), forced):
        raise ValueError(f"no cluster has {size} or more items; lower min_cluster_size")
    return _relabel(new)


def embedding_merges(
    score: Csr, labels: np.ndarray, embedding: np.ndarray, alpha: float = ALPHA, n_neighbours: int = 3
) -> np.ndarray:
    """Merge clusters whose embedding centroids are close when the model score rises.

    Each image meets only a few of its own class in the crowd's pairs, so the move search can leave
    a class in fragments with little or no pair evidence between them; the embedding carries the
    transitive evidence. Every cluster proposes its `n_neighbours` nearest clusters (by centroid);
    proposals are tried nearest first and a merge is kept when Σ S between the two clusters plus the
    change of the Ewens log prior, log Γ(a+b) - log Γ(a) - log Γ(b) - log α, is positive.
    """
    labels = _relabel(np.asarray(labels, dtype=np.int64))
    k = int(labels.max()) + 1
    if k < 2:
        return labels
    sizes = np.bincount(labels, minlength=k).astype(np.float64)
    centroids = (
        np.stack(
            [np.bincount(labels, weights=embedding[:, d], minlength=k) for d in range(embedding.shape[1])], 1
        )
        / sizes[:, None]
    )
    ptr, idx, val = coarsen(score.indptr, score.indices, score.data, labels, k)
    between = [
        dict(zip(idx[ptr[c] : ptr[c + 1]].tolist(), val[ptr[c] : ptr[c + 1]].tolist(), strict=True))
        for c in range(k)
    ]
    proposals = []
    m = min(n_neighbours, k - 1)
    for c in range(k):
        dist = ((centroids - centroids[c]) ** 2).sum(axis=1)
        dist[c] = np.inf
        for d in np.argsort(dist, kind="mergesort")[:m].tolist():
            proposals.append((float(dist[d]), min(c, d), max(c, d)))
    proposals.sort()
    root = list(range(k))

    def find(c: int) -> int:
        while root[c] != c:
            root[c] = root[root[c]]
            c = root[c]
        return c

    size = sizes.tolist()
    log_alpha = math.log(alpha)
    for _, c, d in proposals:
        r, q = find(c), find(d)
        if r == q:
            continue
        gain = (
            between[r].get(q, 0.0)
            + math.lgamma(size[r] + size[q]) - math.lgamma(size[r]) - math.lgamma(size[q]) - log_alpha
        )  # fmt: skip
        if gain <= 0.0:
            continue
        r, q = min(r, q), max(r, q)
        root[q] = r
        size[r] += size[q]
        for other, value in between[q].items():
            if other == r:
                continue
            between[r][other] = between[r].get(other, 0.0) + value
            between[other][r] = between[other].get(r, 0.0) + value
            del between[other][q]
        between[r].pop(q, None)
        between[q] = {}
    return _relabel(np.array([find(c) for c in range(k)], dtype=np.int64)[labels])


def search(
    pairs: PairLabels,
    starts: list[tuple[str, np.ndarray | None]],
    random_state: int = 0,
    alpha: float = ALPHA,
    graph: PairGraph | None = None,
    embedding: np.ndarray | None = None,
) -> SearchResult:
    """Run `refine` (then `absorb_thin`) from each start; keep the best log-likelihood + log prior.

    A start is (name, partition or None); None means singletons with the prior coins, visited in a
    seeded random order (one order per such start).
    """
    rng = np.random.default_rng(random_state)
    graph = PairGraph(pairs) if graph is None else graph
    best, best_value, scores = None, -np.inf, []
    for name, start in starts:
        if start is None:
            labels = refine(pairs, None, order=rng.permutation(pairs.n_items), graph=graph)
        else:
            labels = refine(pairs, start, graph=graph)
        if embedding is not None:
            for _ in range(MERGE_ROUNDS):
                merged = embedding_merges(graph.scores(worker_llr(pairs, labels)), labels, embedding, alpha)
                if merged.max() == labels.max():
                    break
                labels = refine(pairs, merged, graph=graph)
        labels = absorb_thin(pairs, labels, graph.scores(worker_llr(pairs, labels)), None, alpha)
        value = log_likelihood(pairs, labels) + log_prior(labels, alpha)
        scores.append((name, value))
        if value > best_value:
            best, best_value = labels, value
    assert best is not None
    return SearchResult(best, scores, graph.scores(worker_llr(pairs, best)))
