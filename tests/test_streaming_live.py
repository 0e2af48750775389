"""Incremental streaming and cancellation, observed over real sockets: a live service and a live fake upstream."""

from __future__ import annotations

import json

import httpx

from tests.fake_upstream import FakeUpstream, Script
from tests.sse import iter_data

ASK = {"messages": [{"role": "user", "content": "Tell me a long story."}]}


def test_first_token_arrives_before_the_upstream_finishes(client: httpx.Client, upstream: FakeUpstream) -> None:
    upstream.reset(Script(tokens=[f"t{i} " for i in range(20)], delay=0.1))  # about 2 s upstream
    with client.stream("POST", "/api/v1/chat", json=ASK) as response:
        events = iter_data(response)
        first = next(json.loads(d)["content"] for d in events if json.loads(d)["content"])
        # The first token is here while the upstream has not finished its stream yet.
        assert first == "t0 "
        assert upstream.completed == 0
        rest = list(events)
    assert rest[-1] == "[DONE]"
    assert sum(1 for d in rest[:-1] if json.loads(d)["content"]) == 19
    assert upstream.completed == 1


def test_client_disconnect_stops_the_upstream(client: httpx.Client, upstream: FakeUpstream) -> None:
    upstream.reset(Script(tokens=["x"] * 200, delay=0.05))  # about 10 s if nobody stops it
    with client.stream("POST", "/api/v1/chat", json=ASK) as response:
        for data in iter_data(response):
            if json.loads(data)["content"]:
                break  # leave mid-answer: closing the response closes the connection
    assert upstream.wait_disconnect(timeout=5), "the upstream never saw the client leave"
    assert upstream.completed == 0


def test_keepalive_pings_while_waiting(client: httpx.Client, upstream: FakeUpstream) -> None:
    # Tokens every 1.5 s with a 1 s ping interval: the client sees comment lines between them.
    upstream.reset(Script(tokens=["a", "b"], delay=1.5))
    with client.stream("POST", "/api/v1/chat", json=ASK) as response:
        lines = list(response.iter_lines())
    assert any(line.startswith(":") for line in lines), lines
    assert "data: [DONE]" in lines
