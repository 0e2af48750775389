"""Feedback on answers: a user rates an answer of a stored chat up or down, with an optional reason and comment.

A rating belongs to the answer (one per answer; rating again replaces it) and lives as long as the answer does: it
goes with its chat, a user's purge or an organisation's. What produced the answer (the sources it was given, the
mode, `top_k`, the model) is kept with the answer itself when the turn is stored (`AnswerDetails`), so that a
listing shows a disliked answer beside what it was built from. Sources are kept as ids and scores, never their
text: a deleted document's text does not live on in feedback.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from rag.errors import InvalidRequest
from rag.types import Hit

Rating = Literal["up", "down"]
RATINGS: tuple[Rating, ...] = ("up", "down")


@dataclass(frozen=True, slots=True)
class AnswerDetails:
    """What produced an answer: its sources (chunk id, document id, score) and the settings of its retrieval and
    model. Stored as JSON beside the assistant message."""

    sources: list[dict[str, Any]] = field(default_factory=list)
    retrieval_query: str = ""
    mode: str = ""
    top_k: int = 0
    model: str = ""

    @classmethod
    def of(cls, hits: list[Hit], retrieval_query: str, mode: str, top_k: int, model: str) -> AnswerDetails:
        sources = [
            {"id": h.chunk.id, "document_id": h.chunk.document_id, "score": round(h.fused_score or h.score, 6)}
            for h in hits
        ]
        return cls(sources, retrieval_query, mode, top_k, model)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @staticmethod
    def parse(text: str | None) -> dict[str, Any]:
        """The stored details as a dict; {} for an answer stored before details were kept."""
        return json.loads(text) if text else {}


@dataclass(frozen=True, slots=True)
class Feedback:
    """One rating, with the answer it rates, the question before it and what produced the answer."""

    chat_id: str
    message_index: int  # the answer's place among the chat's messages (GET /api/v1/chats/{chatId}), from 0
    user_id: str
    org_id: str | None
    rating: str
    reason: str | None
    comment: str | None
    question: str
    answer: str
    details: dict[str, Any]
    created_at: float
    updated_at: float

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Feedback:
        """From the stores' feedback query: its columns in the fields' order, the details as stored JSON."""
        chat_id, index, user_id, org_id, rating, reason, comment, question, answer, details, created, updated = row
        return cls(
            chat_id,
            index,
            user_id,
            org_id,
            rating,
            reason,
            comment,
            question,
            answer,
            AnswerDetails.parse(details),
            created,
            updated,
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def answer_position(roles: list[str], message_index: int | None) -> int:
    """The index of the answer to rate among a chat's message roles: the last answer by default; 422 when the index
    names no answer."""
    if message_index is None:
        for index in range(len(roles) - 1, -1, -1):
            if roles[index] == "assistant":
                return index
        raise InvalidRequest("this chat has no answer to rate yet")
    if not 0 <= message_index < len(roles):
        raise InvalidRequest(f"messageIndex: the chat has {len(roles)} messages; {message_index} names none")
    if roles[message_index] != "assistant":
        raise InvalidRequest(f"messageIndex: message {message_index} is a {roles[message_index]} message, not answer")
    return message_index
