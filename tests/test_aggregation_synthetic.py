"""The synthetic crowd: seeded, the seed's HIT design, worker types, export layout."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from aggregation import build_pairs, followup_crowd, generate_crowd


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
