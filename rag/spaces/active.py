"""Which embedding space this replica serves, and the move to another when the registry says so.

At start-up the registry's active space decides the embedder and store (none registered: the settings' embedder and
the first store, as ever). `ActiveSpace.watch` then polls the registry; when another space became active it opens
that space's embedder and store and swaps them into the retriever, the indexer and the routes in one step of the event
loop (no request sees one space's embedder with the other's store), and closes the old pair once the requests that
took it have had time to end. A write that reaches the old store after the switch is refused by it (SpaceRetired);
the indexer then waits for this swap and writes again. A read asks the store, as it reads, whether it was switched
away from (`ActiveSpace.read`), and moves and reads again when it was: other replicas may have written to the new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar, cast

from config import Settings
from rag.access import AccessList, Reader
from rag.embedders.factory import build_embedder
from rag.errors import InvalidRequest, SpaceRetired, StoreIncompatible
from rag.spaces.registry import DEFAULT_SPACE, Space, SpaceRegistry
from rag.stores import VectorStore, open_store
from rag.types import DocumentSummary, Embedder

logger = logging.getLogger(__name__)
T = TypeVar("T")

# The settings that choose an embedder: a space records them, over the service's own, so it is built the same way
# on every replica and after every restart (keys and secrets stay in the settings).
EMBEDDER_KEYS = (
    "embedder",
    "embedder_backend",
    "embedder_precision",
    "embedding_model",
    "embedder_options",
    "embeddings_base_url",
    "use_openai_embeddings",
    "openai_embedding_model",
)
CLOSE_AFTER_SECONDS = 30.0  # a retired pair stays open this long for the requests that began on it
BUILDER_NICE = 10  # the space builder's embedding threads, below the service's (as the import command runs)


def embedder_settings(settings: Settings, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The service's embedder settings with `overrides` over them (unknown keys refused)."""
    unknown = set(overrides or {}) - set(EMBEDDER_KEYS)
    if unknown:
        raise InvalidRequest(f"not an embedder setting: {', '.join(sorted(unknown))}; use {', '.join(EMBEDDER_KEYS)}")
    return {**{key: getattr(settings, key) for key in EMBEDDER_KEYS}, **(overrides or {})}


async def open_space(settings: Settings, space: Space | None, follower: bool = False) -> tuple[Embedder, VectorStore]:
    """A space's embedder and store (None: the settings' embedder and the first store). `follower`: the builder's
    handle, which may write the store while it is not the active one."""
    embedder = await build_embedder(settings if space is None else settings.model_copy(update=space.embedder))
    try:
        if space is not None and (embedder.model_name, embedder.dimension) != (space.model, space.dimension):
            raise StoreIncompatible(
                f"space {space.name!r} was built with {space.model!r} (dimension {space.dimension}), but its embedder "
                f"settings now build {embedder.model_name!r} (dimension {embedder.dimension})"
            )
        name = None if space is None else space.store_name
        store = await open_store(settings, embedder.model_name, embedder.dimension, name)
    except BaseException:
        await embedder.aclose()
        raise
    if follower:
        store.follower = True  # type: ignore[attr-defined]
        run_below = getattr(embedder, "run_below", None)
        if callable(run_below):  # the builder's passes yield the cores to the service's questions
            run_below(BUILDER_NICE)
    return embedder, store


class UsesSpace(Protocol):
    embedder: Embedder
    store: VectorStore


class ActiveStore:
    """The active space's store, whichever that is at each call: what the routes and the purger hold. A write that
    reaches a store switched away from moves to the active space and is made again there."""

    def __init__(self, space: ActiveSpace) -> None:
        self._space = space

    def __getattr__(self, name: str) -> Any:
        return getattr(self._space.store, name)

    async def _write(self, method: str, *args: Any) -> Any:
        for attempt in range(SpaceRetired.retries + 1):
            try:
                return await getattr(self._space.store, method)(*args)
            except SpaceRetired:
                if attempt == SpaceRetired.retries:
                    raise
                await self._space.refresh()

    async def _read(self, method: str, *args: Any) -> Any:
        return await self._space.read(lambda _, store: getattr(store, method)(*args))

    async def get_document(
        self, document_id: str, org_id: str | None = None, reader: Reader | None = None
    ) -> DocumentSummary:
        return cast(DocumentSummary, await self._read("get_document", document_id, org_id, reader))

    async def list_documents(
        self, offset: int, limit: int, org_id: str | None = None, reader: Reader | None = None
    ) -> tuple[int, list[DocumentSummary]]:
        page = await self._read("list_documents", offset, limit, org_id, reader)
        return cast(tuple[int, list[DocumentSummary]], page)

    async def document_ids(self, org_id: str | None) -> list[str]:
        return cast(list[str], await self._read("document_ids", org_id))

    async def documents_added_by(self, user_id: str, org_id: str | None = None) -> list[str]:
        return cast(list[str], await self._read("documents_added_by", user_id, org_id))

    async def refresh(self) -> None:
        await self._read("refresh")

    async def delete(self, document_id: str, org_id: str | None = None, reader: Reader | None = None) -> int:
        return int(await self._write("delete", document_id, org_id, reader))

    async def delete_many(self, document_ids: list[str], org_id: str | None = None) -> int:
        return int(await self._write("delete_many", document_ids, org_id))

    async def set_access(self, document_id: str, access: AccessList | None, org_id: str | None = None) -> None:
        await self._write("set_access", document_id, access, org_id)


