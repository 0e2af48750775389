"""Online backup of the embedded store (`python -m rag.backup`), run as the command it is, beside a live service.

The drill: writers add and delete documents over HTTP while the backup runs; a second service started on the backup
then holds every add acknowledged before the backup began and none of the deletes acknowledged by then, every
document whole, access lists and chats included. A backup killed midway leaves no backup and the store as it was.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from config import Settings
from main import create_app
from tests.conftest import make_settings
from tests.fake_upstream import FakeUpstream
from tests.servers import command, serve

WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
]


def settings_for(data_dir: Path, upstream: FakeUpstream) -> Settings:
    """Adds answer when stored (no job), whatever their size."""
    url = upstream.url  # type: ignore[attr-defined]
    return make_settings(data_dir, url, add_job_threshold_chars=10_000_000)


def run_backup(data_dir: Path, destination: Path, cwd: Path) -> subprocess.Popen[str]:
    return command("rag.backup", str(destination), data_dir=data_dir, cwd=cwd)


def wait_for(condition: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def text_of(n: int) -> str:
    # long enough for several chunks, so that a document stored half would show
    return " ".join(f"{WORDS[(n + i) % len(WORDS)]}{n}" for i in range(250))


def add(client: httpx.Client, ids: list[str], org: str = "acme") -> None:
    response = client.post(
        "/api/v1/documents/add",
        json={
            "documents": [text_of(zlib.crc32(doc.encode()) % 1000) for doc in ids],
            "ids": ids,
            "metadatas": [{"orgId": org} for _ in ids],
        },
    )
    assert response.status_code == 200, response.text


def all_documents(client: httpx.Client) -> dict[str, int]:
    listed = client.get("/api/v1/documents", params={"limit": 1000, "orgId": "acme"}).json()
    assert listed["total"] <= 1000
    return {doc["id"]: doc["chunks"] for doc in listed["documents"]}


def segments_of(index: Path) -> set[str]:
    return {segment["segment_id"] for segment in json.loads((index / "meta.json").read_text())["segments"]}


def catalog_is_whole(catalog: Path) -> None:
    """Each document's chunk rows are exactly its recorded count: nothing stored half."""
    with sqlite3.connect(catalog) as conn:
        rows = conn.execute(
            "SELECT d.id, d.chunks, count(c.key) FROM documents d LEFT JOIN chunks c ON c.document_id = d.id "
            "GROUP BY d.id"
        ).fetchall()
    assert rows
    assert [row for row in rows if row[1] != row[2]] == []


def test_backup_under_writes_holds_every_acknowledged_write(tmp_path: Path, upstream: FakeUpstream) -> None:
    data_dir, destination = tmp_path / "data", tmp_path / "backup"
    settings = settings_for(data_dir, upstream)
    acknowledged: list[tuple[float, str, str]] = []  # (when, "add" or "delete", document id)
    stop = threading.Event()
    with serve(create_app(settings)) as url, httpx.Client(base_url=url, timeout=60) as client:
        initial = [f"seed-{n}" for n in range(60)]
        for start in range(0, len(initial), 20):
            add(client, initial[start : start + 20])
        client.put(
            "/api/v1/documents/seed-0/access", json={"users": ["ann"], "groups": []}, params={"orgId": "acme"}
        ).raise_for_status()
        ask = {"messages": [{"role": "user", "content": "alpha?"}], "stream": False, "userId": "u1", "orgId": "acme"}
        assert client.post("/api/v1/chat", json=ask | {"chatId": "chat-1"}).status_code == 200
        chunks_of = all_documents(client)

        def writer(kind: str) -> None:
            with httpx.Client(base_url=url, timeout=60) as own:
                n = 0
                while not stop.is_set():
                    n += 1
                    if kind == "add":
                        doc = f"new-{n}"
                        add(own, [doc])
                    else:
                        if n >= len(initial):  # every seed deleted but seed-0 (its access list is checked below)
                            return
                        doc = initial[-n]
                        own.delete(f"/api/v1/documents/{doc}", params={"orgId": "acme"}).raise_for_status()
                    acknowledged.append((time.time(), kind, doc))
                    if kind == "delete":
                        # Paced, so that the seeds last on both sides of the backup (unpaced, they ran out in about
                        # a second on a quiet machine, and the writer died on an index error).
                        stop.wait(0.1)

        threads = [threading.Thread(target=writer, args=(kind,)) for kind in ("add", "delete")]
        for thread in threads:
            thread.start()
        wait_for(lambda: {kind for _, kind, _ in acknowledged} == {"add", "delete"})
        began = time.time()
        process = run_backup(data_dir, destination, tmp_path)
        _, stderr = process.communicate(timeout=300)
        ended = time.time()
        # writes go on after it, and must not reach the backup's files
        wait_for(lambda: {kind for at, kind, _ in acknowledged if at > ended} == {"add", "delete"})
        stop.set()
        for thread in threads:
            thread.join()
        assert process.returncode == 0, stderr
        assert "writes waited at most" in stderr

    added_before = {doc for at, kind, doc in acknowledged if kind == "add" and at < began}
    deleted_before = {doc for at, kind, doc in acknowledged if kind == "delete" and at < began}
    added_after = {doc for at, kind, doc in acknowledged if kind == "add" and at > ended}
    assert added_before and deleted_before and added_after  # the writers ran on both sides of the backup
    catalog_is_whole(destination / "store" / "catalog.sqlite3")

    keyword_segments = segments_of(destination / "store" / "keywords")
    assert keyword_segments  # the keyword index is in the backup
    restored = settings_for(destination, upstream)
    with serve(create_app(restored)) as url, httpx.Client(base_url=url, timeout=60) as client:
        held = all_documents(client)
        assert added_before <= set(held)
        assert not deleted_before & set(held)
        assert not added_after & set(held)
        for doc in set(initial) & set(held):
            assert held[doc] == chunks_of[doc]
        # the access list travelled: only ann reads seed-0
        access = client.get("/api/v1/documents/seed-0", params={"orgId": "acme"}).json()
        assert access["access"] == {"users": ["ann"], "groups": []}
        # the chat travelled
        chats = client.get("/api/v1/chats", params={"userId": "u1", "orgId": "acme"}).json()
        assert [c["chatId"] for c in chats["chats"]] == ["chat-1"]
        # both legs answer from the restored files
        doc = sorted(added_before)[0]
        question = text_of(zlib.crc32(doc.encode()) % 1000)[:200]
        for mode in ("dense", "keyword"):
            found = client.get(
                "/api/v1/documents/search", params={"query": question, "mode": mode, "orgId": "acme"}
            ).json()
            assert found["results"][0]["document_id"] in held, mode
        health = client.get("/api/v1/health").json()
        assert health["store"]["chunks"] == sum(held.values())
    assert segments_of(destination / "store" / "keywords") == keyword_segments  # used as it was, not rebuilt


