"""Long-format labels -> pairwise labels as flat arrays with CSR indices by item and by worker.

An assignment (one worker answering one HIT of M images) gives M(M-1)/2 pairwise labels: +1 when
the worker put the two images in the same group, -1 otherwise. Items are distinct images, wherever
they appear; a worker who saw the same pair in two HITs contributes two labels. Everything is built
with array operations and numba counting sorts (no per-label Python loop), and every order comes
from sorting strings, so the arrays are identical across processes whatever PYTHONHASHSEED is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd
from numba import njit

if TYPE_CHECKING:
    from aggregation.consensus import PairGraph

__all__ = [
    "REQUIRED",
    "GroupUse",
    "PairLabels",
    "build_pairs",
    "check_labels",
    "coassociation",
    "group_use",
    "together_pairs",
    "together_partners",
    "unanchored",
]

REQUIRED = ("task", "worker", "item", "label")


@dataclass(frozen=True)
class PairLabels:
    """Pairwise labels, sorted by worker.

    `a < b` are item indices into `items`, `worker` indexes `workers`, `label` is +1.0 / -1.0.
    `item_ptr`/`item_lab`: the labels that involve item i are `item_lab[item_ptr[i]:item_ptr[i+1]]`,
    in worker order.
    `worker_ptr`: the labels of worker j are the slice `worker_ptr[j]:worker_ptr[j+1]`.
    `task`: the task (HIT) each label comes from, as a code in sorted task-id order.
    """

    items: np.ndarray
    workers: np.ndarray
    a: np.ndarray
    b: np.ndarray
    worker: np.ndarray
    label: np.ndarray
    item_ptr: np.ndarray
    item_lab: np.ndarray
    worker_ptr: np.ndarray
    task: np.ndarray
    n_assignments: int

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def n_workers(self) -> int:
        return len(self.workers)

    @property
    def n_labels(self) -> int:
        return len(self.a)


def _codes(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes in sorted-string order (deterministic, independent of PYTHONHASHSEED)."""
    codes, uniques = pd.factorize(values.astype(str), sort=True)
    return codes.astype(np.int64), np.asarray(uniques, dtype=object).astype(str)


@njit(cache=True)
def _labels_by_item(a: np.ndarray, b: np.ndarray, item_ptr: np.ndarray) -> np.ndarray:  # pragma: no cover
    """Every item's labels, in label order (= worker order: the item kernels sum per worker).

    A counting sort in one pass over the labels. It replaces an argsort of (item, label) keys over
    both ends, whose temporaries of two entries per label made the peak memory of
    `crowdclust aggregate` at 10,000 images.
    """
    cursor = item_ptr[:-1].copy()
    out = np.empty(2 * len(a), dtype=np.int64)
    for t in range(len(a)):
        out[cursor[a[t]]] = t
        cursor[a[t]] += 1
        out[cursor[b[t]]] = t
        cursor[b[t]] += 1
    return out


@njit(cache=True)
def code_starts(codes: np.ndarray, n_codes: int) -> np.ndarray:  # pragma: no cover - compiled
    """CSR pointers of `codes` in [0, n_codes): where each code's run starts in sorted order."""
    ptr = np.zeros(n_codes + 1, dtype=np.int64)
    for t in range(len(codes)):
        ptr[codes[t] + 1] += 1
    for i in range(n_codes):
        ptr[i + 1] += ptr[i]
    return ptr


@njit(cache=True)
def _place(codes: np.ndarray, ptr: np.ndarray, among: np.ndarray) -> np.ndarray:  # pragma: no cover
    """The entries of `among`, stably ordered by their code (a counting sort's second pass)."""
    cursor = ptr[:-1].copy()
    out = np.empty(len(among), dtype=np.int64)
    for k in range(len(among)):
        t = among[k]
        out[cursor[codes[t]]] = t
        cursor[codes[t]] += 1
    return out


