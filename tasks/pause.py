"""`pause(seconds)`: `time.sleep` for a flow run's waits, that a SIGTERM cannot sleep through.

CPython runs a signal's Python handler (Prefect's, which marks the run Crashed and runs its hooks)
in the main thread, between bytecodes. A signal that arrives while the main thread is on its way
into a blocking call, after its last check for signals (most often while it waits to take the GIL
back from another thread: Prefect's log and event workers, a run lease's renewal), is only noted: the
handler runs once the call returns. Seen with `perf`: the SIGTERM delivered to the main thread as it
waited for the GIL, then its `clock_nanosleep` for the whole sleep.

A flow-run process stopped from outside (`make down`, a worker told to stop: SIGTERM, then SIGKILL
after 15 s) as its wait began a 60 s poll of real Toloka slept until the SIGKILL: no crash hook, its
pools open and paid for. The faults test that stops a flow process as it starts to sleep hung so
on a loaded machine (its 120 s sleep outlasted the test's 60 s). Slept in slices of at most
`SLICE_SECONDS`, a signal left pending is handled when its slice ends (the interpreter checks after
each call).

A wait also ends its sleep early for a Suspend pressed on the run's page (`until`, checked every
slice): a 60 s poll of real Toloka no longer runs to its end with the crowd paid meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Callable

SLICE_SECONDS = 1.0


def pause(seconds: float, until: Callable[[], object] | None = None) -> None:
    """Sleep `seconds` (none when not positive), a signal's handler run within `SLICE_SECONDS`;
    sooner once `until` (asked before every slice) says something true."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if until is not None and until():
            return
        time.sleep(min(left, SLICE_SECONDS))
