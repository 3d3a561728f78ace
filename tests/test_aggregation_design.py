"""What a HIT design can tell (aggregation.design), the oracle bounds, and the lean start-up."""

from __future__ import annotations

import doctest
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from aggregation import build_pairs, clustering_scores, design_for, design_information, generate_crowd
from aggregation import design as design_module
from aggregation.design import ObservedDesign, implied_styles, memory_note, observed_design
from aggregation.oracle import linked_oracle, piece_oracle, placement_oracle, truth_codes


def test_doctests():
    result = doctest.testmod(design_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_predicted_partners_match_a_generated_crowd():
    # 1,000 images, 20 styles, the seed design with 10 and with 20 HITs per image (one answer per HIT:
    # the pairs shown do not depend on the overlap).
    for hits_per_item in (10, 20):
        crowd = generate_crowd(1000, 20, seed=3, hits_per_item=hits_per_item, overlap=1, n_workers=50)
        pairs = build_pairs(crowd.labels)
        codes = truth_codes(pairs, crowd.truth)
        key = np.unique(pairs.a * pairs.n_items + pairs.b)
        a, b = key // pairs.n_items, key % pairs.n_items
        same = codes[a] == codes[b]
        measured = np.bincount(np.r_[a[same], b[same]], minlength=pairs.n_items)
        # Measured styles are uneven (Dirichlet shares): the mean over images weighs big styles more,
        # so compare with the prediction for the measured share of same-style pairs instead of 1/K.
        share = float((crowd.truth.value_counts() ** 2).sum() / 1000**2)
        info = design_information(1000, round(1 / share), 10, hits_per_item, 7)
        assert measured.mean() == pytest.approx(info.same_style_partners, rel=0.15)
        assert (measured == 0).mean() == pytest.approx(info.alone_share, abs=0.06)


def test_design_for_is_the_smallest_design_that_reaches_the_target():
    advice = design_for(10_000, 40, hit_size=10, overlap=5, partners=4.0)
    assert advice.same_style_partners >= 4.0 and advice.overlap == 5
    fewer = design_information(10_000, 40, 10, advice.hits_per_item - 1, 5)
    assert fewer.same_style_partners < 4.0
    assert advice.assignments == -(-10_000 * advice.hits_per_item // 10) * 5
    assert implied_styles(10_000, 10, advice.hits_per_item, advice.same_style_partners) == 40


def test_design_rejects_impossible_designs():
    with pytest.raises(ValueError, match="n_styles"):
        design_information(10, 11)
    with pytest.raises(ValueError, match="hit_size"):
        design_information(100, 5, hit_size=1)


def test_oracles_on_a_hand_made_crowd():
    # Classes x = {a, b, c} and y = {d, e}; pairs seen: a-b, b-c (same class), c-d (across), d-e.
    rows = []
    for task, members in (("t1", "ab"), ("t2", "bc"), ("t3", "cd"), ("t4", "de")):
        for worker in ("w1", "w2", "w3"):
            truth_of = {"a": 1, "b": 1, "c": 1, "d": 2, "e": 2}
            rows += [(task, worker, item, truth_of[item]) for item in members]
    labels = pd.DataFrame(rows, columns=["task", "worker", "item", "label"])
    truth = pd.Series(["x", "x", "x", "y", "y"], index=list("abcde"))
    pairs = build_pairs(labels)
    linked = linked_oracle(pairs, truth)
    assert clustering_scores(linked, truth)["ari"] == 1.0
    # Without the pair b-c the class x falls in two linked pieces; the placement still finds it.
    cut = labels[labels["task"] != "t2"]
    pairs = build_pairs(cut)
    assert linked_oracle(pairs, truth).nunique() == 3
    placed = placement_oracle(pairs, truth)
    assert clustering_scores(placed, truth)["ari"] == 1.0
    # As blocks, {a, b} has no label with c or anything else: nothing ties it to x, and the image
    # bound's "b is of x" is the truth's, not the labels'. The pieces stay apart.
    blocks = piece_oracle(pairs, truth)
    groups = sorted(sorted(group) for group in blocks.groupby(blocks).groups.values())
    assert groups == [["a", "b"], ["c"], ["d", "e"]], blocks.to_dict()


def test_lean_imports_hide_optional_modules_only_while_importing():
    code = (
        "import sys\n"
        "from aggregation.startup import HIDDEN, lean_imports\n"
        "lean_imports()\n"
        "assert not any(name in sys.modules for name in HIDDEN), [n for n in HIDDEN if n in sys.modules]\n"
        "import pandas, numba.np.arraymath\n"
        "assert pandas.Series(['b', 'a']).sort_values().tolist() == ['a', 'b']\n"
        "import scipy.linalg\n"  # un-hidden again: an explicit import works
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_the_unanchored_warning_reads_the_design_off_the_export():
    """Half the images unanchored, the rest grouped with one other (a mean of 0.5 partners)."""
    from aggregation.recheck import Recheck

    crowd = generate_crowd(400, 40, seed=2, overlap=3)  # the seed design: ~10 HITs of 10 per image
    pairs = build_pairs(crowd.labels)
    design = observed_design(400, pairs.n_assignments, len(crowd.labels), crowd.labels["task"].nunique())
    partners = np.r_[np.zeros(200, np.int64), np.ones(200, np.int64)]
    recheck = Recheck(pd.DataFrame(), 400, 0, design, pairs.n_assignments, partners)
    assert recheck.unanchored == 200
    text = recheck.unanchored_warning()
    assert text.startswith("200 of 400 images (50%) were grouped with no other image by most workers")
    assert "HITs of ~10 images, ~10 HITs per image, ~3 answers each" in text
    styles = implied_styles(400, 10, 10, 0.5)
    advice = design_for(400, styles, 10, 3)
    assert f"hits.hits_per_item {advice.hits_per_item}," in text and "overlap 3" in text
    assert f"; {advice.aggregation_cost()})." in text
    quarter = np.r_[np.zeros(100, np.int64), np.ones(300, np.int64)]  # a quarter is not above it
    assert Recheck(pd.DataFrame(), 400, 0, design, pairs.n_assignments, quarter).unanchored_warning() is None


def test_the_unanchored_warning_never_advises_more_hits_than_show_every_image_the_others():
    """30 images that most workers set apart (as if ~29 styles of ~1 image) were advised 496 HITs of
    10 per image, "each image meets ~5.3 of its style", 49.6x the answers: no image has 5 others of its
    style, and past ~9 HITs per image every image has met nearly every other. The advice stops there."""
    from aggregation.recheck import Recheck

    partners = np.r_[np.zeros(28, np.int64), np.ones(2, np.int64)]
    seen = ObservedDesign(hit_size=10.0, overlap=5.0, hits_per_item=10.0)  # 30 HITs x 5 answers
    text = Recheck(pd.DataFrame(), 30, 0, seen, 150, partners).unanchored_warning()
    assert "as if ~29 styles). This design already shows each image enough others" in text, text
    assert "hits.hits_per_item" not in text
    few = ObservedDesign(hit_size=10.0, overlap=5.0, hits_per_item=2.0)  # 6 HITs x 5 answers
    text = Recheck(pd.DataFrame(), 30, 0, few, 30, partners).unanchored_warning()
    assert "more HITs per image do: hits.size 10, hits.hits_per_item 9, overlap 5:" in text, text
    assert "(4.5x the answers of this run;" in text


def test_the_memory_note_warns_when_aggregating_a_design_needs_more_than_the_machine(monkeypatch):
    advice = design_for(100_000, 200)  # 119 HITs per image: 375 M pairwise labels, ~45 GB
    assert advice.pair_labels == advice.assignments * 45
    monkeypatch.setattr(design_module, "machine_memory_bytes", lambda: 24 * 10**9)
    beyond = "374.9 M pairwise labels, ~45.2 GB to aggregate, more than this machine's 24 GB"
    assert memory_note(advice) == beyond
    assert memory_note(design_for(10_000, 40)) == "7.6 M pairwise labels, ~1.2 GB to aggregate"
    monkeypatch.setattr(design_module, "machine_memory_bytes", lambda: None)  # platform does not say
    assert memory_note(advice) == advice.aggregation_cost()


def test_a_small_designs_labels_are_counted_whole():
    """120 images, 3 HITs each, overlap 3: the warning read "0.0 M pairwise labels"."""
    assert design_information(120, 8, 10, 3, 3).aggregation_cost().startswith("4,860 pairwise labels")
    assert design_information(10_000, 40, 10, 10, 7).aggregation_cost().startswith("3.1 M pairwise labels")


def test_images_shown_with_few_others_are_not_told_no_design_would_help():
    """6 images of 3 styles in HITs of 2, 2 HITs per image, 2 answers each: every image shown with
    ~2 of the other 5 and put with none, and the warning said "as if every image were a style of its
    own). No design changes that", when more HITs per image would show each its style-mate."""
    from aggregation.recheck import Recheck

    crowd = generate_crowd(6, 3, seed=0, hit_size=2, overlap=2)
    pairs = build_pairs(crowd.labels)
    design = observed_design(6, pairs.n_assignments, len(crowd.labels), crowd.labels["task"].nunique())
    assert round(design.hits_per_item) == 2 and round(design.hit_size) == 2
    text = Recheck(
        pd.DataFrame(), 6, 0, design, pairs.n_assignments, np.zeros(6, np.int64)
    ).unanchored_warning()
    assert "No design changes that" not in text, text
    assert "Each image was shown with ~36% of the others" in text, text
    assert "more HITs per image tell, hits.hits_per_item 14 shows each image ~95% of the others" in text


def test_the_unanchored_warning_never_promises_more_of_a_style_than_it_holds():
    """16 images of 4 styles in HITs of 2, 8 per image, read as ~5 styles (~2.2 others each), were
    advised 37 HITs per image that "each image meets ~5.4 of its style": meetings counted with
    their repeats, more than the style holds. The line says the images shown, each counted once."""
    from aggregation.recheck import Recheck

    crowd = generate_crowd(16, 4, seed=0, hit_size=2, overlap=3, hits_per_item=8)
    pairs = build_pairs(crowd.labels)
    design = observed_design(16, pairs.n_assignments, len(crowd.labels), crowd.labels["task"].nunique())
    partners = np.r_[np.zeros(5, np.int64), np.full(8, 2, np.int64), np.ones(3, np.int64)]
    assert implied_styles(16, design.hit_size, design.hits_per_item, partners.mean()) == 5
    text = Recheck(pd.DataFrame(), 16, 0, design, pairs.n_assignments, partners).unanchored_warning()
    assert "meets ~" not in text, text
    assert (
        "hits.hits_per_item 37, overlap 3: each image is shown with ~92% of the others, ~2.0 of the ~2.2"
        in text
    )
