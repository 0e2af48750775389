"""Request and response bodies of the `/api/v1` routes (the contract of the service we replace, plus additions)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from llm.types import GenerationOptions, Message
from rag.access import AccessList
from rag.types import DocumentSummary, Hit


def _finite(value: Any) -> Any:
    """Reject NaN and infinities anywhere inside: Python's JSON reader accepts them, no JSON writer may emit them,
    and a stored NaN would break every later response that carries it."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("numbers must be finite (NaN and Infinity are not JSON)")
    if isinstance(value, dict):
        for item in value.values():
            _finite(item)
    elif isinstance(value, list):
        for item in value:
            _finite(item)
    return value


JsonObject = Annotated[dict[str, Any], AfterValidator(_finite)]


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str

    def to_message(self) -> Message:
        return Message(self.role, self.content)


class ChatBody(BaseModel):
    """`POST /api/v1/chat`."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"messages": [{"role": "user", "content": "What is in my documents?"}]}]}
    )

    messages: list[ChatMessage] = Field(min_length=1, description="The conversation; the last user turn is asked.")
    stream: bool = Field(True, description="Stream server-sent events (true) or return one JSON object (false).")
    top_k: int | None = Field(None, ge=1, description="Chunks to retrieve; default TOP_K_RESULTS.")
    filters: JsonObject | None = Field(
        None, description='Metadata conditions: {"key": value}, {"key": {"$in": [...]}}, {"key": {"$ne": value}}.'
    )
    max_tokens: int | None = Field(None, ge=1, description="Most tokens to generate; default LLM_MAX_TOKENS.")
    temperature: float | None = Field(None, ge=0, le=2, description="Sampling temperature.")
    userId: str | None = Field(None, min_length=1, max_length=256, description="The user; required with chatId.")
    orgId: str | None = Field(
        None, min_length=1, max_length=256, description="Only this organisation's documents are retrieved."
    )
    chatId: str | None = Field(
        None, min_length=1, max_length=256, description="Store this turn in that chat; its history is used."
    )
    chatTitle: str | None = Field(None, max_length=500, description="Title for a new chat.")
    resumable: bool = Field(
        False,
        description="Produce the answer apart from this connection: it runs to its end if the client leaves, and "
        "GET /api/v1/chats/{chatId}/stream continues it. Needs chatId and userId.",
    )
    model: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="The model to answer with, among those the upstreams serve (GET /v1/models); unset: the default.",
    )

    def options(self) -> GenerationOptions:
        return GenerationOptions(max_tokens=self.max_tokens, temperature=self.temperature, model=self.model)


class Source(BaseModel):
    id: str
    document_id: str
    text: str
    metadata: dict[str, Any]
    score: float = Field(description="Cosine similarity to the question (BM25 score in keyword mode).")
    found_by: list[Literal["dense", "keyword"]] = Field(description="The retrieval legs that found this chunk.")
    keyword_score: float | None = Field(None, description="BM25 score, when the keyword leg found it.")
    fused_score: float | None = Field(None, description="The hybrid ranking score (higher ranks first).")

    @classmethod
    def of(cls, hit: Hit) -> Source:
        return cls(**hit.as_dict())


class UsageBody(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatAnswer(BaseModel):
    """The answer of `POST /api/v1/chat` with `stream: false`."""

    content: str
    sources: list[Source]
    usage: UsageBody | None = None
    reasoning: str | None = None
    finish_reason: str | None = None


class AccessListBody(BaseModel):
    """Who may read a document, besides the organisation's unnarrowed keys (docs/api.md, "Who sees what")."""

    model_config = ConfigDict(extra="forbid")

    users: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=list, description="User ids (a token's sub, or X-On-Behalf-Of)."
    )
    groups: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=list, description="Group names (a token's groups claim, or X-On-Behalf-Of-Groups)."
    )

    def parsed(self) -> AccessList:
        parsed = AccessList.parse(self.model_dump())
        assert parsed is not None
        return parsed


class AddDocumentsBody(BaseModel):
    """`POST /api/v1/documents/add`."""

    documents: list[str] = Field(min_length=1, description="Document texts; long ones are split into chunks.")
    metadatas: list[JsonObject] | None = Field(None, description="One metadata object per document.")
    ids: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(
        None, description="One id per document; an id already stored replaces that document. Default: random ids."
    )
    access: list[AccessListBody | None] | None = Field(
        None,
        description="One access list per document (null: its whole organisation may read it). Unset: new documents "
        "are readable by their whole organisation, replaced ones keep their list.",
    )


class AddedDocumentBody(BaseModel):
    id: str
    chunks: int


class AddDocumentsAnswer(BaseModel):
    ids: list[str]
    documents: list[AddedDocumentBody]


class JobFileBody(BaseModel):
    name: str = Field(description="The file's name as uploaded ('document N' for a document of a JSON add).")
    type: str = Field(description="Media type of the parser used.")
    size: int = Field(description="Bytes.")
    sha256: str
    document_id: str = Field(description="The stored document's id (the same file uploaded again replaces it).")
    state: Literal["queued", "parsing", "embedding", "done", "failed", "cancelled"]
    chunks_done: int
    chunks_total: int | None = Field(description="Known once the file is parsed.")
    error: str | None = Field(description="Why the file failed.")


