"""API keys, CORS, limits, rate limits, request ids and metrics, against a live server configured for them."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from main import create_app
from tests.conftest import make_settings
from tests.fake_upstream import FakeUpstream, Script
from tests.servers import serve

# Rate limits are per key: tests that spend a bucket each have a key of their own.
KEYS = ["key-one-0123456789", "key-two-9876543210", "key-three-5555555555", "key-four-4444444444", "key-five-333333"]
ASK = {"messages": [{"role": "user", "content": "hello?"}], "stream": False}


@pytest.fixture(scope="module")
def secured_url(fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = make_settings(
        tmp_path_factory.mktemp("secured"),
        fake_upstream.url,  # type: ignore[attr-defined]
        api_keys=KEYS,
        cors_origins=["https://app.example.com"],
        rate_limit_per_minute=8,
        max_body_bytes=20_000,
        max_messages=4,
        max_message_chars=1000,
        max_documents_per_add=3,
        max_document_chars=5000,
    )
    with serve(create_app(settings)) as url:
        yield url


@pytest.fixture
def anonymous(secured_url: str, upstream: FakeUpstream) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=secured_url, timeout=30) as client:
        yield client


def keyed(secured_url: str, key: str = KEYS[0]) -> httpx.Client:
    return httpx.Client(base_url=secured_url, timeout=30, headers={"Authorization": f"Bearer {key}"})


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/v1/chat", ASK),
        ("POST", "/api/v1/documents/add", {"documents": ["x"]}),
        ("GET", "/api/v1/documents/search?query=x", None),
        ("GET", "/api/v1/documents", None),
        ("DELETE", "/api/v1/documents/x", None),
        ("GET", "/api/v1/chats?userId=u", None),
        ("POST", "/stream", {"userId": "u", "question": "q"}),
        ("POST", "/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "q"}]}),
        ("GET", "/v1/models", None),
        ("GET", "/metrics", None),
    ],
)
def test_routes_need_a_key(
    anonymous: httpx.Client, upstream: FakeUpstream, method: str, path: str, body: dict | None
) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer wrong-key"},
        {"X-API-Key": "wrong-key"},
        {"Authorization": "Basic abc"},
    ):
        response = anonymous.request(method, path, json=body, headers=headers)
        assert response.status_code == 401, (path, headers)
        error = response.json()["error"]
        expected = "invalid API key" if "wrong-key" in str(headers) else "missing credentials"
        assert error["message"].startswith(expected), (headers, error)
    assert upstream.requests == []


@pytest.mark.parametrize(
    "path", ["/api/v1/health", "/docs", "/openapi.json", "/", "/static/app.js", "/static/style.css"]
)
def test_open_routes(anonymous: httpx.Client, path: str) -> None:
    assert anonymous.get(path).status_code == 200


@pytest.mark.parametrize("header", ["Authorization", "X-API-Key"])
@pytest.mark.parametrize("key", KEYS[:2])
def test_either_key_in_either_header(secured_url: str, upstream: FakeUpstream, header: str, key: str) -> None:
    value = f"Bearer {key}" if header == "Authorization" else key
    with httpx.Client(base_url=secured_url, timeout=30, headers={header: value}) as client:
        assert client.get("/api/v1/documents").status_code == 200


def test_websocket_authenticates_at_connect(secured_url: str, upstream: FakeUpstream) -> None:
    ws_url = secured_url.replace("http", "ws") + "/api/v1/ws/chat"
    with pytest.raises(InvalidStatus) as info:
        connect(ws_url, open_timeout=10)
    assert info.value.response.status_code == 403
    with connect(f"{ws_url}?api_key={KEYS[4]}", open_timeout=10) as ws:
        ws.send(json.dumps({"question": "hi"}))
        frames = []
        while not frames or frames[-1]["type"] != "done":
            frames.append(json.loads(ws.recv(timeout=10)))
    with connect(ws_url, additional_headers={"X-API-Key": KEYS[0]}, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "ping"}))
        assert json.loads(ws.recv(timeout=10)) == {"type": "pong"}


def test_websocket_questions_are_rate_limited(secured_url: str, upstream: FakeUpstream) -> None:
    # A key of its own, so that this bucket starts full: 8 questions pass, the 9th is refused, the socket stays open.
    ws_url = secured_url.replace("http", "ws") + f"/ws_chat?api_key={KEYS[3]}"
    with connect(ws_url, open_timeout=10) as ws:
        for n in range(9):
            ws.send(json.dumps({"question": "hi", "id": n}))
            frame = json.loads(ws.recv(timeout=10))
            while n < 8 and frame["type"] != "done":
                frame = json.loads(ws.recv(timeout=10))
        assert frame["type"] == "error"
        assert (frame["status"], frame["error"]["type"], frame["id"]) == (429, "rate_limited", 8)
        assert frame["retry_after"] >= 1
        ws.send(json.dumps({"type": "ping"}))
        assert json.loads(ws.recv(timeout=10)) == {"type": "pong"}


def test_keys_are_never_logged(secured_url: str, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with keyed(secured_url) as client:
        client.get("/api/v1/documents")
        client.get("/api/v1/documents", headers={"Authorization": "Bearer not-a-real-key-555"})
        client.post("/api/v1/chat", json=ASK)
    text = "\n".join(r.getMessage() + json.dumps(r.__dict__, default=str) for r in caplog.records)
    assert "/api/v1/documents" in text  # the access log did log these requests
    assert KEYS[0] not in text
    assert "not-a-real-key-555" not in text
    assert "hello?" not in text  # nor questions, while LOG_PROMPTS is off


def test_rate_limit_per_key(secured_url: str, upstream: FakeUpstream) -> None:
    with keyed(secured_url, KEYS[1]) as client:
        statuses = [client.post("/api/v1/chat", json=ASK).status_code for _ in range(8)]
        assert statuses == [200] * 8
        limited = client.post("/api/v1/chat", json=ASK)
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1
        assert "8 requests per minute" in limited.json()["error"]["message"]
        assert client.get("/api/v1/documents").status_code == 200  # reads are not limited
    with keyed(secured_url, KEYS[0]) as other:
        assert (
            other.post("/api/v1/documents/add", json={"documents": ["another key, another bucket"]}).status_code == 200
        )


@pytest.mark.parametrize(
    ("path", "body", "names"),
    [
        ("/api/v1/chat", {"messages": [{"role": "user", "content": "x"}] * 5}, "MAX_MESSAGES"),
        ("/api/v1/chat", {"messages": [{"role": "user", "content": "x" * 1001}]}, "MAX_MESSAGE_CHARS"),
        ("/api/v1/chat", {"messages": [{"role": "user", "content": "x"}], "top_k": 51}, "MAX_TOP_K"),
        ("/api/v1/documents/add", {"documents": ["a", "b", "c", "d"]}, "MAX_DOCUMENTS_PER_ADD"),
        ("/api/v1/documents/add", {"documents": ["y" * 5001]}, "MAX_DOCUMENT_CHARS"),
        (
            "/v1/chat/completions",
            {"model": "m", "messages": [{"role": "user", "content": "x" * 1001}]},
            "MAX_MESSAGE_CHARS",
        ),
    ],
)
def test_limits_name_themselves(secured_url: str, upstream: FakeUpstream, path: str, body: dict, names: str) -> None:
    with keyed(secured_url, KEYS[2]) as client:
        response = client.post(path, json=body)
    assert response.status_code in (400, 422)
    assert names in response.json()["error"]["message"]


def test_body_over_the_limit_is_413(secured_url: str) -> None:
    big = {"documents": ["z" * 30_000]}
    with keyed(secured_url) as client:
        response = client.post("/api/v1/documents/add", json=big)
        assert response.status_code == 413
        assert "20000 bytes" in response.json()["error"]["message"]

        # Without a Content-Length header (chunked), the body is counted as it arrives.
        def chunks() -> Iterator[bytes]:
            yield json.dumps(big).encode()

        response = client.post("/api/v1/documents/add", content=chunks(), headers={"content-type": "application/json"})
        assert response.status_code == 413


def test_cors(anonymous: httpx.Client) -> None:
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type,x-api-key"}
    allowed = anonymous.options("/api/v1/chat", headers={"Origin": "https://app.example.com", **preflight})
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
    denied = anonymous.options("/api/v1/chat", headers={"Origin": "https://evil.example.com", **preflight})
    assert "access-control-allow-origin" not in denied.headers


def test_request_id_is_echoed_or_made(anonymous: httpx.Client) -> None:
    assert anonymous.get("/api/v1/health", headers={"X-Request-ID": "trace-42"}).headers["x-request-id"] == "trace-42"
    made = anonymous.get("/api/v1/health").headers["x-request-id"]
    assert len(made) == 32
    # Something that is not an id (too long, odd characters) is replaced rather than echoed into logs.
    assert (
        anonymous.get("/api/v1/health", headers={"X-Request-ID": "a b\\c" * 50}).headers["x-request-id"]
        != "a b\\c" * 50
    )


def test_metrics(secured_url: str, upstream: FakeUpstream) -> None:
    with keyed(secured_url, KEYS[0]) as client:
        client.post("/api/v1/documents/add", json={"documents": ["metrics doc"]})
        with client.stream("POST", "/api/v1/chat", json=ASK | {"stream": True}) as response:
            response.read()
        upstream.reset(Script(status=500))
        client.post("/api/v1/chat", json=ASK)
        client.delete("/api/v1/documents/x")
        text = client.get("/metrics").text
    lines = text.splitlines()
    assert "# TYPE rag_http_requests_total counter" in lines
    assert any(
        line.startswith('rag_http_requests_total{method="POST",route="/api/v1/chat",status="200"}') for line in lines
    )
    assert any(
        line.startswith('rag_http_requests_total{method="POST",route="/api/v1/chat",status="502"}') for line in lines
    )
    assert any(line.startswith("rag_http_request_duration_seconds_bucket{") for line in lines)
    ttft = next(line for line in lines if line.startswith("rag_time_to_first_token_seconds_count"))
    assert float(ttft.split()[-1]) >= 1
    tokens = next(line for line in lines if line.startswith("rag_tokens_streamed_total"))
    assert float(tokens.split()[-1]) >= 4
    assert "rag_active_streams 0" in lines
    assert 'rag_upstream_errors_total{type="upstream_unavailable"} 1' in lines
    # Routes are labelled by their template, not by the raw path.
    assert not any("/api/v1/documents/x" in line for line in lines)
    assert any('route="/api/v1/documents/{document_id}"' in line for line in lines)
    store = next(line for line in lines if line.startswith("rag_store_chunks"))
    assert float(store.split()[-1]) >= 1
