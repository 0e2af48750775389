"""Builds the messages sent to the LLM: a system prompt carrying the numbered sources, then the conversation."""

from __future__ import annotations

from llm.reasoning import strip_reasoning
from llm.types import Message
from rag.types import Hit

SYSTEM_PROMPT = (
    "You are a helpful assistant that answers questions using the numbered context passages below. "
    "Base your answer on the context, cite passages by their number like [1], and say plainly when the "
    "context does not contain the answer."
)
NO_CONTEXT = "No context passages matched this question; answer from general knowledge and say so."


def source_label(hit: Hit) -> str:
    """How a passage is named in the prompt: its metadata's title or source when it has one, else its document id;
    with its page when it came from a PDF and its location when its format has one, so that the model can cite
    "report.pdf, p. 12" or "deck.pptx, slide 3"."""
    meta = hit.chunk.metadata
    name = next(
        (meta[k] for k in ("title", "source", "filename", "url") if isinstance(meta.get(k), str) and meta[k]), None
    )
    label = name or hit.chunk.document_id
    page = meta.get("page")
    if isinstance(page, int) and not isinstance(page, bool):
        label = f"{label}, p. {page}"
    location = meta.get("location")
    return f"{label}, {location}" if isinstance(location, str) and location else label


def format_context(hits: list[Hit]) -> str:
    if not hits:
        return NO_CONTEXT
    return "\n\n".join(f"[{n}] (source: {source_label(hit)})\n{hit.chunk.text}" for n, hit in enumerate(hits, 1))


def build_messages(hits: list[Hit], conversation: list[Message]) -> list[Message]:
    """Our system prompt (plus any system messages the client sent), then the user/assistant turns in order."""
    client_system = [m.content for m in conversation if m.role == "system"]
    system = "\n\n".join([SYSTEM_PROMPT, *client_system, "Context:\n" + format_context(hits)])
    turns = [
        Message(m.role, strip_reasoning(m.content)) if m.role == "assistant" else m
        for m in conversation
        if m.role != "system"
    ]
    return [Message("system", system), *turns]
