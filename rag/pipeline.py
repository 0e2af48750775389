"""The chat pipeline: a request in, an async stream of typed events out.

`ChatPipeline.start` does everything that can fail with a clean status code before a response begins: it checks
the conversation, retrieves, builds the prompt and opens the model's stream, waiting for its first delta (so a 429,
a timeout or a refused connection upstream surfaces here, as an exception). The `ChatStream` it returns then yields
sources, reasoning, tokens, usage and done; a failure from then on becomes one `ErrorEvent` before `DoneEvent`.
Closing the stream (or cancelling whoever iterates it) closes the model's stream, which stops the generation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace

from opentelemetry.trace import Span, StatusCode

from llm.errors import LLMError
from llm.tracing import tracer
from llm.types import ChatModel, Delta, GenerationOptions, Message, Usage
from rag.access import Reader
from rag.chats.feedback import AnswerDetails
from rag.chats.sqlite import ChatOwner, Conversations
from rag.errors import InvalidRequest
from rag.filters import Filters
from rag.history import condense_by_rule, fit_history
from rag.prompt import build_messages
from rag.retriever import Retriever
from rag.types import (
    TENANT_KEY,
    ChatEvent,
    ChatObserver,
    DoneEvent,
    ErrorEvent,
    Hit,
    ReasoningEvent,
    SourcesEvent,
    StreamObserver,
    TokenEvent,
    UsageEvent,
)
from rag.usage.meter import Account, Admission, UsageMeter

logger = logging.getLogger(__name__)


Condenser = Callable[[list[Message]], Awaitable[str]]
OnComplete = Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class ChatRef:
    """The stored chat a request belongs to."""

    chat_id: str
    owner: ChatOwner
    title: str | None = None


@dataclass(frozen=True)
class ChatRequest:
    messages: list[Message]
    top_k: int | None = None
    filters: Filters | None = None
    options: GenerationOptions = field(default_factory=GenerationOptions)
    org_id: str | None = None  # when set, only this organisation's documents can be retrieved
    reader: Reader | None = None  # when set, only the documents this user may read (rag/access.py)
    chat: ChatRef | None = None
    account: Account = field(default_factory=Account)  # whom its tokens are counted to (rag/usage/)


async def condense_with_rule(messages: list[Message]) -> str:
    return condense_by_rule(messages)


async def last_user_message(messages: list[Message]) -> str:
    return retrieval_query(messages)


def scoped_filters(filters: Filters | None, org_id: str | None) -> Filters | None:
    """The request's filters, restricted to one organisation; a filter of the client's own on the tenant key is
    replaced, never combined, so that it cannot widen the scope."""
    if org_id is None:
        return filters
    return {**(filters or {}), TENANT_KEY: org_id}


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

    def __init__(
        self,
        hits: list[Hit],
        first: Delta | None,
        deltas: AsyncIterator[Delta],
        show_reasoning: bool = True,
        on_complete: OnComplete | None = None,
        observer: StreamObserver | None = None,
        admission: Admission | None = None,
        model: str = "",
        prompt_chars: int = 0,
    ) -> None:
        self.hits = hits
        self._first = first
        self._deltas = deltas
        self._show_reasoning = show_reasoning
        self._on_complete = on_complete
        self._observer = observer
        # Counted once the answer ends, however it ends: the model's usage, or an estimate from the characters.
        self._admission = admission
        self._model = model
        self._prompt_chars = prompt_chars
        self._usage: Usage | None = None
        self._answer_chars = 0
        self._finish_reason: str | None = None
        # From the first token to the end, ended by aclose() with what the answer counted: no span work per token.
        self._span: Span | None = tracer.start_span("stream", attributes={"llm.model": model})

    def _seen(self, event: ChatEvent) -> ChatEvent:
        # The observer is called inline, not through a generator of its own: a layer of async generator costs
        # more per token than everything the observer does.
        if self._observer is not None:
            self._observer.on_event(event)
        return event

    async def events(self) -> AsyncGenerator[ChatEvent, None]:
        """The answer's events; closing this generator closes the model's stream."""
        seen = self._seen
        finish_reason: str | None = None
        answer: list[str] = []
        try:
            # Inside the try: a consumer that closes this generator at any event closes the model's stream too.
            yield seen(SourcesEvent(self.hits))
            delta = self._first
            while delta is not None:
                if delta.reasoning and self._show_reasoning:
                    yield seen(ReasoningEvent(delta.reasoning))
                if delta.content:
                    answer.append(delta.content)
                    self._answer_chars += len(delta.content)
                    yield seen(TokenEvent(delta.content))
                if delta.usage is not None:
                    self._usage = delta.usage
                    yield seen(UsageEvent(delta.usage))
                finish_reason = self._finish_reason = delta.finish_reason or finish_reason
                delta = await anext(self._deltas, None)
        except LLMError as exc:
            logger.warning("model stream failed after it started: %s", exc)
            yield seen(ErrorEvent(exc.error_type, str(exc)))
            finish_reason = self._finish_reason = "error"
        except Exception:
            logger.exception("unexpected failure while streaming an answer")
            yield seen(ErrorEvent("internal_error", "the answer failed unexpectedly"))
            finish_reason = self._finish_reason = "error"
        finally:
            await self.aclose()
        if finish_reason != "error" and self._on_complete is not None:
            # Before DoneEvent: a client that saw the end can rely on the turn being stored.
            try:
                await self._on_complete("".join(answer))
            except Exception:
                logger.exception("could not store the conversation turn")
                yield seen(ErrorEvent("storage_error", "the answer could not be saved to the chat history"))
        yield seen(DoneEvent(finish_reason))

    async def collect(self) -> Answer:
        return await collect_events(self.events())

    async def aclose(self) -> None:
        if self._admission is not None:
            self._admission.finish(self._model, self._usage, self._prompt_chars, self._answer_chars)
        if self._span is not None:
            self._end_span(self._span)
            self._span = None
        if self._observer is not None:
            self._observer.close()
        aclose = getattr(self._deltas, "aclose", None)
        if aclose is not None:
            await aclose()

    def _end_span(self, span: Span) -> None:
        span.set_attributes({"rag.answer_chars": self._answer_chars, "llm.finish_reason": self._finish_reason or ""})
        if self._usage is not None:
            span.set_attributes(
                {"llm.prompt_tokens": self._usage.prompt_tokens, "llm.completion_tokens": self._usage.completion_tokens}
            )
        if self._finish_reason == "error":
            span.set_status(StatusCode.ERROR)
        span.end()


async def collect_events(events: AsyncIterator[ChatEvent]) -> Answer:
    """A whole answer from its events."""
    content: list[str] = []
    reasoning: list[str] = []
    sources: list[Hit] = []
    usage: Usage | None = None
    error: ErrorEvent | None = None
    finish_reason: str | None = None
    async for event in events:
        match event:
            case TokenEvent(text):
                content.append(text)
            case ReasoningEvent(text):
                reasoning.append(text)
            case SourcesEvent(hits):
                sources = hits
            case UsageEvent(u):
                usage = u
            case ErrorEvent():
                error = event
            case DoneEvent(reason):
                finish_reason = reason
    return Answer("".join(content), "".join(reasoning), sources, usage, finish_reason, error)


class ChatPipeline:
    def __init__(
        self,
        retriever: Retriever,
        llm: ChatModel,
        *,
        conversations: Conversations | None = None,
        condense: Condenser = condense_with_rule,
        history_budget_tokens: int = 2000,
        show_reasoning: bool = True,
        observer: ChatObserver | None = None,
        log_prompts: bool = False,
        usage: UsageMeter | None = None,
    ) -> None:
        self.retriever = retriever
        self.llm = llm
        self.conversations = conversations
        self.condense = condense
        self.history_budget_tokens = history_budget_tokens
        self.show_reasoning = show_reasoning
        self.observer = observer
        self.log_prompts = log_prompts  # questions and answers are user data: off unless debugging
        self.usage = usage  # counts each answer's tokens, and refuses one over a quota before it costs anything

    async def _with_stored_history(self, request: ChatRequest) -> list[Message]:
        """The request's conversation; when it names a chat and sends no earlier turns, the stored ones first."""
        messages = request.messages
        if request.chat is None or self.conversations is None:
            return messages
        stored = await self.conversations.history(request.chat.chat_id, request.chat.owner)  # checks ownership
        if sum(1 for m in messages if m.role != "system") > 1:
            return messages  # the client sent its own history: it wins
        system = [m for m in messages if m.role == "system"]
        return [*system, *stored, *(m for m in messages if m.role != "system")]

    def _saver(self, request: ChatRequest, question: str, details: AnswerDetails) -> OnComplete | None:
        if request.chat is None or self.conversations is None:
            return None
        conversations, chat = self.conversations, request.chat

        async def save(answer: str) -> None:
            turn = [Message("user", question), Message("assistant", answer)]
            await conversations.append(chat.chat_id, chat.owner, turn, chat.title, details)

        return save

    async def start(self, request: ChatRequest) -> ChatStream:
        """Retrieve, build the prompt and open the model's stream; raises before any event is produced."""
        started_at = time.monotonic()
        question = retrieval_query(request.messages)
        if not question.strip():
            raise InvalidRequest("the question is empty")
        admission = await self.usage.admit(request.account) if self.usage is not None else None
        try:
            return await self._start(request, question, started_at, admission)
        except BaseException:
            if admission is not None:
                admission.cancel()
            raise

    async def _start(
        self, request: ChatRequest, question: str, started_at: float, admission: Admission | None
    ) -> ChatStream:
        messages = await self._with_stored_history(request)
        query = await self.condense(messages)
        if self.log_prompts:
            logger.info("question %r, retrieval query %r", question, query)
        filters = scoped_filters(request.filters, request.org_id)
        hits = await self.retriever.retrieve(query or question, request.top_k, filters, reader=request.reader)
        with tracer.start_as_current_span("prompt") as span:
            prompt = build_messages(hits, fit_history(messages, self.history_budget_tokens))
            prompt_chars = sum(len(m.content) for m in prompt)
            span.set_attributes({"rag.messages": len(prompt), "rag.prompt_chars": prompt_chars})
        options = request.options
        if request.chat is not None and options.route_key is None:  # a chat's answers may stay on one upstream
            options = replace(options, route_key=request.chat.chat_id)
        model = options.model or self.llm.model
        deltas = self.llm.stream(prompt, options)
        # Up to the first token: its duration is the time to first token. Current while the model's stream opens,
        # so that the upstream attempts are its children and the request to the upstream carries it on.
        with tracer.start_as_current_span("llm") as span:
            span.set_attribute("llm.model", model)
            try:
                first = await anext(deltas, None)
            except BaseException as exc:
                await deltas.aclose()  # type: ignore[attr-defined]
                if isinstance(exc, LLMError) and self.observer is not None:
                    self.observer.start_failed(exc.error_type)
                raise
        observation = self.observer.stream_opened(started_at) if self.observer is not None else None
        # What produced the answer, kept with it in the chat: feedback on it is read beside these (rag/chats/feedback).
        details = AnswerDetails.of(
            hits, query or question, self.retriever.mode, request.top_k or self.retriever.top_k, model
        )
        return ChatStream(
            hits,
            first,
            deltas,
            self.show_reasoning,
            self._saver(request, question, details),
            observation,
            admission,
            model,
            prompt_chars,
        )
