"""Estimators in the crowd-kit / scikit-learn style: parameters in the constructor, `fit(data)`,
`fit_predict(data)` -> `pd.Series` item -> cluster, fitted attributes with a trailing underscore.

`CrowdClustering` is the Gomes et al. model (variational embedding of items and workers), a DP
mixture on the embedding, and a move/merge search under a prior on partitions that weighs each
worker by their two-coin reliability, then the thin-evidence step and per-item confidences
(`aggregation.consensus`).
`CoAssociationClustering` is the baseline: average linkage on the fraction of workers who put a
pair together.

The estimators follow scikit-learn's estimator protocol (`get_params`, `set_params`, and
`sklearn.base.clone` works) without inheriting from `sklearn.base.BaseEstimator`: importing that
module pulls in scipy.stats and costs 2-8 s per process (measured with `python -X importtime`),
more than a whole N = 82 aggregation is allowed.
"""

from __future__ import annotations

import inspect
import math
import time
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from aggregation.confidence import item_confidence
from aggregation.consensus import ALPHA, PairGraph, _coin_weights, absorb_thin, search
from aggregation.linkage import agglomerate
from aggregation.mixture import dp_mixture
from aggregation.pairs import PairLabels, build_pairs
from aggregation.pieces import find_pieces, piece_shares
from aggregation.variational import Priors, VariationalRun, initial_state, spectral_start
from aggregation.workers import worker_quality

__all__ = ["CoAssociationClustering", "CrowdClustering", "least_certain", "ordered_clusters"]

# The DP mixture holds an N×K responsibility matrix (K ~ 2√N); above this size it is skipped.
MIXTURE_MAX_ITEMS = 3000
EMBEDDING_MAX_ITEMS = 3000  # default limit of the variational embedding (see `CrowdClustering`)


def _as_labels(data: pd.DataFrame) -> pd.DataFrame:
    """Accept the long-format frame or anything with a `.labels` frame (an ExportReading)."""
    labels = getattr(data, "labels", data)
    if not isinstance(labels, pd.DataFrame):
        raise TypeError("expected a DataFrame with columns task, worker, item, label")
    return labels


def ordered_clusters(items: np.ndarray, labels: np.ndarray) -> pd.Series:
    """Cluster ids 0..K-1 by decreasing size (ties: the cluster holding the smallest item first)."""
    _, codes = np.unique(labels, return_inverse=True)
    sizes = np.bincount(codes)
    first = np.full(len(sizes), len(codes))
    np.minimum.at(first, codes, np.arange(len(codes)))
    rank = np.empty(len(sizes), dtype=np.int64)
    rank[np.lexsort((first, -sizes))] = np.arange(len(sizes))
    return pd.Series(rank[codes], index=pd.Index(items, name="item"), name="cluster")


def single_item_clusters(clusters: pd.Series) -> int:
    """How many clusters hold one item.

    With `CrowdClustering` (and no `min_cluster_size`) such an item is one whose labels rule out
    every cluster: a user who asked for "the styles" counts these apart, as images to look at or
    send back to the crowd, each with a low confidence.

    >>> single_item_clusters(pd.Series([0, 0, 1, 2], index=["a", "b", "c", "d"]))
    2
    """
    return int((clusters.value_counts() == 1).sum())


def cluster_confidence(clusters: pd.Series, confidence: pd.Series) -> pd.Series:
    """Each cluster's mean confidence (a Series cluster -> mean, in cluster order).

    >>> clusters = pd.Series([0, 0, 1], index=list("abc"))
    >>> cluster_confidence(clusters, pd.Series([0.9, 0.7, 0.2], index=list("abc"))).round(2).tolist()
    [0.8, 0.2]
    """
    return confidence.reindex(clusters.index).groupby(clusters).mean()


def doubtful_clusters(clusters: pd.Series, confidence: pd.Series) -> int:
    """How many clusters of two or more items have a mean confidence below 0.5.

    Most of such a cluster's items would sit elsewhere under a resampling of the answers: it holds
    images the answers place in several ways (images between two styles, say), not a style the
    crowd agrees on. Single items are counted by `single_item_clusters`.

    >>> clusters = pd.Series([0, 0, 1, 1, 2], index=list("abcde"))
    >>> doubtful_clusters(clusters, pd.Series([0.9, 0.8, 0.3, 0.5, 0.1], index=list("abcde")))
    1
    """
    means = cluster_confidence(clusters, confidence)
    return int(((means < 0.5) & (clusters.value_counts().reindex(means.index) > 1)).sum())


