"""Purging a user or an organisation, and the audit log, through a live service with keys and tokens: who may, what
goes, what stays, and what the log holds (never the content)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from main import create_app
from tests.conftest import make_settings
from tests.fake_upstream import FakeUpstream
from tests.servers import serve

SECRET = "admin-test-secret-0123456789-abcdefghijklmnopq"
TRUSTED, KEY_A, KEY_B = "trusted-key-0000000", "org-a-key-11111111", "org-b-key-22222222"


def token(sub: str, org: str) -> str:
    return jwt.encode({"sub": sub, "orgId": org, "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")


@pytest.fixture
def url(fake_upstream: FakeUpstream, tmp_path: Path) -> Iterator[str]:
    settings = make_settings(
        tmp_path / "data",
        fake_upstream.url,  # type: ignore[attr-defined]
        api_keys=[TRUSTED, f"{KEY_A}:orgA", f"{KEY_B}:orgB"],
        jwt_secret=SECRET,
        purge_delay_seconds=0,
    )
    with serve(create_app(settings)) as base:
        yield base


def client(url: str, credential: str, **headers: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {credential}", **headers}, timeout=60)


def ask(http: httpx.Client, chat_id: str) -> None:
    body = {"messages": [{"role": "user", "content": "What do the notes say?"}], "chatId": chat_id, "stream": False}
    response = http.post("/api/v1/chat", json=body)
    assert response.status_code == 200, response.text


def test_a_users_purge_takes_their_chats_jobs_and_documents_and_nothing_else(url: str, upstream: FakeUpstream) -> None:
    ann, ben, org_a = client(url, token("ann", "orgA")), client(url, token("ben", "orgA")), client(url, KEY_A)
    assert ann.post("/api/v1/documents/add", json={"documents": ["Ann's notes on tides."], "ids": ["ann-1"]}).is_success
    assert ben.post("/api/v1/documents/add", json={"documents": ["Ben's notes on gulls."], "ids": ["ben-1"]}).is_success
    job = ann.post("/api/v1/documents/upload", files=[("files", ("a.txt", b"Ann's uploaded log of buoys."))]).json()
    ask(ann, "ann-chat")
    ask(ben, "ben-chat")
    deadline = time.monotonic() + 60
    while ann.get(f"/api/v1/jobs/{job['id']}").json()["state"] != "done":
        assert time.monotonic() < deadline
        time.sleep(0.1)

    for refused in (ann, client(url, KEY_A, **{"X-On-Behalf-Of": "ann"})):
        response = refused.delete("/api/v1/users/ann", params={"documents": "true"})
        assert response.status_code == 403 and response.json()["error"]["type"] == "forbidden"
    # organisation B's key purges B's user "ann", a user of its own: nothing of A's ann goes
    elsewhere = client(url, KEY_B).delete("/api/v1/users/ann", params={"documents": "true"})
    assert elsewhere.status_code == 200
    assert elsewhere.json() == {"userId": "ann", "chats": 0, "jobs": 0, "documents": 0, "chunks": 0}
    assert [c["chatId"] for c in ann.get("/api/v1/chats").json()["chats"]] == ["ann-chat"]
    purged = org_a.delete("/api/v1/users/ann", params={"documents": "true"})
    assert purged.status_code == 200, purged.text
    assert purged.json() | {"chunks": 0} == {"userId": "ann", "chats": 1, "jobs": 1, "documents": 2, "chunks": 0}
    assert ann.get("/api/v1/chats").json()["chats"] == []
    assert ann.get("/api/v1/jobs").json()["jobs"] == []
    assert {d["id"] for d in org_a.get("/api/v1/documents").json()["documents"]} == {"ben-1"}
    assert [c["chatId"] for c in ben.get("/api/v1/chats").json()["chats"]] == ["ben-chat"]


def test_an_organisations_purge_takes_everything_of_it_and_keeps_its_record(url: str, upstream: FakeUpstream) -> None:
    org_a, org_b, trusted = client(url, KEY_A), client(url, KEY_B), client(url, TRUSTED)
    for http, org in ((org_a, "A"), (org_b, "B")):
        added = http.post("/api/v1/documents/add", json={"documents": [f"Org {org} plans."], "ids": [f"plan-{org}"]})
        assert added.status_code == 200
        assert http.put(f"/api/v1/documents/plan-{org}/access", json={"groups": ["staff"]}).status_code == 200
    ask(client(url, token("ann", "orgA")), "a-chat")
    ask(client(url, token("bo", "orgB")), "b-chat")

    assert org_a.delete("/api/v1/orgs/orgB").status_code == 403  # another organisation's key
    assert client(url, token("ann", "orgA")).delete("/api/v1/orgs/orgA").status_code == 403  # a user
    purged = org_a.delete("/api/v1/orgs/orgA")
    assert purged.status_code == 200, purged.text
    assert purged.json()["documents"] == 1 and purged.json()["chats"] == 1

    assert org_a.get("/api/v1/documents").json()["total"] == 0
    assert client(url, token("ann", "orgA")).get("/api/v1/chats").json()["chats"] == []
    assert org_b.get("/api/v1/documents").json()["total"] == 1  # B is untouched
    assert [c["chatId"] for c in client(url, token("bo", "orgB")).get("/api/v1/chats").json()["chats"]] == ["b-chat"]
    entries = org_a.get("/api/v1/audit").json()["entries"]
    assert [(e["action"], e["target"]) for e in entries] == [("org.purge", "orgA")]  # its record, and only that
    assert entries[0]["actor"] == {"kind": "scoped_key", "userId": None}
    b_entries = org_b.get("/api/v1/audit").json()["entries"]
    assert [(e["action"], e["target"]) for e in b_entries] == [("document.access", "plan-B")]
    assert org_a.get("/api/v1/audit", params={"orgId": "orgB"}).status_code == 403
    assert {e["orgId"] for e in trusted.get("/api/v1/audit").json()["entries"]} == {"orgA", "orgB"}
    assert client(url, token("bo", "orgB")).get("/api/v1/audit").status_code == 403
