"""Whole answers graded: each question with an expected answer is answered through the real pipeline (a running
instance's `POST /api/v1/chat`, or the service's own store and model), then a grader model (the one the settings
configure) compares the answer with the expected one. Also scored: whether the answer cites a right source (a
`[n]` citation of a chunk of one of the question's documents), when the question names its documents.

The grader's prompt is `GRADER_PROMPT` (docs/evaluation.md shows it); its reply is read for its first grade word."""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llm.types import GenerationOptions, Message
from rag.evaluate.metrics import percentile_ms
from rag.evaluate.questions import Question

if TYPE_CHECKING:
    from llm.types import ChatModel

GRADER_PROMPT = """You grade the answers of a question-answering system against the expected answer.

Question: {question}

Expected answer: {expected}

Answer to grade: {answer}

Does the answer to grade say what the expected answer says? Reply with one word:
correct (it does, with or without more detail),
partial (it says part of it, or adds something that contradicts it),
incorrect (it does not, or it declines to answer)."""
GRADES = {"correct": 1.0, "partial": 0.5, "incorrect": 0.0}
_GRADE = re.compile(r"\b(incorrect|partial|correct)\b", re.IGNORECASE)
_CITATION = re.compile(r"\[(\d{1,3})\]")


@dataclass(frozen=True, slots=True)
class Answered:
    text: str
    sources: list[str]  # the document id of each source, in the order the answer numbers them
    seconds: float


@dataclass(frozen=True, slots=True)
class GradedAnswer:
    question: str
    expected_answer: str
    answer: str
    grade: str  # correct, partial, incorrect, or ungraded (the grader said none of them)
    cites_right_source: bool | None  # None: the question names no documents
    seconds: float


@dataclass(frozen=True, slots=True)
class AnswerReport:
    answered: int
    accuracy: float  # the mean grade: correct 1, partial 0.5, incorrect (and ungraded) 0
    correct: int
    partial: int
    incorrect: int
    ungraded: int
    cites_right_source: float | None  # the share of answers, among questions naming their documents
    p50_ms: float
    p95_ms: float


Answerer = Callable[[str], Awaitable[Answered]]


def read_grade(reply: str) -> str:
    found = _GRADE.search(reply)
    return found.group(1).lower() if found else "ungraded"


def cites_right_source(answer: Answered, relevant: dict[str, int]) -> bool | None:
    if not relevant:
        return None
    cited = {int(n) for n in _CITATION.findall(answer.text)}
    return any(answer.sources[n - 1] in relevant for n in cited if 1 <= n <= len(answer.sources))


async def grade(grader: ChatModel, question: Question, answer: Answered) -> str:
    assert question.expected_answer is not None
    prompt = GRADER_PROMPT.format(question=question.text, expected=question.expected_answer, answer=answer.text)
    reply = []
    async for delta in grader.stream([Message("user", prompt)], GenerationOptions(max_tokens=16, temperature=0.0)):
        reply.append(delta.content or "")
    return read_grade("".join(reply))


async def grade_answers(
    questions: list[Question], answer: Answerer, grader: ChatModel
) -> tuple[AnswerReport | None, list[GradedAnswer]]:
    """Each question with an expected answer, answered and graded in turn; no report when none has one."""
    graded = []
    for question in questions:
        if question.expected_answer is None:
            continue
        answered = await answer(question.text)
        graded.append(
            GradedAnswer(
                question.text,
                question.expected_answer,
                answered.text,
                await grade(grader, question, answered),
                cites_right_source(answered, question.relevant),
                answered.seconds,
            )
        )
    if not graded:
        return None, []
    counts = {name: sum(1 for g in graded if g.grade == name) for name in (*GRADES, "ungraded")}
    cited = [g.cites_right_source for g in graded if g.cites_right_source is not None]
    seconds = [g.seconds for g in graded]
    report = AnswerReport(
        len(graded),
        sum(GRADES.get(g.grade, 0.0) for g in graded) / len(graded),
        counts["correct"],
        counts["partial"],
        counts["incorrect"],
        counts["ungraded"],
        sum(cited) / len(cited) if cited else None,
        percentile_ms(seconds, 0.5),
        percentile_ms(seconds, 0.95),
    )
    return report, graded


def http_answerer(client: Any) -> Answerer:
    """Answers from a running instance's `POST /api/v1/chat` (not streamed), with its sources."""

    async def answer(text: str) -> Answered:
        started = time.perf_counter()
        body = {"messages": [{"role": "user", "content": text}], "stream": False}
        response = await client.post("/api/v1/chat", json=body)
        if response.status_code != 200:
            raise RuntimeError(f"the service answered {response.status_code}: {response.text[:300]}")
        data = response.json()
        return Answered(data["content"], [s["document_id"] for s in data["sources"]], time.perf_counter() - started)

    return answer


def pipeline_answerer(pipeline: Any) -> Answerer:
    """Answers from the service's own pipeline (rag.pipeline.ChatPipeline) over its own store and model."""
    from rag.pipeline import ChatRequest

    async def answer(text: str) -> Answered:
        started = time.perf_counter()
        stream = await pipeline.start(ChatRequest([Message("user", text)]))
        whole = await stream.collect()
        if whole.error is not None:
            raise RuntimeError(f"the answer failed: {whole.error.message}")
        return Answered(whole.content, [h.chunk.document_id for h in whole.sources], time.perf_counter() - started)

    return answer
