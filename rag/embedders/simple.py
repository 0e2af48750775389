"""A user's own embedder, written after the original service's README: a class with a synchronous
`embed_query(text) -> list[float]` and, optionally, `embed_documents(texts) -> list[list[float]]`. Adapted here to
the `Embedder` protocol, so the simple case needs nothing of ours: the calls run in a worker thread (they block),
the vectors are normalised and checked, and the dimension is learned at start-up from one probe, so that the store
can refuse a mismatch. Coroutine versions of both methods are awaited instead.
"""

from __future__ import annotations

import inspect
from typing import Any

import anyio
import numpy as np

from llm.plugins import close_plugin
from rag.embedders.base import normalise
from rag.errors import EmbeddingError


class SimpleEmbedder:
    def __init__(self, impl: Any, model_name: str, dimension: int) -> None:
        self._impl = impl
        self.model_name = model_name
        self.dimension = dimension

    @classmethod
    async def wrap(cls, impl: Any) -> SimpleEmbedder:
        kind = type(impl)
        name = getattr(impl, "model_name", None) or f"{kind.__module__}.{kind.__qualname__}"
        probe = cls(impl, str(name), 0)
        vectors = await probe.embed(["dimension probe"])
        return cls(impl, str(name), int(vectors.shape[1]))

    async def _call(self, method: Any, argument: Any) -> Any:
        if inspect.iscoroutinefunction(method):
            return await method(argument)
        return await anyio.to_thread.run_sync(method, argument)

    async def embed(self, texts: list[str]) -> np.ndarray:
        rows = [await self._call(self._impl.embed_query, text) for text in texts]
        return self._vectors(rows, len(texts))

    async def embed_documents(self, texts: list[str]) -> np.ndarray:
        method = getattr(self._impl, "embed_documents", None)
        if method is None or not texts:
            return await self.embed(texts)
        return self._vectors(await self._call(method, texts), len(texts))

    def _vectors(self, rows: Any, expected: int) -> np.ndarray:
        try:
            vectors = np.asarray(rows, dtype=np.float32).reshape(expected, -1)
        except (TypeError, ValueError) as exc:
            raise EmbeddingError(f"{self.model_name} returned something that is not {expected} vectors") from exc
        if self.dimension and vectors.shape[1] != self.dimension:
            raise EmbeddingError(f"{self.model_name} returned vectors of {vectors.shape[1]}, not {self.dimension}")
        return normalise(vectors)

    async def aclose(self) -> None:
        await close_plugin(self._impl)
