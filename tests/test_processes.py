"""The service as real processes: killed mid-write, stopped with SIGTERM mid-stream, and run as two workers."""

from __future__ import annotations

import json
import threading
import time
import uuid
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
