"""Stored conversations: list a user's chats, read one, delete one. A user never sees another user's chat: it
answers 404, exactly as a chat that does not exist."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.auth import Principal, PrincipalDep
from api.deps import ServicesDep
from api.schemas import ChatDetail, ChatList, ChatSummaryBody, ErrorBody, StoredMessageBody
from rag.chats.sqlite import ChatOwner, ChatSummary
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
    chat, messages = await services.conversations.get(chatId, owner_of(principal, userId, orgId))
    return ChatDetail(
        **_summary(chat),
        messages=[StoredMessageBody(role=m.role, content=m.content, createdAt=m.created_at) for m in messages],
    )


@router.delete("/{chatId}", status_code=204, responses={404: {"model": ErrorBody}})
async def delete_chat(
    chatId: str, services: ServicesDep, principal: PrincipalDep, userId: UserId = None, orgId: OrgId = None
) -> None:
    await services.conversations.delete(chatId, owner_of(principal, userId, orgId))