@njit(cache=True)
def stable_order(codes: np.ndarray, starts: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """`np.argsort(codes, kind="stable")` by counting, given `starts = code_starts(codes, n)`.

    The caller passes the pointers because it usually keeps them (a CSR index of the codes).
    """
    return _place(codes, starts, np.arange(len(codes)))


@njit(cache=True)
def labels_by_pair(
    inverse: np.ndarray, pair_ptr: np.ndarray, worker: np.ndarray, label: np.ndarray
) -> tuple:  # pragma: no cover - compiled
    """Each label's worker (int32) and whether it says "same", grouped by pair, in label order.

    The same arrays as `worker[order].astype(np.int32)` and `label[order] > 0` with
    `order = stable_order(inverse, pair_ptr)`, placed in one pass without the order or an int64
    gather: at 100,000 images those were three temporaries of 31.5 M entries at the command's peak.
    """
    cursor = pair_ptr[:-1].copy()
    by_worker = np.empty(len(inverse), dtype=np.int32)
    yes = np.empty(len(inverse), dtype=np.bool_)
    for t in range(len(inverse)):
        k = cursor[inverse[t]]
        by_worker[k] = worker[t]
        yes[k] = label[t] > 0
        cursor[inverse[t]] = k + 1
    return by_worker, yes


@njit(cache=True)
def pair_index(a: np.ndarray, b: np.ndarray, n_items: int) -> tuple:  # pragma: no cover - compiled
    """The distinct item pairs, sorted, and each label's pair: `np.unique(a * n + b, return_inverse)`.

    Two counting sorts (by b, then stably by a) instead of a comparison sort of 64-bit keys, with
    fewer temporaries of one entry per label: at 10,000 images (3.15 M labels) 0.15-0.2 s against
    0.2-0.7 s.
    """
    order = _place(a, code_starts(a, n_items), stable_order(b, code_starts(b, n_items)))
    inverse = np.empty(len(a), dtype=np.int64)
    n_pairs = 0
    for k in range(len(order)):
        t = order[k]
        if k == 0 or a[t] != a[order[k - 1]] or b[t] != b[order[k - 1]]:
            n_pairs += 1
        inverse[t] = n_pairs - 1
    first_a = np.empty(n_pairs, dtype=np.int64)
    first_b = np.empty(n_pairs, dtype=np.int64)
    for t in range(len(a)):
        first_a[inverse[t]] = a[t]
        first_b[inverse[t]] = b[t]
    return first_a, first_b, inverse


def check_labels(labels: pd.DataFrame) -> None:
    """Raise ValueError when the long-format frame cannot be used."""
    missing = [c for c in REQUIRED if c not in labels.columns]
    if missing:
        raise ValueError(f"labels lack column(s): {', '.join(missing)}")
    if len(labels) == 0:
        raise ValueError("labels are empty")
    if labels[list(REQUIRED)].isna().any().any():
        raise ValueError("labels contain missing values")


def build_pairs(labels: pd.DataFrame) -> PairLabels:
    """Build the pairwise labels of a long-format frame (task, worker, item, label)."""
    check_labels(labels)
    item, items = _codes(labels["item"])
    worker, workers = _codes(labels["worker"])
    task, _ = _codes(labels["task"])
    group = labels["label"].to_numpy(dtype=np.int64)

    # One assignment = one (task, worker); sort its rows by item so pairs come out as a < b.
    assignment = task * len(workers) + worker
    order = np.lexsort((item, assignment))
    assignment, item, worker, group = assignment[order], item[order], worker[order], group[order]
    task = task[order]
    if np.any((assignment[1:] == assignment[:-1]) & (item[1:] == item[:-1])):
        raise ValueError("an item appears twice in one assignment")
    starts = np.flatnonzero(np.r_[True, assignment[1:] != assignment[:-1]])
    sizes = np.diff(np.r_[starts, len(assignment)])

    parts = []
    for size in np.unique(sizes[sizes >= 2]):
        first = starts[sizes == size]
        iu, ju = np.triu_indices(size, 1)
        left = (first[:, None] + iu[None, :]).ravel()
        right = (first[:, None] + ju[None, :]).ravel()
        parts.append((left, right))
    if not parts:
        raise ValueError("no assignment holds two or more items, so there are no pairwise labels")
    left = np.concatenate([p[0] for p in parts])
    right = np.concatenate([p[1] for p in parts])
    del parts

    # Sort by (worker, a, b) through one integer key: a stable argsort of it is lexsort's order, faster.
    n_items, n_workers = len(items), len(workers)
    by_worker = np.argsort((worker[left] * n_items + item[left]) * n_items + item[right], kind="stable")
    left, right = left[by_worker], right[by_worker]
    a = item[left].astype(np.int64)
    b = item[right].astype(np.int64)
    w = worker[left].astype(np.int64)
    lab = np.where(group[left] == group[right], 1.0, -1.0)
    task_of = task[left].astype(np.int32)
    del left, right, by_worker  # one entry per label each: not held while the item index is built

    counts = np.bincount(a, minlength=n_items) + np.bincount(b, minlength=n_items)
    item_ptr = np.r_[0, np.cumsum(counts)].astype(np.int64)
    item_lab = _labels_by_item(a, b, item_ptr)
    worker_ptr = np.r_[0, np.cumsum(np.bincount(w, minlength=n_workers))].astype(np.int64)
    return PairLabels(
        items=items,
        workers=workers,
        a=a,
        b=b,
        worker=w,
        label=lab,
        item_ptr=item_ptr,
        item_lab=item_lab,
        worker_ptr=worker_ptr,
        task=task_of,
        n_assignments=len(starts),
    )


def coassociation(pairs: PairLabels) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per observed item pair: (a, b, number of 'same' votes, number of votes), sorted by (a, b)."""
    a, b, inverse = pair_index(pairs.a, pairs.b, pairs.n_items)
    votes = np.bincount(inverse, minlength=len(a)).astype(np.float64)
    same = np.bincount(inverse, weights=(pairs.label > 0).astype(np.float64), minlength=len(a))
    return a, b, same, votes


def together_pairs(pairs: PairLabels, graph: PairGraph | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The item pairs (a < b) that a majority of the workers who saw both put in one group.

    `graph`: the labels' `PairGraph` (a fitted estimator's `pair_graph_`), which has the votes.
    """
    a, b, same, votes = coassociation(pairs) if graph is None else graph.coassociation()
    together = 2 * same > votes
    return a[together], b[together]


def together_partners(pairs: PairLabels, together: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Per item: how many other items a majority of the workers who saw both put in its group.

    `together`: `together_pairs(pairs)` when the caller has it already.
    """
    a, b = together_pairs(pairs) if together is None else together
    return np.bincount(np.r_[a, b], minlength=pairs.n_items)


def unanchored(pairs: PairLabels) -> int:
    """How many items no other item was put with by a majority of the workers who saw both.

    Such an item's labels only say which items it is *not* with: no clustering can place it from
    them (at 100,000 images with 10-image HITs most items are like that). Many of them mean the
    design needs more answers per item, whatever the model (`aggregation.design`).
    """
    return int((together_partners(pairs) == 0).sum())


class GroupUse(NamedTuple):
    """How many groups the answers used (`group_use`)."""

    most: int  # the most groups any answer used: the task interface's limit, as far as the export shows
    saturated: float  # share of answers that used that many groups for images of more clusters
    images: float  # mean images per answer


def group_use(labels: pd.DataFrame, clusters: pd.Series) -> GroupUse:
    """Whether workers ran out of groups: answers that used every group for images of more clusters.

    An answer whose images belong to more clusters than the most groups any answer used, and that
    used that many, probably put different styles together because it had to (a HIT of 35 images
    with 13 styles and 10 colours to paint them). The model treats such merges as noise, since
    they differ from HIT to HIT, but the labels are cleaner with HITs that show fewer styles than
    there are groups. The interface's limit is not in the export; the most groups any answer used
    stands for it, and the clusters (item -> cluster) say what the images held.

    >>> labels = pd.DataFrame({"task": ["t"] * 4 + ["u"] * 4, "worker": "w", "item": list("abcdabcd"),
    ...                        "label": [1, 2, 2, 3, 1, 1, 2, 2]})
    >>> group_use(labels, pd.Series([0, 1, 2, 3], index=list("abcd")))
    GroupUse(most=3, saturated=0.5, images=4.0)
    >>> group_use(labels, pd.Series([0, 1, 1, 2], index=list("abcd"))).saturated
    0.0
    """
    per_answer = (
        labels.assign(cluster=labels["item"].map(clusters).to_numpy())
        .groupby(["task", "worker"], sort=False)
        .agg(groups=("label", "nunique"), spanned=("cluster", "nunique"), images=("item", "size"))
    )
    most = int(per_answer["groups"].max())
    saturated = (per_answer["groups"] == most) & (per_answer["spanned"] > most)
    return GroupUse(most, float(saturated.mean()), float(per_answer["images"].mean()))
