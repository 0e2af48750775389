"""`GET /api/v1/health`: liveness plus what the service runs on."""

from __future__ import annotations

import os

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from api.deps import ServicesDep
from llm.router import UpstreamRouter
from llm.types import ChatModel

router = APIRouter(tags=["health"])
metrics_router = APIRouter(tags=["health"])


@router.get("/health")
async def health(services: ServicesDep) -> dict:
    await services.store.refresh()  # another worker may have written since
    return {
        "status": "ok",
        "worker": os.getpid(),  # which process answered, when several workers share the port
        "embedder": {"model": services.embedder.model_name, "dimension": services.embedder.dimension},
        "store": {
            "backend": services.store.backend,
            "chunks": services.store.count,
            "documents": services.store.document_count,
            **services.store.layout(),
        },
        "llm": llm_state(services.llm),
    }


def llm_state(llm: ChatModel) -> dict[str, object]:
    """The chat model's provider and model; for the local one, also whether it is in memory now (it is loaded for an
    answer and closed after LOCAL_KEEP_ALIVE_SECONDS without one)."""
    state: dict[str, object] = {"provider": llm.provider, "model": llm.model}
    loaded = getattr(llm, "loaded", None)  # not part of ChatModel: only a model held in-process has it
    if loaded is not None:
        state["loaded"] = loaded
    if isinstance(llm, UpstreamRouter):
        state["upstreams"] = llm.states()
    return state


@metrics_router.get("/metrics", response_class=PlainTextResponse)
async def metrics(services: ServicesDep) -> PlainTextResponse:
    """Prometheus text format: requests, latency, time to first token, tokens, streams, upstream errors, store size."""
    await services.store.refresh()
    return PlainTextResponse(services.metrics.render(), media_type="text/plain; version=0.0.4")
