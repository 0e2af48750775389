"""The real OpenAI SDK client against the fake upstream over HTTP on 127.0.0.1."""

from __future__ import annotations

import socket
import time

import anyio
import pytest

from config import Settings
from llm.errors import UpstreamProtocolError, UpstreamRateLimited, UpstreamTimeout, UpstreamUnavailable
from llm.openai_client import OpenAIChatModel, make_async_client
from llm.types import Delta, GenerationOptions, Message
from llm.upstream_pool import AsyncioBackend, AsyncioStream
from tests.fake_upstream import FakeUpstream, Script

QUESTION = [Message("system", "ctx"), Message("user", "hi")]


def model_for(upstream: FakeUpstream, **overrides: object) -> OpenAIChatModel:
    values = {"openai_base_url": upstream.url, "openai_api_key": "k", "openai_max_retries": 0, "openai_timeout": 2.0}
    settings = Settings(_env_file=None, **(values | overrides))
    return OpenAIChatModel(make_async_client(settings), "fake-model", max_tokens=64, temperature=None)


async def collect(model: OpenAIChatModel, options: GenerationOptions | None = None) -> list[Delta]:
    return [d async for d in model.stream(QUESTION, options or GenerationOptions())]


async def test_streams_tokens_usage_and_finish(upstream: FakeUpstream) -> None:
    deltas = await collect(model_for(upstream))
    assert "".join(d.content for d in deltas) == "Hello, world!"
    assert [d.finish_reason for d in deltas if d.finish_reason] == ["stop"]
    usage = [d.usage for d in deltas if d.usage]
    assert len(usage) == 1
    assert (usage[0].prompt_tokens, usage[0].completion_tokens) == (7, 4)
    sent = upstream.requests[0]
    assert sent["model"] == "fake-model"
    assert sent["stream"] is True
    assert sent["messages"] == [{"role": "system", "content": "ctx"}, {"role": "user", "content": "hi"}]


@pytest.mark.parametrize("line_end", ["\n", "\r\n", "\r"])
@pytest.mark.parametrize("piece_bytes", [None, 3, 7])
@pytest.mark.parametrize("done_marker", [True, False])
async def test_lines_are_read_whatever_their_ends_and_however_the_body_is_cut(
    upstream: FakeUpstream, line_end: str, piece_bytes: int | None, done_marker: bool
) -> None:
    """The client splits the body into lines itself: reads that end inside a line, inside a CRLF or inside a UTF-8
    character, and a last line with no line break (`[DONE]`, or the usage chunk when there is no `[DONE]`), all
    give the same answer."""
    tokens = ["Grüße", " 🙂", ' "quoted"', " done"]
    upstream.reset(
        Script(tokens=tokens, line_end=line_end, piece_bytes=piece_bytes, final_line_end=False, done_marker=done_marker)
    )
    deltas = await collect(model_for(upstream))
    assert "".join(d.content for d in deltas) == "".join(tokens)
    assert [d.finish_reason for d in deltas if d.finish_reason] == ["stop"]
    assert [(u.prompt_tokens, u.completion_tokens) for d in deltas if (u := d.usage)] == [(7, 4)]


async def test_answers_reuse_one_upstream_connection_through_the_probed_pool(upstream: FakeUpstream) -> None:
    """An answer read to its end gives its connection back to the pool, and the pool's idle-connection probe is
    ours (`llm/upstream_pool.py`): it took, on the pinned httpx2."""
    model = model_for(upstream)
    for _ in range(3):
        assert "".join(d.content for d in await collect(model)) == "Hello, world!"
    assert len(upstream.client_ports) == 3
    assert len(set(upstream.client_ports)) == 1
    assert isinstance(model._client._client._transport._pool._network_backend, AsyncioBackend)  # type: ignore[attr-defined]


