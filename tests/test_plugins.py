"""Your own classes, without a fork: the three examples in examples/plugins/ loaded through settings and used for a
chat end to end over HTTP; classes that lack what the service calls refused at start-up by name; options; and an
installed package's entry point found by its name."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from llm.factory import build_chat_model
from llm.plugins import PluginError
from llm.simple import SimpleChatModel
from llm.types import GenerationOptions, Message
from main import create_app
from rag.embedders import build_embedder
from rag.stores import open_store
from tests.conftest import make_settings
from tests.servers import serve
from tests.sse import read_stream

EMBEDDER = "examples.plugins.hashing_embedder:HashingEmbedder"
STORE = "examples.plugins.memory_store:MemoryStore"
MODEL = "examples.plugins.extractive_model:ExtractiveModel"


def test_the_three_example_plugins_answer_a_chat_end_to_end(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        embedder=EMBEDDER,
        embedder_options={"dimension": 128},
        vector_store=STORE,
        llm_provider=MODEL,
        similarity_threshold=0.2,  # bag-of-words cosines run lower than a sentence model's
    )
    with serve(create_app(settings)) as url:
        health = httpx.get(f"{url}/api/v1/health").json()
        assert health["embedder"] == {"model": "hashing-128", "dimension": 128}
        assert health["store"]["backend"] == "memory"
        assert health["llm"] == {"provider": "plugin", "model": "extractive-1"}
        added = httpx.post(
            f"{url}/api/v1/documents/add",
            json={
                "documents": [
                    "The Eiffel Tower was completed in 1889. It is 330 metres tall.",
                    "The Golden Gate Bridge opened in 1937 and spans the strait.",
                ],
                "ids": ["eiffel", "bridge"],
            },
        )
        assert added.status_code == 200, added.text
        body = {"messages": [{"role": "user", "content": "When was the Eiffel Tower completed?"}]}
        with httpx.stream("POST", f"{url}/api/v1/chat", json=body, timeout=30) as response:
            assert response.status_code == 200
            events, done = read_stream(response)
        assert done
        sources = next(e["sources"] for e in events if "sources" in e)
        assert sources[0]["document_id"] == "eiffel"
        tokens = [e["content"] for e in events if e.get("content")]
        assert len(tokens) > 3  # streamed word by word
        assert "".join(tokens).strip() == "The Eiffel Tower was completed in 1889. [1]"
        assert httpx.delete(f"{url}/api/v1/documents/bridge").json() == {"id": "bridge", "deleted_chunks": 1}
        assert httpx.get(f"{url}/api/v1/documents").json()["total"] == 1


async def test_a_class_that_lacks_methods_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(PluginError) as refused:
        await open_store(make_settings(tmp_path, vector_store=EMBEDDER), "model", 3)
    message = str(refused.value)
    assert "examples.plugins.hashing_embedder.HashingEmbedder lacks" in message
    for method in ("upsert()", "delete()", "search()", "list_documents()", "refresh()", "aclose()", "backend"):
        assert method in message
    with pytest.raises(PluginError, match=r"MemoryStore lacks embed\(\), embed_documents\(\), model_name"):
        await build_embedder(make_settings(tmp_path, embedder=STORE))
    with pytest.raises(PluginError, match=r"MemoryStore lacks stream\(\), provider, model"):
        await build_chat_model(make_settings(tmp_path, llm_provider=STORE))


async def test_names_and_options_that_do_not_resolve_say_why(tmp_path: Path) -> None:
    with pytest.raises(PluginError, match="cannot import no_such_package"):
        await build_embedder(make_settings(tmp_path, embedder="no_such_package.module:Thing"))
    with pytest.raises(PluginError, match="has no Nothing"):
        await build_embedder(make_settings(tmp_path, embedder="examples.plugins.hashing_embedder:Nothing"))
    with pytest.raises(PluginError, match="no installed package registers it under the entry point group"):
        await build_embedder(make_settings(tmp_path, embedder="nonesuch"))
    with pytest.raises(PluginError, match=r"cannot build HashingEmbedder with options \['dimensions'\]"):
        await build_embedder(make_settings(tmp_path, embedder=EMBEDDER, embedder_options={"dimensions": 3}))


async def test_an_installed_package_registers_its_class_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`pip install our-embedder` writes a dist-info with entry points; a name in settings is then enough."""
    dist = tmp_path / "our_embedder-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: our-embedder\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[rag_service.embedders]\nhashing = {EMBEDDER}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    embedder = await build_embedder(make_settings(tmp_path, embedder="hashing", embedder_options={"dimension": 64}))
    assert (embedder.model_name, embedder.dimension) == ("hashing-64", 64)
    vectors = await embedder.embed(["the tower", "the tower"])
    assert vectors.shape == (2, 64) and abs(float(vectors[0] @ vectors[1]) - 1.0) < 1e-6
    await embedder.aclose()


class Recording:
    """A user's model as the original README had it, remembering whether its generator was closed early."""

    model = "recording"

    def __init__(self) -> None:
        self.closed = False
        self.seen: tuple[list[dict[str, str]], str] | None = None

    async def stream_response(self, messages: list[dict[str, str]], context: str) -> AsyncIterator[str]:
        self.seen = (messages, context)
        try:
            for word in ["one ", "two ", "three "]:
                yield word
        finally:
            self.closed = True


class Synchronous:
    model = "sync"

    def stream_response(self, messages: list[dict[str, str]], context: str) -> Iterator[str]:
        yield from ["a ", "b"]


async def test_a_simple_model_gets_the_conversation_and_the_context_and_is_stopped_with_its_answer() -> None:
    impl = Recording()
    model = SimpleChatModel(impl)
    messages = [Message("system", "Context:\n[1] the passage"), Message("user", "Hi?")]
    stream = model.stream(messages, GenerationOptions())
    assert (await anext(stream)).content == "one "
    await stream.aclose()  # the client left after the first token
    assert impl.closed
    assert impl.seen == ([{"role": "user", "content": "Hi?"}], "Context:\n[1] the passage")
    deltas = [d async for d in SimpleChatModel(Synchronous()).stream(messages, GenerationOptions())]
    assert [d.content for d in deltas] == ["a ", "b", ""] and deltas[-1].finish_reason == "stop"
