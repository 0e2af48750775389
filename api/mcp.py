"""The Model Context Protocol transport: the service's documents as tools for agents, at `/mcp` on the same port.

Streamable HTTP through the official SDK (`mcp` 2.3's MCPServer), stateless: each request stands alone, so any
replica answers any call behind a load balancer and nothing is kept between calls (a tool that needs continuity,
`ask` with a `chat_id`, keeps it in the chat store every replica shares).

Every request passes the same gate as the other routes before the SDK sees it (`McpGate`): the credential (API key or
user token in `Authorization: Bearer`, `X-On-Behalf-Of` for a key acting for a user) is checked, 401 without one
where the service requires it, and the rate limit applies. The tools then act as that principal: its organisation,
and what its user may read, exactly as the HTTP routes do, through the same services. A failure is a tool error
whose text is the HTTP error body, `{"error": {"type", "message"}}`, with the same type names; each call is counted
in `/metrics` by tool and outcome.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
from pydantic import Field
from starlette.types import Receive, Scope, Send

from api.auth import Principal, Unauthenticated, on_behalf_of, presented_credential
from api.chat import build_chat_request
from api.deps import Services
from api.documents import store_texts, submit_files
from api.errors import status_of
from api.jobs import owned_job
from api.limits import check_documents, check_top_k
from api.security import client_identity
from llm.errors import LLMError
from llm.types import Message
from rag.errors import InvalidRequest, RAGError, TenantForbidden
from rag.ingest.jobs import Job
from rag.ingest.runner import Upload
from rag.pipeline import scoped_filters
from rag.stores.base import ExportableStore
from rag.types import ErrorEvent, Hit, TokenEvent

logger = logging.getLogger(__name__)
MCP_PATH = "/mcp"
METADATA_PATH = "/.well-known/oauth-protected-resource"
PAGE_CHUNKS = 20  # a long document's text comes a page of chunks at a time
INSTRUCTIONS = (
    "Search and ask questions over the documents this credential may read; add documents and files. Prefer "
    "search_documents to find passages, ask for an answer written from them with numbered sources."
)


class McpGate:
    """The SDK's ASGI app behind the service's own authentication and rate limit."""

    def __init__(self, app: StreamableHTTPASGIApp, services: Callable[[], Services]) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        from starlette.requests import Request
        from starlette.responses import JSONResponse

        scope["route"] = MCP_PATH  # for the access log and metrics, as a FastAPI route sets it
        request = Request(scope, receive)
        services = self.services()
        try:
            principal = on_behalf_of(services.authenticator.principal(presented_credential(request)), request)
        except Unauthenticated as exc:
            body = {"error": {"type": "unauthorized", "message": str(exc)}}
            challenge = "Bearer"
            if services.authenticator.takes_tokens:  # where a client learns how to get a token (RFC 9728)
                challenge += f' resource_metadata="{_base_url(request)}{METADATA_PATH}"'
            await JSONResponse(body, 401, headers={"WWW-Authenticate": challenge})(scope, receive, send)
            return
        except TenantForbidden as exc:
            body = {"error": {"type": exc.error_type, "message": str(exc)}}
            await JSONResponse(body, 403)(scope, receive, send)
            return
        wait = services.rate_limiter.acquire(client_identity(request))
        if wait is not None:
            message = f"rate limit of {services.rate_limiter.per_minute} requests per minute exceeded"
            body = {"error": {"type": "rate_limited", "message": message}}
            headers = {"Retry-After": str(math.ceil(wait))}
            await JSONResponse(body, 429, headers=headers)(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


def build_mcp_server(services: Callable[[], Services]) -> MCPServer:
    """The tools, each acting as the principal the gate let in."""
    server = _without_logging_setup(lambda: MCPServer("rag-chat-api", instructions=INSTRUCTIONS))

    def principal_of(ctx: Context) -> Principal:
        request = ctx.request_context.request
        principal = getattr(getattr(request, "state", None), "principal", None)
        if not isinstance(principal, Principal):  # only the gate's requests reach a tool
            raise ToolError(_error("unauthorized", "no credential was checked for this call"))
        return principal

    async def counted(tool: str, work: Awaitable[Any]) -> Any:
        metrics = services().metrics
        try:
            result = await work
        except (RAGError, LLMError) as exc:
            metrics.mcp_calls.inc(tool=tool, outcome=exc.error_type)
            raise ToolError(_error(exc.error_type, str(exc), status_of(exc))) from None
        except ToolError:
            metrics.mcp_calls.inc(tool=tool, outcome="invalid_request")
            raise
        except Exception:
            logger.exception("MCP tool %s failed", tool)
            metrics.mcp_calls.inc(tool=tool, outcome="internal_error")
            raise ToolError(
                _error("internal_error", "the tool failed unexpectedly (see the service log)", 500)
            ) from None
        metrics.mcp_calls.inc(tool=tool, outcome="ok")
        return result

    @server.tool()
    async def search_documents(
        query: Annotated[str, Field(description="What to look for, in the words a passage would use.")],
        ctx: Context,
        top_k: Annotated[int, Field(ge=1, description="How many passages to return, best first.")] = 5,
        filters: Annotated[
            dict[str, Any] | None,
            Field(description='Metadata filters, e.g. {"lang": "en"} or {"year": {"$in": [2024, 2025]}}.'),
        ] = None,
        mode: Annotated[
            Literal["hybrid", "dense", "keyword"] | None,
            Field(description="hybrid (default) finds by meaning and by words; dense by meaning; keyword by words."),
        ] = None,
    ) -> dict[str, Any]:
        """Find the passages of the documents that best match a query, ranked, each with its document id, title,
        page and score. Use it to look facts up; use `ask` for a written answer."""
        principal = principal_of(ctx)

        async def run() -> dict[str, Any]:
            svc = services()
            check_top_k(svc.settings, top_k)
            _, org_id = principal.scope(None, None)
            hits = await svc.retriever.retrieve(
                query, top_k, scoped_filters(filters, org_id), mode=mode, reader=principal.reader
            )
            return {"results": [_passage(hit.as_dict()) for hit in hits]}

        return await counted("search_documents", run())  # type: ignore[no-any-return]

    @server.tool()
    async def ask(
        question: Annotated[str, Field(description="The question, in full.")],
        ctx: Context,
        chat_id: Annotated[
            str | None, Field(description="Continue this stored chat (its earlier turns are the context).")
        ] = None,
        top_k: Annotated[int | None, Field(ge=1, description="How many passages the answer may draw on.")] = None,
    ) -> dict[str, Any]:
        """Answer a question from the documents, with numbered sources ([1], [2], ...) the answer cites. The answer's
        text streams as progress notifications when the client asks for them; the result holds all of it."""
        principal = principal_of(ctx)

        async def run() -> dict[str, Any]:
            svc = services()
            user_id = principal.user_id if chat_id is None else (principal.user_id or "mcp")
            request = build_chat_request(
                svc.settings,
                principal,
                [Message("user", question)],
                top_k=top_k,
                user_id=user_id,
                chat_id=chat_id,
            )
            stream = await svc.pipeline.start(request)
            parts: list[str] = []
            async for event in stream.events():
                if isinstance(event, TokenEvent):
                    parts.append(event.text)
                    await ctx.report_progress(len(parts), None, event.text)
                elif isinstance(event, ErrorEvent):  # failed after it began: a half answer is no answer
                    raise ToolError(_error(event.type, event.message, 502))
            return _collected(stream.hits, parts)

        return await counted("ask", run())  # type: ignore[no-any-return]

    @server.tool()
    async def list_documents(
        ctx: Context,
        offset: Annotated[int, Field(ge=0, description="How many documents to skip.")] = 0,
        limit: Annotated[int, Field(ge=1, le=200, description="How many to return.")] = 20,
    ) -> dict[str, Any]:
        """The documents this credential may read, in the order they were added, a page at a time, with the total."""
        principal = principal_of(ctx)

        async def run() -> dict[str, Any]:
            total, page = await services().store.list_documents(offset, limit, principal.org_id, principal.reader)
            return {"total": total, "offset": offset, "documents": [_summary(d) for d in page]}

        return await counted("list_documents", run())  # type: ignore[no-any-return]

    @server.tool()
    async def get_document(
        document_id: Annotated[str, Field(description="The document's id, as search results and lists give it.")],
        ctx: Context,
        chunk_offset: Annotated[int, Field(ge=0, description="The first passage of the page of text.")] = 0,
    ) -> dict[str, Any]:
        """One document: its metadata and its text, a page of passages at a time (`next_chunk_offset` asks for the
        next page; null when there is none)."""
        principal = principal_of(ctx)

        async def run() -> dict[str, Any]:
            svc = services()
            summary = await svc.store.get_document(document_id, principal.org_id, principal.reader)  # 404 if unreadable
            chunks: list[str] = []
            store = svc.store
            if isinstance(store, ExportableStore):
                async for batch in store.export_documents(principal.org_id, [document_id]):
                    for doc in batch:
                        chunks.extend(c.text for c in doc.chunks)
            page = chunks[chunk_offset : chunk_offset + PAGE_CHUNKS]
            following = chunk_offset + PAGE_CHUNKS
            return {
                **_summary(summary),
                "text": "\n\n".join(page),
                "chunk_offset": chunk_offset,
                "next_chunk_offset": following if following < len(chunks) else None,
            }

        return await counted("get_document", run())  # type: ignore[no-any-return]

    @server.tool()
    async def add_document(
        text: Annotated[str, Field(description="The document's text.")],
        ctx: Context,
        metadata: Annotated[
            dict[str, Any] | None, Field(description='Stored with it and filterable, e.g. {"title": "Q3 plan"}.')
        ] = None,
        document_id: Annotated[str | None, Field(description="Its id; the same id again replaces it.")] = None,
    ) -> dict[str, Any]:
        """Add (or replace) a document from its text; it is searchable when this returns. A long one becomes an
        ingestion job (`get_job` follows it)."""
        principal = principal_of(ctx)

        async def run() -> dict[str, Any]:
            svc = services()

            check_documents(svc.settings, [text])
            ids = None if document_id is None else [document_id]
            metadatas = None if metadata is None else [metadata]
            stored = await store_texts(svc, principal, [text], metadatas, ids, None, None)
            if isinstance(stored, Job):
                return {"job": stored.as_dict()}
            return {"id": stored[0].id, "chunks": stored[0].chunks}

        return await counted("add_document", run())  # type: ignore[no-any-return]

    @server.tool()
    async def upload_file(
        filename: Annotated[str, Field(description="The file's name; its extension says how it is read.")],
        content_base64: Annotated[str, Field(description="The file's bytes, base64-encoded.")],
        ctx: Context,
    ) -> dict[str, Any]:
        """Upload a file (PDF, DOCX, PPTX, XLSX, CSV, EPUB, mail, image, HTML, Markdown, text) to be parsed and
        added in the background: returns its ingestion job (`get_job` follows it)."""
        principal = principal_of(ctx)

        async def run() -> dict[str, Any]:
            svc = services()
            try:
                data = base64.b64decode(content_base64, validate=True)
            except (binascii.Error, ValueError):
                raise InvalidRequest("content_base64: not base64") from None
            if len(data) > svc.settings.max_upload_bytes:
                raise InvalidRequest(f"content_base64: {len(data):,} bytes, over MAX_UPLOAD_BYTES")
            job = await submit_files(
                svc, principal, [Upload(filename, None, io.BytesIO(data))], len(data), None, None, "keep"
            )
            return {"job": job.as_dict()}

        return await counted("upload_file", run())  # type: ignore[no-any-return]

    @server.tool()
    async def get_job(
        job_id: Annotated[str, Field(description="The job's id, as add_document or upload_file returned it.")],
        ctx: Context,
    ) -> dict[str, Any]:
        """An ingestion job: its state, and each file's state and error."""
        principal = principal_of(ctx)

        async def run() -> dict[str, Any]:
            job = await owned_job(services().jobs, job_id, principal)
            return job.as_dict()

        return await counted("get_job", run())  # type: ignore[no-any-return]

    return server


