"""`python -m rag.evaluate QUESTIONS.jsonl`: how well retrieval finds the documents that answer your own questions.

Each line of the file is a question with the ids of the documents that answer it:

    {"question": "When does the heron nest?", "documents": ["heron-guide"]}
    {"question": "...", "documents": {"doc-a": 2, "doc-b": 1}}      (graded: higher is more relevant)

Every question is searched in each mode (dense, keyword, hybrid; `--modes` picks), against the service's own store
(the settings' DATA_DIR or DATABASE_URL, the active embedding space; the similarity threshold applies as in a chat)
or against a running instance over HTTP (`--url`, `--api-key`). Documents are ranked by their best chunk among the
top `--top-k` chunks. Printed, per mode: hit rate (a relevant document in the first 10), MRR@10, nDCG@10, recall@10,
and the search's p50 and p95 latency. `--json FILE` writes the same as a report for CI; `--min-ndcg`, `--min-mrr` and
`--min-hit-rate` make the command exit 1 when a mode misses one. A file that cannot be read exits 2, naming the line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MODES = ("dense", "keyword", "hybrid")
AT = 10  # the rank the figures are taken at
Search = Callable[[str, str], Awaitable[list[str]]]  # (question, mode) -> document ids, best first


class BadQuestions(ValueError):
    """The questions file cannot be read; the message names the line."""


@dataclass(frozen=True, slots=True)
class Question:
    text: str
    relevant: dict[str, int]  # document id -> grade (> 0)


@dataclass(frozen=True, slots=True)
class ModeReport:
    mode: str
    questions: int
    hit_rate: float
    mrr: float
    ndcg: float
    recall: float
    p50_ms: float
    p95_ms: float
    no_result: int  # questions that got nothing back (the similarity threshold's off-topic gate, or an empty store)


def read_questions(path: Path) -> list[Question]:
    questions = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadQuestions(f"{path}: {exc}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BadQuestions(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("question"), str) or not entry["question"].strip():
            raise BadQuestions(f'{path}:{number}: each line needs "question" (a non-empty string)')
        documents = entry.get("documents")
        if isinstance(documents, list) and documents and all(isinstance(d, str) and d for d in documents):
            relevant = dict.fromkeys(documents, 1)
        elif (
            isinstance(documents, dict)
            and documents
            and all(isinstance(k, str) and isinstance(v, int) and v > 0 for k, v in documents.items())
        ):
            relevant = dict(documents)
        else:
            raise BadQuestions(
                f'{path}:{number}: "documents" must be a non-empty list of document ids, or an object of ids to '
                "positive integer grades"
            )
        questions.append(Question(entry["question"], relevant))
    if not questions:
        raise BadQuestions(f"{path}: no questions")
    return questions


def ndcg_at(ranked: list[str], relevant: dict[str, int], k: int = AT) -> float:
    dcg = sum(relevant.get(doc, 0) / math.log2(i + 2) for i, doc in enumerate(ranked[:k]))
    ideal = sorted(relevant.values(), reverse=True)[:k]
    return dcg / sum(grade / math.log2(i + 2) for i, grade in enumerate(ideal))


def reciprocal_rank(ranked: list[str], relevant: dict[str, int], k: int = AT) -> float:
    return next((1.0 / (i + 1) for i, doc in enumerate(ranked[:k]) if relevant.get(doc, 0) > 0), 0.0)


def recall_at(ranked: list[str], relevant: dict[str, int], k: int = AT) -> float:
    return sum(1 for doc in ranked[:k] if doc in relevant) / len(relevant)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


async def evaluate(questions: list[Question], modes: list[str], search: Search) -> list[ModeReport]:
    reports = []
    for mode in modes:
        hits, mrrs, ndcgs, recalls, seconds, empty = [], [], [], [], [], 0
        for question in questions:
            started = time.perf_counter()
            ranked = await search(question.text, mode)
            seconds.append(time.perf_counter() - started)
            empty += not ranked
            hits.append(float(any(doc in question.relevant for doc in ranked[:AT])))
            mrrs.append(reciprocal_rank(ranked, question.relevant))
            ndcgs.append(ndcg_at(ranked, question.relevant))
            recalls.append(recall_at(ranked, question.relevant))
        n = len(questions)
        reports.append(
            ModeReport(
                mode,
                n,
                sum(hits) / n,
                sum(mrrs) / n,
                sum(ndcgs) / n,
                sum(recalls) / n,
                _percentile(seconds, 0.5),
                _percentile(seconds, 0.95),
                empty,
            )
        )
    return reports


def _documents_of(hits: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(hit["document_id"] for hit in hits))  # best chunk first: first sight is best


async def over_http(
    url: str, api_key: str | None, top_k: int, questions: list[Question], modes: list[str]
) -> list[ModeReport]:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers, timeout=120) as client:

        async def search(text: str, mode: str) -> list[str]:
            response = await client.get(
                "/api/v1/documents/search", params={"query": text, "top_k": top_k, "mode": mode}
            )
            if response.status_code != 200:
                raise RuntimeError(f"the service answered {response.status_code}: {response.text[:300]}")
            return _documents_of(response.json()["results"])

        return await evaluate(questions, modes, search)


async def over_own_store(top_k: int, questions: list[Question], modes: list[str]) -> list[ModeReport]:
    from config import get_settings
    from rag.commands import embedder_and_store
    from rag.retriever import Retriever

    settings = get_settings()
    async with embedder_and_store(settings) as (embedder, store):
        retriever = Retriever(embedder, store, top_k, settings.similarity_threshold, settings.retrieval_mode)

        async def search(text: str, mode: str) -> list[str]:
            hits = await retriever.retrieve(text, top_k, mode=mode)  # type: ignore[arg-type]
            return _documents_of([hit.as_dict() for hit in hits])

        return await evaluate(questions, modes, search)


def misses(reports: list[ModeReport], minimums: dict[str, float | None]) -> list[str]:
    """Each threshold a mode missed, said in words."""
    return [
        f"{report.mode}: {name} {getattr(report, name):.4f} < {minimum}"
        for report in reports
        for name, minimum in minimums.items()
        if minimum is not None and getattr(report, name) < minimum
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("questions", type=Path, help="a JSON line per question: question, documents")
    parser.add_argument("--url", help="a running instance (default: the service's own store, from the settings)")
    parser.add_argument("--api-key", help="its API key or user token (for --url)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: dense, keyword, hybrid")
    parser.add_argument(
        "--top-k", type=int, default=50, help="chunks retrieved per question (documents ranked by best)"
    )
    parser.add_argument("--json", type=Path, help="write the report here as JSON")
    parser.add_argument("--min-ndcg", type=float)
    parser.add_argument("--min-mrr", type=float)
    parser.add_argument("--min-hit-rate", type=float)
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        parser.error(f"--modes: unknown {', '.join(unknown) or '(none given)'}; use {', '.join(MODES)}")
    if args.top_k < AT:
        parser.error(f"--top-k must be at least {AT}: the figures are taken at rank {AT}")
    try:
        questions = read_questions(args.questions)
    except BadQuestions as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.url:
        reports = asyncio.run(over_http(args.url, args.api_key, args.top_k, questions, modes))
    else:
        reports = asyncio.run(over_own_store(args.top_k, questions, modes))
    print(f"{len(questions)} questions, documents ranked by their best chunk of the top {args.top_k}")
    columns = ("hit rate", "MRR@10", "nDCG@10", "recall@10", "p50 ms", "p95 ms")
    widths = (9, 8, 8, 9, 8, 8)
    print(f"{'mode':8} " + " ".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True)) + "  no result")
    for r in reports:
        print(
            f"{r.mode:8} {r.hit_rate:9.4f} {r.mrr:8.4f} {r.ndcg:8.4f} {r.recall:9.4f} {r.p50_ms:8.1f} {r.p95_ms:8.1f}"
            f"  {r.no_result}"
        )
    minimums = {"ndcg": args.min_ndcg, "mrr": args.min_mrr, "hit_rate": args.min_hit_rate}
    missed = misses(reports, minimums)
    if args.json:
        report = {"questions": len(questions), "top_k": args.top_k, "modes": [asdict(r) for r in reports],
                  "thresholds": minimums, "missed": missed}  # fmt: skip
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for line in missed:
        print(f"missed: {line}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
