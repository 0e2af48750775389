"""The command line of `python -m rag.evaluate` (the package's docstring says what it does)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import rag.evaluate
from rag.evaluate.answers import AnswerReport, GradedAnswer, grade_answers, http_answerer, pipeline_answerer
from rag.evaluate.metrics import AT
from rag.evaluate.questions import BadQuestions, Question, read_questions
from rag.evaluate.retrieval import (
    MODES,
    RetrievalReport,
    Setting,
    configured_retriever,
    evaluate_retrieval,
    grid,
    http_search,
    own_reports,
    read_corpus,
)

Outcome = tuple[list[RetrievalReport], AnswerReport | None, list[GradedAnswer]]


def _list(kind: type, name: str, low: float, high: float | None = None):  # type: ignore[no-untyped-def]
    """An argparse type: comma-separated values of `kind` within [low, high]."""

    def parse(text: str) -> list[Any]:
        try:
            values = [kind(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: {text!r} is not a comma-separated list of numbers") from None
        if not values or any(v < low or (high is not None and v > high) for v in values):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"{name}: each value must be {bounds}")
        return list(dict.fromkeys(values))

    return parse


async def over_http(args: argparse.Namespace, questions: list[Question], settings: list[Setting]) -> Outcome:
    import httpx

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    async with httpx.AsyncClient(base_url=args.url.rstrip("/"), headers=headers, timeout=300) as client:
        reports = await evaluate_retrieval(questions, settings, http_search(client)) if settings else []
        if not args.answers:
            return reports, None, []
        from config import get_settings
        from llm.factory import build_chat_model

        grader = await build_chat_model(get_settings())
        try:
            return reports, *await grade_answers(questions, http_answerer(client), grader)
        finally:
            await grader.aclose()


async def over_own_store(args: argparse.Namespace, questions: list[Question], settings: list[Setting]) -> Outcome:
    from config import get_settings

    config = get_settings()
    corpus = read_corpus(args.corpus) if args.corpus else None
    reports = await own_reports(config, questions, settings, corpus) if settings else []
    if not args.answers:
        return reports, None, []
    from llm.factory import build_chat_model
    from rag.commands import embedder_and_store
    from rag.pipeline import ChatPipeline

    async with embedder_and_store(config) as (embedder, store):
        llm = await build_chat_model(config)
        try:
            retriever = configured_retriever(config, embedder, store)
            pipeline = ChatPipeline(retriever, llm, history_budget_tokens=config.history_token_budget)
            return reports, *await grade_answers(questions, pipeline_answerer(pipeline), llm)
        finally:
            await llm.aclose()


def print_retrieval(reports: list[RetrievalReport], labelled: int, sweep: bool) -> None:
    print(f"{labelled} questions with documents, documents ranked by their best chunk")
    columns = ("hit rate", "MRR@10", "nDCG@10", "recall@10", "p50 ms", "p95 ms")
    widths = (9, 8, 8, 9, 8, 8)
    setting = f"{'top_k':>6} {'weight':>6} {'chunks':>6} " if sweep else ""
    print(f"{'mode':8} {setting}" + " ".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True)) + "  no result")
    for r in reports:
        where = ""
        if sweep:
            weight = f"{r.fusion_weight:.2f}" if r.fusion_weight is not None else "-"
            where = f"{r.top_k:>6} {weight:>6} {r.chunk_size or 'store':>6} "
        print(
            f"{r.mode:8} {where}{r.hit_rate:9.4f} {r.mrr:8.4f} {r.ndcg:8.4f} {r.recall:9.4f} {r.p50_ms:8.1f} "
            f"{r.p95_ms:8.1f}  {r.no_result}"
        )


def print_answers(report: AnswerReport) -> None:
    cited = f"{report.cites_right_source:.4f}" if report.cites_right_source is not None else "-"
    print(
        f"{report.answered} answers graded against the expected ones: accuracy {report.accuracy:.4f} "
        f"({report.correct} correct, {report.partial} partial, {report.incorrect} incorrect, "
        f"{report.ungraded} ungraded); citing a right source {cited}; answer p50 {report.p50_ms:.0f} ms, "
        f"p95 {report.p95_ms:.0f} ms"
    )


def misses(
    baseline: list[RetrievalReport], answers: AnswerReport | None, minimums: dict[str, float | None]
) -> list[str]:
    """Each threshold missed, said in words: the retrieval ones per mode at the baseline setting."""
    missed = [
        f"{report.mode}: {name} {getattr(report, name):.4f} < {minimum}"
        for report in baseline
        for name in ("ndcg", "mrr", "hit_rate")
        if (minimum := minimums[name]) is not None and getattr(report, name) < minimum
    ]
    minimum = minimums["accuracy"]
    if minimum is not None and answers is not None and answers.accuracy < minimum:
        missed.append(f"answers: accuracy {answers.accuracy:.4f} < {minimum}")
    return missed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rag.evaluate",
        description=rag.evaluate.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("questions", type=Path, help="a JSON line per question: question, documents, expected_answer")
    parser.add_argument("--url", help="a running instance (default: the service's own store, from the settings)")
    parser.add_argument("--api-key", help="its API key or user token (for --url)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: dense, keyword, hybrid")
    parser.add_argument(
        "--top-k", type=_list(int, "--top-k", AT), default=[50], help="chunks retrieved per question, e.g. 20,50"
    )
    parser.add_argument(
        "--fusion-weight", type=_list(float, "--fusion-weight", 0, 1), help="hybrid: the dense leg's shares to try"
    )
    parser.add_argument("--chunk-size", type=_list(int, "--chunk-size", 100), help="chunk sizes to try (--corpus)")
    parser.add_argument("--corpus", type=Path, help='the documents, a JSON line each: "id", "text" (for --chunk-size)')
    parser.add_argument("--answers", action="store_true", help="answer and grade the questions with expected answers")
    parser.add_argument("--json", type=Path, help="write the report here as JSON")
    parser.add_argument("--min-ndcg", type=float)
    parser.add_argument("--min-mrr", type=float)
    parser.add_argument("--min-hit-rate", type=float)
    parser.add_argument("--min-accuracy", type=float)
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        parser.error(f"--modes: unknown {', '.join(unknown) or '(none given)'}; use {', '.join(MODES)}")
    if bool(args.chunk_size) != bool(args.corpus):
        parser.error("--chunk-size and --corpus go together: the corpus is stored again in chunks of each size")
    if args.chunk_size and args.url:
        parser.error("--chunk-size builds stores of its own: it runs on this machine, not with --url")
    try:
        questions = read_questions(args.questions)
    except BadQuestions as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    labelled = sum(1 for q in questions if q.relevant)
    settings = grid(modes, args.top_k, args.fusion_weight, args.chunk_size) if labelled else []
    try:
        run = over_http if args.url else over_own_store
        reports, answers, graded = asyncio.run(run(args, questions, settings))
    except BadQuestions as exc:  # the corpus
        print(f"error: {exc}", file=sys.stderr)
        return 2
    weight, chunk_size = (args.fusion_weight or [None])[0], (args.chunk_size or [None])[0]
    baseline = [
        r
        for r in reports
        if (r.top_k, r.chunk_size) == (args.top_k[0], chunk_size)
        and r.fusion_weight == (weight if r.mode == "hybrid" else None)
    ]
    sweep = len(reports) > len(baseline)
    if reports:
        print_retrieval(reports, labelled, sweep)
    if answers is not None:
        print_answers(answers)
    elif args.answers:
        print("no question has an expected answer: nothing to grade")
    minimums = {
        "ndcg": args.min_ndcg,
        "mrr": args.min_mrr,
        "hit_rate": args.min_hit_rate,
        "accuracy": args.min_accuracy,
    }
    missed = misses(baseline, answers, minimums)
    if args.json:
        report = {
            "questions": len(questions),
            "labelled": labelled,
            "top_k": args.top_k[0],
            "modes": [asdict(r) for r in baseline],
            "sweep": [asdict(r) for r in reports],
            "answers": asdict(answers) if answers is not None else None,
            "graded": [asdict(g) for g in graded],
            "thresholds": minimums,
            "missed": missed,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for line in missed:
        print(f"missed: {line}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
