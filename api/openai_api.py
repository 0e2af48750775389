"""The OpenAI-compatible API: our RAG pipeline behind OpenAI's wire format, for tools that already speak it
(the official SDKs, LangChain's ChatOpenAI, Open WebUI...).

`POST /v1/chat/completions` streams `chat.completion.chunk` objects as OpenAI does (one id and `created` for the
whole stream, the role in the first delta, `finish_reason` in the last, an optional usage chunk, `data: [DONE]`),
with reasoning as `delta.reasoning_content` and the retrieved sources as an extra `sources` field on the last chunk.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.auth import PrincipalDep
from api.chat import build_chat_request
from api.deps import ServicesDep
from api.errors import openai_error_response
from api.openai_schemas import ChatCompletionBody, EmbeddingsBody
from api.security import RateLimited
from api.sse import DONE, SHUTDOWN_ERROR, data_frame, event_source, json_frame, json_string
from llm.router import UpstreamRouter
from llm.tracing import tracer
from llm.types import Usage
from rag.errors import InvalidRequest
from rag.history import estimate_tokens
from rag.types import ChatEvent, DoneEvent, ErrorEvent, Hit, ReasoningEvent, SourcesEvent, TokenEvent, UsageEvent

router = APIRouter(prefix="/v1", tags=["openai"])

OWNER = "rag-service"
MAX_EMBEDDING_INPUTS = 2048


class CompletionIds:
    """What every chunk of one completion shares."""

    def __init__(self, model: str) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }

    def delta(self, delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> dict[str, Any]:
        return self.chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}], **extra)


def _sources(hits: list[Hit]) -> list[dict[str, Any]]:
    return [hit.as_dict() for hit in hits]


def _finish(reason: str | None) -> str:
    return reason if reason in ("stop", "length", "content_filter") else "stop"


class OpenAIChunks:
    """Renders the pipeline's events as OpenAI's stream of chunks, ending with `[DONE]`: called once per event by
    the SSE response (a generator of its own would cost a hop per token). None: the event sends nothing."""

    def __init__(self, ids: CompletionIds, include_usage: bool) -> None:
        self._ids = ids
        self._include_usage = include_usage
        # A token's chunk is the same JSON every time but for its text: serialised once, the text spliced in.
        self._content = _template(ids, "content")
        self._reasoning = _template(ids, "reasoning_content")
        self._hits: list[Hit] = []
        self._usage: Usage | None = None
        self._ended = False

    def __call__(self, event: ChatEvent) -> bytes | None:
        if type(event) is TokenEvent:
            head, tail = self._content
            return data_frame(head + json_string(event.text) + tail)
        if self._ended:
            return None
        match event:
            case SourcesEvent(found):  # always the first event: the chunk that opens the assistant's message
                self._hits = found
                return json_frame(self._ids.delta({"role": "assistant", "content": ""}))
            case ReasoningEvent(text):
                head, tail = self._reasoning
                return data_frame(head + json_string(text) + tail)
            case UsageEvent(counted):
                self._usage = counted
            case ErrorEvent(type_, message):
                # OpenAI's SDKs raise an APIError on a stream event that carries "error".
                self._ended = True
                error = {"message": message, "type": "server_error", "param": None, "code": type_}
                return json_frame({"error": error}) + data_frame(DONE)
            case DoneEvent(reason):
                self._ended = True
                frames = json_frame(self._ids.delta({}, _finish(reason), sources=_sources(self._hits)))
                if self._include_usage:
                    frames += json_frame(self._ids.chunk([], usage=(self._usage or Usage(0, 0)).as_dict()))
                return frames + data_frame(DONE)
        return None


def _template(ids: CompletionIds, field: str) -> tuple[str, str]:
    """The JSON of a delta chunk with one text `field`, cut where its text goes. The field's name, with an empty
    string after it, occurs first in the delta: every string before it (id, model) is escaped JSON, whose quotes
    are backslashed."""
    marker = f'"{field}": ""'
    head, tail = json.dumps(ids.delta({field: ""}), ensure_ascii=False).split(marker, 1)
    return head + f'"{field}": ', tail


@router.post("/chat/completions", dependencies=[RateLimited])
async def chat_completions(body: ChatCompletionBody, services: ServicesDep, principal: PrincipalDep):
    """Retrieval-augmented chat completions in OpenAI's format."""
    messages = [m for m in (message.to_message() for message in body.messages) if m is not None]
    served = services.llm.model
    passes_model = services.llm.provider == "openai"
    request = build_chat_request(
        services.settings,
        principal,
        messages,
        top_k=body.top_k,
        filters=body.filters,
        options=body.options(served, passes_model),
        user_id=body.userId,
        org_id=body.orgId,
        chat_id=body.chatId,
        title=body.chatTitle,
    )
    model = body.model if passes_model else served
    stream = await services.pipeline.start(request)
    ids = CompletionIds(model)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        error = {
            "message": SHUTDOWN_ERROR["message"],
            "type": "server_error",
            "param": None,
            "code": SHUTDOWN_ERROR["type"],
        }
        farewell = [json_frame({"error": error}), data_frame(DONE)]
        return event_source(stream.events(), services.streams, farewell, render=OpenAIChunks(ids, include_usage))
    answer = await stream.collect()
    if answer.error is not None:
        return openai_error_response(502, answer.error.type, answer.error.message)
    message: dict[str, Any] = {"role": "assistant", "content": answer.content}
    if answer.reasoning:
        message["reasoning_content"] = answer.reasoning
    return {
        "id": ids.id,
        "object": "chat.completion",
        "created": ids.created,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": _finish(answer.finish_reason)}],
        "usage": (answer.usage or Usage(0, 0)).as_dict(),
        "sources": _sources(answer.sources),
    }


@router.get("/models")
async def list_models(services: ServicesDep) -> dict[str, Any]:
    """The chat models the service answers with (each upstream's, with LLM_UPSTREAMS), and its embedding model."""
    chat_models = services.llm.models if isinstance(services.llm, UpstreamRouter) else [services.llm.model]
    models = [*chat_models, services.embedder.model_name]
    return {
        "object": "list",
        "data": [{"id": name, "object": "model", "created": 0, "owned_by": OWNER} for name in dict.fromkeys(models)],
    }


@router.post("/embeddings")
async def embeddings(body: EmbeddingsBody, services: ServicesDep) -> JSONResponse:
    """Embed texts with the service's own embedder (the vectors its store holds)."""
    texts = [body.input] if isinstance(body.input, str) else body.input
    if len(texts) > MAX_EMBEDDING_INPUTS:
        raise InvalidRequest(f"at most {MAX_EMBEDDING_INPUTS} inputs per request")
    with tracer.start_as_current_span("embed") as span:
        span.set_attributes({"rag.embedder.model": services.embedder.model_name, "rag.texts": len(texts)})
        vectors = await services.embedder.embed(texts)
    data = []
    for i, vector in enumerate(vectors):
        if body.encoding_format == "base64":
            encoded: Any = base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
        else:
            encoded = vector.tolist()
        data.append({"object": "embedding", "index": i, "embedding": encoded})
    tokens = sum(estimate_tokens(text) for text in texts)
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "model": services.embedder.model_name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )
