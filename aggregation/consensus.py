"""Settling the number of clusters against the crowd's labels: a split/merge/move search.

Score of a partition: the log-likelihood ratio of the observed labels under "each worker answers
'same' with probability sens_j for pairs of one cluster and 1 - spec_j for pairs of two clusters"
(a two-coin worker model, as in Dawid-Skene). For a partition it is Σ over observed item pairs in
one cluster of S_ab = Σ_t llr_t, llr_t = log(sens/(1-spec)) for a 'same' label and
log((1-sens)/spec) for a 'different' one, so a spammer's labels weigh ~0 and a careful worker's
weigh a lot. The search alternates: move single items to the cluster that raises the score most
(a new cluster included), merge the pair of clusters with the largest positive S between them,
and re-estimate each worker's two coins from the current partition. The number of clusters is a
result of the search, not a parameter.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from aggregation.linkage import agglomerate
from aggregation.pairs import PairLabels


@njit(cache=True)
def local_moves(indptr, indices, data, labels, order, max_passes):  # pragma: no cover - compiled
    """Move items one by one to the cluster with the largest Σ S (0 for a new cluster).

    Each move raises the score, so the loop ends; items are visited in the given order, so the
    result is deterministic. Returns the number of passes made.
    """
    n = labels.shape[0]
    size = np.zeros(n + 1, dtype=np.int64)
    for i in range(n):
        size[labels[i]] += 1
    acc = np.zeros(n + 1)
    mark = np.zeros(n + 1, dtype=np.bool_)
    touched = np.empty(n + 1, dtype=np.int64)
    passes = 0
    for _ in range(max_passes):
        passes += 1
        moved = 0
        for pos in range(n):
            i = order[pos]
            cur = labels[i]
            nt = 0
            for p in range(indptr[i], indptr[i + 1]):
                c = labels[indices[p]]
                if not mark[c]:
                    mark[c] = True
                    touched[nt] = c
                    nt += 1
                acc[c] += data[p]
            best = cur
            best_val = acc[cur]
            for q in range(nt):
                c = touched[q]
                if c != cur and acc[c] > best_val + 1e-9:
                    best = c
                    best_val = acc[c]
            if best_val < -1e-9 and size[cur] > 1:
                # Every cluster pulls the item away: open a new one (the lowest empty id).
                best = 0
                while size[best] > 0:
                    best += 1
            for q in range(nt):
                acc[touched[q]] = 0.0
                mark[touched[q]] = False
            if best != cur:
                size[cur] -= 1
                size[best] += 1
                labels[i] = best
                moved += 1
        if moved == 0:
            break
    return passes


def _relabel(labels: np.ndarray) -> np.ndarray:
    return np.unique(labels, return_inverse=True)[1].astype(np.int64)


def greedy_merges(score: Csr, labels: np.ndarray) -> np.ndarray:
    """Merge the pair of clusters with the largest positive Σ S between them, while one exists."""
    labels = _relabel(labels)
    rows = np.repeat(np.arange(len(labels)), np.diff(score.indptr))
    upper = rows < score.indices
    merged = agglomerate(
        int(labels.max()) + 1,
        labels[rows[upper]],
        labels[score.indices[upper]],
        score.data[upper],
        "sum",
        1e-9,
    )
    return _relabel(merged[labels])


def worker_llr(pairs: PairLabels, labels: np.ndarray, prior: float = 2.0) -> np.ndarray:
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


class Csr(NamedTuple):
    """A symmetric sparse matrix in CSR form (sorted column indices, duplicates summed)."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray


