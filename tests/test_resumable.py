"""Resumable answers on one service (SQLite), over real HTTP and WebSocket: an answer survives its connection,
continues after the last event a client saw, stops on request, and stays its owner's."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from main import create_app
from tests.conftest import make_settings
from tests.fake_upstream import FakeUpstream, Script
from tests.servers import serve
from tests.sse import iter_events

TOKENS = [f"t{i} " for i in range(30)]
FULL = "".join(TOKENS)


def chat_body(chat_id: str, user: str = "u-resume", **extra: Any) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": "Tell me about resumable streams."}],
        "userId": user,
        "chatId": chat_id,
        "resumable": True,
        **extra,
    }


def read_some(response: httpx.Response, count: int | None) -> tuple[list[tuple[str, dict | str]], bool]:
    """Up to `count` events (all when None) with their ids, and whether [DONE] came."""
    seen: list[tuple[str, dict | str]] = []
    for event_id, data in iter_events(response):
        assert event_id is not None, "every event of a resumable answer carries an id"
        if data == "[DONE]":
            seen.append((event_id, data))
            return seen, True
        seen.append((event_id, json.loads(data)))
        if count is not None and len(seen) >= count:
            break
    return seen, False


def resume(client: httpx.Client, chat_id: str, last_id: str | None, user: str = "u-resume", **params: Any):
    headers = {"Last-Event-ID": last_id} if last_id else {}
    return client.stream("GET", f"/api/v1/chats/{chat_id}/stream", params={"userId": user, **params}, headers=headers)


def text_of(events: list[tuple[str, dict | str]]) -> str:
    return "".join(data.get("content", "") for _, data in events if isinstance(data, dict))


def check_numbering(events: list[tuple[str, dict | str]]) -> None:
    """No event twice, none missing: one run, numbered 1, 2, 3..."""
    runs = {event_id.rpartition(".")[0] for event_id, _ in events}
    assert len(runs) == 1
    assert [int(event_id.rpartition(".")[2]) for event_id, _ in events] == list(range(1, len(events) + 1))


def test_a_dropped_answer_continues_after_the_last_event_seen_several_times(
    client: httpx.Client, upstream: FakeUpstream
) -> None:
    upstream.reset(Script(tokens=TOKENS, delay=0.03))
    chat_id = f"c-{uuid.uuid4().hex}"
    with client.stream("POST", "/api/v1/chat", json=chat_body(chat_id)) as response:
        assert response.status_code == 200
        events, done = read_some(response, 4)  # sources + 3 tokens, then the connection drops
    assert not done
    for _ in range(3):  # drop again and again, a few events each time
        with resume(client, chat_id, events[-1][0]) as response:
            assert response.status_code == 200
            more, done = read_some(response, 5)
        events += more
    with resume(client, chat_id, events[-1][0]) as response:
        more, done = read_some(response, None)
    events += more
    assert done
    check_numbering(events)
    assert text_of(events) == FULL
    assert not upstream.disconnected.is_set(), "the answer ran to its end although its clients left"
    stored = client.get(f"/api/v1/chats/{chat_id}", params={"userId": "u-resume"}).json()
    assert [m["content"] for m in stored["messages"]] == ["Tell me about resumable streams.", FULL]
    assert stored["answer"]["status"] == "done"
    # Everything seen: nothing more to send.
    with resume(client, chat_id, events[-1][0]) as response:
        assert response.status_code == 204


def test_the_stream_sends_retry_and_a_resume_without_id_starts_from_the_beginning(
    client: httpx.Client, upstream: FakeUpstream
) -> None:
    upstream.reset(Script(tokens=TOKENS[:5], delay=0.01))
    chat_id = f"c-{uuid.uuid4().hex}"
    with client.stream("POST", "/api/v1/chat", json=chat_body(chat_id)) as response:
        raw = response.read().decode()
    assert raw.startswith("retry: ")
    with resume(client, chat_id, None) as response:
        whole, done = read_some(response, None)
    assert done and text_of(whole) == "".join(TOKENS[:5])
    check_numbering(whole)
    # the Elasticsearch services' route takes the same flag
    legacy = {"question": "Again?", "userId": "u-resume", "chatId": chat_id, "resumable": True}
    with client.stream("POST", "/stream", json=legacy) as response:
        again, done = read_some(response, None)
    assert done and text_of(again) == "".join(TOKENS[:5])
    check_numbering(again)
    # ?last_event_id= for clients that cannot set headers (an id of the chat's earlier answer: from the beginning)
    with resume(client, chat_id, None, last_event_id=whole[2][0]) as response:
        assert [event_id for event_id, _ in read_some(response, None)[0]] == [event_id for event_id, _ in again]
    whole = again
    with resume(client, chat_id, None, last_event_id=whole[2][0]) as response:
        rest, done = read_some(response, None)
    assert done and [event_id for event_id, _ in rest] == [event_id for event_id, _ in whole[3:]]


def test_a_resume_through_the_chat_page_state_and_json_mode(client: httpx.Client, upstream: FakeUpstream) -> None:
    upstream.reset(Script(tokens=TOKENS[:6], delay=0.05))
    chat_id = f"c-{uuid.uuid4().hex}"
    with client.stream("POST", "/api/v1/chat", json=chat_body(chat_id)) as response:
        read_some(response, 2)
    running = client.get(f"/api/v1/chats/{chat_id}", params={"userId": "u-resume"}).json()
    assert running["answer"]["status"] == "running"
    assert running["answer"]["question"] == "Tell me about resumable streams."
    assert running["messages"] == []  # the turn is stored when the answer ends
    with resume(client, chat_id, None) as response:
        read_some(response, None)
    # stream=false: the whole answer as JSON, produced apart from the connection all the same
    answer = client.post("/api/v1/chat", json=chat_body(chat_id, stream=False)).json()
    assert answer["content"] == "".join(TOKENS[:6])


def test_stop_closes_the_upstream_and_ends_every_reader(client: httpx.Client, upstream: FakeUpstream) -> None:
    upstream.reset(Script(tokens=TOKENS * 10, delay=0.05))
    chat_id = f"c-{uuid.uuid4().hex}"
    with client.stream("POST", "/api/v1/chat", json=chat_body(chat_id)) as response:
        events, _ = read_some(response, 3)
    stopped = client.post(f"/api/v1/chats/{chat_id}/stop", params={"userId": "u-resume"})
    assert stopped.status_code == 200 and stopped.json() == {"chatId": chat_id, "stopped": True}
    assert upstream.wait_disconnect(5), "the upstream saw its client go away"
    with resume(client, chat_id, events[-1][0]) as response:
        rest, done = read_some(response, None)
    assert done and len(text_of(events + rest)) < len(FULL) * 10
    check_numbering(events + rest)
    assert client.get(f"/api/v1/chats/{chat_id}", params={"userId": "u-resume"}).json()["answer"]["status"] == (
        "stopped"
    )
    again = client.post(f"/api/v1/chats/{chat_id}/stop", params={"userId": "u-resume"})
    assert again.json()["stopped"] is False


def test_only_the_owner_resumes_or_stops(client: httpx.Client, upstream: FakeUpstream) -> None:
    upstream.reset(Script(tokens=TOKENS, delay=0.03))
    chat_id = f"c-{uuid.uuid4().hex}"
    with client.stream("POST", "/api/v1/chat", json=chat_body(chat_id)) as response:
        read_some(response, 2)
    for other in ("u-intruder",):
        with resume(client, chat_id, None, user=other) as response:
            assert response.status_code == 404
            assert json.loads(response.read())["error"]["type"] == "not_found"
        assert client.post(f"/api/v1/chats/{chat_id}/stop", params={"userId": other}).status_code == 404
    assert not upstream.disconnected.is_set()
    # A chat that does not exist looks the same; an owned chat with nothing running answers 204.
    with resume(client, f"c-{uuid.uuid4().hex}", None) as response:
        assert response.status_code == 404
    with resume(client, chat_id, None) as response:
        read_some(response, None)
    client.post("/api/v1/chat", json={**chat_body(chat_id), "resumable": False, "stream": False})


def test_deleting_a_chat_stops_its_answer_so_that_it_stays_deleted(
    client: httpx.Client, upstream: FakeUpstream
) -> None:
    chat_id = f"c-{uuid.uuid4().hex}"
    client.post("/api/v1/chat", json={**chat_body(chat_id), "resumable": False, "stream": False})  # a stored turn
    upstream.reset(Script(tokens=TOKENS * 10, delay=0.05))
    with client.stream("POST", "/api/v1/chat", json=chat_body(chat_id)) as response:
        read_some(response, 2)
    assert client.delete(f"/api/v1/chats/{chat_id}", params={"userId": "u-resume"}).status_code == 204
    assert upstream.wait_disconnect(5)
    assert client.get(f"/api/v1/chats/{chat_id}", params={"userId": "u-resume"}).status_code == 404


def test_one_answer_per_chat_and_a_resumable_answer_needs_a_chat(client: httpx.Client, upstream: FakeUpstream) -> None:
    upstream.reset(Script(tokens=TOKENS, delay=0.05))
    chat_id = f"c-{uuid.uuid4().hex}"
    with client.stream("POST", "/api/v1/chat", json=chat_body(chat_id)) as response:
        read_some(response, 1)
    second = client.post("/api/v1/chat", json=chat_body(chat_id))
    assert second.status_code == 409 and second.json()["error"]["type"] == "answer_in_progress"
    client.post(f"/api/v1/chats/{chat_id}/stop", params={"userId": "u-resume"})
    no_chat = client.post("/api/v1/chat", json={"messages": [{"role": "user", "content": "hi"}], "resumable": True})
    assert no_chat.status_code == 422 and "chatId" in no_chat.json()["error"]["message"]


def test_a_non_resumable_answer_still_stops_when_its_client_leaves(
    client: httpx.Client, upstream: FakeUpstream
) -> None:
    upstream.reset(Script(tokens=TOKENS * 10, delay=0.05))
    body = {**chat_body(f"c-{uuid.uuid4().hex}"), "resumable": False}
    with client.stream("POST", "/api/v1/chat", json=body) as response:
        lines = [line for _, line in zip(range(6), response.iter_lines(), strict=False)]
    assert any(line.startswith("data:") for line in lines) and not any(line.startswith("id:") for line in lines)
    assert upstream.wait_disconnect(5)


@pytest.fixture
def capped(fake_upstream: FakeUpstream, tmp_path: Path) -> Iterator[str]:
    settings = make_settings(tmp_path, fake_upstream.url, resumable_max_per_org=2)  # type: ignore[attr-defined]
    with serve(create_app(settings)) as url:
        yield url


def test_an_organisation_past_its_cap_gets_429(capped: str, upstream: FakeUpstream) -> None:
    upstream.reset(Script(tokens=TOKENS * 10, delay=0.05))
    with httpx.Client(base_url=capped, timeout=30) as client:
        chats = [f"c-{uuid.uuid4().hex}" for _ in range(3)]
        for chat_id in chats[:2]:
            with client.stream("POST", "/api/v1/chat", json=chat_body(chat_id, orgId="org-cap")) as response:
                assert response.status_code == 200
                read_some(response, 1)
        upstream.reset()  # short answers from here on (the two running keep their own script)
        third = client.post("/api/v1/chat", json=chat_body(chats[2], orgId="org-cap"))
        assert third.status_code == 429 and third.json()["error"]["type"] == "too_many_answers"
        assert "RESUMABLE_MAX_PER_ORG" in third.json()["error"]["message"] and third.headers["Retry-After"]
        other_org = client.post("/api/v1/chat", json=chat_body(chats[2], orgId="org-other", stream=False))
        assert other_org.status_code == 200
        client.post(f"/api/v1/chats/{chats[0]}/stop", params={"userId": "u-resume", "orgId": "org-cap"})
        freed = client.post("/api/v1/chat", json=chat_body(f"c-{uuid.uuid4().hex}", orgId="org-cap"))
        assert freed.status_code == 200
        for chat_id in chats[1:]:
            client.post(f"/api/v1/chats/{chat_id}/stop", params={"userId": "u-resume", "orgId": "org-cap"})


def test_websocket_resume_frame_continues_after_a_new_connection(live_url: str, upstream: FakeUpstream) -> None:
    from websockets.sync.client import connect

    upstream.reset(Script(tokens=TOKENS, delay=0.03))
    chat_id = f"c-{uuid.uuid4().hex}"
    ws_url = live_url.replace("http", "ws") + "/api/v1/ws/chat"
    frames: list[dict] = []
    with connect(ws_url) as ws:
        ws.send(json.dumps({"question": "Tell me.", "userId": "u-resume", "chatId": chat_id, "resumable": True}))
        while len(frames) < 4:
            frames.append(json.loads(ws.recv(timeout=10)))
    assert all("eventId" in frame for frame in frames)
    with connect(ws_url) as ws:
        ws.send(
            json.dumps(
                {"type": "resume", "userId": "u-resume", "chatId": chat_id, "lastEventId": frames[-1]["eventId"]}
            )
        )
        while frames[-1]["type"] != "done":
            frames.append(json.loads(ws.recv(timeout=10)))
        assert "".join(f.get("content", "") for f in frames if f["type"] == "token") == FULL
        numbers = [int(f["eventId"].rpartition(".")[2]) for f in frames]
        assert numbers == list(range(1, len(frames) + 1))
        ws.send(
            json.dumps(
                {"type": "resume", "userId": "u-resume", "chatId": chat_id, "lastEventId": frames[-1]["eventId"]}
            )
        )
        assert json.loads(ws.recv(timeout=10)) == {"type": "done", "finish_reason": "nothing_to_resume"}
        ws.send(json.dumps({"type": "resume", "userId": "u-other", "chatId": chat_id}))
        refused = json.loads(ws.recv(timeout=10))
        assert refused["type"] == "error" and refused["status"] == 404
        # "stream": false: one answer frame, as for any question
        question = {"question": "Again.", "userId": "u-resume", "chatId": chat_id, "resumable": True, "stream": False}
        ws.send(json.dumps(question))
        whole = json.loads(ws.recv(timeout=10))
        assert whole["type"] == "answer" and whole["content"] == FULL and whole["error"] is None


def test_kept_events_go_after_the_retention_and_the_metrics_count_running_answers(
    fake_upstream: FakeUpstream, upstream: FakeUpstream, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, fake_upstream.url, answer_retention_seconds=0)  # type: ignore[attr-defined]
    with serve(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
        upstream.reset(Script(tokens=TOKENS, delay=0.05))
        chat_id = f"c-{uuid.uuid4().hex}"
        with client.stream("POST", "/api/v1/chat", json=chat_body(chat_id)) as response:
            read_some(response, 2)
            assert "rag_resumable_answers_running 1" in client.get("/metrics").text.splitlines()
        with resume(client, chat_id, None) as response:
            assert read_some(response, None)[1]
        assert "rag_resumable_answers_running 0" in client.get("/metrics").text.splitlines()
        deadline = time.monotonic() + 10
        while client.get(f"/api/v1/chats/{chat_id}", params={"userId": "u-resume"}).json()["answer"] is not None:
            assert time.monotonic() < deadline, "the ended answer's events were not removed"
            time.sleep(0.2)
        with resume(client, chat_id, None) as response:
            assert response.status_code == 204
        stored = client.get(f"/api/v1/chats/{chat_id}", params={"userId": "u-resume"}).json()
        assert stored["messages"][-1]["content"] == FULL  # the answer itself stays


def test_a_websocket_cancel_frame_stops_the_resumable_answer_it_follows(live_url: str, upstream: FakeUpstream) -> None:
    from websockets.sync.client import connect

    upstream.reset(Script(tokens=TOKENS * 10, delay=0.05))
    chat_id = f"c-{uuid.uuid4().hex}"
    with connect(live_url.replace("http", "ws") + "/api/v1/ws/chat") as ws:
        ws.send(json.dumps({"question": "Tell me.", "userId": "u-resume", "chatId": chat_id, "resumable": True}))
        frames = [json.loads(ws.recv(timeout=10)) for _ in range(3)]
        ws.send(json.dumps({"type": "cancel"}))
        while frames[-1]["type"] != "done":
            frames.append(json.loads(ws.recv(timeout=10)))
    assert frames[-1]["finish_reason"] == "cancelled"
    assert upstream.wait_disconnect(5)
    state = httpx.get(f"{live_url}/api/v1/chats/{chat_id}", params={"userId": "u-resume"}, timeout=10).json()
    assert state["answer"]["status"] == "stopped"
