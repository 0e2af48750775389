"""Uploads and ingestion jobs: parser speed per format, a job's embedding rate, and questions during a job.

    .venv/bin/python bench/ingest.py [--abstracts 200] [--job-abstracts 400] [--questions 20]

Each figure is printed beside its reference, measured in the same run:
- parsing: the same SciFact abstracts written as a PDF (one abstract per page), a DOCX, an HTML page, a Markdown
  file and a text file (files made here). "Pages" are abstracts: one PDF page each, so the formats compare. Our
  `parse()` (limits, checks, clean-up) against the bare library call, and for the two choices the alternatives
  measured: pypdf against pypdfium2, BeautifulSoup against selectolax;
- a job: SciFact abstracts uploaded as .txt files (ten to a file) to the service (a real process, default
  settings, fake upstream), chunks per second from the 202 to the job's `done`, against the bare ONNX session over
  the same chunk texts, one chunk per run and in padded batches of EMBEDDING_BATCH_SIZE, once the service stopped;
  and a large JSON add of as many abstracts (up to MAX_DOCUMENTS_PER_ADD; a job whose items are one document each),
  against the bare session one chunk per run;
- time to first token of `/api/v1/chat` (the fake upstream answers at once): p50 over sequential questions on the
  idle service, and while a job of the same size is embedding.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import sample_files
from bench.load import one_chat, percentile, service_with_upstream
from bench.retrieval import DEFAULT_DATASET
from config import Settings
from rag.chunking import split_text
from rag.ingest.parsers import parse


def abstracts(limit: int, skip: int = 0) -> list[str]:
    texts: list[str] = []
    with (DEFAULT_DATASET / "corpus.jsonl").open(encoding="utf-8") as handle:
        for n, line in enumerate(handle):
            if n < skip:
                continue
            doc = json.loads(line)
            texts.append(f"{doc['title']}\n{doc['text']}")
            if len(texts) == limit:
                break
    return texts


def best_of(runs: int, work: Callable[[], object]) -> float:
    """Seconds of the fastest of `runs` runs (the least disturbed by other work on the machine)."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def bench_parsers(texts: list[str]) -> None:
    import docx
    import pypdf
    import pypdfium2
    from bs4 import BeautifulSoup
    from markdown_it import MarkdownIt
    from selectolax.lexbor import LexborHTMLParser

    pages = len(texts)
    pdf = sample_files.pdf(texts)
    word = sample_files.docx([line for text in texts for line in text.split("\n", 1)])
    html = "".join(f"<section><h2>{t.split(chr(10))[0]}</h2><p>{t.split(chr(10), 1)[1]}</p></section>" for t in texts)
    html = f"<html><head><title>t</title><style>p {{}}</style></head><body>{html}</body></html>".encode()
    markdown = "\n\n".join(f"## {t.split(chr(10))[0]}\n\n{t.split(chr(10), 1)[1]}" for t in texts).encode()
    plain = "\n\n".join(texts).encode()

    def pdfium_bare() -> None:
        document = pypdfium2.PdfDocument(pdf)
        for page in document:
            page.get_textpage().get_text_range()

    def pypdf_bare() -> None:
        for page in pypdf.PdfReader(io.BytesIO(pdf)).pages:
            page.extract_text()

    def docx_bare() -> None:
        [p.text for p in docx.Document(io.BytesIO(word)).paragraphs]

    def markdown_bare() -> None:
        MarkdownIt("commonmark").parse(markdown.decode())

    rows = [
        ("PDF", "pdf", pdf, "pypdfium2 text per page", pdfium_bare),
        ("DOCX", "docx", word, "python-docx paragraphs", docx_bare),
        ("HTML", "html", html, "selectolax body text", lambda: LexborHTMLParser(html.decode()).body.text()),
        ("Markdown", "markdown", markdown, "markdown-it-py parse", markdown_bare),
        ("text", "text", plain, "bytes.decode", lambda: plain.decode()),
    ]
    print(f"parsing {pages} SciFact abstracts per format (a 'page' is one abstract; best of 5 runs)")
    print(f"{'format':<10}{'size':>10}{'parse() pages/s':>18}{'bare pages/s':>15}{'ratio':>8}  bare call")
    for label, kind, data, bare_label, bare in rows:
        ours = best_of(5, lambda data=data, kind=kind: parse(data, kind))  # type: ignore[misc]
        reference = best_of(5, bare)
        print(
            f"{label:<10}{len(data) / 1024:>8.0f}KB{pages / ours:>18,.0f}{pages / reference:>15,.0f}"
            f"{reference / ours:>8.2f}  {bare_label}"
        )
    pdfium, other = best_of(3, pdfium_bare), best_of(3, pypdf_bare)
    print(f"choice, PDF:  pypdfium2 {pages / pdfium:,.0f} pages/s   pypdf {pages / other:,.0f} pages/s")
    lexbor = best_of(5, lambda: LexborHTMLParser(html.decode()).body.text())
    soup = best_of(3, lambda: BeautifulSoup(html, "html.parser").get_text())
    print(f"choice, HTML: selectolax {pages / lexbor:,.0f} pages/s   BeautifulSoup (html.parser) {pages / soup:,.0f}")


def as_files(texts: list[str], per_file: int = 10) -> list[str]:
    """Abstracts joined ten to a file (an upload takes at most MAX_UPLOAD_FILES files)."""
    return ["\n\n".join(texts[i : i + per_file]) for i in range(0, len(texts), per_file)]


def upload_job(url: str, texts: list[str], tag: str) -> str:
    files = [("files", (f"{tag}-{n}.txt", text.encode(), "text/plain")) for n, text in enumerate(texts)]
    response = httpx.post(f"{url}/api/v1/documents/upload", files=files, timeout=120)
    response.raise_for_status()
    return response.json()["id"]


