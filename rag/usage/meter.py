"""The usage meter: counts what each answer and each add spends, in memory, and writes it to the ledger in batches;
and checks the quotas before a request costs anything.

Nothing is written per token or per request: counts gather in `pending` and one transaction every
USAGE_FLUSH_SECONDS adds them up in the database. A replica killed loses at most that last batch. After each batch
the meter reads back the limits an admin set and, when any limit holds, what every replica spent this month, per
day, organisation and user; a quota check adds this replica's unwritten counts to that, so it costs no database
round trip.

The bound across replicas. Far from a limit, each replica judges by what it read at its last batch (at most two
batches old) plus its own counts. Once less than one answer's worth (`answer_tokens`: LLM_MAX_TOKENS plus the most
a prompt holds) is left, a replica admits one answer of that organisation (or user) at a time, and before each it
writes its own counts and reads every replica's afresh (a database round trip per answer there, never per token);
an answer admitted there has its tokens written as soon as it ends. What a replica cannot see of another is then at
most that one's answer in flight: past a limit, the replicas together overshoot by at most one answer's worth each.
An answer that began under the limit finishes and counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from llm.types import Usage
from rag.errors import RAGError
from rag.usage.ledger import Kind, Limits, RowKey, UsageLedger

logger = logging.getLogger(__name__)
CHARS_PER_TOKEN = 4  # an estimate's rule of thumb, for a model whose stream reports no usage


class QuotaExceeded(RAGError):
    """A request over a quota: 429, with Retry-After at the window's end."""

    error_type = "quota_exceeded"

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # None: no window ends (chunks stored); no Retry-After


@dataclass(frozen=True, slots=True)
class Account:
    """Who a request's spending is counted to."""

    org_id: str | None = None
    user_id: str | None = None
    key_id: str | None = None


def estimate_tokens(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN)


def _day(now: float) -> str:
    return datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y-%m-%d")


def _seconds_to_next_day(now: float) -> float:
    today = datetime.datetime.fromtimestamp(now, datetime.UTC).date()
    midnight = datetime.datetime.combine(today + datetime.timedelta(days=1), datetime.time(), datetime.UTC)
    return midnight.timestamp() - now


def _seconds_to_next_month(now: float) -> float:
    today = datetime.datetime.fromtimestamp(now, datetime.UTC).date()
    first = datetime.date(today.year + today.month // 12, today.month % 12 + 1, 1)
    return datetime.datetime.combine(first, datetime.time(), datetime.UTC).timestamp() - now


class Admission:
    """An answer let in: it finishes, then counts what it spent (`finish`, once)."""

    def __init__(self, meter: UsageMeter, account: Account, scopes: list[tuple[str, ...]]) -> None:
        self._meter = meter
        self.account = account
        self._scopes = scopes
        self._open = True

    def finish(self, model: str, usage: Usage | None, prompt_chars: int = 0, answer_chars: int = 0) -> None:
        if not self._open:
            return
        self._open = False
        self._meter._release(self._scopes)
        if usage is not None:
            counts = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens}
        else:  # the model reported no usage: estimated, and counted as estimated
            counts = {
                "prompt_tokens": estimate_tokens(prompt_chars),
                "completion_tokens": estimate_tokens(answer_chars),
                "estimated": 1,
            }
        self._meter._count(self.account, model, "answer", {"requests": 1, **counts})
        if self._scopes:  # near a limit: the other replicas see this answer's tokens now, not a batch later
            self._meter.flush_soon()

    def cancel(self) -> None:
        """It never started (a failure before the model's first token): nothing to count."""
        if self._open:
            self._open = False
            self._meter._release(self._scopes)


