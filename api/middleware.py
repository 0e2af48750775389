"""Pure ASGI middleware (no BaseHTTPMiddleware: it would buffer streams and hide disconnects).

`RequestContext` gives every request an id (a client's `X-Request-ID` is kept, and echoed), counts and times it
for the metrics, and writes one access-log line. `BodyLimit` refuses bodies over the configured size with 413,
from the Content-Length header when there is one and by counting otherwise.
"""

from __future__ import annotations

import contextvars
import logging
import re
import time
import uuid
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Span, SpanKind, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response
from api.metrics import ChatMetrics
from llm.tracing import tracer

logger = logging.getLogger("rag_service.access")

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _route_of(scope: Scope) -> str:
    """The matched route's template (/api/v1/chats/{chatId}), never the raw path: raw paths would give every chat
    its own metric series. Rebuilt from the path and its parameters, since an included router's route object only
    knows its path relative to the router's prefix."""
    if scope.get("route") is None:
        return "unmatched"
    path: str = scope["path"]
    for name, value in (scope.get("path_params") or {}).items():
        path = path.replace(f"/{value}", f"/{{{name}}}", 1)
    return path


class _AsgiHeaders(Getter[dict[bytes, bytes]]):
    """Reads an incoming `traceparent` from the request's headers as the ASGI scope holds them."""

    def get(self, carrier: dict[bytes, bytes], key: str) -> list[str] | None:
        value = carrier.get(key.encode("latin-1"))
        return None if value is None else [value.decode("latin-1")]

    def keys(self, carrier: dict[bytes, bytes]) -> list[str]:
        return [key.decode("latin-1") for key in carrier]


_HEADERS = _AsgiHeaders()
# Probes call these every few seconds: traced, they would fill a trace store with nothing worth reading.
UNTRACED_PATHS = frozenset({"/metrics", "/api/v1/health"})


class RequestContext:
    """Per request: its id, its access log line and metrics and, when tracing is on (llm/tracing.py), its server
    span, which continues an incoming `traceparent`. One wrapper of `send` does it all: a stream's tokens pass
    through no other."""

    def __init__(self, app: ASGIApp, metrics: ChatMetrics, traced: bool = False) -> None:
        self.app = app
        self.metrics = metrics
        self.traced = traced

    def _server_span(self, scope: Scope, headers: dict[bytes, bytes]) -> tuple[Span, object]:
        parent = propagate.extract(headers, getter=_HEADERS)
        method = scope.get("method", "WS")
        span = tracer.start_span(
            method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": scope["path"], "url.scheme": scope["scheme"]},
        )
        return span, otel_context.attach(trace.set_span_in_context(span, parent))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _VALID_ID.match(given) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.monotonic()
        status = 500 if scope["type"] == "http" else 101
        span, attached = (
            self._server_span(scope, headers) if self.traced and scope["path"] not in UNTRACED_PATHS else (None, None)
        )

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.monotonic() - started
            route = _route_of(scope)
            method = scope.get("method", "WS")
            self.metrics.requests.inc(route=route, method=method, status=str(status))
            self.metrics.latency.observe(elapsed, route=route)
            logger.info(
                "%s %s %s",
                method,
                route,
                status,
                extra={"route": route, "method": method, "status": status, "duration_ms": round(elapsed * 1000, 1)},
            )
            request_id_var.reset(token)
            if span is not None:
                span.update_name(f"{method} {route}")
                span.set_attributes({"http.route": route, "http.response.status_code": status})
                if status >= 500:
                    span.set_status(StatusCode.ERROR)
                span.end()
                otel_context.detach(attached)  # type: ignore[arg-type]


class BodyTooLarge(BaseException):
    """Raised from `receive`. A BaseException on purpose: FastAPI turns any Exception raised while it reads a body
    into a 400 'error parsing the body', and this must reach `BodyLimit` to become a 413."""


class BodyLimit:
    """`per_path` gives routes a limit of their own (uploads: MAX_UPLOAD_BYTES instead of MAX_BODY_BYTES)."""

    def __init__(self, app: ASGIApp, max_bytes: int, per_path: dict[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.per_path = per_path or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.per_path.get(scope["path"], self.max_bytes)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > max_bytes:
            await self._refuse(scope, receive, send, max_bytes)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise BodyTooLarge
            return message

        # `send` is passed through unwrapped: a wrapper would cost a call on every streamed token. The refusal
        # cannot meet a response already started, because BodyTooLarge is raised only while the body is read,
        # and every route here reads its whole body (FastAPI's parsing) before it answers.
        try:
            await self.app(scope, counting_receive, send)
        except BodyTooLarge:
            await self._refuse(scope, receive, send, max_bytes)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, max_bytes: int) -> None:
        limit = "MAX_UPLOAD_BYTES" if max_bytes != self.max_bytes else "MAX_BODY_BYTES"
        message = f"the request body is larger than the limit of {max_bytes} bytes ({limit})"
        await error_response(413, "payload_too_large", message)(scope, receive, send)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the request id of the request being served and, when it is traced, its trace
    and span ids (a log line leads to its trace, and back)."""

    def format(self, record: logging.LogRecord) -> str:
        import json

        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": request_id_var.get(),
        }
        span = trace.get_current_span().get_span_context()
        if span.is_valid and span.trace_flags.sampled:  # a trace that is kept
            entry["trace_id"] = format(span.trace_id, "032x")
            entry["span_id"] = format(span.span_id, "016x")
        for key in ("route", "method", "status", "duration_ms"):
            if key in record.__dict__:
                entry[key] = record.__dict__[key]
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Our access log replaces uvicorn's (which has no request id).
    logging.getLogger("uvicorn.access").disabled = True
