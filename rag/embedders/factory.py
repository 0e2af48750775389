"""The one place that picks the embedder from settings; each backend is imported only when chosen.

`EMBEDDER` is `onnx`, `torch`, `openai`, `package.module:ClassName` or an installed plug-in's name. Unset, the
earlier keys decide as they always did: `USE_OPENAI_EMBEDDINGS=true` is `openai` (with `OPENAI_EMBEDDING_MODEL`),
else `EMBEDDER_BACKEND`.
"""

from __future__ import annotations

from config import Settings
from llm.plugins import construct, load_class, require
from rag.types import Embedder

# What the service calls on a full embedder; a simple one needs only `embed_query(text)`.
EMBEDDER_METHODS = ("embed", "embed_documents", "aclose")
EMBEDDER_ATTRIBUTES = ("model_name", "dimension")


async def build_embedder(settings: Settings) -> Embedder:
    match settings.resolved_embedder:
        case "onnx":
            from rag.embedders.onnx import OnnxEmbedder

            return await OnnxEmbedder.load(
                settings.embedding_model,
                settings.onnx_dir,
                settings.embedding_batch_size,
                settings.embedding_threads,
                settings.embedder_precision,
            )
        case "torch":
            from rag.embedders.local import SentenceTransformerEmbedder

            return await SentenceTransformerEmbedder.load(settings.embedding_model, settings.embedding_batch_size)
        case "openai":
            return await _remote(settings)
        case spec:
            return await _plugin(settings, spec)


async def _remote(settings: Settings) -> Embedder:
    from llm.openai_client import make_async_client
    from rag.embedders.remote import OpenAIEmbedder

    legacy = settings.embedder is None  # USE_OPENAI_EMBEDDINGS: the chat server's URL, key and embedding model
    client = make_async_client(
        settings,
        base_url=None if legacy else settings.embeddings_base_url,
        api_key=None if legacy else settings.embeddings_api_key,
        max_retries=settings.embeddings_max_retries,
    )
    model = settings.openai_embedding_model if legacy else settings.embedding_model
    return await OpenAIEmbedder.load(client, model, settings.embedding_batch_size, settings.embeddings_max_concurrency)


async def _plugin(settings: Settings, spec: str) -> Embedder:
    cls = load_class("EMBEDDER", spec)
    if callable(getattr(cls, "embed_query", None)) and not callable(getattr(cls, "embed", None)):
        from rag.embedders.simple import SimpleEmbedder

        return await SimpleEmbedder.wrap(await construct("EMBEDDER", cls, settings.embedder_options))
    require(
        "EMBEDDER",
        cls,
        EMBEDDER_METHODS,
        EMBEDDER_ATTRIBUTES,
        "an embedder has embed_query(text), or embed, embed_documents, aclose, model_name and dimension",
    )
    embedder: Embedder = await construct("EMBEDDER", cls, settings.embedder_options)
    return embedder
