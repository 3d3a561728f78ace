"""Fault injection (`--fail-rate`, `--latency-ms`): 429/500/503 answers with Toloka error bodies.

The choice is a stable hash of (seed, request number), not wall-clock randomness. At most two faults
in a row are injected, so toloka-kit (4 attempts per call) always gets through and only the waits
(0 s, then 4 s) are exercised. Never with a `Retry-After` header (it crashes toloka-kit 1.2.3's retry).
Faults on async batch creates (`operation_id` in the query) are half the time injected AFTER the work
was done, as a lost response: the client's retry then meets 409 OPERATION_ALREADY_EXISTS and recovers
through `GET /operations/{id}`, which is exactly the idempotency path worth testing.
"""

from __future__ import annotations

import threading

from emulator.util import unit

FAULTS = (
    (429, "TOO_MANY_REQUESTS", "Too many requests (injected fault)"),
    (500, "INTERNAL_ERROR", "Internal error (injected fault)"),
    (503, "REMOTE_SERVICE_UNAVAILABLE", "Service unavailable (injected fault)"),
)


class Faults:
    def __init__(self, seed: int, fail_rate: float, latency_ms: int) -> None:
        self.seed = seed
        self.fail_rate = fail_rate
        self.latency_ms = latency_ms
        self._lock = threading.Lock()
        self._count = 0
        self._in_row = 0
        self.injected = 0
        self.lost_responses = 0  # faults injected after an async create was done

    def decide(self, has_operation_id: bool) -> tuple[tuple[int, str, str], bool] | None:
        """None, or (fault, after_processing) for the next /api request."""
        if self.fail_rate <= 0:
            return None
        with self._lock:
            self._count += 1
            n = self._count
            if self._in_row >= 2 or unit("fault", self.seed, n) >= self.fail_rate:
                self._in_row = 0
                return None
            self._in_row += 1
            self.injected += 1
            after = has_operation_id and unit("fault-after", self.seed, n) < 0.5
            self.lost_responses += after
        return FAULTS[n % len(FAULTS)], after
