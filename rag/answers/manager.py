"""Resumable answers on one replica: started apart from the connection that asked, followed by any number of
readers, kept in the answer log, stopped on request from any replica.

- `start` admits the answer in the log (one at a time per chat, RESUMABLE_MAX_PER_ORG per organisation), opens the
  model's stream through the pipeline, and runs it to its end in a task of its own: a reader leaving does not stop it.
- The producer appends each event to the answer's list in memory and wakes the readers waiting on it; readers on
  this replica read that list, with no database on their way.
- One flusher task writes the new events of every answer on the replica every ANSWER_FLUSH_MS (sooner past
  ANSWER_FLUSH_BYTES), in one transaction, and renews their leases. A reader elsewhere reads the log and is woken
  by the database (PostgreSQL) or polls; it ends a run whose lease lapsed with an `answer_interrupted` error.
- Event ids are `<run id>.<seq>`: a `Last-Event-ID` of another run than the chat's current one starts that run from
  its beginning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from rag.answers.codec import decode, encode
from rag.answers.log import DONE, INTERRUPTED, RUNNING, STOPPED, AnswerLog, Batch, Run, dump_events
from rag.chats.sqlite import ChatNotFound, ChatOwner, Conversations
from rag.errors import InvalidRequest
from rag.pipeline import ChatRequest, ChatStream, retrieval_query
from rag.types import ChatEvent, DoneEvent, ErrorEvent, ReasoningEvent, TokenEvent

logger = logging.getLogger(__name__)

INTERRUPTED_ERROR = "answer_interrupted"
EventWithId = tuple[str, ChatEvent]


@dataclass(frozen=True, slots=True)
class AnswerSettings:
    max_running_per_org: int = 20
    flush_seconds: float = 0.1
    flush_bytes: int = 4096
    lease_seconds: float = 10.0
    retention_seconds: float = 600.0


def event_id(run_id: str, seq: int) -> str:
    return f"{run_id}.{seq}"


def seq_after(last_event_id: str | None, run_id: str) -> int:
    """The number of the last event a client saw of `run_id`; 0 (from the beginning) for none or another run's."""
    if not last_event_id:
        return 0
    run, _, seq = last_event_id.strip().rpartition(".")
    return int(seq) if run == run_id and seq.isdigit() else 0


def owns(run: Run, owner: ChatOwner) -> bool:
    return run.user_id == owner.user_id and (owner.org_id is None or run.org_id == owner.org_id)


@dataclass(eq=False)
class LiveAnswer:
    """An answer produced on this replica: all its events so far (event n is `events[n - 1]`).

    Readers see `events[:visible]`. The answer's last event (DoneEvent) is held back until the log has the run's end:
    a client that saw the end may ask its next question through any replica at once, and find the chat free."""

    run: Run
    events: list[ChatEvent] = field(default_factory=list)
    visible: int = 0
    ended: bool = False
    status: str = RUNNING
    flushed: int = 0  # events written to the log
    unflushed_bytes: int = 0
    renewed_at: float = field(default_factory=time.monotonic)
    stop_reason: str | None = None
    task: asyncio.Task[None] | None = None
    released: asyncio.Event = field(default_factory=asyncio.Event)
    _wake: asyncio.Event | None = None

    def push(self, event: ChatEvent) -> int:
        self.events.append(event)
        if type(event) is DoneEvent:
            return self.unflushed_bytes  # held back: see the class docstring
        self.visible = len(self.events)
        if type(event) is TokenEvent or type(event) is ReasoningEvent:
            self.unflushed_bytes += len(event.text)
        self._wake_readers()
        return self.unflushed_bytes

    def has_end(self) -> bool:
        return bool(self.events) and type(self.events[-1]) is DoneEvent

    def end(self, status: str) -> None:
        """No more events: the flusher writes the end, then `release`s them."""
        self.status = status
        self.ended = True

    def release(self) -> None:
        """The end is written (or could not be): readers may see every event."""
        self.visible = len(self.events)
        self.released.set()
        self._wake_readers()

    def _wake_readers(self) -> None:
        wake = self._wake
        if wake is not None:
            self._wake = None
            wake.set()

    async def changed(self) -> None:
        if self._wake is None:
            self._wake = asyncio.Event()
        await self._wake.wait()

    async def follow(self, after: int) -> AsyncIterator[EventWithId]:
        """Its events after number `after`, as they come, to the end."""
        run_id, seq = self.run.run_id, after
        while True:
            while seq < self.visible:
                seq += 1
                yield event_id(run_id, seq), self.events[seq - 1]
            if self.released.is_set():
                return
            await self.changed()


