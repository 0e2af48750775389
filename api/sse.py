"""The seed's SSE wire format: every `data:` is a JSON object with a `content` string; sources, reasoning, usage and
errors ride as extra keys on objects whose `content` is empty; the stream ends with `data: [DONE]`.

A client that only prints `content` therefore keeps working whatever else we send.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from sse_starlette import EventSourceResponse, ServerSentEvent

from config import Settings
from rag.pipeline import ChatStream
from rag.types import ChatEvent, DoneEvent, ErrorEvent, ReasoningEvent, SourcesEvent, TokenEvent, UsageEvent

DONE = "[DONE]"


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


async def _seed_events(stream: ChatStream) -> AsyncIterator[ServerSentEvent]:
    try:
        async for event in stream.events():
            payload = seed_payload(event)
            data = DONE if payload is None else json.dumps(payload, ensure_ascii=False)
            yield ServerSentEvent(data=data)
    finally:
        # Runs when the client goes away too (the task is cancelled): the model's stream is closed with it.
        await stream.aclose()


def event_source(events: AsyncIterator[ServerSentEvent], settings: Settings) -> EventSourceResponse:
    """An SSE response with keep-alive pings, a send timeout against stalled clients and no proxy buffering."""
    return EventSourceResponse(
        events,
        ping=settings.sse_ping_seconds,
        send_timeout=settings.sse_send_timeout,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def seed_sse_response(stream: ChatStream, settings: Settings) -> EventSourceResponse:
    return event_source(_seed_events(stream), settings)
