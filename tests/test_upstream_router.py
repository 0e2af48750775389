"""LLM_UPSTREAMS over real HTTP: two scripted OpenAI-compatible servers on 127.0.0.1 behind the live service.
Weighted routing, failover before the first token (an error status, a refused connection, a 429 with Retry-After,
no first token in time), never after it, cool-down and one trial request, chat affinity, model selection, and the
upstreams' state in /health and /metrics."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from main import create_app
from tests.conftest import make_settings
from tests.fake_upstream import FakeUpstream, Script
from tests.servers import free_port, serve
from tests.sse import read_stream


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[FakeUpstream, FakeUpstream]]:
    first, second = FakeUpstream(), FakeUpstream()
    with serve(first.app) as url_a, serve(second.app) as url_b:
        first.url, second.url = f"{url_a}/v1", f"{url_b}/v1"  # type: ignore[attr-defined]
        yield first, second


@pytest.fixture
def upstreams(pair: tuple[FakeUpstream, FakeUpstream]) -> Iterator[tuple[FakeUpstream, FakeUpstream]]:
    for fake in pair:
        fake.reset(Script(tokens=["answer ", "from ", "a"] if fake is pair[0] else ["answer ", "from ", "b"]))
    yield pair
    for fake in pair:
        fake.reset()


def service(tmp_path: Path, entries: list[dict[str, Any]], **overrides: Any) -> Any:
    chosen: dict[str, Any] = {
        "llm_provider": "openai",
        "openai_api_key": "test-key",
        "openai_model": "m",
        "openai_timeout": 5.0,
        "llm_upstreams": entries,
        "llm_first_token_timeout": 1.0,
    }
    settings = make_settings(tmp_path, **{**chosen, **overrides})
    return serve(create_app(settings))


def ask(url: str, **body: Any) -> tuple[str, list[dict[str, Any]]]:
    payload = {"messages": [{"role": "user", "content": "Which server answers?"}], **body}
    with httpx.stream("POST", f"{url}/api/v1/chat", json=payload, timeout=30) as response:
        if response.status_code != 200:
            return f"HTTP {response.status_code}", [json.loads(response.read())]
        events, done = read_stream(response)
    assert done
    return "".join(e.get("content") or "" for e in events), events


def entries(
    first: FakeUpstream, second: FakeUpstream, a: dict[str, Any] | None = None, b: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The two servers as LLM_UPSTREAMS entries named a and b, with what `a` and `b` add to each."""
    return [
        {"name": "a", "base_url": first.url, **(a or {})},  # type: ignore[attr-defined]
        {"name": "b", "base_url": second.url, **(b or {})},  # type: ignore[attr-defined]
    ]


def upstream_states(url: str) -> dict[str, dict[str, Any]]:
    llm = httpx.get(f"{url}/api/v1/health").json()["llm"]
    return {state["name"]: state for state in llm["upstreams"]}


def test_answers_are_shared_by_weight(tmp_path: Path, upstreams: tuple[FakeUpstream, FakeUpstream]) -> None:
    a, b = upstreams
    # A first token late on a busy machine would fail over and count twice; this test is about the weights alone.
    with service(tmp_path, entries(a, b, a={"weight": 3}), llm_first_token_timeout=30.0) as url:
        answers = [ask(url)[0] for _ in range(40)]
    assert set(answers) == {"answer from a", "answer from b"}
    assert len(a.requests) + len(b.requests) == 40
    assert len(a.requests) > len(b.requests)  # 3:1 by weight (30 against 10 expected)


def test_an_error_status_fails_over_before_the_first_token(
    tmp_path: Path, upstreams: tuple[FakeUpstream, FakeUpstream]
) -> None:
    a, b = upstreams
    a.reset(Script(status=503))
    with service(tmp_path, entries(a, b), llm_affinity="chat") as url:
        for n in range(4):  # the chat's own upstream may be either: ask until a has been tried
            answer, events = ask(url, userId="u", chatId=f"c{n}")
            assert answer == "answer from b"  # one clean answer, b's alone
            assert not any("error" in e for e in events)
        states = upstream_states(url)
    assert len(a.requests) >= 1 and states["a"]["failures"] == len(a.requests)
    assert states["b"]["answers"] == 4 and states["b"]["state"] == "healthy"


def test_a_refused_connection_fails_over(tmp_path: Path, upstreams: tuple[FakeUpstream, FakeUpstream]) -> None:
    _, b = upstreams
    # Tried first (by weight), refused, cooled down at once (a threshold of one): b answers every time.
    dead = {"name": "dead", "base_url": f"http://127.0.0.1:{free_port()}/v1", "weight": 1000}
    with service(tmp_path, [dead, {"name": "b", "base_url": b.url}], llm_failure_threshold=1) as url:  # type: ignore[attr-defined]
        assert [ask(url)[0] for _ in range(3)] == ["answer from b"] * 3
        states = upstream_states(url)
    assert states["dead"]["failures"] >= 1 and states["dead"]["state"] == "cooling"


