"""`python -m rag.evaluate` on SciFact, beside the service's published figures (bench/retrieval_http.py, the same
service and settings): the command must reproduce them.

    .venv/bin/python bench/evaluate_scifact.py

A fresh service (`python main.py`, default settings, the bundled MiniLM) ingests SciFact's 5,183 abstracts; the 300
test claims with their qrels are written as a questions file (in a temporary folder, not the repository), and the
command runs against the service over HTTP in each mode, then against its own store with the service stopped.
Printed: each mode's nDCG@10 beside the published one, and the difference (asked: within 0.005).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.retrieval import read_jsonl, read_qrels
from bench.retrieval_http import ingest
from bench.service_process import PROJECT_DIR, ServiceProcess

DATASET = PROJECT_DIR.parent / "shared" / "datasets" / "scifact"
PUBLISHED = {"hybrid": 0.7269, "dense": 0.6637, "keyword": 0.6742}  # docs/benchmarks.md, "Retrieval quality"


def run_command(questions: Path, report: Path, *args: str, env: dict[str, str] | None = None) -> dict:
    command = [sys.executable, "-m", "rag.evaluate", str(questions), "--json", str(report), *args]
    done = subprocess.run(command, cwd=PROJECT_DIR, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    print(done.stdout)
    return {m["mode"]: m for m in json.loads(report.read_text())["modes"]}


def main() -> None:
    corpus = read_jsonl(DATASET / "corpus.jsonl")
    queries = {q["_id"]: q["text"] for q in read_jsonl(DATASET / "queries.jsonl")}
    qrels = {q: rel for q, rel in read_qrels(DATASET / "qrels_test.tsv").items() if q in queries}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        questions = Path(tmp) / "scifact-test.jsonl"
        lines = [json.dumps({"question": queries[q], "documents": rel}) for q, rel in qrels.items()]
        questions.write_text("\n".join(lines) + "\n", encoding="utf-8")
        data = Path(tmp) / "data"
        with ServiceProcess(data, "http://127.0.0.1:9/v1") as service:
            service.wait_ready()
            with httpx.Client(base_url=service.url, timeout=60) as client:
                ingest(client, corpus, 256)
            print(f"SciFact: {len(corpus):,} abstracts, {len(qrels)} test claims; over HTTP:")
            over_http = run_command(questions, Path(tmp) / "http.json", "--url", service.url)
        print("the service's own store, the service stopped:")
        own = run_command(questions, Path(tmp) / "own.json", env={"DATA_DIR": str(data)})
    for mode, published in PUBLISHED.items():
        http_ndcg, own_ndcg = over_http[mode]["ndcg"], own[mode]["ndcg"]
        print(
            f"  {mode:8} nDCG@10 over HTTP {http_ndcg:.4f}, own store {own_ndcg:.4f}; published {published:.4f} "
            f"(differences {http_ndcg - published:+.4f}, {own_ndcg - published:+.4f})"
        )


if __name__ == "__main__":
    main()
