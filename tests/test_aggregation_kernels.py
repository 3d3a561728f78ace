"""The numba kernels against a direct numpy transcription of the model's formulas.

The reference computes E[s_t] and E[s_t²] with the full 4-index sum over E[W_de W_fg]; each block
update must be a stationary point of the free energy at fixed δ (zero gradient in its block), and
the free energy after every sweep must not decrease.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from aggregation import kernels
from aggregation.pairs import build_pairs
from aggregation.synthetic import generate_crowd
from aggregation.variational import Priors, VariationalRun, initial_state


def _random_problem(seed: int, n_items: int = 12, n_workers: int = 4):
    rng = np.random.default_rng(seed)
    rows = []
    for h in range(10):
        hit = rng.choice(n_items, size=rng.integers(2, 7), replace=False)
        worker = f"w{rng.integers(n_workers)}"
        rows += [(f"t{h}", worker, f"i{item:02d}", int(rng.integers(1, 4))) for item in hit]
    pairs = build_pairs(pd.DataFrame(rows, columns=["task", "worker", "item", "label"]))
    priors = Priors(n_dims=3)
    state = initial_state(pairs, priors, rng.normal(size=(pairs.n_items, 3)))
    state.s = rng.uniform(0.05, 0.5, size=state.s.shape)
    state.wm = rng.normal(size=state.wm.shape)
    state.wv = rng.uniform(0.05, 0.5, size=state.wv.shape)
    state.tm = rng.normal(size=state.tm.shape)
    return pairs, priors, state


def _w_moments(wm_row, wv_row, n_dims):
    """E[W] and E[W_de W_fg] for a symmetric W with independent upper-triangle entries."""
    ud, ue = np.triu_indices(n_dims)
    uidx = np.zeros((n_dims, n_dims), dtype=int)
    uidx[ud, ue] = uidx[ue, ud] = np.arange(len(ud))
    mean = wm_row[uidx]
    second = np.einsum("de,fg->defg", mean, mean)
    for d in range(n_dims):
        for e in range(n_dims):
            for f in range(n_dims):
                for g in range(n_dims):
                    if uidx[d, e] == uidx[f, g]:
                        second[d, e, f, g] += wv_row[uidx[d, e]]
    return mean, second


def _moments(pairs, state):
    """Reference E[s_t], E[s_t²] for every label."""
    es, es2 = [], []
    n_dims = state.mu.shape[1]
    for t in range(pairs.n_labels):
        i, k, j = pairs.a[t], pairs.b[t], pairs.worker[t]
        mean, second = _w_moments(state.wm[j], state.wv[j], n_dims)
        ai = np.outer(state.mu[i], state.mu[i]) + np.diag(state.s[i])
        bk = np.outer(state.mu[k], state.mu[k]) + np.diag(state.s[k])
        ez = state.mu[i] @ mean @ state.mu[k]
        ez2 = np.einsum("df,eg,defg->", ai, bk, second)
        es.append(ez + state.tm[j])
        es2.append(ez2 + 2 * ez * state.tm[j] + state.tm[j] ** 2 + state.tv[j])
    return np.array(es), np.array(es2)


def _objective(pairs, priors, state, lam):
    """Free energy at fixed λ (δ terms that do not depend on q dropped)."""
    es, es2 = _moments(pairs, state)

    def kl(m, v, p):
        return 0.5 * np.sum((m**2 + v) / p - 1 - np.log(v / p))

    return (
        np.sum(0.5 * pairs.label * es - lam * es2)
        - kl(state.mu, state.s, priors.var_x)
        - kl(state.wm, state.wv, priors.var_w)
        - kl(state.tm, state.tv, priors.var_tau)
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_label_stats_match_reference(seed):
    pairs, priors, state = _random_problem(seed)
    run = VariationalRun(pairs, priors)
    run._deltas(state)
    es, es2 = _moments(pairs, state)
    delta = np.sqrt(es2)
    np.testing.assert_allclose(run.lam, np.tanh(delta / 2) / (4 * delta), rtol=1e-10)
    np.testing.assert_allclose(
        run.bound, -np.log1p(np.exp(-delta)) + 0.5 * (pairs.label * es - delta), rtol=1e-10
    )


def _gradient(fun, arrays, eps=1e-6):
    grads = []
    for arr in arrays:
        grad = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            old = arr[idx]
            arr[idx] = old + eps
            up = fun()
            arr[idx] = old - eps
            down = fun()
            arr[idx] = old
            grad[idx] = (up - down) / (2 * eps)
        grads.append(grad)
    return grads


@pytest.mark.parametrize("seed", [0, 1])
def test_item_update_is_exact(seed):
    """Updating one item leaves the objective at a stationary point in that item's q (its optimum)."""
    pairs, priors, state = _random_problem(seed)
    run = VariationalRun(pairs, priors)
    run._deltas(state)
    lay = run.layout
    for item in (0, pairs.n_items // 2, pairs.n_items - 1):
        before = _objective(pairs, priors, state, run.lam)
        kernels.update_items_serial(
            np.array([0, 1]), np.array([item]), pairs.item_ptr, lay.item_other, lay.item_worker,
            lay.item_label, run.lam_item, state.mu, state.s, state.wm, state.wv, state.tm, lay.uidx,
            priors.var_x,
        )  # fmt: skip
        assert _objective(pairs, priors, state, run.lam) >= before - 1e-9
        mu, s = state.mu[item : item + 1], state.s[item : item + 1]
        grads = _gradient(lambda: _objective(pairs, priors, state, run.lam), [mu, s])
        assert max(np.abs(g).max() for g in grads) < 1e-4


def _update_workers(pairs, priors, state):
    """Optimal δ for the current state, then one worker update; returns the run (λ inside)."""
    run = VariationalRun(pairs, priors)
    run._deltas(state)
    lay = run.layout
    kernels.update_workers_serial(
        pairs.worker_ptr, pairs.a, pairs.b, pairs.label, run.lam, state.mu, state.s, state.wm, state.wv,
        state.tm, state.tv, lay.ud, lay.ue, lay.uidx, priors.var_w, priors.var_tau,
    )  # fmt: skip
    return run


@pytest.mark.parametrize("seed", [0, 1])
def test_worker_update_is_stationary(seed):
    pairs, priors, state = _random_problem(seed)
    run = _update_workers(pairs, priors, state)
    # τ is updated after W (W is then stationary only up to the W-τ coupling), so τ must be stationary.
    (grad_tm, grad_tv) = _gradient(lambda: _objective(pairs, priors, state, run.lam), [state.tm, state.tv])
    assert np.abs(grad_tm).max() < 1e-4 and np.abs(grad_tv).max() < 1e-4


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_free_energy_never_decreases(seed):
    pairs, priors, state = _random_problem(seed, n_items=20, n_workers=5)
    run = VariationalRun(pairs, priors).run(state, tol=0.0, max_iter=30)
    history = np.array(run.history)
    assert np.all(np.diff(history) >= -1e-8 * np.abs(history[1:]))
    assert history[-1] > history[0]


def test_free_energy_monotone_on_a_crowd():
    crowd = generate_crowd(n_items=40, n_classes=4, seed=3)
    pairs = build_pairs(crowd.labels)
    priors = Priors()
    rng = np.random.default_rng(0)
    state = VariationalRun(pairs, priors).run(initial_state(pairs, priors, rng.normal(size=(40, 4))), 0.0, 25)
    history = np.array(state.history)
    assert np.all(np.diff(history) >= -1e-8 * np.abs(history[1:]))


def test_worker_update_is_exact_in_w():
    """With τ pinned at 0 by a tiny prior, the W update alone must land on the optimum of q(W)."""
    pairs, _, state = _random_problem(4)
    priors = Priors(n_dims=3, var_tau=1e-12)
    state.tm[:] = 0.0
    state.tv[:] = 1e-12
    run = _update_workers(pairs, priors, state)
    grads = _gradient(lambda: _objective(pairs, priors, state, run.lam), [state.wm, state.wv], eps=1e-7)
    assert max(np.abs(g).max() for g in grads) < 1e-3


def test_parallel_twins_match_serial_kernels():
    """The parallel kernels (used from N = 3,000 items / 1M labels) give exactly the serial results."""
    crowd = generate_crowd(n_items=60, n_classes=4, seed=1)
    pairs = build_pairs(crowd.labels)
    priors = Priors()
    results = []
    for parallel in (False, True):
        run = VariationalRun(pairs, priors)
        run.parallel_items = run.parallel_labels = parallel
        state = run.run(initial_state(pairs, priors, np.random.default_rng(0).normal(size=(60, 4))), 0.0, 5)
        results.append((state.mu, state.wm, state.tm, np.array(state.history)))
    for serial, parallel in zip(*results, strict=True):
        np.testing.assert_allclose(parallel, serial, rtol=1e-12, atol=1e-12)
