"""The app factory and entry point.

`create_app(settings=None)` assembles the service; its lifespan loads the embedder, opens the stores and the chat
model, and closes them on shutdown. Importing this module does no I/O: `uvicorn main:app` builds the app on first
access of `app`, and `python main.py` runs uvicorn with HOST and PORT from the settings.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, cast

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.telemetry import TelemetryConfig
from mcp.server.mcpserver import MCPServer
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from api import admin, chat, chats, documents, feedback, health, jobs, openai_api, sources, spaces, usage, websocket
from api.auth import Authenticator, authenticate
from api.deps import Services
from api.errors import install_error_handlers
from api.mcp import MCP_PATH, METADATA_PATH, McpGate, build_mcp_server, protected_resource_metadata
from api.metrics import ChatMetrics
from api.middleware import BodyLimit, RequestContext, configure_logging
from api.security import RateLimiter
from api.sse_streams import StreamSupervisor
from api.web_page import mount_web_page
from config import Settings, get_settings, settings_or_exit
from llm.errors import LLMError
from llm.factory import build_chat_model
from llm.router import UpstreamRouter
from llm.tracing import configure_tracing
from llm.types import ChatModel
from rag.answers.log import AnswerLog
from rag.answers.manager import AnswerSettings, ResumableAnswers
from rag.answers.sqlite_log import SqliteAnswerLog
from rag.audit import AuditLog
from rag.audit.sqlite import SqliteAuditLog
from rag.chats.sqlite import Conversations, ConversationStore
from rag.errors import RAGError
from rag.history import QueryRewriter
from rag.ingest.indexer import Indexer
from rag.ingest.jobs import JobStore
from rag.ingest.parser_pool import ParserPool
from rag.ingest.parsers import ParseLimits
from rag.ingest.runner import JobRunner
from rag.pipeline import ChatPipeline, Condenser, condense_with_rule, last_user_message
from rag.purge import Purger, forgetting_answers_citing_deleted, purge_of, removing_leftover_exports, vacuuming
from rag.retriever import Retriever
from rag.sources.guard import AddressPolicy
from rag.sources.registry import SourceRegistry
from rag.sources.syncer import SourceSyncer
from rag.spaces.active import ActiveEmbedder, ActiveSpace, ActiveStore
from rag.spaces.builder import SpaceBuilder
from rag.spaces.registry import SpaceRegistry
from rag.stores import VectorStore
from rag.types import Embedder
from rag.usage.ledger import Limits, UsageLedger
from rag.usage.meter import UsageMeter, estimate_tokens

if TYPE_CHECKING:
    from rag.sources.fetcher import Fetcher

logger = logging.getLogger("rag_service")

API_PREFIX = "/api/v1"
GRACEFUL_SHUTDOWN_SECONDS = 10  # uvicorn waits this long for open requests after SIGTERM
# An SSE stream open at shutdown may send its farewell for this long, then it is cancelled: less than the above.
SSE_SHUTDOWN_GRACE_SECONDS = 5.0
_NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}


def raise_open_file_limit() -> int:
    """Raise the soft limit on open files to the hard one, and return it. Every stream holds two sockets (its
    client's and its upstream's), so the common default of 1,024 would cap a process at about 500 streams."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def build_condenser(settings: Settings, llm: ChatModel) -> Condenser:
    match settings.query_rewrite:
        case "rule":
            return condense_with_rule
        case "llm":
            return QueryRewriter(llm)
        case "off":
            return last_user_message


async def open_answers(settings: Settings, conversations: Conversations) -> ResumableAnswers:
    """Resumable answers, their events kept beside the chats: in PostgreSQL when replicas share it."""
    log: AnswerLog
    if settings.database_url is not None:
        from rag.answers.postgres_log import PgAnswerLog

        log = await PgAnswerLog.open(settings.database_url.get_secret_value())
    else:
        log = await SqliteAnswerLog.open(settings.data_dir / "chats.sqlite3")
    return ResumableAnswers(
        log,
        conversations,
        AnswerSettings(
            max_running_per_org=settings.resumable_max_per_org,
            flush_seconds=settings.answer_flush_ms / 1000,
            flush_bytes=settings.answer_flush_bytes,
            lease_seconds=settings.answer_lease_seconds,
            retention_seconds=settings.answer_retention_seconds,
        ),
    )


