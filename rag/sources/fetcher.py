"""HTTP for web sources: one guarded client (rag/sources/guard.py) that asks politely and reads at most so much.

Each request names the service in its User-Agent, waits its turn per host (one request at a time to a host from this
process, `delay` seconds apart), follows at most MAX_REDIRECTS redirects itself (each one to a URL checked like the
first, and connected through the same guard), sends `If-None-Match` / `If-Modified-Since` when it has them, and stops
reading a body past `max_bytes` or a page past `timeout` seconds. Proxies from the environment are not used: the guard
must see the address it connects to.
"""

from __future__ import annotations

import asyncio
import time
import urllib.robotparser
from collections import defaultdict
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx

from rag.errors import InvalidRequest
from rag.sources.guard import AddressPolicy, GuardedBackend, check_url

MAX_REDIRECTS = 5
ROBOTS_MAX_BYTES = 512_000


class FetchFailed(InvalidRequest):
    """A page that could not be fetched; the message says why (a status, a limit, a refused address, the network)."""


@dataclass(frozen=True, slots=True)
class Fetched:
    url: str  # after redirects
    status: int  # 200, or 304 (not modified), or 404 / 410 (gone)
    body: bytes = b""
    media_type: str | None = None
    etag: str | None = None
    last_modified: str | None = None


def _transport(policy: AddressPolicy, max_connections: int) -> httpx.AsyncHTTPTransport:
    transport = httpx.AsyncHTTPTransport(trust_env=False)
    # httpx builds its httpcore pool without a way to pass a network backend: this one is the same pool with ours.
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(),
        max_connections=max_connections,
        network_backend=GuardedBackend(policy),
    )
    return transport


class Fetcher:
    def __init__(self, policy: AddressPolicy, user_agent: str, max_bytes: int, timeout: float, delay: float) -> None:
        self.policy = policy
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.delay = delay
        self._client = httpx.AsyncClient(
            transport=_transport(policy, 16),
            headers={"User-Agent": user_agent},
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            trust_env=False,
        )
        self._hosts: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._last: dict[str, float] = {}
        self.user_agent = user_agent

    async def fetch(self, url: str, etag: str | None = None, last_modified: str | None = None) -> Fetched:
        """The page at `url`; FetchFailed naming why when there is none to be had (404 and 410 come back as such:
        the page is gone)."""
        headers = {}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        try:
            return await asyncio.wait_for(self._follow(url, headers), self.timeout)
        except TimeoutError:
            raise FetchFailed(f"{url}: took longer than {self.timeout:g} s (SOURCES_PAGE_TIMEOUT_SECONDS)") from None
        except httpx.HTTPError as exc:
            raise FetchFailed(f"{url}: {type(exc).__name__}: {exc}") from None

    async def _follow(self, url: str, headers: dict[str, str]) -> Fetched:
        for _ in range(MAX_REDIRECTS + 1):
            check_url(url)
            host = urlsplit(url).netloc.lower()
            async with self._hosts[host]:
                wait = self._last.get(host, 0.0) + self.delay - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                try:
                    async with self._client.stream("GET", url, headers=headers) as response:
                        if response.is_redirect and "location" in response.headers:
                            url = urljoin(url, response.headers["location"])
                            continue
                        return await self._read(url, response)
                finally:
                    self._last[host] = time.monotonic()
        raise FetchFailed(f"{url}: more than {MAX_REDIRECTS} redirects")

    async def _read(self, url: str, response: httpx.Response) -> Fetched:
        if response.status_code in (304, 404, 410):
            return Fetched(url, response.status_code)
        if response.status_code != 200:
            raise FetchFailed(f"{url}: HTTP {response.status_code}")
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            raise FetchFailed(f"{url}: {int(declared):,} bytes, over {self.max_bytes:,} (SOURCES_MAX_PAGE_BYTES)")
        body = bytearray()
        async for block in response.aiter_bytes():
            body += block
            if len(body) > self.max_bytes:
                raise FetchFailed(f"{url}: over {self.max_bytes:,} bytes (SOURCES_MAX_PAGE_BYTES)")
        media_type = response.headers.get("content-type", "").split(";")[0].strip().lower() or None
        return Fetched(
            url,
            200,
            bytes(body),
            media_type,
            response.headers.get("etag"),
            response.headers.get("last-modified"),
        )

    async def robots(self, url: str) -> urllib.robotparser.RobotFileParser:
        """The site's robots.txt rules (none found, or unreadable: everything allowed, as crawlers read it)."""
        parts = urlsplit(url)
        rules = urllib.robotparser.RobotFileParser()
        try:
            fetched = await self.fetch(f"{parts.scheme}://{parts.netloc}/robots.txt")
            text = fetched.body[:ROBOTS_MAX_BYTES].decode("utf-8", "replace") if fetched.status == 200 else ""
        except FetchFailed:
            text = ""
        rules.parse(text.splitlines())
        return rules

    async def aclose(self) -> None:
        await self._client.aclose()
