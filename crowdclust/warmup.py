"""Compile the aggregation's numba kernels into their on-disk cache (run by `make install`).

The kernels are `@njit(cache=True)`: the first process that calls them compiles them (about 15 s)
and writes machine code next to the sources; every later process loads it. Doing that once at
install time, on a tiny synthetic crowd with the same argument types as a real run, keeps the
first `make demo` or flow run from paying for it.
"""

from __future__ import annotations

import time


def main() -> None:
    started = time.monotonic()
    import aggregation

    crowd = aggregation.generate_crowd(n_items=20, n_classes=3, seed=0)
    labels = aggregation.read_export(crowd.export, strict=True).labels
    aggregation.CrowdClustering(n_dims=4, random_state=0).fit_predict(labels)
    aggregation.CoAssociationClustering(random_state=0).fit_predict(labels)
    print(f"numba kernels compiled and cached in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