def wait_done(url: str, job_id: str) -> dict:
    while True:
        job = httpx.get(f"{url}/api/v1/jobs/{job_id}", timeout=30).json()
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.05)


async def first_tokens(url: str, questions: int, while_running: str | None = None) -> tuple[list[float], bool]:
    """TTFTs of sequential questions; with `while_running`, whether that job was still running after the last."""
    times: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        for n in range(questions):
            first, _, ok = await one_chat(client, f"Does vitamin D supplementation reduce fractures? ({n})")
            if not ok or first is None:
                raise RuntimeError("a question failed")
            times.append(first * 1000)
            await asyncio.sleep(0.2)
        if while_running is None:
            return times, False
        job = (await client.get(f"/api/v1/jobs/{while_running}")).json()
    return times, job["state"] == "running"


async def embedder_rate(settings: Settings, texts: list[str]) -> float:
    """The embedder's own rate: the service's embedder (its passes, lanes and threads) given every chunk at once,
    with nothing to parse, chunk or store: what a job's upload-to-done rate is set beside."""
    from rag.embedders.factory import build_embedder

    embedder = await build_embedder(settings)
    try:
        await embedder.embed_documents(texts[:8])  # warm-up
        started = time.perf_counter()
        await embedder.embed_documents(texts)
        return len(texts) / (time.perf_counter() - started)
    finally:
        await embedder.aclose()


def bench_job(job_abstracts: int, questions: int) -> None:
    settings = Settings(_env_file=None)
    first, second = as_files(abstracts(job_abstracts, skip=1000)), as_files(abstracts(job_abstracts, skip=3000))
    with service_with_upstream(delay=0.0, tokens=2) as service:
        httpx.post(f"{service.url}/api/v1/documents/add", json={"documents": abstracts(50)}, timeout=120)
        asyncio.run(first_tokens(service.url, 3))  # warm-up
        idle, _ = asyncio.run(first_tokens(service.url, questions))

        started = time.perf_counter()
        job = wait_done(service.url, upload_job(service.url, first, "a"))
        elapsed = time.perf_counter() - started
        assert job["state"] == "done", job
        chunks = job["chunks_total"]

        during_job = upload_job(service.url, second, "b")
        while httpx.get(f"{service.url}/api/v1/jobs/{during_job}").json()["chunks_done"] == 0:
            time.sleep(0.05)
        busy, still_running = asyncio.run(first_tokens(service.url, questions, during_job))
        wait_done(service.url, during_job)

        # A large JSON add: a job whose items are documents, most of them one chunk or two.
        documents = abstracts(min(job_abstracts, settings.max_documents_per_add), skip=4400)
        started = time.perf_counter()
        response = httpx.post(
            f"{service.url}/api/v1/documents/add", params={"wait": "false"}, json={"documents": documents}, timeout=120
        )
        response.raise_for_status()
        add_job = wait_done(service.url, response.json()["id"])
        add_elapsed = time.perf_counter() - started
        assert add_job["state"] == "done", add_job

    texts = [piece for text in first for piece in split_text(text, settings.chunk_size, settings.chunk_overlap)]
    assert len(texts) == chunks, (len(texts), chunks)
    from bench.embedding import bare_session, rate_of
    from rag.embedders.base import resolve_model_path
    from rag.embedders.onnx_export import onnx_file

    graph = onnx_file(settings.onnx_dir, settings.embedding_model)
    bare = bare_session(graph, Path(resolve_model_path(settings.embedding_model)))
    bare(["warm up"])
    one, batched = rate_of(bare, texts, 1), rate_of(bare, texts, settings.embedding_batch_size)
    own = asyncio.run(embedder_rate(settings, texts))
    rate = chunks / elapsed
    print(
        f"job of {job_abstracts} abstracts in {len(first)} .txt files, {chunks} chunks: {rate:.1f} chunks/s from "
        f"upload to done   the service's embedder alone over the same chunks {own:.1f} chunks/s (the job takes "
        f"{own / rate:.2f}x its time)   bare session, one chunk per run {one:.1f} chunks/s ({rate / one:.2f}x), in "
        f"padded batches of {settings.embedding_batch_size} {batched:.1f} chunks/s ({rate / batched:.2f}x)"
    )
    add_texts = [piece for text in documents for piece in split_text(text, settings.chunk_size, settings.chunk_overlap)]
    add_rate, add_one = len(add_texts) / add_elapsed, rate_of(bare, add_texts, 1)
    print(
        f"JSON add of {len(documents)} abstracts as a job (a document per item), {len(add_texts)} chunks: "
        f"{add_rate:.1f} chunks/s from the add to done   bare session, one chunk per run {add_one:.1f} chunks/s "
        f"({add_rate / add_one:.2f}x)"
    )
    idle_p50, busy_p50 = statistics.median(idle), statistics.median(busy)
    print(
        f"time to first token, p50 of {questions}: idle {idle_p50:.1f} ms   while a job embeds {busy_p50:.1f} ms   "
        f"(+{busy_p50 - idle_p50:.1f} ms; p90 {percentile(busy, 0.9):.1f} ms; job still running "
        f"after the last question: {still_running})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--abstracts", type=int, default=200, help="abstracts per format in the parser bench")
    parser.add_argument("--job-abstracts", type=int, default=400, help="files in each job")
    parser.add_argument("--questions", type=int, default=20)
    args = parser.parse_args()
    bench_parsers(abstracts(args.abstracts))
    bench_job(args.job_abstracts, args.questions)


if __name__ == "__main__":
    main()
