"""The search under the full score (Σ S + Ewens log prior) on hand-made graphs and small crowds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aggregation import CrowdClustering, clustering_scores, generate_crowd
from aggregation.consensus import (
    Csr,
    PairGraph,
    coin_counts,
    greedy_merge,
    local_moves,
    log_likelihood,
    log_prior,
    move_pieces,
    prior_moves,
    search,
    settle,
    worker_llr,
)
from aggregation.pairs import build_pairs


def _graph(n: int, edges: dict[tuple[int, int], float]) -> Csr:
    """A symmetric CSR matrix of S from {(a, b): S_ab}."""
    rows, cols, vals = [], [], []
    for (a, b), value in edges.items():
        rows += [a, b]
        cols += [b, a]
        vals += [value, value]
    rows, cols, vals = np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64), np.array(vals)
    order = np.lexsort((cols, rows))
    indptr = np.r_[0, np.cumsum(np.bincount(rows, minlength=n))].astype(np.int64)
    return Csr(indptr, cols[order], vals[order])


def _moves(score: Csr, labels, weight=None) -> np.ndarray:
    labels = np.array(labels, dtype=np.int64)
    n = len(labels)
    weight = np.ones(n) if weight is None else np.asarray(weight, dtype=np.float64)
    prior_moves(score.indptr, score.indices, score.data, labels, weight, np.arange(n), 30, 0.0)
    return labels


def test_an_item_without_evidence_joins_the_largest_cluster_it_was_not_compared_with():
    # Items 0-5 form cluster 0 (six), 6-8 cluster 1 (three); item 9 stands alone. Its one label says
    # "different" from item 0: the largest cluster is ruled out, so it joins the next one.
    edges = {(a, b): 3.0 for a in range(6) for b in range(a + 1, 6)}
    edges |= {(a, b): 3.0 for a in range(6, 9) for b in range(a + 1, 9)}
    edges[(0, 9)] = -5.0
    labels = _moves(_graph(10, edges), [0] * 6 + [1] * 3 + [2])
    assert labels[9] == labels[6] != labels[0]
    # Without that label it joins the largest: log 6 beats log 3 and log α = 0 (standing alone).
    del edges[(0, 9)]
    labels = _moves(_graph(10, edges), [0] * 6 + [1] * 3 + [2])
    assert labels[9] == labels[0]


def test_an_item_contradicted_by_every_cluster_stays_alone():
    edges = {(0, 1): 3.0, (2, 3): 3.0, (0, 4): -5.0, (2, 4): -5.0}
    labels = _moves(_graph(5, edges), [0, 0, 1, 1, 2])
    assert len(set(labels.tolist())) == 3 and labels[4] not in (labels[0], labels[2])


def test_a_piece_moves_as_a_whole_where_its_evidence_is():
    # Nodes are pieces of 4, 4 and 2 items (the first two contradict each other); the small piece
    # sits with the first but its labels say "same" with the second: moving its two items together
    # raises Σ S by 12, the prior is the same on both sides.
    score = _graph(3, {(0, 1): -50.0, (0, 2): -6.0, (1, 2): 6.0})
    labels = _moves(score, [0, 1, 0], weight=[4, 4, 2])
    assert labels[2] == labels[1] != labels[0]


def test_greedy_merge_joins_uncompared_clusters_and_keeps_contradicted_ones_apart():
    # Four clusters of 10: 0-1 never compared (the prior merges them), 2-3 contradicted strongly.
    score = _graph(4, {(2, 3): -80.0, (0, 2): -80.0, (0, 3): -80.0, (1, 2): -80.0, (1, 3): -80.0})
    root = greedy_merge(score.indptr, score.indices, score.data, np.full(4, 10), 0.0)
    assert root[0] == root[1] and len({root[0], root[2], root[3]}) == 3
    gain = math.lgamma(20) - 2 * math.lgamma(10)
    # Evidence just below the prior's gain keeps them apart; just above (less negative) merges.
    for between, merged in ((-gain - 0.5, False), (-gain + 0.5, True)):
        score = _graph(2, {(0, 1): between})
        root = greedy_merge(score.indptr, score.indices, score.data, np.full(2, 10), 0.0)
        assert bool(root[0] == root[1]) is merged


def test_move_pieces_splits_a_wrong_merge():
    # One cluster holds two cliques that contradict each other; the pieces its own labels hold
    # together are the cliques, and the smaller one leaves for a cluster of its own.
    edges = {(a, b): 4.0 for a in range(8) for b in range(a + 1, 8)}
    edges |= {(a, b): 4.0 for a in range(8, 12) for b in range(a + 1, 12)}
    edges |= {(a, b): -4.0 for a in range(8) for b in range(8, 12)}
    labels = move_pieces(_graph(12, edges), np.zeros(12, dtype=np.int64))
    assert len(set(labels[:8].tolist())) == 1 and len(set(labels[8:].tolist())) == 1
    assert labels[0] != labels[8]


def _every_visit(score: Csr, labels: np.ndarray, order: np.ndarray, max_passes: int) -> int:
    """`local_moves` as its docstring states it, visiting every node in every pass (in Python)."""
    n = len(labels)
    size = np.bincount(labels, minlength=n).astype(float)
    free = [c for c in range(n - 1, -1, -1) if size[c] < 0.5]  # the smallest id on top
    total = 0
    for _ in range(max_passes):
        moved = 0
        for i in order:
            acc: dict[int, float] = {}
            for p in range(score.indptr[i], score.indptr[i + 1]):
                c = int(labels[score.indices[p]])
                acc[c] = acc.get(c, 0.0) + score.data[p]
            cur = int(labels[i])
            best, best_val = cur, acc.get(cur, 0.0)
            for c, value in acc.items():  # in the order first touched
                if c != cur and value > best_val + 1e-9:
                    best, best_val = c, value
            if best_val < -1e-9 and size[cur] > 1.5:
                best = free[-1]
            if best != cur:
                if size[best] < 0.5:
                    free.pop()
                size[cur] -= 1
                size[best] += 1
                if size[cur] < 0.5:
                    free.append(cur)
                labels[i] = best
                moved += 1
        total += moved
        if moved == 0:
            break
    return total


def test_local_moves_are_those_of_visiting_every_node_in_every_pass():
    """`local_moves` skips the nodes none of whose neighbours moved since their last visit; the moves,
    their number and the partition are those of visiting every node (here on the evidence of workers
    who answer at random, where moves go on longest, and of a careful crowd)."""
    for share in (1.0, 0.1):
        crowd = generate_crowd(300, 10, seed=5, design="sized", hit_size=(20, 30), n_hits=60, overlap=3,
                               spammer_share=share)  # fmt: skip
        pairs = build_pairs(crowd.labels)
        graph = PairGraph(pairs)
        rng = np.random.default_rng(0)
        for labels in (np.arange(pairs.n_items), rng.integers(0, 12, pairs.n_items)):
            score = graph.evidence(pairs, rng.integers(0, 8, pairs.n_items))
            order = rng.permutation(pairs.n_items).astype(np.int64)
            fast, slow = labels.astype(np.int64), labels.astype(np.int64)
            moves = local_moves(score.indptr, score.indices, score.data, fast, order, 30)
            assert moves == _every_visit(score, slow, order, 30) and moves > 0
            np.testing.assert_array_equal(fast, slow)


def test_pair_evidence_and_coin_counts_match_their_definitions():
    crowd = generate_crowd(60, 4, seed=3)
    pairs = build_pairs(crowd.labels)
    labels = np.arange(pairs.n_items) % 5
    graph = PairGraph(pairs)
    np.testing.assert_array_equal(
        graph.evidence(pairs, labels).data, graph.scores(worker_llr(pairs, labels)).data
    )
    same = labels[pairs.a] == labels[pairs.b]
    yes = pairs.label > 0
    counts = coin_counts(pairs.a, pairs.b, pairs.worker, pairs.label, labels, pairs.n_workers)
    for column, mask in enumerate((same & yes, same, ~same & ~yes, ~same)):
        np.testing.assert_array_equal(
            counts[:, column],
            np.bincount(pairs.worker, weights=mask.astype(np.float64), minlength=pairs.n_workers),
        )
    # The score of a partition: every label's log-probability under its worker's fitted coins.
    total = 0.0
    for inside in (same, ~same):
        for j in range(pairs.n_workers):
            mine = inside & (pairs.worker == j)
            n_all, n_yes = mine.sum(), (mine & yes).sum()
            rate = (n_yes + 0.5) / (n_all + 1.0)
            total += n_yes * math.log(rate) + (n_all - n_yes) * math.log1p(-rate)
    assert log_likelihood(pairs, labels) == pytest.approx(total, rel=1e-12)


def test_settle_never_lowers_the_score_and_search_is_deterministic():
    crowd = generate_crowd(300, 12, seed=5)
    pairs = build_pairs(crowd.labels)
    graph = PairGraph(pairs)
    start = np.arange(pairs.n_items) % 3  # a poor start: three clusters of mixed classes
    before = log_likelihood(pairs, start) + log_prior(start)
    labels, value = settle(pairs, start, graph)
    assert value >= before
    assert value == pytest.approx(log_likelihood(pairs, labels) + log_prior(labels))
    first = search(pairs, [("singletons", None)], random_state=2, graph=graph)
    second = search(pairs, [("singletons", None)], random_state=2)
    np.testing.assert_array_equal(first.labels, second.labels)


def test_a_sparse_catalogue_is_not_left_in_fragments():
    # 1,500 images in 15 classes, each image compared with about 90 others: about 6 of its class,
    # so the "same" labels alone leave fragments that only the prior can join.
    crowd = generate_crowd(1500, 15, seed=0)
    model = CrowdClustering(random_state=0, embedding_max_items=0).fit(crowd.labels)
    assert model.embedding_ is None and model.free_energy_ is None and model.n_iter_ == 0
    assert 12 <= model.n_clusters_ <= 18  # within ±25% (measured: 14 large and 4 contradicted singletons)
    assert clustering_scores(model.labels_, crowd.truth)["ari"] >= 0.95
