"""Compile every numba kernel of the aggregation once (`python -m aggregation.warmup`, run by `make install`).

Kernels are compiled with `cache=True`, so the machine code lands in the package's __pycache__ and
every later process loads it. The parallel twins only run above a size threshold, so they are called
here directly on a tiny crowd (a few seconds in all, most of it compilation).
"""

from __future__ import annotations

__all__ = ["warm_up"]


def warm_up() -> None:
    """Fit both estimators on a tiny crowd and run the parallel kernels once."""
    import numpy as np

    from aggregation.answer_cuts import cut_units, refine_by_answers
    from aggregation.dissent import find_dissent
    from aggregation.estimators import CoAssociationClustering, CrowdClustering
    from aggregation.oracle import placement_oracle
    from aggregation.pairs import build_pairs, coassociation
    from aggregation.recheck import find_recheck
    from aggregation.synthetic import generate_crowd
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
    # The answer-level cut refinement runs only where a cluster has a usable cut: not on this crowd.
    labels = np.zeros(pairs.n_items, dtype=np.int64)
    units = cut_units(pairs.a, pairs.b, pairs.worker, pairs.task, pairs.label > 0, labels)
    side = np.arange(pairs.n_items) % 2 == 0
    refine_by_answers(*units, labels, side, np.ones(1, dtype=np.bool_), pairs.n_workers, 0)


if __name__ == "__main__":
    warm_up()
