"""The container image and the compose file, as a team would run them (`make test-image`: builds, then runs these).

The image alone: it starts as a non-root user, its HEALTHCHECK passes, it stores a document and streams an answer
from the bundled model, and a restart keeps the data in its volume. Then `compose.yaml`: PostgreSQL, two replicas and
nginx; a document added through one replica is found through the other, MCP calls spread over both, and an answer
streams through the load balancer token by token (not buffered to the end).

Marked `image` and left out of `make test` (the image takes minutes to build); `make test-image` runs them.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.servers import free_port

pytestmark = pytest.mark.image

PROJECT_DIR = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "CONTAINERS_CONF": str(PROJECT_DIR / "deploy" / "containers.conf")}
IMAGE = "rag-chat:latest"
DOCUMENT = "The Larkspur ferry leaves the harbour at nine every morning and returns at six."


def podman(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], env=ENV, capture_output=True, text=True, timeout=timeout, check=check)


def wait_healthy(url: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/api/v1/health", timeout=5)
            if response.status_code == 200:
                return response.json()
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} did not become healthy")


def stream_chat(url: str, question: str) -> tuple[list[dict], list[float]]:
    """The events of a streamed answer and when each content event arrived (seconds from the request)."""
    body = {"messages": [{"role": "user", "content": question}], "max_tokens": 48}
    events, arrivals = [], []
    started = time.monotonic()
    with httpx.stream("POST", f"{url}/api/v1/chat", json=body, timeout=300) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                continue
            event = json.loads(line[5:])
            events.append(event)
            if event.get("content"):
                arrivals.append(time.monotonic() - started)
    return events, arrivals


@pytest.fixture(scope="module")
def image() -> str:
    if podman("image", "exists", IMAGE, check=False).returncode != 0:
        pytest.fail(f"no {IMAGE}: run `make image` first (`make test-image` does both)")
    return IMAGE


@pytest.fixture
def container(image: str) -> Iterator[tuple[str, str]]:
    name, volume, port = f"rag-test-{uuid.uuid4().hex[:8]}", f"rag-test-{uuid.uuid4().hex[:8]}", free_port()
    podman("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8000", "-v", f"{volume}:/data", image)
    try:
        yield name, f"http://127.0.0.1:{port}"
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)
        podman("volume", "rm", "-f", volume, check=False)


def test_the_image_answers_as_a_non_root_user_and_keeps_its_data_across_a_restart(container: tuple[str, str]) -> None:
    name, url = container
    health = wait_healthy(url)
    assert health["llm"]["provider"] == "local" and health["embedder"]["dimension"] == 384
    assert podman("exec", name, "id", "-u").stdout.strip() == "10001"
    assert podman("healthcheck", "run", name, check=False).returncode == 0  # the image's own HEALTHCHECK
    added = httpx.post(f"{url}/api/v1/documents/add", json={"documents": [DOCUMENT], "ids": ["ferry"]}, timeout=120)
    assert added.status_code == 200, added.text
    events, arrivals = stream_chat(url, "When does the ferry leave the harbour?")
    assert next(e["sources"] for e in events if "sources" in e)[0]["document_id"] == "ferry"
    assert len(arrivals) > 3 and not any("error" in e for e in events)  # the bundled model answered, streamed

    stopped = podman("stop", "-t", "20", name)  # SIGTERM: the service's own graceful shutdown
    assert stopped.returncode == 0
    assert podman("inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip() in ("0", "143")
    podman("start", name)
    wait_healthy(url)
    listed = httpx.get(f"{url}/api/v1/documents").json()
    assert [d["id"] for d in listed["documents"]] == ["ferry"]  # kept in the volume


@pytest.fixture
def compose(image: str) -> Iterator[tuple[str, str]]:
    project, port = f"ragtest{uuid.uuid4().hex[:6]}", free_port()
    command = ["podman-compose", "-p", project, "-f", str(PROJECT_DIR / "compose.yaml")]
    env = {**ENV, "PORT": str(port)}
    subprocess.run(
        [*command, "up", "-d"], env=env, cwd=PROJECT_DIR, capture_output=True, text=True, check=True, timeout=600
    )
    try:
        yield project, f"http://127.0.0.1:{port}"
    finally:
        subprocess.run([*command, "down", "-v"], env=env, cwd=PROJECT_DIR, capture_output=True, timeout=300)


def inside(container: str, method: str, path: str, body: dict | None = None) -> dict:
    """A request made from inside one replica's container to that replica alone (the replicas publish no port)."""
    script = (
        "import json, sys, urllib.request\n"
        f"data = {json.dumps(json.dumps(body)) if body is not None else None}\n"
        f"request = urllib.request.Request('http://127.0.0.1:8000{path}', method={method!r},"
        " data=data.encode() if data else None, headers={'content-type': 'application/json'})\n"
        "print(urllib.request.urlopen(request, timeout=120).read().decode())\n"
    )
    return json.loads(podman("exec", container, "python", "-c", script).stdout)


