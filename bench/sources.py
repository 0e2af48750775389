"""Web sources, measured: what the web page parser keeps of a page's main text and drops of its menus, and what a
re-sync of a site costs against its first sync.

    .venv/bin/python bench/sources.py                  # 1,000 pages of SciFact abstracts, 1% changed
    .venv/bin/python bench/sources.py --pages 200      # a smoke run

1. Main text: SciFact abstracts, each in a page made as sites make them (bench/web_site.py: a header, a menu of
   links, a cookie banner and a footer around `<main>`), read by the web page parser (rag/ingest/formats/webpage.py)
   and, as the reference, by the upload HTML parser, which keeps every visible word. Printed: the share of the
   abstract's words kept and of the chrome's words kept (lower is better), and each parser's time per page.
2. Re-sync: the service (one process, as `make run` starts it: the bundled MiniLM) syncs a site on 127.0.0.1 whose
   index links to ten section pages, each linking to a tenth of the pages (max_depth 2); then 1% of the pages change
   and it is synced again. Printed: both syncs' times, their ratio (asked: <= 5%), and, as the reference for the
   first, plain httpx fetching the same URLs one after another. SOURCES_HOST_DELAY_SECONDS is 0 here: with the
   default 0.5 s of politeness per request, a thousand pages take eight minutes whatever else a sync costs.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.retrieval import DEFAULT_DATASET, read_jsonl
from bench.service_process import FakeUpstreamProcess, ServiceProcess
from bench.web_site import Site, page
from rag.ingest.formats.webpage import parse_web_page
from rag.ingest.parsers import parse_html
from tests.servers import serve

WORD = re.compile(r"[a-z]+")
CHROME = "Acme Docs Products Pricing Careers Menu entries Login Signup cookies improve experience Copyright Corporation"


def words(text: str) -> set[str]:
    return set(WORD.findall(text.lower()))


def main_text(corpus: list[dict]) -> None:
    menu = [f"/docs/{d['_id']}.html" for d in corpus[:30]]
    chrome = words(CHROME) | words(" ".join(menu))
    for name, parse in (
        ("web page parser", lambda m: parse_web_page(m, "http://h/").sections[0].text),
        ("upload HTML parser (reference)", parse_html),
    ):
        kept_content, kept_chrome, seconds = [], [], 0.0
        for doc in corpus:
            markup = page(doc.get("title") or "Abstract", doc["text"], menu)
            started = time.perf_counter()
            text = parse(markup)
            seconds += time.perf_counter() - started
            found, content = words(text), words(doc["text"]) - chrome
            kept_content.append(len(found & content) / max(1, len(content)))
            kept_chrome.append(len(found & (chrome - words(doc["text"]) - words(doc.get("title", "")))) / len(chrome))
        print(
            f"  {name:<31} main text kept {100 * sum(kept_content) / len(corpus):5.1f}%, chrome kept "
            f"{100 * sum(kept_chrome) / len(corpus):5.1f}%, {1000 * seconds / len(corpus):.2f} ms a page"
        )


def build(site: Site, corpus: list[dict], sections: int = 10) -> list[str]:
    paths = [f"/docs/s{n % sections}/{d['_id']}.html" for n, d in enumerate(corpus)]
    site.html("/docs/index.html", page("Index", "The manual.", [f"s{n}/index.html" for n in range(sections)]))
    for n in range(sections):
        mine = [p.rsplit("/", 1)[1] for p in paths[n::sections]]
        site.html(f"/docs/s{n}/index.html", page(f"Section {n}", f"Section {n} of the manual.", mine))
    for path, doc in zip(paths, corpus, strict=True):
        site.html(path, page(doc.get("title") or "Abstract", doc["text"], ["../index.html"]))
    return ["/docs/index.html", *(f"/docs/s{n}/index.html" for n in range(sections)), *paths]


def timed_sync(http: httpx.Client, source_id: str, number: int) -> tuple[float, dict]:
    started = time.perf_counter()
    if number > 1:
        http.post(f"/api/v1/sources/{source_id}/sync").raise_for_status()
    while True:
        body = http.get(f"/api/v1/sources/{source_id}").json()
        if body["sync"]["number"] >= number and body["sync"]["state"] in ("done", "failed"):
            return time.perf_counter() - started, body
        time.sleep(0.05)


def resync(corpus: list[dict], changed_share: float) -> None:
    site = Site()
    urls = build(site, corpus)
    settings = {
        "sources_allow_hosts": "127.0.0.1",
        "sources_host_delay_seconds": "0",
        "sources_poll_seconds": "0.2",
        "sources_max_pages": str(len(urls) + 10),
    }
    with (
        serve(site.app) as base,
        tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp,
        FakeUpstreamProcess(count=5, delay=0.0) as upstream,
        ServiceProcess(Path(tmp) / "data", upstream.url, **settings) as service,
    ):
        service.wait_ready()
        started = time.perf_counter()
        with httpx.Client() as bare:
            for path in urls:
                bare.get(f"{base}{path}").raise_for_status()
        plain = time.perf_counter() - started
        http = httpx.Client(base_url=service.url, timeout=60)
        body = {"url": f"{base}/docs/index.html", "max_pages": len(urls), "max_depth": 2}
        source = http.post("/api/v1/sources", json=body).json()
        first, one = timed_sync(http, source["id"], 1)
        changed = corpus[: max(1, int(len(corpus) * changed_share))]
        for n, doc in enumerate(changed):
            site.html(urls[11 + n], page(doc.get("title") or "Abstract", doc["text"] + " Revised.", ["../index.html"]))
        second, two = timed_sync(http, source["id"], 2)
    print(f"  plain httpx GET of the {len(urls):,} URLs, one after another: {plain:6.1f} s")
    print(f"  first sync: {first:6.1f} s ({one['sync']['pages']})")
    print(f"  re-sync, {len(changed)} pages changed: {second:6.2f} s ({two['sync']['pages']})")
    print(f"  re-sync / first sync: {100 * second / first:.1f}% (asked: <= 5%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=1000, help="SciFact abstracts, a page each")
    parser.add_argument("--changed", type=float, default=0.01, help="share of the pages changed before the re-sync")
    args = parser.parse_args()
    corpus = read_jsonl(DEFAULT_DATASET / "corpus.jsonl")[: args.pages]
    print(f"Main text of {len(corpus):,} pages (SciFact abstracts in a site's template):")
    main_text(corpus)
    print(f"A site of {len(corpus):,} pages and 11 index pages, through the service (bundled MiniLM):")
    resync(corpus, args.changed)


if __name__ == "__main__":
    main()
