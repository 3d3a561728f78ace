"""The simulated clock: simulated seconds since `util.SIM_EPOCH`, advanced from wall time x speed.

`speed=0` freezes it: only `advance()` (the `/_emulator/advance` endpoint) moves it, which makes a
whole run reproducible. The clock never goes backwards and restarts from the persisted instant.
"""

from __future__ import annotations

import threading
import time


class SimClock:
    def __init__(self, speed: float, start: float = 0.0) -> None:
        self.speed = float(speed)
        self._lock = threading.Lock()
        self._base_sim = float(start)
        self._base_wall = time.monotonic()

    def _now(self) -> float:
        return self._base_sim + (time.monotonic() - self._base_wall) * self.speed

    def now(self) -> float:
        """Current simulated time in seconds."""
        with self._lock:
            return self._now()

    def advance(self, seconds: float) -> float:
        """Jump forward by `seconds` of simulated time (any speed)."""
        with self._lock:
            self._base_sim, self._base_wall = self._now() + max(0.0, seconds), time.monotonic()
            return self._base_sim

    def set_speed(self, speed: float) -> None:
        with self._lock:
            self._base_sim, self._base_wall, self.speed = self._now(), time.monotonic(), float(speed)
