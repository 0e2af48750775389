"""Web sources kept in sync (rag/sources/), end to end against a real web site on 127.0.0.1 (tests/web_site.py):
a first sync stores the site's pages and a linked PDF, with menus and footers left out; a re-sync with nothing
changed embeds nothing (counted) and is answered 304s; a changed page is replaced, a removed one deleted, a new one
added; robots.txt is obeyed; a sync killed midway goes on after a restart; another organisation sees nothing; and
no request reaches a loopback address unless SOURCES_ALLOW_HOSTS allows it, redirects included. The other ranges
are tested on the address check and the resolver alone: no test here could connect anywhere but 127.0.0.0/8."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest

from bench import sample_files
from bench.web_site import Site, page
from examples.plugins.hashing_embedder import HashingEmbedder
from main import create_app
from rag.sources.guard import AddressPolicy, AddressRefused, GuardedBackend, why_not_public
from tests.conftest import make_settings
from tests.servers import serve


class CountingEmbedder(HashingEmbedder):
    """The hashing embedder (examples/plugins), counting the texts it embeds for documents."""

    embedded = 0

    def embed_documents(self, texts: list[str]) -> Any:
        CountingEmbedder.embedded += len(texts)
        return super().embed_documents(texts)


def wait_for(check: Callable[[], Any], timeout: float = 60.0, what: str = "a condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def synced(http: httpx.Client, source_id: str, number: int, **params: Any) -> dict[str, Any]:
    """The source once its sync `number` has ended."""

    def ended() -> dict[str, Any] | None:
        body = http.get(f"/api/v1/sources/{source_id}", params=params).json()
        sync = body["sync"]
        return body if sync["number"] >= number and sync["state"] in ("done", "failed") else None

    return wait_for(ended, what=f"sync {number}")  # type: ignore[no-any-return]


@pytest.fixture
def site() -> Iterator[tuple[Site, str]]:
    web = Site()
    with serve(web.app) as url:
        yield web, url


def build_site(web: Site) -> None:
    links = ["a.html", "b.html", "guide.pdf", "private.html", "/outside/x.html"]
    web.html("/docs/index.html", page("Docs home", "Welcome to the widget documentation.", links))
    web.html(
        "/docs/a.html", page("Setup", "Turn the brass crank exactly seven times before first use.", ["index.html"])
    )
    web.html("/docs/b.html", page("Colours", "The heliotrope widget ships only in March.", ["index.html"]))
    web.html("/docs/private.html", page("Private", "The vault code is 4417.", []))
    web.html("/outside/x.html", page("Outside", "Out of scope.", []))
    pdf = sample_files.pdf(["The quartz flywheel spins at ninety hertz."])
    web.pages["/docs/guide.pdf"] = ("application/pdf", pdf)
    web.robots = "User-agent: *\nDisallow: /docs/private.html\n"


def service_settings(tmp_path: Path, upstream: Any, **overrides: Any) -> Any:
    values = {
        "embedder": "tests.test_sources:CountingEmbedder",
        "embedder_options": {"dimension": 64},
        "sources_allow_hosts": ["127.0.0.1"],
        "sources_host_delay_seconds": 0.0,
        "sources_poll_seconds": 0.2,
        "similarity_threshold": 0.0,
        "api_keys": ["root-key", "acme-key:acme", "other-key:other"],
    }
    return make_settings(tmp_path / "data", upstream.url, **(values | overrides))


ACME = {"Authorization": "Bearer acme-key"}
OTHER = {"Authorization": "Bearer other-key"}


def search(http: httpx.Client, query: str) -> list[dict[str, Any]]:
    body = http.get("/api/v1/documents/search", params={"query": query, "top_k": 3, "mode": "keyword"}).json()
    return body["results"]  # type: ignore[no-any-return]


def test_a_site_is_synced_and_a_resync_costs_what_changed(
    tmp_path: Path, upstream: Any, site: tuple[Site, str]
) -> None:
    web, url = site
    build_site(web)
    with (
        serve(create_app(service_settings(tmp_path, upstream))) as service,
        httpx.Client(base_url=service, timeout=60, headers=ACME) as http,
    ):
        response = http.post("/api/v1/sources", json={"url": f"{url}/docs/index.html", "interval_seconds": 3600})
        assert response.status_code == 202, response.text
        source = response.json()
        first = synced(http, source["id"], 1)
        assert first["sync"]["state"] == "done", first
        assert first["sync"]["pages"] == {
            "fetched": 4,
            "unchanged": 0,
            "added": 4,
            "replaced": 0,
            "deleted": 0,
            "failed": 1,
        }
        assert first["sync"]["failures"] == [
            {"url": f"{url}/docs/private.html", "error": "disallowed by the site's robots.txt"}
        ]
        assert web.requests_for("/docs/private.html") == [] and web.requests_for("/outside/x.html") == []
        # the facts are found, each only where it lives, cited by URL and title
        hits = search(http, "brass crank seven times")
        assert hits[0]["metadata"]["url"] == f"{url}/docs/a.html" and hits[0]["metadata"]["title"] == "Setup"
        assert "Menu entries" not in hits[0]["text"] and "cookies" not in hits[0]["text"]
        assert "Copyright" not in hits[0]["text"]
        assert search(http, "quartz flywheel hertz")[0]["metadata"]["url"] == f"{url}/docs/guide.pdf"
        assert not [h for h in search(http, "vault code") if "4417" in h["text"]]
        # nothing changed: 304s, and not one text embedded
        embedded = CountingEmbedder.embedded
        assert http.post(f"/api/v1/sources/{source['id']}/sync").status_code == 202
        second = synced(http, source["id"], 2)
        assert second["sync"]["pages"]["unchanged"] == 4 and second["sync"]["pages"]["added"] == 0
        assert CountingEmbedder.embedded == embedded
        assert web.requests_for("/docs/a.html") == [200, 304]
        # a changed page, a removed one, a new one
        web.html("/docs/a.html", page("Setup", "Turn the brass crank exactly nine times now.", ["index.html"]))
        del web.pages["/docs/b.html"]
        links = ["a.html", "b.html", "c.html", "guide.pdf"]
        web.html("/docs/index.html", page("Docs home", "Welcome to the widget documentation.", links))
        web.html("/docs/c.html", page("Maintenance", "Oil the tourmaline hinge every fortnight.", []))
        assert http.post(f"/api/v1/sources/{source['id']}/sync").status_code == 202
        third = synced(http, source["id"], 3)
        pages = third["sync"]["pages"]
        assert (pages["added"], pages["replaced"], pages["deleted"], pages["unchanged"]) == (1, 2, 1, 1), third
        assert "nine times" in search(http, "brass crank")[0]["text"]
        assert search(http, "tourmaline hinge fortnight")[0]["metadata"]["url"] == f"{url}/docs/c.html"
        assert not [h for h in search(http, "heliotrope widget March") if "heliotrope" in h["text"]]
        listed = http.get("/api/v1/documents", params={"limit": 50}).json()
        assert sorted(d["metadata"]["url"] for d in listed["documents"]) == sorted(
            f"{url}/docs/{name}" for name in ("index.html", "a.html", "c.html", "guide.pdf")
        )


def test_sources_belong_to_their_organisation_and_removing_one_removes_its_pages(
    tmp_path: Path, upstream: Any, site: tuple[Site, str]
) -> None:
    web, url = site
    build_site(web)
    with (
        serve(create_app(service_settings(tmp_path, upstream))) as service,
        httpx.Client(base_url=service, timeout=60) as http,
    ):
        body = {"url": f"{url}/docs/index.html", "max_depth": 1, "access": {"groups": ["eng"]}}
        source = http.post("/api/v1/sources", json=body, headers=ACME).json()
        wait_for(
            lambda: http.get(f"/api/v1/sources/{source['id']}", headers=ACME).json()["sync"]["state"] == "done",
            what="the first sync",
        )
        # another organisation: not found, not listed, no document
        assert http.get(f"/api/v1/sources/{source['id']}", headers=OTHER).status_code == 404
        assert http.post(f"/api/v1/sources/{source['id']}/sync", headers=OTHER).status_code == 404
        assert http.delete(f"/api/v1/sources/{source['id']}", headers=OTHER).status_code == 404
        assert http.get("/api/v1/sources", headers=OTHER).json() == {"sources": []}
        assert http.get("/api/v1/documents", headers=OTHER).json()["total"] == 0
        # a key acting for a user may not register or see sources; outside the group, it reads no page
        as_bob = {**ACME, "X-On-Behalf-Of": "bob"}
        assert http.get("/api/v1/sources", headers=as_bob).status_code == 403
        assert http.post("/api/v1/sources", json=body, headers=as_bob).status_code == 403
        assert http.get("/api/v1/documents", headers=as_bob).json()["total"] == 0
        in_eng = {**as_bob, "X-On-Behalf-Of-Groups": "eng"}
        assert http.get("/api/v1/documents", headers=in_eng).json()["total"] == 4
        removed = http.delete(f"/api/v1/sources/{source['id']}", headers=ACME)
        assert removed.status_code == 200 and removed.json()["deleted_documents"] == 4
        assert http.get("/api/v1/documents", headers=ACME).json()["total"] == 0
        assert http.get(f"/api/v1/sources/{source['id']}", headers=ACME).status_code == 404
        actions = [e["action"] for e in http.get("/api/v1/audit", headers=ACME).json()["entries"]]
        assert {"source.add", "source.remove"} <= set(actions)


class Listener:
    """A listening socket that counts the connections made to it."""

    def __init__(self, host: str) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.bind((host, 0))
        self.socket.listen(8)
        self.socket.settimeout(0.1)
        self.port = self.socket.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.socket.close()


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_loopback_urls_are_refused_by_name_and_never_connected_to(tmp_path: Path, upstream: Any) -> None:
    hosts = ["127.0.0.1", "127.0.0.5", *(["::1"] if ipv6_loopback() else [])]
    listeners = {host: Listener(host) for host in hosts}
    try:
        with (
            serve(create_app(service_settings(tmp_path, upstream, sources_allow_hosts=[]))) as service,
            httpx.Client(base_url=service, timeout=60, headers=ACME) as http,
        ):
            for host, listener in listeners.items():
                shown = f"[{host}]" if ":" in host else host
                response = http.post("/api/v1/sources", json={"url": f"http://{shown}:{listener.port}/"})
                assert response.status_code == 422, response.text
                assert response.json()["error"]["message"].startswith(f"{host} is at {host}, a loopback address")
            response = http.post("/api/v1/sources", json={"url": f"http://localhost:{listeners['127.0.0.1'].port}/"})
            assert response.status_code == 422 and "loopback" in response.json()["error"]["message"]
            for bad in ("ftp://example.org/", "http://user:pw@example.org/", "not a url", "http:///nohost"):
                response = http.post("/api/v1/sources", json={"url": bad})
                assert response.status_code == 422 and response.json()["error"]["type"], bad
            assert http.get("/api/v1/sources").json() == {"sources": []}
        assert all(listener.accepted == 0 for listener in listeners.values())
    finally:
        for listener in listeners.values():
            listener.close()


def test_a_redirect_or_link_from_an_allowed_host_to_a_loopback_one_fails_by_name_unconnected(
    tmp_path: Path, upstream: Any, site: tuple[Site, str]
) -> None:
    web, url = site
    hidden = Listener("127.0.0.5")
    try:
        web.redirects["/docs/go.html"] = f"http://127.0.0.5:{hidden.port}/admin"
        links = ["go.html", f"http://127.0.0.5:{hidden.port}/docs/x.html"]
        web.html("/docs/index.html", page("Home", "A page with a redirect to a hidden host.", links))
        settings = service_settings(tmp_path, upstream, sources_allow_hosts=["127.0.0.1/32"])
        with serve(create_app(settings)) as service, httpx.Client(base_url=service, timeout=60, headers=ACME) as http:
            source = http.post("/api/v1/sources", json={"url": f"{url}/docs/index.html"}).json()
            done = synced(http, source["id"], 1)
        failures = {f["url"]: f["error"] for f in done["sync"]["failures"]}
        assert failures == {
            f"{url}/docs/go.html": "127.0.0.5 is at 127.0.0.5, a loopback address; SOURCES_ALLOW_HOSTS can allow it"
        }  # the link to the other host is out of the source's scope: never even tried
        assert hidden.accepted == 0
        assert web.requests_for("/docs/go.html") == [302]
    finally:
        hidden.close()


def test_a_page_over_the_size_or_time_cap_fails_by_name_and_the_rest_is_kept(
    tmp_path: Path, upstream: Any, site: tuple[Site, str]
) -> None:
    web, url = site
    web.html("/docs/index.html", page("Home", "The small page about the garnet lever.", ["big.html", "slow/"]))
    web.html("/docs/big.html", page("Big", "word " * 5000, []))
    web.html("/docs/slow/", page("Slow", "Slow.", []))
    web.slow["/docs/slow/"] = 3.0
    settings = service_settings(tmp_path, upstream, sources_max_page_bytes=4096, sources_page_timeout_seconds=1.0)
    with serve(create_app(settings)) as service, httpx.Client(base_url=service, timeout=60, headers=ACME) as http:
        source = http.post("/api/v1/sources", json={"url": f"{url}/docs/index.html"}).json()
        done = synced(http, source["id"], 1)
        failures = {f["url"]: f["error"] for f in done["sync"]["failures"]}
        assert failures == {
            f"{url}/docs/big.html": f"{url}/docs/big.html: 25,396 bytes, over 4,096 (SOURCES_MAX_PAGE_BYTES)",
            f"{url}/docs/slow/": f"{url}/docs/slow/: took longer than 1 s (SOURCES_PAGE_TIMEOUT_SECONDS)",
        }
        assert done["sync"]["pages"]["added"] == 1
        assert "garnet lever" in search(http, "garnet lever")[0]["text"]


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local, where cloud metadata services answer"),
        ("100.64.0.1", "shared (carrier-grade NAT)"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("fd00::1", "private"),
        ("fe80::1", "link-local, where cloud metadata services answer"),
        ("::ffff:10.0.0.1", "private (inside the IPv6 address)"),
        ("::ffff:169.254.169.254", "link-local, where cloud metadata services answer (inside the IPv6 address)"),
        ("2002:c0a8:101::", "private (inside the IPv6 address)"),
        ("64:ff9b::a9fe:a9fe", "link-local, where cloud metadata services answer (inside the IPv6 address)"),
        ("::1", "loopback"),
        ("8.8.8.8", None),
        ("2606:4700::1111", None),
        ("::ffff:8.8.8.8", None),
    ],
)
def test_the_address_check(address: str, reason: str | None) -> None:
    assert why_not_public(ipaddress.ip_address(address)) == reason


class RecordingBackend(httpcore.AsyncNetworkBackend):
    """httpcore's backend interface, recording what it is asked to connect to, and connecting nowhere."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, int]] = []

    async def connect_tcp(self, host: str, port: int, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        self.asked.append((host, port))
        raise httpcore.ConnectError("not connecting anywhere in a test")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@pytest.mark.parametrize(
    ("answers", "allow", "refused"),
    [
        (["10.0.0.7"], [], True),
        (["93.184.215.14", "192.168.0.9"], [], True),  # a public answer beside a private one: not trusted
        (["fd12:3456::1"], [], True),
        (["169.254.169.254"], [], True),
        (["10.0.0.7"], ["intranet.example"], False),  # allowed by name
        (["10.0.0.7"], ["10.0.0.0/8"], False),  # allowed by range
        (["10.0.0.7"], ["10.1.0.0/16"], True),
        (["93.184.215.14"], [], False),
    ],
)
async def test_a_name_is_checked_for_every_address_it_resolves_to_and_connected_by_address(
    monkeypatch: pytest.MonkeyPatch, answers: list[str], allow: list[str], refused: bool
) -> None:
    """The resolver answers from a table (no DNS), and the connection goes to a backend that connects nowhere: what
    it is asked for shows which address would have been connected to."""

    async def getaddrinfo(host: str, port: int, **kwargs: Any) -> list[Any]:
        assert host == "intranet.example"
        family = {4: socket.AF_INET, 6: socket.AF_INET6}
        return [(family[ipaddress.ip_address(a).version], socket.SOCK_STREAM, 6, "", (a, port)) for a in answers]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
    inner = RecordingBackend()
    backend = GuardedBackend(AddressPolicy(allow), inner)
    if refused:
        with pytest.raises(AddressRefused, match=r"intranet\.example is at"):
            await backend.connect_tcp("intranet.example", 80)
        assert inner.asked == []
    else:
        with pytest.raises(httpcore.ConnectError):
            await backend.connect_tcp("intranet.example", 80)
        assert inner.asked == [(answers[0], 80)]  # the checked address, never the name again


def test_a_sync_killed_midway_goes_on_after_a_restart(
    tmp_path: Path, fake_upstream: Any, site: tuple[Site, str]
) -> None:
    from bench.service_process import ServiceProcess

    web, url = site
    names = [f"p{n}.html" for n in range(24)]
    web.html("/docs/index.html", page("Index", "Every page of the manual.", names))
    for n, name in enumerate(names):
        web.html(f"/docs/{name}", page(f"Page {n}", f"Page {n} explains the part numbered {1000 + n}.", []))
    web.delay = 0.15
    settings = {
        "embedder": "examples.plugins.hashing_embedder:HashingEmbedder",
        "embedder_options": '{"dimension": 64}',
        "sources_allow_hosts": "127.0.0.1",
        "sources_host_delay_seconds": "0",
        "sources_poll_seconds": "0.2",
        "sources_lease_seconds": "2",
    }
    data = tmp_path / "data"
    with ServiceProcess(data, fake_upstream.url, **settings) as service:
        service.wait_ready()
        http = httpx.Client(base_url=service.url, timeout=60)
        source = http.post("/api/v1/sources", json={"url": f"{url}/docs/index.html", "max_pages": 50}).json()
        wait_for(lambda: len(web.log) >= 10, what="a sync part done")
        service.kill()
    fetched_before = {path for path, status in web.log if status == 200}
    with ServiceProcess(data, fake_upstream.url, **settings) as service:
        service.wait_ready()
        http = httpx.Client(base_url=service.url, timeout=60)
        done = synced(http, source["id"], 1)
        assert done["sync"]["state"] == "done" and done["sync"]["number"] == 1  # the same sync, taken up
        assert done["sync"]["pages"]["failed"] == 0
        assert http.get("/api/v1/documents", params={"limit": 100}).json()["total"] == 25
    fetched_twice = [path for path in fetched_before if web.requests_for(path).count(200) > 1]
    assert len(fetched_twice) <= 1, fetched_twice  # at most the page in hand at the kill


def test_two_replicas_share_one_schedule_and_each_page_is_fetched_once(
    tmp_path: Path, upstream: Any, site: tuple[Site, str], pg_dsn: str
) -> None:
    """Two replicas on one PostgreSQL both look for due sources every 0.2 s: the source's lease lets one of them
    sync it, so every page is fetched once, and both replicas see the same source and its documents."""
    web, url = site
    names = [f"p{n}.html" for n in range(12)]
    web.html("/docs/index.html", page("Index", "The shared manual.", names))
    for n, name in enumerate(names):
        web.html(f"/docs/{name}", page(f"Part {n}", f"Part {n} describes the component numbered {500 + n}.", []))
    web.delay = 0.05
    shared = {"vector_store": "postgres", "database_url": pg_dsn}
    first_settings = service_settings(tmp_path / "a", upstream, **shared)
    second_settings = service_settings(tmp_path / "b", upstream, **shared)
    with (
        serve(create_app(first_settings)) as first,
        serve(create_app(second_settings)) as second,
        httpx.Client(base_url=first, timeout=60, headers=ACME) as a,
        httpx.Client(base_url=second, timeout=60, headers=ACME) as b,
    ):
        source = a.post("/api/v1/sources", json={"url": f"{url}/docs/index.html"}).json()
        done = synced(b, source["id"], 1)  # followed through the other replica
        assert done["sync"]["state"] == "done" and done["sync"]["pages"]["added"] == 13
        assert b.get("/api/v1/documents").json()["total"] == 13
        assert b.post(f"/api/v1/sources/{source['id']}/sync").status_code == 202
        second_sync = synced(a, source["id"], 2)
        assert second_sync["sync"]["pages"]["unchanged"] == 13
    for path in ["/docs/index.html", *(f"/docs/{name}" for name in names)]:
        assert web.requests_for(path) == [200, 304], path  # once a sync, by whichever replica held the lease
