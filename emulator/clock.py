"""The simulated clock: POSIX seconds (UTC), advanced from wall time x speed.

It starts at the real current time (or a given start) and restarts from the persisted instant.
`speed=0` freezes it: only `advance()` (the `/_emulator/advance` endpoint) moves it, which makes a
whole run reproducible. The clock never goes backwards and never beyond year 9999.
"""

from __future__ import annotations

import math
import threading
import time

from emulator.util import MAX_SIM_SECONDS

MAX_SPEED = 1_000_000.0


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
        """Jump forward by `seconds` of simulated time (any speed); ValueError if not a sane step."""
        with self._lock:
            now = self._now()
            if not math.isfinite(seconds) or seconds < 0 or now + seconds > MAX_SIM_SECONDS:
                raise ValueError(f"seconds must be a finite number from 0 to {MAX_SIM_SECONDS - now:.0f}")
            self._base_sim, self._base_wall = now + seconds, time.monotonic()
            return self._base_sim

    def set_speed(self, speed: float) -> None:
        """Change the speed (ValueError unless 0 <= speed <= MAX_SPEED)."""
        if not math.isfinite(speed) or not 0 <= speed <= MAX_SPEED:
            raise ValueError(f"speed must be a number from 0 to {MAX_SPEED:g}")
        with self._lock:
            self._base_sim, self._base_wall, self.speed = self._now(), time.monotonic(), float(speed)
