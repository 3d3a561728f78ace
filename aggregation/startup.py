"""A short-lived process's start-up: import pandas and numba without the optional parts it never uses.

`crowdclust aggregate` on the demo's 82 images does well under a tenth of a second of numeric work;
the rest of its time is imports. Three optional imports that pandas and numba make when they find a
package installed cost about a third of the process and are never used by the aggregation
(measured on the 2-core machine with `python -X importtime` and per-phase CPU times):

- pandas imports pyarrow (0.2 s) to offer Arrow-backed columns; without it, pandas keeps its
  NumPy-backed ones, which `read_export` and `build_pairs` use either way (same values, same order);
- numba checks for a BLAS by importing scipy.linalg (0.35 s) when it loads its first kernel; the
  answer only chooses how numba compiles `np.dot`-like calls, and no aggregation kernel has one
  (they are loaded from the on-disk cache, not compiled);
- numba imports cffi (0.05-0.15 s) to support CFFI functions inside kernels; none is used.

`lean_imports()` hides those modules while pandas and numba (with numba's registries, which are
otherwise loaded by the first kernel call) are imported, then un-hides them: a later explicit
`import scipy.linalg` or `import cffi` works as usual. It is meant for the first thing a process
does (the CLI calls it before anything else); when pandas or numba is already imported it does
nothing. Library users never need it.
"""

from __future__ import annotations

import sys

__all__ = ["HIDDEN", "lean_imports"]

# Modules hidden while pandas and numba are imported (see the module docstring).
HIDDEN = ("pyarrow", "scipy.linalg.cython_blas", "cffi")


def lean_imports() -> None:
    """Import pandas, numba and numba's registries with the `HIDDEN` modules unavailable."""
    if "pandas" in sys.modules or "numba" in sys.modules:
        return
    hidden = [name for name in HIDDEN if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # the import system's "not installed"
    try:
        import numba.core.typing.cffi_utils  # (imported later by the first kernel load)
        import numba.np.arraymath  # noqa: F401  (numba's BLAS check runs here, at import)
        import pandas  # noqa: F401
    finally:
        for name in hidden:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]
