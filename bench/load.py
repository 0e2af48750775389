"""Load: N concurrent streaming chats against the service (a real process) backed by the fake upstream.

    .venv/bin/python bench/load.py --levels 1 50 200 --chats-per-client 3
    .venv/bin/python bench/load.py --slow-streams 1000

For each level prints the streams run, errors (non-200, error events, no [DONE]), time to first token p50/p99,
whole-answer time p50, and the service's peak resident memory. Loopback only, bounded in count and time. The fake
upstream (its own process) streams 20 tokens 20 ms apart, so the figures show the service's own overhead: embedding
the question, retrieval over the stored chunks, and relaying tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.relay import spawn, wait_up
from bench.service_process import FakeUpstreamProcess, ServiceProcess, free_port

TOKENS, DELAY = 20, 0.02


@contextlib.contextmanager
def service_with_upstream(delay: float, tokens: int) -> Iterator[ServiceProcess]:
    """The service (a real process, an empty store, pings every 15 s) against a fake upstream of its own."""
    with (
        FakeUpstreamProcess(tokens, delay) as upstream,
        tempfile.TemporaryDirectory() as tmp,
        ServiceProcess(Path(tmp), upstream.url, sse_ping_seconds="15") as service,
    ):
        service.wait_ready()
        yield service
        service.terminate()


@contextlib.contextmanager
def rss_samples(pid: int, every: float) -> Iterator[list[tuple[float, float]]]:
    """(time, resident MiB) of process `pid` every `every` seconds while the block runs (at least one sample)."""
    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def sample() -> None:
        while True:
            samples.append((time.perf_counter(), rss_mib(pid)))
            if stop.wait(every):
                return

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        yield samples
    finally:
        stop.set()
        sampler.join()


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory in MiB, now (VmRSS) or at its peak (`field="VmHWM"`)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def one_chat(
    client: httpx.AsyncClient, question: str, path: str = "/api/v1/chat"
) -> tuple[float | None, float, bool]:
    """(time to first token, total time, ok)"""
    started = time.perf_counter()
    first: float | None = None
    done = failed = False
    try:
        async with client.stream("POST", path, json={"messages": [{"role": "user", "content": question}]}) as r:
            if r.status_code != 200:
                return None, time.perf_counter() - started, False
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                event = json.loads(data)
                failed = failed or "error" in event
                if event["content"] and first is None:
                    first = time.perf_counter() - started
    except httpx.HTTPError:
        return None, time.perf_counter() - started, False
    return first, time.perf_counter() - started, done and not failed


async def run_level(
    url: str, concurrency: int, chats_per_client: int, path: str = "/api/v1/chat"
) -> list[tuple[float | None, float, bool]]:
    # A new connection per chat, as a browser's EventSource opens one: with keep-alive, httpx's own pool made this
    # client the bottleneck at 50 simultaneous requests (see bench/relay.py).
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(120), limits=limits) as client:

        async def client_loop(n: int) -> list[tuple[float | None, float, bool]]:
            return [
                await one_chat(client, f"question {n}-{i} about topic {n % 17}", path) for i in range(chats_per_client)
            ]

        results = await asyncio.gather(*(client_loop(n) for n in range(concurrency)))
    return [r for rs in results for r in rs]


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 50, 200])
    parser.add_argument("--chats-per-client", type=int, default=3)
    parser.add_argument("--documents", type=int, default=500, help="documents stored before the load")
    parser.add_argument(
        "--slow-streams",
        type=int,
        default=0,
        help="instead of the levels: this many streams at once, each 20 tokens 0.5 s apart (10 s), to measure "
        "resident memory per open stream",
    )
    args = parser.parse_args()
    if args.slow_streams:
        run_slow(args.slow_streams)
        return

    with service_with_upstream(DELAY, TOKENS) as service:
        texts = [
            f"Document {i} discusses topic {i % 17} in some detail, with facts {i} and {i * 7}."
            for i in range(args.documents)
        ]
        for start in range(0, len(texts), 250):
            httpx.post(
                f"{service.url}/api/v1/documents/add", json={"documents": texts[start : start + 250]}, timeout=300
            )
        rss = rss_mib(service.process.pid)
        print(f"service pid {service.process.pid}, {args.documents} documents stored, RSS {rss:.0f} MiB")
        print(f"upstream: {TOKENS} tokens, {DELAY * 1000:.0f} ms apart (about {TOKENS * DELAY:.1f} s per answer)")
        print("concurrent  streams  errors  ttft p50  ttft p99  total p50  peak RSS")
        for level in args.levels:
            with rss_samples(service.process.pid, 0.05) as samples:
                results = asyncio.run(run_level(service.url, level, args.chats_per_client))
            peak = max(rss for _, rss in samples)
            ttfts = [r[0] for r in results if r[0] is not None]
            errors = sum(1 for r in results if not r[2])
            p50, p99 = percentile(ttfts, 0.5) * 1000, percentile(ttfts, 0.99) * 1000
            total = statistics.median(r[1] for r in results) * 1000
            print(
                f"{level:>10}  {len(results):>7}  {errors:>6}  {p50:>6.0f} ms  {p99:>6.0f} ms  {total:>7.0f} ms"
                f"  {peak:>6.0f} MiB",
                flush=True,
            )


def run_slow(streams: int, delay: float = 0.5, tokens: int = 60) -> None:
    """`streams` streams open at once on one service process, each `tokens` tokens `delay` s apart (one stored
    document, so every question is embedded): errors, and resident memory per open stream once every stream has
    started (the median over the time when all are open, less the resident memory after a warm-up round of 20).
    Then the same with half as many streams, in a fresh process: the difference is what each further stream costs,
    free of what the process allocates once for any burst. The same two runs through the minimal relay of
    `bench/relay.py` (httpx, json, Starlette) give the reference."""
    print(f"concurrent streams of {tokens} tokens {delay * 1000:.0f} ms apart")
    counts = (streams // 2, streams)
    ours = [service_slow_streams(n, delay, tokens) for n in counts]
    reference = [relay_slow_streams(n, delay, tokens) for n in counts]
    for name, runs in (("service", ours), ("minimal relay", reference)):
        for run in runs:
            print(f"  {name:13s} {run.streams:5d}: {run.describe()}")
    ours_each, reference_each = marginal_kib(*ours), marginal_kib(*reference)
    print(
        f"  resident per open stream at {streams}: {ours[1].per_stream:.0f} KiB against {reference[1].per_stream:.0f} "
        f"KiB ({ours[1].per_stream / reference[1].per_stream:.2f}x); each stream from {counts[0]} to {counts[1]}: "
        f"{ours_each:.0f} KiB against {reference_each:.0f} KiB ({ours_each / reference_each:.2f}x)"
    )


def marginal_kib(fewer: SlowStreams, more: SlowStreams) -> float:
    grown = (more.steady - more.baseline) - (fewer.steady - fewer.baseline)
    return grown * 1024 / (more.streams - fewer.streams)


def service_slow_streams(streams: int, delay: float, tokens: int) -> SlowStreams:
    with service_with_upstream(delay, tokens) as service:
        httpx.post(f"{service.url}/api/v1/documents/add", json={"documents": ["one stored document"]}, timeout=60)
        return slow_streams(service.url, "/api/v1/chat", service.process.pid, streams)


def relay_slow_streams(streams: int, delay: float, tokens: int) -> SlowStreams:
    with FakeUpstreamProcess(tokens, delay) as upstream:
        port = free_port()
        relay = spawn("--minimal", str(port), upstream.url)
        try:
            wait_up(f"http://127.0.0.1:{port}/")
            return slow_streams(f"http://127.0.0.1:{port}", "/relay", relay.pid, streams)
        finally:
            relay.kill()
            relay.wait()


@dataclass
class SlowStreams:
    streams: int
    errors: int
    elapsed: float
    ttfts: list[float]
    baseline: float  # MiB after the warm-up
    steady: float  # MiB with every stream open
    peak: float

    @property
    def per_stream(self) -> float:
        return (self.steady - self.baseline) * 1024 / self.streams

    def describe(self) -> str:
        return (
            f"{self.errors} errors, all done in {self.elapsed:.1f} s, ttft p50 {percentile(self.ttfts, 0.5) * 1000:.0f}"
            f" ms, p99 {percentile(self.ttfts, 0.99) * 1000:.0f} ms; resident {self.baseline:.0f} MiB after warm-up, "
            f"{self.steady:.0f} MiB with all streams open ({self.per_stream:.0f} KiB per stream), peak "
            f"{self.peak:.0f} MiB ({(self.peak - self.baseline) * 1024 / self.streams:.0f} KiB per stream)"
        )


def slow_streams(url: str, path: str, pid: int, streams: int) -> SlowStreams:
    asyncio.run(run_level(url, 20, 1, path))  # warm-up: the first streams allocate what every stream reuses
    baseline = rss_mib(pid)
    with rss_samples(pid, 0.1) as samples:
        started = time.perf_counter()
        results = asyncio.run(run_level(url, streams, 1, path))
        elapsed = time.perf_counter() - started
    ttfts = [r[0] for r in results if r[0] is not None]
    # All open: after the last first token, before the first stream ended.
    window = (started + max(ttfts), started + min(r[1] for r in results))
    steady = statistics.median(r for t, r in samples if window[0] <= t <= window[1])
    errors = sum(1 for r in results if not r[2])
    return SlowStreams(streams, errors, elapsed, ttfts, baseline, steady, max(r for _, r in samples))


if __name__ == "__main__":
    main()
