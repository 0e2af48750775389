"""The chat pipeline: a request in, an async stream of typed events out.

`ChatPipeline.start` does everything that can fail with a clean status code before a response begins: it checks
the conversation, retrieves, builds the prompt and opens the model's stream, waiting for its first delta (so a 429,
a timeout or a refused connection upstream surfaces here, as an exception). The `ChatStream` it returns then yields
sources, reasoning, tokens, usage and done; a failure from then on becomes one `ErrorEvent` before `DoneEvent`.
Closing the stream (or cancelling whoever iterates it) closes the model's stream, which stops the generation.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from llm.errors import LLMError
from llm.types import ChatModel, Delta, GenerationOptions, Message, Usage
from rag.errors import InvalidRequest
from rag.filters import Filters
from rag.prompt import build_messages
from rag.retriever import Retriever
from rag.types import (
    ChatEvent,
    DoneEvent,
    ErrorEvent,
    Hit,
    ReasoningEvent,
    SourcesEvent,
    TokenEvent,
    UsageEvent,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChatRequest:
    messages: list[Message]
    top_k: int | None = None
    filters: Filters | None = None
    options: GenerationOptions = field(default_factory=GenerationOptions)


@dataclass
class Answer:
    """A whole answer, for clients that asked not to stream."""

    content: str
    reasoning: str
    sources: list[Hit]
    usage: Usage | None
    finish_reason: str | None
    error: ErrorEvent | None = None


def retrieval_query(messages: list[Message]) -> str:
    """The text to retrieve for: the last user message."""
    for message in reversed(messages):
        if message.role == "user":
            return message.content
    raise InvalidRequest("the conversation has no user message")


class ChatStream:
    """The events of one answer. Iterate `events()` once; `aclose()` is safe to call at any time."""

    def __init__(self, hits: list[Hit], first: Delta | None, deltas: AsyncIterator[Delta]) -> None:
        self.hits = hits
        self._first = first
        self._deltas = deltas

    async def events(self) -> AsyncIterator[ChatEvent]:
        yield SourcesEvent(self.hits)
        finish_reason: str | None = None
        try:
            delta = self._first
            while delta is not None:
                if delta.reasoning:
                    yield ReasoningEvent(delta.reasoning)
                if delta.content:
                    yield TokenEvent(delta.content)
                if delta.usage is not None:
                    yield UsageEvent(delta.usage)
                finish_reason = delta.finish_reason or finish_reason
                delta = await anext(self._deltas, None)
        except LLMError as exc:
            logger.warning("model stream failed after it started: %s", exc)
            yield ErrorEvent(exc.error_type, str(exc))
            finish_reason = "error"
        except Exception:
            logger.exception("unexpected failure while streaming an answer")
            yield ErrorEvent("internal_error", "the answer failed unexpectedly")
            finish_reason = "error"
        finally:
            await self.aclose()
        yield DoneEvent(finish_reason)

    async def collect(self) -> Answer:
        content: list[str] = []
        reasoning: list[str] = []
        usage: Usage | None = None
        error: ErrorEvent | None = None
        finish_reason: str | None = None
        async for event in self.events():
            match event:
                case TokenEvent(text):
                    content.append(text)
                case ReasoningEvent(text):
                    reasoning.append(text)
                case UsageEvent(u):
                    usage = u
                case ErrorEvent():
                    error = event
                case DoneEvent(reason):
                    finish_reason = reason
        return Answer("".join(content), "".join(reasoning), self.hits, usage, finish_reason, error)

    async def aclose(self) -> None:
        aclose = getattr(self._deltas, "aclose", None)
        if aclose is not None:
            await aclose()


class ChatPipeline:
    def __init__(self, retriever: Retriever, llm: ChatModel) -> None:
        self.retriever = retriever
        self.llm = llm

    async def start(self, request: ChatRequest) -> ChatStream:
        """Retrieve, build the prompt and open the model's stream; raises before any event is produced."""
        query = retrieval_query(request.messages)
        hits = await self.retriever.retrieve(query, request.top_k, request.filters)
        prompt = build_messages(hits, request.messages)
        deltas = self.llm.stream(prompt, request.options)
        try:
            first = await anext(deltas, None)
        except BaseException:
            await deltas.aclose()  # type: ignore[attr-defined]
            raise
        return ChatStream(hits, first, deltas)
