"""Keeping web sources in sync: each replica runs one `SourceSyncer`, which claims a due source (its lease in the
shared registry: one replica syncs a source at a time) and syncs it, page by page, through its frontier.

A page costs what changed: it is fetched with the validators of the last sync (`If-None-Match`,
`If-Modified-Since`), so an unchanged page is a 304 and nothing more; a 200 whose bytes hash as before re-embeds
nothing either. A changed page is parsed in a parser process (HTML for its main text, title and links; a linked PDF
or other file as a file of its kind) and its document replaced whole in one upsert. Pages the sync did not reach are
gone from the site and their documents deleted, unless the source's own URL failed (a site that is down is not a
site that was emptied). Every page's outcome is written to the frontier before the next, so a sync killed midway is
taken up, when its lease runs out, from where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import urllib.robotparser
import uuid
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import anyio

from rag.errors import RAGError
from rag.ingest.indexer import Indexer, owned_metadata
from rag.ingest.parser_pool import ParserPool
from rag.ingest.parsers import Section, detect_kind
from rag.sources.guard import AddressPolicy
from rag.sources.registry import Page, Source, SourceRegistry
from rag.stores import VectorStore

if TYPE_CHECKING:
    from rag.sources.fetcher import Fetched, Fetcher

logger = logging.getLogger(__name__)

_SITEMAP = re.compile(rb"<(?:[a-z0-9]+:)?(?:urlset|sitemapindex)\b", re.IGNORECASE)
_LOC = re.compile(rb"<(?:[a-z0-9]+:)?loc>\s*([^<\s]+)\s*</", re.IGNORECASE)
_HTML_TYPES = ("text/html", "application/xhtml+xml")


class _Removed(Exception):
    """The source was removed while a page of it was being stored: that page's document is deleted, and the sync
    ends."""


def document_id_of(source_id: str, url: str) -> str:
    """A page's document: one per source and URL, so a changed page replaces its own document."""
    return f"web-{source_id}-{hashlib.sha256(url.encode()).hexdigest()[:24]}"


def scope_of(url: str) -> tuple[str, str, str]:
    """What a source crawls: its URL's scheme and host, and the folder of its path (a sitemap: the whole host)."""
    parts = urlsplit(url)
    path = parts.path or "/"
    folder = "/" if path.endswith(".xml") else path[: path.rfind("/") + 1]
    return parts.scheme, parts.netloc.lower(), folder


def in_scope(link: str, scope: tuple[str, str, str]) -> bool:
    parts = urlsplit(link)
    return (parts.scheme, parts.netloc.lower()) == scope[:2] and (parts.path or "/").startswith(scope[2])


