"""Thin evidence, confidences, min_cluster_size, the synthetic shapes, the estimator protocol, doctests."""

from __future__ import annotations

import doctest
import importlib
import math

import numba
import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

import aggregation
from aggregation import (
    CoAssociationClustering,
    CrowdClustering,
    clustering_scores,
    confidence_scores,
    generate_crowd,
)
from aggregation.confidence import item_confidence
from aggregation.consensus import ALPHA
from aggregation.synthetic import crowd_shape

CLEAN = {"diligent": 1.0}


def _with_contradicted_item(seed: int = 0):
    """A clean crowd plus one item `x` seen in one HIT with an item of class 0 and one of class 1:
    one worker puts x with the first, another with the second."""
    crowd = generate_crowd(60, 4, seed=seed, shares=CLEAN)
    truth = crowd.truth
    first, second = truth[truth == 0].index[0], truth[truth == 1].index[0]
    extra = pd.DataFrame(
        [
            ("hit-x", "wx1", "x", 1),
            ("hit-x", "wx1", first, 1),
            ("hit-x", "wx1", second, 2),
            ("hit-x", "wx2", "x", 1),
            ("hit-x", "wx2", first, 2),
            ("hit-x", "wx2", second, 1),
        ],
        columns=["task", "worker", "item", "label"],
    )
    return crowd, pd.concat([crowd.labels, extra], ignore_index=True)


def test_item_with_contradictory_labels_joins_an_existing_cluster_with_low_confidence():
    crowd, labels = _with_contradicted_item()
    model = CrowdClustering(random_state=0).fit(labels)
    clusters = model.labels_
    # x is not a cluster of its own: the clusters are the four classes, x inside one of them.
    assert model.n_clusters_ == 4
    assert (clusters == clusters["x"]).sum() > 1
    assert clustering_scores(clusters.drop("x"), crowd.truth)["ari"] == pytest.approx(1.0)
    confidence = model.confidence_
    assert confidence.between(0.0, 1.0).all() and confidence.index.equals(clusters.index)
    assert confidence["x"] < 0.5 < confidence.drop("x").median()


def test_an_item_with_one_different_label_is_no_singleton():
    crowd = generate_crowd(60, 4, seed=2, shares=CLEAN)
    other = crowd.truth.index[0]
    # The label comes from a worker the crowd shows to be careful, so it weighs enough to be kept.
    careful = crowd.labels["worker"].iloc[0]
    extra = pd.DataFrame(
        [("hit-y", careful, "y", 1), ("hit-y", careful, other, 2)],
        columns=["task", "worker", "item", "label"],
    )
    model = CrowdClustering(random_state=0).fit(pd.concat([crowd.labels, extra], ignore_index=True))
    assert model.n_clusters_ == 4
    assert model.labels_["y"] != model.labels_[other]  # the one label it has is respected


def test_confidence_is_lower_for_items_with_conflicting_labels():
    """Five items of a clean crowd get mixed answers: in two of every three assignments that show
    them, the worker puts them in another item's group. Their confidence must drop below everyone
    else's."""
    crowd = generate_crowd(120, 6, seed=3, shares=CLEAN)
    labels = crowd.labels.copy()
    mixed = crowd.truth.index[:5]
    for item in mixed:
        rows = labels.index[labels["item"] == item]
        rows = rows[np.arange(len(rows)) % 3 != 0]
        for row in rows:
            task, worker = labels.at[row, "task"], labels.at[row, "worker"]
            others = labels[(labels["task"] == task) & (labels["worker"] == worker)]
            groups = others["label"][others["label"] != labels.at[row, "label"]]
            if len(groups):
                labels.at[row, "label"] = groups.iloc[0]
    model = CrowdClustering(random_state=0).fit(labels)
    confidence = model.confidence_
    assert confidence[mixed].max() < confidence.drop(mixed).quantile(0.05)
    assert confidence.drop(mixed).median() > 0.99


def _scores_of_confidence(crowd, model, draws=None):
    """(Brier score, log loss) of the model's confidences, or of those with `draws` resamplings."""
    confidence = model.confidence_
    if draws is not None:
        pairs = model.pairs_
        labels = model.labels_.reindex(pairs.items).to_numpy()
        resampled = item_confidence(pairs, labels, math.log(ALPHA), seed=0, draws=draws)
        confidence = pd.Series(resampled, index=pairs.items)
    scores = confidence_scores(model.labels_, confidence, crowd.truth)
    return scores["brier"], scores["log_loss"]


