"""Greedy agglomeration on a sparse graph: average linkage for the co-association baseline.

Two clusters are joined by the observed item pairs between them. With `linkage="average"` their
similarity is the mean value over those pairs (the co-association baseline: unobserved pairs carry
no evidence, so they are left out instead of counted as 0 — with a HIT design only a small share
of all pairs is ever seen, and counting the unseen ones as "apart" would stop every merge of two
large halves of one class). With `linkage="sum"` it is the total (values that add up, such as
log-likelihood ratios). Memory and time follow the number of observed pairs, not N². It is a
Python heap loop (about 20 s at N = 10,000), fine for a baseline; the model's search is in numba.
"""

from __future__ import annotations

import heapq

import numpy as np

__all__ = ["agglomerate"]


def agglomerate(
    n_nodes: int,
    a: np.ndarray,
    b: np.ndarray,
    value: np.ndarray,
    linkage: str = "average",
    threshold: float = 0.5,
    n_clusters: int | None = None,
) -> np.ndarray:
    """Merge the best pair of clusters while its linkage exceeds `threshold` (or until `n_clusters`).

    Edges (a, b, value) may repeat; they are summed. Ties break on the smaller cluster ids, so the
    result is deterministic. Returns labels 0..K-1 (unordered). With `n_clusters` set, merging goes
    on below the threshold, but only along observed edges (a disconnected graph may leave more).
    """
    if linkage not in ("average", "sum"):
        raise ValueError(f"unknown linkage {linkage!r}")
    mean = linkage == "average"
    # Sum repeated edges with numpy first: the Python loop below then sees each pair once.
    lo, hi = np.minimum(a, b).astype(np.int64), np.maximum(a, b).astype(np.int64)
    keep = lo != hi
    codes, inverse = np.unique(lo[keep] * n_nodes + hi[keep], return_inverse=True)
    edge_sum = np.bincount(inverse, weights=np.asarray(value, dtype=np.float64)[keep], minlength=len(codes))
    edge_count = np.bincount(inverse, minlength=len(codes))
    sums: list[dict[int, float]] = [{} for _ in range(n_nodes)]
    counts: list[dict[int, int]] = [{} for _ in range(n_nodes)]
    edges = zip(
        (codes // n_nodes).tolist(),
        (codes % n_nodes).tolist(),
        edge_sum.tolist(),
        edge_count.tolist(),
        strict=True,
    )
    for i, j, v, c in edges:
        sums[i][j] = sums[j][i] = v
        counts[i][j] = counts[j][i] = c

    def key(p: int, q: int) -> float:
        return sums[p][q] / counts[p][q] if mean else sums[p][q]

    heap = [(-key(i, j), i, j) for i in range(n_nodes) for j in sums[i] if i < j]
    heapq.heapify(heap)
    parent = np.arange(n_nodes)
    remaining = n_nodes
    limit = -np.inf if n_clusters is not None else threshold
    target = n_clusters if n_clusters is not None else 1
    while heap and remaining > target:
        neg, p, q = heapq.heappop(heap)
        # A merged cluster keeps no edges and is in no one's table, so `q not in sums[p]` covers it.
        if q not in sums[p] or abs(-neg - key(p, q)) > 1e-12:
            continue  # a merged cluster, or a stale entry whose value changed since it was pushed
        if -neg <= limit:
            break
        parent[q] = p
        remaining -= 1
        for r, v in sums[q].items():
            if r == p:
                continue
            sums[p][r] = sums[r][p] = sums[p].get(r, 0.0) + v
            counts[p][r] = counts[r][p] = counts[p].get(r, 0) + counts[q][r]
            del sums[r][q], counts[r][q]
        del sums[p][q], counts[p][q]
        sums[q], counts[q] = {}, {}
        for r in sums[p]:
            heapq.heappush(heap, (-key(p, r), min(p, r), max(p, r)))
    root = parent.copy()
    while not np.array_equal(root[root], root):
        root = root[root]
    return np.unique(root, return_inverse=True)[1].astype(np.int64)
