"""Metrics on hand-computed cases."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from aggregation import clustering_scores


def _series(values, name):
    return pd.Series(values, index=[f"i{k}" for k in range(len(values))], name=name)


def test_perfect_agreement_up_to_renaming():
    scores = clustering_scores(
        _series([5, 5, 7, 7, 9], "cluster"), _series(["a", "a", "b", "b", "c"], "class")
    )
    pairwise = ("pairwise_precision", "pairwise_recall", "pairwise_f1")
    for key in ("ari", "nmi", *pairwise, "bcubed_precision", "bcubed_recall", "bcubed_f1"):
        assert scores[key] == pytest.approx(1.0)
    assert scores["vi"] == pytest.approx(0.0, abs=1e-12)
    assert scores["n_items"] == 5


def test_one_cluster_and_one_class_print_a_plain_zero():
    # The CLI printed "vi -0.0000" here: the entropies of a single cluster came out as -0.0.
    scores = clustering_scores(_series([3, 3, 3], "cluster"), _series(["a", "a", "a"], "class"))
    assert f"{scores['vi']:.4f}" == "0.0000"
    assert scores["ari"] == 1.0 and scores["nmi"] == 1.0


def test_hand_computed_case():
    # predicted {0,1,2} {3}; truth {0,1} {2,3}
    scores = clustering_scores(_series([0, 0, 0, 1], "c"), _series([0, 0, 1, 1], "t"))
    assert scores["pairwise_precision"] == pytest.approx(1 / 3)  # 3 predicted pairs, 1 true
    assert scores["pairwise_recall"] == pytest.approx(1 / 2)  # 2 true pairs, 1 found
    # B-cubed precision: items 0,1 -> 2/3, item 2 -> 1/3, item 3 -> 1; recall: 1, 1, 1/2, 1/2.
    bp, br = (2 / 3 + 2 / 3 + 1 / 3 + 1) / 4, (1 + 1 + 0.5 + 0.5) / 4
    assert (scores["bcubed_precision"], scores["bcubed_recall"]) == pytest.approx((bp, br))
    assert scores["bcubed_f1"] == pytest.approx(2 * bp * br / (bp + br))
    # VI = H(P|T) + H(T|P): H(P)=H(3/4,1/4), H(T)=log 2, I = H(P)+H(T)-H(P,T), H(P,T)=H(1/2,1/4,1/4).
    h = lambda *p: -sum(x * math.log(x) for x in p)  # noqa: E731
    mutual = h(0.75, 0.25) + h(0.5, 0.5) - h(0.5, 0.25, 0.25)
    assert scores["vi"] == pytest.approx(h(0.75, 0.25) + h(0.5, 0.5) - 2 * mutual)
    assert scores["ari"] < 0.5
    # ARI: 1 pair together in both, 3 predicted, 2 true, 6 in all: expected 3·2/6 = 1 = observed.
    assert scores["ari"] == pytest.approx(0.0, abs=1e-12)
    assert scores["nmi"] == pytest.approx(mutual / (0.5 * (h(0.75, 0.25) + h(0.5, 0.5))))


def test_only_common_items_count():
    predicted = pd.Series([0, 0, 1], index=["a", "b", "x"])
    truth = pd.Series([1, 1, 2], index=["a", "b", "y"])
    assert clustering_scores(predicted, truth)["n_items"] == 2
    with pytest.raises(ValueError, match="share no items"):
        clustering_scores(pd.Series([0], index=["p"]), pd.Series([0], index=["q"]))
