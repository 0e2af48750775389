"""Pipeline events to and from compact JSON values, the form a resumable answer's events are kept in: a token is its
bare text (nearly every event, so a batch costs little more than the answer's own text), any other event an object
with one short key."""

from __future__ import annotations

from typing import Any

from llm.types import Usage
from rag.types import ChatEvent, Chunk, DoneEvent, ErrorEvent, Hit, ReasoningEvent, SourcesEvent, TokenEvent, UsageEvent


def encode(event: ChatEvent) -> str | dict[str, Any]:
    match event:
        case TokenEvent(text):
            return text
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


def decode(data: str | dict[str, Any]) -> ChatEvent:
    if isinstance(data, str):
        return TokenEvent(data)
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
