"""Which images to show the crowd again: those that only the prior put where they are.

Why. In a large catalogue each image meets few images of its own style (10,000 images of 40
styles in 10-image HITs, 10 HITs per image: about 2 of its 90 partners), so the "same" answers
leave every style in pieces with no pair between them. The Ewens prior joins pieces that nothing
separates, and it cannot tell two pieces of one style from pieces of two small styles that never
met: the clusters of the small styles come out mixed, with every image in them confident (no
label contradicts it). A cluster's labels vouch for its largest *linked piece*: the images joined
by chains of pairs that most of the workers who saw them put together. Every image outside it,
and every image whose confidence is below one half, is where it is by the prior or a weak vote.
(Linking by the evidence under the workers' coins, S > 0, instead of the majority made larger
pieces: 20% of the 10,000 images to show again instead of 26%, ARI 0.966 after the second round
instead of 0.984.)

What to do with them (`followup.plan`). Shown again among themselves, they meet their own style far
more often than in the whole catalogue: they are mostly the small styles' images, which the first
round diluted among the large styles. Two anchors per HIT, images of the linked pieces of the
clusters the HIT's images sit in, tie each piece to its cluster when it belongs there and say
"different" when it does not. Measured on the synthetic 10,000-image catalogue (seed 0): 26% of
the images listed; among themselves only, +26% answers took ARI from 0.836 to 0.983 and left 14%
listed; with the anchors, +33% took it to 0.993 and left 3% (140% more answers over the whole
catalogue gave 0.991). `crowdclust aggregate --recheck-output` writes the list; aggregating both
rounds' exports together gives the clusters, and `hits.second_round_share` runs such a round in
the pipeline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from aggregation import followup
from aggregation.design import (
    ObservedDesign,
    design_for,
    design_information,
    implied_styles,
    memory_note,
    observed_design,
)
from aggregation.followup import count_hits
from aggregation.pairs import together_partners

__all__ = ["RECHECK_CONFIDENCE", "UNANCHORED_WARNING", "Recheck", "find_recheck"]

RECHECK_CONFIDENCE = 0.5  # below it an image is shown again even inside its cluster's linked piece
# Above this share of images that no other image was grouped with by most workers, the clusters
# cannot be trusted (the 10,000-image bench has 13%, the 100,000-image one 54%).
UNANCHORED_WARNING = 0.25
# The share of the other images an image must have been shown with for "set apart from every image
# it was shown with" to place it alone (`Recheck.apart`): as for the most HITs per image the
# unanchored warning advises, past it more HITs mostly repeat pairs.
MEETS_ALL = 0.95


def percent(share: float) -> str:
    """A share as a whole percentage; a share above 0 that rounds to 0 is "<1%" (one image of
    a thousand read "(0%)", and so did 10 of 2,000: 0.5% rounds to even), one below 1 that rounds
    to 100 is ">99%".

    >>> percent(0.0004), percent(0.005), percent(0.0), percent(0.256), percent(0.996), percent(1.0)
    ('<1%', '<1%', '0%', '26%', '>99%', '100%')
    """
    text = f"{share:.0%}"
    if share > 0 and text == "0%":
        return "<1%"
    return ">99%" if share < 1 and text == "100%" else text


def _hits_to_meet_all(n_items: int, hit_size: int, share: float = MEETS_ALL) -> int:
    """HITs per image of `hit_size` random images that show an image `share` of the others (at least 1)."""
    if hit_size - 1 >= n_items - 1:
        return 1
    return max(1, math.ceil(math.log(1.0 - share) / math.log(1.0 - (hit_size - 1) / (n_items - 1))))


@dataclass(frozen=True)
class Recheck:
    """The images to show again (`item`, `cluster`, `confidence`, sorted by cluster then confidence).

    `design` is the run's, as its answers show it; a round of the images with it buys
    `round_answers`, against the run's `answered`.
    """

    table: pd.DataFrame
    n_items: int  # all the clustered images
    outside: int  # of them outside their cluster's linked piece
    design: ObservedDesign
    answered: int
    # Per item (the pairs' order): how many images most workers who saw both put in its group, from
    # the same majority pairs as the pieces (`together_partners`; 0: unanchored).
    partners: np.ndarray
    # Why the images are listed, as the summary says it: the model's prior placed them; the
    # baseline has no prior, its linkage placed them (`placed_by` of the estimator).
    placed_by: str = "only the prior placed"
    # Per item (the pairs' order): unanchored, a cluster of its own, and shown with at least
    # MEETS_ALL of the other images, every one of which most workers set it apart from: the labels
    # place it, alone (None: not known, every unanchored image counted unplaced).
    apart: np.ndarray | None = None
    # Pairs of unanchored images each a cluster of its own that no HIT showed together: only the
    # prior weighs whether such a pair is one style (counted when some image is `apart`, or none
    # has a partner).
    unshown: int = 0
    # Pairs of the listed images (`table`) that no HIT showed together, counted when no image has a
    # partner (`summary`: a round of them still shows them to one another).
    listed_unshown: int = 0

    @property
    def share(self) -> float:
        return len(self.table) / self.n_items if self.n_items else 0.0

    @property
    def round_answers(self) -> int:
        """Answers of `followup.plan` with this design: `followup.count_hits` x the overlap."""
        design = self.design
        n_hits = count_hits(len(self.table), round(design.hit_size), max(1, round(design.hits_per_item)))
        return n_hits * max(1, round(design.overlap))

    @property
    def fills_a_hit(self) -> bool:
        """Whether the listed images fill a HIT of this design beside its anchors (`followup.plan`)."""
        return followup.fills_a_hit(len(self.table), round(self.design.hit_size))

    @property
    def unanchored(self) -> int:
        """The images no other image was grouped with by most workers who saw both."""
        return int((self.partners == 0).sum())

    @property
    def set_apart(self) -> int:
        """Of the unanchored images, those the labels place alone (`apart`)."""
        return 0 if self.apart is None else int(self.apart.sum())

    def unanchored_warning(self) -> str | None:
        """Above UNANCHORED_WARNING of the images unanchored: that the clusters are unreliable, what
        the design showed each image and the design that would anchor every image; else None.

        One sentence for `crowdclust aggregate` and the pipeline's aggregation stage alike: a run of
        1,139 images of 120 styles (36% unanchored) ended with exit 0 and no word of it, while the
        command said it of the run's own export. The number of styles is the one under which the
        observed design predicts the mean number of partners each image was grouped with
        (`design.implied_styles`).
        """
        alone = self.unanchored - self.set_apart
        if alone <= UNANCHORED_WARNING * self.n_items:
            return self._set_apart_warning()
        mean_partners = float(self.partners.mean())
        hit_size, overlap, hits_per_item = self.design
        styles = implied_styles(self.n_items, hit_size, hits_per_item, mean_partners)
        advice = design_for(self.n_items, styles, round(hit_size), max(1, round(overlap)))
        # No design shows an image more of its style than there are: past the HITs per image that
        # show it nearly every other image, more HITs repeat pairs. 30 images read as ~29 styles
        # were advised 496 HITs per image, "each image meets ~5.3 of its style", 49.6x the answers.
        every_other = _hits_to_meet_all(self.n_items, round(hit_size))
        if advice.hits_per_item > every_other:
            advice = design_information(
                self.n_items, styles, round(hit_size), every_other, max(1, round(overlap))
            )
        cost = advice.assignments / self.answered
        every_image_alone = styles >= self.n_items
        shown = (
            f"Each image met ~{mean_partners:.1f} images it was grouped with (HITs of ~{hit_size:.0f} "
            f"images, ~{hits_per_item:.0f} HITs per image, ~{overlap:.0f} answers each; "
            + (
                "as if every image were a style of its own)."
                if every_image_alone
                else f"as if ~{styles} styles)."
            )
        )
        headline = (
            f"{alone:,} of {self.n_items:,} images ({alone / self.n_items:.0%}) were grouped with no "
            "other image by most workers who saw them: the labels cannot place them and the clusters "
            "are unreliable."
        )
        if self.set_apart:
            one = self.set_apart == 1
            headline += (
                f" ({self.set_apart:,} more {'was' if one else 'were'} set apart from every image "
                f"{'it was' if one else 'they were'} shown with, {MEETS_ALL:.0%} of the others or more, and "
                f"{'is' if one else 'are'} placed: alone.)"
            )
        if every_image_alone and hits_per_item < every_other:
            # Shown with a few of the others, images set apart from all of them may still have a
            # style-mate they never met: 6 images of 3 styles in HITs of 2, 2 HITs per image (each
            # shown with ~2 of the other 5) read "No design changes that".
            met = 1.0 - (1.0 - (hit_size - 1.0) / max(1, self.n_items - 1)) ** hits_per_item
            more = every_other / hits_per_item
            return (
                f"{headline} {shown} Each image was shown with ~{percent(min(1.0, met))} of the others, "
                "so an image may share a style with one it never met: more HITs per image tell, "
                f"hits.hits_per_item {every_other} shows each image ~{MEETS_ALL:.0%} of the others "
                f"(~{more:.1f}x the answers of this run). If the images still share no style, the "
                "workers set them apart (check the instructions and the examples)."
            )
        if every_image_alone or cost <= 1.0:
            # More HITs per image cannot anchor images that the workers put with no other.
            already = (
                "No design changes that"
                if every_image_alone
                else "This design already shows each image enough others"
            )
            return (
                f"{headline} {shown} {already}: the images may share no style, or the workers set them "
                "apart (check the instructions and the examples)."
            )
        shows = advice.summary()
        others = self.n_items / styles - 1.0  # the images of an image's style, besides itself
        if advice.same_style_partners > others:
            # m counts meetings, repeats and all: 16 images read as ~5 styles (~2.2 others each) were
            # told that 37 HITs of 2 per image show each image "~5.4 of its style". Said as the
            # images it is shown with, repeats counted once.
            met = 1.0 - (1.0 - (advice.hit_size - 1) / (self.n_items - 1)) ** advice.hits_per_item
            shows = (
                f"hits.size {advice.hit_size}, hits.hits_per_item {advice.hits_per_item:g}, overlap "
                f"{advice.overlap}: each image is shown with ~{percent(met)} of the others, "
                f"~{others * met:.1f} of the ~{others:.1f} of its style, {advice.assignments:,} answers"
            )
        return (
            f"{headline} {shown} More answers per HIT do not help; more HITs per image do: "
            f"{shows} ({cost:.1f}x the answers of this run; {memory_note(advice)})."
        )

    def _set_apart_warning(self) -> str | None:
        """Above UNANCHORED_WARNING of the images set apart (`apart`): what the labels say of them,
        which is no doubt about the clusters; else None.

        30 images of 30 styles, HITs of 10, 10 HITs per image, 5 answers each: 30 right clusters of
        one image (ARI 1.0), and the warning said "the labels cannot place them and the clusters
        are unreliable". An image most workers set apart from every image it was shown with, and it
        was shown with nearly every other, is placed: alone. What stays open is whether two such
        images never shown together are one style: only the prior weighs that, about even, so those
        images' confidences are below 0.5 (17 of the 30 there, 13 pairs never shown together).
        """
        apart = self.set_apart
        if apart <= UNANCHORED_WARNING * self.n_items:
            return None
        text = (
            f"{apart:,} of {self.n_items:,} images ({apart / self.n_items:.0%}) were set apart by most "
            f"workers from every image they were shown with, {MEETS_ALL:.0%} of the others or more: each "
            "is a cluster of its own, as the labels say. If the images were meant to share styles, the "
            "workers saw none (check the instructions, the examples and the crowd)."
        )
        if self.unshown:
            one = self.unshown == 1
            text += (
                f" {self.unshown:,} pair{'' if one else 's'} of images each alone and grouped with no other "
                f"{'was' if one else 'were'} never shown together: only the prior weighs whether such a pair "
                "is one style, at about even odds, which is what their confidences below 0.5 measure; a HIT "
                "showing both would tell."
            )
        return text

    def summary(self) -> str:
        """One line: how many and why, and what a round of them (`followup.plan`) would buy."""
        if self.table.empty:
            return "none: every image is in its cluster's linked piece with confidence >= 0.5"
        n = len(self.table)
        line = (
            f"{n:,} image{'s' if n > 1 else ''} ({percent(self.share)}) {self.placed_by} "
            f"({self.outside:,} outside their cluster's linked piece, "
            f"{n - self.outside:,} more below confidence {RECHECK_CONFIDENCE})"
        )
        hit_size = round(self.design.hit_size)
        anchors = followup.anchors_per_hit(hit_size)
        if not self.fills_a_hit:
            listed = followup.listed_per_hit(hit_size)
            beside = f" beside its {_anchors(anchors)}" if anchors else ", no room for anchors"
            return f"{line}; too few to fill a HIT of {hit_size} ({listed} images{beside})"
        more = f"~{self.round_answers:,} answers (+{self.round_answers / self.answered:.0%})"
        if not self.partners.any():  # anchors tie pieces to clusters only if the workers join images
            if not self.listed_unshown:
                return f"{line}; no round would help: most workers put no two images together"
            # But the listed images meet one another in it: 30 images of 30 styles, 13 pairs never
            # shown together and 17 images below 0.5 for them, read "no round would help".
            one = self.listed_unshown == 1
            return (
                f"{line}; most workers put no two images together, but {self.listed_unshown:,} "
                f"pair{'' if one else 's'} of them {'was' if one else 'were'} never shown together: a "
                f"round of them, same design, shows them to one another: {more}"
            )
        held = (
            f"with {_anchors(anchors)} per HIT"
            if anchors
            else f"among themselves (no room for anchors in HITs of {hit_size})"
        )
        return f"{line}; a round of them {held}, same design: {more}"


def _anchors(n: int) -> str:
    return f"{n} anchor{'s' if n != 1 else ''}"


def find_recheck(model, labels: pd.DataFrame) -> Recheck:
    """The images of a fitted estimator whose place its `labels` (long format) do not vouch for."""
    pairs = model.pairs_
    clusters = model.labels_.to_numpy().astype(np.int64)  # in the pairs' item order (`_Base._finish`)
    pieces = model.pieces_  # found by the fit (`_Base._finish`), for the confidences
    outside = ~pieces.in_core
    confidence = model.confidence_.to_numpy()
    chosen = outside | (confidence < RECHECK_CONFIDENCE)
    table = pd.DataFrame(
        {"item": pairs.items[chosen], "cluster": clusters[chosen], "confidence": confidence[chosen]}
    ).sort_values(["cluster", "confidence", "item"], kind="mergesort", ignore_index=True)
    design = observed_design(pairs.n_items, pairs.n_assignments, len(labels), labels["task"].nunique())
    partners = together_partners(pairs, pieces.together)
    placed_by = getattr(model, "placed_by", Recheck.placed_by)
    apart, unshown = _set_apart(model.pair_graph_, clusters, partners)
    listed_unshown = 0 if partners.any() else _unshown_pairs(model.pair_graph_, chosen)
    return Recheck(
        table,
        len(clusters),
        int(outside.sum()),
        design,
        pairs.n_assignments,
        partners,
        placed_by,
        apart,
        unshown,
        listed_unshown,
    )


def _set_apart(graph, clusters: np.ndarray, partners: np.ndarray) -> tuple[np.ndarray, int]:
    """The images the labels place alone (`Recheck.apart`), and the pairs no HIT showed of images
    unanchored and alone in their cluster (`Recheck.unshown`).

    `graph` is the fit's `PairGraph` (each image's row lists the images it was shown with).
    """
    n = len(clusters)
    met = np.diff(graph.indptr)  # how many other images each image was shown with
    alone = np.bincount(clusters)[clusters] == 1 if n else np.zeros(0, dtype=bool)
    lone = (partners == 0) & alone & (met > 0)
    apart = lone & (met >= MEETS_ALL * (n - 1))
    count = int(lone.sum())
    if count < 2 or not (apart.any() or (partners == 0).all()):  # (`Recheck.summary` reads it then)
        return apart, 0
    return apart, _unshown_pairs(graph, lone)


def _unshown_pairs(graph, mask: np.ndarray) -> int:
    """How many pairs of the images `mask` selects no HIT showed together (`graph`: a `PairGraph`)."""
    count = int(mask.sum())
    if count < 2:
        return 0
    rows = np.repeat(np.arange(len(mask)), np.diff(graph.indptr))
    shown = int((mask[rows] & mask[graph.indices]).sum()) // 2
    return count * (count - 1) // 2 - shown
