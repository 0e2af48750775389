"""The out-of-the-box configuration, for real: bundled embedder, local SmolLM2 through llama.cpp, live server."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llm.local import LocalChatModel
from llm.types import GenerationOptions, Message
from main import create_app
from tests.conftest import make_settings
from tests.servers import serve
from tests.sse import iter_data, read_stream


@pytest.fixture(scope="module")
def default_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = make_settings(tmp_path_factory.mktemp("e2e"), llm_provider="local", llm_max_tokens=48)
    assert settings.resolved_llm_provider == "local"
    with serve(create_app(settings)) as url:
        yield url


def test_add_documents_and_chat_with_the_local_model(default_service: str) -> None:
    with httpx.Client(base_url=default_service, timeout=120) as client:
        health = client.get("/api/v1/health").json()
        # Nothing asked yet: the model is loaded for the first answer (LOCAL_KEEP_ALIVE_SECONDS).
        assert health["llm"] == {"provider": "local", "model": "SmolLM2-135M-Instruct.Q4_1", "loaded": False}
        added = client.post(
            "/api/v1/documents/add",
            json={
                "documents": [
                    "The Eiffel Tower is in Paris. It was completed in 1889 and is 330 metres tall.",
                    "Bananas are rich in potassium and grow in tropical climates.",
                ],
                "metadatas": [{"title": "eiffel.txt"}, {"title": "bananas.txt"}],
            },
        )
        assert added.status_code == 200
        question = {"messages": [{"role": "user", "content": "When was the Eiffel Tower completed?"}]}
        with client.stream("POST", "/api/v1/chat", json=question) as response:
            assert response.status_code == 200
            payloads, done = read_stream(response)
        assert client.get("/api/v1/health").json()["llm"]["loaded"] is True
    assert done
    sources = payloads[0]["sources"]
    assert sources[0]["metadata"] == {"title": "eiffel.txt"}
    tokens = [p["content"] for p in payloads if p["content"]]
    assert len(tokens) > 1, "the answer should arrive as several tokens"
    assert "".join(tokens).strip()
    usage = next(p["usage"] for p in payloads if "usage" in p)
    assert usage["completion_tokens"] == len(tokens)
    assert usage["prompt_tokens"] > 20  # the system prompt with the context is in there


def test_leaving_mid_answer_frees_the_local_model(default_service: str) -> None:
    question = {"messages": [{"role": "user", "content": "Write a very long story about a dragon."}], "max_tokens": 400}
    with httpx.Client(base_url=default_service, timeout=120) as client:
        with client.stream("POST", "/api/v1/chat", json=question) as response:
            for data in iter_data(response):
                if json.loads(data)["content"]:
                    break
        # The next answer can only start once the first generation has stopped and released the model.
        answer = client.post("/api/v1/chat", json={"messages": [{"role": "user", "content": "Hi"}], "stream": False})
    assert answer.status_code == 200
    assert answer.json()["usage"]["completion_tokens"] >= 1


async def test_closing_the_local_stream_stops_generation() -> None:
    model = await LocalChatModel.load(None, 2048, None, 400, None)
    try:
        stream = model.stream([Message("user", "Count from one to one thousand in words.")], GenerationOptions())
        await anext(stream)
        await stream.aclose()
        assert not any(t.name == "local-llm" and t.is_alive() for t in threading.enumerate())
        # llama.cpp's context holds the prompt plus what was generated: far fewer than the 400 tokens asked for.
        assert model._llama.n_tokens < 100
    finally:
        await model.aclose()


async def test_the_key_cache_type_is_the_one_configured() -> None:
    """LOCAL_KEY_CACHE_TYPE reaches llama.cpp, whose cache then takes less memory, and the model still answers."""
    import llama_cpp

    sizes = {}
    for key_type in ("q8_0", "q4_0"):
        model = await LocalChatModel.load(None, 1024, 1, 4, 0.0, key_type)
        try:
            assert model._llama.context_params.type_k == getattr(llama_cpp, f"GGML_TYPE_{key_type.upper()}")
            pieces = [d.content async for d in model.stream([Message("user", "Hi")], GenerationOptions()) if d.content]
            assert pieces
            # What the context saves of itself: mostly the cached keys and values of the tokens it holds.
            sizes[key_type] = llama_cpp.llama_state_get_size(model._llama.ctx)
        finally:
            await model.aclose()
    assert sizes["q4_0"] < sizes["q8_0"]


async def test_the_local_model_loads_for_an_answer_and_closes_when_idle() -> None:
    """LOCAL_KEEP_ALIVE_SECONDS: nothing loaded until the first answer; closed that long after the last one (an
    answer in between keeps it); loaded again for the next."""

    async def answer() -> str:
        return "".join([d.content async for d in model.stream([Message("user", "Hi")], GenerationOptions())])

    model = await LocalChatModel.load(None, 1024, 1, 4, 0.0, keep_alive=0.5)
    try:
        assert not model.loaded
        first = await answer()
        assert first and model.loaded
        await asyncio.sleep(0.3)
        assert await answer() == first  # within the keep-alive: the same model, which restarts the clock
        await asyncio.sleep(0.3)
        assert model.loaded
        for _ in range(100):
            if not model.loaded:
                break
            await asyncio.sleep(0.05)
        assert not model.loaded
        assert await answer() == first and model.loaded  # greedy: the reloaded model answers the same
    finally:
        await model.aclose()
    assert not model.loaded


async def test_a_missing_wrong_or_broken_model_file_is_a_clear_error(tmp_path: Path) -> None:
    from llm.errors import ModelUnavailable

    with pytest.raises(ModelUnavailable, match="not a file"):
        await LocalChatModel.load(tmp_path / "nope.gguf", 2048, None, 16, None)
    (tmp_path / "notes.gguf").write_text("not a model")
    with pytest.raises(ModelUnavailable, match="not a GGUF file"):  # refused at start-up, even when loaded lazily
        await LocalChatModel.load(tmp_path / "notes.gguf", 2048, None, 16, None, keep_alive=300)
    (tmp_path / "broken.gguf").write_bytes(b"GGUF" + bytes(64))  # the right start, then nothing llama.cpp can read
    model = await LocalChatModel.load(tmp_path / "broken.gguf", 2048, None, 16, None, keep_alive=300)
    with pytest.raises(ModelUnavailable, match="could not be loaded"):
        async for _ in model.stream([Message("user", "Hi")], GenerationOptions()):
            pass
    assert not model.loaded
    await model.aclose()


def test_a_question_longer_than_the_local_context_is_a_clear_error(default_service: str) -> None:
    """llama.cpp refuses a prompt that does not fit its window: the client learns why, and the model still serves."""
    question = "Which ferries cross the harbour at night? " * 700  # 29,400 characters: more than 4,096 tokens
    response = httpx.post(
        f"{default_service}/api/v1/chat", json={"messages": [{"role": "user", "content": question}]}, timeout=120
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "context_length_exceeded"
    assert "more than the local model's context window of 4096 (LOCAL_CONTEXT_TOKENS)" in error["message"]
    with httpx.stream(
        "POST", f"{default_service}/api/v1/chat", json={"messages": [{"role": "user", "content": "Hi"}]}, timeout=120
    ) as answer:
        assert answer.status_code == 200
        payloads, done = read_stream(answer)
    assert done and "".join(p.get("content", "") for p in payloads)