def least_certain(clusters: pd.Series, confidence: pd.Series, per_cluster: int = 5) -> pd.DataFrame:
    """The `per_cluster` least certain items of every cluster: what to send back to the crowd.

    Returns columns cluster, item, confidence, sorted by cluster, then confidence (lowest first),
    then item (so ties are deterministic).

    >>> clusters = pd.Series([0, 0, 0, 1], index=["a", "b", "c", "d"])
    >>> confidence = pd.Series([0.9, 0.2, 0.6, 0.4], index=["a", "b", "c", "d"])
    >>> least_certain(clusters, confidence, per_cluster=2)
       cluster item  confidence
    0        0    b         0.2
    1        0    c         0.6
    2        1    d         0.4
    """
    if per_cluster < 1:
        raise ValueError("per_cluster must be at least 1")
    frame = pd.DataFrame(
        {
            "cluster": clusters.to_numpy(),
            "item": clusters.index.to_numpy(),
            "confidence": confidence.reindex(clusters.index).to_numpy(dtype=np.float64),
        }
    )
    frame = frame.sort_values(["cluster", "confidence", "item"], kind="mergesort")
    return frame.groupby("cluster", sort=False).head(per_cluster).reset_index(drop=True)


class _Base:
    """scikit-learn's estimator protocol, the shared `fit_predict` and the result attributes.

    Fitted attributes (set by `fit`): `labels_` (Series item -> cluster 0..K-1, 0 the largest),
    `confidence_` (Series item -> P(its cluster | the others' clusters), in [0, 1]), `n_clusters_`,
    `fit_seconds_`, `pairs_` (the pairwise labels), `pair_graph_` (their `PairGraph`: the labels
    grouped by item pair), `n_iter_`.
    """

    labels_: pd.Series
    confidence_: pd.Series
    n_clusters_: int
    fit_seconds_: float
    pairs_: PairLabels
    pair_graph_: PairGraph
    n_iter_: int

    @classmethod
    def _param_names(cls) -> list[str]:
        signature = inspect.signature(cls.__init__)
        return [name for name in signature.parameters if name != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Constructor parameters (scikit-learn protocol; `deep` is accepted and has nothing to recurse)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> _Base:
        """Set constructor parameters (scikit-learn protocol)."""
        valid = set(self._param_names())
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"invalid parameter {name!r} for {type(self).__name__}")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        defaults = inspect.signature(type(self).__init__).parameters
        changed = [f"{k}={v!r}" for k, v in self.get_params().items() if defaults[k].default != v]
        return f"{type(self).__name__}({', '.join(changed)})"

    def fit(self, data: pd.DataFrame) -> _Base:  # pragma: no cover - overridden
        raise NotImplementedError

    def fit_predict(self, data: pd.DataFrame) -> pd.Series:
        """Fit on long-format labels and return the clusters (a Series item -> cluster)."""
        return self.fit(data).labels_

    def _finish(
        self, pairs: PairLabels, labels: np.ndarray, started: float, graph: PairGraph | None = None
    ) -> None:
        """Dissolve clusters below `min_cluster_size`, order the clusters, compute the confidences.

        Both use the two-coin evidence of the final partition (`aggregation.consensus`,
        `aggregation.confidence`), so the baseline's clusters get confidences on the same scale as
        the model's.
        """
        graph = PairGraph(pairs) if graph is None else graph
        min_size = getattr(self, "min_cluster_size", None)
        if min_size is not None:
            if int(min_size) < 1:
                raise ValueError("min_cluster_size must be at least 1 (or None: decided by the model)")
            sizes = np.bincount(np.asarray(labels, dtype=np.int64))
            thin = (sizes > 0) & (sizes < int(min_size))
            labels = absorb_thin(pairs, labels, graph.evidence(pairs, labels), int(min_size), ALPHA)
            # What the setting moved, for a warning when it merged most of the items away.
            self.dissolved_ = (int(sizes[thin].sum()), int(thin.sum()))
        else:
            self.dissolved_ = (0, 0)
        seed = int(getattr(self, "random_state", 0))
        # An item's conditional given the rest, times its piece's share moved as a block (1 in its
        # cluster's core): a piece that only the prior placed is not certain because its images
        # agree with one another (`aggregation.pieces`).
        pieces, coins = find_pieces(pairs, labels, graph), _coin_weights(pairs, labels, 10.0)
        shares = piece_shares(pairs, labels, pieces, math.log(ALPHA), coins)
        confidence = item_confidence(pairs, labels, math.log(ALPHA), seed=seed, coins=coins) * shares
        self.labels_ = ordered_clusters(pairs.items, labels)
        # The clusters' linked pieces: `aggregation.recheck` lists the images outside a core.
        self.pieces_ = pieces
        self.confidence_ = pd.Series(confidence, index=self.labels_.index, name="confidence")
        self.n_clusters_ = int(self.labels_.max()) + 1
        self.pairs_ = pairs
        self.pair_graph_ = graph  # the item graph of the labels, for what reads them after the fit
        self.fit_seconds_ = time.perf_counter() - started