async def test_the_probe_sees_a_connection_the_server_closed() -> None:
    """Idle and open: not readable, so the pool reuses it. Closed by the server: readable (the coming b""), so the
    pool drops it instead of sending a request into it."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        stream = await AsyncioBackend().connect_tcp("127.0.0.1", server.getsockname()[1])
        peer, _ = server.accept()
        assert isinstance(stream, AsyncioStream)
        assert stream.get_extra_info("is_readable") is False
        await stream.write(b"ping")
        assert peer.recv(4) == b"ping"
        peer.close()
        deadline = time.monotonic() + 5
        while not stream.get_extra_info("is_readable") and time.monotonic() < deadline:
            await anyio.sleep(0.01)
        assert stream.get_extra_info("is_readable") is True
        assert await stream.read(10) == b""
        await stream.aclose()


async def test_options_are_sent_upstream(upstream: FakeUpstream) -> None:
    await collect(model_for(upstream), GenerationOptions(max_tokens=9, temperature=0.5, stop=("END",)))
    sent = upstream.requests[0]
    assert (sent["max_tokens"], sent["temperature"], sent["stop"]) == (9, 0.5, ["END"])


async def test_reasoning_content_is_separated(upstream: FakeUpstream) -> None:
    upstream.reset(Script(reasoning=["Let me ", "think."], tokens=["Yes."]))
    deltas = await collect(model_for(upstream))
    assert "".join(d.reasoning for d in deltas) == "Let me think."
    assert "".join(d.content for d in deltas) == "Yes."


@pytest.mark.parametrize(
    ("status", "error"), [(500, UpstreamUnavailable), (503, UpstreamUnavailable), (401, UpstreamUnavailable)]
)
async def test_error_status_is_mapped(upstream: FakeUpstream, status: int, error: type[Exception]) -> None:
    upstream.reset(Script(status=status))
    with pytest.raises(error, match=str(status)):
        await collect(model_for(upstream))


async def test_rate_limit_keeps_retry_after(upstream: FakeUpstream) -> None:
    upstream.reset(Script(status=429, retry_after="7"))
    with pytest.raises(UpstreamRateLimited) as info:
        await collect(model_for(upstream))
    assert info.value.retry_after == 7.0


async def test_retries_happen_before_the_first_token(upstream: FakeUpstream) -> None:
    upstream.reset(Script(status=503))
    with pytest.raises(UpstreamUnavailable):
        await collect(model_for(upstream, openai_max_retries=2))
    assert len(upstream.requests) == 3


async def test_a_retried_failure_then_streams_the_answer(upstream: FakeUpstream) -> None:
    upstream.reset(Script(status=503, failures=2, tokens=["ok"]))
    deltas = await collect(model_for(upstream, openai_max_retries=2))
    assert "".join(d.content for d in deltas) == "ok"
    assert len(upstream.requests) == 3


async def test_retry_after_is_waited_before_the_retry(upstream: FakeUpstream) -> None:
    upstream.reset(Script(status=429, failures=1, retry_after="1", tokens=["ok"]))
    started = time.monotonic()
    deltas = await collect(model_for(upstream, openai_max_retries=1))
    assert "".join(d.content for d in deltas) == "ok"
    assert time.monotonic() - started >= 0.9  # the 1 s asked for, not the 0.5 s backoff


@pytest.mark.parametrize(("status", "should_retry"), [(401, None), (400, None), (503, "false")])
async def test_answers_not_worth_a_retry_are_not_retried(
    upstream: FakeUpstream, status: int, should_retry: str | None
) -> None:
    upstream.reset(Script(status=status, should_retry=should_retry))
    with pytest.raises(UpstreamUnavailable, match=str(status)):
        await collect(model_for(upstream, openai_max_retries=2))
    assert len(upstream.requests) == 1


async def test_an_unreachable_upstream_is_retried_then_unavailable() -> None:
    with socket.socket() as placeholder:  # a port nobody listens on
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    settings = Settings(
        _env_file=None, openai_base_url=f"http://127.0.0.1:{port}/v1", openai_api_key="k", openai_max_retries=1
    )
    model = OpenAIChatModel(make_async_client(settings), "m", max_tokens=8, temperature=None)
    started = time.monotonic()
    with pytest.raises(UpstreamUnavailable, match="could not be reached"):
        await collect(model)
    assert time.monotonic() - started >= 0.3  # one backoff (0.375 to 0.5 s) before the second attempt


async def test_the_request_carries_the_sdk_configuration(upstream: FakeUpstream) -> None:
    await collect(model_for(upstream))
    headers = upstream.request_headers[0]
    assert headers["authorization"] == "Bearer k"
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"].startswith("AsyncOpenAI/Python")
    assert upstream.requests[0]["model"] == "fake-model"
    assert upstream.requests[0]["stream"] is True


async def test_stream_cut_in_the_middle_raises_after_the_tokens_it_got(upstream: FakeUpstream) -> None:
    upstream.reset(Script(tokens=["a", "b", "c", "d"], cut_after=2))
    received: list[str] = []
    with pytest.raises((UpstreamUnavailable, UpstreamProtocolError)):
        async for delta in model_for(upstream).stream(QUESTION, GenerationOptions()):
            received.append(delta.content)
    assert "".join(received) == "ab"


async def test_malformed_chunk_is_a_protocol_error(upstream: FakeUpstream) -> None:
    upstream.reset(Script(tokens=["a", "b"], malformed_after=1))
    with pytest.raises(UpstreamProtocolError):
        await collect(model_for(upstream))


async def test_hang_times_out(upstream: FakeUpstream) -> None:
    upstream.reset(Script(hang=True))
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        await collect(model_for(upstream, openai_timeout=0.5))
    assert time.monotonic() - started < 10  # bounded by the read timeout, not by the upstream


async def test_closing_the_stream_disconnects_upstream(upstream: FakeUpstream) -> None:
    upstream.reset(Script(tokens=["x"] * 50, delay=0.05))
    stream = model_for(upstream).stream(QUESTION, GenerationOptions())
    first = await anext(stream)
    assert first.content == "" or first.content == "x"
    await stream.aclose()
    assert upstream.wait_disconnect(5)
    assert upstream.completed == 0
