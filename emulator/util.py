"""Small shared helpers: stable hashing, seeded randomness, ids and Toloka-style timestamps.

All randomness in the emulator is derived from a stable hash of named parts (seed, worker, suite, ...)
rather than from one shared random stream, so an outcome does not depend on the order in which
unrelated events were processed. Python's `hash()` is never used (it is salted per process).
"""

from __future__ import annotations

import hashlib
import random
import re
from datetime import UTC, datetime, timedelta

# Simulated instants are POSIX seconds (UTC). The clock starts at the real current time (or at
# `EmulatorSettings.start`), so `created_gte=now - 1h` finds what was just created.
POSIX_EPOCH = datetime(1970, 1, 1)
# The last instant a timestamp can show (year 9999); the clock refuses to move past it.
MAX_SIM_SECONDS = (datetime(9999, 1, 1) - POSIX_EPOCH).total_seconds()


def digest(*parts: object) -> bytes:
    """sha256 of the parts joined by `|`."""
    return hashlib.sha256("|".join(map(str, parts)).encode()).digest()


def stable_int(*parts: object) -> int:
    """A 64-bit integer derived from the parts, identical in every process."""
    return int.from_bytes(digest(*parts)[:8], "big")


def unit(*parts: object) -> float:
    """A float in [0, 1) derived from the parts."""
    return stable_int(*parts) / 2**64


def rng(*parts: object) -> random.Random:
    """A private random generator seeded from the parts."""
    return random.Random(stable_int(*parts))


_NUMERIC_LOOKING = re.compile(r"^[0-9]*(e[0-9]*)?$")


def worker_id(seed: int, index: int) -> str:
    """32 hex digits that never look like a number (pandas would turn them into int64/float64)."""
    salt = 0
    while True:
        candidate = digest("worker-id", seed, index, salt)[:16].hex()
        if not _NUMERIC_LOOKING.match(candidate):
            return candidate
        salt += 1


def long_id(sequence: int, *parts: object) -> str:
    """Fixed-width task / suite / assignment id that sorts lexicographically in creation order."""
    return f"{sequence:016x}--{digest('long-id', sequence, *parts)[:6].hex()}"


def sim_datetime(sim_seconds: float) -> datetime:
    """The naive UTC datetime of a simulated instant."""
    return POSIX_EPOCH + timedelta(seconds=sim_seconds)


def sim_seconds(value: datetime) -> float:
    """The simulated instant (POSIX seconds) of a naive UTC datetime."""
    return (value - POSIX_EPOCH).total_seconds()


def fmt_time(sim_seconds: float) -> str:
    """Toloka's timestamp format: naive UTC with milliseconds, e.g. `2026-01-01T00:00:01.250`."""
    return sim_datetime(sim_seconds).isoformat(timespec="milliseconds")


def parse_time(text: str) -> datetime:
    """Parse a client-sent timestamp (naive = UTC; any fraction width; optional zone)."""
    text = text.strip().replace("Z", "+00:00").replace(" ", "T")
    match = re.match(r"^(.*T\d\d:\d\d:\d\d)(\.\d+)?(.*)$", text)
    if match:
        head, frac, tail = match.groups()
        frac = (frac or ".0")[1:7].ljust(6, "0")
        text = f"{head}.{frac}{tail}"
    value = datetime.fromisoformat(text)
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value
