"""Upstream and client faults against a live service: a hanging upstream, malformed chunks, error statuses (a prompt
too long for the model among them), a stalled reader."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from main import create_app
from tests.conftest import make_settings
from tests.fake_upstream import FakeUpstream, Script
from tests.servers import serve
from tests.sse import read_stream

ASK = {"messages": [{"role": "user", "content": "Tell me."}]}


@pytest.fixture(scope="module")
def faulty_url(fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = make_settings(
        tmp_path_factory.mktemp("faults"),
        fake_upstream.url,  # type: ignore[attr-defined]
        openai_timeout=6.0,
        sse_send_timeout=1.0,
    )
    with serve(create_app(settings)) as url:
        yield url


def test_hanging_upstream_gives_504_and_the_server_keeps_serving(faulty_url: str, upstream: FakeUpstream) -> None:
    upstream.reset(Script(hang=True))
    outcome: dict[str, httpx.Response] = {}

    def hang() -> None:
        outcome["response"] = httpx.post(f"{faulty_url}/api/v1/chat", json=ASK, timeout=60)

    thread = threading.Thread(target=hang)
    thread.start()
    # While that request waits on the upstream, the event loop serves others.
    for _ in range(5):
        assert httpx.get(f"{faulty_url}/api/v1/health", timeout=60).status_code == 200
        assert httpx.get(f"{faulty_url}/api/v1/documents", timeout=60).status_code == 200
    assert thread.is_alive(), "the hanging request should still be waiting on its upstream"
    thread.join(timeout=60)
    response = outcome["response"]
    assert response.status_code == 504
    assert response.json()["error"]["type"] == "upstream_timeout"
    assert upstream.wait_disconnect(5)


def test_malformed_chunk_mid_stream_is_a_final_error_event(faulty_url: str, upstream: FakeUpstream) -> None:
    upstream.reset(Script(tokens=["good", " start"], malformed_after=1))
    with httpx.stream("POST", f"{faulty_url}/api/v1/chat", json=ASK, timeout=30) as response:
        assert response.status_code == 200
        payloads, done = read_stream(response)
    assert done
    assert "".join(p["content"] for p in payloads) == "good"
    assert payloads[-1]["error"]["type"] == "upstream_protocol_error"


@pytest.mark.parametrize(("status", "expected"), [(500, 502), (502, 502), (503, 502), (429, 429)])
def test_upstream_status_before_first_token(
    faulty_url: str, upstream: FakeUpstream, status: int, expected: int
) -> None:
    upstream.reset(Script(status=status, retry_after="4"))
    response = httpx.post(f"{faulty_url}/api/v1/chat", json=ASK, timeout=30)
    assert response.status_code == expected
    assert set(response.json()["error"]) == {"type", "message"}


@pytest.mark.parametrize(
    "script",
    [
        Script(status=400, error_code="context_length_exceeded"),  # OpenAI
        Script(status=400, error_message="This model's maximum context length is 4096 tokens. However, ..."),  # vLLM
    ],
)
def test_a_prompt_too_long_for_the_upstream_model_is_the_clients_error(
    faulty_url: str, upstream: FakeUpstream, script: Script
) -> None:
    upstream.reset(script)
    response = httpx.post(f"{faulty_url}/api/v1/chat", json=ASK, timeout=30)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["type"] == "context_length_exceeded"
    assert "context window" in error["message"] and "maximum context length" not in error["message"]
    openai_route = httpx.post(
        f"{faulty_url}/v1/chat/completions", json={**ASK, "model": "m", "stream": True}, timeout=30
    )
    assert openai_route.status_code == 400
    assert openai_route.json()["error"]["code"] == "context_length_exceeded"
    assert openai_route.json()["error"]["type"] == "invalid_request_error"

    upstream.reset(Script(status=400, error_code="invalid_value"))  # any other 400 is still the upstream's failure
    assert httpx.post(f"{faulty_url}/api/v1/chat", json=ASK, timeout=30).status_code == 502


def test_stalled_reader_frees_its_stream_and_stops_the_upstream(faulty_url: str, upstream: FakeUpstream) -> None:
    # 64 KiB tokens as fast as possible: far more than the socket buffers hold, for a client that never reads.
    upstream.reset(Script(tokens=["x" * 65536] * 2000))
    host, port = faulty_url.removeprefix("http://").split(":")
    body = json.dumps(ASK).encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(
            b"POST /api/v1/chat HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        assert sock.recv(12) == b"HTTP/1.1 200"
        # ...and read nothing more: the server's sends block, its send timeout (1 s) fires, the stream is dropped.
        assert upstream.wait_disconnect(30), "the upstream kept generating for a client that stopped reading"
    assert upstream.completed == 0
    assert httpx.get(f"{faulty_url}/api/v1/health", timeout=30).status_code == 200