class UsageMeter:
    def __init__(
        self,
        ledger: UsageLedger,
        defaults: Limits,
        answer_tokens: int,
        flush_seconds: float = 1.0,
        clock: Callable[[], float] = time.time,
        enabled: bool = True,
        observer: Callable[[RowKey, dict[str, int]], None] | None = None,
    ) -> None:
        self.ledger = ledger
        self.defaults = defaults
        self.answer_tokens = answer_tokens
        self.flush_seconds = flush_seconds
        self.clock = clock
        self.enabled = enabled  # off (USAGE_ACCOUNTING=false): nothing counted, no quota applied
        self.observer = observer  # sees each count as it is made (the per-organisation metrics, when asked for)
        self._pending: defaultdict[RowKey, Counter[str]] = defaultdict(Counter)
        self._limits: dict[str, Limits] = {}
        # What every replica had written as of the last read: tokens per (org, user, day), bytes per (org, day)
        self._tokens: defaultdict[str, Counter[tuple[str, str]]] = defaultdict(Counter)  # org -> (user, day)
        self._bytes: Counter[tuple[str, str]] = Counter()
        self._running: Counter[tuple[str, ...]] = Counter()  # admitted answers not yet finished, per scope
        self._near = asyncio.Lock()  # admissions near a limit, one at a time (each reads afresh first)
        self._flushing = asyncio.Lock()  # one batch at a time: two would write the same counts twice
        self._soon: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None

    # --- counting -----------------------------------------------------------------------------------

    def _count(self, account: Account, model: str, kind: Kind, counts: dict[str, int]) -> None:
        if not self.enabled:
            return
        key = RowKey(_day(self.clock()), account.org_id or "", account.user_id or "", account.key_id or "", model, kind)
        self._pending[key].update(counts)
        if self.observer is not None:
            self.observer(key, counts)

    def record_embedding(self, account: Account, model: str, chunks: int, chars: int) -> None:
        self._count(
            account, model, "embedding", {"requests": 1, "chunks": chunks, "embedded_tokens": estimate_tokens(chars)}
        )

    def record_upload(self, account: Account, size: int) -> None:
        """Bytes received to be stored (files, or the text of a JSON add)."""
        self._count(account, "", "upload", {"requests": 1, "bytes": size})

    # --- quotas -------------------------------------------------------------------------------------

    def limits_of(self, org_id: str | None) -> Limits:
        return self._limits.get(org_id or "", Limits()).over(self.defaults)

    def _spent(self, org: str, user: str | None, days: tuple[str, ...]) -> int:
        known = sum(n for (u, d), n in self._tokens.get(org, Counter()).items() if d in days and user in (None, u))
        pending = sum(
            c["prompt_tokens"] + c["completion_tokens"]
            for key, c in self._pending.items()
            if key.org_id == org and key.day in days and user in (None, key.user_id)
        )
        return known + pending

    @staticmethod
    def _month_days(now: float) -> tuple[str, ...]:
        today = datetime.datetime.fromtimestamp(now, datetime.UTC).date()
        return tuple((today - datetime.timedelta(days=n)).isoformat() for n in range(today.day))

    async def admit(self, account: Account) -> Admission:
        """Let an answer in, or QuotaExceeded naming the limit it is over. Far from every limit this reads memory
        alone; within one answer's worth of one, this replica writes its counts and reads every replica's afresh
        first (one batch, one read), one such admission at a time."""
        admission = self._admit(account, fresh=False)
        if admission is None:
            async with self._near:
                await self.flush()
                admission = self._admit(account, fresh=True)
        assert admission is not None
        return admission

    def _admit(self, account: Account, fresh: bool) -> Admission | None:
        """The admission, QuotaExceeded, or None: near a limit, and what was read may be a batch or two old."""
        limits = self.limits_of(account.org_id)
        org, user = account.org_id or "", account.user_id
        held = [limits.tokens_per_day, limits.tokens_per_month]
        if user is not None:
            held += [limits.user_tokens_per_day, limits.user_tokens_per_month]
        if all(limit is None for limit in held):
            return Admission(self, account, [])  # no token limit holds: nothing to count against
        now = self.clock()
        today, month = (_day(now),), self._month_days(now)
        checks: list[tuple[str, int | None, tuple[str, ...], str | None, tuple[str, ...], Callable[[float], float]]]
        checks = [
            ("tokens_per_day", limits.tokens_per_day, (org,), None, today, _seconds_to_next_day),
            ("tokens_per_month", limits.tokens_per_month, (org,), None, month, _seconds_to_next_month),
        ]
        if user is not None:
            checks += [
                ("user_tokens_per_day", limits.user_tokens_per_day, (org, user), user, today, _seconds_to_next_day),
                (
                    "user_tokens_per_month",
                    limits.user_tokens_per_month,
                    (org, user),
                    user,
                    month,
                    _seconds_to_next_month,
                ),
            ]
        scopes: list[tuple[str, ...]] = []
        for name, limit, scope, who, days, window_end in checks:
            if limit is None:
                continue
            spent = self._spent(org, who, days)
            whose = f"user {user!r} of " if who is not None else ""
            if spent >= limit:
                raise QuotaExceeded(
                    f"{whose}organisation {account.org_id!r} has used {spent:,} of its {limit:,} tokens ({name})",
                    window_end(now),
                )
            if limit - spent < self.answer_tokens:  # near the limit: one answer at a time on this replica
                if not fresh:
                    return None
                if self._running[scope]:
                    raise QuotaExceeded(
                        f"{whose}organisation {account.org_id!r} is within one answer of its {limit:,} tokens "
                        f"({name}): one answer at a time until it is spent",
                        1.0,
                    )
                scopes.append(scope)
        for scope in scopes:
            self._running[scope] += 1
        return Admission(self, account, scopes)

    def _release(self, scopes: list[tuple[str, ...]]) -> None:
        for scope in scopes:
            self._running[scope] -= 1

    def check_upload(self, account: Account, size: int) -> None:
        limit = self.limits_of(account.org_id).upload_bytes_per_day
        if limit is None or not self.enabled:
            return
        now = self.clock()
        org, today = account.org_id or "", _day(now)
        spent = self._bytes[(org, today)] + sum(
            c["bytes"] for key, c in self._pending.items() if key.org_id == org and key.day == today
        )
        if spent + size > limit:
            raise QuotaExceeded(
                f"organisation {account.org_id!r} has uploaded {spent:,} of its {limit:,} bytes today "
                f"(upload_bytes_per_day); this upload holds {size:,}",
                _seconds_to_next_day(now),
            )

    def check_chunks(self, org_id: str | None, stored: int, adding: int) -> None:
        """Before `adding` chunks are stored beside the `stored` ones: QuotaExceeded over the chunks quota (a replaced
        document's old chunks are counted until it is replaced: the check errs on the side of the limit)."""
        limit = self.limits_of(org_id).chunks
        if limit is not None and self.enabled and stored + adding > limit:
            raise QuotaExceeded(
                f"organisation {org_id!r} stores {stored:,} of its {limit:,} chunks (chunks); these documents would "
                f"add {adding:,}: delete documents, or ask for a higher limit",
                None,
            )

    # --- the batches --------------------------------------------------------------------------------

    def start(self) -> None:
        if self.enabled:  # off, nothing is counted and no limit read: no batches
            self._task = asyncio.create_task(self._run(), name="usage-meter")

    async def _run(self) -> None:
        while True:
            await self._flush_quietly()
            await asyncio.sleep(self.flush_seconds)

    def flush_soon(self) -> None:
        task = asyncio.get_running_loop().create_task(self._flush_quietly())
        self._soon.add(task)
        task.add_done_callback(self._soon.discard)

    async def _flush_quietly(self) -> None:
        try:
            await self.flush()
        except Exception:
            logger.exception("could not write the usage batch; it is kept and written with the next")

    async def flush(self) -> None:
        """Write what was counted since the last batch, then read back every replica's spending and the limits."""
        async with self._flushing:
            await self._flush()

    async def _flush(self) -> None:
        batch = {key: Counter(counts) for key, counts in self._pending.items()}
        await self.ledger.add((key, dict(counts)) for key, counts in batch.items())
        limits = await self.ledger.limits()
        # What was spent matters only to a limit: with none set anywhere, a batch is one write and one tiny read.
        any_limit = bool(limits) or any(value is not None for value in self.defaults.as_dict().values())
        month_start = _day(self.clock())[:8] + "01"
        spent = await self.ledger.spent_since(month_start) if any_limit else []
        # In one step of the event loop: the batch moves from `pending` to what was read, never counted twice.
        self._tokens = defaultdict(Counter)
        for day, org, user, tokens, _ in spent:
            self._tokens[org][(user, day)] += tokens
        self._bytes = Counter()
        for day, org, _, _, size in spent:
            self._bytes[(org, day)] += size
        self._limits = limits
        for key, counts in batch.items():
            self._pending[key].subtract(counts)
            if not any(self._pending[key].values()):
                del self._pending[key]

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.gather(*self._soon, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.flush()  # the last batch, on a clean stop
