"""The upstream connection pool's network backend: AnyIO's, with a cheap idle-connection probe.

Before each request is placed and after each response is closed, httpcore checks every idle pooled connection for
a server-side close by asking its stream `get_extra_info("is_readable")`. AnyIO's stream answers by building its
whole attribute table, a `getpeername()` call included, then polling the socket; with 50 idle connections that was a
fifth of the service's CPU per request (measured with cProfile at 50 concurrent streams). Here the stream keeps its
socket from the start and the probe is the poll alone. Reads and writes go straight to AnyIO's stream.
"""

from __future__ import annotations

import select
import socket
import ssl
from typing import Any

import httpcore2
import httpx2
import openai


class ProbedStream(httpcore2.AsyncNetworkStream):
    def __init__(self, stream: httpcore2.AsyncNetworkStream) -> None:
        self._stream = stream
        self._socket: socket.socket | None = stream.get_extra_info("socket")
        # Registered once: each probe is then the poll itself.
        self._poller = select.poll()
        if self._socket is not None:
            self._poller.register(self._socket, select.POLLIN)
        # The inner stream's own bound methods, so that a read or a write costs no extra call.
        self.read = stream.read  # type: ignore[method-assign]
        self.write = stream.write  # type: ignore[method-assign]
        self.aclose = stream.aclose  # type: ignore[method-assign]

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
    ) -> httpcore2.AsyncNetworkStream:
        return ProbedStream(await self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            return self._readable()
        return self._stream.get_extra_info(info)

    def _readable(self) -> bool:
        """Whether a read would return at once: data, or the b"" of a closed connection (a gone socket counts, and
        is never polled: its file descriptor may belong to another socket by now)."""
        if self._socket is None or self._socket.fileno() < 0:
            return True
        return bool(self._poller.poll(0))


class ProbedBackend(httpcore2.AsyncNetworkBackend):
    def __init__(self) -> None:
        self._backend = httpcore2.AnyIOBackend()

    async def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore2.AsyncNetworkStream:
        return ProbedStream(await self._backend.connect_tcp(*args, **kwargs))

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore2.AsyncNetworkStream:
        return ProbedStream(await self._backend.connect_unix_socket(*args, **kwargs))

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


def upstream_http_client() -> httpx2.AsyncClient:
    """The SDK's default HTTP client (its timeouts, limits and redirects, proxies from the environment), its direct
    connections made by `ProbedBackend`. httpx takes no network backend as an argument, so it is set on the pool
    the client built (httpx2 2.16.2, pinned; `tests/test_openai_client.py` checks that it took)."""
    client = openai.DefaultAsyncHttpxClient()
    pool = getattr(client._transport, "_pool", None)
    if isinstance(pool, httpcore2.AsyncConnectionPool):
        pool._network_backend = ProbedBackend()
    return client
