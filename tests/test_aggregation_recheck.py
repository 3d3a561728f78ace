"""The images only the prior placed (`aggregation.recheck`), and what a second round over them buys."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from aggregation import (
    CoAssociationClustering,
    CrowdClustering,
    clustering_scores,
    find_recheck,
    followup,
    followup_crowd,
    generate_crowd,
)
from aggregation.pieces import linked_pieces
from aggregation.recheck import percent


def _pieces(a, b, labels):
    return linked_pieces(np.array(a, dtype=np.int64), np.array(b, dtype=np.int64), np.array(labels))


def test_pieces_follow_pairs_inside_a_cluster_whatever_their_order():
    """Items 0-1-2 chained, 3 alone, 4-5 linked; the pair 2-3 crosses clusters and links nothing."""
    labels = [0, 0, 0, 1, 2, 2]
    a, b = [1, 0, 2, 4], [2, 1, 3, 5]
    assert _pieces(a, b, labels).tolist() == [0, 0, 0, 3, 4, 4]
    assert _pieces(a[::-1], b[::-1], labels).tolist() == [0, 0, 0, 3, 4, 4]
    assert _pieces([], [], labels).tolist() == [0, 1, 2, 3, 4, 5]


@pytest.fixture(scope="module")
def thin():
    """1,000 images of 25 uneven styles, each image in 10 HITs of 10: the small styles' images meet
    few of their own, and the prior pools their pieces with other styles'."""
    crowd = generate_crowd(1000, 25, seed=3)
    return crowd, CrowdClustering(random_state=0).fit(crowd.labels)


