"""The seed's SSE wire format: every `data:` is a JSON object with a `content` string; sources, reasoning, usage and
errors ride as extra keys on objects whose `content` is empty; the stream ends with `data: [DONE]`.

A client that only prints `content` therefore keeps working whatever else we send.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Sequence
from json.encoder import encode_basestring  # type: ignore[attr-defined]  # the C string encoder behind json.dumps
from typing import Any, TypeVar

import anyio
from sse_starlette import EventSourceResponse, ServerSentEvent

from api.sse_streams import StreamSupervisor, SupervisedEventSource
from rag.answers.manager import EventWithId
from rag.pipeline import ChatStream
from rag.types import ChatEvent, DoneEvent, ErrorEvent, ReasoningEvent, SourcesEvent, TokenEvent, UsageEvent

T = TypeVar("T")

DONE = "[DONE]"
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
    of its own, saves a generator hop per token. The stream supervisor sets the flag, then waits its grace period
    (SSE_SHUTDOWN_GRACE_SECONDS in main.py) before cancelling; a model that sends nothing at all in that time has
    its stream cancelled without the farewell (the connection closes, and the model's stream with it)."""
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


def event_source(
    events: AsyncIterator[Any],
    supervisor: StreamSupervisor,
    farewell: Sequence[Frame],
    render: Callable[[Any], Frame | None] = as_is,
) -> EventSourceResponse:
    """An SSE response of `events` (rendered by `render`) with keep-alive pings, a send timeout against stalled
    clients, no proxy buffering, and `farewell` sent when the server shuts down mid-stream (the supervisor pings,
    times out and signals the shutdown)."""
    shutdown = anyio.Event()
    return SupervisedEventSource(
        until_shutdown(events, render, shutdown, farewell),
        supervisor=supervisor,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        shutdown_event=shutdown,
    )


def seed_sse_response(stream: ChatStream, supervisor: StreamSupervisor) -> EventSourceResponse:
    """The answer in the seed's format. Closing the events (client gone, shutdown) closes the model's stream."""
    farewell: list[Frame] = [json_frame({"content": "", "error": SHUTDOWN_ERROR}), data_frame(DONE)]
    return event_source(stream.events(), supervisor, farewell, render=seed_event)


def resumable_renderer(retry_ms: int) -> Callable[[EventWithId], bytes]:
    """Seed-format frames that carry their event's id, the first one also the stream's `retry:`."""
    first = f"retry: {retry_ms}\r\n".encode()

    def render(item: EventWithId) -> bytes:
        nonlocal first
        eid, event = item
        frame = b"id: " + eid.encode() + b"\r\n" + seed_event(event)
        if first:
            frame, first = first + frame, b""
        return frame

    return render


def resumable_sse_response(
    events: AsyncIterator[EventWithId], supervisor: StreamSupervisor, retry_ms: int
) -> EventSourceResponse:
    """A resumable answer's events from wherever the reader joined. Closing this response stops the reading only:
    the answer goes on. At shutdown the stream just ends, with no farewell: the client reconnects (a browser's
    EventSource by itself) and continues through another replica."""
    return event_source(events, supervisor, [], render=resumable_renderer(retry_ms))
