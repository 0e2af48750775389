"""Where a resumable answer's events are kept while it runs and a while after: the protocol both chat databases
implement (`SqliteAnswerLog`, `PgAnswerLog`), the run record, and the two refusals of a new answer.

A run is one answer of one chat. Its producing replica writes the events in batches (one row per batch, never one
per token) and holds a lease on the run, renewed as it writes: a reader on another replica that finds the lease
lapsed marks the run interrupted, and from then on the producer's writes are refused (the `status = 'running'`
condition on every write fences a replica that was only slow, not dead)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from rag.errors import RAGError

RUNNING, DONE, STOPPED, INTERRUPTED = "running", "done", "stopped", "interrupted"


class AnswerInProgress(RAGError):
    """The chat already has an answer running: one at a time per chat."""

    error_type = "answer_in_progress"


class TooManyAnswers(RAGError):
    """The organisation already has RESUMABLE_MAX_PER_ORG answers running."""

    error_type = "too_many_answers"


@dataclass(frozen=True, slots=True)
class Run:
    run_id: str
    chat_id: str
    user_id: str
    org_id: str | None
    question: str
    replica: str
    started_at: float
    lease_until: float
    status: str = RUNNING
    last_seq: int = 0  # the last event kept (events are numbered from 1); read from the events, never stored
    ended_at: float | None = None

    @property
    def org_key(self) -> str:
        """Whose cap the run counts against: its organisation, or its user when it has none."""
        return self.org_id if self.org_id is not None else f"user:{self.user_id}"

    def new_row(self) -> tuple[Any, ...]:
        """The values of `NEW_RUN_COLUMNS` that record this run as running."""
        return (
            self.run_id,
            self.chat_id,
            self.user_id,
            self.org_id,
            self.org_key,
            self.question,
            self.replica,
            self.started_at,
            self.lease_until,
            RUNNING,
        )


NEW_RUN_COLUMNS = "run_id, chat_id, user_id, org_id, org_key, question, replica, started_at, lease_until, status"


def admit(run: Run, chat_busy: bool, running: int, max_running_per_org: int) -> None:
    """The admission rule both logs apply inside the transaction that records a run: one answer at a time per chat
    (`chat_busy`: it has a running one), and at most `max_running_per_org` per organisation (`running` now)."""
    if chat_busy:
        raise AnswerInProgress(f"chat {run.chat_id!r} has an answer running: resume it, stop it, or wait for its end")
    if running >= max_running_per_org:
        raise TooManyAnswers(
            f"{running} resumable answers are running for this organisation; the limit is {max_running_per_org} "
            "(RESUMABLE_MAX_PER_ORG)"
        )


@dataclass(frozen=True, slots=True)
class Batch:
    """Events of one run to append, numbered from `first_seq`, as one JSON array (`dump_events`); and the run's
    final status when they end it."""

    run_id: str
    first_seq: int
    count: int = 0
    data: str | None = None
    final_status: str | None = None


class AnswerLog(Protocol):
    async def begin(self, run: Run, max_running_per_org: int) -> None:
        """Record a new running run; AnswerInProgress when its chat has one running (with a live lease),
        TooManyAnswers when its organisation has `max_running_per_org`. A running run whose lease lapsed is marked
        interrupted on the way."""
        ...

    async def abandon(self, run_id: str) -> None:
        """Forget a run that never produced an event (its model failed to start)."""
        ...

    async def flush(self, batches: list[Batch], renew: list[str], lease_until: float) -> dict[str, bool]:
        """In one transaction, for runs still running only: append `batches` (ending the runs whose batch has a
        final status) and extend the lease of the runs in `renew` to `lease_until`. A run's row is written only to
        renew or end it, so that a flush of a few tokens writes little more than them. Returns, for every run of
        either list still owned, whether a stop was asked."""
        ...

    async def current(self, chat_id: str) -> Run | None:
        """The chat's latest run, running or kept."""
        ...

    async def get(self, run_id: str) -> Run | None: ...

    async def read(self, run_id: str, after_seq: int) -> list[tuple[int, str | dict[str, Any]]]:
        """The kept events numbered after `after_seq`, in order."""
        ...

    async def request_stop(self, run_id: str) -> None:
        """Ask the producing replica to stop the run (it looks at each renewal, or is told at once on PostgreSQL)."""
        ...

    async def interrupt_lapsed(self, run_id: str, now: float) -> bool:
        """Mark the run interrupted if it is still running with its lease lapsed at `now`; True when it was."""
        ...

    async def forget_chat(self, chat_id: str) -> None:
        """Remove the chat's ended runs and their events (the chat is being deleted)."""
        ...

    async def sweep(self, now: float, retention_seconds: float) -> int:
        """Remove runs (and their events) that ended more than `retention_seconds` ago; returns how many."""
        ...

    async def cited_documents(self) -> dict[str, set[str]]:
        """The documents each ended run's sources cite (their text is in its kept events), by run id."""
        ...

    async def forget_runs(self, run_ids: list[str]) -> None:
        """Remove these ended runs and their events (they cite a deleted document)."""
        ...

    poll_seconds: float  # how long a reader on another replica waits at most before it reads again
    # Called with a run id when a stop of a run is asked through another replica, where the database tells of it
    # (PostgreSQL); elsewhere never called, and the stop is read at the next flush.
    on_stop: Callable[[str], None] | None

    def subscribe(self, run_id: str) -> asyncio.Event:
        """An event set when the run may have new events, where the database tells (PostgreSQL); a reader clears it
        before each read, so that news arriving during the read is not missed."""
        ...

    def unsubscribe(self, run_id: str, event: asyncio.Event) -> None: ...

    async def aclose(self) -> None: ...


def runs_by_id(batches: list[Batch], renew: list[str]) -> list[str]:
    return list(dict.fromkeys([*(batch.run_id for batch in batches), *renew]))


def dump_events(events: list[str | dict[str, Any]]) -> str:
    return json.dumps(events, ensure_ascii=False, separators=(",", ":"))


SOURCES_MARK = '{"s":'  # how a sources event starts in a batch (`dump_events`): the batches worth parsing


def cited_in(data: str) -> set[str]:
    """The document ids the sources events of one batch cite."""
    return {
        hit["document_id"]
        for event in json.loads(data)
        if isinstance(event, dict) and "s" in event
        for hit in event["s"]
    }


def unbatch(rows: list[Any], after_seq: int) -> list[tuple[int, str | dict[str, Any]]]:
    """Kept batches as numbered events, those after `after_seq` only."""
    events: list[tuple[int, str | dict[str, Any]]] = []
    for first_seq, data in rows:
        for offset, event in enumerate(json.loads(data)):
            seq = first_seq + offset
            if seq > after_seq:
                events.append((seq, event))
    return events