class JobErrorBody(BaseModel):
    file: str
    message: str


class JobBody(BaseModel):
    """An ingestion job: `queued`, `running`, then `done`, `failed` (some file failed; the others are stored) or
    `cancelled` (files done before the cancel stay stored)."""

    id: str
    state: Literal["queued", "running", "done", "failed", "cancelled"]
    created_at: float = Field(description="Unix time.")
    updated_at: float = Field(description="Unix time of the last progress.")
    attempts: int = Field(description="How many times a runner started it (more than 1: it was resumed).")
    files: list[JobFileBody]
    chunks_done: int
    chunks_total: int | None = Field(description="Known once every file is parsed.")
    errors: list[JobErrorBody]


class JobPage(BaseModel):
    jobs: list[JobBody]


class SearchAnswer(BaseModel):
    results: list[Source]


class DocumentSummaryBody(BaseModel):
    id: str
    chunks: int
    metadata: dict[str, Any]
    preview: str
    access: AccessListBody | None = Field(None, description="Who may read it; null: its whole organisation.")

    @classmethod
    def of(cls, summary: DocumentSummary) -> DocumentSummaryBody:
        access = None if summary.access is None else AccessListBody(**summary.access.as_dict())
        return cls(
            id=summary.id, chunks=summary.chunks, metadata=summary.metadata, preview=summary.preview, access=access
        )


class DocumentPage(BaseModel):
    documents: list[DocumentSummaryBody]
    total: int
    offset: int
    limit: int


class DeletedAnswer(BaseModel):
    id: str
    deleted_chunks: int


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class LegacyMessage(BaseModel):
    # The Elasticsearch services wrote "assist" for the assistant's turns.
    role: Literal["system", "user", "assistant", "assist"]
    content: str

    def to_message(self) -> Message:
        return Message("assistant" if self.role == "assist" else self.role, self.content)


class LegacyStreamBody(BaseModel):
    """`POST /stream`: the request body of the Elasticsearch chat services, accepted as they sent it."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "userId": "testuser",
                    "orgId": "1",
                    "chatId": "01",
                    "question": "Should I carry umbrella?",
                    "chatTitle": "test1",
                    "updateTime": "2022/06/01",
                    "history": [
                        {"role": "user", "content": "What's the weather?"},
                        {"role": "assist", "content": "It's sunny outside."},
                    ],
                }
            ]
        }
    )

    question: str = Field(min_length=1, description="The question to answer.")
    userId: str = Field(min_length=1, max_length=256)
    orgId: str | None = Field(None, min_length=1, max_length=256)
    chatId: str | None = Field(None, min_length=1, max_length=256)
    chatTitle: str | None = Field(None, max_length=500)
    resumable: bool = Field(
        False,
        description="Produce the answer apart from this connection: it runs to its end if the client leaves, and "
        "GET /api/v1/chats/{chatId}/stream continues it. Needs chatId and userId.",
    )
    updateTime: str | None = Field(None, description="Accepted for compatibility; the server keeps its own times.")
    history: list[LegacyMessage] = Field(default_factory=list, description="Earlier turns, oldest first.")
    top_k: int | None = Field(None, ge=1)
    filters: JsonObject | None = None

    def messages(self) -> list[Message]:
        return [*(m.to_message() for m in self.history), Message("user", self.question)]


class ChatSummaryBody(BaseModel):
    chatId: str
    userId: str
    orgId: str | None
    title: str
    createdAt: float
    updatedAt: float


class ChatList(BaseModel):
    chats: list[ChatSummaryBody]


class StoredMessageBody(BaseModel):
    role: str
    content: str
    createdAt: float
    rating: Literal["up", "down"] | None = Field(None, description="The owner's rating of this answer, if any.")


class FeedbackRequest(BaseModel):
    """A user's rating of an answer in a stored chat (POST /api/v1/chats/{chatId}/feedback)."""

    model_config = ConfigDict(extra="forbid")

    rating: Literal["up", "down"]
    reason: str | None = Field(
        None, min_length=1, max_length=200, description="A short label, e.g. 'wrong', 'missing source', 'outdated'."
    )
    comment: str | None = Field(None, max_length=4000, description="What the user wrote about the answer.")
    messageIndex: int | None = Field(
        None,
        ge=0,
        description="The answer's index among the chat's messages (GET /chats/{chatId}); the last answer by default.",
    )


class AnswerStatusBody(BaseModel):
    """The chat's current or recently ended resumable answer."""

    status: str = Field(description="running, done, stopped or interrupted.")
    question: str = Field(description="The question it answers (stored in the chat once the answer ends).")
    startedAt: float
    endedAt: float | None


class ChatDetail(ChatSummaryBody):
    messages: list[StoredMessageBody]
    answer: AnswerStatusBody | None = Field(
        None, description="The resumable answer running (resume it at /stream), or one that ended lately."
    )


class StopResult(BaseModel):
    chatId: str
    stopped: bool = Field(description="Whether an answer was running and is now stopped.")
