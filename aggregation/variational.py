"""Mean-field variational inference for the crowd-clustering model: state, start, sweeps, free energy.

One sweep = update every q(x_i) (colour class by colour class), update every q(W_j), q(τ_j),
re-optimise δ. Each step maximises the bound F(q, δ) over one block exactly (the item and worker
steps at the δ of the previous sweep, which is still a valid bound), so the free energy (computed
after every sweep, with the optimal δ) never decreases; a decrease larger than round-off would
reveal a wrong update, and the tests check for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from aggregation import kernels
from aggregation.pairs import PairLabels

__all__ = ["Priors", "VariationalRun", "VariationalState", "initial_state", "spectral_start"]


@dataclass(frozen=True)
class Priors:
    """Prior variances (the reference notebook's defaults) and the latent dimension."""

    n_dims: int = 4
    var_x: float = 5.0
    var_w: float = 10.0
    var_tau: float = 1.0


@dataclass
class VariationalState:
    """Parameters of q and the bookkeeping of one run."""

    mu: np.ndarray
    s: np.ndarray
    wm: np.ndarray
    wv: np.ndarray
    tm: np.ndarray
    tv: np.ndarray
    free_energy: float = -np.inf
    history: list[float] = field(default_factory=list)
    n_iter: int = 0
    converged: bool = False


PARALLEL_ITEMS = 3000
PARALLEL_LABELS = 1_000_000
DENSE_SPECTRAL = 600


class _Layout:
    """Index arrays shared by the kernels: upper-triangle entries of W and the item colouring."""

    def __init__(self, pairs: PairLabels, n_dims: int) -> None:
        ud, ue = np.triu_indices(n_dims)
        self.ud = ud.astype(np.int64)
        self.ue = ue.astype(np.int64)
        self.uidx = np.zeros((n_dims, n_dims), dtype=np.int64)
        self.uidx[ud, ue] = np.arange(len(ud))
        self.uidx[ue, ud] = np.arange(len(ud))
        # Label data in item order (read sequentially by the item kernel) and each label's two places.
        lab = pairs.item_lab
        owner = np.repeat(np.arange(pairs.n_items), np.diff(pairs.item_ptr))
        is_a = pairs.a[lab] == owner
        self.item_other = np.where(is_a, pairs.b[lab], pairs.a[lab])
        self.item_worker = pairs.worker[lab]
        self.item_label = pairs.label[lab]
        places = np.arange(len(lab), dtype=np.int64)
        self.pos_a = np.empty(pairs.n_labels, dtype=np.int64)
        self.pos_b = np.empty(pairs.n_labels, dtype=np.int64)
        self.pos_a[lab[is_a]] = places[is_a]
        self.pos_b[lab[~is_a]] = places[~is_a]
        color = kernels.greedy_colors(pairs.item_ptr, pairs.item_lab, pairs.a, pairs.b)
        self.color_items = np.argsort(color, kind="stable").astype(np.int64)
        self.color_ptr = np.r_[0, np.cumsum(np.bincount(color))].astype(np.int64)


def spectral_start(n: int, a: np.ndarray, b: np.ndarray, weight: np.ndarray, n_dims: int) -> np.ndarray:
    """A deterministic start: leading eigenvectors of the normalised co-association graph.

    Edges (a, b) of the n items weigh the fraction of votes that put a pair together (`coassociation`,
    which the caller also uses for its other start); the trivial leading eigenvector is dropped; rows
    are scaled to norm 2 so that x_aᵀ x_b is about ±4 before the first update.
    """
    k = min(n_dims + 1, n - 1)
    if n <= DENSE_SPECTRAL:
        adj = np.zeros((n, n))
        adj[a, b] = weight
        adj[b, a] = weight
        adj[np.arange(n), np.arange(n)] += 1e-3
        inv = 1.0 / np.sqrt(adj.sum(axis=1))
        vals, vecs = np.linalg.eigh(adj * inv[:, None] * inv[None, :])
        vecs = vecs[:, np.argsort(-vals, kind="stable")[:k]]
    else:
        # Large catalogues: sparse Lanczos (scipy imported only here; it costs ~0.5 s to import).
        import scipy.sparse as sp
        from scipy.sparse.linalg import eigsh

        adj = sp.coo_matrix((np.r_[weight, weight], (np.r_[a, b], np.r_[b, a])), shape=(n, n)).tocsr()
        adj = adj + sp.identity(n, format="csr") * 1e-3
        inv = sp.diags(1.0 / np.sqrt(np.asarray(adj.sum(axis=1)).ravel()))
        vals, vecs = eigsh((inv @ adj @ inv).tocsr(), k=k, which="LA", v0=np.ones(n), tol=1e-6)
        vecs = vecs[:, np.argsort(-vals, kind="stable")]
    emb = np.zeros((n, n_dims))
    use = vecs[:, 1 : 1 + n_dims]
    emb[:, : use.shape[1]] = use
    # Fix each column's sign (eigenvectors are defined up to sign) so the start is reproducible.
    signs = np.sign(emb[np.argmax(np.abs(emb), axis=0), np.arange(n_dims)])
    emb *= np.where(signs == 0, 1.0, signs)
    rows = np.linalg.norm(emb, axis=1, keepdims=True)
    return 2.0 * emb / np.where(rows > 0, rows, 1.0)


def initial_state(pairs: PairLabels, priors: Priors, mu: np.ndarray) -> VariationalState:
    """q at the start: given item means, small item variances, E[W] = I, E[τ] = 0."""
    n_par = priors.n_dims * (priors.n_dims + 1) // 2
    ud, ue = np.triu_indices(priors.n_dims)
    wm = np.tile((ud == ue).astype(np.float64), (pairs.n_workers, 1))
    return VariationalState(
        mu=np.array(mu, dtype=np.float64, order="C", copy=True),
        s=np.full((pairs.n_items, priors.n_dims), 0.1),
        wm=wm,
        wv=np.full((pairs.n_workers, n_par), 0.1),
        tm=np.zeros(pairs.n_workers),
        tv=np.full(pairs.n_workers, 0.1),
    )


def _kl_gauss(mean: np.ndarray, var: np.ndarray, prior: float) -> float:
    """KL(N(mean, var) || N(0, prior)) summed over independent coordinates."""
    return float(0.5 * np.sum((mean**2 + var) / prior - 1.0 - np.log(var / prior)))


class VariationalRun:
    """Runs the sweeps of one start until the relative change of the free energy is below `tol`."""

    def __init__(self, pairs: PairLabels, priors: Priors) -> None:
        self.pairs = pairs
        self.priors = priors
        self.layout = _Layout(pairs, priors.n_dims)
        self.lam = np.empty(pairs.n_labels)
        self.lam_item = np.empty(2 * pairs.n_labels)
        # Thread start-up (and per-colour barriers) cost more than two threads gain on small problems.
        self.parallel_items = pairs.n_items >= PARALLEL_ITEMS
        self.parallel_labels = pairs.n_labels >= PARALLEL_LABELS
        self.bound = np.empty(pairs.n_labels)

    def _deltas(self, st: VariationalState) -> None:
        p, lay = self.pairs, self.layout
        label_stats = kernels.label_stats_parallel if self.parallel_labels else kernels.label_stats_serial
        wmat = st.wm[:, lay.uidx]  # dense symmetric E[W_j] and Var[W_j], (J, D, D)
        vmat = st.wv[:, lay.uidx]
        label_stats(
            p.a, p.b, p.worker, p.label, st.mu, st.s, wmat, vmat, st.tm, st.tv,
            lay.pos_a, lay.pos_b, self.lam, self.lam_item, self.bound,
        )  # fmt: skip

    def free_energy(self, st: VariationalState) -> float:
        """The bound with the optimal δ (call right after `_deltas`)."""
        pr = self.priors
        return (
            float(np.sum(self.bound))
            - _kl_gauss(st.mu, st.s, pr.var_x)
            - _kl_gauss(st.wm, st.wv, pr.var_w)
            - _kl_gauss(st.tm, st.tv, pr.var_tau)
        )

    def sweep(self, st: VariationalState) -> float:
        p, lay, pr = self.pairs, self.layout, self.priors
        update_items = kernels.update_items_parallel if self.parallel_items else kernels.update_items_serial
        update_items(
            lay.color_ptr, lay.color_items, p.item_ptr, lay.item_other, lay.item_worker, lay.item_label,
            self.lam_item, st.mu, st.s, st.wm, st.wv, st.tm, lay.uidx, pr.var_x,
        )  # fmt: skip
        update_workers = (
            kernels.update_workers_parallel if self.parallel_labels else kernels.update_workers_serial
        )
        update_workers(
            p.worker_ptr, p.a, p.b, p.label, self.lam, st.mu, st.s, st.wm, st.wv, st.tm, st.tv,
            lay.ud, lay.ue, lay.uidx, pr.var_w, pr.var_tau,
        )  # fmt: skip
        self._deltas(st)
        return self.free_energy(st)

    def run(self, st: VariationalState, tol: float, max_iter: int) -> VariationalState:
        """Sweep until the relative change of the free energy is below `tol` (or `max_iter`)."""
        self._deltas(st)
        st.free_energy = self.free_energy(st)
        st.history = [st.free_energy]
        for it in range(1, max_iter + 1):
            value = self.sweep(st)
            change = abs(value - st.free_energy) / max(abs(st.free_energy), 1e-12)
            st.free_energy = value
            st.history.append(value)
            st.n_iter = it
            if change < tol:
                st.converged = True
                break
        return st
