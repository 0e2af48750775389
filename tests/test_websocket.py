"""WebSocket chat against a live server, driven by the `websockets` client library."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.fake_upstream import FakeUpstream, Script

# The Elasticsearch service's WebSocket request, verbatim.
SEED_FRAME = {"model": "deepseek-r1-distill", "question": "What's the weather?", "userId": "testuser", "stream": True}


@pytest.fixture
def ws(live_url: str, upstream: FakeUpstream) -> Iterator[ClientConnection]:
    with connect(live_url.replace("http", "ws") + "/ws_chat", open_timeout=10) as connection:
        yield connection


def receive(ws: ClientConnection, timeout: float = 10) -> dict[str, Any]:
    return json.loads(ws.recv(timeout=timeout))


def until_done(ws: ClientConnection) -> list[dict[str, Any]]:
    frames = []
    while True:
        frame = receive(ws)
        frames.append(frame)
        if frame["type"] == "done":
            return frames


def test_seed_frame_streams_typed_frames(ws: ClientConnection, upstream: FakeUpstream) -> None:
    ws.send(json.dumps(SEED_FRAME))
    frames = until_done(ws)
    assert frames[0]["type"] == "sources"
    assert "".join(f["content"] for f in frames if f["type"] == "token") == "Hello, world!"
    assert [f["usage"]["total_tokens"] for f in frames if f["type"] == "usage"] == [11]
    assert frames[-1] == {"type": "done", "finish_reason": "stop"}
    assert upstream.requests[0]["messages"][-1] == {"role": "user", "content": "What's the weather?"}


def test_many_questions_on_one_connection(ws: ClientConnection, upstream: FakeUpstream) -> None:
    for n in range(3):
        ws.send(json.dumps({"question": f"question {n}", "id": n}))
        frames = until_done(ws)
        assert all(f["id"] == n for f in frames)
    assert [r["messages"][-1]["content"] for r in upstream.requests] == ["question 0", "question 1", "question 2"]


def test_history_and_messages_forms(ws: ClientConnection, upstream: FakeUpstream) -> None:
    ws.send(json.dumps({"question": "Should I carry umbrella?",
                        "history": [{"role": "user", "content": "What's the weather?"},
                                    {"role": "assist", "content": "It's sunny outside."}]}))  # fmt: skip
    until_done(ws)
    ws.send(json.dumps({"messages": [{"role": "user", "content": "Hi there"}]}))
    until_done(ws)
    first, second = upstream.requests
    assert [m["role"] for m in first["messages"]] == ["system", "user", "assistant", "user"]
    assert first["messages"][2]["content"] == "It's sunny outside."
    assert second["messages"][-1] == {"role": "user", "content": "Hi there"}


def test_reasoning_frames(ws: ClientConnection, upstream: FakeUpstream) -> None:
    upstream.reset(Script(reasoning=["Clouds ", "expected."], tokens=["Take it."]))
    ws.send(json.dumps(SEED_FRAME))
    frames = until_done(ws)
    assert "".join(f["content"] for f in frames if f["type"] == "reasoning") == "Clouds expected."
    assert "".join(f["content"] for f in frames if f["type"] == "token") == "Take it."


def test_not_streaming_gets_one_answer_frame(ws: ClientConnection, upstream: FakeUpstream) -> None:
    ws.send(json.dumps(SEED_FRAME | {"stream": False}))
    frame = receive(ws)
    assert frame["type"] == "answer"
    assert frame["content"] == "Hello, world!"
    assert isinstance(frame["sources"], list)
    assert frame["usage"]["total_tokens"] == 11


def test_cancel_stops_the_answer_and_the_upstream(ws: ClientConnection, upstream: FakeUpstream) -> None:
    upstream.reset(Script(tokens=["x"] * 200, delay=0.05))
    ws.send(json.dumps(SEED_FRAME))
    while receive(ws)["type"] != "token":
        pass
    ws.send(json.dumps({"type": "cancel"}))
    frame = receive(ws)
    while frame["type"] == "token":  # tokens already in flight may still arrive
        frame = receive(ws)
    assert frame == {"type": "done", "finish_reason": "cancelled"}
    assert upstream.wait_disconnect(5)
    assert upstream.completed == 0
    # The connection is still usable.
    upstream.reset()
    ws.send(json.dumps(SEED_FRAME))
    assert until_done(ws)[-1]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("frame", "error_type"),
    [
        ("this is not json", "invalid_frame"),
        ("[1, 2]", "invalid_frame"),
        ('{"type": "bogus"}', "invalid_frame"),
        ('{"question": 5}', "validation_error"),
        ('{"question": "x", "top_k": -1}', "validation_error"),
        ('{"userId": "u"}', "invalid_request"),
        ('{"type": "cancel"}', "nothing_to_cancel"),
        ('{"question": "x", "chatId": "c"}', "invalid_request"),
    ],
)
def test_malformed_frames_get_an_error_and_the_connection_stays(
    ws: ClientConnection, upstream: FakeUpstream, frame: str, error_type: str
) -> None:
    ws.send(frame)
    reply = receive(ws)
    assert reply["type"] == "error"
    assert reply["error"]["type"] == error_type
    if error_type == "invalid_request":
        assert receive(ws)["type"] == "done"
    ws.send(json.dumps(SEED_FRAME))
    assert until_done(ws)[-1]["finish_reason"] == "stop"


def test_binary_frame_is_refused_politely(ws: ClientConnection, upstream: FakeUpstream) -> None:
    ws.send(b"\x00\x01")
    assert receive(ws)["error"]["type"] == "invalid_frame"
    ws.send(json.dumps({"type": "ping"}))
    assert receive(ws) == {"type": "pong"}


def test_question_while_busy_is_refused(ws: ClientConnection, upstream: FakeUpstream) -> None:
    upstream.reset(Script(tokens=["x"] * 20, delay=0.05))
    ws.send(json.dumps(SEED_FRAME))
    ws.send(json.dumps(SEED_FRAME))
    frames = until_done(ws)
    assert any(f["type"] == "error" and f["error"]["type"] == "busy" for f in frames)


def test_upstream_error_before_start_is_an_error_frame(ws: ClientConnection, upstream: FakeUpstream) -> None:
    upstream.reset(Script(status=429, retry_after="5"))
    ws.send(json.dumps(SEED_FRAME))
    frames = until_done(ws)
    assert frames[0]["type"] == "error"
    assert (frames[0]["status"], frames[0]["error"]["type"]) == (429, "upstream_rate_limited")
    assert frames[-1] == {"type": "done", "finish_reason": "error"}


def test_client_vanishing_stops_the_upstream(live_url: str, upstream: FakeUpstream) -> None:
    upstream.reset(Script(tokens=["x"] * 200, delay=0.05))
    with (
        contextlib.suppress(OSError, ConnectionClosed),
        connect(live_url.replace("http", "ws") + "/api/v1/ws/chat", open_timeout=10) as connection,
    ):
        connection.send(json.dumps(SEED_FRAME))
        while json.loads(connection.recv(timeout=10))["type"] != "token":
            pass
        # Vanish without a closing handshake: reset the TCP connection.
        sock: socket.socket = connection.socket
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    assert upstream.wait_disconnect(5)
    assert upstream.completed == 0
