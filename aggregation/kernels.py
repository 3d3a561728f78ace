"""Numba kernels of the variational crowd-clustering model (Gomes et al., NIPS 2011).

Notation: label t = (a, b, worker j, l = ±1), score s_t = x_aᵀ W_j x_b + τ_j.
q(x_i) = N(mu[i], diag(s[i])); q(W_j) is independent Gaussians on the P = D(D+1)/2 upper-triangle
entries (means wm[j, u], variances wv[j, u]); q(τ_j) = N(tm[j], tv[j]). Entry u is the unordered
pair (ud[u], ue[u]) and `uidx[d, e]` maps back. Every kernel reads W through `uidx`, so nothing is
allocated per label; scratch space is allocated once per item or per worker.

All kernels take float64 / int64 arrays only, so each compiles exactly one signature, and all use
`cache=True` so that a second process loads machine code instead of recompiling.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = [
    "greedy_colors",
    "label_stats_parallel",
    "label_stats_serial",
    "update_items_parallel",
    "update_items_serial",
    "update_workers_parallel",
    "update_workers_serial",
]


@njit(cache=True)
def _solve_spd(mat: np.ndarray, rhs: np.ndarray, out: np.ndarray, low: np.ndarray) -> None:
    """Solve mat @ out = rhs for a small symmetric positive-definite matrix (Cholesky in place)."""
    n = mat.shape[0]
    for i in range(n):
        for k in range(i + 1):
            acc = mat[i, k]
            for m in range(k):
                acc -= low[i, m] * low[k, m]
            if i == k:
                low[i, i] = np.sqrt(max(acc, 1e-300))
            else:
                low[i, k] = acc / low[k, k]
    for i in range(n):
        acc = rhs[i]
        for m in range(i):
            acc -= low[i, m] * out[m]
        out[i] = acc / low[i, i]
    for i in range(n - 1, -1, -1):
        acc = out[i]
        for m in range(i + 1, n):
            acc -= low[m, i] * out[m]
        out[i] = acc / low[i, i]


@njit(cache=True, inline="always")
def _gaussian_optimum(prec, rhs, out, low, mean, var):  # pragma: no cover - compiled
    """Mean-field optimum of a block with quadratic bound: mean solves prec·mean = rhs, var = 1/diag.

    `prec` arrives with its upper triangle filled; the lower one is mirrored here.
    """
    n = prec.shape[0]
    for r in range(n):
        for c in range(r):
            prec[r, c] = prec[c, r]
    _solve_spd(prec, rhs, out, low)
    for r in range(n):
        mean[r] = out[r]
        var[r] = 1.0 / prec[r, r]


@njit(cache=True, inline="always")
def _label_stat(
    t, a, b, worker, label, mu, s, wmat, vmat, tm, tv, pos_a, pos_b, lam_out, lam_item, bound_out
):  # pragma: no cover - compiled
    """Optimal δ_t for label t; store λ(δ_t) and the label's term of the bound.

    With δ_t² = E[s_t²] the quadratic part of the Jaakkola-Jordan bound vanishes, so the term is
    log σ(δ_t) + (l_t E[s_t] - δ_t) / 2. With A = E[x_a x_aᵀ], B = E[x_b x_bᵀ] and W's entries
    independent (mean M = `wmat[j]`, variances V = `vmat[j]`, both dense symmetric D×D):
    E[(x_aᵀ W x_b)²] = tr(A M B M) + Σ_de V_de (A_dd B_ee + [d≠e] A_de B_de), and tr(A M B M)
    splits into (μ_aᵀ M μ_b)² + Σ s_a (M μ_b)² + Σ s_b (M μ_a)² + Σ_de s_ad M_de² s_be.
    λ_t is also scattered to the label's two places in item order (`pos_a`, `pos_b`), so the item
    kernel reads it sequentially instead of gathering from a 25 MB array at N = 10,000.
    """
    n_dims = mu.shape[1]
    i, k, j = a[t], b[t], worker[t]
    ez = 0.0
    rest = 0.0
    for d in range(n_dims):
        p = 0.0
        q = 0.0
        sid = s[i, d]
        add = mu[i, d] * mu[i, d] + sid
        hd = mu[i, d] * mu[k, d]
        for e in range(n_dims):
            m = wmat[j, d, e]
            v = vmat[j, d, e]
            p += m * mu[k, e]
            q += m * mu[i, e]
            bee = mu[k, e] * mu[k, e] + s[k, e]
            rest += sid * m * m * s[k, e] + v * add * bee
            if e != d:
                rest += v * hd * mu[i, e] * mu[k, e]
        ez += mu[i, d] * p
        rest += sid * p * p + s[k, d] * q * q
    es = ez + tm[j]
    es2 = ez * ez + rest + 2.0 * ez * tm[j] + tm[j] * tm[j] + tv[j]
    delta = np.sqrt(max(es2, 0.0))
    # One exp serves both: e = exp(-δ), log σ(δ) = -log1p(e), tanh(δ/2) = (1 - e) / (1 + e).
    ex = np.exp(-delta)
    lam_t = 0.125 if delta < 1e-6 else (1.0 - ex) / ((1.0 + ex) * 4.0 * delta)
    lam_out[t] = lam_t
    lam_item[pos_a[t]] = lam_t
    lam_item[pos_b[t]] = lam_t
    bound_out[t] = -np.log1p(ex) + 0.5 * (label[t] * es - delta)


# Each kernel comes as a parallel and a serial twin. They cannot be one function compiled twice:
# numba's on-disk cache keys an entry by signature, not by the `parallel` flag, so the twins would
# load each other's machine code.


@njit(cache=True, parallel=True)
def label_stats_parallel(
    a, b, worker, label, mu, s, wmat, vmat, tm, tv, pos_a, pos_b, lam_out, lam_item, bound_out
):  # pragma: no cover - compiled
    """`_label_stat` for every label, in parallel (labels are independent)."""
    for t in prange(a.shape[0]):
        _label_stat(
            t, a, b, worker, label, mu, s, wmat, vmat, tm, tv, pos_a, pos_b, lam_out, lam_item, bound_out
        )


@njit(cache=True)
def label_stats_serial(
    a, b, worker, label, mu, s, wmat, vmat, tm, tv, pos_a, pos_b, lam_out, lam_item, bound_out
):  # pragma: no cover - compiled
    """`_label_stat` for every label, in one thread (small problems: no thread start-up, no contention)."""
    for t in range(a.shape[0]):
        _label_stat(
            t, a, b, worker, label, mu, s, wmat, vmat, tm, tv, pos_a, pos_b, lam_out, lam_item, bound_out
        )


@njit(cache=True, inline="always")
def _update_item(
    i, item_ptr, other, worker, label, lam, mu, s, wm, wv, tm, uidx, prior_x,
    prec, rhs, bs, cs, mloc, mb, low, out,
):  # fmt: skip
    """Exact coordinate update of q(x_i), given everything else (scratch arrays passed in).

    Precision: I/σ_x² + 2 Σ_t λ_t E[W x_b x_bᵀ W]; linear term Σ_t (l_t/2 - 2 λ_t E[τ]) E[W] μ_b; the
    means solve the system, the variances are 1/diag. An item's labels come in worker order, so the
    per-label work only accumulates Σ λ_t E[x_b x_bᵀ] and Σ coef_t μ_b; the D×D products with E[W]
    happen once per worker.
    """
    n_dims = mu.shape[1]
    prec[:] = 0.0
    rhs[:] = 0.0
    bs[:] = 0.0
    cs[:] = 0.0
    for d in range(n_dims):
        prec[d, d] = 1.0 / prior_x
    first = item_ptr[i]
    last = item_ptr[i + 1]
    for pp in range(first, last):
        k = other[pp]
        j = worker[pp]
        lt = lam[pp]
        coef = 0.5 * label[pp] - 2.0 * lt * tm[j]
        for d in range(n_dims):
            cs[d] += coef * mu[k, d]
            for e in range(d, n_dims):
                bs[d, e] += lt * mu[k, d] * mu[k, e]
            bs[d, d] += lt * s[k, d]
        if pp + 1 < last and worker[pp + 1] == j:
            continue
        # Flush worker j: prec += 2 (E[W] bs E[W] + Cov_W(bs)), rhs += E[W] cs.
        for d in range(n_dims):
            for e in range(n_dims):
                mloc[d, e] = wm[j, uidx[d, e]]
            for e in range(d + 1, n_dims):
                bs[e, d] = bs[d, e]
        for d in range(n_dims):
            acc = 0.0
            for e in range(n_dims):
                acc += mloc[d, e] * cs[e]
                tmp = 0.0
                for h in range(n_dims):
                    tmp += mloc[d, h] * bs[h, e]
                mb[d, e] = tmp
            rhs[d] += acc
        for d in range(n_dims):
            for f in range(d, n_dims):
                g = 0.0
                for e in range(n_dims):
                    g += mb[d, e] * mloc[e, f]
                if d == f:
                    for e in range(n_dims):
                        g += wv[j, uidx[d, e]] * bs[e, e]
                else:
                    g += wv[j, uidx[d, f]] * bs[d, f]
                prec[d, f] += 2.0 * g
        bs[:] = 0.0
        cs[:] = 0.0
    _gaussian_optimum(prec, rhs, out, low, mu[i], s[i])


@njit(cache=True, inline="always")
def _scratch(n_dims):  # pragma: no cover - compiled inline
    """Scratch arrays of one item update."""
    return (
        np.zeros((n_dims, n_dims)), np.zeros(n_dims), np.zeros((n_dims, n_dims)), np.zeros(n_dims),
        np.empty((n_dims, n_dims)), np.empty((n_dims, n_dims)), np.empty((n_dims, n_dims)), np.empty(n_dims),
    )  # fmt: skip


@njit(cache=True, parallel=True)
def update_items_parallel(
    color_ptr, color_items, item_ptr, other, worker, label, lam, mu, s, wm, wv, tm, uidx, prior_x
):  # pragma: no cover - compiled
    """Update every q(x_i), colour class by colour class, items of one colour in parallel.

    Items of one colour share no label, so their updates are independent, while the sweep as a whole
    stays a sequence of exact coordinate-ascent steps (the free energy cannot decrease). Each colour
    ends with a barrier, which costs more than it gains on small problems: see `update_items_serial`.
    """
    n_dims = mu.shape[1]
    for c in range(color_ptr.shape[0] - 1):
        for pos in prange(color_ptr[c], color_ptr[c + 1]):
            prec, rhs, bs, cs, mloc, mb, low, out = _scratch(n_dims)
            _update_item(
                color_items[pos], item_ptr, other, worker, label, lam, mu, s, wm, wv, tm, uidx, prior_x,
                prec, rhs, bs, cs, mloc, mb, low, out,
            )  # fmt: skip


@njit(cache=True)
def update_items_serial(
    color_ptr, color_items, item_ptr, other, worker, label, lam, mu, s, wm, wv, tm, uidx, prior_x
):  # pragma: no cover - compiled
    """Update every q(x_i) one after the other in colour order (same result as the parallel kernel)."""
    n_dims = mu.shape[1]
    prec, rhs, bs, cs, mloc, mb, low, out = _scratch(n_dims)
    for pos in range(color_items.shape[0]):
        _update_item(
            color_items[pos], item_ptr, other, worker, label, lam, mu, s, wm, wv, tm, uidx, prior_x,
            prec, rhs, bs, cs, mloc, mb, low, out,
        )  # fmt: skip


@njit(cache=True, inline="always")
def _update_worker(
    j, worker_ptr, a, b, label, lam, mu, s, wm, wv, tm, tv, ud, ue, uidx, prior_w, prior_tau
):  # pragma: no cover - compiled
    """Exact coordinate update of q(W_j) then q(τ_j) for every worker (workers are independent).

    x_aᵀ W x_b = Σ_u W_u φ_u with φ_u = x_ad x_be + x_ae x_bd (d ≠ e) or x_ad x_bd, so the bound is
    quadratic in the entries: precision I/σ_w² + 2 Σ_t λ_t E[φ φᵀ], linear Σ_t (l_t/2 - 2λ_t E[τ]) E[φ].
    E[φ_u φ_v] = Σ E[x_a x_aᵀ]_df E[x_b x_bᵀ]_eg over the orderings of u = (d, e) and v = (f, g).
    A worker's labels are sorted by (a, b), so the sums over b for one a are accumulated first and
    the P×P work is done once per (worker, a) run instead of once per label.
    """
    n_dims = mu.shape[1]
    n_par = ud.shape[0]
    start, stop = worker_ptr[j], worker_ptr[j + 1]
    if stop == start:
        return
    prec = np.zeros((n_par, n_par))
    rhs = np.zeros(n_par)
    low = np.empty((n_par, n_par))
    out = np.empty(n_par)
    am = np.empty((n_dims, n_dims))
    bs = np.zeros((n_dims, n_dims))
    cs = np.zeros(n_dims)
    for u in range(n_par):
        prec[u, u] = 1.0 / prior_w
    for t in range(start, stop):
        i, k = a[t], b[t]
        lt = lam[t]
        coef = 0.5 * label[t] - 2.0 * lt * tm[j]
        for d in range(n_dims):
            cs[d] += coef * mu[k, d]
            for e in range(n_dims):
                bs[d, e] += lt * mu[k, d] * mu[k, e]
            bs[d, d] += lt * s[k, d]
        if t + 1 < stop and a[t + 1] == i:
            continue
        for d in range(n_dims):
            for e in range(n_dims):
                am[d, e] = mu[i, d] * mu[i, e]
            am[d, d] += s[i, d]
        for u in range(n_par):
            d, e = ud[u], ue[u]
            rhs[u] += mu[i, d] * cs[e] + (mu[i, e] * cs[d] if d != e else 0.0)
            nu = 1 if d == e else 2
            for v in range(u, n_par):
                nv = 1 if ud[v] == ue[v] else 2
                val = 0.0
                for ku in range(nu):
                    dd = ud[u] if ku == 0 else ue[u]
                    ee = ue[u] if ku == 0 else ud[u]
                    for kv in range(nv):
                        ff = ud[v] if kv == 0 else ue[v]
                        gg = ue[v] if kv == 0 else ud[v]
                        val += am[dd, ff] * bs[ee, gg]
                prec[u, v] += 2.0 * val
        bs[:] = 0.0
        cs[:] = 0.0
    _gaussian_optimum(prec, rhs, out, low, wm[j], wv[j])
    # τ_j given the new W_j: precision 1/σ_τ² + 2 Σ λ_t, mean Σ (l_t/2 - 2 λ_t E[z_t]) / precision,
    # with Σ_b λ_t E[z_t] = μ_aᵀ E[W] (Σ_b λ_t μ_b) accumulated per (worker, a) run.
    tau_prec = 1.0 / prior_tau
    tau_lin = 0.0
    for t in range(start, stop):
        i, k = a[t], b[t]
        tau_prec += 2.0 * lam[t]
        tau_lin += 0.5 * label[t]
        for d in range(n_dims):
            cs[d] += lam[t] * mu[k, d]
        if t + 1 < stop and a[t + 1] == i:
            continue
        ez = 0.0
        for d in range(n_dims):
            for e in range(n_dims):
                ez += mu[i, d] * wm[j, uidx[d, e]] * cs[e]
        tau_lin -= 2.0 * ez
        cs[:] = 0.0
    tm[j] = tau_lin / tau_prec
    tv[j] = 1.0 / tau_prec


@njit(cache=True, parallel=True)
def update_workers_parallel(
    worker_ptr, a, b, label, lam, mu, s, wm, wv, tm, tv, ud, ue, uidx, prior_w, prior_tau
):  # pragma: no cover - compiled
    """Update every worker in parallel (given the items, workers do not interact)."""
    for j in prange(worker_ptr.shape[0] - 1):
        _update_worker(
            j, worker_ptr, a, b, label, lam, mu, s, wm, wv, tm, tv, ud, ue, uidx, prior_w, prior_tau
        )


@njit(cache=True)
def update_workers_serial(
    worker_ptr, a, b, label, lam, mu, s, wm, wv, tm, tv, ud, ue, uidx, prior_w, prior_tau
):  # pragma: no cover - compiled
    """Update every worker in one thread (small problems)."""
    for j in range(worker_ptr.shape[0] - 1):
        _update_worker(
            j, worker_ptr, a, b, label, lam, mu, s, wm, wv, tm, tv, ud, ue, uidx, prior_w, prior_tau
        )


@njit(cache=True)
def greedy_colors(item_ptr, item_lab, a, b):  # pragma: no cover - compiled
    """Greedy colouring of the item graph (items joined by a label), in item order: deterministic."""
    n = item_ptr.shape[0] - 1
    color = np.full(n, -1, dtype=np.int64)
    stamp = np.full(n + 1, -1, dtype=np.int64)
    for i in range(n):
        for pp in range(item_ptr[i], item_ptr[i + 1]):
            t = item_lab[pp]
            k = b[t] if a[t] == i else a[t]
            if color[k] >= 0:
                stamp[color[k]] = i
        c = 0
        while stamp[c] == i:
            c += 1
        color[i] = c
    return color
