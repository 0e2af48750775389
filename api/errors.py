"""One table from exceptions to HTTP statuses, and the stable error body `{"error": {"type", "message"}}`.

Unexpected exceptions are logged with their traceback and answered with a generic 500: never a stack trace,
never an upstream's raw body, to a client.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from llm.errors import (
    LLMError,
    ModelUnavailable,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from rag.conversations import ChatForbidden, ChatNotFound
from rag.errors import DocumentNotFound, EmbeddingError, InvalidRequest, RAGError, StoreCorrupt, StoreIncompatible

logger = logging.getLogger(__name__)

# Most specific first: the first class an exception is an instance of decides its status.
STATUS_TABLE: list[tuple[type[Exception], int]] = [
    (InvalidRequest, 422),
    (DocumentNotFound, 404),
    (ChatNotFound, 404),
    (ChatForbidden, 403),
    (EmbeddingError, 502),
    (StoreIncompatible, 500),
    (StoreCorrupt, 500),
    (RAGError, 500),
    (UpstreamRateLimited, 429),
    (UpstreamTimeout, 504),
    (UpstreamUnavailable, 502),
    (UpstreamProtocolError, 502),
    (ModelUnavailable, 503),
    (LLMError, 502),
]

_HTTP_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    422: "validation_error",
    429: "rate_limited",
}


def error_response(status: int, type_: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"type": type_, "message": message}}, status_code=status, headers=headers)


def status_of(exc: Exception) -> int:
    for cls, status in STATUS_TABLE:
        if isinstance(exc, cls):
            return status
    return 500


def domain_error_response(exc: RAGError | LLMError) -> JSONResponse:
    headers = None
    if isinstance(exc, UpstreamRateLimited):
        headers = {"Retry-After": str(max(1, round(exc.retry_after or 1)))}
    return error_response(status_of(exc), exc.error_type, str(exc), headers)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
    return "; ".join(parts) or "invalid request"


async def _on_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(422, "validation_error", _describe_validation(exc))


async def _on_http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    type_ = _HTTP_TYPES.get(exc.status_code, "http_error")
    return error_response(exc.status_code, type_, str(exc.detail), dict(exc.headers or {}) or None)


async def _on_domain(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RAGError | LLMError)
    if status_of(exc) >= 500:
        logger.warning("request failed: %s: %s", type(exc).__name__, exc)
    return domain_error_response(exc)


async def _on_unexpected(_: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error", exc_info=exc)
    return error_response(500, "internal_error", "the server failed to handle this request")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _on_validation)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _on_http)  # type: ignore[arg-type]
    app.add_exception_handler(RAGError, _on_domain)
    app.add_exception_handler(LLMError, _on_domain)
    app.add_exception_handler(Exception, _on_unexpected)
