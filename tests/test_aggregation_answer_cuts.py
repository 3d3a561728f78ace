"""Cut proposals read answer by answer (aggregation.answer_cuts), on hand-made and generated answers."""

from __future__ import annotations

import numpy as np
import pandas as pd

from aggregation import build_pairs
from aggregation.answer_cuts import cut_units, refine_by_answers


def _units(pairs, labels):
    return cut_units(pairs.a, pairs.b, pairs.worker, pairs.task, pairs.label > 0, labels)


def _codes(pairs, names) -> list[int]:
    return [int(np.flatnonzero(pairs.items == name)[0]) for name in names]


def test_a_unit_is_one_answer_inside_one_cluster_and_its_groups_are_the_answer_groups():
    # One answer of five images: a, b | c, d in cluster 0, and e alone in cluster 1 (no unit: a
    # unit needs two images of its cluster). A second worker puts all four of cluster 0 together.
    rows = [("t0", "w0", name, group) for name, group in zip("abcde", [1, 1, 2, 2, 1], strict=True)]
    rows += [("t0", "w1", name, 1) for name in "abcd"]
    pairs = build_pairs(pd.DataFrame(rows, columns=["task", "worker", "item", "label"]))
    labels = np.array([1 if name == "e" else 0 for name in pairs.items])
    pairs_inside = labels[pairs.a] == labels[pairs.b]
    units = cut_units(
        pairs.a[pairs_inside], pairs.b[pairs_inside], pairs.worker[pairs_inside], pairs.task[pairs_inside],
        pairs.label[pairs_inside] > 0, labels,
    )  # fmt: skip
    assert units.n_units == 2
    assert list(np.diff(units.unit_group_ptr)) == [2, 1]  # w0: two groups, w1: one
    assert list(units.unit_cluster) == [0, 0]
    a, b, c, d, e = _codes(pairs, "abcde")
    groups = {i: list(units.item_group[units.item_ptr[i] : units.item_ptr[i + 1]]) for i in (a, b, c, d, e)}
    assert groups[e] == []
    assert groups[a][0] == groups[b][0] != groups[c][0] == groups[d][0]  # w0's unit
    assert groups[a][1] == groups[b][1] == groups[c][1] == groups[d][1]  # w1's unit


def _partner_crowd(seed: int, n_items: int = 60, n_tasks: int = 900) -> tuple[pd.DataFrame, np.ndarray]:
    """Queries of 5 images from two classes; each worker sees an image in the other class at its rate.

    Half the workers err at 5%, half at 35%: an erring worker puts that image in the other group,
    so all its pairs in the answer are wrong together.
    """
    rng = np.random.default_rng(seed)
    truth = np.arange(n_items) % 2
    rate = np.where(np.arange(40) < 20, 0.05, 0.35)
    rows = []
    for task in range(n_tasks):
        items = rng.choice(n_items, size=5, replace=False)
        worker = int(rng.integers(40))
        seen = truth[items] ^ (rng.random(5) < rate[worker])
        rows += [
            (f"t{task:04d}", f"w{worker:02d}", f"i{i:03d}", int(s)) for i, s in zip(items, seen, strict=True)
        ]
    return pd.DataFrame(rows, columns=["task", "worker", "item", "label"]), truth


def _agreement(side: np.ndarray, truth: np.ndarray) -> float:
    same = float(np.mean(side == truth.astype(bool)))
    return max(same, 1.0 - same)


def test_answers_bring_a_cut_with_a_quarter_of_the_items_misplaced_back_to_the_classes():
    crowd, truth_by_number = _partner_crowd(seed=0)
    pairs = build_pairs(crowd)
    truth = truth_by_number[[int(name[1:]) for name in pairs.items]]
    labels = np.zeros(pairs.n_items, dtype=np.int64)
    units = _units(pairs, labels)
    rng = np.random.default_rng(1)
    side = truth.astype(bool) ^ (rng.random(pairs.n_items) < 0.25)
    assert _agreement(side, truth) < 0.85
    refine_by_answers(*units, labels, side, np.array([True]), pairs.n_workers, 0)
    assert _agreement(side, truth) == 1.0


def test_the_answers_are_likelier_under_the_classes_than_with_a_few_images_misplaced():
    crowd, truth_by_number = _partner_crowd(seed=0)
    pairs = build_pairs(crowd)
    truth = truth_by_number[[int(name[1:]) for name in pairs.items]].astype(bool)
    labels = np.zeros(pairs.n_items, dtype=np.int64)
    units = _units(pairs, labels)
    scores = []
    for misplaced in (0, 3, 6):
        side = truth.copy()
        side[:misplaced] = ~side[:misplaced]
        fit = refine_by_answers(*units, labels, side, np.array([True]), pairs.n_workers, 0, 0)
        assert np.array_equal(side[misplaced:], truth[misplaced:]) and side[:misplaced].tolist() == [
            not t for t in truth[:misplaced]
        ]  # rounds=0: scored where it stands
        scores.append(fit[0])
    assert scores[0] > scores[1] > scores[2]


def test_the_refinement_is_the_same_for_the_same_seed_and_moves_only_active_clusters():
    crowd, _ = _partner_crowd(seed=2, n_tasks=400)
    pairs = build_pairs(crowd)
    labels = (np.arange(pairs.n_items) >= pairs.n_items // 2).astype(np.int64)  # two arbitrary clusters
    inside = labels[pairs.a] == labels[pairs.b]
    units = cut_units(
        pairs.a[inside], pairs.b[inside], pairs.worker[inside], pairs.task[inside], pairs.label[inside] > 0,
        labels,
    )  # fmt: skip
    start = np.random.default_rng(3).random(pairs.n_items) < 0.5
    runs = []
    for _ in range(2):
        side = start.copy()
        fit = refine_by_answers(*units, labels, side, np.array([True, False]), pairs.n_workers, 7)
        runs.append((side, fit))
    assert np.array_equal(runs[0][0], runs[1][0]) and np.array_equal(runs[0][1], runs[1][1])
    side, fit = runs[0]
    assert np.array_equal(side[labels == 1], start[labels == 1])  # the inactive cluster is left alone
    assert fit[1] == 0.0 and fit[0] < 0.0
