"""The OpenAI-compatible API driven by the official `openai` package (sync and async) against the live service."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import openai
import pytest

from tests.fake_upstream import FakeUpstream, Script

QUESTION = [{"role": "user", "content": "What does the keeper feed his cat?"}]


@pytest.fixture
def sdk(live_url: str, upstream: FakeUpstream) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{live_url}/v1", api_key="any", max_retries=0, timeout=30) as client:
        yield client


@pytest.fixture
async def async_sdk(live_url: str, upstream: FakeUpstream):
    client = openai.AsyncOpenAI(base_url=f"{live_url}/v1", api_key="any", max_retries=0, timeout=30)
    yield client
    await client.close()


def test_completion_without_streaming(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(model="gpt-4o", messages=QUESTION)
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "gpt-4o"
    choice = completion.choices[0]
    assert (choice.message.role, choice.message.content, choice.finish_reason) == ("assistant", "Hello, world!", "stop")
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens) == (
        7,
        4,
        11,
    )
    assert isinstance(completion.model_extra["sources"], list)


def test_streaming_chunks_as_openai_sends_them(sdk: openai.OpenAI) -> None:
    chunks = list(
        sdk.chat.completions.create(
            model="gpt-4o", messages=QUESTION, stream=True, stream_options={"include_usage": True}
        )
    )
    assert len({c.id for c in chunks}) == 1
    assert len({c.created for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    *content_chunks, usage_chunk = chunks
    assert "".join(c.choices[0].delta.content or "" for c in content_chunks) == "Hello, world!"
    assert [c.choices[0].finish_reason for c in content_chunks if c.choices[0].finish_reason] == ["stop"]
    assert content_chunks[-1].choices[0].finish_reason == "stop"
    assert isinstance(content_chunks[-1].model_extra["sources"], list)
    assert usage_chunk.choices == []
    assert usage_chunk.usage.total_tokens == 11


def test_no_usage_chunk_unless_asked(sdk: openai.OpenAI) -> None:
    chunks = list(sdk.chat.completions.create(model="gpt-4o", messages=QUESTION, stream=True))
    assert all(c.choices for c in chunks)


def test_options_reach_the_upstream(sdk: openai.OpenAI, upstream: FakeUpstream) -> None:
    sdk.chat.completions.create(
        model="deepseek-chat", messages=QUESTION, temperature=0.3, max_tokens=17, stop=["END"],
        extra_body={"top_k": 2, "some_unknown_field": {"ignored": True}},
    )  # fmt: skip
    sent = upstream.requests[0]
    assert (sent["model"], sent["temperature"], sent["max_tokens"], sent["stop"]) == ("deepseek-chat", 0.3, 17, ["END"])


def test_content_parts_and_developer_role(sdk: openai.OpenAI, upstream: FakeUpstream) -> None:
    sdk.chat.completions.create(
        model="gpt-4o",
        messages=[
            {"role": "developer", "content": "Be terse."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "Part one, "}, {"type": "text", "text": "part two."}],
            },
        ],
    )
    system, user = upstream.requests[0]["messages"]
    assert "Be terse." in system["content"]
    assert user == {"role": "user", "content": "Part one, part two."}


async def test_async_streaming_with_reasoning(async_sdk: openai.AsyncOpenAI, upstream: FakeUpstream) -> None:
    upstream.reset(Script(reasoning=["Think", "ing."], tokens=["Done."]))
    stream = await async_sdk.chat.completions.create(model="gpt-4o", messages=QUESTION, stream=True)
    reasoning, content = [], []
    async for chunk in stream:
        if chunk.choices:
            delta = chunk.choices[0].delta
            reasoning.append((delta.model_extra or {}).get("reasoning_content") or "")
            content.append(delta.content or "")
    assert "".join(reasoning) == "Thinking."
    assert "".join(content) == "Done."


async def test_async_completion(async_sdk: openai.AsyncOpenAI) -> None:
    completion = await async_sdk.chat.completions.create(model="gpt-4o", messages=QUESTION)
    assert completion.choices[0].message.content == "Hello, world!"


def test_upstream_rate_limit_is_a_rate_limit_error(sdk: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.reset(Script(status=429, retry_after="9"))
    with pytest.raises(openai.RateLimitError) as info:
        sdk.chat.completions.create(model="gpt-4o", messages=QUESTION, stream=True)
    assert info.value.status_code == 429
    assert info.value.response.headers["retry-after"] == "9"
    assert info.value.code == "upstream_rate_limited"


def test_upstream_timeout_is_504(sdk: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.reset(Script(hang=True))
    with pytest.raises(openai.APIStatusError) as info:
        sdk.chat.completions.create(model="gpt-4o", messages=QUESTION)
    assert info.value.status_code == 504


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        ({"messages": QUESTION, "temperature": 7}, "temperature"),
        ({"messages": QUESTION, "n": 2}, "n"),
        ({"messages": QUESTION, "max_tokens": 0}, "max_tokens"),
    ],
)
def test_invalid_requests_are_openai_style_400(
    sdk: openai.OpenAI, upstream: FakeUpstream, kwargs: dict, param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(model="gpt-4o", **kwargs)
    error = info.value.body
    assert info.value.status_code == 400
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]
    assert upstream.requests == []


def test_failure_mid_stream_raises_in_the_client(sdk: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.reset(Script(tokens=["a", "b", "c"], cut_after=2))
    received = []
    with pytest.raises(openai.APIError):
        for chunk in sdk.chat.completions.create(model="gpt-4o", messages=QUESTION, stream=True):
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "ab"


def test_models(sdk: openai.OpenAI) -> None:
    ids = [model.id for model in sdk.models.list()]
    assert ids == ["gpt-4o", "sentence-transformers/all-MiniLM-L6-v2"]


def test_embeddings_float_and_base64_agree(sdk: openai.OpenAI) -> None:
    texts = ["The cat eats sardines.", "A completely different sentence."]
    as_float = sdk.embeddings.create(model="any", input=texts, encoding_format="float")
    as_base64 = sdk.embeddings.create(model="any", input=texts)  # the SDK asks for base64 and decodes it
    assert [d.index for d in as_float.data] == [0, 1]
    for a, b in zip(as_float.data, as_base64.data, strict=True):
        assert len(a.embedding) == 384
        np.testing.assert_allclose(a.embedding, b.embedding, rtol=1e-6)
        assert np.linalg.norm(a.embedding) == pytest.approx(1.0, abs=1e-4)
    assert as_float.model == "sentence-transformers/all-MiniLM-L6-v2"
    assert as_float.usage.total_tokens > 0


async def test_embeddings_single_string_async(async_sdk: openai.AsyncOpenAI) -> None:
    response = await async_sdk.embeddings.create(model="any", input="hello", encoding_format="float")
    assert len(response.data) == 1


@pytest.mark.parametrize("payload", [[], "", ["ok", ""], [[1, 2, 3]]])
def test_bad_embedding_inputs(sdk: openai.OpenAI, payload: object) -> None:
    with pytest.raises(openai.BadRequestError):
        sdk.embeddings.create(model="any", input=payload)  # type: ignore[arg-type]
