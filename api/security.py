"""API keys and rate limits, as FastAPI dependencies that work for HTTP and WebSocket alike.

Keys come from `Authorization: Bearer KEY` or `X-API-Key: KEY` (and `?api_key=KEY` on WebSocket, since browsers
cannot set headers there). They are compared in constant time and never logged. The rate limit is a token bucket per
API key, or per client address without keys; each worker process keeps its own buckets.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import threading
import time

from fastapi import Depends, HTTPException, WebSocketException, status
from starlette.requests import HTTPConnection

from config import Settings


def presented_key(conn: HTTPConnection) -> str | None:
    authorization = conn.headers.get("authorization", "")
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    if key := conn.headers.get("x-api-key"):
        return key
    if conn.scope["type"] == "websocket":
        return conn.query_params.get("api_key")
    return None


def key_is_valid(presented: str, settings: Settings) -> bool:
    # Compare against every key, without stopping at a match: the time taken says nothing about which matched.
    valid = False
    for key in settings.api_keys:
        valid |= hmac.compare_digest(presented.encode(), key.get_secret_value().encode())
    return valid


def client_identity(conn: HTTPConnection) -> str:
    """Who a rate limit counts: the key's hash (never the key itself) or the client's address."""
    key = presented_key(conn)
    if key:
        return "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]
    return "ip:" + (conn.client.host if conn.client else "unknown")


async def require_api_key(conn: HTTPConnection) -> None:
    settings: Settings = conn.app.state.services.settings
    if not settings.api_keys:
        return
    key = presented_key(conn)
    if key is not None and key_is_valid(key, settings):
        return
    if conn.scope["type"] == "websocket":
        raise WebSocketException(code=status.WS_1008_POLICY_VIOLATION, reason="missing or invalid API key")
    raise HTTPException(401, "missing or invalid API key", headers={"WWW-Authenticate": "Bearer"})


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
