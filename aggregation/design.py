"""What a HIT design can tell: how many images of its own style each image is shown with.

A clustering can only put two images of one style together when some chain of "same" answers
links them. In a HIT design where every image lands in `hits_per_item` HITs of `hit_size` images,
an image is shown with about r·(h−1) others; of those, a share (n_s − 1)/(N − 1) has its style s,
where n_s ≈ N/K for K styles of similar size. So the expected number of same-style partners is

    m = r · (h − 1) · (N/K − 1) / (N − 1)        (≈ r·(h−1)/K once N ≫ K)

and it does not depend on the overlap (more workers per HIT make each pair's answer surer, not
the pairs more numerous). The partners are close to Poisson-distributed, so a share e^(−m) of the
images meets none of its style: their labels say only where they do not belong, and no method can
place them. Within one style the "same" pairs form a random graph of mean degree m, whose largest
connected piece holds the share s of its images solving s = 1 − e^(−m·s); the rest is scattered in
small pieces that only the prior on cluster sizes can join (and often joins wrongly).

Measured (bench/bench_aggregation.py, N = 10,000, 40 uneven styles, ~10% spammers, overlap 7,
seed 0): the shoes design (h = 10, r = 10, m = 2.2) gives ARI 0.84 and B-cubed F1 0.74 (bound:
0.87 / 0.82); r = 20 (m = 4.5) 0.979 / 0.946; r = 24 (m = 5.4) 0.991 / 0.974, 40 clusters of 40,
which meets the quality targets (ARI ≥ 0.97, B-cubed F1 ≥ 0.95, clusters within ±10%); r = 30
(m = 6.7) 0.997 / 0.988. Hence `ANCHOR_PARTNERS`. At N = 100,000 with 200 styles the shoes design
gives m = 0.45 and 59% of the images meet none of their style.

Pure Python (no numpy, pandas or numba), so the pipeline's planner and the CLI can call it for free.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "ANCHOR_PARTNERS",
    "DesignInformation",
    "ObservedDesign",
    "design_for",
    "design_information",
    "implied_styles",
    "memory_note",
    "observed_design",
]

# Same-style partners per image from which the model met the quality targets on the 10,000-image bench
# (m = 5.4 met them, m = 4.5 fell short on B-cubed F1; see the module docstring).
ANCHOR_PARTNERS = 5.3

# The peak memory of `crowdclust aggregate` grows with the pairwise labels (an answer of h images
# gives h(h-1)/2). Measured peak RSS on the bench's exports: 3.15 M labels 0.60 GB, 7.56 M 1.09 GB
# (10,000 images, 10 and 24 HITs per image), 31.5 M 3.98 GB (100,000 images); a line through them,
# rounded up: 0.25 GB whatever the labels (the imports) and 120 bytes per label.
AGGREGATION_BASE_BYTES = 250_000_000
AGGREGATION_BYTES_PER_LABEL = 120


@dataclass(frozen=True)
class DesignInformation:
    """What a design (N images, K styles, HIT size h, r HITs per image, overlap o) shows each image.

    `same_style_partners` is m above; `alone_share` the expected share of images that meet none of
    their style (e^−m); `linked_share` the share of a style's images in its largest linked piece;
    `assignments` the number of answers bought (N·r/h HITs × o workers), the cost's unit;
    `pair_labels` the pairwise labels they give (h(h−1)/2 each), what the aggregation's memory
    grows with (`aggregation_bytes`).
    """

    n_items: int
    n_styles: int
    hit_size: int
    hits_per_item: float
    overlap: int
    partners: float
    same_style_partners: float
    alone_share: float
    linked_share: float
    assignments: int
    pair_labels: int

    @property
    def aggregation_bytes(self) -> int:
        """About the peak memory of `crowdclust aggregate` on this design's answers."""
        return AGGREGATION_BASE_BYTES + AGGREGATION_BYTES_PER_LABEL * self.pair_labels

    def aggregation_cost(self) -> str:
        """The pairwise labels and the memory to aggregate them, for a user about to buy them."""
        gigabytes = self.aggregation_bytes / 1e9
        # A small design read "0.0 M pairwise labels": below a million they are counted whole.
        labels = (
            f"{self.pair_labels / 1e6:,.1f} M" if self.pair_labels >= 1_000_000 else f"{self.pair_labels:,}"
        )
        return f"{labels} pairwise labels, ~{gigabytes:,.1f} GB to aggregate"

    def summary(self) -> str:
        """One line for a user: the design and what it shows each image."""
        return (
            f"hits.size {self.hit_size}, hits.hits_per_item {self.hits_per_item:g}, overlap {self.overlap}: "
            f"each image meets ~{self.same_style_partners:.1f} of its style "
            f"({self.alone_share:.0%} meet none), {self.assignments:,} answers"
        )