def test_the_images_to_show_again_are_those_the_clusters_got_wrong(thin):
    crowd, model = thin
    recheck = find_recheck(model, crowd.labels)
    table = recheck.table
    assert list(table.columns) == ["item", "cluster", "confidence"] and 0 < len(table) < 300
    assert table.equals(table.sort_values(["cluster", "confidence", "item"], ignore_index=True))
    assert (table["cluster"].to_numpy() == model.labels_.reindex(table["item"]).to_numpy()).all()
    predicted = model.labels_.reindex(crowd.truth.index)
    majority = crowd.truth.groupby(predicted).agg(lambda s: s.value_counts().idxmax())
    wrong = crowd.truth.index[crowd.truth.to_numpy() != predicted.map(majority).to_numpy()]
    assert len(wrong) > 40  # 46
    assert pd.Index(wrong).isin(table["item"]).mean() > 0.9  # 98% measured
    answers = -(-len(table) // 8) * 10 * 7  # HITs of 8 listed images and 2 anchors, 10 per image, 7 answers
    assert recheck.round_answers == answers and recheck.answered == 7000
    assert recheck.summary().endswith(
        f"2 anchors per HIT, same design: ~{answers:,} answers (+{answers / 7000:.0%})"
    )


def test_a_second_round_over_them_finds_the_small_styles(thin):
    """The listed images shown again with two anchors per HIT (new HITs, new workers): ARI 0.958 ->
    1.000 and 25 of 25 clusters, and what is listed after both rounds shrinks from 143 images to
    11; a round over as many random images among themselves buys almost nothing (0.962)."""
    crowd, model = thin
    recheck = find_recheck(model, crowd.labels)
    before = clustering_scores(model.labels_, crowd.truth)
    hits = followup.plan(recheck.table, model.labels_, hit_size=10, hits_per_item=10, seed=3)
    assert all(9 <= len(hit) <= 10 and len(set(hit)) == len(hit) for hit in hits)
    listed = set(recheck.table["item"])
    assert all(sum(x not in listed for x in hit) <= 2 for hit in hits)

    def with_round(shown, plan=None) -> tuple[dict, CrowdClustering, pd.DataFrame]:
        second = followup_crowd(crowd, shown, seed=1003, hits=plan)
        labels = pd.concat([crowd.labels, second.labels], ignore_index=True)
        fitted = CrowdClustering(random_state=0).fit(labels)
        assert plan is None or len(second.export) == recheck.round_answers
        return clustering_scores(fitted.labels_, crowd.truth), fitted, labels

    targeted, fitted, labels = with_round(sorted({x for hit in hits for x in hit}), hits)
    rng = np.random.default_rng(0)
    random, _, _ = with_round(rng.choice(crowd.truth.index.to_numpy(), size=len(listed), replace=False))
    assert targeted["ari"] > 0.99 and targeted["bcubed_f1"] > 0.99 and fitted.n_clusters_ == 25
    assert targeted["ari"] - before["ari"] > 3 * (random["ari"] - before["ari"])
    assert len(find_recheck(fitted, labels).table) < len(listed) / 5


def test_labels_that_hold_every_image_leave_nothing_to_show_again():
    crowd = generate_crowd(82, 8, seed=0)
    recheck = find_recheck(CrowdClustering(random_state=0).fit(crowd.labels), crowd.labels)
    assert len(recheck.table) <= 2 and not recheck.fills_a_hit
    line = recheck.summary()
    assert (
        line.startswith("none:")
        if recheck.table.empty
        else line.endswith("too few to fill a HIT of 10 (8 images beside its 2 anchors)")
    )


def test_the_baselines_recheck_line_names_its_linkage_not_a_prior():
    """The baseline has no prior; its line said "only the prior placed" all the same."""
    crowd = generate_crowd(60, 6, seed=3, spammer_share=0.5)
    for model, placed in (
        (CoAssociationClustering(), "only the linkage placed"),
        (CrowdClustering(), "only the prior placed"),
    ):
        recheck = find_recheck(model.fit(crowd.labels), crowd.labels)
        assert recheck.placed_by == placed and len(recheck.table), recheck.summary()
        assert f"({recheck.share:.0%}) {recheck.placed_by} (" in recheck.summary()


def test_a_share_of_the_images_is_never_printed_as_none_or_all_of_them():
    """Two rounds of 2,000 images left 10 to show again, and the recheck line read "10 images (0%)":
    0.5% rounds to even. A share above 0 reads "<1%", one below 1 never "100%"."""
    shares = (10 / 2000, 1 / 1000, 0.0, 0.256, 1995 / 2000, 1.0)
    assert [percent(share) for share in shares] == ["<1%", "<1%", "0%", "26%", ">99%", "100%"]


def test_the_recheck_line_counts_the_anchors_a_small_hit_holds():
    """A round of HITs of 3 holds 2 listed images and 1 anchor, of HITs of 2 none: the line said
    "with 2 anchors per HIT" of both, as of HITs of 10."""
    for size, held in (
        (3, "with 1 anchor per HIT"),
        (2, "among themselves (no room for anchors in HITs of 2)"),
    ):
        crowd = generate_crowd(300, 6, seed=1, design="sized", hit_size=size, n_hits=2000, overlap=3)
        model = CrowdClustering(random_state=0).fit(crowd.labels)
        recheck = find_recheck(model, crowd.labels)
        assert recheck.fills_a_hit and round(recheck.design.hit_size) == size
        hits = followup.plan(recheck.table, model.labels_, size, 1, seed=0)  # the round it prices
        listed = set(recheck.table["item"])
        anchors = pd.Series([len(set(hit) - listed) for hit in hits])  # a HIT of one listed image has more
        assert anchors.mode().tolist() == [followup.anchors_per_hit(size)] == [size - 2]
        assert f"; a round of them {held}, same design: ~" in recheck.summary()


def test_images_set_apart_from_nearly_every_other_are_placed_alone_not_unplaceable():
    """30 images of 30 styles: every image's own cluster (ARI 1.0), and the warning said "the labels
    cannot place them and the clusters are unreliable". Each was set apart from every image it was
    shown with, 86-100% of the others: placed, alone. What the labels leave open is said instead:
    the pairs never shown together, which only the prior weighs. Images that met only a few of the
    others (300 images of 150 styles) are still unplaceable."""
    from aggregation.crowd_warnings import crowd_warnings
    from aggregation.pairs import group_use

    crowd = generate_crowd(30, 30, seed=0, overlap=5)
    model = CrowdClustering(random_state=0).fit(crowd.labels)
    assert clustering_scores(model.labels_, crowd.truth)["ari"] == 1.0
    recheck = find_recheck(model, crowd.labels)
    assert recheck.unanchored == 30 and recheck.set_apart == 24  # 6 were shown with under 95% of the others
    said = crowd_warnings(model, crowd.labels, recheck, group_use(crowd.labels, model.labels_))
    assert not any("cannot place" in line or "unreliable" in line for line in said), said
    (line,) = [line for line in said if "set apart" in line]
    assert line.startswith("24 of 30 images (80%) were set apart by most workers from every image")
    assert "13 pairs of images each alone and grouped with no other were never shown together" in line

    sparse = generate_crowd(300, 150, seed=0, overlap=3)
    model = CrowdClustering(random_state=0).fit(sparse.labels)
    recheck = find_recheck(model, sparse.labels)
    assert recheck.set_apart == 0
    assert "the labels cannot place them and the clusters are unreliable" in recheck.unanchored_warning()


def test_the_recheck_line_offers_a_round_when_listed_images_never_met():
    """30 images of 30 styles, put with no other by the workers: 17 images below confidence 0.5
    because 13 pairs of them were never shown together, and the line said "no round would help:
    most workers put no two images together". A round of them shows them to one another."""
    crowd = generate_crowd(30, 30, seed=0, overlap=5)
    model = CrowdClustering(random_state=0).fit(crowd.labels)
    recheck = find_recheck(model, crowd.labels)
    assert len(recheck.table) == 17 and not recheck.partners.any()
    line = recheck.summary()
    assert "no round would help" not in line, line
    assert "but 13 pairs of them were never shown together: a round of them, same design" in line