def _base_url(request: Any) -> str:
    return str(request.base_url).rstrip("/")


def protected_resource_metadata(request: Any) -> dict[str, Any]:
    """RFC 9728's metadata for the MCP endpoint: what it is, and which authorization servers give its tokens."""
    services: Services = request.app.state.services
    return {
        "resource": f"{_base_url(request)}{MCP_PATH}",
        "authorization_servers": services.settings.mcp_authorization_servers,
        "bearer_methods_supported": ["header"],
        "resource_name": "rag-chat-api documents (MCP)",
    }


def _without_logging_setup(build: Callable[[], MCPServer]) -> MCPServer:
    """MCPServer() calls logging.basicConfig with a Rich handler: the root logger is the service's to configure (JSON
    lines, LOG_FORMAT), and Rich would cost it the import. The SDK's hook is left out while the server is built."""
    import mcp.server.mcpserver.server as sdk

    configure = sdk.configure_logging
    sdk.configure_logging = lambda *args, **kwargs: None
    try:
        return build()
    finally:
        sdk.configure_logging = configure


def _error(type_: str, message: str, status: int = 422) -> str:
    return json.dumps({"error": {"type": type_, "message": message, "status": status}})


def _passage(hit: dict[str, Any]) -> dict[str, Any]:
    metadata = hit.get("metadata") or {}
    return {
        "document_id": hit["document_id"],
        "title": metadata.get("title") or metadata.get("source"),
        "page": metadata.get("page"),
        "location": metadata.get("location"),
        "score": hit["score"],
        "text": hit["text"],
        "metadata": metadata,
    }


def _summary(document: Any) -> dict[str, Any]:
    return {
        "id": document.id,
        "chunks": document.chunks,
        "metadata": document.metadata,
        "preview": document.preview,
    }


def _collected(hits: list[Hit], parts: list[str]) -> dict[str, Any]:
    sources = [
        {"n": n, **{k: v for k, v in _passage(hit.as_dict()).items() if k != "text"}} for n, hit in enumerate(hits, 1)
    ]
    return {"answer": "".join(parts), "sources": sources}