def machine_memory_bytes() -> int | None:
    """This machine's physical memory, where the platform tells it (Linux, macOS); else None."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def memory_note(info: DesignInformation) -> str:
    """What aggregating `info`'s answers takes, and a warning when that is more than this machine has."""
    have = machine_memory_bytes()
    if have is not None and info.aggregation_bytes > have:
        return f"{info.aggregation_cost()}, more than this machine's {have / 1e9:,.0f} GB"
    return info.aggregation_cost()


def _linked_share(m: float) -> float:
    """The largest piece's share of a random graph of mean degree m: s = 1 − exp(−m·s)."""
    if m <= 1.0:
        return 0.0
    s = 1.0
    for _ in range(200):
        s = 1.0 - math.exp(-m * s)
    return s


def design_information(
    n_items: int, n_styles: int, hit_size: int = 10, hits_per_item: float = 10.0, overlap: int = 7
) -> DesignInformation:
    """What the design shows each image (see the module docstring for the formulas).

    >>> info = design_information(10_000, 40, hit_size=10, hits_per_item=10, overlap=7)
    >>> round(info.same_style_partners, 2), round(info.alone_share, 2), info.assignments
    (2.24, 0.11, 70000)
    >>> info.pair_labels, info.aggregation_cost()
    (3150000, '3.1 M pairwise labels, ~0.6 GB to aggregate')
    """
    if n_items < 2 or not 1 <= n_styles <= n_items:
        raise ValueError("need n_items >= 2 and 1 <= n_styles <= n_items")
    if hit_size < 2 or hits_per_item <= 0 or overlap < 1:
        raise ValueError("need hit_size >= 2, hits_per_item > 0 and overlap >= 1")
    partners = (n_items - 1) * (1.0 - (1.0 - min(hit_size - 1, n_items - 1) / (n_items - 1)) ** hits_per_item)
    share = (n_items / n_styles - 1.0) / (n_items - 1.0)
    m = hits_per_item * (hit_size - 1) * share
    assignments = math.ceil(n_items * hits_per_item / hit_size) * overlap
    return DesignInformation(
        n_items=n_items,
        n_styles=n_styles,
        hit_size=hit_size,
        hits_per_item=hits_per_item,
        overlap=overlap,
        partners=partners,
        same_style_partners=m,
        alone_share=math.exp(-m),
        linked_share=_linked_share(m),
        assignments=assignments,
        pair_labels=assignments * (hit_size * (hit_size - 1) // 2),
    )


def design_for(
    n_items: int,
    n_styles: int,
    hit_size: int = 10,
    overlap: int = 7,
    partners: float = ANCHOR_PARTNERS,
) -> DesignInformation:
    """The design with the fewest HITs per image that shows each image `partners` of its style.

    >>> design_for(10_000, 40).hits_per_item
    24
    >>> advice = design_for(100_000, 200)
    >>> advice.hits_per_item, round(advice.same_style_partners, 1), advice.assignments
    (119, 5.3, 8330000)
    >>> advice.aggregation_cost()
    '374.9 M pairwise labels, ~45.2 GB to aggregate'
    """
    base = design_information(n_items, n_styles, hit_size, 1, overlap)
    per_hit = base.same_style_partners
    hits_per_item = max(1, math.ceil(partners / per_hit - 1e-9)) if per_hit > 0 else 1
    return design_information(n_items, n_styles, hit_size, hits_per_item, overlap)


def implied_styles(n_items: int, hit_size: float, hits_per_item: float, same_style_partners: float) -> int:
    """The number of equal styles for which a design shows each image `same_style_partners` of its own.

    The inverse of m's formula, for a run whose styles are unknown: with the mean number of images
    each image was put with by most workers as m, it says how finely the crowd split the catalogue,
    and `design_for` with it says what design would anchor every image.

    >>> implied_styles(10_000, 10, 10, 2.24)
    40
    """
    if same_style_partners <= 0:
        return n_items
    per_style = 1.0 + same_style_partners * (n_items - 1) / (hits_per_item * (hit_size - 1))
    return max(1, min(n_items, round(n_items / per_style)))


class ObservedDesign(NamedTuple):
    """A run's HIT design as its answers show it (means over the answers)."""

    hit_size: float  # images per answer
    overlap: float  # answers per HIT
    hits_per_item: float  # HITs per image


def observed_design(n_items: int, n_assignments: int, n_item_labels: int, n_tasks: int) -> ObservedDesign:
    """Images per answer, answers per HIT and HITs per image of a run with these counts.

    >>> observed_design(10_000, 70_000, 700_000, 10_000)
    ObservedDesign(hit_size=10.0, overlap=7.0, hits_per_item=10.0)
    """
    overlap = n_assignments / n_tasks
    return ObservedDesign(n_item_labels / n_assignments, overlap, n_item_labels / (n_items * overlap))
