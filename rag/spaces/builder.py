"""The space builder: the background job that fills and keeps each follower space, and makes the switches.

One replica at a time runs it: the one holding the builder lease (an `flock` beside the embedded store, a session
advisory lock in PostgreSQL); the others wait for the lease, so a replica that dies hands the job on. Every
`interval` seconds it passes over each space that is not active, in the order they were asked for:
- asked to be dropped: its store is removed (files, or schema) and it leaves the registry;
- else one `sync.follow` pass brings it up to the active space, reporting progress as it goes; a space whose first
  pass ended is `ready`;
- asked to be activated (and not still building): the switch.

The switch, while the active store's `switch_barrier` holds every write off (in every process), makes a last pass,
checks that both stores hold the same documents, marks the old store retired (its writes are refused from then on),
flips the registry in one transaction (the new space active, the old one retired and following it, each other
follower's ledger restated against the new space) and clears the new store's mark. A crash between those steps leaves
a store marked that should not be, never one unmarked that should be: the next builder start clears the active
space's mark. Writes waited for the barrier, so none is lost; each replica moves at its next look at the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

import asyncpg

from config import Settings
from rag.purge import purge_of
from rag.spaces.active import ActiveSpace, open_space
from rag.spaces.registry import Space, SpaceRegistry
from rag.spaces.sync import Progress, follow
from rag.stores import space_location
from rag.stores.base import SpaceStore
from rag.stores.pg_schema import drop_store
from rag.types import Embedder

logger = logging.getLogger(__name__)

BUILDER_LOCK = 0x52414704  # pg_advisory_lock key held by the replica running the builder


@contextlib.asynccontextmanager
async def _file_lease(path: Path) -> AsyncIterator[bool]:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle: IO[bytes] = path.open("a+b")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        handle.close()


@contextlib.asynccontextmanager
async def _pg_lease(dsn: str) -> AsyncIterator[bool]:
    conn = await asyncpg.connect(dsn)
    try:
        yield bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", BUILDER_LOCK))
    finally:
        await conn.close()  # the session's lock goes with it


class SpaceBuilder:
    def __init__(self, settings: Settings, registry: SpaceRegistry, active: ActiveSpace, interval: float) -> None:
        self.settings = settings
        self.registry = registry
        self.active = active
        self.interval = interval
        self.followers: dict[str, tuple[Embedder, SpaceStore]] = {}
        self._task: asyncio.Task[None] | None = None
        # Per follower, the active store's write generation when its last whole pass began: while the generation
        # stays there, a pass would find nothing, and is skipped (a kept space costs nothing while nobody writes).
        self._caught_up: dict[str, tuple[str, int]] = {}

    def _lease(self) -> contextlib.AbstractAsyncContextManager[bool]:
        if self.settings.vector_store == "postgres":
            assert self.settings.database_url is not None
            return _pg_lease(self.settings.database_url.get_secret_value())
        return _file_lease(self.settings.data_dir / ".spaces.lock")

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                async with self._lease() as held:
                    if held:
                        await self._marks_as_registered()
                        while True:
                            await self.step()
                            await asyncio.sleep(self.interval)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("space builder failed; starting again")
            finally:
                await self._close_followers()
            await asyncio.sleep(self.interval)

    async def _marks_as_registered(self) -> None:
        """A switch cut short may have left the active store marked retired: clear it (see the module's text)."""
        if await self.registry.active() is not None:
            await self.active.refresh()
            await self._space_store(self.active.store).mark_retired(False)

    @staticmethod
    def _space_store(store: object) -> SpaceStore:
        if not isinstance(store, SpaceStore):
            raise TypeError("embedding spaces need the embedded or the PostgreSQL store")
        return store

    async def _follower(self, space: Space) -> tuple[Embedder, SpaceStore]:
        if space.name not in self.followers:
            embedder, store = await open_space(self.settings, space, follower=True)
            self.followers[space.name] = (embedder, self._space_store(store))
            await self.followers[space.name][1].mark_retired(True)
        return self.followers[space.name]

    async def _close_follower(self, name: str) -> None:
        self._caught_up.pop(name, None)
        embedder, store = self.followers.pop(name)
        await store.aclose()
        await embedder.aclose()

    async def _close_followers(self) -> None:
        for name in list(self.followers):
            with contextlib.suppress(Exception):
                await self._close_follower(name)

    async def step(self) -> None:
        """One pass over every space that is not the active one."""
        await self.active.refresh()
        for space in await self.registry.spaces():
            if space.state == "active":
                continue
            try:
                if space.requested == "drop":
                    await self._drop(space)
                    continue
                await self._follow(space)
                if space.requested == "activate":  # after a whole pass: a building space is ready now
                    await self._switch(space)
            except Exception as exc:
                logger.exception("embedding space %r: pass failed", space.name)
                await self.registry.report(
                    space.name, space.documents_total, space.documents_done, space.chunks_embedded, error=str(exc)
                )

    async def _follow(self, space: Space) -> None:
        embedder, store = await self._follower(space)
        source = self._space_store(self.active.store)
        generation = await source.write_generation()
        if space.state != "building" and self._caught_up.get(space.name) == (self.active.name, generation):
            return
        embedded = space.chunks_embedded

        async def report(progress: Progress) -> None:
            await self.registry.report(space.name, progress.total, progress.done, embedded + progress.embedded)

        progress = await follow(source, store, embedder, self.registry, space.name, on_batch=report)
        if progress.changed:  # what the pass deleted or replaced leaves no text behind here either
            await purge_of(store)(True)
        await self.registry.report(
            space.name,
            progress.total,
            progress.done,
            embedded + progress.embedded,
            state="ready" if space.state == "building" else None,
        )
        self._caught_up[space.name] = (self.active.name, generation)

    async def _switch(self, space: Space) -> None:
        embedder, target = await self._follower(space)
        source = self._space_store(self.active.store)
        away = self.active.name
        others = [other for other in await self.registry.spaces() if other.name not in (space.name, away)]
        async with source.switch_barrier():
            await follow(source, target, embedder, self.registry, space.name)
            before = await source.document_states()
            after = await target.document_states()
            if set(before) != set(after):
                raise RuntimeError(
                    f"after the last pass {space.name!r} holds {len(after)} documents and the active space "
                    f"{len(before)}: switch not made"
                )
            ledgers = {away: after}
            for other in others:
                held = await self.registry.ledger(other.name)
                ledgers[other.name] = {doc: after[doc] for doc in after if held.get(doc) == before.get(doc)}
            await source.mark_retired(True)
            await self.registry.switch(space.name, away, ledgers)
            await target.mark_retired(False)
        logger.info("embedding space %r (%s) is active; %r follows it until dropped", space.name, space.model, away)
        # The builder's handle on the new space goes (the replica's own takes over), before that one opens it.
        await self._close_follower(space.name)
        await self.active.refresh()

    async def _drop(self, space: Space) -> None:
        if space.name in self.followers:
            await self._close_follower(space.name)
        where = space_location(space.store_name)
        if self.settings.vector_store == "postgres":
            assert self.settings.database_url is not None
            conn = await asyncpg.connect(self.settings.database_url.get_secret_value())
            try:
                await drop_store(conn, where.schema)
            finally:
                await conn.close()
            await asyncio.to_thread(shutil.rmtree, self.settings.data_dir / where.keywords, True)
        else:
            await asyncio.to_thread(shutil.rmtree, self.settings.data_dir / where.root, True)
        await self.registry.remove(space.name)
        logger.info("embedding space %r dropped", space.name)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._close_followers()
