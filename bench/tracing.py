"""What tracing costs: CPU per relayed token, CPU per request and the first token, with tracing off, on (every
request sampled, exported over OTLP/HTTP) and configured but sampled out, in one run (docs/tracing.md).

    .venv/bin/python bench/tracing.py [--rounds 20]

The three configurations run at once, as three service processes (`python main.py`) against the same fake upstream
processes; spans go to a receiver in this process that accepts and drops them (its work is not the services' CPU).
The measures interleave: each round asks the three in turn (in a rotating order), so that the drift of a shared
machine, which moved earlier runs of this bench by 30% from one minute to the next, falls on all three alike. The
median of the rounds is printed, with the ratio to off:

1. CPU per relayed token (bench/relay.py's measure): one answer of 2,000 tokens a round, the service process's CPU
   time over its tokens. No documents: the question is not embedded, only relaying is measured.
2. CPU per request: 50 simultaneous one-token answers a round over 200 stored SciFact abstracts (the hashing embedder
   of examples/plugins, so that embedding is cheap and the spans' share shows: every span of a chat is made,
   authentication, retrieval, the embedding, the search's legs and fusion, the prompt, the model, the stream).
3. First token: one stream at a time, the upstream sending 20 tokens 20 ms apart; the median of every stream.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.relay import QUESTION, cpu_seconds, stream_once
from bench.retrieval import DEFAULT_DATASET
from bench.service_process import FakeUpstreamProcess, ServiceProcess
from tests.servers import serve

CONFIGURATIONS = {
    "off": {},
    "on": {"otel_traces_sampler": "always_on"},
    "sampled out": {"otel_traces_sampler": "always_off"},
}
HASHING = {"embedder": "examples.plugins.hashing_embedder:HashingEmbedder", "embedder_options": '{"dimension": 384}'}
CHAT = {"messages": QUESTION}


@contextmanager
def dropping_receiver() -> Iterator[tuple[str, list[int]]]:
    """An OTLP/HTTP endpoint that answers every export with success; yields its URL and the bytes received."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    received: list[int] = []

    async def traces(request: Request) -> Response:
        received.append(len(await request.body()))
        return Response(b"", media_type="application/x-protobuf")  # an empty ExportTraceServiceResponse

    with serve(Starlette(routes=[Route("/v1/traces", traces, methods=["POST"])])) as url:
        yield url, received


def abstracts(count: int) -> list[str]:
    with open(DEFAULT_DATASET / "corpus.jsonl") as corpus:
        return [json.loads(line)["text"] for _, line in zip(range(count), corpus, strict=False)]


@contextmanager
def services(tmp: Path, upstream: str, endpoint: str, **extra: str) -> Iterator[dict[str, ServiceProcess]]:
    """The three configurations as three service processes, ready."""
    with contextlib.ExitStack() as stack:
        running = {}
        for n, (name, settings) in enumerate(CONFIGURATIONS.items()):
            traced = {"otel_exporter_otlp_endpoint": endpoint, "otel_bsp_schedule_delay": "200"} if settings else {}
            running[name] = stack.enter_context(ServiceProcess(tmp / f"{n}", upstream, **settings, **traced, **extra))
        for service in running.values():
            service.wait_ready()
        yield running


def rotations(rounds: int) -> Iterator[list[str]]:
    names = list(CONFIGURATIONS)
    for r in range(rounds):
        yield names[r % 3 :] + names[: r % 3]


async def per_token(running: dict[str, ServiceProcess], rounds: int) -> dict[str, list[float]]:
    costs: dict[str, list[float]] = {name: [] for name in running}
    async with httpx.AsyncClient(timeout=120) as client:
        for service in running.values():  # warm-up
            await stream_once(client, f"{service.url}/api/v1/chat", CHAT)
        for order in rotations(rounds):
            for name in order:
                pid, url = running[name].process.pid, f"{running[name].url}/api/v1/chat"
                before = cpu_seconds(pid)
                _, tokens = await stream_once(client, url, CHAT)
                costs[name].append((cpu_seconds(pid) - before) / tokens * 1e6)
    return costs


async def per_request(running: dict[str, ServiceProcess], rounds: int, concurrency: int = 50) -> dict[str, list[float]]:
    costs: dict[str, list[float]] = {name: [] for name in running}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        for service in running.values():  # warm-up: every connection opened
            url = f"{service.url}/api/v1/chat"
            await asyncio.gather(*(stream_once(client, url, CHAT) for _ in range(concurrency)))
        for order in rotations(rounds):
            for name in order:
                pid, url = running[name].process.pid, f"{running[name].url}/api/v1/chat"
                before = cpu_seconds(pid)
                await asyncio.gather(*(stream_once(client, url, CHAT) for _ in range(concurrency)))
                costs[name].append((cpu_seconds(pid) - before) / concurrency * 1e3)
    return costs


async def first_tokens(running: dict[str, ServiceProcess], rounds: int) -> dict[str, list[float]]:
    firsts: dict[str, list[float]] = {name: [] for name in running}
    # a new connection per stream, as bench/relay.py's ttft: what a browser's EventSource does
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        for order in rotations(rounds):
            for name in order:
                first, _ = await stream_once(client, f"{running[name].url}/api/v1/chat", CHAT)
                if first is not None:
                    firsts[name].append(first * 1000)
    return firsts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    documents = abstracts(200)
    with (
        tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp,
        dropping_receiver() as (endpoint, received),
        FakeUpstreamProcess(2000, 0, prefix="t") as long,
        FakeUpstreamProcess(1, 0, prefix="t") as short,
        FakeUpstreamProcess(20, 0.02, prefix="t") as slow,
    ):
        with services(Path(tmp) / "token", long.url, endpoint) as running:
            token = asyncio.run(per_token(running, args.rounds))
        with services(Path(tmp) / "request", short.url, endpoint, **HASHING) as running:
            for service in running.values():
                body = {"documents": documents}
                httpx.post(f"{service.url}/api/v1/documents/add", json=body, timeout=120).raise_for_status()
            request = asyncio.run(per_request(running, max(args.rounds // 2, 3)))
        with services(Path(tmp) / "first", slow.url, endpoint) as running:
            first = asyncio.run(first_tokens(running, args.rounds * 2))
    print(f"exported {sum(received):,} bytes of spans in {len(received)} batches (tracing on only)")
    median = {name: (statistics.median(token[name]), statistics.median(request[name]), statistics.median(first[name]))
              for name in CONFIGURATIONS}  # fmt: skip
    off_token, off_request, off_first = median["off"]
    print(f"medians of {args.rounds} rounds (token), {max(args.rounds // 2, 3)} (request), {args.rounds * 2} (first)")
    print(f"{'':14}{'CPU per token':>16}{'CPU per request':>20}{'first token':>18}")
    for name in CONFIGURATIONS:
        t, r, f = median[name]
        ratios = f"{t:9.1f} us {t / off_token:4.2f}x{r:10.2f} ms {r / off_request:4.2f}x"
        print(f"{name:14}{ratios}{f:10.2f} ms {f - off_first:+6.2f}")


if __name__ == "__main__":
    main()
