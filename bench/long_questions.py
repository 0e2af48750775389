"""A question pasted as a paragraph, through the API: `GET /api/v1/documents/search` in hybrid mode, with the
float32 and the int8 embedder graph, beside a one-word question's whole search, in one run.

    .venv/bin/python bench/long_questions.py [--documents 1000]

Two services (`python main.py`, default settings but EMBEDDER_PRECISION) each store the first `--documents` SciFact
abstracts. Asked, taking turns between the two services in blocks of 10: 100 long questions (other SciFact abstracts
of 120 to 250 words, pasted whole, as a user pastes an argument), one at a time, p50 and p95; the same with 8 short
questions at once (SciFact claims), to see that concurrent short questions do not get slower; and a one-word
question's search, the reference for what a search costs besides its embedding.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.retrieval import DEFAULT_DATASET, read_jsonl
from bench.retrieval_http import ingest
from bench.service_process import ServiceProcess

PRECISIONS = ("float32", "int8")


async def timed(client: httpx.AsyncClient, url: str, question: str) -> float:
    started = time.perf_counter()
    response = await client.get(f"{url}/api/v1/documents/search", params={"query": question, "mode": "hybrid"})
    response.raise_for_status()
    return time.perf_counter() - started


async def measure(urls: dict[str, str], questions: list[str], at_once: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in urls}
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_keepalive_connections=at_once * 2)) as client:
        for url in urls.values():  # warm-up
            await asyncio.gather(*(timed(client, url, q) for q in questions[:at_once]))
        for start in range(0, len(questions), 10):
            for name, url in urls.items():
                block = questions[start : start + 10]
                for i in range(0, len(block), at_once):
                    times[name] += await asyncio.gather(*(timed(client, url, q) for q in block[i : i + at_once]))
    return times


def summary(seconds: list[float]) -> str:
    ordered = sorted(seconds)
    return f"p50 {statistics.median(ordered) * 1000:6.1f} ms, p95 {ordered[int(len(ordered) * 0.95)] * 1000:6.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=1000)
    args = parser.parse_args()
    corpus = read_jsonl(DEFAULT_DATASET / "corpus.jsonl")
    stored, rest = corpus[: args.documents], corpus[args.documents :]
    long = [d["text"] for d in rest if 120 <= len(d["text"].split()) <= 250][:100]
    short = [q["text"] for q in read_jsonl(DEFAULT_DATASET / "queries.jsonl")][:96]
    words = statistics.median(len(q.split()) for q in long)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        services = {p: ServiceProcess(Path(tmp) / p, "http://127.0.0.1:9/v1", embedder_precision=p) for p in PRECISIONS}
        try:
            for service in services.values():
                service.wait_ready()
                with httpx.Client(base_url=service.url, timeout=600) as client:
                    ingest(client, stored, 256)
            urls = {p: s.url for p, s in services.items()}
            one_word = asyncio.run(measure(urls, ["vitamin"] * 50, 1))
            pasted = asyncio.run(measure(urls, long, 1))
            concurrent = asyncio.run(measure(urls, short, 8))
        finally:
            for service in services.values():
                service.kill()
    print(f"{args.documents} SciFact abstracts stored; hybrid search through the API")
    for p in PRECISIONS:
        print(f"{p:8} one word             {summary(one_word[p])}")
        print(f"{p:8} {len(long)} pasted paragraphs ({words:.0f} words at the median) {summary(pasted[p])}")
        print(f"{p:8} 96 short questions, 8 at once  {summary(concurrent[p])}")


if __name__ == "__main__":
    main()