async def build_services(settings: Settings, metrics: ChatMetrics, stack: contextlib.AsyncExitStack) -> Services:
    """Build every shared component; each is registered on `stack` so that it is closed on the way out."""
    registry = await SpaceRegistry.open(settings)
    stack.push_async_callback(registry.aclose)
    # The registry's active embedding space (none registered: the settings' embedder and the first store)
    space = await ActiveSpace.open(settings, registry)
    stack.push_async_callback(space.aclose)
    # The routes and the purger hold the active space's store and embedder, whichever that is at each call.
    store = cast(VectorStore, ActiveStore(space))
    embedder = cast(Embedder, ActiveEmbedder(space))
    conversations: Conversations
    if settings.database_url is not None:  # replicas share one database: a chat continues on any of them
        from rag.chats.postgres import PgConversationStore

        conversations = await PgConversationStore.open(settings.database_url.get_secret_value())
    else:
        conversations = await ConversationStore.open(settings.data_dir / "chats.sqlite3")
    stack.push_async_callback(conversations.aclose)
    audit: AuditLog
    if settings.database_url is not None:
        from rag.audit.postgres import PgAuditLog

        audit = await PgAuditLog.open(settings.database_url.get_secret_value())
    else:
        audit = SqliteAuditLog(settings.data_dir / "audit.sqlite3")
    stack.push_async_callback(audit.aclose)
    llm = await build_chat_model(settings)
    stack.push_async_callback(llm.aclose)
    answers = await open_answers(settings, conversations)
    # Closed before the model (the stack unwinds in reverse): running answers are ended, and their ends written.
    stack.push_async_callback(answers.aclose)
    retriever = Retriever(
        space.embedder,
        space.store,
        settings.top_k_results,
        settings.similarity_threshold,
        settings.retrieval_mode,
        space=space,
        dense_weight=settings.fusion_dense_weight,
    )
    ledger = await UsageLedger.open(settings)
    stack.push_async_callback(ledger.aclose)
    meter = UsageMeter(
        ledger,
        Limits(
            settings.quota_tokens_per_day,
            settings.quota_tokens_per_month,
            settings.quota_user_tokens_per_day,
            settings.quota_user_tokens_per_month,
            settings.quota_upload_bytes_per_day,
            settings.quota_chunks,
        ),
        # One answer's worth: what it may generate, its history, and the most context a request may ask for
        settings.llm_max_tokens
        + settings.history_token_budget
        + estimate_tokens(settings.max_top_k * settings.chunk_size),
        settings.usage_flush_seconds,
        enabled=settings.usage_accounting,
        observer=metrics.count_usage if settings.usage_metrics_per_org else None,
    )
    meter.start()
    stack.push_async_callback(meter.aclose)  # after the answers end (the stack unwinds in reverse): they count
    pipeline = ChatPipeline(
        retriever,
        llm,
        conversations=conversations,
        condense=build_condenser(settings, llm),
        history_budget_tokens=settings.history_token_budget,
        show_reasoning=settings.show_reasoning,
        observer=metrics,
        log_prompts=settings.log_prompts,
        usage=meter if settings.usage_accounting else None,
    )
    metrics.store_chunks.read_from(lambda: space.store.count)
    metrics.resumable_running.read_from(lambda: answers.running)
    if isinstance(llm, UpstreamRouter):
        metrics.watch_upstreams(llm.states)
    indexer = Indexer(
        space.embedder,
        space.store,
        settings.chunk_size,
        settings.chunk_overlap,
        space.refresh,
        usage=meter if settings.usage_accounting else None,
    )
    cpu_count = os.cpu_count() or 1
    parsers = ParserPool(  # shared by upload jobs and web sources; closed by the job runner
        ParseLimits(
            settings.max_upload_pages,
            settings.max_unzipped_bytes,
            ocr=settings.ocr,
            ocr_timeout_seconds=settings.ocr_timeout_seconds,
            ocr_max_pixels=settings.ocr_max_pixels,
            ocr_languages=settings.ocr_languages,
        ),
        memory_mb=settings.parse_memory_mb,
        timeout_seconds=settings.parse_timeout_seconds,
        max_chars=settings.max_file_chars,
        size=min(settings.parse_workers or cpu_count, cpu_count),
    )
    job_runner = JobRunner(
        JobStore(settings.data_dir / "jobs.sqlite3", settings.data_dir / "uploads"),
        indexer,
        parsers,
        batch_chunks=settings.job_batch_chunks,
        lease_seconds=settings.job_lease_seconds,
        retention_seconds=settings.job_retention_days * 86400,
        max_interruptions=settings.max_item_interruptions,
    )
    await job_runner.start()
    # Closed first (the stack unwinds in reverse): a running job is handed back to the queue before the store and
    # the embedder it uses are closed.
    stack.push_async_callback(job_runner.aclose)
    sources = await SourceRegistry.open(settings)
    stack.push_async_callback(sources.aclose)
    policy = AddressPolicy(settings.sources_allow_hosts)

    def fetcher() -> Fetcher:
        from rag.sources.fetcher import Fetcher

        return Fetcher(
            policy,
            settings.sources_user_agent,
            settings.sources_max_page_bytes,
            settings.sources_page_timeout_seconds,
            settings.sources_host_delay_seconds,
        )

    syncer = SourceSyncer(
        sources,
        policy,
        fetcher,
        parsers,
        indexer,
        store,
        settings.data_dir / "sources",
        settings.sources_lease_seconds,
        settings.sources_poll_seconds,
    )
    syncer.start()
    stack.push_async_callback(syncer.aclose)  # before the parsers and the store: a running sync is stopped first
    answers.start_background()
    streams = StreamSupervisor(settings.sse_send_timeout, settings.sse_ping_seconds, SSE_SHUTDOWN_GRACE_SECONDS)
    streams.start()
    stack.push_async_callback(streams.aclose)
    steps = [
        forgetting_answers_citing_deleted(answers.log, store),
        purge_of(store),
        removing_leftover_exports(settings.data_dir / "exports"),
    ]
    if settings.database_url is not None:
        chat_tables = ["rag_messages", "rag_chats", "rag_answer_events", "rag_answer_runs"]
        steps.append(vacuuming(settings.database_url.get_secret_value(), chat_tables, settings.pg_purge_rewrite))
    purger = Purger(settings.data_dir, settings.purge_delay_seconds, steps)
    stack.push_async_callback(purger.aclose)
    purger.start()
    builder = SpaceBuilder(settings, registry, space, settings.space_pass_seconds)
    builder.start()
    stack.push_async_callback(builder.aclose)
    space.start_watching(settings.space_poll_seconds)
    services = Services(
        settings=settings,
        embedder=embedder,
        store=store,
        retriever=retriever,
        indexer=indexer,
        jobs=job_runner,
        llm=llm,
        pipeline=pipeline,
        conversations=conversations,
        answers=answers,
        audit=audit,
        purger=purger,
        metrics=metrics,
        rate_limiter=RateLimiter(settings.rate_limit_per_minute),
        authenticator=Authenticator(settings),
        streams=streams,
        spaces=registry,
        sources=sources,
        syncer=syncer,
        usage=meter,
        builder=builder,
    )
    # The retriever and the indexer each take the new pair, in one step, when another space becomes active.
    space.users.extend([retriever, indexer])
    return services