class CrowdClustering(_Base):
    """The crowd-clustering model of Gomes, Welinder, Krause & Perona (NIPS 2011), then clusters.

    1. Variational Bayes for items x_i ∈ R^D and workers (W_j, τ_j), from a deterministic spectral
       start (plus `n_restarts` seeded random starts); the run with the best free energy is kept.
    2. A truncated DP Gaussian mixture on the posterior means (`mixture_labels_`; skipped above
       MIXTURE_MAX_ITEMS items, where its N×K arrays grow badly); it is the answer with
       `refine=False`.
    3. A move/merge search for the partition with the best log-likelihood + Ewens log prior
       (`search_scores_`), each worker weighed by two coins (P(same | same cluster),
       P(different | different clusters)): first on the evidence alone, then with the prior at
       every level (cluster merges, moves of pieces, moves of items). It starts from singletons
       only: the mixture's partition merges neighbouring classes, and because the two-coin
       likelihood hardly tells two classes that careless workers confuse from one, with the prior
       the search kept such merges (shoes design, 500 items: 12 clusters for 20 from the mixture).
       Last, a cluster is cut in two where answers of held-out tasks confirm the cut
       (`aggregation.splitting`), for classes the two coins cannot keep apart.
    4. Thin evidence is not a cluster: a singleton joins its most likely cluster under the model
       (∝ size · exp(evidence), against α for standing alone); with `min_cluster_size` every
       smaller cluster is dissolved that way. `confidence_` is each item's posterior probability
       of its cluster: where the rest of its linked piece goes as a block (`aggregation.pieces`),
       times its conditional given the other items' clusters, averaged over resampled answers.

    Parameters
    ----------
    n_dims: latent dimension D of the item embedding.
    var_x, var_w, var_tau: prior variances of item points, worker matrix entries, worker biases.
    tol: stop when the relative change of the free energy over a sweep is below this. The final
        clusters were identical for tol from 1e-2 to 1e-4 on the bench crowds, so the default
        favours speed.
    max_iter: maximum number of sweeps per start.
    n_restarts: random starts in addition to the deterministic spectral start.
    random_state: seed of every random choice (restarts, mixture initialisation, search orders,
        task folds and proposed cuts).
    refine: run the search of step 3 (without it the mixture's clusters are returned).
    min_cluster_size: None lets the model decide (step 4); a number dissolves smaller clusters.
    embedding_max_items: steps 1-2 run only up to this many items (None: always). The clusters
        come from step 3 either way; the embedding is for plots and the worker parameters. At
        10,000 items its sweeps took 40 s CPU of the 60 s the whole fit took, so above the limit
        `embedding_`, `embedding_var_` and `free_energy_` are None and `n_iter_` is 0.

    Fitted attributes, besides those of every estimator: `confidence_` (Series item -> [0, 1]),
    `embedding_`, `embedding_var_`, `free_energy_`, `free_energy_history_`, `converged_`,
    `mixture_labels_`, `search_scores_`, `worker_params_`.

    >>> from aggregation.synthetic import generate_crowd
    >>> crowd = generate_crowd(40, 4, seed=1, shares={"diligent": 1.0})
    >>> model = CrowdClustering(random_state=0).fit(crowd.labels)
    >>> model.n_clusters_, bool(model.confidence_.between(0, 1).all())
    (4, True)
    """

    def __init__(
        self,
        n_dims: int = 4,
        var_x: float = 5.0,
        var_w: float = 10.0,
        var_tau: float = 1.0,
        tol: float = 4e-3,
        max_iter: int = 100,
        n_restarts: int = 0,
        random_state: int = 0,
        refine: bool = True,
        min_cluster_size: int | None = None,
        embedding_max_items: int | None = EMBEDDING_MAX_ITEMS,
    ) -> None:
        self.n_dims = n_dims
        self.var_x = var_x
        self.var_w = var_w
        self.var_tau = var_tau
        self.tol = tol
        self.max_iter = max_iter
        self.n_restarts = n_restarts
        self.random_state = random_state
        self.refine = refine
        self.min_cluster_size = min_cluster_size
        self.embedding_max_items = embedding_max_items

    def fit(self, data: pd.DataFrame) -> CrowdClustering:
        """Fit the model on long-format labels (task, worker, item, label)."""
        # BLAS threads only fight numba's (an 82×82 eigh took 75 ms instead of 1 ms on 2 busy cores).
        with threadpool_limits(limits=1, user_api="blas"):
            return self._fit(data)

    def _fit(self, data: pd.DataFrame) -> CrowdClustering:
        started = time.perf_counter()
        pairs = build_pairs(_as_labels(data))
        graph = PairGraph(pairs)
        limit = self.embedding_max_items
        best = self._embed(pairs, graph) if limit is None or pairs.n_items <= limit else None
        mixture = None
        self.mixture_labels_ = None
        if best is not None and pairs.n_items <= MIXTURE_MAX_ITEMS:
            mixture = dp_mixture(best.mu, random_state=self.random_state)
            self.mixture_labels_ = ordered_clusters(pairs.items, mixture)
        if self.refine or mixture is None:
            found = search(pairs, [("singletons", None)], self.random_state, graph=graph)
            labels, self.search_scores_ = found.labels, found.scores
        else:
            labels, self.search_scores_ = mixture, []

        if best is None:
            self.embedding_ = self.embedding_var_ = self.free_energy_ = None
            self.free_energy_history_, self.n_iter_, self.converged_ = [], 0, False
        else:
            columns = [f"x{d}" for d in range(self.n_dims)]
            index = pd.Index(pairs.items, name="item")
            self.embedding_ = pd.DataFrame(best.mu, index=index, columns=columns)
            self.embedding_var_ = pd.DataFrame(best.s, index=index, columns=columns)
            self.free_energy_ = float(best.free_energy)
            self.free_energy_history_ = list(best.history)
            self.n_iter_ = int(best.n_iter)
            self.converged_ = bool(best.converged)
        self._finish(pairs, labels, started, graph)
        self.worker_params_ = self._worker_table(pairs, best)
        return self

    def _embed(self, pairs: PairLabels, graph: PairGraph):
        """Variational Bayes from the spectral start and `n_restarts` random ones; the best free energy."""
        priors = Priors(self.n_dims, self.var_x, self.var_w, self.var_tau)
        run = VariationalRun(pairs, priors)
        rng = np.random.default_rng(self.random_state)
        a, b, same, votes = graph.coassociation()
        starts = [spectral_start(pairs.n_items, a, b, same / votes, self.n_dims)]
        starts += [rng.normal(size=(pairs.n_items, self.n_dims)) for _ in range(self.n_restarts)]
        best = None
        for mu in starts:
            state = run.run(initial_state(pairs, priors, mu), self.tol, self.max_iter)
            if best is None or state.free_energy > best.free_energy:
                best = state
        return best

    def _worker_table(self, pairs: PairLabels, state) -> pd.DataFrame:
        """Per worker: bias τ, ‖E[W]‖ (how much the embedding explains them), label counts, two coins."""
        if state is None:  # no embedding fitted: the worker matrices and biases are unknown
            tau = tau_var = w_norm = np.full(pairs.n_workers, np.nan)
        else:
            ud, ue = np.triu_indices(self.n_dims)
            weight = np.where(ud == ue, 1.0, 2.0)
            tau, tau_var = state.tm, state.tv
            w_norm = np.sqrt((state.wm**2 * weight).sum(axis=1))
        # One pass over the labels, no array of one entry per label (at 100,000 images such arrays
        # made the command's peak memory): every column follows from the two coins' counts.
        table = worker_quality(pairs, self.labels_.to_numpy()).rename(columns={"labels": "n_labels"})
        table.insert(0, "tau", tau)
        table.insert(1, "tau_var", tau_var)
        table.insert(2, "w_norm", w_norm)
        return table


