"""In-process embedders: the scheduling both local backends share (a question lane with coalescing, an ingestion
lane), and the torch backend (sentence-transformers), which is also the reference the ONNX backend is tested against.

All return L2-normalised float32 rows, so the store's dot product is the cosine similarity. Encoding runs in a
worker thread: a forward pass must never stall the event loop that streams other users' tokens.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import numpy as np

from rag.embedders.base import normalise, resolve_model_path


class LocalEmbedder:
    """An in-process encoder, with the scheduling both local backends share.

    Small requests (questions) that arrive while a forward pass runs are coalesced into the next pass: under load,
    fifty questions cost one batch instead of fifty passes in a row. They run in their own lane, so an ingestion
    (`embed_documents`, or an `embed` of many texts) never makes a question wait for all of its batches. Subclasses
    say how to encode one batch and how many batches may run at once."""

    COALESCE_MAX_TEXTS = 8  # `embed` calls up to this size are coalesced; larger ones take the ingestion lane

    model_name: str
    dimension: int

    def __init__(self, batch_size: int, question_lane: anyio.CapacityLimiter, ingest_lane: anyio.CapacityLimiter):
        self._batch_size = batch_size
        self._question_lane = question_lane
        self._ingest_lane = ingest_lane
        self._pending: list[tuple[list[str], asyncio.Future[np.ndarray]]] = []
        self._draining: asyncio.Task[None] | None = None
        self.forward_passes = 0

    def _encode(self, texts: list[str]) -> np.ndarray:
        """Encode one batch (runs in a worker thread)."""
        raise NotImplementedError

    async def _encode_many(self, texts: list[str]) -> np.ndarray:
        return await anyio.to_thread.run_sync(self._encode, texts, limiter=self._ingest_lane)

    async def embed_documents(self, texts: list[str]) -> np.ndarray:
        """The ingestion lane, whatever the number of texts: a job that embeds its documents one at a time must not
        pass them through the questions' lane (on the ONNX backend, the questions' session)."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return normalise(await self._encode_many(texts))

    async def embed(self, texts: list[str]) -> np.ndarray:
        if len(texts) > self.COALESCE_MAX_TEXTS:  # a large call (`/v1/embeddings`) is throughput work too
            return await self.embed_documents(texts)
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._pending.append((texts, future))
        if self._draining is None or self._draining.done():
            self._draining = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        """Run the pending requests as batches until none is left. A request whose caller went away (its future
        cancelled) is dropped before its batch runs, or its result is dropped after."""
        while self._pending:
            batch, self._pending = self._pending[: self._batch_size], self._pending[self._batch_size :]
            batch = [(texts, future) for texts, future in batch if not future.done()]
            if not batch:
                continue
            texts = [text for request, _ in batch for text in request]
            try:
                vectors = normalise(await anyio.to_thread.run_sync(self._encode, texts, limiter=self._question_lane))
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for request, future in batch:
                if not future.done():
                    future.set_result(vectors[start : start + len(request)])
                start += len(request)

    async def aclose(self) -> None:
        if self._draining is not None:
            await asyncio.gather(self._draining, return_exceptions=True)


class SentenceTransformerEmbedder(LocalEmbedder):
    """sentence-transformers on torch (`EMBEDDER_BACKEND=torch`), and the reference the ONNX backend is tested
    against. One forward pass at a time, questions and ingestion alike: torch already uses every core, and parallel
    passes only thrash."""

    def __init__(self, model: Any, model_name: str, batch_size: int) -> None:
        one_at_a_time = anyio.CapacityLimiter(1)
        super().__init__(batch_size, one_at_a_time, one_at_a_time)
        self._model = model
        self.model_name = model_name
        self.dimension = int(model.get_embedding_dimension())

    @classmethod
    async def load(cls, model_name: str, batch_size: int) -> SentenceTransformerEmbedder:
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # a progress bar has no place in a service's JSON logs
        path = resolve_model_path(model_name)
        model = await anyio.to_thread.run_sync(lambda: SentenceTransformer(path, device="cpu"))
        return cls(model, model_name, batch_size)

    def _encode(self, texts: list[str]) -> np.ndarray:
        self.forward_passes += 1
        return self._model.encode(
            texts,
            batch_size=self._batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )

    async def aclose(self) -> None:
        await super().aclose()
        self._model = None
