"""WebSocket chat (`/api/v1/ws/chat`, and `/ws_chat` as the Elasticsearch services named it).

One connection serves many questions in turn. The client sends JSON frames:
    {"question": "...", "userId": "...", "orgId": "...", "chatId": "...", "history": [...], "stream": true}
    (or "messages" instead of "question"/"history"; "id" is echoed on every answer frame)
    {"type": "cancel"}   stops the current answer, upstream included
    {"type": "resume", "chatId": "...", "userId": "...", "lastEventId": "..."}
                         continues the chat's resumable answer after that event (from its start without one);
                         {"type": "done", "finish_reason": "nothing_to_resume"} when there is nothing more
    {"type": "ping"}     answered with {"type": "pong"}
A question frame with "resumable": true is answered apart from the connection: closing it does not stop the answer,
and every frame of it carries an "eventId" to resume after.
The server answers with {"type": "sources" | "token" | "reasoning" | "usage" | "error" | "done", ...}, or one
{"type": "answer", ...} frame for "stream": false. A malformed frame gets an error frame; the connection stays open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.auth import Principal, PrincipalDep
from api.chat import build_chat_request
from api.deps import Services
from api.errors import describe_validation, status_of
from api.schemas import ChatMessage, JsonObject, LegacyMessage
from api.security import client_identity
from llm.errors import LLMError
from llm.types import GenerationOptions, Message
from rag.answers.manager import EventWithId
from rag.chats.sqlite import ChatOwner
from rag.errors import InvalidRequest, RAGError
from rag.pipeline import Answer, ChatRef, collect_events
from rag.types import ChatEvent, DoneEvent, ErrorEvent, ReasoningEvent, SourcesEvent, TokenEvent, UsageEvent

logger = logging.getLogger(__name__)

router = APIRouter()
legacy_router = APIRouter()


class QuestionFrame(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str | int | None = None
    question: str | None = None
    messages: list[ChatMessage] | None = None
    history: list[LegacyMessage] = Field(default_factory=list)
    userId: str | None = Field(None, min_length=1, max_length=256)
    orgId: str | None = Field(None, min_length=1, max_length=256)
    chatId: str | None = Field(None, min_length=1, max_length=256)
    chatTitle: str | None = Field(None, max_length=500)
    model: str | None = None  # the old services named the model per request; ours is configured on the server
    stream: bool = True
    resumable: bool = False
    top_k: int | None = Field(None, ge=1)
    filters: JsonObject | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)

    def conversation(self) -> list[Message]:
        earlier = [m.to_message() for m in self.history]
        if self.messages:
            return [*earlier, *(m.to_message() for m in self.messages)]
        if self.question and self.question.strip():
            return [*earlier, Message("user", self.question)]
        raise InvalidRequest("a question frame needs 'question' or 'messages'")


class ResumeFrame(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str | int | None = None
    chatId: str = Field(min_length=1, max_length=256)
    userId: str | None = Field(None, min_length=1, max_length=256)
    orgId: str | None = Field(None, min_length=1, max_length=256)
    lastEventId: str | None = Field(None, max_length=100)


Frame = TypeVar("Frame", QuestionFrame, ResumeFrame)


def event_frame(event: ChatEvent) -> dict[str, Any]:
    match event:
        case SourcesEvent(hits):
            return {"type": "sources", "sources": [hit.as_dict() for hit in hits]}
        case TokenEvent(text):
            return {"type": "token", "content": text}
        case ReasoningEvent(text):
            return {"type": "reasoning", "content": text}
        case UsageEvent(usage):
            return {"type": "usage", "usage": usage.as_dict()}
        case ErrorEvent(type_, message):
            return error_frame(type_, message)
        case DoneEvent(reason):
            return {"type": "done", "finish_reason": reason}


def answer_frame(answer: Answer) -> dict[str, Any]:
    """The one frame of an answer asked with "stream": false."""
    return {
        "type": "answer",
        "content": answer.content,
        "reasoning": answer.reasoning or None,
        "sources": [hit.as_dict() for hit in answer.sources],
        "usage": answer.usage.as_dict() if answer.usage else None,
        "finish_reason": answer.finish_reason,
        "error": {"type": answer.error.type, "message": answer.error.message} if answer.error else None,
    }


def error_frame(type_: str, message: str, status: int | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", "error": {"type": type_, "message": message}}
    if status is not None:
        frame["status"] = status
    return frame


class ChatSession:
    """One WebSocket connection: reads frames, runs at most one answer at a time, and cancels it on request."""

    def __init__(self, websocket: WebSocket, services: Services, principal: Principal) -> None:
        self.websocket = websocket
        self.services = services
        self.principal = principal  # authenticated at connect; every question is scoped by it
        self._answer: asyncio.Task[None] | None = None
        self._resumable_chat: ChatRef | None = None  # the chat of the resumable answer being followed
        self._send_lock = asyncio.Lock()  # frames from the reader and the answer task must not interleave

    async def send(self, frame: dict[str, Any], request_id: str | int | None = None) -> None:
        if request_id is not None:
            frame = {**frame, "id": request_id}
        async with self._send_lock:
            await self.websocket.send_text(json.dumps(frame, ensure_ascii=False))

    async def run(self) -> None:
        try:
            while True:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                await self._on_frame(message.get("text"))
        except WebSocketDisconnect:
            pass
        finally:
            # The client is gone: stop the answer (and with it the upstream request).
            await self._cancel_answer(notify=False)

    async def _on_frame(self, text: str | None) -> None:
        if text is None:
            await self.send(error_frame("invalid_frame", "frames must be JSON text"))
            return
        try:
            data = json.loads(text)
        except ValueError:
            await self.send(error_frame("invalid_frame", "the frame is not valid JSON"))
            return
        if not isinstance(data, dict):
            await self.send(error_frame("invalid_frame", "the frame must be a JSON object"))
            return
        kind = data.get("type", "question")
        if kind == "cancel" and self._resumable_chat is not None and self._busy():
            chat, self._resumable_chat = self._resumable_chat, None
            await self.services.answers.stop(chat.chat_id, chat.owner)  # the following task ends with its "done"
            return
        if kind == "cancel":
            if not await self._cancel_answer(notify=True):
                await self.send(error_frame("nothing_to_cancel", "no answer is in progress"))
            return
        if kind == "ping":
            await self.send({"type": "pong"})
            return
        if kind not in ("question", "resume"):
            await self.send(error_frame("invalid_frame", f"unknown frame type {kind!r}"))
            return
        if self._busy():
            await self.send(error_frame("busy", "an answer is in progress: wait for 'done' or send a cancel frame"))
            return
        if kind == "resume":
            if (resume := await self._parsed(ResumeFrame, data)) is not None:
                self._answer = asyncio.create_task(self._resume(resume))
            return
        wait = self.services.rate_limiter.acquire(client_identity(self.websocket))
        if wait is not None:
            limit = self.services.rate_limiter.per_minute
            message = f"rate limit of {limit} questions per minute exceeded; retry in {math.ceil(wait)} s"
            await self.send(
                error_frame("rate_limited", message, 429) | {"retry_after": math.ceil(wait)}, data.get("id")
            )
            return
        if (frame := await self._parsed(QuestionFrame, data)) is not None:
            self._answer = asyncio.create_task(self._run_answer(frame))

    async def _parsed(self, model: type[Frame], data: dict[str, Any]) -> Frame | None:
        """The frame as `model`, or None once its validation error was sent."""
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            await self.send(error_frame("validation_error", describe_validation(exc.errors()), 422), data.get("id"))
            return None

    def _busy(self) -> bool:
        return self._answer is not None and not self._answer.done()

    async def _cancel_answer(self, notify: bool) -> bool:
        task, self._answer = self._answer, None
        if task is None or task.done():
            return False
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if notify:
            await self.send({"type": "done", "finish_reason": "cancelled"})
        return True

    async def _run_answer(self, frame: QuestionFrame) -> None:
        rid = frame.id
        try:
            request = build_chat_request(
                self.services.settings,
                self.principal,
                frame.conversation(),
                top_k=frame.top_k,
                filters=frame.filters,
                options=GenerationOptions(max_tokens=frame.max_tokens, temperature=frame.temperature),
                user_id=frame.userId,
                org_id=frame.orgId,
                chat_id=frame.chatId,
                title=frame.chatTitle,
            )
            if frame.resumable:
                run = await self.services.answers.start(request, self.services.pipeline.start)
                self._resumable_chat = request.chat
            else:
                stream = await self.services.pipeline.start(request)
        except (RAGError, LLMError) as exc:
            await self.send(error_frame(exc.error_type, str(exc), status_of(exc)), rid)
            await self.send({"type": "done", "finish_reason": "error"}, rid)
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("websocket answer failed before it started")
            await self.send(error_frame("internal_error", "the answer failed unexpectedly", 500), rid)
            await self.send({"type": "done", "finish_reason": "error"}, rid)
            return
        if frame.resumable:
            followed = await self.services.answers.follow(run)
            if frame.stream:
                await self._follow(followed, rid)
            else:  # one answer frame, the answer still produced apart from this connection
                with contextlib.suppress(WebSocketDisconnect):
                    await self.send(answer_frame(await collect_events(event async for _, event in followed)), rid)
                self._resumable_chat = None
            return
        try:
            if not frame.stream:
                await self.send(answer_frame(await stream.collect()), rid)
                return
            async with contextlib.aclosing(stream.events()) as events:
                async for event in events:
                    await self.send(event_frame(event), rid)
        except WebSocketDisconnect:
            pass  # the reader notices too, and ends the session
        finally:
            await stream.aclose()

    async def _follow(self, events: AsyncIterator[EventWithId], rid: str | int | None) -> None:
        """Send a resumable answer's frames, each with its event id; leaving stops the following, not the answer."""
        try:
            async with contextlib.aclosing(events):  # type: ignore[type-var]
                async for event_id, event in events:
                    await self.send({**event_frame(event), "eventId": event_id}, rid)
        except WebSocketDisconnect:
            pass
        finally:
            self._resumable_chat = None

    async def _resume(self, frame: ResumeFrame) -> None:
        try:
            user_id, org_id = self.principal.scope(frame.userId, frame.orgId)
            if user_id is None:
                raise InvalidRequest("userId is required: chats belong to a user")
            owner = ChatOwner(user_id, org_id)
            events = await self.services.answers.resume(frame.chatId, owner, frame.lastEventId)
        except (RAGError, LLMError) as exc:
            await self.send(error_frame(exc.error_type, str(exc), status_of(exc)), frame.id)
            return
        if events is None:
            await self.send({"type": "done", "finish_reason": "nothing_to_resume"}, frame.id)
            return
        self._resumable_chat = ChatRef(frame.chatId, owner)
        await self._follow(events, frame.id)


async def chat_socket(websocket: WebSocket, principal: PrincipalDep) -> None:
    await websocket.accept()
    await ChatSession(websocket, websocket.app.state.services, principal).run()


router.add_api_websocket_route("/ws/chat", chat_socket)
legacy_router.add_api_websocket_route("/ws_chat", chat_socket)
