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
   labels of the other folds and scored on the labels of the fold: the log-likelihood ratio of one
   log-odds shift of "same" across the cut, shared by all workers (each worker keeps its own base
   rate). Folds are by task, not by worker, because everything a task shows its workers (which
   images meet, how many groups they need) is shared by them; a cut fitted to one task's quirks
   finds nothing in the other tasks.
2. A cluster is cut at its proposal from all labels when the held-out ratios sum to more than
   `SPLIT_EVIDENCE` nats, and each half, on its own against the cut, gains more than
   `HALF_EVIDENCE` on held-out labels (a half that is a handful of misplaced images, not a group,
   does not).

Workers count as far as they agree with the rest of the clustering (sensitivity + specificity - 1
of their coins, at least 0), so a worker who groups by colour or answers at random cannot carry a
cut. The proposals start from `SPLIT_RESTARTS` seeded random halves per cluster: items move to the
half their labels pull them to, then alternate with each worker's "same" rates in and across the
cut; the likeliest start (per-worker Beta-Binomial rates integrated out, Ewens prior included)
is the proposal. Everything is linear in the labels inside clusters, and every random choice
comes from the search's seed. The six proposals (five folds and the final one) run in
`numba.get_num_threads()` threads; each is independent of the others, so the result does not
depend on the thread count.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
from numba import get_num_threads, njit

from aggregation.consensus import ALPHA, EPS, PairGraph, _pair_sums, _relabel, coin_counts
from aggregation.pairs import PairLabels

__all__ = ["held_out_gains", "propose_cuts", "reliability", "split_clusters"]

SPLIT_FOLDS = 5  # folds of tasks: cuts proposed on four, checked on the fifth
SPLIT_RESTARTS = 16  # seeded random halves per cluster and proposal
SPLIT_ALTERNATIONS = 10  # rounds of worker rates and item moves per proposal
SPLIT_EVIDENCE = 5.0  # nats of held-out log-likelihood ratio a cut must earn (a Bayes factor of ~150)
HALF_EVIDENCE = 2.0  # nats each half alone against the cut must earn on held-out labels (Bayes factor ~7)
MOVE_PASSES = 30


class _Labels(NamedTuple):
    """A subset of the pairwise labels, in the fields `PairGraph` reads."""

    n_items: int
    a: np.ndarray
    b: np.ndarray
    worker: np.ndarray
    label: np.ndarray


