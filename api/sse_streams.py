"""Open SSE streams, watched by one task for the whole process instead of four tasks per stream.

sse-starlette's `EventSourceResponse` runs every stream in a task group of its own: the stream, a ping timer, a
shutdown listener and a disconnect listener, four anyio tasks and a cancel scope to tear down. At 50 simultaneous
one-token answers that was about a fifth of the service's CPU per request (`bench/relay.py`, 3.5 against 2.7 ms
when the stream ran alone). Here the stream runs in the request's own task, and:

- one plain asyncio task per stream waits for the client's `http.disconnect` (the ASGI 2.3 that uvicorn speaks
  drops sends after a disconnect without an error, so only `receive()` tells);
- the process's `StreamSupervisor` looks at every stream once per tick. It sends a ping comment on a stream that
  sent nothing for the ping interval, and cancels a stream whose send has been blocked longer than the send timeout
  (a client that stopped reading). On server shutdown, it sets every stream's shutdown event, so that the stream can
  say goodbye, and cancels those still open after the grace period.

The response is still sse-starlette's: its headers, encoding, HEAD answer, and the cleanup of the body iterator
when a send fails. This module overrides two of its methods, `_send_with_timeout` and `__call__`, of the pinned
3.7.0, and waits for the shutdown signal through its `_listen_for_exit_signal`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import anyio
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.event import ensure_bytes
from starlette.types import Message, Receive, Scope, Send

logger = logging.getLogger(__name__)


class SupervisedEventSource(EventSourceResponse):
    """An SSE response watched by the process's `StreamSupervisor` (see the module's docstring)."""

    send_started: float | None = None  # when the send in progress began; None while none is
    last_sent: float = 0.0  # when the stream began, or its last send ended: pings go out after a quiet interval
    _ping_task: asyncio.Task[None] | None = None
    _asgi_send: Send | None = None

    def __init__(self, *args: Any, supervisor: StreamSupervisor, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._supervisor = supervisor

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        # No cancel scope and timer per send: the supervisor looks at `send_started` instead.
        self.send_started = time.monotonic()
        await send(message)
        self.send_started = None
        self.last_sent = time.monotonic()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"].upper() == "HEAD":
            await super().__call__(scope, receive, send)  # no stream to supervise
            return
        self.last_sent = time.monotonic()
        self._asgi_send = send
        with self._supervisor.watching(self) as cancel_scope:
            listener = asyncio.get_running_loop().create_task(self._await_disconnect(receive, cancel_scope))
            try:
                await self._stream_response(send)
            finally:
                self.active = False  # no ping after the stream ended
                listener.cancel()
                if self._ping_task is not None:
                    self._ping_task.cancel()  # one still blocked on a client that stopped reading

    async def _await_disconnect(self, receive: Receive, cancel_scope: anyio.CancelScope) -> None:
        try:
            while self.active:
                message = await receive()
                if message["type"] == "http.disconnect":
                    break
            else:
                return
        except Exception:  # a transport that cannot tell any more: treat it as gone
            logger.debug("waiting for the client's disconnect failed", exc_info=True)
        self.active = False
        cancel_scope.cancel()

    def ping(self) -> None:
        """Send one keep-alive comment, in a task of its own (the supervisor must not wait on a slow client)."""
        if self._asgi_send is not None and (self._ping_task is None or self._ping_task.done()):
            self._ping_task = asyncio.get_running_loop().create_task(self._send_ping(self._asgi_send))

    async def _send_ping(self, send: Send) -> None:
        frame = ensure_bytes(ServerSentEvent(comment=f"ping - {datetime.now(UTC)}", sep=self.sep), self.sep)
        async with self._send_lock:  # sse-starlette sends the final message under this lock, `active` already False
            if self.active:
                message = {"type": "http.response.body", "body": frame, "more_body": True}
                try:
                    await self._send_with_timeout(send, message)
                except Exception:  # the stream's own send fails the same way, and reports it
                    logger.debug("a keep-alive ping could not be sent", exc_info=True)


class StreamSupervisor:
    """Pings, drops stalled readers and ends the open SSE streams of this process (see the module's docstring).

    A pass over 1,000 streams takes about a millisecond; it runs once a second, or four times per ping interval or
    send timeout when those are shorter (tests use a 1 s ping)."""

    def __init__(self, send_timeout: float, ping_interval: float, shutdown_grace: float) -> None:
        self.send_timeout = send_timeout
        self.ping_interval = ping_interval
        self.shutdown_grace = shutdown_grace
        self.period = min(1.0, send_timeout / 4, ping_interval / 4)
        self._streams: dict[SupervisedEventSource, anyio.CancelScope] = {}
        self._shutdown_deadline: float | None = None  # set when the server was asked to exit
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._tick_forever(), name="sse-stream-supervisor"),
            asyncio.create_task(self._await_exit_signal(), name="sse-exit-signal"),
        ]

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @contextlib.contextmanager
    def watching(self, stream: SupervisedEventSource) -> Iterator[anyio.CancelScope]:
        """Supervise `stream` while the block runs; the scope yielded is what the supervisor cancels."""
        with anyio.CancelScope() as scope:
            self._streams[stream] = scope
            if self._shutdown_deadline is not None:
                _ask_to_end(stream)
            try:
                yield scope
            finally:
                del self._streams[stream]

    def _tick(self, now: float) -> None:
        shutdown_over = self._shutdown_deadline is not None and now > self._shutdown_deadline
        for stream, scope in list(self._streams.items()):
            if scope.cancel_called:
                continue
            started = stream.send_started
            if started is not None and now - started > self.send_timeout:
                logger.info("a client stopped reading for %.0f s: its stream is dropped", self.send_timeout)
                scope.cancel()
            elif shutdown_over:
                scope.cancel()  # it had its grace period to say goodbye
            elif started is None and stream.active and now - stream.last_sent >= self.ping_interval:
                stream.ping()

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            try:
                self._tick(time.monotonic())
            except Exception:  # a bug here must not leave every later stream unsupervised
                logger.exception("the SSE stream supervisor failed one pass")

    async def _await_exit_signal(self) -> None:
        # sse-starlette's shutdown detection: its patch of uvicorn's exit handler, or uvicorn's own flag.
        await EventSourceResponse._listen_for_exit_signal()
        self.begin_shutdown()

    def begin_shutdown(self) -> None:
        """Ask every open stream, and every stream that opens from now on, to end; cancel them after the grace."""
        self._shutdown_deadline = time.monotonic() + self.shutdown_grace
        for stream in list(self._streams):
            _ask_to_end(stream)


def _ask_to_end(stream: SupervisedEventSource) -> None:
    if stream._shutdown_event is not None:
        stream._shutdown_event.set()  # the events' generator sends its farewell and stops
