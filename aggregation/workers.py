"""How each worker's answers agree with the clusters: the list a requester blocks spammers from.

The clusters are fitted with every worker weighed by two coins, P("same" | one cluster) and
P("different" | two clusters), so a worker who answers at random ends with no say in them, and
nothing else tells the requester who that was. `worker_quality` gives the coins per worker and
their *informedness*, sensitivity + specificity - 1: 1 for a worker who agrees with the clusters
on every pair, about 0 for one who groups at random (or by something else, such as colour), below 0
for one who groups against them; undefined (NaN) for a worker who saw no pair inside one cluster or
none across two. A worker with few labels has noisy coins; `labels` says how many.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from aggregation.consensus import coin_counts, coin_weights
from aggregation.pairs import PairLabels

__all__ = ["MIN_JUDGED", "answers_per_worker", "judged", "worker_quality"]

# Labels a worker needs of pairs the clusters put together, and of pairs they keep apart, for its
# informedness to say whether it agrees with the clusters better than chance. With fewer, a pair
# the clusters got wrong decides it: 30 images of 30 styles answered by careful workers only, the
# clusters one wrongly merged pair, and the 7 workers who had set that pair apart (their one
# "together" label, against 300-580 right "apart" ones) were counted "no better than chance". A
# careful worker (sensitivity 0.9) says "apart" to at most 1 of 5 right pairs once in 2,000.
MIN_JUDGED = 5


def worker_quality(pairs: PairLabels, clusters: np.ndarray) -> pd.DataFrame:
    """Per worker (indexed by worker id, in the pairs' order): labels, agreement with `clusters` (one
    id per item, the pairs' order), sensitivity, specificity, informedness, mean |llr| of a label
    under the two coins."""
    clusters = np.asarray(clusters, dtype=np.int64)
    counts = coin_counts(pairs.a, pairs.b, pairs.worker, pairs.label, clusters, pairs.n_workers)
    same_yes, same, across_no, across = counts.T
    w_yes, w_no = coin_weights(counts)
    n_labels = np.diff(pairs.worker_ptr)
    n_yes = same_yes + across - across_no
    per_label = np.maximum(n_labels, 1)
    # Undefined (NaN) for a worker who saw no pair of one cluster, or none of two: with one cluster
    # (or only singletons) nobody can be told from a random worker.
    sensitivity = np.where(same > 0, same_yes / np.maximum(same, 1), np.nan)
    specificity = np.where(across > 0, across_no / np.maximum(across, 1), np.nan)
    # One division of whole counts (exact below 2**53), so that a worker at exactly 0.2 is 0.2 and
    # not 0.19999999999999996 (1/5 + 1 - 1): summed, the command counted 662 workers below 0.2 where
    # the file, written to six decimals, listed 656 and 6 at 0.200000.
    both = np.where((same > 0) & (across > 0), same * across, np.nan)
    informedness = (same_yes * across - (across - across_no) * same) / both
    table = pd.DataFrame(
        {
            "labels": n_labels,
            "agreement": (same_yes + across_no) / per_label,
            "sensitivity": sensitivity,
            "specificity": specificity,
            "informedness": informedness,
            "mean_abs_llr": (n_yes * np.abs(w_yes) + (n_labels - n_yes) * np.abs(w_no)) / per_label,
        },
        index=pd.Index(pairs.workers, name="worker"),
    )
    return table


def answers_per_worker(pairs: PairLabels) -> np.ndarray:
    """How many answers (HITs) each worker gave that hold a pairwise label, in the pairs' order."""
    key = np.unique(pairs.task.astype(np.int64) * pairs.n_workers + pairs.worker)
    return np.bincount(key % pairs.n_workers, minlength=pairs.n_workers)


def judged(pairs: PairLabels, clusters: np.ndarray) -> np.ndarray:
    """Per worker (the pairs' order): whether it labelled at least `MIN_JUDGED` pairs the `clusters`
    put together and as many they keep apart, so that its informedness can be judged."""
    counts = coin_counts(
        pairs.a, pairs.b, pairs.worker, pairs.label, np.asarray(clusters, dtype=np.int64), pairs.n_workers
    )
    return (counts[:, 1] >= MIN_JUDGED) & (counts[:, 3] >= MIN_JUDGED)