def _subset(pairs: PairLabels, keep: np.ndarray) -> _Labels:
    return _Labels(pairs.n_items, pairs.a[keep], pairs.b[keep], pairs.worker[keep], pairs.label[keep])


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
def _gather(
    c, start, order, a, b, worker, label, side, weight, weighted, counts, mark, touched
):  # pragma: no cover
    """Per-worker counts of cluster c's labels: True half, False half, across (yes, all).

    Workers of weight 0 are left out; `weighted` counts each label as its worker's weight.
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
        unit = weight[j] if weighted else 1.0
        counts[j, col + 1] += unit
        if label[t] > 0:
            counts[j, col] += unit
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
        nt = _gather(c, start, order, a, b, worker, label, side, weight, False, counts, mark, touched)
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


@njit(cache=True, nogil=True)
def _shift_gain(y_in, n_in, y_x, n_x, nt):  # pragma: no cover - compiled
    """Signed log-likelihood ratio of one shared log-odds shift γ of "same" from relation "in" to "x".

    Worker q says "same" with logit β_q in "in" and β_q + γ in "x"; the β_q are profiled, γ = 0 is
    the null. Positive when γ < 0 (fewer "same" across), negative when γ > 0. Each worker gets half
    a pseudo-answer per relation at its own pooled rate, which keeps β finite and adds no contrast
    (pseudo-answers at a fixed 50% would add a shift wherever a relation has few labels).
    """
    beta = np.empty(nt)
    pooled = np.empty(nt)
    for q in range(nt):
        pooled[q] = (y_in[q] + y_x[q] + 0.5) / (n_in[q] + n_x[q] + 1.0)
        beta[q] = math.log(pooled[q] / (1.0 - pooled[q]))
    gamma = 0.0
    for _ in range(40):
        grad, hess = 0.0, 0.0
        for q in range(nt):
            a_in, m_in = y_in[q] + 0.5 * pooled[q], n_in[q] + 0.5
            a_x, m_x = y_x[q] + 0.5 * pooled[q], n_x[q] + 0.5
            bq = beta[q]
            for _ in range(20):  # Newton on β_q for this γ (concave)
                s_in = 1.0 / (1.0 + math.exp(-bq))
                s_x = 1.0 / (1.0 + math.exp(-(bq + gamma)))
                g = a_in - m_in * s_in + a_x - m_x * s_x
                h = m_in * s_in * (1.0 - s_in) + m_x * s_x * (1.0 - s_x)
                step = g / max(h, 1e-12)
                bq += step
                if abs(step) < 1e-9:
                    break
            beta[q] = bq
            s_in = 1.0 / (1.0 + math.exp(-bq))
            s_x = 1.0 / (1.0 + math.exp(-(bq + gamma)))
            h_in, h_x = m_in * s_in * (1.0 - s_in), m_x * s_x * (1.0 - s_x)
            grad += a_x - m_x * s_x
            hess += h_x - h_x * h_x / max(h_in + h_x, 1e-12)  # γ's curvature with β profiled
        step = min(max(grad / max(hess, 1e-12), -2.0), 2.0)
        gamma += step
        if abs(step) < 1e-7:
            break
    gain = 0.0
    for q in range(nt):
        a_in, m_in = y_in[q] + 0.5 * pooled[q], n_in[q] + 0.5
        a_x, m_x = y_x[q] + 0.5 * pooled[q], n_x[q] + 0.5
        bq = beta[q]
        gain -= a_in * math.log1p(math.exp(-bq)) + (m_in - a_in) * math.log1p(math.exp(bq))
        gain -= a_x * math.log1p(math.exp(-(bq + gamma))) + (m_x - a_x) * math.log1p(math.exp(bq + gamma))
        p0 = (a_in + a_x) / (m_in + m_x)
        gain -= (a_in + a_x) * math.log(p0) + (m_in + m_x - a_in - a_x) * math.log(1.0 - p0)
    gain = max(gain, 0.0)
    return gain if gamma < 0.0 else -gain


@njit(cache=True, nogil=True)
def held_out_gains(a, b, worker, label, labels, side, weight):  # pragma: no cover - compiled
    """Per cluster: `_shift_gain` of the cut, of the True half alone and of the False half alone.

    Input: labels inside clusters that did not shape `side`. Column 0 compares pairs inside either
    half with pairs across the cut; columns 1 and 2 one half's inside pairs with the pairs across.
    Zero for a cluster that `side` does not cut.
    """
    k = 0
    for i in range(labels.shape[0]):
        k = max(k, labels[i] + 1)
    n_true, n_all = _half_sizes(labels, side, k)
    start, order = _by_cluster(a, labels, k)
    counts, mark, touched = _scratch(weight.shape[0])
    n_workers = weight.shape[0]
    y_in, n_in, y_x, n_x = np.empty(n_workers), np.empty(n_workers), np.empty(n_workers), np.empty(n_workers)
    out = np.zeros((k, 3))
    for c in range(k):
        if n_true[c] < 0.5 or n_all[c] - n_true[c] < 0.5:
            continue
        nt = _gather(c, start, order, a, b, worker, label, side, weight, True, counts, mark, touched)
        for r in range(3):
            for q in range(nt):
                j = touched[q]
                if r == 0:
                    y_in[q], n_in[q] = counts[j, 0] + counts[j, 2], counts[j, 1] + counts[j, 3]
                else:
                    y_in[q], n_in[q] = counts[j, 2 * r - 2], counts[j, 2 * r - 1]
                y_x[q], n_x[q] = counts[j, 4], counts[j, 5]
            out[c, r] = _shift_gain(y_in, n_in, y_x, n_x, nt) if nt > 0 else 0.0
        _release(nt, counts, mark, touched)
    return out


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
) -> tuple[np.ndarray, np.ndarray]:
    """Every cluster's likeliest cut from the labels `keep` selects (all inside clusters).

    `starts` holds the random halves to start from, one row per start (a side per item). Returns
    (score per cluster, -inf where no start gave a usable cut; side per item).
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
    best = np.full(k, -np.inf)
    best_side = np.zeros(pairs.n_items, dtype=np.bool_)
    log_alpha = math.log(alpha)
    start, order = _by_cluster(subset.a, labels, k)
    most = int(np.bincount(subset.worker, minlength=pairs.n_workers).max()) if len(subset.a) else 0
    log_fact = np.r_[0.0, np.cumsum(np.log(np.arange(1, most + 2, dtype=np.float64)))]
    for first in starts:
        side = first.copy()
        _side_moves(graph.indptr, graph.indices, centred, labels, side, MOVE_PASSES)
        _refine_cut(subset, graph, labels, side, weight)
        score = _proposal_scores(
            subset.a, subset.b, subset.worker, subset.label, labels, side, weight, log_alpha, start, order,
            log_fact,
        )  # fmt: skip
        better = score > best
        best = np.where(better, score, best)
        best_side = np.where(better[labels], side, best_side)
    return best, best_side


def split_clusters(
    pairs: PairLabels, labels: np.ndarray, alpha: float = ALPHA, random_state: int = 0
) -> np.ndarray:
    """Cut each cluster in two where held-out tasks confirm the cut (see the module docstring)."""
    labels = _relabel(np.asarray(labels, dtype=np.int64))
    inside = labels[pairs.a] == labels[pairs.b]
    if not inside.any():
        return labels
    rng = np.random.default_rng(random_state)
    fold = (rng.permutation(int(pairs.task.max()) + 1) % SPLIT_FOLDS)[pairs.task]
    weight = reliability(pairs, labels)
    # Random halves for the fold proposals and the final one, drawn up front in that order, so the
    # proposals can run in threads (the kernels release the GIL) with the same result.
    starts = rng.random((SPLIT_FOLDS + 1, SPLIT_RESTARTS, pairs.n_items)) < 0.5

    def held_out(f: int) -> np.ndarray:
        out = fold == f
        _, side = propose_cuts(pairs, inside & ~out, labels, weight, starts[f], alpha)
        check = _subset(pairs, inside & out)
        return held_out_gains(check.a, check.b, check.worker, check.label, labels, side, weight)

    k = int(labels.max()) + 1
    held = np.zeros((k, 3))
    with ThreadPoolExecutor(max_workers=max(1, get_num_threads())) as pool:
        final = pool.submit(propose_cuts, pairs, inside, labels, weight, starts[SPLIT_FOLDS], alpha)
        for gains in pool.map(held_out, range(SPLIT_FOLDS)):  # summed in fold order
            held += gains
        score, side = final.result()
    confirmed = held[:, 0] > SPLIT_EVIDENCE
    confirmed &= (held[:, 1] > HALF_EVIDENCE) & (held[:, 2] > HALF_EVIDENCE) & np.isfinite(score)
    cut = confirmed[labels] & side
    return _relabel(np.where(cut, labels + k, labels)) if cut.any() else labels