def ending_events(stop_reason: str | None) -> list[ChatEvent]:
    """How an answer cut short ends for its readers."""
    if stop_reason == "stopped":
        return [DoneEvent("cancelled")]
    message = (
        "the server producing this answer shut down before it ended"
        if stop_reason == "shutdown"
        else "the server producing this answer lost contact with the database"
    )
    return [ErrorEvent(INTERRUPTED_ERROR, message), DoneEvent("error")]


class ResumableAnswers:
    def __init__(
        self,
        log: AnswerLog,
        conversations: Conversations,
        settings: AnswerSettings,
        replica: str | None = None,
    ) -> None:
        self.log = log
        self.conversations = conversations
        self.settings = settings
        self.replica = replica or uuid.uuid4().hex[:12]
        self._live: dict[str, LiveAnswer] = {}  # by chat id
        self._flush_now = asyncio.Event()
        self._flushing = asyncio.Lock()  # the flusher and shutdown's last flush must not write one batch twice
        self._tasks: list[asyncio.Task[None]] = []
        log.on_stop = self._stop_asked

    @property
    def running(self) -> int:
        """Answers this replica is producing now."""
        return sum(1 for live in self._live.values() if not live.ended)

    def start_background(self) -> None:
        self._tasks = [
            asyncio.create_task(self._flush_forever(), name="answer-flusher"),
            asyncio.create_task(self._sweep_forever(), name="answer-sweeper"),
        ]

    # --- starting ---------------------------------------------------------------------------------

    async def start(self, request: ChatRequest, open_stream: Callable[[ChatRequest], Awaitable[ChatStream]]) -> Run:
        """Admit the answer, open the model's stream (errors raise here, before any event), run it in the
        background; returns its run, to follow with `follow`."""
        chat = request.chat
        if chat is None:
            raise InvalidRequest("a resumable answer needs a stored chat: send chatId and userId")
        now = time.time()
        question = retrieval_query(request.messages)
        run = Run(
            run_id=uuid.uuid4().hex[:16],
            chat_id=chat.chat_id,
            user_id=chat.owner.user_id,
            org_id=chat.owner.org_id,
            question=question,
            replica=self.replica,
            started_at=now,
            lease_until=now + self.settings.lease_seconds,
        )
        await self.log.begin(run, self.settings.max_running_per_org)
        try:
            stream = await open_stream(request)
        except BaseException:
            await self.log.abandon(run.run_id)
            raise
        live = LiveAnswer(run)
        self._live[run.chat_id] = live
        live.task = asyncio.create_task(self._produce(live, stream), name=f"answer-{run.run_id}")
        return run

    async def _produce(self, live: LiveAnswer, stream: ChatStream) -> None:
        status = DONE
        flush_bytes = self.settings.flush_bytes
        try:
            async with contextlib.aclosing(stream.events()) as events:
                async for event in events:
                    if live.push(event) >= flush_bytes:
                        self._flush_now.set()
        except asyncio.CancelledError:
            # Cancelled by us only (a stop, a lost lease, shutdown): the answer ends here, with its reason, unless
            # its own end came first.
            if not live.has_end():
                status = STOPPED if live.stop_reason == "stopped" else INTERRUPTED
                for event in ending_events(live.stop_reason):
                    live.push(event)
        except Exception:
            logger.exception("a resumable answer failed")
            if not live.has_end():
                status = INTERRUPTED
                live.push(ErrorEvent("internal_error", "the answer failed unexpectedly"))
                live.push(DoneEvent("error"))
        finally:
            live.end(status)
            self._flush_now.set()

    # --- following --------------------------------------------------------------------------------

    async def current(self, chat_id: str) -> Run | None:
        """The chat's running or recently ended answer."""
        live = self._live.get(chat_id)
        return live.run if live is not None else await self.log.current(chat_id)

    async def follow(self, run: Run, after: int = 0) -> AsyncIterator[EventWithId]:
        """The run's events after number `after`, to its end; from memory when it runs here."""
        live = self._live.get(run.chat_id)
        if live is not None and live.run.run_id == run.run_id:
            return live.follow(after)
        return self._follow_log(run, after)

    async def resume(
        self, chat_id: str, owner: ChatOwner, last_event_id: str | None
    ) -> AsyncIterator[EventWithId] | None:
        """The chat's current answer after `last_event_id`; None when there is nothing more to send. Another
        user's chat, or none, raises ChatNotFound."""
        run = await self._owned_run(chat_id, owner)
        if run is None:
            return None
        after = seq_after(last_event_id, run.run_id)
        live = self._live.get(chat_id)
        ended_here = (live is None or live.run.run_id != run.run_id) and run.status != RUNNING
        # Ended: nothing more once the client has the last kept event (an interrupted run whose end was never kept
        # still owes its reader the error).
        if ended_here and (after > run.last_seq or (after == run.last_seq and run.status != INTERRUPTED)):
            return None
        return await self.follow(run, after)

    async def _owned_run(self, chat_id: str, owner: ChatOwner) -> Run | None:
        run = await self.current(chat_id)
        if run is None:
            await self.conversations.get(chat_id, owner)  # ChatNotFound unless the chat is the owner's
            return None
        if not owns(run, owner):
            raise ChatNotFound(f"no chat {chat_id!r} for this user")
        return run

    async def _follow_log(self, run: Run, after: int) -> AsyncIterator[EventWithId]:
        run_id, seq = run.run_id, after
        news = self.log.subscribe(run_id)
        try:
            while True:
                news.clear()  # before the read: news arriving during it is not missed
                for number, data in await self.log.read(run_id, seq):
                    seq, event = number, decode(data)
                    yield event_id(run_id, seq), event
                    if type(event) is DoneEvent:
                        return
                state = await self.log.get(run_id)
                if state is None:
                    return  # removed meanwhile (retention): nothing more to tell
                if state.last_seq > seq:
                    continue  # written between the two reads
                if state.status != RUNNING:
                    # Ended without its end kept: declared interrupted after its lease lapsed.
                    yield (
                        event_id(run_id, seq + 1),
                        ErrorEvent(INTERRUPTED_ERROR, "the answer was interrupted: the server producing it stopped"),
                    )
                    yield event_id(run_id, seq + 2), DoneEvent("error")
                    return
                now = time.time()
                if state.lease_until < now:
                    await self.log.interrupt_lapsed(run_id, now)
                    continue
                wait = min(state.lease_until - now + 0.05, self.log.poll_seconds)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(news.wait(), wait)
        finally:
            self.log.unsubscribe(run_id, news)

    # --- stopping ---------------------------------------------------------------------------------

    async def stop(self, chat_id: str, owner: ChatOwner) -> bool:
        """Stop the chat's running answer, wherever it runs; False when none was running."""
        run = await self._owned_run(chat_id, owner)
        if run is None:
            return False
        live = self._live.get(chat_id)
        if live is not None and live.run.run_id == run.run_id:
            if live.ended:
                return False
            await self._cancel(live, "stopped")
            with contextlib.suppress(TimeoutError):  # answer once the log says so: the chat is free for any replica
                await asyncio.wait_for(live.released.wait(), self.settings.lease_seconds)
            return True
        if run.status != RUNNING:
            return False
        await self.log.request_stop(run.run_id)
        deadline = time.monotonic() + self.settings.lease_seconds + 1
        while time.monotonic() < deadline:  # answer once it has stopped: the caller may ask again at once
            state = await self.log.get(run.run_id)
            if state is None or state.status != RUNNING:
                break
            await asyncio.sleep(0.05)
        return True

    async def forget_chat(self, chat_id: str, owner: ChatOwner) -> bool:
        """Stop the chat's answer and remove its kept events, before the chat is deleted: an answer still running
        would store its turn when it ends, bringing the chat back. True when an answer was stopped."""
        stopped = await self.stop(chat_id, owner)
        await self.log.forget_chat(chat_id)
        return stopped

    def _stop_asked(self, run_id: str) -> None:
        for live in list(self._live.values()):
            if live.run.run_id == run_id and not live.ended:
                asyncio.get_running_loop().create_task(self._cancel(live, "stopped"))

    async def _cancel(self, live: LiveAnswer, reason: str) -> None:
        task = live.task
        if task is None or task.done():
            return
        live.stop_reason = live.stop_reason or reason
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    # --- writing the log --------------------------------------------------------------------------

    async def _flush_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flush_now.wait(), self.settings.flush_seconds)
            self._flush_now.clear()
            try:
                await self.flush()
            except Exception:  # the database is away: the events stay in memory, the next pass tries again
                logger.warning("could not write the answers' events", exc_info=True)
                for live in self._live.values():
                    if live.ended:
                        live.release()  # readers here need not wait for the database to see the end

    async def flush(self) -> None:
        """Write every answer's new events, renew the leases falling due, and act on what the log says."""
        async with self._flushing:
            await self._flush()

    async def _flush(self) -> None:
        if not self._live:
            return
        now = time.monotonic()
        renew_after = self.settings.lease_seconds / 3
        batches: list[tuple[LiveAnswer, Batch, int]] = []
        renew: list[LiveAnswer] = []
        for live in self._live.values():
            end = len(live.events)
            if end > live.flushed or (live.ended and live.status != RUNNING):
                status = live.status if live.ended else None
                events = [encode(event) for event in live.events[live.flushed : end]]
                data = dump_events(events) if events else None
                batches.append((live, Batch(live.run.run_id, live.flushed + 1, len(events), data, status), end))
            if not live.ended and now - live.renewed_at >= renew_after:
                renew.append(live)
        if not batches and not renew:
            return
        owned = await self.log.flush(
            [batch for _, batch, _ in batches],
            [live.run.run_id for live in renew],
            time.time() + self.settings.lease_seconds,
        )
        for live, batch, end in batches:
            live.flushed, live.unflushed_bytes = end, 0
            if batch.final_status is not None or batch.run_id not in owned:
                self._forget(live)
                live.release()
        for live in renew:
            live.renewed_at = now
        for live in {*(live for live, _, _ in batches), *renew}:
            if live.run.run_id not in owned and not live.ended:
                logger.warning("answer %s was declared interrupted elsewhere: it stops here", live.run.run_id)
                await self._cancel(live, "lost")
            elif owned.get(live.run.run_id) and not live.ended:
                await self._cancel(live, "stopped")

    def _forget(self, live: LiveAnswer) -> None:
        if self._live.get(live.run.chat_id) is live:
            del self._live[live.run.chat_id]

    async def _sweep_forever(self) -> None:
        period = min(60.0, max(1.0, self.settings.retention_seconds / 4))
        while True:
            await asyncio.sleep(period)
            try:
                removed = await self.log.sweep(time.time(), self.settings.retention_seconds)
                if removed:
                    logger.info("removed the kept events of %d ended answers", removed)
            except Exception:
                logger.warning("could not remove old answers' events", exc_info=True)

    # --- shutting down ----------------------------------------------------------------------------

    async def aclose(self) -> None:
        """End the answers running here (their readers are told they were interrupted), write their ends, stop."""
        for live in list(self._live.values()):
            await self._cancel(live, "shutdown")
        with contextlib.suppress(Exception):
            await self.flush()
        for live in list(self._live.values()):
            live.release()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.log.aclose()
