"""USE_OPENAI_EMBEDDINGS: the service embeds through an OpenAI-compatible /embeddings endpoint (the fake upstream's
toy letter-count vectors), end to end through a live server."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from main import create_app
from rag.embedders.remote import OpenAIEmbedder
from rag.errors import EmbeddingError
from tests.conftest import make_settings
from tests.fake_upstream import FakeUpstream
from tests.servers import serve


def test_service_embeds_through_the_api(tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    fake_upstream.reset()
    settings = make_settings(
        tmp_path, fake_upstream.url, use_openai_embeddings=True, embedding_batch_size=2, similarity_threshold=-1.0
    )  # type: ignore[arg-type]
    with serve(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
        health = client.get("/api/v1/health").json()
        assert health["embedder"] == {"model": "text-embedding-3-small", "dimension": 26}
        texts = ["aaaa aaaa", "zzzz zzzz", "mmmm mmmm"]
        assert (
            client.post("/api/v1/documents/add", json={"documents": texts, "ids": ["a", "z", "m"]}).status_code == 200
        )
        hits = client.get("/api/v1/documents/search", params={"query": "zzz", "top_k": 3}).json()["results"]
        assert hits[0]["document_id"] == "z"
    embedding_calls = [r for r in fake_upstream.requests if "input" in r]
    assert all(len(call["input"]) <= 2 for call in embedding_calls)  # EMBEDDING_BATCH_SIZE is honoured
    assert {call["model"] for call in embedding_calls} == {"text-embedding-3-small"}


async def test_embeddings_api_failure_is_an_embedding_error(fake_upstream: FakeUpstream) -> None:
    import openai

    # A base URL with no /embeddings route behind it: the API answers 404.
    client = openai.AsyncOpenAI(base_url=f"{fake_upstream.url}/nowhere", api_key="k", max_retries=0)  # type: ignore[attr-defined]
    embedder = OpenAIEmbedder(client, "text-embedding-3-small", dimension=26, batch_size=8)
    with pytest.raises(EmbeddingError, match="embeddings API failed"):
        await embedder.embed(["x"])
    await embedder.aclose()
