"""A new embedding model without downtime (rag/spaces/), on both backends, through a live service: a second space is
built while writers add, replace, delete and re-list documents; the switch loses nothing acknowledged; searches then
use the new model; the old space follows, so switching back is one step; dropping removes its store. A store whose
space was switched away from refuses writes; bad requests get clear errors."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from main import create_app
from rag.errors import SpaceRetired
from rag.types import Chunk
from tests import test_store_conformance as conformance
from tests.conftest import make_settings
from tests.servers import serve
from tests.test_store_conformance import Backend

HASHING = {"embedder": "examples.plugins.hashing_embedder:HashingEmbedder", "embedder_options": {"dimension": 64}}
backend = conformance.backend
WORDS = [
    "comet",
    "orbit",
    "nebula",
    "galaxy",
    "quasar",
    "pulsar",
    "meteor",
    "crater",
    "lunar",
    "solar",
    "eclipse",
    "zenith",
    "aurora",
    "photon",
    "plasma",
]


def text_of(n: int, version: int = 0) -> str:
    words = [WORDS[(n * 7 + i * 3 + version) % len(WORDS)] for i in range(12)]
    return f"Document {n} version {version} about " + " ".join(words) + "."


def wait_for(check: Callable[[], Any], timeout: float = 120.0, what: str = "a condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def spaces(http: httpx.Client) -> dict[str, dict[str, Any]]:
    response = http.get("/api/v1/embedding-spaces")
    assert response.status_code == 200, response.text
    return {space["name"]: space for space in response.json()["spaces"]}


def serving_model(http: httpx.Client) -> str:
    return str(http.get("/api/v1/health").json()["embedder"]["model"])


class Writers:
    """Adds, replaces, deletes and re-lists documents until stopped, keeping what was acknowledged."""

    def __init__(self, http: httpx.Client, first: int) -> None:
        self.http = http
        self.next = first
        self.held: dict[str, tuple[str, list[str] | None]] = {}  # id -> (text, users of its access list)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Writers:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        rng = np.random.default_rng(7)
        while not self._stop.is_set():
            n, self.next = self.next, self.next + 1
            doc = f"w{n}"
            response = self.http.post("/api/v1/documents/add", json={"documents": [text_of(n)], "ids": [doc]})
            if response.status_code != 200:
                self.errors.append(f"add {doc}: {response.status_code} {response.text}")
                continue
            self.held[doc] = (text_of(n), None)
            victim = f"w{int(rng.integers(n - 5, n))}" if n > 5 else None
            if victim in self.held and n % 3 == 0:
                response = self.http.delete(f"/api/v1/documents/{victim}")
                if response.status_code == 200:
                    self.held.pop(victim)
                else:
                    self.errors.append(f"delete {victim}: {response.status_code} {response.text}")
            elif victim in self.held and n % 3 == 1:
                access = {"users": [f"user{n}"], "groups": []}
                response = self.http.put(f"/api/v1/documents/{victim}/access", json=access)
                if response.status_code == 200:
                    self.held[victim] = (self.held[victim][0], [f"user{n}"])
                else:
                    self.errors.append(f"access {victim}: {response.status_code} {response.text}")
            elif victim in self.held:
                text = text_of(n, version=1)
                body = {"documents": [text], "ids": [victim]}
                response = self.http.post("/api/v1/documents/add", json=body)
                if response.status_code == 200:
                    self.held[victim] = (text, self.held[victim][1])
                else:
                    self.errors.append(f"replace {victim}: {response.status_code} {response.text}")


def assert_holds(http: httpx.Client, held: dict[str, tuple[str, list[str] | None]], when: str) -> None:
    """The serving store holds exactly what was acknowledged: every document, as last written, with its list."""
    listed: set[str] = set()
    offset = 0
    while True:
        page = http.get("/api/v1/documents", params={"offset": offset, "limit": 200}).json()
        listed |= {doc["id"] for doc in page["documents"]}
        offset += 200
        if offset >= page["total"]:
            break
    assert listed == set(held), when
    for doc, (text, users) in held.items():
        body = http.get(f"/api/v1/documents/{doc}").json()
        assert body["preview"] == text[: len(body["preview"])], (when, doc)
        assert (body["access"] or {}).get("users") == users, (when, doc)


@pytest.fixture(params=["numpy", "postgres"])
def service(request: pytest.FixtureRequest, tmp_path: Path, upstream: Any) -> Iterator[httpx.Client]:
    extra: dict[str, Any] = {}
    if request.param == "postgres":
        extra = {"vector_store": "postgres", "database_url": request.getfixturevalue("pg_dsn")}
    settings = make_settings(
        tmp_path / "data",
        upstream.url,
        space_pass_seconds=0.2,
        space_poll_seconds=0.2,
        similarity_threshold=0.0,
        **extra,
    )
    with serve(create_app(settings)) as url, httpx.Client(base_url=url, timeout=60) as http:
        http.settings = settings  # type: ignore[attr-defined]
        yield http


def test_a_new_model_is_built_beside_switched_to_and_back_and_dropped_without_losing_a_write(
    service: httpx.Client,
) -> None:
    http = service
    first_model = serving_model(http)
    docs = [text_of(n) for n in range(40)]
    ids = [f"d{n}" for n in range(40)]
    assert http.post("/api/v1/documents/add", json={"documents": docs, "ids": ids}).status_code == 200

    with Writers(http, first=1000) as writers:
        response = http.post("/api/v1/embedding-spaces", json={"embedder": HASHING})
        assert response.status_code == 202, response.text
        assert response.json() | {"state": "building"} == response.json()
        name = response.json()["name"]
        assert name == "hashing_64"
        ready = wait_for(lambda: spaces(http)[name]["state"] == "ready" and spaces(http)[name], what="ready")
        assert ready["progress"]["documents_done"] > 0
        assert serving_model(http) == first_model  # searches use the old space until the switch
        assert http.post(f"/api/v1/embedding-spaces/{name}/activate").status_code == 202
        wait_for(lambda: serving_model(http) == "hashing-64", what="the switch")
        time.sleep(1.0)  # writes go on into the new space
    assert writers.errors == []
    held = {doc: (text, None) for doc, text in zip(ids, docs, strict=True)} | writers.held
    assert_holds(http, held, "after the switch")
    found = http.get("/api/v1/documents/search", params={"query": text_of(3), "top_k": 1}).json()["results"]
    assert found[0]["document_id"] == "d3"  # the hashing model finds its exact words

    # The old space followed: switching back loses nothing written since the first switch.
    everything = spaces(http)
    assert everything[name]["state"] == "active" and everything["default"]["state"] == "retired"
    tag = uuid.uuid4().hex
    assert http.post("/api/v1/documents/add", json={"documents": [f"{tag} zenith"], "ids": [tag]}).status_code == 200
    held[tag] = (f"{tag} zenith", None)
    assert http.post("/api/v1/embedding-spaces/default/activate").status_code == 202
    wait_for(lambda: serving_model(http) == first_model, what="the switch back")
    assert_holds(http, held, "after the switch back")

    assert http.delete(f"/api/v1/embedding-spaces/{name}").status_code == 202
    wait_for(lambda: name not in spaces(http), what="the drop")
    settings = http.settings  # type: ignore[attr-defined]
    if settings.vector_store == "numpy":
        assert not (settings.data_dir / "spaces" / name).exists()
    assert_holds(http, held, "after the drop")


def test_requests_that_do_not_fit_get_clear_errors(service: httpx.Client) -> None:
    http = service
    bad = http.post("/api/v1/embedding-spaces", json={"embedder": {"api_keys": "x"}})
    assert bad.status_code == 422 and "not an embedder setting" in bad.json()["error"]["message"]
    broken = http.post("/api/v1/embedding-spaces", json={"embedder": {"embedder": "no.such.module:Nothing"}})
    assert broken.status_code == 422 and broken.json()["error"]["type"]
    named = http.post("/api/v1/embedding-spaces", json={"embedder": HASHING, "name": "../etc"})
    assert named.status_code == 422
    assert http.post("/api/v1/embedding-spaces", json={"embedder": HASHING}).status_code == 202
    again = http.post("/api/v1/embedding-spaces", json={"embedder": HASHING, "name": "other"})
    assert again.status_code == 409 and "already embeds" in again.json()["error"]["message"]
    assert http.post("/api/v1/embedding-spaces/nothing/activate").status_code == 404
    assert http.delete("/api/v1/embedding-spaces/default").status_code == 409  # the active one
    assert http.post("/api/v1/embedding-spaces/default/activate").status_code == 409


async def test_a_store_switched_away_from_refuses_writes_but_its_follower_handle(backend: Backend) -> None:
    store = await backend.open()
    chunk = [Chunk("a:0", "a", "text", {})]
    vector = np.ones((1, store.dimension), dtype=np.float32) / np.sqrt(store.dimension)
    await store.upsert(chunk, vector)
    await store.mark_retired(True)  # type: ignore[attr-defined]
    with pytest.raises(SpaceRetired):
        await store.upsert(chunk, vector)
    with pytest.raises(SpaceRetired):
        await store.delete("a")
    assert await store.is_retired()  # type: ignore[attr-defined]
    store.follower = True  # type: ignore[attr-defined]
    assert not await store.is_retired()  # type: ignore[attr-defined]
    await store.delete("a")
    store.follower = False  # type: ignore[attr-defined]
    await store.mark_retired(False)
    assert not await store.is_retired()  # type: ignore[attr-defined]
    await store.upsert(chunk, vector)
    assert (await store.document_states()).keys() == {"a"}  # type: ignore[attr-defined]


@pytest.mark.parametrize("store", ["numpy", "postgres"])
def test_a_build_killed_midway_goes_on_from_where_it_was_after_a_restart(
    tmp_path: Path, fake_upstream: Any, store: str, request: pytest.FixtureRequest
) -> None:
    """The service starts on the hashing embedder; a space for the bundled MiniLM is asked for, and the service is
    SIGKILLed while it is part built. Restarted, the builder goes on (the documents it held are not embedded again),
    and the space, activated, holds every document."""
    from bench.service_process import ServiceProcess

    settings = {
        "embedder": HASHING["embedder"],
        "embedder_options": '{"dimension": 64}',
        "space_pass_seconds": "0.2",
        "similarity_threshold": "0.0",
    }
    if store == "postgres":
        settings |= {"vector_store": "postgres", "database_url": request.getfixturevalue("pg_dsn")}
    total = 1500
    with ServiceProcess(tmp_path / "data", fake_upstream.url, **settings) as service:
        service.wait_ready()
        with httpx.Client(base_url=service.url, timeout=120) as http:
            for start in range(0, total, 100):
                ids = [f"d{n}" for n in range(start, start + 100)]
                body = {"documents": [text_of(n) for n in range(start, start + 100)], "ids": ids}
                response = http.post("/api/v1/documents/add", json=body)
                assert response.status_code == 200, response.text
            response = http.post("/api/v1/embedding-spaces", json={"embedder": {"embedder": "onnx"}})
            assert response.status_code == 202, response.text
            name = response.json()["name"]
            part = wait_for(
                lambda: 0 < spaces(http)[name]["progress"]["documents_done"] < total and spaces(http)[name],
                what="a space part built",
            )
        service.kill()
    done_before = part["progress"]["documents_done"]
    with ServiceProcess(tmp_path / "data", fake_upstream.url, **settings) as service:
        service.wait_ready()
        with httpx.Client(base_url=service.url, timeout=120) as http:
            ready = wait_for(lambda: spaces(http)[name]["state"] == "ready" and spaces(http)[name], what="ready")
            # only what was not held before the kill was embedded after it (a batch may be embedded twice)
            assert ready["progress"]["documents_done"] == total
            embedded_after = ready["progress"]["chunks_embedded"] - part["progress"]["chunks_embedded"]
            assert embedded_after <= total - done_before + 512
            assert http.post(f"/api/v1/embedding-spaces/{name}/activate").status_code == 202
            wait_for(lambda: serving_model(http) != "hashing-64", what="the switch")
            assert http.get("/api/v1/health").json()["store"]["documents"] == total
            hits = http.get("/api/v1/documents/search", params={"query": text_of(1234), "top_k": 3}).json()
            assert "d1234" in {hit["document_id"] for hit in hits["results"]}


def test_a_backup_holds_the_active_space_and_the_service_starts_on_it(tmp_path: Path, upstream: Any) -> None:
    """After a switch, a backup copies the active space's store (under spaces/) and a registry of that space alone;
    the service started on the backup serves it with every document."""
    from rag.backup import backup

    settings = make_settings(tmp_path / "data", upstream.url, space_pass_seconds=0.2, space_poll_seconds=0.2)
    ids = [f"d{n}" for n in range(30)]
    with serve(create_app(settings)) as url, httpx.Client(base_url=url, timeout=60) as http:
        body = {"documents": [text_of(n) for n in range(30)], "ids": ids}
        assert http.post("/api/v1/documents/add", json=body).status_code == 200
        name = http.post("/api/v1/embedding-spaces", json={"embedder": HASHING}).json()["name"]
        wait_for(lambda: spaces(http)[name]["state"] == "ready", what="ready")
        assert http.post(f"/api/v1/embedding-spaces/{name}/activate").status_code == 202
        wait_for(lambda: serving_model(http) == "hashing-64", what="the switch")
        report = backup(settings.data_dir, tmp_path / "backup")
        assert report.documents == 30
    assert not (tmp_path / "backup" / "store").exists()  # the retired first store is not in it
    restored = make_settings(tmp_path / "backup", upstream.url)
    with serve(create_app(restored)) as url, httpx.Client(base_url=url, timeout=60) as http:
        assert serving_model(http) == "hashing-64"
        assert list(spaces(http)) == [name]
        assert_holds(http, {doc: (text_of(n), None) for n, doc in enumerate(ids)}, "restored")


def test_only_a_trusted_key_sees_or_asks_for_spaces(tmp_path: Path, upstream: Any) -> None:
    """A space holds every organisation's documents: an organisation's key, or one acting for a user, gets 403 on
    every space route, and nothing is registered."""
    settings = make_settings(tmp_path / "data", upstream.url, api_keys=["root-key", "acme-key:acme"])
    with serve(create_app(settings)) as url, httpx.Client(base_url=url, timeout=60) as http:
        org = {"Authorization": "Bearer acme-key"}
        as_user = {"Authorization": "Bearer root-key", "X-On-Behalf-Of": "alice"}
        for headers in (org, as_user):
            assert http.get("/api/v1/embedding-spaces", headers=headers).status_code == 403
            body = {"embedder": HASHING}
            assert http.post("/api/v1/embedding-spaces", json=body, headers=headers).status_code == 403
            assert http.post("/api/v1/embedding-spaces/default/activate", headers=headers).status_code == 403
            assert http.delete("/api/v1/embedding-spaces/default", headers=headers).status_code == 403
        trusted = {"Authorization": "Bearer root-key"}
        assert http.get("/api/v1/embedding-spaces", headers=trusted).json()["spaces"] == []
        assert http.post("/api/v1/embedding-spaces", json={"embedder": HASHING}, headers=trusted).status_code == 202
        entries = http.get("/api/v1/audit", headers=trusted).json()["entries"]
        assert [entry["action"] for entry in entries if entry["action"].startswith("space.")] == ["space.add"]


def test_every_replica_moves_at_the_switch_and_writes_through_any_of_them_land_in_the_new_space(
    tmp_path: Path, upstream: Any, pg_dsn: str
) -> None:
    """Two replicas on one PostgreSQL: one builds (it holds the lease), both serve the old model until the switch,
    then both serve the new one; what either acknowledged, before or after, is in the space both serve."""
    settings = [
        make_settings(
            tmp_path / f"replica{i}",
            upstream.url,
            vector_store="postgres",
            database_url=pg_dsn,
            space_pass_seconds=0.2,
            space_poll_seconds=0.2,
        )
        for i in range(2)
    ]
    with (
        serve(create_app(settings[0])) as first,
        serve(create_app(settings[1])) as second,
        httpx.Client(base_url=first, timeout=60) as a,
        httpx.Client(base_url=second, timeout=60) as b,
    ):
        old_model = serving_model(a)
        held: dict[str, tuple[str, list[str] | None]] = {}
        for n, http in enumerate([a, b] * 5):
            assert (
                http.post("/api/v1/documents/add", json={"documents": [text_of(n)], "ids": [f"r{n}"]}).status_code
                == 200
            )
            held[f"r{n}"] = (text_of(n), None)
        name = b.post("/api/v1/embedding-spaces", json={"embedder": HASHING}).json()["name"]
        wait_for(lambda: spaces(a)[name]["state"] == "ready", what="ready")
        assert {serving_model(a), serving_model(b)} == {old_model}
        with Writers(a, first=100) as writers_a, Writers(b, first=500) as writers_b:
            assert a.post(f"/api/v1/embedding-spaces/{name}/activate").status_code == 202
            wait_for(lambda: serving_model(a) == serving_model(b) == "hashing-64", what="both replicas moved")
            time.sleep(1.0)
        assert writers_a.errors == [] and writers_b.errors == []
        held |= writers_a.held | writers_b.held
        assert_holds(a, held, "through the first replica")
        assert_holds(b, held, "through the second replica")


def test_a_replica_that_has_not_yet_polled_reads_what_another_wrote_after_the_switch(
    tmp_path: Path, upstream: Any, pg_dsn: str
) -> None:
    """The second replica polls the registry only every minute: its watcher does not move it in this test. Right after
    the switch, a document added through the first replica (already moved) is found, listed and read through the
    second; every read asks the old store whether it was switched away from, and moves first when it was."""
    settings = [
        make_settings(
            tmp_path / f"replica{i}",
            upstream.url,
            vector_store="postgres",
            database_url=pg_dsn,
            space_pass_seconds=0.2,
            space_poll_seconds=poll,
            similarity_threshold=0.0,
        )
        for i, poll in enumerate((0.2, 60.0))
    ]
    with (
        serve(create_app(settings[0])) as first,
        serve(create_app(settings[1])) as second,
        httpx.Client(base_url=first, timeout=60) as a,
        httpx.Client(base_url=second, timeout=60) as b,
    ):
        body = {"documents": [text_of(n) for n in range(10)], "ids": [f"r{n}" for n in range(10)]}
        assert a.post("/api/v1/documents/add", json=body).status_code == 200
        name = a.post("/api/v1/embedding-spaces", json={"embedder": HASHING}).json()["name"]
        wait_for(lambda: spaces(a)[name]["state"] == "ready", what="ready")
        assert a.post(f"/api/v1/embedding-spaces/{name}/activate").status_code == 202
        wait_for(lambda: serving_model(a) == "hashing-64", what="the first replica moved")
        late = "A late note about a heliopause and its termination shock."
        assert a.post("/api/v1/documents/add", json={"documents": [late], "ids": ["late"]}).status_code == 200
        for mode in ("dense", "keyword"):
            found = b.get("/api/v1/documents/search", params={"query": late, "mode": mode, "top_k": 1}).json()
            assert [hit["document_id"] for hit in found["results"]] == ["late"], mode
        assert b.get("/api/v1/documents/late").status_code == 200
        listed = b.get("/api/v1/documents", params={"limit": 100}).json()
        assert "late" in {doc["id"] for doc in listed["documents"]}
        assert serving_model(b) == "hashing-64"


def test_two_workers_on_one_data_dir_move_together_and_lose_no_write(tmp_path: Path, fake_upstream: Any) -> None:
    """Two uvicorn workers share the embedded store: one runs the builder; writers through fresh connections reach
    both throughout the switch; afterwards both serve the new model and hold every acknowledged document."""
    from bench.service_process import ServiceProcess

    settings = {"space_pass_seconds": "0.2", "space_poll_seconds": "0.2", "similarity_threshold": "0.0"}
    with ServiceProcess(tmp_path / "data", fake_upstream.url, workers=2, **settings) as service:
        service.wait_ready()
        fresh = httpx.Client(base_url=service.url, timeout=60, limits=httpx.Limits(max_keepalive_connections=0))
        with fresh as http:
            old_model = serving_model(http)
            name = http.post("/api/v1/embedding-spaces", json={"embedder": HASHING}).json()["name"]
            wait_for(lambda: spaces(http)[name]["state"] == "ready", what="ready")
            with Writers(http, first=0) as writers:
                time.sleep(0.5)
                assert http.post(f"/api/v1/embedding-spaces/{name}/activate").status_code == 202
                # fresh connections spread over the workers: both have moved when many answers agree
                wait_for(lambda: {serving_model(http) for _ in range(12)} == {"hashing-64"}, what="both workers moved")
                time.sleep(0.5)
            assert writers.errors == []
            assert old_model != "hashing-64"
            assert_holds(http, writers.held, "after the switch, through both workers")
