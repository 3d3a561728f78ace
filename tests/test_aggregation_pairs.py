"""Pair construction on hand-made cases: signs, CSR indices, HIT designs, determinism."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from aggregation.consensus import PairGraph
from aggregation.pairs import (
    build_pairs,
    coassociation,
    code_starts,
    labels_by_pair,
    pair_index,
    stable_order,
    unanchored,
)
from aggregation.synthetic import generate_crowd


def _frame(rows):
    return pd.DataFrame(rows, columns=["task", "worker", "item", "label"])


def _as_set(pairs):
    return {
        (pairs.items[a], pairs.items[b], pairs.workers[w], int(lab))
        for a, b, w, lab in zip(pairs.a, pairs.b, pairs.worker, pairs.label, strict=True)
    }


def test_one_assignment_gives_all_pairs_with_signs():
    pairs = build_pairs(_frame([("t", "w", "c", 2), ("t", "w", "a", 1), ("t", "w", "b", 1)]))
    assert pairs.items.tolist() == ["a", "b", "c"]
    assert _as_set(pairs) == {("a", "b", "w", 1), ("a", "c", "w", -1), ("b", "c", "w", -1)}
    assert pairs.n_assignments == 1


def test_labels_are_local_to_an_assignment():
    """Group 1 in one assignment and group 1 in another say nothing about each other."""
    rows = [("t1", "w", "a", 1), ("t1", "w", "b", 2), ("t2", "w", "c", 1), ("t2", "w", "d", 2)]
    pairs = build_pairs(_frame(rows))
    assert _as_set(pairs) == {("a", "b", "w", -1), ("c", "d", "w", -1)}


def test_items_in_many_hits_and_repeated_pairs_count_twice():
    rows = [("t1", "w1", "a", 1), ("t1", "w1", "b", 1), ("t2", "w1", "a", 3), ("t2", "w1", "b", 4)]
    rows += [("t1", "w2", "a", 1), ("t1", "w2", "b", 1)]
    pairs = build_pairs(_frame(rows))
    assert pairs.n_labels == 3 and pairs.n_items == 2 and pairs.n_assignments == 3
    a, b, same, votes = coassociation(pairs)
    assert (a.tolist(), b.tolist(), same.tolist(), votes.tolist()) == ([0], [1], [2.0], [3.0])


def test_mixed_hit_sizes_single_items_and_one_assignment_workers():
    rng = np.random.default_rng(0)
    rows, expected = [], 0
    for h, size in enumerate([2, 35, 7, 1, 10]):
        items = rng.choice(60, size=size, replace=False)
        worker = f"w{h}"  # every worker answers one assignment
        rows += [(f"t{h}", worker, f"i{i:02d}", int(rng.integers(1, 11))) for i in items]
        expected += size * (size - 1) // 2
    rows.append(("t9", "w9", "lonely", 1))  # an item seen by one worker in a HIT of one
    pairs = build_pairs(_frame(rows))
    assert pairs.n_labels == expected
    assert "lonely" in pairs.items.tolist()
    assert np.all(pairs.a < pairs.b)
    # CSR by item: exactly the labels that involve the item, in worker order.
    for i in range(pairs.n_items):
        labs = pairs.item_lab[pairs.item_ptr[i] : pairs.item_ptr[i + 1]]
        assert np.all((pairs.a[labs] == i) | (pairs.b[labs] == i))
        assert len(labs) == np.sum(pairs.a == i) + np.sum(pairs.b == i)
        assert np.all(np.diff(pairs.worker[labs]) >= 0)
        assert np.all(np.diff(labs) > 0)  # label order, each label once
    # CSR by worker: contiguous ranges.
    for j in range(pairs.n_workers):
        assert np.all(pairs.worker[pairs.worker_ptr[j] : pairs.worker_ptr[j + 1]] == j)
    lonely = pairs.items.tolist().index("lonely")
    assert pairs.item_ptr[lonely] == pairs.item_ptr[lonely + 1]


def test_the_pair_graph_counts_the_votes_as_coassociation_does():
    """`PairGraph.coassociation` reuses the graph's sort of the labels; the arrays must not change."""
    crowd = generate_crowd(300, 12, seed=4, overlap=(2, 5))
    pairs = build_pairs(crowd.labels)
    direct, from_graph = coassociation(pairs), PairGraph(pairs).coassociation()
    for expected, got in zip(direct, from_graph, strict=True):
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)
    assert (direct[3] > 1).any() and (direct[2] < direct[3]).any()  # repeated pairs, split votes


