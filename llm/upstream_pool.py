"""The upstream connection pool's network backend: TCP connections as plain asyncio transports, with a cheap
idle-connection probe.

httpx's pool (httpcore) reaches the network through a backend, AnyIO's by default. AnyIO's stream wraps each read
and each write in a cancel scope with its own timer and a checkpoint, and pauses and resumes the transport's reading
around every read; at 50 simultaneous answers that was about a tenth of the service's CPU per request, and a tenth of
its CPU per relayed token (`bench/relay.py`: 1.20x against 1.07x the minimal relay per request, 1.12-1.25x against
1.05-1.07x per token, same runs). Here a connection is an asyncio protocol that buffers what arrives (pausing the
socket past HIGH_WATER bytes unread, so a slow reader holds the upstream back instead of growing the buffer), a
read returns what is buffered at once, and a timeout is one timer on the waiting future.

Before each request is placed and after each response is closed, httpcore also asks every idle pooled connection
whether the server closed it (`get_extra_info("is_readable")`): here that is a look at the buffer and one `poll`.
TLS goes through asyncio's `start_tls`; Unix sockets through AnyIO's backend.
"""

from __future__ import annotations

import asyncio
import collections
import select
import ssl
from typing import Any

import httpcore2
import httpx2
import openai

HIGH_WATER = 256 * 1024  # unread bytes at which the socket stops being read
LOW_WATER = 64 * 1024  # and below which it is read again


class _BufferingProtocol(asyncio.Protocol):
    """What arrives on one connection, until its reader takes it; the one waiting reader or writer is woken."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.paused = False
        self.eof = False
        self.error: BaseException | None = None
        self.readable: asyncio.Future[None] | None = None  # awaited by a reader while nothing is buffered
        self.writable: asyncio.Future[None] | None = None  # awaited by a writer while the transport is full

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.transport.pause_reading()
            self.paused = True
        _wake(self.readable)

    def eof_received(self) -> bool:
        self.eof = True
        _wake(self.readable)
        return False  # close the transport: the pool never writes after the server's end of stream

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        _wake(self.readable)
        _wake(self.writable)

    def pause_writing(self) -> None:
        self.writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        _wake(self.writable)
        self.writable = None

    def take(self, max_bytes: int) -> bytes:
        chunk = self.chunks.popleft()
        if len(chunk) > max_bytes:
            self.chunks.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        self.buffered -= len(chunk)
        if self.paused and self.buffered <= LOW_WATER and self.transport is not None:
            self.transport.resume_reading()
            self.paused = False
        return chunk


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


async def _wait(waiter: asyncio.Future[None], limit: float | None) -> None:
    """Wait for `waiter`; TimeoutError after `limit` seconds (None: no limit). One timer on the future itself, not
    `asyncio.timeout()`, which would also cancel and uncancel the task: this runs on every read that waits."""
    if limit is None:
        await waiter
        return
    timer = asyncio.get_running_loop().call_later(limit, _expire, waiter)
    try:
        await waiter
    finally:
        timer.cancel()


class AsyncioStream(httpcore2.AsyncNetworkStream):
    def __init__(self, transport: asyncio.Transport, protocol: _BufferingProtocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._socket: Any = transport.get_extra_info("socket")
        # Registered once: each probe is then the poll itself.
        self._poller = select.poll()
        if self._socket is not None:
            self._poller.register(self._socket.fileno(), select.POLLIN)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109 (httpcore's)
        protocol = self._protocol
        if not protocol.chunks and not protocol.eof:
            protocol.readable = asyncio.get_running_loop().create_future()
            try:
                await _wait(protocol.readable, timeout)
            except TimeoutError as exc:
                raise httpcore2.ReadTimeout("the upstream sent nothing in time") from exc
            finally:
                protocol.readable = None
        if protocol.chunks:
            return protocol.take(max_bytes)
        if protocol.error is not None:
            raise httpcore2.ReadError(f"the upstream connection broke: {protocol.error}") from protocol.error
        return b""  # the server's end of stream

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109 (httpcore's)
        if not buffer:
            return
        protocol = self._protocol
        if protocol.error is not None or self._transport.is_closing():
            raise httpcore2.WriteError("the upstream connection is closed")
        self._transport.write(buffer)
        if protocol.writable is not None:  # more is buffered than the transport's limit: wait until it drains
            try:
                await _wait(protocol.writable, timeout)
            except TimeoutError as exc:
                raise httpcore2.WriteTimeout("the upstream took nothing in time") from exc
            if protocol.error is not None:
                raise httpcore2.WriteError(f"the upstream connection broke: {protocol.error}") from protocol.error

    async def aclose(self) -> None:
        self._transport.abort()  # what AnyIO's stream does: the pool closes a connection it will not reuse
        # The loop closes the socket in its next iteration: let it, so that the connection is gone when this returns
        # (the upstream stops generating at once, even if the caller blocks next).
        await asyncio.sleep(0)

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
    ) -> httpcore2.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport = await loop.start_tls(
                    self._transport, self._protocol, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError as exc:
            self._transport.abort()
            raise httpcore2.ConnectTimeout("the upstream's TLS handshake took too long") from exc
        except (OSError, ssl.SSLError, ConnectionError) as exc:
            self._transport.abort()
            raise httpcore2.ConnectError(f"the upstream's TLS handshake failed: {exc}") from exc
        if transport is None:  # the connection closed during the handshake
            raise httpcore2.ConnectError("the upstream closed the connection during the TLS handshake")
        self._protocol.transport = transport
        return AsyncioStream(transport, self._protocol)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            return self._readable()
        if info == "socket":
            return self._socket
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        if info == "ssl_object":
            return self._transport.get_extra_info("ssl_object")
        return None

    def _readable(self) -> bool:
        """Whether a read would return at once: data, or the b"" of a closed connection (a closing transport
        counts, and is never polled: its file descriptor may belong to another socket by now)."""
        protocol = self._protocol
        if protocol.chunks or protocol.eof or self._transport.is_closing() or self._socket is None:
            return True
        return bool(self._poller.poll(0))


class AsyncioBackend(httpcore2.AsyncNetworkBackend):
    def __init__(self) -> None:
        self._anyio = httpcore2.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore2.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        local = (local_address, 0) if local_address else None
        try:
            async with asyncio.timeout(timeout):
                transport, protocol = await loop.create_connection(_BufferingProtocol, host, port, local_addr=local)
        except TimeoutError as exc:
            raise httpcore2.ConnectTimeout(f"no connection to {host}:{port} in time") from exc
        except OSError as exc:
            raise httpcore2.ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
        for option in socket_options or ():
            transport.get_extra_info("socket").setsockopt(*option)
        return AsyncioStream(transport, protocol)

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore2.AsyncNetworkStream:
        return await self._anyio.connect_unix_socket(*args, **kwargs)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def upstream_http_client() -> httpx2.AsyncClient:
    """The SDK's default HTTP client (its timeouts, limits and redirects, proxies from the environment), its direct
    connections made by `AsyncioBackend`. httpx takes no network backend as an argument, so it is set on the pool
    the client built (httpx2 2.16.2, pinned; `tests/test_openai_client.py` checks that it took). Connections through
    a proxy keep httpx's own backend."""
    client = openai.DefaultAsyncHttpxClient()
    pool = getattr(client._transport, "_pool", None)
    if isinstance(pool, httpcore2.AsyncConnectionPool):
        pool._network_backend = AsyncioBackend()
    return client
