"""One table from exceptions to HTTP statuses, and the stable error body `{"error": {"type", "message"}}`.

Under `/v1/` (the OpenAI-compatible API) the same errors take OpenAI's shape, which OpenAI's SDKs parse:
`{"error": {"message", "type", "param", "code"}}`, with our stable type as `code`, and 400 for invalid requests.
Unexpected exceptions are logged with their traceback and answered with a generic 500: never a stack trace,
never an upstream's raw body, to a client.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from llm.errors import (
    LLMError,
    ModelNotFound,
    ModelUnavailable,
    PromptTooLong,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from rag.answers.log import AnswerInProgress, TooManyAnswers
from rag.chats.sqlite import ChatForbidden, ChatNotFound
from rag.errors import (
    DocumentNotFound,
    EmbeddingError,
    EmbeddingUnavailable,
    InvalidRequest,
    JobNotFound,
    RAGError,
    SourceNotFound,
    SpaceConflict,
    SpaceNotFound,
    StoreCorrupt,
    StoreIncompatible,
    StoreUnavailable,
    TenantForbidden,
    UnreadableFile,
    UnsupportedFileType,
    UploadTooLarge,
)
from rag.usage.meter import QuotaExceeded

logger = logging.getLogger(__name__)

# Most specific first: the first class an exception is an instance of decides its status.
STATUS_TABLE: list[tuple[type[Exception], int]] = [
    (InvalidRequest, 422),
    (UnsupportedFileType, 415),
    (UploadTooLarge, 413),
    (UnreadableFile, 422),
    (QuotaExceeded, 429),
    (JobNotFound, 404),
    (DocumentNotFound, 404),
    (SpaceNotFound, 404),
    (SourceNotFound, 404),
    (SpaceConflict, 409),
    (ChatNotFound, 404),
    (ChatForbidden, 403),
    (AnswerInProgress, 409),
    (TooManyAnswers, 429),
    (TenantForbidden, 403),
    (EmbeddingUnavailable, 503),
    (EmbeddingError, 502),
    (StoreUnavailable, 503),
    (StoreIncompatible, 500),
    (StoreCorrupt, 500),
    (RAGError, 500),
    (PromptTooLong, 422),
    (ModelNotFound, 404),
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
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
}


OPENAI_PREFIX = "/v1/"
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def error_response(status: int, type_: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"type": type_, "message": message}}, status_code=status, headers=headers)


def openai_error_response(
    status: int, code: str, message: str, param: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    # OpenAI answers invalid requests with 400 where we use 422.
    status = 400 if status == 422 else status
    body = {"message": message, "type": _OPENAI_TYPES.get(status, "server_error"), "param": param, "code": code}
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def render_error(
    request: Request,
    status: int,
    type_: str,
    message: str,
    headers: dict[str, str] | None = None,
    param: str | None = None,
) -> JSONResponse:
    if request.url.path.startswith(OPENAI_PREFIX):
        return openai_error_response(status, type_, message, param, headers)
    return error_response(status, type_, message, headers)


def status_of(exc: Exception) -> int:
    for cls, status in STATUS_TABLE:
        if isinstance(exc, cls):
            return status
    return 500


def retry_headers(exc: Exception) -> dict[str, str] | None:
    if isinstance(exc, UpstreamRateLimited):
        return {"Retry-After": str(max(1, round(exc.retry_after or 1)))}
    if isinstance(exc, QuotaExceeded):
        return None if exc.retry_after is None else {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
    if isinstance(exc, TooManyAnswers):
        return {"Retry-After": "5"}  # answers take seconds: a slot frees soon
    return None


def _location(error: Mapping[str, Any]) -> str:
    """Where a validation error is (`messages.0.role`), without the request part it came from."""
    return ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path"))


def describe_validation(errors: Sequence[Mapping[str, Any]]) -> str:
    """Pydantic's errors as one readable line, for HTTP bodies and WebSocket frames alike."""
    parts = [f"{_location(e)}: {e.get('msg')}" if _location(e) else str(e.get("msg")) for e in errors]
    return "; ".join(parts) or "invalid request"


async def _on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    param = next((where for where in map(_location, exc.errors()) if where), None)
    return render_error(request, 422, "validation_error", describe_validation(exc.errors()), param=param)


async def _on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    type_ = _HTTP_TYPES.get(exc.status_code, "http_error")
    return render_error(request, exc.status_code, type_, str(exc.detail), dict(exc.headers or {}) or None)


async def _on_domain(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RAGError | LLMError)
    if status_of(exc) >= 500:
        logger.warning("request failed: %s: %s", type(exc).__name__, exc)
    return render_error(request, status_of(exc), exc.error_type, str(exc), retry_headers(exc))


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error", exc_info=exc)
    return render_error(request, 500, "internal_error", "the server failed to handle this request")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _on_validation)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _on_http)  # type: ignore[arg-type]
    app.add_exception_handler(RAGError, _on_domain)
    app.add_exception_handler(LLMError, _on_domain)
    app.add_exception_handler(Exception, _on_unexpected)
