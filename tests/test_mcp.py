"""The MCP transport (api/mcp.py), through the SDK's own client over streamable HTTP against the live service: the
tools listed and each called; an added document found by search and cited by `ask` (the scripted upstream); a file
uploaded and its job followed; credentials refused as on every route; another organisation invisible through every
tool; bad arguments a tool error naming the argument, never a crash; each call counted in /metrics."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from main import create_app
from tests.conftest import make_settings
from tests.fake_upstream import FakeUpstream, Script
from tests.servers import serve

PROJECT_DIR = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream) -> Iterator[str]:
    settings = make_settings(
        tmp_path_factory.mktemp("mcp") / "data",
        fake_upstream.url,
        api_keys=["root-key", "acme-key:acme", "other-key:other"],
        embedder="examples.plugins.hashing_embedder:HashingEmbedder",
        embedder_options={"dimension": 64},
        similarity_threshold=0.0,
    )
    with serve(create_app(settings)) as url:
        yield url


@asynccontextmanager
async def connected(url: str, key: str | None, **headers: str) -> AsyncIterator[Client]:
    auth = {"Authorization": f"Bearer {key}"} if key else {}
    http = httpx2.AsyncClient(headers={**auth, **headers}, timeout=60)
    async with Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client:
        yield client


def result(call: Any) -> dict[str, Any]:
    assert not call.is_error, call.content[0].text if call.content else call
    return call.structured_content  # type: ignore[no-any-return]


def error(call: Any) -> dict[str, Any]:
    assert call.is_error, call
    text = call.content[0].text
    return json.loads(text[text.index("{") :])["error"] if "{" in text else {"type": "", "message": text}


async def test_every_tool_through_the_sdk_client(service: str, fake_upstream: FakeUpstream) -> None:
    fake_upstream.reset(Script(tokens=["Herons ", "nest ", "in ", "March ", "[1]."]))
    async with connected(service, "acme-key") as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert set(tools) == {
            "search_documents", "ask", "list_documents", "get_document", "add_document", "upload_file", "get_job"
        }  # fmt: skip
        assert all(tool.description and tool.input_schema.get("properties") is not None for tool in tools.values())
        text = "The grey heron nests in March in tall trees by the lake. " * 40
        added = result(await client.call_tool("add_document", {"text": text, "document_id": "heron",
                                                                 "metadata": {"title": "Herons"}}))  # fmt: skip
        assert added["id"] == "heron" and added["chunks"] >= 2
        found = result(await client.call_tool("search_documents", {"query": "grey heron nests", "top_k": 3}))
        assert found["results"][0]["document_id"] == "heron" and found["results"][0]["title"] == "Herons"
        answer = result(await client.call_tool("ask", {"question": "When do herons nest?"}))
        assert answer["answer"] == "Herons nest in March [1]."
        assert answer["sources"][0]["document_id"] == "heron" and answer["sources"][0]["n"] == 1
        prompt = fake_upstream.requests[-1]["messages"][0]["content"]
        assert "grey heron nests in March" in prompt  # the answer was written from the passage
        listed = result(await client.call_tool("list_documents", {}))
        assert [d["id"] for d in listed["documents"]] == ["heron"] and listed["total"] == 1
        document = result(await client.call_tool("get_document", {"document_id": "heron"}))
        assert document["metadata"]["title"] == "Herons" and "grey heron" in document["text"]
        content = base64.b64encode(b"The kingfisher dives for minnows at dawn.").decode()
        job = result(await client.call_tool("upload_file", {"filename": "kingfisher.txt", "content_base64": content}))
        job_id = job["job"]["id"]
        for _ in range(200):
            state = result(await client.call_tool("get_job", {"job_id": job_id}))
            if state["state"] in ("done", "failed"):
                break
            await asyncio.sleep(0.05)
        assert state["state"] == "done", state
        found = result(await client.call_tool("search_documents", {"query": "kingfisher minnows", "top_k": 1}))
        assert "kingfisher" in found["results"][0]["text"]
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(f"{service}/metrics", headers={"Authorization": "Bearer root-key"})).text
    assert 'rag_mcp_tool_calls_total{outcome="ok",tool="search_documents"}' in metrics


async def test_another_organisation_is_invisible_through_every_tool(service: str) -> None:
    async with connected(service, "other-key") as other:
        result(await other.call_tool("add_document", {"text": "The secret otter lodge.", "document_id": "otter"}))
    async with connected(service, "acme-key") as acme:
        found = result(await acme.call_tool("search_documents", {"query": "secret otter lodge", "top_k": 50}))
        assert "otter" not in {hit["document_id"] for hit in found["results"]}
        listed = result(await acme.call_tool("list_documents", {"limit": 200}))
        assert "otter" not in {d["id"] for d in listed["documents"]}
        assert error(await acme.call_tool("get_document", {"document_id": "otter"}))["type"] == "not_found"
        answer = result(await acme.call_tool("ask", {"question": "Where is the secret otter lodge?"}))
        assert "otter" not in {s["document_id"] for s in answer["sources"]}
        # replacing it from another organisation is refused, and it stays the other's
        refused = error(await acme.call_tool("add_document", {"text": "Overwritten.", "document_id": "otter"}))
        assert refused["type"] in ("forbidden", "not_found")
    async with connected(service, "other-key") as other:
        document = result(await other.call_tool("get_document", {"document_id": "otter"}))
        assert document["text"] == "The secret otter lodge."


async def test_a_user_acting_through_a_key_reads_only_what_they_may(service: str) -> None:
    async with connected(service, "acme-key") as acme:
        result(await acme.call_tool("add_document", {"text": "The acme wren survey.", "document_id": "wren"}))
    async with httpx.AsyncClient() as http:
        access = {"users": ["ann"]}
        headers = {"Authorization": "Bearer acme-key"}
        (await http.put(f"{service}/api/v1/documents/wren/access", json=access, headers=headers)).raise_for_status()
    async with connected(service, "acme-key", **{"X-On-Behalf-Of": "bob"}) as bob:
        listed = result(await bob.call_tool("list_documents", {"limit": 200}))
        assert "wren" not in {d["id"] for d in listed["documents"]}
        assert error(await bob.call_tool("get_document", {"document_id": "wren"}))["type"] == "not_found"
    async with connected(service, "acme-key", **{"X-On-Behalf-Of": "ann"}) as ann:
        assert result(await ann.call_tool("get_document", {"document_id": "wren"}))["id"] == "wren"


@pytest.mark.parametrize(
    ("tool", "arguments", "named"),
    [
        ("search_documents", {}, "query"),
        ("search_documents", {"query": "x", "top_k": 10_000}, "top_k"),
        ("search_documents", {"query": "x", "top_k": 0}, "top_k"),
        ("search_documents", {"query": "x", "filters": {"year": {"$near": 3}}}, "$near"),
        ("search_documents", {"query": "x", "mode": "psychic"}, "mode"),
        ("search_documents", {"query": "   "}, "query"),
        ("ask", {}, "question"),
        ("get_document", {"document_id": "no-such-document"}, "no-such-document"),
        ("upload_file", {"filename": "a.txt", "content_base64": "%%%"}, "content_base64"),
        ("upload_file", {"filename": "a.exe", "content_base64": "AAAA"}, "a.exe"),
        ("get_job", {"job_id": "nope"}, "nope"),
        ("list_documents", {"limit": 100_000}, "limit"),
    ],
)
async def test_bad_arguments_are_a_tool_error_naming_them(
    service: str, tool: str, arguments: dict[str, Any], named: str
) -> None:
    async with connected(service, "acme-key") as client:
        call = await client.call_tool(tool, arguments)
        assert call.is_error
        assert named in call.content[0].text
        assert '"type": "internal_error"' not in call.content[0].text


def test_missing_and_wrong_credentials_are_refused_before_any_tool_runs(service: str) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"Accept": "application/json, text/event-stream"}
    missing = httpx.post(f"{service}/mcp", json=body, headers=headers)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["error"]["type"] == "unauthorized"
    wrong = httpx.post(f"{service}/mcp", json=body, headers={**headers, "Authorization": "Bearer wrong"})
    assert wrong.status_code == 401

    async def with_wrong_key() -> None:
        async with connected(service, "wrong") as client:
            await client.list_tools()

    with pytest.raises(Exception):  # noqa: B017, PT011 - the SDK reports the 401 as its own error type
        asyncio.run(with_wrong_key())


def test_the_example_client_runs(service: str, fake_upstream: FakeUpstream) -> None:
    fake_upstream.reset(Script(tokens=["Example ", "answer."]))
    env = {**os.environ, "RAG_URL": service, "RAG_API_KEY": "acme-key"}
    process = subprocess.run(
        [sys.executable, str(PROJECT_DIR / "examples" / "mcp_client.py")],
        env=env, capture_output=True, text=True, timeout=120, cwd=PROJECT_DIR,
    )  # fmt: skip
    assert process.returncode == 0, process.stderr
    assert "search_documents" in process.stdout and "Example answer." in process.stdout


def test_it_can_be_turned_off(tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    with serve(create_app(make_settings(tmp_path, fake_upstream.url, mcp_enabled=False))) as url:
        started = time.monotonic()
        assert httpx.post(f"{url}/mcp", json={}).status_code == 404
        assert time.monotonic() - started < 30


def test_with_user_tokens_a_token_works_and_the_metadata_says_where_tokens_come_from(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    import jwt

    secret = "a-test-secret-of-at-least-32-bytes!"
    settings = make_settings(
        tmp_path,
        fake_upstream.url,
        jwt_secret=secret,
        mcp_authorization_servers=["https://login.example.test/realms/acme"],
        embedder="examples.plugins.hashing_embedder:HashingEmbedder",
        embedder_options={"dimension": 64},
    )
    claims = {"sub": "ann", "orgId": "acme", "exp": int(time.time()) + 300}
    token = jwt.encode(claims, secret, algorithm="HS256")
    with serve(create_app(settings)) as url:
        metadata = httpx.get(f"{url}/.well-known/oauth-protected-resource").json()
        assert metadata["resource"] == f"{url}/mcp"
        assert metadata["authorization_servers"] == ["https://login.example.test/realms/acme"]
        refused = httpx.post(f"{url}/mcp", json={})
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == (
            f'Bearer resource_metadata="{url}/.well-known/oauth-protected-resource"'
        )

        async def as_ann() -> dict[str, Any]:
            async with connected(url, token) as client:
                result(await client.call_tool("add_document", {"text": "Ann's note on larks.", "document_id": "lark"}))
                return result(await client.call_tool("list_documents", {}))

        listed = asyncio.run(as_ann())
        assert [d["id"] for d in listed["documents"]] == ["lark"]
        assert listed["documents"][0]["metadata"]["orgId"] == "acme"
