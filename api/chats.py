"""Stored conversations: list a user's chats, read one, delete one; continue or stop a chat's resumable answer; rate
an answer. A user never sees another user's chat: it answers 404, exactly as a chat that does not exist."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response

from api.auth import Principal, PrincipalDep
from api.deps import ServicesDep
from api.schemas import (
    AnswerStatusBody,
    ChatDetail,
    ChatList,
    ChatSummaryBody,
    ErrorBody,
    FeedbackRequest,
    StopResult,
    StoredMessageBody,
)
from api.sse import resumable_sse_response
from rag.answers.manager import owns
from rag.chats.sqlite import ChatNotFound, ChatOwner, ChatSummary
from rag.errors import InvalidRequest

router = APIRouter(prefix="/chats", tags=["chats"])

UserId = Annotated[
    str | None,
    Query(min_length=1, max_length=256, description="The user whose chats these are; a user token's by default."),
]
OrgId = Annotated[str | None, Query(min_length=1, max_length=256, description="Restrict to this organisation.")]


def owner_of(principal: Principal, user_id: str | None, org_id: str | None) -> ChatOwner:
    """The chats' owner: the credential's user and organisation, or those the request names when it may."""
    user_id, org_id = principal.scope(user_id, org_id)
    if user_id is None:
        raise InvalidRequest("userId is required: chats belong to a user")
    return ChatOwner(user_id, org_id)


def _summary(chat: ChatSummary) -> dict:
    return {
        "chatId": chat.chat_id,
        "userId": chat.user_id,
        "orgId": chat.org_id,
        "title": chat.title,
        "createdAt": chat.created_at,
        "updatedAt": chat.updated_at,
    }


@router.get("", response_model=ChatList)
async def list_chats(
    services: ServicesDep,
    principal: PrincipalDep,
    userId: UserId = None,
    orgId: OrgId = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> ChatList:
    """A user's chats, most recently updated first."""
    chats = await services.conversations.list_chats(owner_of(principal, userId, orgId), limit, offset)
    return ChatList(chats=[ChatSummaryBody(**_summary(c)) for c in chats])


@router.get("/{chatId}", response_model=ChatDetail, responses={404: {"model": ErrorBody}})
async def get_chat(
    chatId: str, services: ServicesDep, principal: PrincipalDep, userId: UserId = None, orgId: OrgId = None
) -> ChatDetail:
    owner = owner_of(principal, userId, orgId)
    run = await services.answers.current(chatId)
    try:
        chat, messages = await services.conversations.get(chatId, owner)
    except ChatNotFound:
        if run is None or not owns(run, owner):
            raise
        # A chat's first answer, running or just ended without a stored turn (stopped, failed): the chat is stored
        # with its first complete turn.
        chat = ChatSummary(chatId, run.user_id, run.org_id, run.question[:80], run.started_at, run.started_at)
        messages = []
    answer = (
        AnswerStatusBody(status=run.status, question=run.question, startedAt=run.started_at, endedAt=run.ended_at)
        if run is not None and owns(run, owner)
        else None
    )
    return ChatDetail(
        **_summary(chat),
        messages=[
            StoredMessageBody(role=m.role, content=m.content, createdAt=m.created_at, rating=m.rating)  # type: ignore[arg-type]
            for m in messages
        ],
        answer=answer,
    )


@router.delete("/{chatId}", status_code=204, responses={404: {"model": ErrorBody}})
async def delete_chat(
    chatId: str, services: ServicesDep, principal: PrincipalDep, userId: UserId = None, orgId: OrgId = None
) -> None:
    owner = owner_of(principal, userId, orgId)
    stopped = await services.answers.forget_chat(chatId, owner)
    try:
        await services.conversations.delete(chatId, owner)
    except ChatNotFound:
        if not stopped:  # a first answer, stopped before its chat was stored: nothing more to delete
            raise
    services.purger.deleted()


@router.get(
    "/{chatId}/stream",
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "The answer's events after Last-Event-ID"},
        204: {"description": "No answer is running and none ended lately, or the client has seen all of it"},
        404: {"model": ErrorBody},
    },
)
async def resume_answer(
    chatId: str,
    services: ServicesDep,
    principal: PrincipalDep,
    userId: UserId = None,
    orgId: OrgId = None,
    last_event_id: Annotated[
        str | None, Query(max_length=100, description="For clients that cannot set the Last-Event-ID header.")
    ] = None,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID", max_length=100)] = None,
):
    """Continue the chat's running (or just-ended) resumable answer after the event named by `Last-Event-ID`, in
    the same SSE format; from its beginning without one. A browser's EventSource reconnecting by itself lands here."""
    events = await services.answers.resume(
        chatId, owner_of(principal, userId, orgId), last_event_id_header or last_event_id
    )
    if events is None:
        return Response(status_code=204)
    return resumable_sse_response(events, services.streams, services.settings.sse_retry_ms)


@router.post("/{chatId}/stop", response_model=StopResult, responses={404: {"model": ErrorBody}})
async def stop_answer(
    chatId: str, services: ServicesDep, principal: PrincipalDep, userId: UserId = None, orgId: OrgId = None
) -> StopResult:
    """Stop the chat's running answer, on whichever replica produces it; its upstream request is closed. Asking
    when none runs is not an error: `stopped` is false."""
    stopped = await services.answers.stop(chatId, owner_of(principal, userId, orgId))
    return StopResult(chatId=chatId, stopped=stopped)


@router.post("/{chatId}/feedback", responses={404: {"model": ErrorBody}, 422: {"model": ErrorBody}})
async def rate_answer(
    chatId: str,
    body: FeedbackRequest,
    services: ServicesDep,
    principal: PrincipalDep,
    userId: UserId = None,
    orgId: OrgId = None,
) -> dict[str, Any]:
    """Rate an answer of the chat, up or down (the last answer unless `messageIndex` names another); rating it again
    replaces the rating. Kept with the answer, its question and what produced it (its sources, mode, `top_k`,
    model); an organisation's admin reads it at GET /api/v1/feedback."""
    feedback = await services.conversations.rate(
        chatId, owner_of(principal, userId, orgId), body.rating, body.reason, body.comment, body.messageIndex
    )
    return feedback.as_dict()
