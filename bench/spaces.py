"""A new embedding model without downtime, measured: the space builder's rate beside the bare embedder's, and the
search and chat latency of the service while it builds, beside the same service idle.

    .venv/bin/python bench/spaces.py                       # the first 1,000 SciFact abstracts, 100 claims
    .venv/bin/python bench/spaces.py --documents 200       # a smoke run
    .venv/bin/python bench/spaces.py --read-check          # only what the check beside each read costs

The service (one process, as `make run` starts it, with the fake upstream in a process of its own as its chat model)
starts on the hashing embedder (examples/plugins), and SciFact abstracts are added to it. Then a space of the bundled
MiniLM (ONNX) is asked for, as an operator would move from a cheap model to a real one, and timed from the request to
`ready`: the builder reads every document, embeds every chunk with MiniLM and writes the new store. Printed:
- the build's rate, alone, beside MiniLM's own bare rate over the same chunk texts in this process (`embed_documents`,
  the builder's batches), before the service starts;
- the p50 and p95 of searches (`GET /api/v1/documents/search`, hybrid top 5) and chats (`POST /api/v1/chat`, 20
  tokens streamed) at a steady pace while a second build runs, beside the same requests with no build; and that
  build's rate.
With --read-check: a hybrid search with the check every read makes beside it (was this store's space switched away
from?), beside the search alone, on the embedded store and on PostgreSQL, over the same chunks and claims.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.keyword_leg import percentile
from bench.retrieval import DEFAULT_DATASET, read_jsonl
from bench.service_process import FakeUpstreamProcess, ServiceProcess
from config import Settings
from rag.chunking import split_text
from rag.embedders.factory import build_embedder
from rag.spaces.sync import follow

HASHING = "examples.plugins.hashing_embedder:HashingEmbedder"
REQUESTS_PER_SECOND = 2  # a search and a chat each, every half second: a busy service on two cores, not a flood
BUILD_BATCH = follow.__defaults__[0] if follow.__defaults__ else 512  # type: ignore[index]


def texts_of(corpus: list[dict]) -> list[str]:
    return [f"{d.get('title', '')} {d['text']}".strip() for d in corpus]


async def bare_rate(texts: list[str]) -> tuple[list[str], np.ndarray, float]:
    """The chunks, their MiniLM vectors and the seconds embed_documents took over them."""
    settings = Settings()
    embedder = await build_embedder(settings)
    chunks = [piece for text in texts for piece in split_text(text, settings.chunk_size, settings.chunk_overlap)]
    started = time.perf_counter()
    vectors = [await embedder.embed_documents(chunks[i : i + BUILD_BATCH]) for i in range(0, len(chunks), BUILD_BATCH)]
    seconds = time.perf_counter() - started
    await embedder.aclose()
    return chunks, np.vstack(vectors), seconds


async def read_check(chunks: list[str], vectors: np.ndarray, claims: list[str], tmp: Path) -> None:
    """What the check each read makes (ActiveSpace.read: was the store switched away from?) adds to a hybrid search
    it runs beside, on each backend, over the same chunks and claims; and the check alone."""
    import pgserver

    from rag.stores import SearchRequest
    from rag.stores.numpy_store import NumpyVectorStore
    from rag.stores.postgres_store import PostgresVectorStore
    from rag.types import Chunk

    embedder = await build_embedder(Settings())
    claim_vectors = await embedder.embed(claims)
    await embedder.aclose()
    server = pgserver.get_server(tmp / "pg", cleanup_mode="stop")
    dsn = server.get_uri()
    try:
        model, dimension = "all-MiniLM-L6-v2", vectors.shape[1]
        stores = {
            "embedded": await NumpyVectorStore.open(tmp / "numpy", model, dimension),
            "postgres": await PostgresVectorStore.open(dsn, model, dimension, tmp / "keywords"),
        }
        rows = [Chunk(f"d{i}:0", f"d{i}", text, {}) for i, text in enumerate(chunks)]
        for backend, store in stores.items():
            for start in range(0, len(rows), 512):
                await store.upsert(rows[start : start + 512], vectors[start : start + 512])
            checked, searches, checks = [], [], []
            for _ in range(3):
                for claim, vector in zip(claims, claim_vectors, strict=True):
                    request = SearchRequest(claim, vector, 5, None, None, "hybrid")
                    started = time.perf_counter()
                    await store.search(request)
                    searches.append(time.perf_counter() - started)
                    started = time.perf_counter()
                    await asyncio.gather(store.is_retired(), store.search(request))  # type: ignore[attr-defined]
                    checked.append(time.perf_counter() - started)
                    started = time.perf_counter()
                    await store.is_retired()  # type: ignore[attr-defined]
                    checks.append(time.perf_counter() - started)
            bare, both, check = (percentile(xs, 0.5) for xs in (searches, checked, checks))
            print(
                f"  {backend:<9} hybrid search with the check beside it p50 {both:6.2f} ms, the search alone p50 "
                f"{bare:6.2f} ms ({both / bare:.2f}x); the check alone p50 {check * 1000:6.1f} us ({len(checks)} each)"
            )
            await store.aclose()
    finally:
        server.cleanup()


async def add(http: httpx.AsyncClient, corpus: list[dict], texts: list[str]) -> None:
    """Add the documents, 100 a request; a large add is a job (202): wait for each, so the store is whole and the
    service idle before anything is timed."""
    jobs = []
    for start in range(0, len(texts), 100):
        ids = [d["_id"] for d in corpus[start : start + 100]]
        response = await http.post("/api/v1/documents/add", json={"documents": texts[start : start + 100], "ids": ids})
        response.raise_for_status()
        if response.status_code == 202:
            jobs.append(response.json()["id"])
    for job in jobs:
        state = "queued"
        for _ in range(100_000):  # polled: the job's progress stream is for clients that show it
            state = (await http.get(f"/api/v1/jobs/{job}")).json()["state"]
            if state in ("done", "failed", "cancelled"):
                break
            await asyncio.sleep(0.2)
        if state != "done":
            raise SystemExit(f"adding the corpus failed: job {job} {state}")
    health = (await http.get("/api/v1/health")).json()["store"]
    if health["documents"] != len(texts):
        raise SystemExit(f"the store holds {health['documents']} documents, not {len(texts)}")


async def paced(
    http: httpx.AsyncClient, claims: list[str], until: Callable[[], bool]
) -> tuple[list[float], list[float]]:
    """A search and a chat every 1/REQUESTS_PER_SECOND seconds until `until()`, each timed whole."""
    searches: list[float] = []
    chats: list[float] = []
    n = 0
    while not until():
        began = time.perf_counter()
        claim = claims[n % len(claims)]
        response = await http.get("/api/v1/documents/search", params={"query": claim, "top_k": 5})
        response.raise_for_status()
        searches.append(time.perf_counter() - began)
        began_chat = time.perf_counter()
        response = await http.post("/api/v1/chat", json={"messages": [{"role": "user", "content": claim}]})
        response.raise_for_status()
        chats.append(time.perf_counter() - began_chat)
        n += 1
        await asyncio.sleep(max(0.0, 1 / REQUESTS_PER_SECOND - (time.perf_counter() - began)))
    return searches, chats


async def build(http: httpx.AsyncClient, claims: list[str] | None) -> tuple[float, list[float], list[float]]:
    """Ask for the MiniLM space and wait for it to be ready (searching and chatting meanwhile, with `claims`)."""
    began = time.perf_counter()
    response = await http.post("/api/v1/embedding-spaces", json={"embedder": {"embedder": "onnx"}})
    response.raise_for_status()
    name = response.json()["name"]
    state = {"ready": False}

    async def watch() -> None:
        while True:
            listed = (await http.get("/api/v1/embedding-spaces")).json()["spaces"]
            if any(space["name"] == name and space["state"] == "ready" for space in listed):
                state["ready"] = True
                return
            await asyncio.sleep(0.2)

    watcher = asyncio.create_task(watch())
    searches: list[float] = []
    chats: list[float] = []
    if claims is not None:
        searches, chats = await paced(http, claims, lambda: state["ready"])
    await watcher
    seconds = time.perf_counter() - began
    (await http.delete(f"/api/v1/embedding-spaces/{name}")).raise_for_status()
    for _ in range(600):  # the drop, by the builder's next pass
        if name not in {space["name"] for space in (await http.get("/api/v1/embedding-spaces")).json()["spaces"]}:
            break
        await asyncio.sleep(0.2)
    return seconds, searches, chats


def line(label: str, idle: list[float], during: list[float]) -> str:
    # percentile() answers in milliseconds
    p50, p95, d50, d95 = (percentile(xs, q) for xs, q in ((idle, 0.5), (idle, 0.95), (during, 0.5), (during, 0.95)))
    return (
        f"  {label:<7} idle p50 {p50:6.1f} ms p95 {p95:6.1f} ms ({len(idle)}); during the build p50 {d50:6.1f} ms "
        f"({d50 / p50:.2f}x) p95 {d95:6.1f} ms ({d95 / p95:.2f}x) ({len(during)})"
    )


async def run(args: argparse.Namespace) -> None:
    corpus = read_jsonl(DEFAULT_DATASET / "corpus.jsonl")[: args.documents]
    claims = [q["text"] for q in read_jsonl(DEFAULT_DATASET / "queries.jsonl")][: args.queries]
    texts = texts_of(corpus)
    pieces, vectors, bare = await bare_rate(texts)
    chunks = len(pieces)
    print(f"SciFact: {len(texts):,} documents, {chunks:,} chunks")
    print(f"  bare MiniLM embed_documents      {bare:7.1f} s ({chunks / bare:6.1f} chunks/s)")
    if args.read_check:
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
            await read_check(pieces, vectors, claims, Path(tmp))
        return
    settings = {"embedder": HASHING, "embedder_options": '{"dimension": 384}', "space_pass_seconds": "0.5"}
    with (
        tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp,
        FakeUpstreamProcess(count=20, delay=0.0) as upstream,
        ServiceProcess(Path(tmp) / "data", upstream.url, **settings) as service,
    ):
        service.wait_ready()
        async with httpx.AsyncClient(base_url=service.url, timeout=600) as http:
            await add(http, corpus, texts)
            alone, _, _ = await build(http, None)
            print(
                f"  space build alone                {alone:7.1f} s ({chunks / alone:6.1f} chunks/s, "
                f"{bare / alone:.2f}x the bare rate; loading MiniLM and the request's polling included)"
            )
            window = time.perf_counter() + args.idle_seconds
            idle_searches, idle_chats = await paced(http, claims, lambda: time.perf_counter() > window)
            beside, searches, chats = await build(http, claims)
            print(
                f"  space build beside requests      {beside:7.1f} s ({chunks / beside:6.1f} chunks/s, "
                f"{bare / beside:.2f}x the bare rate)"
            )
            print(f"  a search and a chat (20 tokens) every {1 / REQUESTS_PER_SECOND:.1f} s:")
            print(line("search", idle_searches, searches))
            print(line("chat", idle_chats, chats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=1000, help="the first N SciFact documents")
    parser.add_argument("--queries", type=int, default=100, help="SciFact claims asked, in turn")
    parser.add_argument("--read-check", action="store_true", help="only the cost of the check before each read")
    parser.add_argument("--idle-seconds", type=float, default=60.0, help="how long the idle requests run")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
