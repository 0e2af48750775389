"""What parsing uploads in confined processes costs, and what it protects.

    .venv/bin/python bench/parse_isolation.py [--abstracts 200] [--requests 30]

Each figure beside its reference, measured in the same run:
- per file: SciFact abstracts written as a PDF (a page each), a DOCX and an HTML page (each over 100 KB), parsed by
  a warm `ParserPool` process (the service's path: the file is read there, the text comes back as JSON) against
  `parse()` called in this process on the same file. Best of 7 runs each;
- the service while hostile files are parsed: p50 latency of `/api/v1/health`, `/api/v1/documents/search` and the
  chat's first token (fake upstream in its own process, answering at once), on the idle service and while one
  upload of a 200,000-deep HTML file (a minute of CPU) and a DOCX whose lxml tree needs 1.4 GB is parsed, both
  parser processes busy; with the service's peak resident memory over the whole run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import sample_files
from bench.ingest import abstracts
from bench.load import one_chat, rss_mib, service_with_upstream
from rag.ingest.parser_pool import ParserPool
from rag.ingest.parsers import FileKind, ParseLimits, parse


async def best_of(runs: int, work: Callable[[], Awaitable[object]]) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        await work()
        times.append(time.perf_counter() - started)
    return min(times)


def best_of_here(runs: int, path: Path, kind: FileKind) -> float:
    """The same work in this process: read the file, parse it."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        parse(path.read_bytes(), kind)
        times.append(time.perf_counter() - started)
    return min(times)


async def bench_per_file(texts: list[str]) -> None:
    files: list[tuple[str, FileKind, bytes]] = [
        ("PDF", "pdf", sample_files.pdf(texts)),
        ("DOCX", "docx", sample_files.docx([line for text in texts for line in text.split("\n", 1)])),
        ("HTML", "html", ("<html><body>" + "".join(f"<p>{t}</p>" for t in texts) + "</body></html>").encode()),
    ]
    pool = ParserPool(ParseLimits())
    print(f"parsing one file of {len(texts)} SciFact abstracts: a warm parser process against parse() in-process")
    print(f"{'format':<8}{'size':>10}{'in-process':>13}{'parser process':>17}{'ratio':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for label, kind, data in files:
            path = Path(tmp) / f"file.{kind}"
            path.write_bytes(data)

            async def apart(path: Path = path, kind: FileKind = kind) -> None:
                await pool.parse(path, kind)

            await apart()  # the process starts and loads its libraries once
            reference = best_of_here(7, path, kind)
            ours = await best_of(7, apart)
            print(
                f"{label:<8}{len(data) / 1024:>8.0f}KB{reference * 1000:>10.1f} ms{ours * 1000:>14.1f} ms"
                f"{ours / reference:>8.2f}"
            )
    await pool.aclose()


async def latencies(url: str, requests: int) -> dict[str, float]:
    """p50 in ms of each kind of request, sequential."""
    found: dict[str, list[float]] = {"health": [], "search": [], "chat first token": []}
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        for n in range(requests):
            started = time.perf_counter()
            (await client.get("/api/v1/health")).raise_for_status()
            found["health"].append(time.perf_counter() - started)
            started = time.perf_counter()
            params = {"query": f"vitamin D and bone fractures {n}"}
            (await client.get("/api/v1/documents/search", params=params)).raise_for_status()
            found["search"].append(time.perf_counter() - started)
            first, _, ok = await one_chat(client, f"Does vitamin D reduce fractures? ({n})")
            if not ok or first is None:
                raise RuntimeError("a question failed")
            found["chat first token"].append(first)
            await asyncio.sleep(0.05)
    return {name: statistics.median(values) * 1000 for name, values in found.items()}


def bench_service(requests: int) -> None:
    hostile = [
        ("files", ("deep.html", sample_files.nested_html(200_000), "text/html")),
        ("files", ("huge.docx", sample_files.docx_huge_xml(), "application/octet-stream")),
    ]
    with service_with_upstream(delay=0.0, tokens=2) as service:
        httpx.post(f"{service.url}/api/v1/documents/add", json={"documents": abstracts(50)}, timeout=120)
        asyncio.run(latencies(service.url, 3))  # warm-up
        idle = asyncio.run(latencies(service.url, requests))
        job = httpx.post(f"{service.url}/api/v1/documents/upload", files=hostile, timeout=120).json()["id"]
        while httpx.get(f"{service.url}/api/v1/jobs/{job}").json()["files"][0]["state"] != "parsing":
            time.sleep(0.05)
        busy = asyncio.run(latencies(service.url, requests))
        state = httpx.get(f"{service.url}/api/v1/jobs/{job}").json()
        still = [f["name"] for f in state["files"] if f["state"] == "parsing"]
        print(f"the service idle, and while a hostile upload is parsed (p50 of {requests} sequential requests each)")
        for name, reference in idle.items():
            print(
                f"  {name:<18} idle {reference:7.2f} ms   during {busy[name]:7.2f} ms   ({busy[name] / reference:.2f}x)"
            )
        print(f"  still parsing after the last request: {', '.join(still) or 'nothing'}")
        print(f"  service peak resident memory over the whole run: {rss_mib(service.process.pid, 'VmHWM'):.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--abstracts", type=int, default=200, help="abstracts in each per-file bench file")
    parser.add_argument("--requests", type=int, default=30, help="requests of each kind, idle and during")
    args = parser.parse_args()
    asyncio.run(bench_per_file(abstracts(args.abstracts)))
    bench_service(args.requests)


if __name__ == "__main__":
    main()
