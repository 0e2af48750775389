"""Rate limits, as a FastAPI dependency that works for HTTP and WebSocket alike (credentials are `api/auth.py`'s).

The rate limit is a token bucket per credential (API key or token), or per client address without one; each worker
process keeps its own buckets.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time

from fastapi import Depends, HTTPException
from starlette.requests import HTTPConnection

from api.auth import presented_credential


def client_identity(conn: HTTPConnection) -> str:
    """Who a rate limit counts: the credential's hash (never the credential itself) or the client's address."""
    credential = presented_credential(conn)
    if credential:
        return "key:" + hashlib.sha256(credential.encode()).hexdigest()[:16]
    return "ip:" + (conn.client.host if conn.client else "unknown")


class RateLimiter:
    """A token bucket per client: `per_minute` requests a minute, in bursts of up to `per_minute`."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, last refill)
        self._lock = threading.Lock()

    def acquire(self, client: str) -> float | None:
        """None when the request may go ahead, else the seconds to wait."""
        if self.per_minute <= 0:
            return None
        rate = self.per_minute / 60.0
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(client, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - last) * rate)
            if tokens >= 1.0:
                self._buckets[client] = (tokens - 1.0, now)
                return None
            self._buckets[client] = (tokens, now)
            return (1.0 - tokens) / rate


async def rate_limit(conn: HTTPConnection) -> None:
    limiter: RateLimiter = conn.app.state.services.rate_limiter
    wait = limiter.acquire(client_identity(conn))
    if wait is not None:
        raise HTTPException(
            429,
            f"rate limit of {limiter.per_minute} requests per minute exceeded; retry in {math.ceil(wait)} s",
            headers={"Retry-After": str(math.ceil(wait))},
        )


RateLimited = Depends(rate_limit)
