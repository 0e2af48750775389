"""`python -m rag.evaluate` on a PubMedQA sample: the output that docs/evaluation.md shows, made again.

    .venv/bin/python bench/evaluate_pubmedqa.py [--questions 30] [--answers 10]

A fresh service (`python main.py` as `make run` starts it: the bundled MiniLM, the local SmolLM2) ingests PubMedQA's
1,000 abstracts. The first `--questions` test questions are written as a questions file (in a temporary folder, not
the repository), each with its abstract as the document that answers it, the first `--answers` of them also with
their expected answer (the dataset's yes/no decision and long answer). Then, printed as the command prints them:

1. over HTTP: a sweep of `--top-k 10,50` and `--fusion-weight 0.5,0.7,0.9`, and the answers graded (by SmolLM2, the
   settings' model, run by the command itself);
2. on this machine: `--corpus` and `--chunk-size 500,1000,2000`, hybrid, each chunk size a store of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.retrieval import read_jsonl
from bench.retrieval_http import ingest
from bench.service_process import PROJECT_DIR, ServiceProcess

DATASET = PROJECT_DIR.parent / "shared" / "datasets" / "pubmedqa"


def run(*args: str, env: dict[str, str] | None = None) -> None:
    command = [sys.executable, "-m", "rag.evaluate", *args]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=PROJECT_DIR, capture_output=True, text=True, env={**os.environ, **(env or {})})
    print("$ python -m rag.evaluate " + " ".join(Path(a).name if a.startswith("/") else a for a in args))
    print(done.stdout, end="")
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    print(f"({time.perf_counter() - started:.0f} s)\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=30)
    parser.add_argument("--answers", type=int, default=10)
    args = parser.parse_args()
    corpus = read_jsonl(DATASET / "corpus.jsonl")
    tests = [q for q in read_jsonl(DATASET / "questions.jsonl") if q["split"] == "test"][: args.questions]
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        lines = []
        for n, q in enumerate(tests):
            line: dict = {"question": q["question"], "documents": q["gold_doc_ids"]}
            if n < args.answers:
                line["expected_answer"] = f"{q['final_decision'].capitalize()}. {q['long_answer']}"
            lines.append(json.dumps(line))
        questions = Path(tmp) / "pubmedqa-sample.jsonl"
        questions.write_text("\n".join(lines) + "\n", encoding="utf-8")
        corpus_file = Path(tmp) / "corpus.jsonl"
        corpus_file.write_text("".join(json.dumps(d) + "\n" for d in corpus), encoding="utf-8")
        print(f"PubMedQA: {len(corpus):,} abstracts, {len(tests)} test questions, {args.answers} with answers\n")
        with ServiceProcess(Path(tmp) / "data", None) as service:
            service.wait_ready(300)
            with httpx.Client(base_url=service.url, timeout=600) as client:
                ingest(client, corpus, 256)
            sweep = ["--top-k", "10,50", "--fusion-weight", "0.5,0.7,0.9", "--answers"]
            run(str(questions), "--url", service.url, *sweep)
        run(str(questions), "--modes", "hybrid", "--corpus", str(corpus_file), "--chunk-size", "500,1000,2000",
            env={"DATA_DIR": str(Path(tmp) / "empty")})  # fmt: skip


if __name__ == "__main__":
    main()
