"""Usage and quotas (rag/usage/), through the live service and the scripted upstream (each answer reports 7 prompt
tokens and one completion token per scripted token): totals match what the upstream reported, exactly; an
organisation at its quota is refused on every chat route and transport while another is not, and let in again when
the window ends (an injected clock); two PostgreSQL replicas share the count; an upload over the daily bytes is
refused; each credential sees only the usage it may; bad input names its field."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from main import create_app
from tests.conftest import make_settings
from tests.fake_upstream import FakeUpstream, Script
from tests.servers import serve
from tests.sse import read_stream

ROOT = {"Authorization": "Bearer root-key"}
ACME = {"Authorization": "Bearer acme-key"}
OTHER = {"Authorization": "Bearer other-key"}
TOKENS = ["one ", "two ", "three"]
PER_ANSWER = 7 + len(TOKENS)  # what the fake upstream reports for each answer


def settings_for(path: Path, upstream: FakeUpstream, **overrides: Any) -> Any:
    values = {
        "api_keys": ["root-key", "acme-key:acme", "other-key:other"],
        "usage_flush_seconds": 0.1,
        "embedder": "examples.plugins.hashing_embedder:HashingEmbedder",
        "embedder_options": {"dimension": 64},
    }
    return make_settings(path, upstream.url, **(values | overrides))


@pytest.fixture
def scripted(upstream: FakeUpstream) -> FakeUpstream:
    upstream.reset(Script(tokens=TOKENS))
    return upstream


def sse_chat(url: str, headers: dict[str, str], user: str = "u1") -> tuple[int, Any]:
    body = {"messages": [{"role": "user", "content": "How many?"}], "userId": user}
    with httpx.stream("POST", f"{url}/api/v1/chat", json=body, headers=headers, timeout=30) as response:
        if response.status_code != 200:
            return response.status_code, (json.loads(response.read()), response.headers.get("retry-after"))
        events, done = read_stream(response)
    assert done
    return 200, "".join(e.get("content") or "" for e in events)


def openai_chat(url: str, headers: dict[str, str]) -> tuple[int, Any]:
    body = {"model": "m", "messages": [{"role": "user", "content": "How many?"}]}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=30)
    return response.status_code, response.json()


def legacy_chat(url: str, headers: dict[str, str]) -> int:
    body = {"question": "How many?", "userId": "u1", "orgId": "acme"}
    with httpx.stream("POST", f"{url}/stream", json=body, headers=headers, timeout=30) as response:
        response.read()
        return response.status_code


def ws_chat(url: str, key: str) -> list[dict[str, Any]]:
    frames = []
    with connect(url.replace("http", "ws") + f"/api/v1/ws/chat?api_key={key}", open_timeout=10) as ws:
        ws.send(json.dumps({"question": "How many?", "userId": "u1", "stream": True}))
        while True:
            frame = json.loads(ws.recv(timeout=30))
            frames.append(frame)
            if frame["type"] == "done":
                return frames


def usage(url: str, headers: dict[str, str], **params: Any) -> dict[str, Any]:
    response = httpx.get(f"{url}/api/v1/usage", params=params, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def answers_of(url: str, headers: dict[str, str], **params: Any) -> dict[str, Any]:
    """The answer row of a usage report grouped by kind, once the answers counted so far were written."""
    rows = usage(url, headers, group_by="kind", **params)["rows"]
    return next((row for row in rows if row["kind"] == "answer"), {})


def wait_for_tokens(url: str, headers: dict[str, str], tokens: int, **params: Any) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        row = answers_of(url, headers, **params)
        if row.get("prompt_tokens", 0) + row.get("completion_tokens", 0) >= tokens:
            return row
        time.sleep(0.05)
    raise AssertionError(f"usage never reached {tokens} tokens")


def test_totals_match_what_the_upstream_reported_on_every_transport(tmp_path: Path, scripted: FakeUpstream) -> None:
    with serve(create_app(settings_for(tmp_path / "data", scripted))) as url:
        assert sse_chat(url, ACME) == (200, "one two three")
        assert openai_chat(url, ACME)[0] == 200
        assert ws_chat(url, "acme-key")[-1] == {"type": "done", "finish_reason": "stop"}
        assert sse_chat(url, OTHER)[0] == 200
        add = {"documents": ["A note about the blue heron.", "Another about the grey egret."]}
        assert httpx.post(f"{url}/api/v1/documents/add", json=add, headers=ACME).status_code == 200
        row = wait_for_tokens(url, ACME, 3 * PER_ANSWER)
        assert (row["requests"], row["prompt_tokens"], row["completion_tokens"], row["estimated"]) == (
            3,
            3 * 7,
            3 * len(TOKENS),
            0,
        )
        deadline = time.monotonic() + 30
        while len(by_kind := {r["kind"]: r for r in usage(url, ACME, group_by="kind")["rows"]}) < 3:
            assert time.monotonic() < deadline, by_kind  # the add's counts may come a batch after the answers'
            time.sleep(0.05)
        assert by_kind["embedding"]["chunks"] == 2
        assert by_kind["upload"]["bytes"] == len(add["documents"][0]) + len(add["documents"][1])
        # the other organisation's answer is its own; a trusted key sees both, by organisation
        assert answers_of(url, OTHER)["requests"] == 1
        every = {r["org"]: r for r in usage(url, ROOT, group_by="org")["rows"]}
        assert every["acme"]["completion_tokens"] == 3 * len(TOKENS) and "other" in every
        # by user and key; CSV too
        by_user = usage(url, ACME, group_by="user,kind")["rows"]
        answered = {r["user"]: r["requests"] for r in by_user if r["kind"] == "answer"}
        assert answered == {"u1": 2, "": 1}  # the /v1 request named no user
        keys = {r["key"] for r in usage(url, ACME, group_by="key,kind")["rows"] if r["kind"] != "embedding"}
        assert len(keys) == 1 and len(next(iter(keys))) == 12 and "acme" not in next(iter(keys))  # a digest
        csv = httpx.get(f"{url}/api/v1/usage", params={"group_by": "kind", "format": "csv"}, headers=ACME).text
        assert csv.splitlines()[0].startswith("kind,requests,prompt_tokens,completion_tokens")
        # a user acting through a key sees their own usage, not the organisation's
        as_u2 = {**ACME, "X-On-Behalf-Of": "u2"}
        assert usage(url, as_u2, group_by="kind")["rows"] == []
        # another organisation's usage is refused by name
        response = httpx.get(f"{url}/api/v1/usage", params={"orgId": "other"}, headers=ACME)
        assert response.status_code == 403


def test_an_organisation_at_its_quota_is_refused_on_every_route_until_the_window_ends(
    tmp_path: Path, scripted: FakeUpstream
) -> None:
    app = create_app(settings_for(tmp_path / "data", scripted))
    with serve(app) as url:
        meter = app.state.services.usage
        now = [1_765_000_000.0]  # an injected clock: 2025-12-06 05:46:40 UTC
        meter.clock = lambda: now[0]
        limits = {"tokens_per_day": 2 * PER_ANSWER + 1}
        response = httpx.put(f"{url}/api/v1/usage/limits/acme", json=limits, headers=ROOT)
        assert response.status_code == 200 and response.json()["limits"]["tokens_per_day"] == 2 * PER_ANSWER + 1
        time.sleep(0.3)  # every replica reads the limits within a batch or two
        for _ in range(3):  # the third begins under the limit (20 of 21), finishes, and counts
            assert sse_chat(url, ACME)[0] == 200
        wait_for_tokens(url, ACME, 3 * PER_ANSWER, **{"from": "2025-12-06", "to": "2025-12-06"})  # the clock's day
        status, (body, retry_after) = sse_chat(url, ACME)
        assert status == 429 and body["error"]["type"] == "quota_exceeded"
        assert "tokens_per_day" in body["error"]["message"] and "acme" in body["error"]["message"]
        midnight = 1_765_065_600.0  # 2025-12-07 00:00 UTC
        assert int(retry_after) == int(midnight - now[0]) + 1 or int(retry_after) == int(midnight - now[0])
        status, error = openai_chat(url, ACME)
        assert status == 429 and error["error"]["code"] == "quota_exceeded"  # OpenAI's shape: our type is its code
        assert legacy_chat(url, ACME) == 429
        frames = ws_chat(url, "acme-key")
        assert frames[0]["type"] == "error" and frames[0]["status"] == 429
        assert frames[0]["error"]["type"] == "quota_exceeded"
        assert sse_chat(url, OTHER)[0] == 200  # another organisation is not limited
        now[0] = midnight + 1  # the next day
        assert sse_chat(url, ACME)[0] == 200


def test_two_replicas_share_the_count(tmp_path: Path, scripted: FakeUpstream, pg_dsn: str) -> None:
    settings = [
        settings_for(tmp_path / f"replica{i}", scripted, vector_store="postgres", database_url=pg_dsn) for i in range(2)
    ]
    with serve(create_app(settings[0])) as first, serve(create_app(settings[1])) as second:
        limit = 3 * PER_ANSWER - 1
        assert httpx.put(f"{first}/api/v1/usage/limits/acme", json={"tokens_per_day": limit}, headers=ROOT).is_success
        time.sleep(0.4)
        assert sse_chat(first, ACME)[0] == 200
        assert sse_chat(first, ACME)[0] == 200
        wait_for_tokens(second, ACME, 2 * PER_ANSWER)  # the second replica reads the first's count
        assert sse_chat(second, ACME)[0] == 200  # 20 of 29: let in, and it counts
        wait_for_tokens(first, ACME, 3 * PER_ANSWER)
        time.sleep(0.3)  # a batch later, both replicas hold the count
        assert sse_chat(first, ACME)[0] == 429
        assert sse_chat(second, ACME)[0] == 429
        totals = answers_of(first, ACME)
        assert totals["prompt_tokens"] + totals["completion_tokens"] == 3 * PER_ANSWER


def test_an_upload_over_the_daily_bytes_is_refused_before_anything_is_stored(
    tmp_path: Path, scripted: FakeUpstream
) -> None:
    with serve(create_app(settings_for(tmp_path / "data", scripted, quota_upload_bytes_per_day=100))) as url:
        small = {"documents": ["x" * 60]}
        assert httpx.post(f"{url}/api/v1/documents/add", json=small, headers=ACME).status_code == 200
        response = httpx.post(f"{url}/api/v1/documents/add", json=small, headers=ACME)
        assert response.status_code == 429 and response.json()["error"]["type"] == "quota_exceeded"
        assert "upload_bytes_per_day" in response.json()["error"]["message"]
        files = {"files": ("note.txt", b"y" * 60, "text/plain")}
        response = httpx.post(f"{url}/api/v1/documents/upload", files=files, headers=ACME)
        assert response.status_code == 429 and int(response.headers["retry-after"]) > 0
        assert httpx.get(f"{url}/api/v1/documents", headers=ACME).json()["total"] == 1
        assert httpx.post(f"{url}/api/v1/documents/add", json=small, headers=OTHER).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body", "params", "field"),
    [
        ("PUT", "/api/v1/usage/limits/acme", {"tokens_per_day": -5}, {}, "tokens_per_day"),
        ("PUT", "/api/v1/usage/limits/acme", {"tokens_per_month": 10**16}, {}, "tokens_per_month"),
        ("PUT", "/api/v1/usage/limits/acme", {"tokens_per_week": 5}, {}, "tokens_per_week"),
        ("PUT", "/api/v1/usage/limits/nobody", {"tokens_per_day": 5}, {}, "org_id"),
        ("GET", "/api/v1/usage", None, {"from": "2026-12-31", "to": "2026-12-01"}, "from"),
        ("GET", "/api/v1/usage", None, {"from": "yesterday"}, "from"),
        ("GET", "/api/v1/usage", None, {"group_by": "colour"}, "group_by"),
        ("GET", "/api/v1/usage", None, {"format": "xml"}, "format"),
    ],
)
def test_bad_input_is_refused_naming_its_field(
    tmp_path: Path, scripted: FakeUpstream, method: str, path: str, body: Any, params: Any, field: str
) -> None:
    with serve(create_app(settings_for(tmp_path / "data", scripted))) as url:
        response = httpx.request(method, f"{url}{path}", json=body, params=params, headers=ROOT)
        assert response.status_code == 422, response.text
        assert field in response.json()["error"]["message"]
        if method == "PUT":  # only a trusted key sets limits
            allowed = httpx.put(f"{url}/api/v1/usage/limits/acme", json={"tokens_per_day": 5}, headers=ACME)
            assert allowed.status_code == 403


def test_per_organisation_metrics_only_when_asked_for(tmp_path: Path, scripted: FakeUpstream) -> None:
    series = 'rag_usage_tokens_total{org="acme",type="completion"}'
    with serve(create_app(settings_for(tmp_path / "off", scripted))) as url:
        assert sse_chat(url, ACME)[0] == 200
        assert "rag_usage_tokens_total{" not in httpx.get(f"{url}/metrics", headers=ROOT).text
    with serve(create_app(settings_for(tmp_path / "on", scripted, usage_metrics_per_org=True))) as url:
        assert sse_chat(url, ACME)[0] == 200
        assert sse_chat(url, ACME)[0] == 200
        lines = httpx.get(f"{url}/metrics", headers=ROOT).text.splitlines()
        assert f"{series} {2 * len(TOKENS)}" in lines
        assert 'rag_usage_tokens_total{org="acme",type="prompt"} 14' in lines


@pytest.mark.parametrize("backend", ["numpy", "postgres"])
def test_a_chunks_quota_refuses_an_add_and_fails_an_uploads_item_by_name(
    tmp_path: Path, scripted: FakeUpstream, backend: str, request: pytest.FixtureRequest
) -> None:
    extra: dict[str, Any] = {"quota_chunks": 3}
    if backend == "postgres":
        extra |= {"vector_store": "postgres", "database_url": request.getfixturevalue("pg_dsn")}
    with serve(create_app(settings_for(tmp_path / "data", scripted, **extra))) as url:
        two = {"documents": ["The first short note.", "The second short note."]}
        assert httpx.post(f"{url}/api/v1/documents/add", json=two, headers=ACME).status_code == 200
        response = httpx.post(f"{url}/api/v1/documents/add", json=two, headers=ACME)
        assert response.status_code == 429 and "retry-after" not in response.headers
        error = response.json()["error"]
        assert error["type"] == "quota_exceeded" and "stores 2 of its 3 chunks (chunks)" in error["message"]
        files = {"files": ("two.txt", b"A third note. " * 200, "text/plain")}  # more chunks than are left
        job = httpx.post(f"{url}/api/v1/documents/upload", files=files, headers=ACME).json()
        deadline = time.monotonic() + 60
        while (state := httpx.get(f"{url}/api/v1/jobs/{job['id']}", headers=ACME).json())["state"] not in (
            "done",
            "failed",
        ):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert state["files"][0]["state"] == "failed" and "(chunks)" in state["errors"][0]["message"], state
        assert httpx.get(f"{url}/api/v1/documents", headers=ACME).json()["total"] == 2
        assert httpx.post(f"{url}/api/v1/documents/add", json=two, headers=OTHER).status_code == 200
