"""`GET /api/v1/health`: liveness plus what the service runs on."""

from __future__ import annotations

import os

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from api.deps import ServicesDep

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
        "llm": {"provider": services.llm.provider, "model": services.llm.model},
    }


@metrics_router.get("/metrics", response_class=PlainTextResponse)
async def metrics(services: ServicesDep) -> PlainTextResponse:
    """Prometheus text format: requests, latency, time to first token, tokens, streams, upstream errors, store size."""
    await services.store.refresh()
    return PlainTextResponse(services.metrics.render(), media_type="text/plain; version=0.0.4")