class SourceSyncer:
    def __init__(
        self,
        registry: SourceRegistry,
        policy: AddressPolicy,
        fetcher: Callable[[], Fetcher],
        parsers: ParserPool,
        indexer: Indexer,
        store: VectorStore,
        work_dir: Path,
        lease_seconds: float,
        poll_seconds: float,
    ) -> None:
        self.registry = registry
        self.policy = policy  # the addresses a source may reach: checked at registration too
        # Made on the first sync: httpx and its dependencies cost a replica 5 MiB that one with no source never needs
        self._new_fetcher = fetcher
        self._fetcher: Fetcher | None = None
        self.parsers = parsers
        self.indexer = indexer
        self.store = store
        self.work_dir = work_dir
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.owner = uuid.uuid4().hex
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        for leftover in self.work_dir.iterdir():  # a page's bytes from a process that died while parsing them
            leftover.unlink(missing_ok=True)
        self._loop = asyncio.create_task(self._run(), name="source-syncer")

    def wake(self) -> None:
        """A source was added or asked to sync: look now, not at the next poll."""
        self._wake.set()

    @property
    def fetcher(self) -> Fetcher:
        if self._fetcher is None:
            self._fetcher = self._new_fetcher()
        return self._fetcher

    async def aclose(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
        if self._fetcher is not None:
            await self._fetcher.aclose()

    async def _run(self) -> None:
        while True:
            try:
                source = await self.registry.claim(self.owner, self.lease_seconds)
            except Exception:
                logger.exception("could not read the web sources' schedule; trying again")
                source = None
            if source is None:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_seconds)
                continue
            try:
                await self._leased(source)
            except Exception:
                # A bug, not a page's failure (those are recorded page by page): the sync ends failed, so that it is
                # not taken up again at once, and the next one starts when it is due.
                logger.exception("source %s: the sync failed", source.id)
                with contextlib.suppress(Exception):
                    await self.registry.finish(source, "internal error while syncing (see the service log)", 0)
            finally:
                with contextlib.suppress(Exception):
                    await self.registry.release(source.id, self.owner)

    async def _leased(self, source: Source) -> None:
        """Sync `source` while renewing its lease; stop when the lease is lost (removed, or taken over)."""
        work = asyncio.create_task(self.sync(source))
        try:
            while not work.done():
                done, _ = await asyncio.wait({work}, timeout=self.lease_seconds / 3)
                if not done and not await self.registry.renew(source.id, self.owner, self.lease_seconds):
                    logger.info(
                        "source %s: lease lost (removed or taken over); this replica stops syncing it", source.id
                    )
                    work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
        finally:
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work

    async def sync(self, source: Source) -> None:
        sync_no = await self.registry.begin(source)
        scope = scope_of(source.url)
        robots: dict[str, urllib.robotparser.RobotFileParser] = {}
        try:
            while batch := await self.registry.pending(source.id):
                for url, depth in batch:
                    await self._page(source, sync_no, url, depth, scope, robots)
        except _Removed:
            return
        error = None
        if (why := await self.registry.failure_of(source.id, source.url)) is not None:
            error = f"the source's URL failed, so no page was taken for gone: {why}"
        gone = [] if error else await self.registry.unseen(source.id, sync_no)
        if gone:
            await self.store.delete_many([document_id for _, document_id in gone], source.org_id)
            await self.registry.forget(source.id, [url for url, _ in gone])
        await self.registry.finish(source, error, len(gone))
        logger.info("source %s: sync %d %s", source.id, sync_no, "failed: " + error if error else "done")

    async def _page(
        self,
        source: Source,
        sync_no: int,
        url: str,
        depth: int,
        scope: tuple[str, str, str],
        robots: dict[str, urllib.robotparser.RobotFileParser],
    ) -> None:
        origin = "{0.scheme}://{0.netloc}".format(urlsplit(url))
        if origin not in robots:
            robots[origin] = await self.fetcher.robots(url)
        if not robots[origin].can_fetch(self.fetcher.user_agent, url):
            await self.registry.done(source.id, url, ("failed",), "disallowed by the site's robots.txt")
            return
        page = await self.registry.page(source.id, url)
        try:
            fetched = await self.fetcher.fetch(url, *((page.etag, page.last_modified) if page else (None, None)))
            if fetched.status in (404, 410):
                if url == source.url:
                    raise RAGError(f"{url}: HTTP {fetched.status}")
                await self.registry.done(source.id, url, ("fetched",))  # gone: no sync saw it, so it is deleted
                return
            links, count = await self._take(source, sync_no, url, depth, page, fetched)
        except RAGError as exc:
            if page is not None:  # a page that failed this time is kept as it was, not taken for gone
                await self.registry.seen(source.id, url, sync_no)
            await self.registry.done(source.id, url, ("failed",), str(exc))
            return
        if depth < source.max_depth or count == "sitemap":
            wanted = [link for link in links if in_scope(link, scope)]
            await self.registry.enqueue(source.id, wanted, depth + 1, source.max_pages)
        await self.registry.done(source.id, url, ("fetched",) if count == "sitemap" else ("fetched", count))

    async def _take(
        self, source: Source, sync_no: int, url: str, depth: int, page: Page | None, fetched: Fetched
    ) -> tuple[list[str], str]:
        """Store what changed of one fetched page; its links, and what it counts as."""
        if fetched.status == 304 and page is not None:
            await self.registry.seen(source.id, url, sync_no)
            return page.links, "unchanged"
        if depth == 0 and _SITEMAP.search(fetched.body[:4096]):
            locs = [m.group(1).decode("utf-8", "replace").replace("&amp;", "&") for m in _LOC.finditer(fetched.body)]
            return locs, "sitemap"
        digest = hashlib.sha256(fetched.body).hexdigest()
        if page is not None and page.sha256 == digest:  # the same bytes: nothing to parse or embed
            kept = Page(url, page.document_id, fetched.etag, fetched.last_modified, digest, page.links, page.title)
            await self._keep(source, kept, sync_no)
            return page.links, "unchanged"
        sections, links, title = await self._parse(fetched)
        document_id = page.document_id if page is not None else document_id_of(source.id, url)
        metadata = {"source": url, "url": url, "source_id": source.id, **({"title": title} if title else {})}
        owned = owned_metadata(metadata, source.org_id, url)
        # in a thread, as the job runner chunks: a long page's chunking would hold the event loop
        chunks = await anyio.to_thread.run_sync(self.indexer.chunk_document, document_id, sections, owned)
        await self.indexer.store_chunks(
            chunks, source.org_id, access={document_id: source.access}, added_by=source.user_id
        )
        kept = Page(url, document_id, fetched.etag, fetched.last_modified, digest, links, title)
        await self._keep(source, kept, sync_no)
        return links, "added" if page is None else "replaced"

    async def _keep(self, source: Source, page: Page, sync_no: int) -> None:
        if not await self.registry.keep(source.id, page, sync_no):  # removed while this page was being stored
            await self.store.delete(page.document_id, source.org_id)
            raise _Removed

    async def _parse(self, fetched: Fetched) -> tuple[list[Section], list[str], str | None]:
        """A page's sections, links and title, parsed in a parser process from a file of its bytes."""
        path = self.work_dir / uuid.uuid4().hex
        path.write_bytes(fetched.body)
        try:
            name = PurePosixPath(urlsplit(fetched.url).path).name
            is_html = fetched.media_type in _HTML_TYPES or (
                fetched.media_type is None and name.endswith((".html", ".htm"))
            )
            if is_html or ((not name or "." not in name) and fetched.media_type is None):
                page = await self.parsers.parse_page(path, fetched.url)
                return page.sections, page.links, page.title
            sections = await self.parsers.parse(path, detect_kind(name or "page", fetched.media_type))
            return sections, [], None
        finally:
            path.unlink(missing_ok=True)
