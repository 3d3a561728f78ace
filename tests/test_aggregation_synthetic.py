"""The synthetic crowd: seeded, the seed's HIT design, worker types, export layout."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from aggregation import build_pairs, followup_crowd, generate_crowd
from aggregation.partners import partner_signal


def test_same_seed_same_crowd_other_seed_other_crowd():
    a, b, c = generate_crowd(40, 4, seed=1), generate_crowd(40, 4, seed=1), generate_crowd(40, 4, seed=2)
    pd.testing.assert_frame_equal(a.export, b.export)
    assert not a.labels.equals(c.labels)


def test_seed_design_shape():
    crowd = generate_crowd(82, 8, seed=0)
    labels = crowd.labels
    assert labels["task"].nunique() == 82  # every item seeds one HIT
    assert (labels.groupby(["task", "worker"]).size() == 10).all()  # 10 images per HIT
    assert (labels.groupby("task")["worker"].nunique() == 7).all()  # overlap 7
    assert len(crowd.export) == 82 * 7
    assert crowd.truth.nunique() == 8 and crowd.truth.value_counts().min() >= 1
    assert labels["label"].between(1, 10).all()


def test_random_design_has_varied_hit_sizes():
    sizes = generate_crowd(200, 8, seed=0, design="random").labels.groupby(["task", "worker"]).size()
    assert sizes.min() >= 2 and sizes.max() <= 35 and sizes.nunique() > 10


def test_worker_types_and_spammer_share():
    crowd = generate_crowd(300, 8, seed=0, spammer_share=0.3)
    share = (crowd.workers["type"] == "spammer").mean()
    assert 0.2 < share < 0.4
    assert {"diligent", "spammer"} <= set(crowd.workers["type"])


def test_colour_biased_workers_group_by_colour():
    crowd = generate_crowd(60, 6, seed=0, shares={"colour": 1.0})
    # Every assignment's groups are a function of a hidden colour, not of the class: for a crowd of
    # only colour-biased workers, two items of one class are often split.
    merged = crowd.labels.assign(cls=crowd.truth.reindex(crowd.labels["item"]).to_numpy())
    split = merged.groupby(["task", "worker", "cls"])["label"].nunique()
    assert (split > 1).mean() > 0.3


def test_images_between_two_styles_get_either_from_careful_workers():
    """With `between_share`, some images are read as their style or its partner at even odds by
    workers who make no other mistake; the rest are always read right. A later round keeps them."""
    careful = {"shares": {"diligent": 1.0}, "error_range": (0.0, 0.0)}
    crowd = generate_crowd(300, 6, seed=4, between_share=0.2, **careful)
    between = crowd.between
    assert 0.12 < between.mean() < 0.28
    pairs = build_pairs(crowd.labels)
    truth = crowd.truth.reindex(pairs.items).to_numpy()
    flagged = between.reindex(pairs.items).to_numpy()
    same_class = truth[pairs.a] == truth[pairs.b]
    clean = same_class & ~flagged[pairs.a] & ~flagged[pairs.b]
    one_between = same_class & (flagged[pairs.a] != flagged[pairs.b])
    assert (pairs.label[clean] > 0).all()  # careful workers, no error: every clean pair is "same"
    assert 0.4 < (pairs.label[one_between] > 0).mean() < 0.6  # one image of the pair read either way
    later = followup_crowd(crowd, crowd.truth.index[:100], seed=5)
    pd.testing.assert_series_equal(later.between, between.iloc[:100])
    assert not generate_crowd(300, 6, seed=4).between.any()


def test_unknown_options():
    with pytest.raises(ValueError, match="design"):
        generate_crowd(20, 2, design="nope")
    with pytest.raises(ValueError, match="worker type"):
        generate_crowd(20, 2, shares={"robot": 1.0})
    with pytest.raises(ValueError, match="between_share"):
        generate_crowd(20, 2, between_share=1.5)


def test_write_truth(tmp_path):
    crowd = generate_crowd(20, 3, seed=0)
    crowd.write_truth(tmp_path / "truth.csv")
    frame = pd.read_csv(tmp_path / "truth.csv")
    assert list(frame.columns) == ["item", "class"]
    np.testing.assert_array_equal(frame["class"].to_numpy(), crowd.truth.to_numpy())


def test_partner_signal_weighs_each_label_by_what_its_worker_can_tell():
    """Workers who misread an image as its partner class at 20%: "same" at (0.8^2 + 0.2^2) inside a
    class and 2 * 0.2 * 0.8 across the pair, so each label carries the same information and the
    ratio is labels * D / (images - 1). Spammers carry none; the ARI inside a pair is 1 for the
    classes themselves and 0 when the pair is one cluster."""
    noisy = generate_crowd(120, 4, seed=3, shares={"diligent": 1.0}, error_range=(0.2, 0.2))
    signal = partner_signal(noisy, noisy.truth)
    s, t = 0.8**2 + 0.2**2, 2 * 0.2 * 0.8
    per_label = (s - t) ** 2 * (1 / (s + t) + 1 / (2 - s - t))
    expected = signal["labels"] * per_label / (signal["images"] - 1)
    np.testing.assert_allclose(signal["ks"], expected)
    assert signal["images"].sum() == 120 and (signal["labels"] > 0).all()
    assert (signal["cut_ari"] == 1.0).all()
    merged = noisy.truth.replace({1: 0, 3: 2})
    assert (partner_signal(noisy, merged)["cut_ari"] == 0.0).all()
    spam = generate_crowd(120, 4, seed=3, shares={"spammer": 1.0})
    assert (partner_signal(spam)["ks"] == 0.0).all()
