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
cost as much as the fit. Otherwise it costs a fit on the camp candidates' labels: 1.1 s next to a
5.0 s fit at 10,000 images, where a tenth of the workers sort by colour, and 24 s next to 97 s at
100,000. The agreements are one pass over the labels grouped by pair (`PairGraph`, kept by the
fit as `pair_graph_`), 0.08 s of the 1.1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from numba import njit

from aggregation.consensus import PairGraph
from aggregation.estimators import CrowdClustering
from aggregation.metrics import clustering_scores
from aggregation.splitting import reliability

if TYPE_CHECKING:
    from aggregation.estimators import _Base

__all__ = [
    "ADVICE",
    "Dissent",
    "agreement",
    "crowd_agreement",
    "find_dissent",
    "no_better_than_chance",
    "write_camp",
]

DISSENT_RELIABILITY = 0.5  # sensitivity + specificity - 1: under it a worker dissents
PEER_AGREEMENT = 0.1  # kappa with the other dissenters for a worker to be clustered with them
CAMP_AGREEMENT = 0.6  # kappa a camp's workers reach with one another ("substantial")
MAX_ACROSS = 0.2  # kappa with the workers who agree with the clusters a camp stays under ("slight")
MIN_COMPARISONS = 100  # comparisons (label with label, each way) needed to measure the agreement
MIN_SHARE = 0.05  # share of all labels a camp must hold to be reported
# Standard errors the crowd's pooled kappa must clear for its answers to tell from chance
# (`no_better_than_chance`).
CHANCE_Z = 3.0
# A working crowd's pooled kappa (the bench's crowds: 0.2-0.6): a chance verdict needs evidence that
# could have told a crowd this good from chance (`no_better_than_chance`).
WORKING_KAPPA = 0.2
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
            f"{len(self.workers):,} workers ({self.label_share:.0%} of the labels) agree with one another "
            f"(kappa {two(self.agreement)}; {two(self.across)} with the rest) on another grouping: "
            f"{self.n_clusters} clusters of {self.clusters.size:,} items, adjusted Rand index "
            f"{two(self.similarity)} with these clusters"
        )


@njit(cache=True)
def _agreement_sums(pair_ptr, pair_worker, pair_yes, mine, theirs, n_workers):  # pragma: no cover
    """Per `mine` worker, over the labels of other `theirs` workers on the same pairs: comparisons,
    agreements, own "same" weighted by comparisons, and the counterparts' "same".

    The labels come grouped by pair, each worker's labels of a pair next to one another (as
    `PairGraph` keeps them), so a worker's own labels of a pair are left out in one pass.
    """
    sums = np.zeros((4, n_workers))
    for p in range(pair_ptr.shape[0] - 1):
        lo, hi = pair_ptr[p], pair_ptr[p + 1]
        if hi - lo < 2:
            continue
        counted = 0
        counted_yes = 0
        any_mine = False
        for t in range(lo, hi):
            w = pair_worker[t]
            if theirs[w]:
                counted += 1
                counted_yes += pair_yes[t]
            any_mine = any_mine or mine[w]
        if not any_mine or counted == 0:
            continue
        t = lo
        while t < hi:
            w = pair_worker[t]
            end = t
            own, own_yes = 0, 0
            while end < hi and pair_worker[end] == w:
                if theirs[w]:
                    own += 1
                    own_yes += pair_yes[end]
                end += 1
            if mine[w]:
                others, others_yes = counted - own, counted_yes - own_yes
                for u in range(t, end):
                    sums[0, w] += others
                    sums[1, w] += others_yes if pair_yes[u] else others - others_yes
                    sums[2, w] += others if pair_yes[u] else 0
                    sums[3, w] += others_yes
            t = end
    return sums


