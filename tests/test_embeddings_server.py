"""An embeddings server of its own: two real instances of this service, one serving embeddings (its /v1/embeddings),
the other storing and answering with EMBEDDER=openai pointed at the first. The second's sources match what one
instance alone retrieves; with the server gone, an add is a clear 503 and nothing is half-stored; and a store built
for this model refuses another at start-up."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from main import create_app
from rag.embedders import build_embedder
from rag.errors import EmbeddingUnavailable, StoreIncompatible
from rag.stores import open_store
from tests.conftest import make_settings
from tests.fake_upstream import FakeUpstream
from tests.servers import serve
from tests.sse import read_stream

# Written here, not read from ../shared/datasets: the suite runs where the datasets are not.
DOCUMENTS = [
    "Vitamin D supplementation in older adults was followed by fewer hip fractures in a three-year trial.",
    "Calcium intake alone did not change bone density in postmenopausal women over two years.",
    "MicroRNA-21 is overexpressed in many tumours and suppresses genes that restrain cell growth.",
    "Loss of the p53 tumour suppressor lets cells with damaged DNA keep dividing.",
    "Obesity raises free fatty acids in the blood, which impair insulin signalling in muscle and liver.",
    "Regular aerobic exercise improved insulin sensitivity in adults with type 2 diabetes.",
    "Statin users reported muscle pain more often than placebo users only when they knew what they took.",
    "Lowering LDL cholesterol with statins reduced heart attacks in people at high cardiovascular risk.",
    "The Larkspur ferry carried 1.2 million passengers in 2025, up from 900,000 the year before.",
    "The harbour's new cranes unload a container ship in fourteen hours instead of twenty.",
    "Tide tables for October show the highest spring tide on the 17th, at 5.2 metres.",
    "The lighthouse keeper feeds his cat sardines every morning before the first ferry leaves.",
]
QUESTIONS = [
    "Does vitamin D supplementation reduce the risk of fractures?",
    "What is the role of microRNA in cancer?",
    "How does obesity affect insulin resistance?",
    "Are statins associated with muscle pain?",
    "How many passengers did the ferry carry?",
]


def sources(url: str, question: str) -> list[tuple[str, float]]:
    body = {"messages": [{"role": "user", "content": question}], "top_k": 5}
    with httpx.stream("POST", f"{url}/api/v1/chat", json=body, timeout=60) as response:
        assert response.status_code == 200
        events, _ = read_stream(response)
    found = next(e["sources"] for e in events if "sources" in e)
    return [(s["id"], s["score"]) for s in found]


def add(url: str, documents: list[str]) -> httpx.Response:
    ids = [f"doc-{n}" for n in range(len(documents))]
    return httpx.post(f"{url}/api/v1/documents/add", json={"documents": documents, "ids": ids}, timeout=300)


def test_a_second_instance_embeds_through_the_first_and_retrieves_the_same(
    tmp_path: Path, fake_upstream: FakeUpstream, upstream: FakeUpstream
) -> None:
    documents = DOCUMENTS
    alone_settings = make_settings(tmp_path / "alone", fake_upstream.url)  # type: ignore[attr-defined]
    with contextlib.ExitStack() as embeddings_server, contextlib.ExitStack() as second:
        # The first instance serves embeddings (and, as any instance, answers too): the reference.
        embeddings_url = embeddings_server.enter_context(serve(create_app(alone_settings)))
        assert add(embeddings_url, documents).status_code == 200
        expected = {question: sources(embeddings_url, question) for question in QUESTIONS}
        assert all(expected.values())  # every question finds context: the comparison below is not of empty lists

        remote: dict[str, Any] = {
            "embedder": "openai",
            "embeddings_base_url": f"{embeddings_url}/v1",
            "embeddings_api_key": "unused",
            "embeddings_max_retries": 1,
        }
        settings = make_settings(tmp_path / "remote", fake_upstream.url, **remote)  # type: ignore[attr-defined]
        url = second.enter_context(serve(create_app(settings)))
        health = httpx.get(f"{url}/api/v1/health").json()
        assert health["embedder"] == {"model": "sentence-transformers/all-MiniLM-L6-v2", "dimension": 384}
        assert add(url, documents).status_code == 200
        for question in QUESTIONS:
            got = sources(url, question)
            assert [doc for doc, _ in got] == [doc for doc, _ in expected[question]]
            assert [score for _, score in got] == pytest.approx([score for _, score in expected[question]], abs=1e-5)
        stored = httpx.get(f"{url}/api/v1/documents", params={"limit": 1}).json()["total"]

        embeddings_server.close()  # the embeddings server goes away
        response = httpx.post(f"{url}/api/v1/documents/add", json={"documents": ["one more", "and another"]})
        assert response.status_code == 503, response.text
        assert response.json()["error"]["type"] == "embedding_unavailable"
        assert (
            httpx.get(f"{url}/api/v1/documents", params={"limit": 1}).json()["total"] == stored
        )  # nothing half-stored

    # Started while the embeddings server is down, an instance cannot learn the dimension: it does not start.
    with pytest.raises(EmbeddingUnavailable, match="the embeddings server is unavailable"):
        asyncio.run(build_embedder(settings))


async def test_a_store_built_for_one_embedder_refuses_another(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    store = await open_store(settings, "sentence-transformers/all-MiniLM-L6-v2", 384)
    await store.aclose()
    with pytest.raises(StoreIncompatible) as refused:
        await open_store(settings, "hashing-128", 128)
    assert "all-MiniLM-L6-v2" in str(refused.value) and "hashing-128" in str(refused.value)


def test_the_embeddings_settings_fall_back_to_the_openai_ones(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, embedder="openai", openai_base_url="http://chat:8000/v1")
    assert settings.resolved_embedder == "openai" and settings.embeddings_base_url is None
    legacy = make_settings(tmp_path, use_openai_embeddings=True)
    assert legacy.resolved_embedder == "openai"
    assert make_settings(tmp_path, embedder_backend="torch").resolved_embedder == "torch"
    assert json.loads(json.dumps(make_settings(tmp_path).embedder_options)) == {}
