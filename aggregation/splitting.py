"""Cross-validated cuts: the last stage of the search splits a cluster that holds two classes.

Why a stage of its own. The search's score gives every worker two coins, one for pairs inside a
cluster and one for pairs across clusters. When most workers confuse two classes and only the
careful ones tell them apart (partial-clustering queries with error rates up to 40%), the merged
cluster scores far better than the truth under that score: inside it the confusing workers'
"same" answers across the two classes look right, and the careful workers' "different" answers
cost less than the Ewens prior charges for naming the two halves. So the search, whatever its
start, ends with the two classes in one cluster.

What the stage does. Every cluster gets a proposed two-way cut, and the cut is kept only when
answers that did not shape it confirm it:

1. The tasks (HITs) are dealt into `SPLIT_FOLDS` folds. For each fold, cuts are proposed from the
   labels of the other folds and tested on the labels of the fold: a score test of one log-odds
   shift of "same" across the cut, shared by all workers (each worker keeps its own base rate).
   Folds are by task, not by worker, because everything a task shows its workers (which images
   meet, how many groups they need) is shared by them; a cut fitted to one task's quirks finds
   nothing in the other tasks.
2. The test counts answers, not labels. One answer gives a label for every pair of its images, so
   a worker who sets a few images apart in one answer makes dozens of pairs "different" at once.
   The score's variance is therefore summed over answers (a sandwich variance clustered by
   answer), and the evidence is z^2 / 2 with z = score / sqrt(variance), signed. With independent
   labels that is the log-likelihood ratio of the shift (a score test); clustered by answer, it is
   that ratio deflated by how far the labels of one answer move together. Counted per label
   instead, a true class of a 35-image-HIT crowd read as two at 8 nats, 7 of them from one fold
   whose answer-level variance was 7 times the label-level one.
3. A cluster is cut at its proposal from all labels when the evidence of the five folds together
   (their scores and variances summed) exceeds `SPLIT_EVIDENCE` nats, and each half, on its own
   against the cut, exceeds `HALF_EVIDENCE` (a half that is a handful of misplaced images, not a
   group, does not).

Workers count as far as they agree with the rest of the clustering (sensitivity + specificity - 1
of their coins, at least 0), so a worker who groups by colour or answers at random cannot carry a
cut. The proposals start from `SPLIT_RESTARTS` seeded random halves per cluster: items move to the
half their labels pull them to, then alternate with each worker's "same" rates in and across the
cut. Each cluster gets two proposals from those starts:

- pairwise: the likeliest start under per-worker Beta-Binomial rates in and across the cut
  (integrated out, Ewens prior included);
- answers: every start's cut refined answer by answer (`aggregation.answer_cuts`: a worker sees
  an image on the wrong side at its own rate, so one misplaced image is one error, not one per
  pair), and the start whose cut makes the answers likeliest.

Both are proposed in every fold and tested on the held-out fold, and each cluster takes the
proposal with more held-out evidence (the thresholds below then apply to it). Neither alone is
right on every crowd: on queries of 5 images whose workers confuse two classes, the pairwise
likelihood rates cuts at ARI 0.55-0.8 with the truth above the true one, and only the answer
proposals bring the held-out test to the true cuts; on 35-image HITs, whose workers must put
several classes in one group, the answer proposals alone cut a true class in two (ARI 0.92 to 0.85
on one crowd of 16). The choice is made on the held-out labels, so a true class
has two chances to pass instead of one: at most twice the odds of a wrong cut, as if the
threshold were log 2 = 0.7 nats lower.

The proposal from all labels comes first: a cluster it cannot cut (no half holds together
better than across) is not tested, and its labels stay out of the folds (at 10,000 images
36 of 39 clusters, which halves the stage's time). Everything is linear in the labels inside
clusters, and every random choice comes from the search's seed. The five folds' proposals run in
`numba.get_num_threads()` threads; each is independent of the others, so the result does not
depend on the thread count.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
from numba import get_num_threads, njit

from aggregation.answer_cuts import cut_units, refine_by_answers
from aggregation.consensus import ALPHA, EPS, PairGraph, _pair_sums, _relabel, coin_counts
from aggregation.pairs import PairLabels

__all__ = ["evidence", "held_out_scores", "propose_cuts", "reliability", "split_clusters"]

SPLIT_FOLDS = 5  # folds of tasks: cuts proposed on four, checked on the fifth
SPLIT_RESTARTS = 16  # seeded random halves per cluster and proposal
SPLIT_ALTERNATIONS = 10  # rounds of worker rates and item moves per proposal
SPLIT_EVIDENCE = 5.0  # nats of held-out evidence a cut must earn (z > 3.2, a likelihood ratio of ~150)
HALF_EVIDENCE = 2.0  # nats each half alone against the cut must earn on held-out labels (z > 2)
MOVE_PASSES = 30


class _Labels(NamedTuple):
    """A subset of the pairwise labels, in the fields `PairGraph` reads."""

    n_items: int
    a: np.ndarray
    b: np.ndarray
    worker: np.ndarray
    label: np.ndarray
    task: np.ndarray


def _subset(pairs: PairLabels, keep: np.ndarray) -> _Labels:
    return _Labels(
        pairs.n_items, pairs.a[keep], pairs.b[keep], pairs.worker[keep], pairs.label[keep], pairs.task[keep]
    )


@njit(cache=True, nogil=True)
def _cut_counts(a, b, worker, label, side, n_workers):  # pragma: no cover - compiled
    """Per worker, over labels inside clusters: in one half (said "same", all), across the cut (same, all)."""
    out = np.zeros((n_workers, 4))
    for t in range(a.shape[0]):
        col = 2 if side[a[t]] != side[b[t]] else 0
        out[worker[t], col + 1] += 1.0
        if label[t] > 0:
            out[worker[t], col] += 1.0
    return out


@njit(cache=True, nogil=True)
def _side_moves(indptr, indices, data, labels, side, n_passes):  # pragma: no cover - compiled
    """Items move, in index order, to the half of their cluster that their pair weights pull them to."""
    n = labels.shape[0]
    for _ in range(n_passes):
        moved = 0
        for i in range(n):
            c = labels[i]
            pull = 0.0  # Σ to the True half minus Σ to the False half
            for p in range(indptr[i], indptr[i + 1]):
                j = indices[p]
                if labels[j] == c:
                    pull += data[p] if side[j] else -data[p]
            if (pull > EPS and not side[i]) or (pull < -EPS and side[i]):
                side[i] = not side[i]
                moved += 1
        if moved == 0:
            return


@njit(cache=True, nogil=True)
def _by_cluster(a, labels, k):  # pragma: no cover - compiled
    """The labels (by their first item's cluster) grouped per cluster: (start per cluster, order)."""
    start = np.zeros(k + 1, dtype=np.int64)
    for t in range(a.shape[0]):
        start[labels[a[t]] + 1] += 1
    for c in range(k):
        start[c + 1] += start[c]
    fill = start[:-1].copy()
    order = np.empty(a.shape[0], dtype=np.int64)
    for t in range(a.shape[0]):
        order[fill[labels[a[t]]]] = t
        fill[labels[a[t]]] += 1
    return start, order


@njit(cache=True, nogil=True)
def _half_sizes(labels, side, k):  # pragma: no cover - compiled
    """Per cluster: items on the True side, items in all."""
    n_true = np.zeros(k)
    n_all = np.zeros(k)
    for i in range(labels.shape[0]):
        n_all[labels[i]] += 1.0
        if side[i]:
            n_true[labels[i]] += 1.0
    return n_true, n_all


@njit(cache=True, nogil=True)
def _scratch(n_workers):  # pragma: no cover - compiled
    """Per-worker counts (True half, False half, across: yes, all), marks and the workers touched."""
    return np.zeros((n_workers, 6)), np.zeros(n_workers, dtype=np.bool_), np.empty(n_workers, dtype=np.int64)


@njit(cache=True, nogil=True)
def _gather(c, start, order, a, b, worker, label, side, weight, counts, mark, touched):  # pragma: no cover
    """Per-worker counts of cluster c's labels: True half, False half, across (yes, all).

    Workers of weight 0 are left out.
    """
    nt = 0
    for pos in range(start[c], start[c + 1]):
        t = order[pos]
        j = worker[t]
        if weight[j] <= 0.0:
            continue
        if not mark[j]:
            mark[j] = True
            touched[nt] = j
            nt += 1
        col = 4 if side[a[t]] != side[b[t]] else (0 if side[a[t]] else 2)
        counts[j, col + 1] += 1.0
        if label[t] > 0:
            counts[j, col] += 1.0
    return nt


@njit(cache=True, nogil=True)
def _release(nt, counts, mark, touched):  # pragma: no cover - compiled
    for q in range(nt):
        j = touched[q]
        counts[j, :] = 0.0
        mark[j] = False


@njit(cache=True, inline="always")
def _log_beta_binomial(yes, total, log_fact):  # pragma: no cover - compiled
    """log P(a given sequence of `total` answers with `yes` "same") under a uniform prior on the rate.

    = log(yes! (total - yes)! / (total + 1)!), from a table of log factorials (counts are whole).
    """
    y, n = int(yes), int(total)
    return log_fact[y] + log_fact[n - y] - log_fact[n + 1]


@njit(cache=True, nogil=True)
def _proposal_scores(
    a, b, worker, label, labels, side, weight, log_alpha, start, order, log_fact
):  # pragma: no cover
    """Per cluster, how likely its cut at `side` is (to choose among proposals; -inf: no usable cut).

    Σ_j w_j (log marginal likelihood of worker j's labels with one rate inside the halves and one
    across, minus with one rate for the whole cluster; uniform priors on the rates) + the Ewens log
    prior of the cut; -inf when a half is empty or does not hold together better than across the
    cut (same sum, one half against the across labels). `start`, `order`: `_by_cluster` of the
    labels; `log_fact[i]` = log i! up to the most labels of one worker plus one.
    """
    k = start.shape[0] - 1
    n_true, n_all = _half_sizes(labels, side, k)
    counts, mark, touched = _scratch(weight.shape[0])
    out = np.full(k, -np.inf)
    for c in range(k):
        n_false = n_all[c] - n_true[c]
        if n_true[c] < 0.5 or n_false < 0.5:
            continue
        nt = _gather(c, start, order, a, b, worker, label, side, weight, counts, mark, touched)
        total = log_alpha + math.lgamma(n_true[c]) + math.lgamma(n_false) - math.lgamma(n_all[c])
        half_t, half_f = 0.0, 0.0
        for q in range(nt):
            j = touched[q]
            y_t, n_t, y_f, n_f = counts[j, 0], counts[j, 1], counts[j, 2], counts[j, 3]
            y_x, n_x = counts[j, 4], counts[j, 5]
            across = _log_beta_binomial(y_x, n_x, log_fact)
            w = weight[j]
            both = _log_beta_binomial(y_t + y_f, n_t + n_f, log_fact)
            total += w * (both + across - _log_beta_binomial(y_t + y_f + y_x, n_t + n_f + n_x, log_fact))
            one_t = _log_beta_binomial(y_t, n_t, log_fact)
            half_t += w * (one_t + across - _log_beta_binomial(y_t + y_x, n_t + n_x, log_fact))
            one_f = _log_beta_binomial(y_f, n_f, log_fact)
            half_f += w * (one_f + across - _log_beta_binomial(y_f + y_x, n_f + n_x, log_fact))
        _release(nt, counts, mark, touched)
        if half_t > 0.0 and half_f > 0.0:
            out[c] = total
    return out


@njit(cache=True, nogil=True, inline="always")
def _score_term(counts_j, r, side_a, side_b, yes):  # pragma: no cover - compiled
    """One label's term of the score of a shift of "same" across the cut, at no shift.

    Relation "in" is both halves' inside pairs (r = 0), the True half's (r = 1) or the False half's
    (r = 2); "x" is the pairs across the cut. With the worker's rate profiled (its pooled rate p
    over both relations), the label adds (y - p) n_in / n for "x" and -(y - p) n_x / n for "in":
    negative when the worker says "same" less across the cut than inside. 0 for a label in neither
    relation, or when the worker has none of its labels in one of them (no contrast).
    """
    across = side_a != side_b
    if not across and ((r == 1 and not side_a) or (r == 2 and side_a)):
        return 0.0
    if r == 0:
        y_in, n_in = counts_j[0] + counts_j[2], counts_j[1] + counts_j[3]
    else:
        y_in, n_in = counts_j[2 * r - 2], counts_j[2 * r - 1]
    y_x, n_x = counts_j[4], counts_j[5]
    if n_in < 0.5 or n_x < 0.5:
        return 0.0
    n = n_in + n_x
    residual = (1.0 if yes else 0.0) - (y_in + y_x) / n
    return residual * n_in / n if across else -residual * n_x / n


@njit(cache=True, nogil=True)
def held_out_scores(a, b, worker, task, label, labels, side, weight, n_tasks):  # pragma: no cover
    """Per cluster: score and answer-clustered variance of one shared shift of "same" across the cut.

    Returns out[c, 0, r] = U (Σ of `_score_term` times the worker's weight) and out[c, 1, r] = V
    (Σ over answers of the square of the answer's share of U), for the cut (r = 0) and each half
    alone against the pairs across (r = 1: True half, r = 2: False half). The answers (worker,
    task) are the independent units, not the labels: one image put apart in an answer makes all
    its pairs of that answer "different" at once. Folds hold disjoint answers, so U and V add up
    over folds; `evidence` turns them into nats. Zero for a cluster `side` does not cut. The labels
    must come grouped by worker, as `PairLabels` keeps them.
    """
    k = 0
    for i in range(labels.shape[0]):
        k = max(k, labels[i] + 1)
    n_true, n_all = _half_sizes(labels, side, k)
    start, order = _by_cluster(a, labels, k)
    counts, mark, touched = _scratch(weight.shape[0])
    closed = np.zeros(weight.shape[0], dtype=np.bool_)
    share = np.zeros(n_tasks)  # this worker's U per task, i.e. per answer
    seen = np.zeros(n_tasks, dtype=np.bool_)
    tasks = np.empty(n_tasks, dtype=np.int64)
    out = np.zeros((k, 2, 3))
    for c in range(k):
        if n_true[c] < 0.5 or n_all[c] - n_true[c] < 0.5:
            continue
        nt = _gather(c, start, order, a, b, worker, label, side, weight, counts, mark, touched)
        for r in range(3):
            u, v, n_open, current = 0.0, 0.0, 0, -1
            for pos in range(start[c], start[c + 1] + 1):
                t = order[pos] if pos < start[c + 1] else -1
                j = worker[t] if t >= 0 else -1
                if t >= 0 and weight[j] <= 0.0:
                    continue
                if j != current:  # a worker's labels end: its answers' shares are complete
                    for m in range(n_open):
                        v += share[tasks[m]] * share[tasks[m]]
                        share[tasks[m]] = 0.0
                        seen[tasks[m]] = False
                    n_open = 0
                    if current >= 0:
                        closed[current] = True
                    if j >= 0 and closed[j]:
                        raise ValueError("held_out_scores needs the labels grouped by worker")
                    current = j
                if t < 0:
                    break
                term = _score_term(counts[j], r, side[a[t]], side[b[t]], label[t] > 0) * weight[j]
                if term == 0.0:
                    continue
                u += term
                if not seen[task[t]]:
                    seen[task[t]] = True
                    tasks[n_open] = task[t]
                    n_open += 1
                share[task[t]] += term
            out[c, 0, r], out[c, 1, r] = u, v
            for q in range(nt):
                closed[touched[q]] = False
        _release(nt, counts, mark, touched)
    return out


def evidence(scores: np.ndarray) -> np.ndarray:
    """Nats for each cut (and half) from `held_out_scores` summed over folds: ± z² / 2, z = U / √V.

    With independent labels z²/2 is the log-likelihood ratio of the shift (a score test); with V
    clustered by answer it is deflated by how far one answer's labels move together. The sign is +
    when "same" is rarer across the cut than inside (the cut holds).
    """
    u, v = scores[:, 0, :], scores[:, 1, :]
    z2 = np.divide(u * u, v, out=np.zeros_like(u), where=v > 0.0)
    return np.where(u < 0.0, 0.5 * z2, -0.5 * z2)


def reliability(pairs: PairLabels, labels: np.ndarray) -> np.ndarray:
    """Per worker: sensitivity + specificity - 1 of its coins against `labels`, at least 0.

    A worker who agrees with the clustering scores near 1; one who groups by a nuisance attribute
    (colour) or at random scores near 0, whatever the number of their labels.
    """
    coins = coin_counts(pairs.a, pairs.b, pairs.worker, pairs.label, labels, pairs.n_workers)
    sens = (coins[:, 0] + 1.0) / (coins[:, 1] + 2.0)
    spec = (coins[:, 2] + 1.0) / (coins[:, 3] + 2.0)
    return np.clip(sens + spec - 1.0, 0.0, 1.0)


def _refine_cut(
    labels_in: _Labels, graph: PairGraph, labels: np.ndarray, side: np.ndarray, weight: np.ndarray
) -> None:
    """Alternate each worker's "same" rates in a half and across the cut with item moves, in place.

    The item moves weigh each answer by its worker's log-likelihood ratio for "same half" against
    "across" (Dawid-Skene on the cut) times the worker's reliability.
    """
    for _ in range(SPLIT_ALTERNATIONS):
        counts = _cut_counts(labels_in.a, labels_in.b, labels_in.worker, labels_in.label, side, len(weight))
        p_in = (counts[:, 0] + 1.0) / (counts[:, 1] + 2.0)
        p_x = (counts[:, 2] + 1.0) / (counts[:, 3] + 2.0)
        w_yes = weight * np.log(p_in / p_x)
        w_no = weight * np.log((1.0 - p_in) / (1.0 - p_x))
        data = _pair_sums(
            graph.pair_ptr, graph.pair_worker, graph.pair_yes, w_yes, w_no, graph.place_ab, graph.place_ba
        )
        before = side.copy()
        _side_moves(graph.indptr, graph.indices, data, labels, side, MOVE_PASSES)
        if np.array_equal(before, side):
            return


def propose_cuts(
    pairs: PairLabels,
    keep: np.ndarray,
    labels: np.ndarray,
    weight: np.ndarray,
    starts: np.ndarray,
    alpha: float = ALPHA,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Every cluster's likeliest cut from the labels `keep` selects (a mask, or indices in order).

    The labels must be inside clusters. `starts` holds the random halves to start from, one row per
    start (a side per item). Two proposals per cluster: the pairwise one (the start whose cut
    `_proposal_scores` rates highest) and the answer one (each start's pairwise cut refined answer
    by answer, `aggregation.answer_cuts` with random moves from `seed`; the start whose cut makes
    the answers likeliest). Returns (pairwise score per cluster, -inf where no start gave a usable
    cut; sides, one row per proposal: pairwise, answers). A cluster without a usable answer cut
    keeps its pairwise one in both rows.
    """
    subset = _subset(pairs, keep)
    graph = PairGraph(subset)  # type: ignore[arg-type]
    counts = coin_counts(subset.a, subset.b, subset.worker, subset.label, labels, pairs.n_workers)
    rate = (counts[:, 0] + 0.75 * 10.0) / (counts[:, 1] + 10.0)  # each worker's usual "same" rate
    centred = _pair_sums(
        graph.pair_ptr, graph.pair_worker, graph.pair_yes, weight * (1.0 - rate), -weight * rate,
        graph.place_ab, graph.place_ba,
    )  # fmt: skip
    k = int(labels.max()) + 1
    log_alpha = math.log(alpha)
    start, order = _by_cluster(subset.a, labels, k)
    most = int(np.bincount(subset.worker, minlength=pairs.n_workers).max()) if len(subset.a) else 0
    log_fact = np.r_[0.0, np.cumsum(np.log(np.arange(1, most + 2, dtype=np.float64)))]

    def score_of(side: np.ndarray) -> np.ndarray:
        return _proposal_scores(
            subset.a, subset.b, subset.worker, subset.label, labels, side, weight, log_alpha, start, order,
            log_fact,
        )  # fmt: skip

    best = np.full(k, -np.inf)
    sides = np.zeros((2, pairs.n_items), dtype=np.bool_)
    cuts = []
    for first in starts:
        side = first.copy()
        _side_moves(graph.indptr, graph.indices, centred, labels, side, MOVE_PASSES)
        _refine_cut(subset, graph, labels, side, weight)
        score = score_of(side)
        better = score > best
        best = np.where(better, score, best)
        sides[0] = np.where(better[labels], side, sides[0])
        cuts.append((side, score))
    sides[1] = sides[0]
    usable = np.isfinite(best)
    if not usable.any():
        return best, sides
    # The starts' pairwise cuts, read again answer by answer where they are usable.
    on = usable[labels[subset.a]]
    units = cut_units(
        subset.a[on], subset.b[on], subset.worker[on], subset.task[on], subset.label[on] > 0, labels
    )
    # Every start, not only the pairwise best: the starts that lead to the true cut are often among
    # those the pairwise score ranks low (refining only its best 4 or 8 of the 16 left queries of
    # 5 images as they were without the answer proposals).
    best_fit = np.full(k, -np.inf)
    for side, score in cuts:
        active = np.isfinite(score)
        if not active.any():
            continue
        fit = refine_by_answers(*units, labels, side, active, pairs.n_workers, seed)
        better = np.isfinite(score_of(side)) & (fit > best_fit)
        best_fit = np.where(better, fit, best_fit)
        sides[1] = np.where(better[labels], side, sides[1])
    return best, sides


def split_clusters(
    pairs: PairLabels, labels: np.ndarray, alpha: float = ALPHA, random_state: int = 0
) -> np.ndarray:
    """Cut each cluster in two where held-out tasks confirm the cut (see the module docstring)."""
    labels = _relabel(np.asarray(labels, dtype=np.int64))
    inside = labels[pairs.a] == labels[pairs.b]
    if not inside.any():
        return labels
    rng = np.random.default_rng(random_state)
    n_tasks = int(pairs.task.max()) + 1
    task_fold = rng.permutation(n_tasks) % SPLIT_FOLDS
    weight = reliability(pairs, labels)
    # Random halves for the fold proposals and the final one, drawn up front in that order, so the
    # proposals can run in threads (the kernels release the GIL) with the same result.
    starts = rng.random((SPLIT_FOLDS + 1, SPLIT_RESTARTS, pairs.n_items)) < 0.5

    # The proposal from all labels first: a cluster it cannot cut (no half holds together better
    # than across) is not tested, and its labels are left out of the folds' proposals.
    score, sides = propose_cuts(pairs, inside, labels, weight, starts[SPLIT_FOLDS], alpha, random_state)
    tested = np.flatnonzero(inside & np.isfinite(score)[labels[pairs.a]])
    if len(tested) == 0:
        return labels
    fold = task_fold[pairs.task[tested]]

    def held_out(f: int) -> np.ndarray:
        out = fold == f
        _, fold_sides = propose_cuts(pairs, tested[~out], labels, weight, starts[f], alpha, random_state)
        check = tested[out]

        def scores(fold_side: np.ndarray) -> np.ndarray:
            return held_out_scores(
                pairs.a[check], pairs.b[check], pairs.worker[check], pairs.task[check], pairs.label[check],
                labels, fold_side, weight, n_tasks,
            )  # fmt: skip

        pairwise = scores(fold_sides[0])
        answers = pairwise if np.array_equal(fold_sides[0], fold_sides[1]) else scores(fold_sides[1])
        return np.stack([pairwise, answers])

    k = int(labels.max()) + 1
    held = np.zeros((2, k, 2, 3))
    with ThreadPoolExecutor(max_workers=max(1, get_num_threads())) as pool:
        for scores in pool.map(held_out, range(SPLIT_FOLDS)):  # summed in fold order
            held += scores
    # Per cluster, the proposal (pairwise or answers) whose cuts the held-out tasks confirm more.
    both = np.stack([evidence(proposal) for proposal in held])
    chosen = (both[1, :, 0] > both[0, :, 0]).astype(np.int64)
    nats = both[chosen, np.arange(k)]
    side = sides[chosen[labels], np.arange(pairs.n_items)]
    confirmed = nats[:, 0] > SPLIT_EVIDENCE
    confirmed &= (nats[:, 1] > HALF_EVIDENCE) & (nats[:, 2] > HALF_EVIDENCE) & np.isfinite(score)
    cut = confirmed[labels] & side
    return _relabel(np.where(cut, labels + k, labels)) if cut.any() else labels
