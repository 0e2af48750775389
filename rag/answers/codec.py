"""Pipeline events to and from compact JSON objects, the form a resumable answer's events are kept in."""

from __future__ import annotations

from typing import Any

from llm.types import Usage
from rag.types import ChatEvent, Chunk, DoneEvent, ErrorEvent, Hit, ReasoningEvent, SourcesEvent, TokenEvent, UsageEvent


def encode(event: ChatEvent) -> dict[str, Any]:
    match event:
        case TokenEvent(text):
            return {"t": text}
        case ReasoningEvent(text):
            return {"r": text}
        case SourcesEvent(hits):
            return {"s": [hit.as_dict() for hit in hits]}
        case UsageEvent(usage):
            return {"u": [usage.prompt_tokens, usage.completion_tokens]}
        case ErrorEvent(type_, message):
            return {"e": [type_, message]}
        case DoneEvent(reason):
            return {"d": reason}


def decode(data: dict[str, Any]) -> ChatEvent:
    if "t" in data:
        return TokenEvent(data["t"])
    if "r" in data:
        return ReasoningEvent(data["r"])
    if "s" in data:
        return SourcesEvent([_hit(hit) for hit in data["s"]])
    if "u" in data:
        return UsageEvent(Usage(*data["u"]))
    if "e" in data:
        return ErrorEvent(*data["e"])
    return DoneEvent(data["d"])


def _hit(body: dict[str, Any]) -> Hit:
    chunk = Chunk(body["id"], body["document_id"], body["text"], body["metadata"])
    return Hit(chunk, body["score"], tuple(body["found_by"]), body.get("keyword_score"), body.get("fused_score"))