def mount_mcp(app: FastAPI, settings: Settings) -> MCPServer:
    """The MCP transport at /mcp (api/mcp.py): the SDK's stateless streamable HTTP app behind the service's gate."""
    server = build_mcp_server(lambda: app.state.services)
    server.streamable_http_app(streamable_http_path=MCP_PATH, stateless_http=True, host=settings.host)
    gate = McpGate(StreamableHTTPASGIApp(server.session_manager), lambda: app.state.services)
    app.router.routes.append(Route(MCP_PATH, endpoint=gate, methods=["GET", "POST", "DELETE"]))
    if settings.jwt_secret is not None or settings.jwt_public_key:  # user tokens: say where they come from

        async def metadata(request: Request) -> JSONResponse:
            return JSONResponse(protected_resource_metadata(request))

        for path in (METADATA_PATH, f"{METADATA_PATH}{MCP_PATH}"):
            app.router.routes.append(Route(path, endpoint=metadata, methods=["GET"]))
    return server


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    metrics = ChatMetrics()
    tracer_provider = configure_tracing(settings)  # None unless OTEL_EXPORTER_OTLP_ENDPOINT: nothing imported

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            open_files = raise_open_file_limit()
            try:
                services = await build_services(settings, metrics, stack)
            except (RAGError, LLMError) as exc:
                # A configuration problem (store of another model, missing model file...): say it in one line.
                logger.error("cannot start: %s", exc)
                raise
            app.state.services = services
            if mcp_server is not None:  # the SDK's task group, for the calls at /mcp
                await stack.enter_async_context(mcp_server.session_manager.run())
            logger.info(
                "ready: embedder %s (%d), llm %s/%s, %d chunks, authentication %s, %d open files allowed",
                services.embedder.model_name,
                services.embedder.dimension,
                services.llm.provider,
                services.llm.model,
                services.store.count,
                "on" if services.authenticator.enabled else "off",
                open_files,
            )
            if tracer_provider is not None:  # the last spans are sent before the process ends
                stack.callback(tracer_provider.shutdown)
            yield
            logger.info("shutting down")

    app = FastAPI(
        title="RAG chat service",
        description="Chat over your documents, streamed token by token.",
        version="0.1.0",
        lifespan=lifespan,
        # Off unless asked for: even with no OTel SDK configured, FastAPI otherwise looks providers up on every request.
        # The service's own traces make their server span in RequestContext, which wraps `send` anyway.
        telemetry=None if settings.opentelemetry else _NO_TELEMETRY,
    )
    install_error_handlers(app)
    authenticated = [Depends(authenticate)]
    routers = (
        chat.router,
        chats.router,
        documents.router,
        jobs.router,
        websocket.router,
        admin.router,
        spaces.router,
        sources.router,
        usage.router,
        feedback.router,
    )
    for router in routers:
        app.include_router(router, prefix=API_PREFIX, dependencies=authenticated)
    app.include_router(health.router, prefix=API_PREFIX)  # open: load balancers probe it
    app.include_router(health.metrics_router, dependencies=authenticated)
    app.include_router(chat.legacy_router, dependencies=authenticated)
    app.include_router(websocket.legacy_router, dependencies=authenticated)
    app.include_router(openai_api.router, dependencies=authenticated)
    mount_web_page(app)  # open: the page asks for a key when the API wants one
    mcp_server = mount_mcp(app, settings) if settings.mcp_enabled else None

    # Outermost last: the request id and timing wrap everything, the body limit applies before any parsing.
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.max_body_bytes,
        # an MCP upload_file call carries its file in base64: a third larger
        per_path={
            f"{API_PREFIX}/documents/upload": settings.max_upload_bytes,
            MCP_PATH: max(settings.max_body_bytes, settings.max_upload_bytes * 4 // 3 + 65_536),
        },
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    app.add_middleware(RequestContext, metrics=metrics, traced=tracer_provider is not None)
    return app


def __getattr__(name: str) -> FastAPI:
    # `uvicorn main:app` looks the attribute up; building it lazily keeps `import main` free of side effects.
    if name == "app":
        settings = get_settings()
        configure_logging(settings.log_level, settings.log_format)
        return create_app(settings)
    raise AttributeError(name)


def main() -> None:
    import uvicorn

    settings = settings_or_exit()
    configure_logging(settings.log_level, settings.log_format)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # keep our handlers: JSON lines with request ids
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )


if __name__ == "__main__":
    main()
