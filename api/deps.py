"""The services the lifespan builds, kept on `app.state`, and the accessor routes use to reach them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from api.auth import Authenticator
from api.metrics import ChatMetrics
from api.security import RateLimiter
from api.sse_streams import StreamSupervisor
from config import Settings
from llm.types import ChatModel
from rag.answers.manager import ResumableAnswers
from rag.audit import AuditLog
from rag.chats.sqlite import Conversations
from rag.ingest.indexer import Indexer
from rag.ingest.runner import JobRunner
from rag.pipeline import ChatPipeline
from rag.purge import Purger
from rag.retriever import Retriever
from rag.sources.registry import SourceRegistry
from rag.sources.syncer import SourceSyncer
from rag.spaces.builder import SpaceBuilder
from rag.spaces.registry import SpaceRegistry
from rag.stores import VectorStore
from rag.types import Embedder
from rag.usage.meter import UsageMeter


@dataclass
class Services:
    settings: Settings
    embedder: Embedder
    store: VectorStore
    retriever: Retriever
    indexer: Indexer
    jobs: JobRunner
    llm: ChatModel
    pipeline: ChatPipeline
    conversations: Conversations
    answers: ResumableAnswers  # resumable answers: produced apart from their connection
    audit: AuditLog  # access changes, deletions and purges
    purger: Purger  # erases deleted text from the files, PURGE_DELAY_SECONDS after a deletion
    metrics: ChatMetrics
    rate_limiter: RateLimiter
    authenticator: Authenticator
    streams: StreamSupervisor  # pings, times out and ends the open SSE streams
    spaces: SpaceRegistry  # the embedding spaces; `embedder` and `store` are the active one's
    builder: SpaceBuilder  # fills the other spaces and switches, in the replica holding its lease
    sources: SourceRegistry  # web sources, shared by every replica
    syncer: SourceSyncer  # syncs the due sources this replica holds the lease of
    usage: UsageMeter  # counts what each organisation, user and key spends; refuses what is over a quota


async def get_services(request: Request) -> Services:
    # `async def` although it awaits nothing: FastAPI runs a plain `def` dependency in a worker thread, a thread
    # hop per request for one attribute read.
    return request.app.state.services  # type: ignore[no-any-return]


ServicesDep = Annotated[Services, Depends(get_services)]