def agreement(graph: PairGraph, mine: np.ndarray, theirs: np.ndarray) -> tuple[np.ndarray, float, int]:
    """Cohen's kappa of the labels of the `mine` workers with those of the `theirs` workers (masks).

    Every label of a `mine` worker and label of the same item pair by another `theirs` worker make
    one comparison (nobody is compared with themself; with `mine` = `theirs` it is the workers'
    agreement with one another). Returns each `mine` worker's kappa (NaN without comparisons or
    outside `mine`; chance from their share of "same" and their counterparts'), the pooled kappa
    of all comparisons (NaN without any) and the number of comparisons. One pass over the labels
    grouped by pair (`sklearn.metrics.cohen_kappa_score` would need every pair of labels spelled out).

    >>> from aggregation.consensus import PairGraph
    >>> from aggregation.pairs import build_pairs
    >>> labels = pd.DataFrame({"task": ["t"] * 6, "worker": ["u"] * 3 + ["v"] * 3,
    ...                        "item": list("abcabc"), "label": [1, 1, 2, 1, 1, 2]})
    >>> both = np.array([True, True])
    >>> per_worker, pooled, comparisons = agreement(PairGraph(build_pairs(labels)), both, both)
    >>> per_worker.tolist(), pooled, comparisons
    ([1.0, 1.0], 1.0, 6)
    """
    compared, agreed, mine_yes, their_yes = _agreement_sums(
        graph.pair_ptr, graph.pair_worker, graph.pair_yes, mine, theirs, len(mine)
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        kappa = _kappa(agreed / compared, mine_yes / compared, their_yes / compared)
    kappa[compared == 0.0] = np.nan
    total = float(compared.sum())
    if total == 0.0:
        return kappa, float("nan"), 0
    observed, p, q = (np.float64(values.sum() / total) for values in (agreed, mine_yes, their_yes))
    return kappa, float(_kappa(observed, p, q)), round(total)


def crowd_agreement(model: _Base) -> tuple[float, int, int]:
    """The kappa of every worker's labels with every other's in a fitted estimator's labels, the
    number of comparisons behind it, and the number of item pairs they compare (pairs labelled by
    two workers or more).

    Every comparison of `agreement` (a label and another worker's label of the same pair) counts
    once, and its chance agreement is that of the worker's own share of "same" against the labels
    it is compared with, so the kappa is the agreement beyond what each worker's own rate explains.
    Chance from the shares pooled over all workers, as `agreement`'s pooled kappa has it, took a
    worker whose labels are all "same" (a bot that puts every image in one group) for a worker who
    disagrees with everybody: two such bots answering each of 500 HITs beside 5 careful workers
    brought the kappa to -0.003, and the command warned that the workers agreed no more than chance
    and that the clusters were likely noise (ARI 0.97). Alone, a bot's labels agree with the others'
    exactly as often as chance does at its rate: it adds comparisons and no agreement.
    """
    everyone = np.ones(model.pairs_.n_workers, dtype=bool)
    graph = model.pair_graph_
    compared, agreed, mine_yes, their_yes = _agreement_sums(
        graph.pair_ptr, graph.pair_worker, graph.pair_yes, everyone, everyone, len(everyone)
    )
    total = float(compared.sum())
    if total == 0.0:
        return float("nan"), 0, 0
    # A pair's labels are grouped by worker (`PairGraph`): two workers when its first and last differ.
    ptr = graph.pair_ptr
    labelled = np.diff(ptr) > 0
    starts, ends = ptr[:-1][labelled], ptr[1:][labelled] - 1
    pairs = int((graph.pair_worker[starts] != graph.pair_worker[ends]).sum())
    seen = compared > 0.0
    p, q = mine_yes[seen] / compared[seen], their_yes[seen] / compared[seen]
    chance = float((compared[seen] * (p * q + (1.0 - p) * (1.0 - q))).sum() / total)
    observed = float(agreed.sum() / total)
    kappa = (observed - chance) / (1.0 - chance) if chance < 1.0 else 1.0
    return kappa, round(total), pairs


def no_better_than_chance(kappa: float, comparisons: int, pairs: int | None = None) -> bool:
    """Whether the workers' agreement with one another (pooled `kappa` over `comparisons`, from
    `agreement` with every worker on both sides) cannot be told from chance.

    A crowd of spammers only (or an interface that records groups at random) gave 19-24 clusters
    of 300 images, ARI 0, mean confidence 0.6, and no warning: the model finds clusters in any
    labels, and about half of the spammers seemed to agree with those clusters. What no model can
    fake is workers agreeing with *one another*. Under chance the pooled kappa is 0 with a
    standard error of at least 1/sqrt(comparisons) (exactly that for labels split evenly between
    "same" and "different", larger otherwise, and larger again since the comparisons share labels),
    so this asks the narrowest error bar: a crowd it calls chance has no agreement any error bar
    would show. 70% spammers (kappa 0.023-0.026 over ~760,000 comparisons, 20-22 standard errors;
    the clusters ARI 0.99-1.0) pass; all spammers (0.001 and -0.003: 0.7 and -2.4) do not, nor 90%
    on a seed whose clusters came out at ARI 0.05 (0.9), while 90% on another seed, ARI 0.87,
    clears it (4.6). Fewer than `MIN_COMPARISONS` comparisons say nothing either way.

    Nor do comparisons of a few `pairs` (the item pairs two workers or more labelled; None: as many
    as the comparisons), however many: every comparison of one pair repeats that pair's evidence,
    so the widest error bar is 1/sqrt(pairs), and unless a working crowd's kappa (`WORKING_KAPPA`)
    stands `CHANCE_Z` of those from 0 the evidence cannot tell the two apart. Three images in HITs of
    three, five workers (three pairs, 186 comparisons, kappa 0.129, clusters ARI 1.0) were called
    "likely noise"; a chance verdict now needs 225 such pairs.

    >>> no_better_than_chance(0.001, 750_000), no_better_than_chance(0.023, 750_000)
    (True, False)
    >>> no_better_than_chance(0.0, 50), no_better_than_chance(0.129, 186, pairs=3)
    (False, False)
    """
    pairs = comparisons if pairs is None else pairs
    can_tell = WORKING_KAPPA * math.sqrt(pairs) >= CHANCE_Z
    return comparisons >= MIN_COMPARISONS and can_tell and kappa * math.sqrt(comparisons) < CHANCE_Z


def _kappa(observed: np.ndarray, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Cohen's kappa from the observed agreement and each side's share of "same" (1 when chance is 1)."""
    chance = p * q + (1.0 - p) * (1.0 - q)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(chance < 1.0, (observed - chance) / (1.0 - chance), 1.0)


def find_dissent(model: _Base, labels: pd.DataFrame) -> Dissent | None:
    """The camp of workers who agree with one another on another grouping than `model`'s, if any.

    `model` is a fitted estimator (its `labels_`, `pairs_` and `pair_graph_` are read), `labels`
    the long-format labels it was fitted on (task, worker, item, label). The camp's grouping is a
    `CrowdClustering` fit with the model's `random_state`, so the result is as deterministic as
    the clusters.
    """
    pairs, clusters, graph = model.pairs_, model.labels_, model.pair_graph_
    n_labels = np.diff(pairs.worker_ptr).astype(np.float64)
    total = float(n_labels.sum())
    dissenting = reliability(pairs, clusters.to_numpy()) < DISSENT_RELIABILITY  # labels_ is in items order
    share = float(n_labels[dissenting].sum()) / total if total else 0.0
    if share < MIN_SHARE or share > MAX_DISSENT:
        return None

    workers = np.asarray(pairs.workers)
    peers, _, _ = agreement(graph, dissenting, dissenting)
    candidates = dissenting & (peers >= PEER_AGREEMENT)  # NaN (no shared pairs) is not
    if float(n_labels[candidates].sum()) / total < MIN_SHARE:
        return None
    second = CrowdClustering(random_state=model.random_state, embedding_max_items=0).fit(
        labels[labels["worker"].astype(str).isin(workers[candidates])]
    )
    sub = second.pairs_
    fits = reliability(sub, second.labels_.to_numpy()) >= DISSENT_RELIABILITY
    camp = np.isin(workers, np.asarray(sub.workers)[fits])
    camp_share = float(n_labels[camp].sum()) / total
    if camp_share < MIN_SHARE:
        return None
    _, within, comparisons = agreement(graph, camp, camp)
    _, across, _ = agreement(graph, camp, ~dissenting)
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


def write_camp(clusters: pd.Series, workers: Sequence[str], grouping: Path | None, ids: Path | None) -> None:
    """Write a camp's grouping (`item,cluster`, by cluster then item) and its worker ids, where asked.

    The one writer of these files: `crowdclust aggregate --dissent-output/--dissent-workers` and the
    run folder's `dissent.csv` / `dissent_workers.csv` are the same tables. Raises OSError as
    writing does.
    """
    if grouping is not None:
        grouping.parent.mkdir(parents=True, exist_ok=True)
        table = clusters.rename("cluster").rename_axis("item").reset_index()
        table.sort_values(["cluster", "item"]).to_csv(grouping, index=False)
    if ids is not None:
        ids.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"worker": list(workers)}).to_csv(ids, index=False)
