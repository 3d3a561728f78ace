"""Compile every numba kernel of the aggregation once (`python -m aggregation.warmup`, run by `make install`).

Kernels are compiled with `cache=True`, so the machine code lands in the package's __pycache__ and
every later process loads it. The parallel twins only run above a size threshold, so they are called
here directly on a tiny crowd (a few seconds in all, most of it compilation).
"""

from __future__ import annotations

__all__ = ["warm_up"]


def warm_up() -> None:
    """Fit both estimators on a tiny crowd, run the parallel kernels once, and the stages it skips.

    Checked with an empty NUMBA_CACHE_DIR: after this, `crowdclust aggregate` on the demo's 82
    images and on 10,000 compiles nothing. Before the cut stage and the agreement check were
    added here, its first run on 82 images compiled their kernels: 5.3 s, then 1.7 s.
    """
    import numpy as np

    from aggregation.dissent import find_dissent
    from aggregation.estimators import CoAssociationClustering, CrowdClustering
    from aggregation.oracle import placement_oracle
    from aggregation.pairs import build_pairs, coassociation
    from aggregation.recheck import find_recheck
    from aggregation.splitting import split_clusters
    from aggregation.synthetic import crowd_shape, generate_crowd
    from aggregation.variational import Priors, VariationalRun, initial_state, spectral_start

    crowd = generate_crowd(30, 3, seed=0)
    model = CrowdClustering(random_state=0).fit(crowd.labels)
    find_dissent(model, crowd.labels)  # its kernel
    find_recheck(model, crowd.labels)  # its kernel
    CoAssociationClustering(min_cluster_size=2).fit(crowd.labels)
    pairs = build_pairs(crowd.labels)
    run = VariationalRun(pairs, Priors())
    a, b, same, votes = coassociation(pairs)
    state = initial_state(pairs, run.priors, spectral_start(pairs.n_items, a, b, same / votes, 4))
    run.parallel_items = run.parallel_labels = True
    run.run(state, 1e-3, 2)
    placement_oracle(pairs, crowd.truth)  # the benchmark's and the tests' bound
    # The cut stage tests cuts only where a cluster has a usable one, which this crowd has not:
    # queries with merged partner classes run its held-out test and its answer proposals.
    queries = crowd_shape("queries", seed=0, hit_size=5, n_items=60, n_hits=400)
    pairs = build_pairs(queries.labels)
    truth = queries.truth.reindex(pairs.items).to_numpy().astype(np.int64)
    split_clusters(pairs, truth - truth % 2)
    # The check for workers who group another way measures agreement only above a share of labels.
    find_dissent(CrowdClustering(random_state=0).fit(queries.labels), queries.labels)


if __name__ == "__main__":
    warm_up()