def test_without_resampling_the_confidence_is_the_models_conditional():
    """draws=0 is P(z_i = c) ∝ n_c exp(S_ic) (α for a new cluster), here computed densely."""
    crowd = generate_crowd(90, 5, seed=8)
    model = CrowdClustering(random_state=0).fit(crowd.labels)
    pairs, graph = model.pairs_, model.pair_graph_
    labels = model.labels_.reindex(pairs.items).to_numpy()
    score = graph.evidence(pairs, labels)
    n, k = pairs.n_items, labels.max() + 1
    dense = np.zeros((n, n))
    rows = np.repeat(np.arange(n), np.diff(score.indptr))
    dense[rows, score.indices] = score.data
    expected = []
    for i in range(n):
        others = np.arange(n) != i
        size = np.bincount(labels[others], minlength=k).astype(float)
        s_ic = np.bincount(labels[others], weights=dense[i, others], minlength=k)
        # log weights of the clusters (those with members) and of a new cluster, normalised
        logs = np.r_[np.where(size > 0, np.log(np.maximum(size, 1.0)) + s_ic, -np.inf), math.log(ALPHA)]
        shares = np.exp(logs - logs.max())
        shares /= shares.sum()
        expected.append(shares[labels[i]] if size[labels[i]] > 0 else shares[-1])
    got = item_confidence(pairs, labels, math.log(ALPHA), draws=0)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_images_the_careful_workers_split_between_two_styles_are_not_called_certain():
    """10% of the images sit between their style and its partner: careful workers put each with
    either at even odds. The model's conditional calls most of them certain (the answers' pulls
    cancel, and what is left is luck); resampling the answers does not, and the confidences then
    match which images the clusters got right better, while those of the other images stay."""
    crowd = crowd_shape("shoes", seed=3, between_share=0.1)
    model = CrowdClustering(random_state=0).fit(crowd.labels)
    pairs = model.pairs_
    between = crowd.between.reindex(pairs.items).to_numpy()
    labels = model.labels_.reindex(pairs.items).to_numpy()
    conditional = item_confidence(pairs, labels, math.log(ALPHA), draws=0)
    resampled = model.confidence_.reindex(pairs.items).to_numpy()
    assert (resampled[between] > 0.95).sum() < 0.7 * (conditional[between] > 0.95).sum()
    assert resampled[between].mean() < resampled[~between].mean() - 0.15
    assert np.abs(resampled[~between] - conditional[~between]).mean() < 0.02
    brier, log_loss = _scores_of_confidence(crowd, model)
    brier_conditional, log_loss_conditional = _scores_of_confidence(crowd, model, draws=0)
    assert brier < brier_conditional and log_loss < 0.7 * log_loss_conditional


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two threads to compare with one")
def test_confidences_do_not_depend_on_the_number_of_threads():
    crowd = crowd_shape("queries", seed=2, hit_size=5)
    model = CrowdClustering(random_state=0).fit(crowd.labels)
    labels = model.labels_.reindex(model.pairs_.items).to_numpy()
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = item_confidence(model.pairs_, labels, math.log(ALPHA), seed=5)
        numba.set_num_threads(2)
        two = item_confidence(model.pairs_, labels, math.log(ALPHA), seed=5)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(one, two)
    assert not np.array_equal(one, item_confidence(model.pairs_, labels, math.log(ALPHA), seed=6))


