"""The MCP transport, measured: a `search_documents` call through the SDK's client beside the same search through
`GET /api/v1/documents/search`, in one run; and 50 MCP clients at once.

    .venv/bin/python bench/mcp_calls.py                     # 500 SciFact abstracts, 100 claims
    .venv/bin/python bench/mcp_calls.py --documents 100     # a smoke run

The service runs as `make run` starts it (the bundled MiniLM), in a process of its own, holding the first N SciFact
abstracts. Each claim is asked both ways, alternating, one at a time, over one kept connection each: p50 and p95 of
each, and their ratio. Then 50 clients, each with its own connection, call `search_documents` 10 times at once:
errors, and the p50 of a call.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from bench.keyword_leg import percentile
from bench.retrieval import DEFAULT_DATASET, read_jsonl
from bench.service_process import FakeUpstreamProcess, ServiceProcess


async def compare(url: str, claims: list[str]) -> None:
    through_mcp, through_http = [], []
    async with (
        Client(streamable_http_client(f"{url}/mcp", http_client=httpx2.AsyncClient(timeout=60))) as client,
        httpx.AsyncClient(base_url=url, timeout=60) as http,
    ):
        for claim in claims[:5]:  # warm both paths
            await client.call_tool("search_documents", {"query": claim, "top_k": 5})
            await http.get("/api/v1/documents/search", params={"query": claim, "top_k": 5})
        for claim in claims:
            started = time.perf_counter()
            call = await client.call_tool("search_documents", {"query": claim, "top_k": 5})
            through_mcp.append(time.perf_counter() - started)
            assert not call.is_error, call
            started = time.perf_counter()
            response = await http.get("/api/v1/documents/search", params={"query": claim, "top_k": 5})
            through_http.append(time.perf_counter() - started)
            response.raise_for_status()
    m50, m95, h50, h95 = (percentile(xs, q) for xs, q in ((through_mcp, 0.5), (through_mcp, 0.95),
                                                          (through_http, 0.5), (through_http, 0.95)))  # fmt: skip
    print(f"search, hybrid top 5, {len(claims)} claims, one at a time:")
    print(f"  MCP search_documents     p50 {m50:6.2f} ms  p95 {m95:6.2f} ms  ({m50 / h50:.2f}x the HTTP p50)")
    print(f"  GET /documents/search    p50 {h50:6.2f} ms  p95 {h95:6.2f} ms")


async def crowd(url: str, claims: list[str], clients: int, calls: int) -> None:
    errors: list[str] = []
    timings: list[float] = []

    async def one(n: int) -> None:
        try:
            async with Client(streamable_http_client(f"{url}/mcp", http_client=httpx2.AsyncClient(timeout=120))) as c:
                for k in range(calls):
                    started = time.perf_counter()
                    call = await c.call_tool("search_documents", {"query": claims[(n * calls + k) % len(claims)]})
                    timings.append(time.perf_counter() - started)
                    if call.is_error:
                        errors.append(call.content[0].text)
        except Exception as exc:  # counted, not raised: the figure is how many
            errors.append(repr(exc))

    started = time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(clients)))
    seconds = time.perf_counter() - started
    print(f"{clients} MCP clients at once, {calls} search_documents calls each:")
    p50 = percentile(timings, 0.5)
    first = f" (first error: {errors[0][:200]})" if errors else ""
    print(f"  {len(timings)} calls in {seconds:.1f} s, errors {len(errors)}, a call's p50 {p50:.1f} ms{first}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=500)
    parser.add_argument("--queries", type=int, default=100)
    args = parser.parse_args()
    corpus = read_jsonl(DEFAULT_DATASET / "corpus.jsonl")[: args.documents]
    claims = [q["text"] for q in read_jsonl(DEFAULT_DATASET / "queries.jsonl")][: args.queries]
    with (
        tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp,
        FakeUpstreamProcess(count=5, delay=0.0) as upstream,
        ServiceProcess(Path(tmp) / "data", upstream.url, rate_limit_per_minute="0") as service,
    ):
        service.wait_ready()
        with httpx.Client(base_url=service.url, timeout=600) as http:
            for start in range(0, len(corpus), 100):
                batch = corpus[start : start + 100]
                body = {"documents": [f"{d.get('title', '')} {d['text']}" for d in batch],
                        "ids": [str(d["_id"]) for d in batch]}  # fmt: skip
                http.post("/api/v1/documents/add", json=body, params={"wait": "true"}).raise_for_status()
        print(f"SciFact: {len(corpus):,} abstracts stored (bundled MiniLM)")
        asyncio.run(compare(service.url, claims))
        asyncio.run(crowd(service.url, claims, 50, 10))


if __name__ == "__main__":
    main()
