"""The gate in front of `/api`: authentication, the per-token rate limit, fault injection, latency.

A plain ASGI middleware (Starlette's `BaseHTTPMiddleware` costs a task and a queue per request,
about a third of the emulator's throughput). Every refusal is a Toloka-shaped JSON error without a
`Retry-After` header: toloka-kit 1.2.3 crashes on that header, and retries a plain 429 by itself.

Rate limit (`--rate-limit R`): at most `R` answered requests per token in any sliding one-second
window (for `R < 1`: one request per `1/R` seconds). A sliding window rather than a token bucket,
so that "the limit held" is a checkable fact: the peak the stats report can never exceed `R`.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import math
import re
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from email.utils import formatdate
from typing import Any

from emulator.errors import ApiError
from emulator.faults import Faults

Scope = dict[str, Any]


@functools.lru_cache(maxsize=64)
def token_label(token: str) -> str:
    """How a token is named in stats and logs: a short hash, never the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The token of an `Authorization: OAuth <t>` (or `ApiKey <t>`) header, else None."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme in ("OAuth", "ApiKey") else None
    return None


_ID_SEGMENT = re.compile(r"^(?:\d+|[0-9a-fA-F-]{16,})$")


def route_of(path: str) -> str:
    """`/api/v1/pools/123/open` -> `/api/v1/pools/{id}/open`: ids (numbers, hex or uuid) folded."""
    return "/".join("{id}" if _ID_SEGMENT.match(part) else part for part in path.split("/"))


class RateLimiter:
    """Sliding-window request counter per token, with the peak seen and the refusals."""

    def __init__(self, rate: float) -> None:
        self._lock = threading.Lock()
        self.set_rate(rate)

    def set_rate(self, rate: float) -> None:
        """Change the limit (0: none) at run time; the window, the peak and the refusals start over,
        so the stats describe what happened under the limit in force."""
        with self._lock:
            self.rate = rate
            self.window = max(1.0, 1.0 / rate) if rate > 0 else 1.0
            self.allowed = max(1, math.floor(rate * self.window)) if rate > 0 else 0
            self._seen: dict[str, deque[float]] = {}
            self.peak: dict[str, int] = {}
            self.throttled: dict[str, int] = {}
            self.routes: Counter[str] = Counter()  # admitted requests by route, for the stats

    def admit(self, token: str, route: str) -> bool:
        """Count one request (by `route` too, when admitted); False (and a refusal counted) when it
        would exceed the limit."""
        label = token_label(token)
        now = time.monotonic()
        with self._lock:
            seen = self._seen.setdefault(label, deque())
            while seen and seen[0] <= now - self.window:
                seen.popleft()
            if self.rate > 0 and len(seen) >= self.allowed:
                self.throttled[label] = self.throttled.get(label, 0) + 1
                return False
            seen.append(now)
            self.routes[route] += 1
            recent = sum(1 for t in seen if t > now - 1.0) if self.window > 1.0 else len(seen)
            self.peak[label] = max(self.peak.get(label, 0), recent)
            return True

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "limit_per_second": self.rate or None,
                "peak_per_second": dict(self.peak),
                "throttled": dict(self.throttled),
                "requests": dict(sorted(self.routes.items(), key=lambda kv: (-kv[1], kv[0]))),
            }


class Guard:
    """ASGI middleware for `/api/*` (token, rate limit, faults); other paths pass straight through.

    Every answer carries a `Date` header on the *simulated* clock (`clock()`, POSIX seconds): HTTP's
    `Date` is the origin server's clock, and a client that computes a deadline such as a pool's
    `will_expire` must compute it on the platform's clock, which runs ahead of the real one when the
    crowd is accelerated (uvicorn's own real-time `Date` is switched off).
    """

    def __init__(
        self, app: Any, token: str, faults: Faults, limiter: RateLimiter, clock: Callable[[], float]
    ) -> None:
        self.app, self.token, self.faults, self.limiter, self.clock = app, token, faults, limiter, clock

    def _dated(self, send: Any) -> Any:
        async def dated(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                stamp = formatdate(self.clock(), usegmt=True).encode()
                message = message | {"headers": [*message.get("headers", ()), (b"date", stamp)]}
            await send(message)

        return dated

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            send = self._dated(send)
        if scope["type"] != "http" or not scope["path"].startswith("/api"):
            await self.app(scope, receive, send)
            return
        if self.faults.latency_ms:
            await asyncio.sleep(self.faults.latency_ms / 1000)
        token = bearer(scope["headers"])
        if token != self.token:
            await respond(send, ApiError(401, "AUTHENTICATION_ERROR", "Invalid or missing OAuth token"))
            return
        if not self.limiter.admit(token, f"{scope['method']} {route_of(scope['path'])}"):
            limit = f"{self.limiter.allowed} requests per {self.limiter.window:g} s"
            await respond(send, ApiError(429, "TOO_MANY_REQUESTS", f"Rate limit of this token: {limit}"))
            return
        decision = self.faults.decide(b"operation_id" in scope.get("query_string", b""))
        if decision and not decision[1]:
            await respond(send, ApiError(*decision[0]))
            return
        if not decision:
            await self.app(scope, receive, send)
            return

        # A lost response: the work is done, the client is told it failed.
        async def swallow(message: dict[str, Any]) -> None:
            return None

        await self.app(scope, receive, swallow)
        await respond(send, ApiError(*decision[0]))


async def respond(send: Any, error: ApiError) -> None:
    body = json.dumps(error.body(uuid.uuid4().hex)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