def mcp_search_calls(container: str) -> int:
    """How many search_documents calls one replica answered, from its own /metrics."""
    script = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8000/metrics').read().decode())"
    metrics = podman("exec", container, "python", "-c", script).stdout
    line = 'rag_mcp_tool_calls_total{outcome="ok",tool="search_documents"} '
    return sum(int(float(row[len(line) :])) for row in metrics.splitlines() if row.startswith(line))


def test_compose_serves_two_replicas_on_postgres_behind_nginx(compose: tuple[str, str]) -> None:
    project, url = compose
    wait_healthy(url, timeout=300)
    first, second = f"{project}_replica-1_1", f"{project}_replica-2_1"
    for replica in (first, second):
        deadline = time.monotonic() + 180
        while podman("exec", replica, "python", "-c", "import urllib.request; urllib.request.urlopen("
                     "'http://127.0.0.1:8000/api/v1/health', timeout=5)", check=False).returncode != 0:  # fmt: skip
            assert time.monotonic() < deadline, f"{replica} did not start"
            time.sleep(2)
    added = inside(first, "POST", "/api/v1/documents/add", {"documents": [DOCUMENT], "ids": ["ferry"]})
    assert added["ids"] == ["ferry"]
    found = inside(second, "GET", "/api/v1/documents/search?query=ferry+harbour")
    assert [hit["document_id"] for hit in found["results"]] == ["ferry"]  # through the other replica
    assert inside(second, "GET", "/api/v1/health")["store"]["backend"] == "postgres"

    events, arrivals = stream_chat(url, "When does the ferry leave?")
    assert len(arrivals) > 3 and not any("error" in e for e in events)
    # Token by token through nginx: the tokens arrive over the answer's generation (the bundled model writes one
    # every few milliseconds), each at a moment of its own; buffered, they would all arrive at once at the end.
    assert arrivals[-1] - arrivals[0] > 0.05, arrivals
    distinct = {round(arrival, 3) for arrival in arrivals}
    assert len(distinct) > len(arrivals) / 2, arrivals

    # MCP through nginx: a client per call, so that calls spread over both replicas; every one is answered
    async def mcp_calls(count: int) -> list[list[str]]:
        found = []
        for _ in range(count):
            async with Client(streamable_http_client(f"{url}/mcp", http_client=httpx2.AsyncClient(timeout=60))) as c:
                call = await c.call_tool("search_documents", {"query": "ferry harbour", "top_k": 1})
                assert not call.is_error, call.content
                found.append([hit["document_id"] for hit in (call.structured_content or {})["results"]])
        return found

    assert asyncio.run(mcp_calls(8)) == [["ferry"]] * 8
    counted = [mcp_search_calls(replica) for replica in (first, second)]
    assert sum(counted) == 8 and min(counted) > 0, counted  # both replicas answered some
