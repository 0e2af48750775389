"""The seed's SSE wire format: every `data:` is a JSON object with a `content` string; sources, reasoning, usage and
errors ride as extra keys on objects whose `content` is empty; the stream ends with `data: [DONE]`.

A client that only prints `content` therefore keeps working whatever else we send.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from json.encoder import encode_basestring  # type: ignore[attr-defined]  # the C string encoder behind json.dumps
from typing import Any, TypeVar

import anyio
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import Message, Receive, Scope, Send

from config import Settings
from rag.pipeline import ChatStream
from rag.types import ChatEvent, DoneEvent, ErrorEvent, ReasoningEvent, SourcesEvent, TokenEvent, UsageEvent

logger = logging.getLogger(__name__)
T = TypeVar("T")

DONE = "[DONE]"
SHUTDOWN_GRACE_SECONDS = 5.0  # less than uvicorn's graceful shutdown timeout (10 s in main.py)
SHUTDOWN_ERROR = {"type": "server_shutting_down", "message": "the server is restarting: ask again in a moment"}


def seed_payload(event: ChatEvent) -> dict[str, Any] | None:
    """The JSON object for one event, or None for the terminating `[DONE]`."""
    match event:
        case TokenEvent(text):
            return {"content": text}
        case SourcesEvent(hits):
            return {"content": "", "sources": [hit.as_dict() for hit in hits]}
        case ReasoningEvent(text):
            return {"content": "", "reasoning": text}
        case UsageEvent(usage):
            return {"content": "", "usage": usage.as_dict()}
        case ErrorEvent(type_, message):
            return {"content": "", "error": {"type": type_, "message": message}}
        case DoneEvent():
            return None


Frame = bytes | ServerSentEvent  # what an SSE response sends: a frame already encoded, or an event to encode


def data_frame(json_text: str) -> bytes:
    """One event whose data is `json_text`, byte for byte what `ServerSentEvent(data=json_text).encode()` gives.

    Serialised JSON never holds a raw line break (json escapes every control character), so the data is one
    `data:` line. Per token this skips building an event object and sse-starlette's line splitting; any text with a
    line break goes through sse-starlette's encoding."""
    if "\n" in json_text or "\r" in json_text:
        return ServerSentEvent(data=json_text).encode()
    try:
        return b"data: " + json_text.encode() + b"\r\n\r\n"
    except UnicodeEncodeError:
        # A lone surrogate (half of an emoji that an upstream split across two chunks as `\ud83d` and `\ude42`) has
        # no UTF-8 form; inside a JSON string its escape is valid, and a client's parser gets the same character.
        return b"data: " + json_text.encode("utf-8", "backslashreplace") + b"\r\n\r\n"


def json_frame(payload: dict[str, Any]) -> bytes:
    """One event whose data is `payload` as JSON (non-ASCII characters as they are)."""
    return data_frame(json.dumps(payload, ensure_ascii=False))


def json_string(text: str) -> str:
    """`text` as a JSON string literal, exactly as `json.dumps(..., ensure_ascii=False)` writes it inside an
    object, for the per-token frames that splice it into a fixed template instead of serialising a dict."""
    return encode_basestring(text)  # type: ignore[no-any-return]


def as_is(event: Frame) -> Frame:
    return event


async def until_shutdown(
    events: AsyncIterator[T],
    render: Callable[[T], Frame | None],
    shutdown: anyio.Event,
    farewell: Sequence[Frame],
) -> AsyncIterator[Frame]:
    """Relay `events`, each rendered by `render` (None: nothing to send), until the server shuts down; then stop
    them (closing the model's stream) and send `farewell`, so that a client learns the answer ended, and why,
    instead of seeing the connection drop.

    The flag is looked at between events: no task or future per token. Rendering here, rather than in a generator
    of its own, saves a generator hop per token. sse-starlette sets the flag, then waits SHUTDOWN_GRACE_SECONDS
    before cancelling; a model that sends nothing at all in that time has its stream cancelled without the farewell
    (the connection closes, and the model's stream with it)."""
    try:
        async for event in events:
            if shutdown.is_set():
                break
            frame = render(event)
            if frame is not None:
                yield frame
        else:
            return
        for goodbye in farewell:
            yield goodbye
    finally:
        await events.aclose()  # type: ignore[attr-defined]


def seed_event(event: ChatEvent) -> bytes:
    if type(event) is TokenEvent:  # nearly every event: the same bytes as the general path, spliced
        return data_frame('{"content": ' + json_string(event.text) + "}")
    payload = seed_payload(event)
    return data_frame(DONE) if payload is None else json_frame(payload)


class SendWatchdog:
    """Drops streams whose client stopped reading: one task for the whole process, not one per stream.

    Each stream registers itself while it runs; every `period` seconds the watchdog looks at each one's send in
    progress, and cancels the stream whose send has been blocked longer than `limit`: its events' generator is
    closed, and with it the model's stream. A task (and task group) per stream cost memory and CPU on every
    request (measured with `bench/load.py --slow-streams`); one pass over 1,000 streams is a millisecond a second."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.period = min(1.0, limit / 4)
        self._streams: dict[WatchedEventSource, anyio.CancelScope] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sse-send-watchdog")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @contextlib.contextmanager
    def watching(self, stream: WatchedEventSource) -> Iterator[None]:
        with anyio.CancelScope() as scope:
            self._streams[stream] = scope
            try:
                yield
            finally:
                del self._streams[stream]

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            now = time.monotonic()
            for stream, scope in list(self._streams.items()):
                started = stream.send_started
                if started is not None and now - started > self.limit and not scope.cancel_called:
                    logger.info("a client stopped reading for %.0f s: its stream is dropped", self.limit)
                    scope.cancel()


class WatchedEventSource(EventSourceResponse):
    """sse-starlette's response, its sends watched by the process's `SendWatchdog` instead of a cancel scope (and
    its timer) per event: on the relay bench that timer was about a quarter of the service's CPU per token. A send
    blocked longer than the watchdog's limit (a client that stopped reading) still ends the stream. This overrides
    sse-starlette's `_send_with_timeout` (a private method of the pinned 3.7.0)."""

    send_started: float | None = None  # when the send in progress began

    def __init__(self, *args: Any, watchdog: SendWatchdog, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._watchdog = watchdog

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        self.send_started = time.monotonic()
        await send(message)
        self.send_started = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with self._watchdog.watching(self):
            await super().__call__(scope, receive, send)


def event_source(
    events: AsyncIterator[Any],
    settings: Settings,
    watchdog: SendWatchdog,
    farewell: Sequence[Frame],
    render: Callable[[Any], Frame | None] = as_is,
) -> EventSourceResponse:
    """An SSE response of `events` (rendered by `render`) with keep-alive pings, a send timeout against stalled
    clients, no proxy buffering, and `farewell` sent when the server shuts down mid-stream."""
    shutdown = anyio.Event()  # sse-starlette sets it when uvicorn is asked to exit
    return WatchedEventSource(
        until_shutdown(events, render, shutdown, farewell),
        ping=settings.sse_ping_seconds,
        watchdog=watchdog,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        shutdown_event=shutdown,
        shutdown_grace_period=SHUTDOWN_GRACE_SECONDS,
    )


def seed_sse_response(stream: ChatStream, settings: Settings, watchdog: SendWatchdog) -> EventSourceResponse:
    """The answer in the seed's format. Closing the events (client gone, shutdown) closes the model's stream."""
    farewell: list[Frame] = [json_frame({"content": "", "error": SHUTDOWN_ERROR}), data_frame(DONE)]
    return event_source(stream.events(), settings, watchdog, farewell, render=seed_event)
