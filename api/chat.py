"""`POST /api/v1/chat`: retrieval-augmented chat, streamed as the seed's SSE or returned whole."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import ServicesDep
from api.errors import error_response
from api.schemas import ChatAnswer, ChatBody, ErrorBody, Source, UsageBody
from api.sse import seed_sse_response
from rag.errors import InvalidRequest
from rag.pipeline import ChatRequest

router = APIRouter(tags=["chat"])

_ERRORS = {code: {"model": ErrorBody} for code in (422, 429, 502, 504)}


@router.post(
    "/chat",
    response_model=ChatAnswer,
    responses={200: {"content": {"text/event-stream": {}}, "description": "SSE stream, or JSON when stream=false"}}
    | _ERRORS,
)
async def chat(body: ChatBody, services: ServicesDep):
    """Ask the last user message against the stored documents."""
    if body.top_k is not None and body.top_k > services.settings.max_top_k:
        raise InvalidRequest(f"top_k must be at most {services.settings.max_top_k}")
    request = ChatRequest(
        messages=[m.to_message() for m in body.messages],
        top_k=body.top_k,
        filters=body.filters,
        options=body.options(),
    )
    # Everything that can fail with a status code happens here, before the response starts.
    stream = await services.pipeline.start(request)
    if body.stream:
        return seed_sse_response(stream, services.settings)
    answer = await stream.collect()
    if answer.error is not None:
        # Not streaming, a half answer is no answer: report the failure as the status it is.
        return error_response(502, answer.error.type, answer.error.message)
    return ChatAnswer(
        content=answer.content,
        sources=[Source.of(hit) for hit in answer.sources],
        usage=UsageBody(
            prompt_tokens=answer.usage.prompt_tokens,
            completion_tokens=answer.usage.completion_tokens,
            total_tokens=answer.usage.total_tokens,
        )
        if answer.usage
        else None,
        reasoning=answer.reasoning or None,
        finish_reason=answer.finish_reason,
    )