def test_backup_refuses_a_destination_that_holds_files(tmp_path: Path, upstream: FakeUpstream) -> None:
    data_dir = tmp_path / "data"
    with (
        serve(create_app(settings_for(data_dir, upstream))) as url,
        httpx.Client(base_url=url) as client,
    ):
        add(client, ["one"])
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    process = run_backup(data_dir, taken, tmp_path)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1
    assert "exists and is not an empty folder" in stderr
    assert (taken / "keep.txt").read_text() == "mine" and len(list(taken.iterdir())) == 1
    inside = run_backup(data_dir, data_dir / "copy", tmp_path)
    _, stderr = inside.communicate(timeout=120)
    assert inside.returncode == 1 and "inside DATA_DIR" in stderr


def test_a_backup_killed_midway_leaves_no_backup_and_the_store_as_it_was(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    data_dir = tmp_path / "data"
    settings = settings_for(data_dir, upstream)
    with serve(create_app(settings)) as url, httpx.Client(base_url=url, timeout=60) as client:
        ids = [f"doc-{n}" for n in range(40)]
        for start in range(0, len(ids), 20):
            add(client, ids[start : start + 20])
        before = all_documents(client)
        outcomes = set()
        for attempt, delay in enumerate((0.0, 0.5, 1.0)):
            destination = tmp_path / f"killed-{attempt}"
            # The store's write lock, held here as a writer would, keeps the backup waiting at the moment it links
            # the store's files; it is killed there (delay 0), or later, copying them.
            lock = open(data_dir / "store" / ".lock", "a+b")  # noqa: SIM115 - released below
            fcntl.flock(lock, fcntl.LOCK_EX)
            process = run_backup(data_dir, destination, tmp_path)
            # It makes its partial folder before it waits for the lock; a slow start must not be mistaken for that.
            wait_for(lambda: bool(list(tmp_path.glob(f".killed-{attempt}.partial-*"))), timeout=60)  # noqa: B023
            time.sleep(0.2)
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()
            time.sleep(delay)
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
            outcomes.add(process.returncode)
            if process.returncode == 0:  # it finished before the kill: then the backup is whole
                catalog_is_whole(destination / "store" / "catalog.sqlite3")
            else:
                assert not destination.exists()
                assert [p.name for p in tmp_path.glob(f".killed-{attempt}.partial-*")]  # killed while writing
            assert all_documents(client) == before
        assert -signal.SIGKILL in outcomes
        add(client, ["after-the-kill"])  # the store still takes writes
        again = run_backup(data_dir, tmp_path / "again", tmp_path)
        _, stderr = again.communicate(timeout=300)
        assert again.returncode == 0, stderr
        assert not list((data_dir / "store").glob(".backup-*"))  # the killed ones' links are gone
    with serve(create_app(settings_for(tmp_path / "again", upstream))) as url, httpx.Client(base_url=url) as c:
        assert set(all_documents(c)) == {*before, "after-the-kill"}


def test_postgres_backup_with_its_own_tools_under_writes(
    tmp_path: Path, upstream: FakeUpstream, pg_server: Any
) -> None:
    """docs/deployment.md's recipe: `pg_dump -Fc` while the service writes, `pg_restore` into a new database, and a
    service started on it (with a fresh DATA_DIR) finds every document acknowledged before the dump began."""
    import pgserver

    bin_dir = Path(pgserver.__file__).parent / "pginstall" / "bin"
    source, target = (f"backup_{uuid.uuid4().hex[:12]}" for _ in range(2))
    pg_server.psql(f"CREATE DATABASE {source};")
    on_source = settings_for(tmp_path / "data", upstream).model_copy(
        update={"vector_store": "postgres", "database_url": SecretStr(pg_server.get_uri(source))}
    )
    acknowledged: list[tuple[float, str, str]] = []
    stop = threading.Event()
    dump = tmp_path / "rag.dump"
    with serve(create_app(on_source)) as url, httpx.Client(base_url=url, timeout=60) as client:
        initial = [f"seed-{n}" for n in range(30)]
        add(client, initial)
        client.put(
            "/api/v1/documents/seed-0/access", json={"users": ["ann"], "groups": []}, params={"orgId": "acme"}
        ).raise_for_status()
        ask = {"messages": [{"role": "user", "content": "alpha?"}], "stream": False, "userId": "u1", "orgId": "acme"}
        assert client.post("/api/v1/chat", json=ask | {"chatId": "chat-1"}).status_code == 200

        def writer() -> None:
            with httpx.Client(base_url=url, timeout=60) as own:
                n = 0
                while not stop.is_set():
                    n += 1
                    add(own, [f"new-{n}"])
                    acknowledged.append((time.time(), "add", f"new-{n}"))
                    own.delete(f"/api/v1/documents/{initial[-n]}", params={"orgId": "acme"}).raise_for_status()
                    acknowledged.append((time.time(), "delete", initial[-n]))

        thread = threading.Thread(target=writer)
        thread.start()
        wait_for(lambda: len(acknowledged) >= 2)
        began = time.time()
        subprocess.run(
            [bin_dir / "pg_dump", "--format=custom", f"--file={dump}", pg_server.get_uri(source)],
            check=True,
            timeout=300,
        )
        ended = time.time()
        wait_for(lambda: any(at > ended for at, _, _ in acknowledged))
        stop.set()
        thread.join()
    pg_server.psql(f"CREATE DATABASE {target};")
    subprocess.run(
        [bin_dir / "pg_restore", "--no-owner", f"--dbname={pg_server.get_uri(target)}", dump],
        check=True,
        timeout=300,
    )
    on_target = on_source.model_copy(
        update={"data_dir": tmp_path / "restored", "database_url": SecretStr(pg_server.get_uri(target))}
    )
    added_before = {doc for at, kind, doc in acknowledged if kind == "add" and at < began}
    deleted_before = {doc for at, kind, doc in acknowledged if kind == "delete" and at < began}
    after = {doc for at, kind, doc in acknowledged if kind == "add" and at > ended}
    with serve(create_app(on_target)) as url, httpx.Client(base_url=url, timeout=60) as client:
        held = all_documents(client)
        assert added_before <= set(held) and not deleted_before & set(held) and not after & set(held)
        assert client.get("/api/v1/documents/seed-0", params={"orgId": "acme"}).json()["access"]["users"] == ["ann"]
        chats = client.get("/api/v1/chats", params={"userId": "u1", "orgId": "acme"}).json()
        assert [c["chatId"] for c in chats["chats"]] == ["chat-1"]
        question = text_of(zlib.crc32(b"seed-1") % 1000)[:200]
        for mode in ("dense", "keyword"):
            found = client.get(
                "/api/v1/documents/search", params={"query": question, "mode": mode, "orgId": "acme"}
            ).json()
            assert found["results"][0]["document_id"] == "seed-1", mode


def test_the_backup_route_is_for_a_trusted_key_and_writes_under_backup_dir(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    trusted, scoped = "trusted-key-0123456789", "acme-key-0123456789"
    settings = settings_for(tmp_path / "data", upstream).model_copy(
        update={"api_keys": [SecretStr(trusted), SecretStr(f"{scoped}:acme")], "backup_dir": tmp_path / "backups"}
    )
    with serve(create_app(settings)) as url:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {scoped}"}, timeout=60) as org:
            add(org, ["one", "two"])
            refused = org.post("/api/v1/backups")
            assert refused.status_code == 403 and refused.json()["error"]["type"] == "forbidden"
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {trusted}"}, timeout=60) as admin:
            made = admin.post("/api/v1/backups")
            assert made.status_code == 200, made.text
            report = made.json()
            assert report["documents"] == 2 and report["write_lock_ms"] >= 0
            audit = admin.get("/api/v1/audit").json()["entries"]
            assert audit[0]["action"] == "data.backup"
    (destination,) = (tmp_path / "backups").iterdir()
    assert str(destination) == report["destination"]
    restored = settings_for(destination, upstream)
    with serve(create_app(restored)) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert set(all_documents(client)) == {"one", "two"}
    off = settings_for(tmp_path / "data", upstream)
    with serve(create_app(off)) as url, httpx.Client(base_url=url, timeout=60) as client:
        response = client.post("/api/v1/backups")
        assert response.status_code == 422 and "BACKUP_DIR" in response.json()["error"]["message"]