def test_min_cluster_size_dissolves_small_clusters():
    crowd = generate_crowd(100, 8, seed=4)
    sizes = CrowdClustering(random_state=0).fit_predict(crowd.labels).value_counts()
    cutoff = int(sizes.iloc[len(sizes) // 2]) + 1
    forced = CrowdClustering(random_state=0, min_cluster_size=cutoff).fit(crowd.labels)
    assert forced.labels_.value_counts().min() >= cutoff
    assert forced.n_clusters_ < len(sizes) and len(forced.labels_) == 100
    with pytest.raises(ValueError, match="no cluster has"):
        CrowdClustering(random_state=0, min_cluster_size=1000).fit(crowd.labels)
    base = CoAssociationClustering(min_cluster_size=cutoff).fit(crowd.labels)
    assert base.labels_.value_counts().min() >= cutoff


def _small_style_never_met(apart: bool):
    """A clean crowd of 4 classes plus 3 images of a fifth style, each shown twice with one image of
    every class and never with one another, so their labels rule out every cluster; with `apart`,
    one more HIT shows z0 and z1 together and the workers set them apart."""
    crowd = generate_crowd(60, 4, seed=1, shares=CLEAN)
    truth = crowd.truth
    workers = crowd.labels["worker"].drop_duplicates().tolist()[:3]
    rows = []
    for k in range(3):
        for h in range(2):
            others = [truth[truth == c].index[k + 3 * h] for c in range(4)]
            for w in workers:
                rows.append((f"hit-z{k}-{h}", w, f"z{k}", 5))
                rows += [(f"hit-z{k}-{h}", w, item, int(truth[item]) + 1) for item in others]
    if apart:
        rows += [("hit-z01", w, item, g) for w in workers for item, g in (("z0", 1), ("z1", 2))]
    extra = pd.DataFrame(rows, columns=["task", "worker", "item", "label"])
    return crowd, pd.concat([crowd.labels, extra], ignore_index=True)


def test_images_of_a_small_style_that_never_met_share_a_cluster():
    """Each z image's labels rule out the four clusters; none says where it belongs. Standing alone
    each, they would be three clusters; the Ewens prior puts the three together (its weight for a
    cluster of three never compared is 2 against 1). Two of them that careful workers set apart
    stay apart."""
    crowd, labels = _small_style_never_met(apart=False)
    model = CrowdClustering(random_state=0).fit(labels)
    clusters = model.labels_
    assert model.n_clusters_ == 5 and clusters["z0"] == clusters["z1"] == clusters["z2"]
    assert clustering_scores(clusters.drop(["z0", "z1", "z2"]), crowd.truth)["ari"] == pytest.approx(1.0)
    assert (clusters == clusters["z0"]).sum() == 3 and model.confidence_[["z0", "z1", "z2"]].lt(0.9).all()

    _, labels = _small_style_never_met(apart=True)
    split = CrowdClustering(random_state=0).fit(labels).labels_
    assert split["z0"] != split["z1"]


def test_a_crowd_that_sets_every_image_apart_gets_singletons_not_an_error():
    """Every worker puts every image of every HIT in a group of its own: left to the model, each
    image is its own cluster (it used to stop with "no cluster has 2 or more items; lower
    min_cluster_size", a parameter nobody had set). Asking for a minimum size still says why not."""
    items = [f"i{k}" for k in range(6)]
    rows = [
        (f"t{h}", f"w{w}", item, g + 1)
        for h in range(4)
        for w in range(3)
        for g, item in enumerate(items[h : h + 3])
    ]
    labels = pd.DataFrame(rows, columns=["task", "worker", "item", "label"])
    model = CrowdClustering(random_state=0).fit(labels)
    assert model.n_clusters_ == 6 and sorted(model.labels_) == list(range(6))
    assert model.confidence_.between(0, 1).all()
    assert aggregation.find_dissent(model, labels) is None
    with pytest.raises(ValueError, match="no cluster has 2 or more items"):
        CrowdClustering(random_state=0, min_cluster_size=2).fit(labels)


def test_least_certain_lists_the_lowest_confidences_per_cluster():
    crowd = generate_crowd(82, 8, seed=5)
    model = CrowdClustering(random_state=0).fit(crowd.labels)
    table = aggregation.least_certain(model.labels_, model.confidence_, per_cluster=3)
    assert list(table.columns) == ["cluster", "item", "confidence"]
    for cluster, rows in table.groupby("cluster"):
        members = model.confidence_[model.labels_ == cluster].sort_values(kind="mergesort")
        assert len(rows) == min(3, len(members))
        assert rows["confidence"].tolist() == pytest.approx(members.iloc[: len(rows)].tolist())


@pytest.mark.parametrize(
    ("shape", "overrides", "seeds"),
    [
        ("shoes", {"n_items": 150, "n_classes": 8}, (0, 1)),
        ("queries", {}, (0, 1)),
        ("large-hits", {"n_items": 240, "n_classes": 8, "n_hits": 30}, (0, 2)),
        ("uneven", {"n_items": 300, "n_classes": 6}, (0, 1)),
    ],
)
def test_number_of_clusters_within_tolerance_on_every_shape(shape, overrides, seeds):
    for seed in seeds:
        crowd = crowd_shape(shape, seed=seed, **overrides)
        found = CrowdClustering(random_state=seed).fit(crowd.labels).n_clusters_
        true = crowd.truth.nunique()
        assert abs(found - true) <= max(1, round(0.25 * true)), (shape, seed, found, true)


def test_shapes_have_their_design():
    queries = crowd_shape("queries", seed=0, n_items=80, n_hits=300).labels
    per_query = queries.groupby(["task", "worker"]).size()
    assert per_query.min() >= 2 and per_query.max() <= 5
    per_worker = queries.groupby("worker")["task"].nunique()
    assert per_worker.max() <= 60 and per_worker.median() >= 10
    large = crowd_shape("large-hits", seed=0, n_items=200, n_hits=20).labels
    sizes = large.groupby(["task", "worker"]).size()
    answers = large.groupby("task")["worker"].nunique()
    assert sizes.between(30, 40).all() and answers.between(3, 5).all()
    uneven = crowd_shape("uneven", seed=0).truth.value_counts()
    assert uneven.max() / uneven.min() >= 50


def test_estimators_follow_the_scikit_learn_protocol():
    model = CrowdClustering(n_dims=3, min_cluster_size=2, random_state=7)
    copy = clone(model)
    assert copy is not model and copy.get_params() == model.get_params()
    assert copy.get_params()["n_dims"] == 3 and "min_cluster_size" in copy.get_params()
    assert clone(CoAssociationClustering(n_clusters=3)).n_clusters == 3
    assert model.set_params(n_dims=2).n_dims == 2
    with pytest.raises(ValueError, match="invalid parameter"):
        model.set_params(nope=1)
    assert repr(model) == "CrowdClustering(n_dims=2, random_state=7, min_cluster_size=2)"


@pytest.mark.parametrize(
    "module",
    [
        "aggregation.estimators",
        "aggregation.synthetic",
        "aggregation.metrics",
        "aggregation.dissent",
        "aggregation.followup",
        "aggregation.design",
        "aggregation.pairs",
        "aggregation.partners",
        "aggregation.addresses",
        "aggregation.recheck",
        "aggregation.uncertain",
    ],
)
def test_doctests(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_public_modules_declare_all():
    for name in (
        "adapter",
        "addresses",
        "answer_cuts",
        "confidence",
        "consensus",
        "dissent",
        "estimators",
        "metrics",
        "pairs",
        "partners",
        "pieces",
        "splitting",
        "synthetic",
        "unreadable",
        "workers",
    ):
        module = importlib.import_module(f"aggregation.{name}")
        assert module.__all__ and all(hasattr(module, item) for item in module.__all__)
    assert {"least_certain", "crowd_shape"} <= set(aggregation.__all__)


def test_same_seed_same_confidences():
    crowd = generate_crowd(82, 8, seed=6)
    a = CrowdClustering(random_state=1).fit(crowd.labels)
    b = CrowdClustering(random_state=1).fit(crowd.labels.sample(frac=1.0, random_state=3))
    np.testing.assert_array_equal(a.confidence_.to_numpy(), b.confidence_.to_numpy())


def _two_styles_and_a_pair_nobody_compared(extra: list[tuple[str, str, str, int]]) -> pd.DataFrame:
    """Styles A (a0-a5) and B (b0-b3) in clean HITs, plus `extra` rows; x0 and x1 are put together
    by three workers in a HIT of their own."""
    rows = []
    for w in range(4):
        rows += [("hit-ab", f"w{w}", f"a{i}", 1) for i in range(6)]
        rows += [("hit-ab", f"w{w}", f"b{i}", 2) for i in range(4)]
    rows += [("hit-x", f"w{w}", item, 1) for w in range(3) for item in ("x0", "x1")]
    return pd.DataFrame(rows + extra, columns=["task", "worker", "item", "label"])


def test_a_piece_only_the_prior_placed_is_not_certain():
    """x0 and x1 agree with each other and met nobody else: the prior puts them in a cluster, and
    their labels with each other made the conditional ~1 (a new user found such images at 1.000000).
    Each image's confidence is its conditional (~1: its partner is in A) times where the rest of its
    piece, its partner, goes as a block: by the Ewens weights 6 for A, 4 for B, 1 for a new cluster
    (the image's own evidence and prior weight are in its conditional, not counted twice)."""
    model = CrowdClustering(random_state=0, embedding_max_items=0).fit(
        _two_styles_and_a_pair_nobody_compared([])
    )
    clusters, confidence = model.labels_, model.confidence_
    assert clusters["x0"] == clusters["x1"] == clusters["a0"] and clusters["b0"] != clusters["a0"]
    share = 6 / (6 + 4 + 1)
    assert confidence[["x0", "x1"]].to_numpy() == pytest.approx([share, share], abs=0.02)
    assert (confidence.drop(["x0", "x1"]) > 0.99).all()  # the cores: every label vouches for them
    pieces = model.pieces_
    index = {item: k for k, item in enumerate(model.pairs_.items)}
    assert not pieces.in_core[index["x0"]] and pieces.in_core[index["a0"]]


def test_a_piece_that_its_labels_rule_out_elsewhere_keeps_its_cluster():
    """The same pair, shown with B's images and set apart from them by every worker: B is ruled out,
    and A (never compared) is all that is left besides a cluster of its own."""
    apart = [
        (f"hit-xb{k}", f"v{w}", item, group)
        for k in range(2)
        for w in range(5)
        for item, group in [("x0", 1), ("x1", 1), ("b0", 2), ("b1", 2), ("b2", 2)]
    ]
    model = CrowdClustering(random_state=0, embedding_max_items=0).fit(
        _two_styles_and_a_pair_nobody_compared(apart)
    )
    assert model.labels_["x0"] == model.labels_["a0"]
    # A (6 images, never compared) against a cluster of its own (α = 1): 6/7, B ruled out.
    assert model.confidence_[["x0", "x1"]].to_numpy() == pytest.approx([6 / 7, 6 / 7], abs=0.02)