def log_likelihood(pairs: PairLabels, labels: np.ndarray) -> float:
    """Log-likelihood of all labels under the two-coin workers fitted to `labels` (model selection).

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


PRIOR_SENS = 0.8  # P(worker says "same" | same cluster) before any partition is known
PRIOR_SPEC = 0.9  # P(worker says "different" | different clusters)


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


def partition_score(score: Csr, labels: np.ndarray) -> float:
    """Σ S_ab over observed pairs inside one cluster (each pair once)."""
    rows = np.repeat(np.arange(len(labels)), np.diff(score.indptr))
    inside = labels[rows] == labels[score.indices]
    return float(score.data[inside].sum() / 2.0)


def _moves_and_merges(
    graph: PairGraph, llr: np.ndarray, start: np.ndarray, order: np.ndarray, max_passes: int
) -> np.ndarray:
    """Local moves then merges, repeated (at most 3 times) while merges change the partition."""
    score = graph.scores(llr)
    new = start.copy()
    for _ in range(3):
        local_moves(score.indptr, score.indices, score.data, new, order, max_passes)
        merged = greedy_merges(score, new)
        if np.array_equal(_relabel(new), merged):
            break
        new = merged
    return new


def refine(
    pairs: PairLabels,
    labels: np.ndarray | None,
    start: np.ndarray | None = None,
    order: np.ndarray | None = None,
    graph: PairGraph | None = None,
    n_rounds: int = 6,
    max_passes: int = 30,
) -> np.ndarray:
    """Alternate worker two-coin estimates and move/merge steps until the partition is stable.

    `labels` gives the first estimate of the workers' coins (None: the prior coins PRIOR_SENS,
    PRIOR_SPEC for everyone); the search starts from `start` (default: `labels`) and visits items
    in `order` (default: index order). Starting from singletons builds clusters bottom-up, so the
    search never has to split one.
    """
    n = pairs.n_items
    order = np.arange(n, dtype=np.int64) if order is None else np.asarray(order, dtype=np.int64)
    graph = PairGraph(pairs) if graph is None else graph
    current = None if start is None else _relabel(np.asarray(start, dtype=np.int64))
    if labels is None:
        # No partition to estimate coins from: every worker starts as a typical careful one.
        yes, no = np.log(PRIOR_SENS / (1 - PRIOR_SPEC)), np.log((1 - PRIOR_SENS) / PRIOR_SPEC)
        first = np.arange(n, dtype=np.int64) if current is None else current
        labels = current = _relabel(
            _moves_and_merges(graph, np.where(pairs.label > 0, yes, no), first, order, max_passes)
        )
    labels = _relabel(np.asarray(labels, dtype=np.int64))
    current = labels if current is None else current
    for _ in range(n_rounds):
        new = _relabel(_moves_and_merges(graph, worker_llr(pairs, labels), current, order, max_passes))
        if np.array_equal(new, labels):
            break
        labels = current = new
    return labels


def search(
    pairs: PairLabels,
    mixture: np.ndarray,
    random_state: int = 0,
    n_orders: int = 2,
    coassoc: np.ndarray | None = None,
) -> tuple[np.ndarray, list[tuple[str, float]]]:
    """Run the search from several starts and keep the partition with the best log-likelihood.

    Starts: the mixture's partition (coins from it); singletons with the prior coins, visited in
    `n_orders` seeded orders; and, when given, the intersection of the mixture with the
    co-association partition (over-split, so the search only merges and moves). Measured on
    synthetic crowds, no single start wins everywhere, while the log-likelihood picks the best or
    nearly best ARI every time. Singletons with coins from the mixture were dropped: when the
    mixture under-splits, its coins make "different" answers look weak and everything merges.
    """
    rng = np.random.default_rng(random_state)
    singletons = np.arange(pairs.n_items)
    orders = [None] + [rng.permutation(pairs.n_items) for _ in range(1, n_orders)]
    # (name, partition the coins come from (None: prior coins), start, visiting order)
    starts: list[tuple[str, np.ndarray | None, np.ndarray, np.ndarray | None]] = [
        ("mixture", mixture, mixture, None)
    ]
    starts += [(f"singletons-{k}", None, singletons, order) for k, order in enumerate(orders)]
    if coassoc is not None:
        over_split = mixture * (int(coassoc.max()) + 1) + coassoc
        starts.append(("mixture∩coassociation", over_split, over_split, None))
    graph = PairGraph(pairs)
    best, best_ll, scores = mixture, -np.inf, []
    for name, coins, start, order in starts:
        labels = refine(pairs, coins, start=start, order=order, graph=graph)
        ll = log_likelihood(pairs, labels)
        scores.append((name, ll))
        if ll > best_ll:
            best, best_ll = labels, ll
    return best, scores