class CoAssociationClustering(_Base):
    """Baseline: average linkage on the co-association (share of workers who put a pair together).

    `n_clusters=None` chooses the number automatically: merging stops when no two clusters are,
    on average over their observed pairs, put together by more than `threshold` of the workers.
    `min_cluster_size` dissolves smaller clusters as in `CrowdClustering`.

    >>> from aggregation.synthetic import generate_crowd
    >>> crowd = generate_crowd(40, 4, seed=1, shares={"diligent": 1.0})
    >>> CoAssociationClustering(n_clusters=4).fit(crowd.labels).n_clusters_
    4
    """

    # What the recheck line says placed the images it lists: the baseline has no prior.
    placed_by = "only the linkage placed"

    def __init__(
        self,
        random_state: int = 0,
        n_clusters: int | None = None,
        threshold: float = 0.5,
        min_cluster_size: int | None = None,
    ) -> None:
        self.random_state = random_state  # kept for a uniform interface; the linkage is deterministic
        self.n_clusters = n_clusters
        self.threshold = threshold
        self.min_cluster_size = min_cluster_size

    def fit(self, data: pd.DataFrame) -> CoAssociationClustering:
        """Fit on long-format labels (task, worker, item, label)."""
        started = time.perf_counter()
        pairs = build_pairs(_as_labels(data))
        graph = PairGraph(pairs)
        a, b, same, votes = graph.coassociation()
        labels = agglomerate(pairs.n_items, a, b, same / votes, "average", self.threshold, self.n_clusters)
        self.n_iter_ = 0
        self._finish(pairs, labels, started, graph)
        return self
