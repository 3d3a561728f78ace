"""A second camp in the crowd: workers who agree with one another on another grouping.

Why. The clusters follow the grouping that most of the reliable labels support, and a worker who
disagrees with them gets a reliability near 0 and no say. That is right for workers who answer at
random. It is silent, though, when a sizeable part of the crowd sorts the images by another
attribute (colour instead of style, say: ambiguous instructions or examples do that). If those
workers are the ones who understood the task, the answer is wrong with full confidence; if they
are not, the user still wants to know that a tenth of the money bought another grouping, and whom
to retrain or block. So the dissent is looked for and shown, with the grouping it holds.

How (`find_dissent`):

1. Dissenters are the workers whose reliability against the clusters (sensitivity + specificity - 1
   of their labels, `aggregation.splitting.reliability`) is under `DISSENT_RELIABILITY`.
2. Those of them whose labels agree with the other dissenters' on the item pairs they share
   (Cohen's kappa at least `PEER_AGREEMENT`) are clustered on their own, with the same model and
   seed: the grouping they would give. Workers who answer at random agree with nobody and stay out.
3. The camp is the workers among them whose reliability against that grouping reaches
   `DISSENT_RELIABILITY`.
4. A camp must agree with itself and not with the rest: the kappa of its workers' labels with one
   another's, on the pairs two of them labelled, must reach `CAMP_AGREEMENT` ("substantial"), and
   their kappa with the workers who agree with the clusters must stay under `MAX_ACROSS`
   ("slight"). The first tells a camp from noise: a refit on a handful of sparse workers always
   finds a grouping that fits them, but they do not agree with their peers. The second tells it
   from the noisier members of the same crowd, who agree with one another about as much as with
   everybody. Workers who all sort by colour do both perfectly (kappa 1.0 and 0.0 on the
   synthetic crowds). A crowd whose pairs are never labelled twice shows no camp: nothing
   measures its agreement.
5. It is reported when it holds at least `MIN_SHARE` of all labels.

The check is skipped when more than `MAX_DISSENT` of the labels dissent: the clusters are then
themselves in doubt (a design that shows images too few of their style, or a crowd of
spammers), the low confidences and the unanchored-images warning say so, and the refit would
cost as much as the fit. Otherwise it costs a fit on the camp candidates' labels (1.1 s next to a
4.7 s fit at 10,000 images, where a tenth of the workers sort by colour).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from aggregation.metrics import clustering_scores
from aggregation.pairs import PairLabels
from aggregation.splitting import reliability

__all__ = ["ADVICE", "Dissent", "agreement", "find_dissent"]

DISSENT_RELIABILITY = 0.5  # sensitivity + specificity - 1: under it a worker dissents
PEER_AGREEMENT = 0.1  # kappa with the other dissenters for a worker to be clustered with them
CAMP_AGREEMENT = 0.6  # kappa a camp's workers reach with one another ("substantial")
MAX_ACROSS = 0.2  # kappa with the workers who agree with the clusters a camp stays under ("slight")
MIN_COMPARISONS = 100  # comparisons (label with label, each way) needed to measure the agreement
MIN_SHARE = 0.05  # share of all labels a camp must hold to be reported
MAX_DISSENT = 0.5  # share of dissenting labels above which the clusters themselves are in doubt
# What a user reading a camp's line should do about it (the command and the run report say it).
ADVICE = (
    "The clusters follow the grouping most reliable labels support; if the other one is what you "
    "meant, check the instructions and the training tasks"
)


@dataclass(frozen=True)
class Dissent:
    """A camp of workers and the grouping they agree on.

    `workers`: the camp's worker ids (sorted); `label_share`: their share of all pairwise labels;
    `agreement`: Cohen's kappa of their labels with one another's on shared pairs; `across`: with
    those of the workers who agree with the clusters; `clusters`: item -> cluster of their grouping
    (0 the largest; the items the camp's candidates labelled); `similarity`: its adjusted Rand
    index with the model's clusters.
    """

    workers: tuple[str, ...]
    label_share: float
    agreement: float
    across: float
    clusters: pd.Series
    similarity: float

    @property
    def n_clusters(self) -> int:
        return int(self.clusters.max()) + 1

    def summary(self) -> str:
        """One line for a report: who, how much of the labels, and the grouping they agree on."""

        def two(value: float) -> str:
            return f"{round(value, 2) + 0.0:.2f}"  # + 0.0: no "-0.00"

        return (
            f"{len(self.workers)} workers ({self.label_share:.0%} of the labels) agree with one another "
            f"(kappa {two(self.agreement)}; {two(self.across)} with the rest) on another grouping: "
            f"{self.n_clusters} clusters of {self.clusters.size} items, adjusted Rand index "
            f"{two(self.similarity)} with these clusters"
        )


def agreement(pairs: PairLabels, mine: np.ndarray, theirs: np.ndarray) -> tuple[np.ndarray, float, int]:
    """Cohen's kappa of the labels of the `mine` workers with those of the `theirs` workers (masks).

    Every label of a `mine` worker and label of the same item pair by another `theirs` worker make
    one comparison (nobody is compared with themself; with `mine` = `theirs` it is the workers'
    agreement with one another). Returns each `mine` worker's kappa (NaN without comparisons or
    outside `mine`; chance from their share of "same" and their counterparts'), the pooled kappa
    of all comparisons (NaN without any) and the number of comparisons.

    >>> from aggregation.pairs import build_pairs
    >>> labels = pd.DataFrame({"task": ["t"] * 6, "worker": ["u"] * 3 + ["v"] * 3,
    ...                        "item": list("abcabc"), "label": [1, 1, 2, 1, 1, 2]})
    >>> both = np.array([True, True])
    >>> per_worker, pooled, comparisons = agreement(build_pairs(labels), both, both)
    >>> per_worker.tolist(), pooled, comparisons
    ([1.0, 1.0], 1.0, 6)
    """
    keep = (mine | theirs)[pairs.worker]
    worker = pairs.worker[keep].astype(np.int64)
    yes = (pairs.label[keep] > 0).astype(np.float64)
    counted = theirs[worker].astype(np.float64)
    key = pairs.a[keep].astype(np.int64) * pairs.n_items + pairs.b[keep]
    _, pair_of = np.unique(key, return_inverse=True)
    _, own_of = np.unique(key * pairs.n_workers + worker, return_inverse=True)

    def from_others(values: np.ndarray) -> np.ndarray:
        """Per label of a `mine` worker: the sum of `values` over the other workers' labels of its pair."""
        on_pair = np.bincount(pair_of, weights=values)[pair_of]
        return (on_pair - np.bincount(own_of, weights=values)[own_of]) * mine[worker]

    others, others_yes = from_others(counted), from_others(counted * yes)
    agree = np.where(yes > 0, others_yes, others - others_yes)

    def per_worker(values: np.ndarray) -> np.ndarray:
        return np.bincount(worker, weights=values, minlength=pairs.n_workers)

    compared, agreed = per_worker(others), per_worker(agree)
    mine_yes, their_yes = per_worker(yes * others), per_worker(others_yes)
    with np.errstate(invalid="ignore", divide="ignore"):
        kappa = _kappa(agreed / compared, mine_yes / compared, their_yes / compared)
    kappa[compared == 0.0] = np.nan
    total = float(compared.sum())
    if total == 0.0:
        return kappa, float("nan"), 0
    observed, p, q = (np.float64(values.sum() / total) for values in (agreed, mine_yes, their_yes))
    pooled = _kappa(observed, p, q)
    return kappa, float(pooled), round(total)


def _kappa(observed: np.ndarray, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Cohen's kappa from the observed agreement and each side's share of "same" (1 when chance is 1)."""
    chance = p * q + (1.0 - p) * (1.0 - q)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(chance < 1.0, (observed - chance) / (1.0 - chance), 1.0)


def find_dissent(
    labels: pd.DataFrame, pairs: PairLabels, clusters: pd.Series, random_state: int = 0
) -> Dissent | None:
    """The camp of workers who agree with one another on another grouping than `clusters`, if any.

    `labels` are the long-format labels the clusters were fitted on (task, worker, item, label),
    `pairs` their pairwise labels (`CrowdClustering.pairs_`), `clusters` the fitted Series item
    -> cluster. The camp's grouping is a `CrowdClustering` fit with the same `random_state`, so the
    result is as deterministic as the clusters.
    """
    from aggregation.estimators import CrowdClustering

    codes = clusters.reindex(pairs.items).to_numpy()
    if pd.isna(codes).any():
        raise ValueError("clusters must cover every item of pairs")
    n_labels = np.diff(pairs.worker_ptr).astype(np.float64)
    total = float(n_labels.sum())
    dissenting = reliability(pairs, codes.astype(np.int64)) < DISSENT_RELIABILITY
    share = float(n_labels[dissenting].sum()) / total if total else 0.0
    if share < MIN_SHARE or share > MAX_DISSENT:
        return None

    workers = np.asarray(pairs.workers)
    peers, _, _ = agreement(pairs, dissenting, dissenting)
    candidates = dissenting & (peers >= PEER_AGREEMENT)  # NaN (no shared pairs) is not
    if float(n_labels[candidates].sum()) / total < MIN_SHARE:
        return None
    second = CrowdClustering(random_state=random_state, embedding_max_items=0).fit(
        labels[labels["worker"].astype(str).isin(workers[candidates])]
    )
    sub = second.pairs_
    fits = reliability(sub, second.labels_.reindex(sub.items).to_numpy()) >= DISSENT_RELIABILITY
    camp = np.isin(workers, np.asarray(sub.workers)[fits])
    camp_share = float(n_labels[camp].sum()) / total
    if camp_share < MIN_SHARE:
        return None
    _, within, comparisons = agreement(pairs, camp, camp)
    _, across, _ = agreement(pairs, camp, ~dissenting)
    if comparisons < MIN_COMPARISONS or not within >= CAMP_AGREEMENT or not across < MAX_ACROSS:
        return None  # (NaN fails both: nothing measured the agreement)
    return Dissent(
        workers=tuple(sorted(workers[camp].astype(str))),
        label_share=camp_share,
        agreement=within,
        across=across,
        clusters=second.labels_,
        similarity=clustering_scores(second.labels_, clusters)["ari"],
    )
