"""Cross-validated cuts (aggregation.splitting): the held-out statistic and the stage on real crowds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from aggregation import build_pairs, clustering_scores, crowd_shape
from aggregation.splitting import _shift_gain, held_out_gains, reliability, split_clusters


def _crowd(n_items: int, n_workers: int, n_tasks: int, group_of, seed: int = 0) -> pd.DataFrame:
    """Tasks of 6 random items; worker j answers with group_of(j, items) (any labels)."""
    rng = np.random.default_rng(seed)
    rows = []
    for task in range(n_tasks):
        items = rng.choice(n_items, size=6, replace=False)
        for j in rng.choice(n_workers, size=3, replace=False):
            for item, group in zip(items, group_of(j, items, rng), strict=True):
                rows.append((f"t{task:04d}", f"w{j:02d}", f"i{item:03d}", int(group)))
    return pd.DataFrame(rows, columns=["task", "worker", "item", "label"])


def _item_codes(pairs, mapping) -> np.ndarray:
    return np.array([mapping(int(name[1:])) for name in pairs.items])


def _gains(pairs, labels, side, weight=None) -> np.ndarray:
    weight = np.ones(pairs.n_workers) if weight is None else weight
    return held_out_gains(pairs.a, pairs.b, pairs.worker, pairs.label, labels, side, weight)


def test_the_held_out_statistic_sees_two_groups_and_not_a_random_cut():
    # 40 items in one cluster; every worker tells items 0-19 from 20-39.
    labels_df = _crowd(40, 8, 300, lambda j, items, rng: items >= 20)
    pairs = build_pairs(labels_df)
    one = np.zeros(pairs.n_items, dtype=np.int64)
    halves = _item_codes(pairs, lambda i: i >= 20).astype(np.bool_)
    real = _gains(pairs, one, halves)[0]
    assert real[0] > 100 and real[1] > 10 and real[2] > 10
    # A side that does not cut the cluster counts for nothing.
    assert _gains(pairs, one, np.ones(pairs.n_items, dtype=np.bool_))[0].tolist() == [0.0, 0.0, 0.0]


def test_random_cuts_of_one_noisy_group_gain_nothing_even_with_few_labels_across():
    # One group; each answer puts an item in a second group 15% of the time.
    labels_df = _crowd(40, 8, 300, lambda j, items, rng: rng.random(len(items)) < 0.15)
    pairs = build_pairs(labels_df)
    one = np.zeros(pairs.n_items, dtype=np.int64)
    noise = [_gains(pairs, one, np.random.default_rng(s).random(pairs.n_items) < 0.5)[0, 0] for s in range(8)]
    assert max(abs(v) for v in noise) < 4, noise
    # One item against the rest: few labels across, which must not read as a shift by themselves.
    lone = np.zeros(pairs.n_items, dtype=np.bool_)
    lone[0] = True
    assert abs(_gains(pairs, one, lone)[0, 0]) < 3


def test_no_labels_across_the_cut_is_no_evidence_for_it():
    # 20 workers who said "same" 45 times of 50 inside the halves and never answered across.
    n = 20
    inside_yes, inside_all = np.full(n, 45.0), np.full(n, 50.0)
    assert abs(_shift_gain(inside_yes, inside_all, np.zeros(n), np.zeros(n), n)) < 0.05
    # One "different" across from each of them is evidence; one "same" each is against the cut.
    assert _shift_gain(inside_yes, inside_all, np.zeros(n), np.ones(n), n) > 20
    assert _shift_gain(inside_yes, inside_all, np.ones(n), np.ones(n), n) < 0


def test_a_cut_seen_in_reverse_is_negative():
    # Workers say "same" across the cut and "different" inside the halves (the cut is wrong).
    labels_df = _crowd(30, 6, 200, lambda j, items, rng: items % 2 == (items >= 15))
    pairs = build_pairs(labels_df)
    one = np.zeros(pairs.n_items, dtype=np.int64)
    halves = _item_codes(pairs, lambda i: i >= 15).astype(np.bool_)
    assert _gains(pairs, one, halves)[0, 0] < 0


def test_reliability_is_near_one_for_workers_who_follow_the_clusters_and_zero_for_colour_or_noise():
    def answer(j, items, rng):
        if j < 4:
            return items // 10  # the clusters
        if j < 6:
            return items % 3  # a nuisance attribute unrelated to the clusters
        return rng.integers(0, 3, size=len(items))  # at random

    labels_df = _crowd(40, 8, 400, answer)
    pairs = build_pairs(labels_df)
    weight = reliability(pairs, _item_codes(pairs, lambda i: i // 10))
    by_worker = dict(zip(pairs.workers, weight, strict=True))
    assert min(by_worker[f"w{j:02d}"] for j in range(4)) > 0.9
    assert max(by_worker[f"w{j:02d}"] for j in range(4, 8)) < 0.15


@pytest.mark.parametrize("seed", [0, 1])
def test_two_classes_most_workers_confuse_are_cut_apart_and_true_classes_are_kept(seed):
    # Queries of 5 images, workers with error rates up to 40% who mix up classes 0 and 1.
    crowd = crowd_shape("queries", seed=seed, hit_size=5)
    pairs = build_pairs(crowd.labels)
    truth = crowd.truth.reindex(pairs.items).to_numpy().astype(np.int64)
    assert np.array_equal(split_clusters(pairs, truth, random_state=seed), truth)
    merged = np.where(truth == 1, 0, truth)
    cut = split_clusters(pairs, merged, random_state=seed)
    assert len(np.unique(cut)) == 6
    score = clustering_scores(pd.Series(cut, index=pairs.items), crowd.truth)["ari"]
    before = clustering_scores(pd.Series(merged, index=pairs.items), crowd.truth)["ari"]
    assert score > before + 0.05


def test_no_cut_of_true_classes_in_large_hits_with_colour_workers_and_ten_groups():
    # 35-image HITs of 13 classes: workers must merge groups (10 at most) and some group by colour;
    # neither may make a class look like two to held-out tasks.
    crowd = crowd_shape("large-hits", seed=0, n_classes=13, hit_size=35)
    pairs = build_pairs(crowd.labels)
    truth = crowd.truth.reindex(pairs.items).to_numpy().astype(np.int64)
    assert np.array_equal(split_clusters(pairs, truth, random_state=0), truth)


def test_the_cut_does_not_depend_on_the_number_of_threads():
    import numba

    crowd = crowd_shape("queries", seed=0, hit_size=5)
    pairs = build_pairs(crowd.labels)
    truth = crowd.truth.reindex(pairs.items).to_numpy().astype(np.int64)
    merged = np.where(truth == 1, 0, truth)
    before = numba.get_num_threads()
    results = []
    try:
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            results.append(split_clusters(pairs, merged, random_state=0))
    finally:
        numba.set_num_threads(before)
    assert np.array_equal(results[0], results[1])
    assert len(np.unique(results[0])) == 6