def test_a_429_cools_the_upstream_down_for_its_retry_after(
    tmp_path: Path, upstreams: tuple[FakeUpstream, FakeUpstream]
) -> None:
    a, b = upstreams
    a.reset(Script(status=429, retry_after="30"))
    with service(tmp_path, entries(a, b, b={"weight": 0.001})) as url:  # a is tried first whenever it can be
        assert ask(url)[0] == "answer from b"
        assert [ask(url)[0] for _ in range(5)] == ["answer from b"] * 5
        states = upstream_states(url)
    assert len(a.requests) == 1  # not asked again while it said to wait
    assert states["a"]["state"] == "cooling" and 25 < states["a"]["cooldown_seconds"] <= 30


def test_no_first_token_in_time_fails_over_and_closes_the_slow_request(
    tmp_path: Path, upstreams: tuple[FakeUpstream, FakeUpstream]
) -> None:
    a, b = upstreams
    a.reset(Script(hang=True))
    with service(tmp_path, entries(a, b, b={"weight": 0.001})) as url:
        started = time.monotonic()
        answer, _ = ask(url)
        elapsed = time.monotonic() - started
    assert answer == "answer from b"
    assert 0.9 < elapsed < 5  # LLM_FIRST_TOKEN_TIMEOUT is 1 s here
    assert a.wait_disconnect(5)  # the slow upstream saw its client go


def test_a_failure_after_the_first_token_is_an_error_event_and_never_another_models_text(
    tmp_path: Path, upstreams: tuple[FakeUpstream, FakeUpstream]
) -> None:
    a, b = upstreams
    a.reset(Script(tokens=["partial ", "answer ", "never ", "finished"], cut_after=2))
    with service(tmp_path, entries(a, b, b={"weight": 0.001})) as url:
        answer, events = ask(url)
    assert answer == "partial answer "
    assert events[-1]["error"]["type"] == "upstream_protocol_error"
    assert b.requests == []  # nothing spliced in from the other upstream


def test_a_cooled_down_upstream_gets_one_trial_and_comes_back(
    tmp_path: Path, upstreams: tuple[FakeUpstream, FakeUpstream]
) -> None:
    a, b = upstreams
    a.reset(Script(status=500, failures=2, tokens=["answer ", "from ", "a"]))  # fails twice, then answers
    settings = {"llm_failure_threshold": 2, "llm_cooldown_seconds": 1.0}
    with service(tmp_path, entries(a, b, b={"weight": 0.001}), **settings) as url:
        assert [ask(url)[0] for _ in range(2)] == ["answer from b"] * 2  # a failed twice: cooling
        assert upstream_states(url)["a"]["state"] == "cooling"
        assert ask(url)[0] == "answer from b"
        assert len(a.requests) == 2  # left alone while it cools down
        time.sleep(1.2)
        assert ask(url)[0] == "answer from a"  # the trial request, which it answers
        assert upstream_states(url)["a"]["state"] == "healthy"


def test_a_chat_stays_on_its_upstream(tmp_path: Path, upstreams: tuple[FakeUpstream, FakeUpstream]) -> None:
    a, b = upstreams
    with service(tmp_path, entries(a, b), llm_affinity="chat") as url:
        by_chat = {chat: {ask(url, userId="u", chatId=chat)[0] for _ in range(4)} for chat in ("x1", "x2", "x3", "x4")}
        assert all(len(answers) == 1 for answers in by_chat.values()), by_chat
        # When a chat's upstream fails, the chat moves to the other rather than failing.
        chat, [home] = next((c, list(s)) for c, s in by_chat.items())
        (a if home.endswith("a") else b).reset(Script(status=503))
        assert ask(url, userId="u", chatId=chat)[0] != home


def test_the_request_picks_the_upstreams_of_its_model(
    tmp_path: Path, upstreams: tuple[FakeUpstream, FakeUpstream]
) -> None:
    a, b = upstreams
    with service(tmp_path, entries(a, b, a={"model": "small"}, b={"model": "large"})) as url:
        listed = [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]]
        assert listed[:2] == ["small", "large"]
        assert {ask(url, model="large")[0] for _ in range(4)} == {"answer from b"}
        assert {ask(url)[0] for _ in range(4)} == {"answer from a"}  # the default: the first upstream's model
        status, [body] = ask(url, model="huge")
        assert status == "HTTP 404" and body["error"]["type"] == "model_not_found"
        assert "small, large" in body["error"]["message"]
        response = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "huge", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
        completion = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "large", "messages": [{"role": "user", "content": "hi"}]},
        ).json()
        assert completion["choices"][0]["message"]["content"] == "answer from b"
    assert {r["model"] for r in b.requests} == {"large"} and {r["model"] for r in a.requests} == {"small"}


def test_metrics_show_each_upstream_by_name(tmp_path: Path, upstreams: tuple[FakeUpstream, FakeUpstream]) -> None:
    a, b = upstreams
    a.reset(Script(status=503))
    with service(tmp_path, entries(a, b, b={"weight": 0.001})) as url:
        ask(url)
        text = httpx.get(f"{url}/metrics").text
    assert 'rag_upstream_failures_total{upstream="a"} 1' in text
    assert 'rag_upstream_failures_total{upstream="b"} 0' in text
    assert 'rag_upstream_in_flight{upstream="b"} 0' in text
