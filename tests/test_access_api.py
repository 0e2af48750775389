"""The leak test: who may read which document, over every route and transport, on both backends.

One organisation holds five documents, each with a secret only it contains: one for group `hr`, one for group
`eng`, one for the user alice, one for nobody (only the organisation's keys) and one for everyone. Users with a
token (in `hr`, in `eng`, alice, in no group), the organisation's key narrowed to each of them with X-On-Behalf-Of,
and the unnarrowed key ask for every secret on every route. Each sees exactly the secrets its lists grant: in search
results (all three modes), lists, fetches, chat sources over SSE, WebSocket, `/v1` and `stream: false`, the legacy
route, and in the prompt the fake upstream receives (a real HTTP request, recorded). A forbidden document answers
404 exactly as a missing one does.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import openai
import pytest
from websockets.sync.client import connect

from main import create_app
from rag.access import AccessList
from rag.archive.reader import open_archive
from tests.conftest import make_settings
from tests.fake_upstream import FakeUpstream
from tests.servers import serve

SECRET = "access-test-secret-0123456789-abcdefghijklmnop"
KEY_A, KEY_B = "org-a-key-1111111111", "org-b-key-2222222222"

# document id -> (its text, its access list); each text holds a secret found nowhere else
DOCUMENTS: dict[str, tuple[str, dict[str, list[str]] | None]] = {
    "hr-ledger": ("The HR salary ledger says the bonus code is HRSECRET4471.", {"groups": ["hr"]}),
    "eng-runbook": ("The engineering runbook says the deploy code is ENGSECRET8812.", {"groups": ["eng"]}),
    "alice-note": ("Alice's private note says the locker code is ALICESECRET3390.", {"users": ["alice"]}),
    "board-minutes": ("The board minutes say the merger code is BOARDSECRET5521.", {"users": [], "groups": []}),
    "cafeteria": ("The cafeteria menu says the lunch code is MENUPUBLIC1200.", None),
}
SECRETS = {doc: text.split()[-1].rstrip(".") for doc, (text, _) in DOCUMENTS.items()}
QUESTIONS = {
    "hr-ledger": "What is the bonus code in the HR salary ledger?",
    "eng-runbook": "What is the deploy code in the engineering runbook?",
    "alice-note": "What is the locker code in Alice's private note?",
    "board-minutes": "What is the merger code in the board minutes?",
    "cafeteria": "What is the lunch code on the cafeteria menu?",
}


@dataclass(frozen=True)
class Caller:
    name: str
    credential: Callable[[], str]
    headers: dict[str, str] = field(default_factory=dict)
    readable: frozenset[str] = frozenset()


def token(sub: str, groups: list[str] | None = None, org: str = "orgA") -> str:
    claims: dict[str, Any] = {"sub": sub, "orgId": org, "exp": int(time.time()) + 600}
    if groups is not None:
        claims["groups"] = groups
    return jwt.encode(claims, SECRET, algorithm="HS256")


def on_behalf(user: str, groups: list[str]) -> dict[str, str]:
    headers = {"X-On-Behalf-Of": user}
    if groups:
        headers["X-On-Behalf-Of-Groups"] = ",".join(groups)
    return headers


USERS = {  # user -> (groups, what they may read)
    "henry": (["hr"], {"hr-ledger", "cafeteria"}),
    "erin": (["eng"], {"eng-runbook", "cafeteria"}),
    "alice": ([], {"alice-note", "cafeteria"}),
    "nina": ([], {"cafeteria"}),
}
CALLERS = [
    *(
        Caller(f"token {user}", lambda u=user, g=groups: token(u, g), readable=frozenset(readable))  # type: ignore[misc]
        for user, (groups, readable) in USERS.items()
    ),
    *(
        Caller(f"key for {user}", lambda: KEY_A, on_behalf(user, groups), frozenset(readable))
        for user, (groups, readable) in USERS.items()
    ),
    Caller("organisation key", lambda: KEY_A, readable=frozenset(DOCUMENTS)),
]


def settings_for(backend: str, data_dir: Any, upstream_url: str, dsn: str | None) -> Any:
    extra: dict[str, Any] = {"vector_store": "postgres", "database_url": dsn} if backend == "postgres" else {}
    return make_settings(
        data_dir, upstream_url, api_keys=[f"{KEY_A}:orgA", f"{KEY_B}:orgB"], jwt_secret=SECRET, **extra
    )


@pytest.fixture(scope="module", params=["numpy", "postgres"])
def service(
    request: pytest.FixtureRequest, fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str, str | None]]:
    """(backend, base URL, database URL) of a service holding the five documents of orgA."""
    dsn = None
    if request.param == "postgres":
        pg_server = request.getfixturevalue("pg_server")
        name = f"access_{uuid.uuid4().hex[:8]}"
        pg_server.psql(f"CREATE DATABASE {name};")
        dsn = pg_server.get_uri(name)
    settings = settings_for(request.param, tmp_path_factory.mktemp("access"), fake_upstream.url, dsn)  # type: ignore[attr-defined]
    with serve(create_app(settings)) as url:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY_A}"}, timeout=60) as admin:
            added = admin.post(
                "/api/v1/documents/add",
                json={
                    "documents": [text for text, _ in DOCUMENTS.values()],
                    "ids": list(DOCUMENTS),
                    "access": [listed for _, listed in DOCUMENTS.values()],
                },
            )
            assert added.status_code == 200, added.text
        yield request.param, url, dsn


@pytest.fixture(params=CALLERS, ids=[caller.name for caller in CALLERS])
def caller(request: pytest.FixtureRequest) -> Caller:
    return request.param  # type: ignore[no-any-return]


def client_of(url: str, caller: Caller) -> httpx.Client:
    headers = {"Authorization": f"Bearer {caller.credential()}", **caller.headers}
    return httpx.Client(base_url=url, headers=headers, timeout=60)


def assert_only_readable(text: str, caller: Caller) -> None:
    """No secret of a document the caller may not read is in `text`."""
    leaked = [doc for doc, secret in SECRETS.items() if secret in text and doc not in caller.readable]
    assert not leaked, f"{caller.name} was shown {leaked}"


def prompt_text(upstream: FakeUpstream) -> str:
    return json.dumps(upstream.requests)


def test_search_lists_and_fetches_show_exactly_what_the_lists_grant(
    service: tuple[str, str, str | None], caller: Caller, upstream: FakeUpstream
) -> None:
    _, url, _ = service
    with client_of(url, caller) as client:
        for doc, question in QUESTIONS.items():
            for mode in ("hybrid", "dense", "keyword"):
                response = client.get("/api/v1/documents/search", params={"query": question, "top_k": 5, "mode": mode})
                assert response.status_code == 200, response.text
                assert_only_readable(response.text, caller)
                found = {hit["document_id"] for hit in response.json()["results"]}
                assert found <= caller.readable
                if doc in caller.readable and mode == "keyword":  # its own secret's words find it
                    assert doc in found, (caller.name, doc)
            fetched = client.get(f"/api/v1/documents/{doc}")
            if doc in caller.readable:
                assert fetched.status_code == 200 and fetched.json()["id"] == doc
            else:  # exactly as a document that does not exist
                missing = client.get(f"/api/v1/documents/no-such-{doc}")
                assert fetched.status_code == missing.status_code == 404
                assert fetched.json()["error"]["type"] == missing.json()["error"]["type"] == "not_found"
        page = client.get("/api/v1/documents", params={"limit": 100}).json()
        assert {d["id"] for d in page["documents"]} == caller.readable
        assert page["total"] == len(caller.readable)
        assert_only_readable(json.dumps(page), caller)
    assert upstream.requests == []  # searching sends nothing upstream


def test_every_chat_transport_and_the_prompt_hold_only_readable_text(
    service: tuple[str, str, str | None], caller: Caller, upstream: FakeUpstream
) -> None:
    _, url, _ = service
    question = QUESTIONS["hr-ledger"]  # its best match is the HR document
    with client_of(url, caller) as client:
        answer = client.post(
            "/api/v1/chat", json={"messages": [{"role": "user", "content": question}], "stream": False}
        )
        assert answer.status_code == 200, answer.text
        assert {s["document_id"] for s in answer.json()["sources"]} <= caller.readable
        if "hr-ledger" in caller.readable:
            assert answer.json()["sources"][0]["document_id"] == "hr-ledger"
        with client.stream("POST", "/api/v1/chat", json={"messages": [{"role": "user", "content": question}]}) as sse:
            assert sse.status_code == 200
            assert_only_readable("".join(sse.iter_text()), caller)
        with client.stream("POST", "/stream", json={"question": question, "userId": caller_user(caller)}) as legacy:
            assert legacy.status_code == 200, legacy.read()
            assert_only_readable("".join(legacy.iter_text()), caller)
    openai_client = openai.OpenAI(
        base_url=f"{url}/v1", api_key=caller.credential(), default_headers=caller.headers, max_retries=0
    )
    chunks = openai_client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": question}], stream=True
    )
    assert_only_readable("".join(chunk.model_dump_json() for chunk in chunks), caller)
    ws_url = url.replace("http", "ws") + "/api/v1/ws/chat"
    headers = {"Authorization": f"Bearer {caller.credential()}", **caller.headers}
    with connect(ws_url, additional_headers=headers, open_timeout=10) as ws:
        ws.send(json.dumps({"question": question, "id": 1}))
        frames: list[dict[str, Any]] = []
        while not frames or frames[-1]["type"] != "done":
            frames.append(json.loads(ws.recv(timeout=20)))
    assert_only_readable(json.dumps(frames), caller)
    # five answers, each prompt a real request to the upstream: none carries a forbidden secret
    assert len(upstream.requests) == 5
    assert_only_readable(prompt_text(upstream), caller)
    if "hr-ledger" in caller.readable:
        assert SECRETS["hr-ledger"] in prompt_text(upstream)


def caller_user(caller: Caller) -> str:
    """The userId the legacy body carries: the caller's own (a token's sub, or X-On-Behalf-Of)."""
    if "X-On-Behalf-Of" in caller.headers:
        return caller.headers["X-On-Behalf-Of"]
    if caller.name.startswith("token "):
        return caller.name.removeprefix("token ")
    return "admin"


NARROWED = [caller for caller in CALLERS if caller.readable != frozenset(DOCUMENTS)]


@pytest.mark.parametrize("narrowed", NARROWED, ids=[caller.name for caller in NARROWED])
def test_a_narrowed_caller_cannot_change_replace_or_delete_what_it_cannot_read(
    service: tuple[str, str, str | None], narrowed: Caller, upstream: FakeUpstream
) -> None:
    _, url, _ = service
    caller = narrowed
    with client_of(url, caller) as client:
        changed = client.put("/api/v1/documents/cafeteria/access", json={"groups": ["eng"]})
        assert changed.status_code == 403 and changed.json()["error"]["type"] == "forbidden"
        for doc in set(DOCUMENTS) - caller.readable:
            assert client.delete(f"/api/v1/documents/{doc}").status_code == 404
            overwrite = client.post("/api/v1/documents/add", json={"documents": ["gone"], "ids": [doc]})
            assert overwrite.status_code == 403
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY_A}"}, timeout=60) as admin:
        page = admin.get("/api/v1/documents", params={"limit": 100}).json()
        assert {d["id"] for d in page["documents"]} >= set(DOCUMENTS)  # nothing was deleted or replaced
        for doc in DOCUMENTS:
            assert SECRETS[doc] in admin.get(f"/api/v1/documents/{doc}").json()["preview"]


def test_the_export_is_the_organisation_keys_alone_and_holds_only_its_documents(
    service: tuple[str, str, str | None], caller: Caller, tmp_path: Path
) -> None:
    """An archive holds every document of the organisation, lists or not: only its own unnarrowed key may have it."""
    _, url, _ = service
    with client_of(url, caller) as client:
        response = client.get("/api/v1/export")
    if caller.name != "organisation key":
        assert response.status_code == 403 and response.json()["error"]["type"] == "forbidden"
        assert_only_readable(response.text, caller)
        return
    assert response.status_code == 200 and response.headers["content-type"] == "application/x-tar"
    archive = tmp_path / "orgA.tar"
    archive.write_bytes(response.content)
    documents = [d for batch in open_archive(archive, org_id="orgA").documents() for d in batch]
    assert {d.id for d in documents} >= set(DOCUMENTS)
    assert {d.id: d.access for d in documents}["hr-ledger"] == AccessList(groups=("hr",))
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY_B}"}, timeout=60) as other:
        assert other.get("/api/v1/export", params={"orgId": "orgA"}).status_code == 403
        theirs = other.get("/api/v1/export")
        assert theirs.status_code == 200
        assert not [secret for secret in SECRETS.values() if secret.encode() in theirs.content]


def test_a_token_cannot_act_on_behalf_of_anyone(service: tuple[str, str, str | None], upstream: FakeUpstream) -> None:
    _, url, _ = service
    with httpx.Client(base_url=url, timeout=60) as client:
        response = client.get(
            "/api/v1/documents",
            headers={"Authorization": f"Bearer {token('erin', ['eng'])}", "X-On-Behalf-Of": "henry"},
        )
        assert response.status_code == 403 and response.json()["error"]["type"] == "forbidden"
        groups_only = client.get(
            "/api/v1/documents", headers={"Authorization": f"Bearer {KEY_A}", "X-On-Behalf-Of-Groups": "hr"}
        )
        assert groups_only.status_code == 403
        other_org = client.get(
            "/api/v1/documents/hr-ledger", headers={"Authorization": f"Bearer {KEY_B}", **on_behalf("henry", ["hr"])}
        )
        assert other_org.status_code == 404  # narrowing never widens: B's key does not reach A's documents


def test_an_access_change_holds_from_the_next_request_on_every_replica(
    service: tuple[str, str, str | None], fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> None:
    backend, url, dsn = service
    replica_url = None
    second = None
    if backend == "postgres":  # a second replica on the same database, with its own keyword index
        settings = settings_for("postgres", tmp_path_factory.mktemp("replica"), fake_upstream.url, dsn)  # type: ignore[attr-defined]
        second = serve(create_app(settings))
        replica_url = second.__enter__()
    try:
        readers = [url] if replica_url is None else [url, replica_url]
        erin = Caller("token erin", lambda: token("erin", ["eng"]), readable=frozenset())
        admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY_A}"}, timeout=60)
        with admin:
            added = admin.post(
                "/api/v1/documents/add",
                json={"documents": ["The vault plan says the gate code is GATESECRET7070."], "ids": ["vault-plan"]},
            )
            assert added.status_code == 200
            for restricted in ({"groups": ["hr"]}, None, {"users": ["erin"]}, {"groups": []}):
                changed = admin.put(  # content, not json=: httpx sends no body for json=None
                    "/api/v1/documents/vault-plan/access",
                    content=json.dumps(restricted),
                    headers={"content-type": "application/json"},
                )
                assert changed.status_code == 200, changed.text
                assert changed.json()["access"] == (
                    None if restricted is None else {"users": [], "groups": []} | restricted
                )
                visible = restricted is None or restricted.get("users") == ["erin"]
                for reader_url in readers:  # the very next request, on each replica
                    with client_of(reader_url, erin) as client:
                        hits = client.get(
                            "/api/v1/documents/search", params={"query": "vault plan gate code", "mode": "keyword"}
                        ).json()["results"]
                        assert ("vault-plan" in {h["document_id"] for h in hits}) == visible, (reader_url, restricted)
                        assert (client.get("/api/v1/documents/vault-plan").status_code == 200) == visible
            entries = admin.get("/api/v1/audit").json()["entries"]
            changes = [e for e in entries if e["action"] == "document.access" and e["target"] == "vault-plan"]
            assert len(changes) == 4 and changes[0]["details"]["access"] == {"users": [], "groups": []}
            assert "GATESECRET7070" not in json.dumps(entries)  # who, what, when: never the content
            assert admin.delete("/api/v1/documents/vault-plan").status_code == 200
    finally:
        if second is not None:
            second.__exit__(None, None, None)


def test_bad_access_lists_are_clear_422s(service: tuple[str, str, str | None], upstream: FakeUpstream) -> None:
    _, url, _ = service
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY_A}"}, timeout=60) as admin:
        for body in (
            {"documents": ["x"], "access": [{"groups": "hr"}]},
            {"documents": ["x"], "access": [{"teams": ["hr"]}]},
            {"documents": ["x", "y"], "access": [None]},
            {"documents": ["x"], "access": [{"users": [""]}]},
        ):
            response = admin.post("/api/v1/documents/add", json=body)
            assert response.status_code == 422, (body, response.text)
            assert response.json()["error"]["message"]
        bad_put = admin.put("/api/v1/documents/cafeteria/access", json={"groups": [1]})
        assert bad_put.status_code == 422
        missing = admin.put("/api/v1/documents/no-such-document/access", json={"groups": ["hr"]})
        assert missing.status_code == 404
        no_body = admin.put("/api/v1/documents/cafeteria/access")  # opening to everyone must be said: null
        assert no_body.status_code == 422 and "null" in no_body.json()["error"]["message"]
        upload = admin.post(
            "/api/v1/documents/upload",
            files=[("files", ("a.txt", b"some text", "text/plain"))],
            data={"access": '{"groups": "hr"}'},
        )
        assert upload.status_code == 422
