"""`POST /api/v1/chat`: retrieval-augmented chat, streamed as the seed's SSE or returned whole; and `POST /stream`,
the same for request bodies of the Elasticsearch services we replace."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.auth import Principal, PrincipalDep
from api.deps import Services, ServicesDep
from api.errors import error_response
from api.limits import check_conversation
from api.schemas import ChatAnswer, ChatBody, ErrorBody, LegacyStreamBody, Source, UsageBody
from api.security import RateLimited
from api.sse import resumable_sse_response, seed_sse_response
from config import Settings
from llm.types import GenerationOptions, Message
from rag.chats.sqlite import ChatOwner
from rag.errors import InvalidRequest
from rag.pipeline import Answer, ChatRef, ChatRequest, collect_events
from rag.usage.meter import Account

router = APIRouter(tags=["chat"])
legacy_router = APIRouter(tags=["chat"])

_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (403, 422, 429, 502, 504)}
_SSE_OR_JSON: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "SSE stream, or JSON when stream=false"}
}


def build_chat_request(
    settings: Settings,
    principal: Principal,
    messages: list[Message],
    *,
    top_k: int | None = None,
    filters: dict[str, Any] | None = None,
    options: GenerationOptions | None = None,
    user_id: str | None = None,
    org_id: str | None = None,
    chat_id: str | None = None,
    title: str | None = None,
) -> ChatRequest:
    """The pipeline's request from any transport's fields, with the limits and the tenant rule every transport
    shares: the credential's user and organisation win over the request's."""
    check_conversation(settings, messages, top_k)
    user_id, org_id = principal.scope(user_id, org_id)
    if chat_id is not None and user_id is None:
        raise InvalidRequest("chatId needs userId: a chat belongs to a user")
    chat = ChatRef(chat_id, ChatOwner(user_id, org_id), title) if chat_id is not None and user_id is not None else None
    return ChatRequest(
        messages=messages,
        top_k=top_k,
        filters=filters,
        options=options or GenerationOptions(),
        org_id=org_id,
        reader=principal.reader,
        chat=chat,
        account=Account(org_id, user_id, principal.key_id),
    )


def answer_json(answer: Answer) -> ChatAnswer | JSONResponse:
    if answer.error is not None:
        # Not streaming, a half answer is no answer: report the failure as the status it is.
        return error_response(502, answer.error.type, answer.error.message)
    return ChatAnswer(
        content=answer.content,
        sources=[Source.of(hit) for hit in answer.sources],
        usage=UsageBody(**answer.usage.as_dict()) if answer.usage else None,
        reasoning=answer.reasoning or None,
        finish_reason=answer.finish_reason,
    )


async def resumable_answer(services: Services, request: ChatRequest, stream: bool):
    """Start the answer apart from this connection, then follow it: as SSE with event ids, or whole as JSON (the
    answer still ends and is stored if the client leaves while waiting)."""
    run = await services.answers.start(request, services.pipeline.start)
    events = await services.answers.follow(run)
    if stream:
        return resumable_sse_response(events, services.streams, services.settings.sse_retry_ms)
    return answer_json(await collect_events(event async for _, event in events))


@router.post("/chat", response_model=ChatAnswer, responses=_SSE_OR_JSON | _ERRORS, dependencies=[RateLimited])
async def chat(body: ChatBody, services: ServicesDep, principal: PrincipalDep):
    """Ask the last user message against the stored documents."""
    request = build_chat_request(
        services.settings,
        principal,
        [m.to_message() for m in body.messages],
        top_k=body.top_k,
        filters=body.filters,
        options=body.options(),
        user_id=body.userId,
        org_id=body.orgId,
        chat_id=body.chatId,
        title=body.chatTitle,
    )
    if body.resumable:
        return await resumable_answer(services, request, body.stream)
    # Everything that can fail with a status code happens here, before the response starts.
    stream = await services.pipeline.start(request)
    if body.stream:
        return seed_sse_response(stream, services.streams)
    return answer_json(await stream.collect())


@legacy_router.post("/stream", responses=_SSE_OR_JSON | _ERRORS, dependencies=[RateLimited])
@legacy_router.post(
    "/api/v1/stream", responses=_SSE_OR_JSON | _ERRORS, include_in_schema=False, dependencies=[RateLimited]
)
async def legacy_stream(body: LegacyStreamBody, services: ServicesDep, principal: PrincipalDep):
    """The Elasticsearch services' streaming route: their body, our SSE format."""
    request = build_chat_request(
        services.settings,
        principal,
        body.messages(),
        top_k=body.top_k,
        filters=body.filters,
        user_id=body.userId,
        org_id=body.orgId,
        chat_id=body.chatId,
        title=body.chatTitle,
    )
    if body.resumable:
        return await resumable_answer(services, request, stream=True)
    stream = await services.pipeline.start(request)
    return seed_sse_response(stream, services.streams)
