"""The service as real processes: killed mid-write, stopped with SIGTERM mid-stream, and run as two workers."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from bench import crash
from bench.service_process import ServiceProcess
from tests.fake_upstream import FakeUpstream, Script
from tests.sse import iter_data


def test_killed_mid_write_loses_nothing_acknowledged(tmp_path: Path) -> None:
    acknowledged, lost, failures = crash.run(runs=2, writers=4, seed=11, data_dir=tmp_path)
    assert acknowledged > 0  # the kill landed while writes were being acknowledged
    assert (lost, failures) == (0, 0)


def test_sigterm_ends_open_streams_with_a_final_event(tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    fake_upstream.reset(Script(tokens=["tick "] * 400, delay=0.05))  # 20 s if nothing stops it
    with ServiceProcess(tmp_path, fake_upstream.url) as service:  # type: ignore[attr-defined]
        service.wait_ready()
        added = httpx.post(f"{service.url}/api/v1/documents/add", json={"documents": ["kept"], "ids": ["kept"]})
        assert added.status_code == 200
        body = {"messages": [{"role": "user", "content": "Go on."}]}
        with httpx.stream("POST", f"{service.url}/api/v1/chat", json=body, timeout=30) as response:
            events = iter_data(response)
            while not json.loads(next(events))["content"]:
                pass
            service.process.send_signal(15)  # SIGTERM
            rest = list(events)
        assert rest[-1] == "[DONE]"
        final = json.loads(rest[-2])
        assert final["error"]["type"] == "server_shutting_down"
        # uvicorn shuts down gracefully, then re-raises the signal so that supervisors see how it ended.
        assert service.process.wait(timeout=30) in (0, -15)
        assert fake_upstream.wait_disconnect(5)  # the upstream request was stopped, not left running
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{service.url}/api/v1/health", timeout=2)
    with ServiceProcess(tmp_path, fake_upstream.url) as service:  # type: ignore[attr-defined]
        service.wait_ready()
        ids = [d["id"] for d in httpx.get(f"{service.url}/api/v1/documents").json()["documents"]]
        assert ids == ["kept"]
        service.terminate()


def test_two_workers_share_one_data_dir(tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    with ServiceProcess(tmp_path, fake_upstream.url, workers=2) as service:  # type: ignore[attr-defined]
        service.wait_ready()
        # Fresh connections are spread over the workers by the kernel: make sure both answer.
        workers: set[int] = set()
        deadline = time.monotonic() + 30
        while len(workers) < 2 and time.monotonic() < deadline:
            workers.add(httpx.get(f"{service.url}/api/v1/health", timeout=10).json()["worker"])
        assert len(workers) == 2

        acknowledged: list[str] = []
        lock = threading.Lock()

        def add_many(n: int) -> None:
            for i in range(6):
                doc_id = f"w{n}-{i}-{uuid.uuid4().hex[:6]}"
                # A new connection per request, so the adds go through both workers.
                response = httpx.post(
                    f"{service.url}/api/v1/documents/add",
                    json={"documents": [f"document {doc_id} about shared storage"], "ids": [doc_id]},
                    timeout=60,
                )
                assert response.status_code == 200
                with lock:
                    acknowledged.append(doc_id)

        threads = [threading.Thread(target=add_many, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(acknowledged) == 36

        # Readers check the store's manifest on every request, so the very first answer of each worker after the
        # adds already counts all of them: no waiting, no timing involved.
        answered_by: set[int] = set()
        for _ in range(200):
            health = httpx.get(f"{service.url}/api/v1/health", timeout=10).json()
            assert health["store"]["documents"] == 36, f"worker {health['worker']} missed writes of the other"
            answered_by.add(health["worker"])
            listed = httpx.get(f"{service.url}/api/v1/documents", params={"limit": 1000}, timeout=10).json()
            assert {d["id"] for d in listed["documents"]} == set(acknowledged)
            if len(answered_by) == 2:
                break
        assert len(answered_by) == 2
        assert service.terminate() in (0, -15)


def test_sigterm_closes_websockets_with_1012_and_stops_the_upstream(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    fake_upstream.reset(Script(tokens=["tick "] * 400, delay=0.05))
    with ServiceProcess(tmp_path, fake_upstream.url) as service:  # type: ignore[attr-defined]
        service.wait_ready()
        with connect(service.url.replace("http", "ws") + "/ws_chat", open_timeout=10) as ws:
            ws.send(json.dumps({"question": "Go on."}))
            while json.loads(ws.recv(timeout=10))["type"] != "token":
                pass
            service.process.send_signal(15)  # SIGTERM
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    ws.recv(timeout=30)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1012  # "service restart": come back in a moment
        assert fake_upstream.wait_disconnect(10)
        assert service.process.wait(timeout=30) in (0, -15)


def _job_state(url: str, job_id: str) -> dict:
    return httpx.get(f"{url}/api/v1/jobs/{job_id}", timeout=10).json()


def _wait_job(url: str, job_id: str, until: Callable[[dict], bool], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = _job_state(url, job_id)
        if until(job):
            return job
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id}: condition not reached")


def _report(tag: str, chunks: int) -> bytes:
    return "".join(f"Report {tag} part {i} with its own words. " * 24 for i in range(chunks)).encode()


def test_an_ingestion_job_resumes_after_a_kill_and_after_sigterm(tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    log = tmp_path / "service.log"
    settings = {"job_lease_seconds": "2", "job_batch_chunks": "8"}
    files = [("files", (f"f{n}.txt", _report(f"file{n}", 40), "text/plain")) for n in range(4)]
    with ServiceProcess(tmp_path, fake_upstream.url, log_path=log, **settings) as service:  # type: ignore[attr-defined]
        service.wait_ready()
        job = httpx.post(f"{service.url}/api/v1/documents/upload", files=files, timeout=30).json()
        _wait_job(service.url, job["id"], lambda j: j["files"][1]["state"] == "embedding")
        service.kill()  # SIGKILL mid-job: file 0 is committed, file 1 half embedded
    with ServiceProcess(tmp_path, fake_upstream.url, log_path=log, **settings) as service:  # type: ignore[attr-defined]
        service.wait_ready()
        # The dead runner's lease runs out, and this process takes the job over where it stood.
        finished = _wait_job(service.url, job["id"], lambda j: j["state"] not in ("queued", "running"))
        assert finished["state"] == "done" and finished["attempts"] == 2
        assert finished["chunks_done"] == finished["chunks_total"]
        listing = httpx.get(f"{service.url}/api/v1/documents").json()
        assert listing["total"] == 4  # each file exactly once: the redone one replaced, never duplicated
        assert sorted(d["chunks"] for d in listing["documents"]) == [f["chunks_total"] for f in finished["files"]]

        # SIGTERM mid-job: a clean exit that hands the job back, and the next start resumes it at once.
        more = [("files", (f"g{n}.txt", _report(f"more{n}", 40), "text/plain")) for n in range(3)]
        second = httpx.post(f"{service.url}/api/v1/documents/upload", files=more, timeout=30).json()
        _wait_job(service.url, second["id"], lambda j: j["files"][0]["state"] == "embedding")
        assert service.terminate() in (0, -15)
        assert _job_state_offline(tmp_path, second["id"]) == "queued"
    with ServiceProcess(tmp_path, fake_upstream.url, log_path=log, job_lease_seconds="600") as service:  # type: ignore[attr-defined]
        service.wait_ready()
        # A lease of 600 s: only a job handed back (not one left running) is resumed this soon.
        finished = _wait_job(service.url, second["id"], lambda j: j["state"] not in ("queued", "running"))
        assert finished["state"] == "done"
        assert httpx.get(f"{service.url}/api/v1/documents").json()["total"] == 7
        service.terminate()
    assert "Traceback" not in log.read_text()
    assert not any((tmp_path / "uploads").iterdir())  # finished jobs leave no bytes behind


def _job_state_offline(data_dir: Path, job_id: str) -> str:
    import sqlite3

    with sqlite3.connect(data_dir / "jobs.sqlite3") as db:
        return db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