@pytest.mark.parametrize(("n_items", "n_labels"), [(2, 1), (7, 40), (300, 20_000)])
def test_the_counting_sorts_give_numpys_orders(n_items, n_labels):
    """`pair_index`, `stable_order` and `labels_by_pair` replace np.unique, a stable argsort and the
    gathers through it: same arrays exactly."""
    rng = np.random.default_rng(n_items)
    a = rng.integers(0, n_items - 1, size=n_labels)
    b = a + 1 + rng.integers(0, n_items - 1 - a)  # a < b < n_items; some items in no label
    first_a, first_b, inverse = pair_index(a, b, n_items)
    upper, expected = np.unique(a * n_items + b, return_inverse=True)
    np.testing.assert_array_equal(first_a * n_items + first_b, upper)
    np.testing.assert_array_equal(inverse, expected)
    starts = code_starts(inverse, len(upper))
    np.testing.assert_array_equal(starts, np.r_[0, np.cumsum(np.bincount(expected, minlength=len(upper)))])
    order = np.argsort(expected, kind="stable")
    np.testing.assert_array_equal(stable_order(inverse, starts), order)
    worker, label = rng.integers(0, 50, size=n_labels), rng.choice(np.array([-1, 1]), size=n_labels)
    by_worker, yes = labels_by_pair(inverse, starts, worker, label)
    assert by_worker.dtype == np.int32 and yes.dtype == np.bool_
    np.testing.assert_array_equal(by_worker, worker[order])
    np.testing.assert_array_equal(yes, label[order] > 0)


def test_row_order_does_not_matter():
    rng = np.random.default_rng(1)
    rows = [
        (f"t{h}", f"w{h % 3}", f"i{i}", int(rng.integers(1, 4)))
        for h in range(6)
        for i in rng.choice(9, 4, replace=False)
    ]
    first = build_pairs(_frame(rows))
    second = build_pairs(_frame([rows[k] for k in rng.permutation(len(rows))]))
    for name in ("a", "b", "worker", "label", "item_ptr", "item_lab", "worker_ptr"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([("t", "w", "a", 1), ("t", "w", "a", 2)], "twice"),
        ([("t", "w", "a", 1)], "no assignment holds two"),
        ([], "empty"),
    ],
)
def test_bad_frames(rows, message):
    with pytest.raises(ValueError, match=message):
        build_pairs(_frame(rows))


def test_missing_column():
    with pytest.raises(ValueError, match="lack column"):
        build_pairs(pd.DataFrame({"task": ["t"], "item": ["a"]}))


def test_unanchored_items_are_those_no_majority_put_with_another():
    rows = [("t1", "w1", "a", 1), ("t1", "w1", "b", 1), ("t1", "w1", "c", 2)]  # a+b together, c apart
    rows += [("t2", "w2", "a", 1), ("t2", "w2", "b", 2), ("t2", "w2", "c", 1)]  # a+c together, b apart
    rows += [("t3", "w3", "a", 1), ("t3", "w3", "b", 1), ("t3", "w3", "d", 2)]  # a+b again, d apart
    pairs = build_pairs(_frame(rows))
    # a-b: 2 of 2 say together; a-c: 1 of 2 (no majority); b-c, *-d: apart. c and d are unanchored.
    assert unanchored(pairs) == 2
