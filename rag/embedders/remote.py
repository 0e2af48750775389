"""Embeddings from any OpenAI-compatible `/v1/embeddings` server: text-embeddings-inference, infinity, Ollama, vLLM,
OpenAI, or another instance of this service."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from llm.tracing import with_trace_context
from rag.embedders.base import normalise
from rag.errors import EmbeddingError, EmbeddingUnavailable


class OpenAIEmbedder:
    """Embeddings from any OpenAI-compatible `/embeddings` endpoint.

    Texts go in batches of `batch_size`, at most `max_concurrency` requests at once (a large ingestion must not flood
    the server, nor starve questions). The SDK client retries 429, 5xx and connection errors with jittered
    exponential backoff (`EMBEDDINGS_MAX_RETRIES`); when the server stays down, `EmbeddingUnavailable` (503) is
    raised, and since the add path embeds every chunk before it stores any, nothing is half-stored."""

    def __init__(self, client: Any, model_name: str, dimension: int, batch_size: int, max_concurrency: int = 4) -> None:
        self._client = client
        self.model_name = model_name
        self.dimension = dimension
        self._batch_size = batch_size
        self._slots = asyncio.Semaphore(max_concurrency)

    @classmethod
    async def load(cls, client: Any, model_name: str, batch_size: int, max_concurrency: int = 4) -> OpenAIEmbedder:
        # The store checks the dimension against its manifest at start-up, so learn it now with one call.
        probe = cls(client, model_name, 0, batch_size, max_concurrency)
        vectors = await probe._request(["dimension probe"])
        return cls(client, model_name, int(vectors.shape[1]), batch_size, max_concurrency)

    async def _request(self, texts: list[str]) -> np.ndarray:
        import openai

        try:
            async with self._slots:
                # No encoding_format: the SDK then asks for base64 itself and decodes it (exact float32, a quarter of
                # the bytes of JSON numbers).
                response = await self._client.embeddings.create(
                    model=self.model_name, input=texts, extra_headers=with_trace_context({})
                )
        except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as exc:
            raise EmbeddingUnavailable(
                f"the embeddings server is unavailable ({type(exc).__name__}, after its retries)"
            ) from exc
        except openai.OpenAIError as exc:
            raise EmbeddingError(f"the embeddings API failed: {type(exc).__name__}") from exc
        rows = sorted(response.data, key=lambda item: item.index)
        if len(rows) != len(texts):
            raise EmbeddingError(f"the embeddings API returned {len(rows)} vectors for {len(texts)} texts")
        return normalise(np.array([row.embedding for row in rows], dtype=np.float32))

    async def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        batches = [texts[i : i + self._batch_size] for i in range(0, len(texts), self._batch_size)]
        return np.concatenate(await asyncio.gather(*(self._request(batch) for batch in batches)))

    async def embed_documents(self, texts: list[str]) -> np.ndarray:
        return await self.embed(texts)  # one remote API: questions and documents take the same road

    async def aclose(self) -> None:
        await self._client.close()


def embedder_attributes(embedder: object) -> dict[str, str | bool]:
    """Which embedder a span's embedding ran on: its class, its model, and whether it is a remote server."""
    return {
        "rag.embedder": type(embedder).__name__,
        "rag.embedder.model": str(getattr(embedder, "model_name", "")),
        "rag.embedder.remote": isinstance(embedder, OpenAIEmbedder),
    }
