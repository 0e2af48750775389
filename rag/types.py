"""Domain values of the retrieval side and the typed events the chat pipeline yields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from llm.types import Usage
from rag.access import AccessList

Metadata = dict[str, Any]

# The metadata field that names a chunk's organisation: requests are scoped by it, and stores index it for speed.
TENANT_KEY = "orgId"


def tenant_of(fields: Metadata) -> str | None:
    """The organisation that metadata (or a filter) names as one string; None for none, or for anything else (a
    filter such as {"$in": [...]}), which stores then treat as an ordinary field."""
    tenant = fields.get(TENANT_KEY)
    return tenant if isinstance(tenant, str) else None


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of a document as stored: its own id, its document's id and metadata, and its text."""

    id: str
    document_id: str
    text: str
    metadata: Metadata = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Hit:
    """A chunk found by a search. `score` is its cosine similarity to the query (its BM25 score in keyword mode);
    `found_by` names the legs whose candidates held it; a hybrid search ranks by `fused_score`."""

    chunk: Chunk
    score: float
    found_by: tuple[str, ...] = ("dense",)
    keyword_score: float | None = None
    fused_score: float | None = None

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.chunk.id,
            "document_id": self.chunk.document_id,
            "text": self.chunk.text,
            "metadata": self.chunk.metadata,
            "score": round(self.score, 6),
            "found_by": list(self.found_by),
        }
        if self.keyword_score is not None:
            body["keyword_score"] = round(self.keyword_score, 6)
        if self.fused_score is not None:
            body["fused_score"] = round(self.fused_score, 6)
        return body


@dataclass(frozen=True, slots=True)
class DocumentSummary:
    id: str
    chunks: int
    metadata: Metadata
    preview: str
    access: AccessList | None = None


class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors, one row per text."""

    model_name: str
    dimension: int

    async def embed(self, texts: list[str]) -> np.ndarray:
        """Questions, and other texts a caller waits on: few texts, latency first."""
        ...

    async def embed_documents(self, texts: list[str]) -> np.ndarray:
        """Texts to be stored (the add path), however few: throughput first, and never in the questions' way."""
        ...

    async def aclose(self) -> None: ...


# --- pipeline events ----------------------------------------------------------------------------
# One pipeline, many wire formats: each transport renders these and nothing else.


@dataclass(frozen=True, slots=True)
class SourcesEvent:
    hits: list[Hit]


@dataclass(frozen=True, slots=True)
class TokenEvent:
    text: str


@dataclass(frozen=True, slots=True)
class ReasoningEvent:
    text: str


@dataclass(frozen=True, slots=True)
class UsageEvent:
    usage: Usage


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """A failure after the stream started; it is always followed by DoneEvent."""

    type: str
    message: str


@dataclass(frozen=True, slots=True)
class DoneEvent:
    finish_reason: str | None = None


ChatEvent = SourcesEvent | TokenEvent | ReasoningEvent | UsageEvent | ErrorEvent | DoneEvent


class StreamObserver(Protocol):
    """Watches one answer: every event it yields, and its end."""

    def on_event(self, event: ChatEvent) -> None: ...

    def close(self) -> None: ...


class ChatObserver(Protocol):
    """Watches the pipeline (metrics): answers that failed to start, and those that did."""

    def start_failed(self, error_type: str) -> None: ...

    def stream_opened(self, started_at: float) -> StreamObserver: ...