class ActiveEmbedder:
    """The active space's embedder, whichever that is at each call (the routes' embeddings and health)."""

    def __init__(self, space: ActiveSpace) -> None:
        self._space = space

    def __getattr__(self, name: str) -> Any:
        return getattr(self._space.embedder, name)


class ActiveSpace:
    def __init__(
        self, settings: Settings, registry: SpaceRegistry, name: str, embedder: Embedder, store: VectorStore
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.name = name
        self.embedder = embedder
        self.store = store
        self.users: list[UsesSpace] = []  # the retriever and the indexer: given each new pair
        self._swap = asyncio.Lock()
        self._closing: set[asyncio.Task[None]] = set()
        self._watch: asyncio.Task[None] | None = None
        self._checks: set[asyncio.Future[bool]] = set()

    @classmethod
    async def open(cls, settings: Settings, registry: SpaceRegistry) -> ActiveSpace:
        space = await registry.active()
        embedder, store = await open_space(settings, space)
        if space is not None and space.model != settings.embedding_model:
            logger.warning(
                "embedding space %r (%s) is active, not EMBEDDING_MODEL=%s: set EMBEDDING_MODEL to match",
                space.name,
                space.model,
                settings.embedding_model,
            )
        return cls(settings, registry, DEFAULT_SPACE if space is None else space.name, embedder, store)

    async def moved(self) -> bool:
        """Move now if this replica's store was switched away from; True when it moved. One stat, or one indexed row
        on PostgreSQL (the marker: rag/stores/*_spaces.py)."""
        is_retired = getattr(self.store, "is_retired", None)  # a plugin's store has no spaces, nor the marker
        return is_retired is not None and await is_retired() and await self.refresh()

    async def read(self, read: Callable[[Embedder, VectorStore], Awaitable[T]]) -> T:
        """`read` on the active pair, as of the moment it began. Another replica may have moved to a new space and
        written there already, while this one's watcher polls next up to SPACE_POLL_SECONDS away: so the store is
        asked, at the same time as the read runs (it adds no wait; measured in bench/spaces.py --read-check),
        whether it was switched away from, and when it was, this replica moves and the read runs again on the new
        pair. A write acknowledged before the read began made the switch before it too, so the check sees it."""
        check = asyncio.ensure_future(self.moved())
        self._checks.add(check)  # held until done: a read cancelled meanwhile leaves the check to finish
        check.add_done_callback(self._checks.discard)
        try:
            result = await read(self.embedder, self.store)
        except Exception:
            if await check:
                return await read(self.embedder, self.store)
            raise
        if await check:
            return await read(self.embedder, self.store)
        return result

    async def refresh(self) -> bool:
        """Move to the registry's active space if it is another; True when this replica moved."""
        async with self._swap:
            space = await self.registry.active()
            if space is None or space.name == self.name:
                return False
            embedder, store = await open_space(self.settings, space)
            old = (self.embedder, self.store)
            self.name, self.embedder, self.store = space.name, embedder, store
            for user in self.users:
                user.embedder, user.store = embedder, store
            logger.info("embedding space %r (%s) is now active here", space.name, space.model)
            task = asyncio.create_task(self._close_later(*old))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
            return True

    async def _close_later(self, embedder: Embedder, store: VectorStore) -> None:
        try:
            await asyncio.sleep(CLOSE_AFTER_SECONDS)
        finally:
            await store.aclose()
            await embedder.aclose()

    def start_watching(self, interval: float) -> None:
        self._watch = asyncio.create_task(self._watch_loop(interval))

    async def _watch_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh()
            except Exception:
                logger.exception("could not follow the active embedding space; trying again")

    async def aclose(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await asyncio.gather(*self._checks, return_exceptions=True)
        for task in list(self._closing):
            task.cancel()
        await asyncio.gather(*self._closing, return_exceptions=True)
        await self.store.aclose()
        await self.embedder.aclose()
