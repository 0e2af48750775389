"""Request and response bodies of the `/api/v1` routes (the contract of the service we replace, plus additions)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llm.types import GenerationOptions, Message
from rag.types import Hit


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
    filters: dict[str, Any] | None = Field(
        None, description='Metadata conditions: {"key": value}, {"key": {"$in": [...]}}, {"key": {"$ne": value}}.'
    )
    max_tokens: int | None = Field(None, ge=1, description="Most tokens to generate; default LLM_MAX_TOKENS.")
    temperature: float | None = Field(None, ge=0, le=2, description="Sampling temperature.")

    def options(self) -> GenerationOptions:
        return GenerationOptions(max_tokens=self.max_tokens, temperature=self.temperature)


class Source(BaseModel):
    id: str
    document_id: str
    text: str
    metadata: dict[str, Any]
    score: float

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


class AddDocumentsBody(BaseModel):
    """`POST /api/v1/documents/add`."""

    documents: list[str] = Field(min_length=1, description="Document texts; long ones are split into chunks.")
    metadatas: list[dict[str, Any]] | None = Field(None, description="One metadata object per document.")
    ids: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(
        None, description="One id per document; an id already stored replaces that document. Default: random ids."
    )


class AddedDocumentBody(BaseModel):
    id: str
    chunks: int


class AddDocumentsAnswer(BaseModel):
    ids: list[str]
    documents: list[AddedDocumentBody]


class SearchAnswer(BaseModel):
    results: list[Source]


class DocumentSummaryBody(BaseModel):
    id: str
    chunks: int
    metadata: dict[str, Any]
    preview: str


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
