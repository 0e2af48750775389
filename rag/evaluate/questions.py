"""The questions file of `python -m rag.evaluate`: a JSON object per line with the question and what a right result
is: the ids of the documents that answer it (a list, or an object of ids to grades, higher more relevant), the
expected answer, or both. Other keys are kept out of the way (a file made from feedback carries the rated answer)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class BadQuestions(ValueError):
    """The questions file cannot be read; the message names the line."""


@dataclass(frozen=True, slots=True)
class Question:
    text: str
    relevant: dict[str, int]  # document id -> grade (> 0); empty when only an answer is expected
    expected_answer: str | None = None


def _relevant(documents: object) -> dict[str, int] | None:
    if isinstance(documents, list) and documents and all(isinstance(d, str) and d for d in documents):
        return dict.fromkeys(documents, 1)
    if (
        isinstance(documents, dict)
        and documents
        and all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v > 0
            for k, v in documents.items()
        )
    ):
        return dict(documents)
    return None


def json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, value) of each non-blank line of a JSON-lines file; BadQuestions naming the line otherwise."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadQuestions(f"{path}: {exc}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            raise BadQuestions(f"{path}:{number}: not JSON ({exc.msg})") from None


def read_questions(path: Path) -> list[Question]:
    questions = []
    for number, entry in json_lines(path):
        if not isinstance(entry, dict) or not isinstance(entry.get("question"), str) or not entry["question"].strip():
            raise BadQuestions(f'{path}:{number}: each line needs "question" (a non-empty string)')
        relevant: dict[str, int] | None = {}
        if "documents" in entry:
            relevant = _relevant(entry["documents"])
            if relevant is None:
                raise BadQuestions(
                    f'{path}:{number}: "documents" must be a non-empty list of document ids, or an object of ids to '
                    "positive integer grades"
                )
        expected = entry.get("expected_answer")
        if expected is not None and (not isinstance(expected, str) or not expected.strip()):
            raise BadQuestions(f'{path}:{number}: "expected_answer" must be a non-empty string')
        if not relevant and expected is None:
            hint = " (a line of GET /api/v1/feedback?format=questions: fill them in)" if "rated_answer" in entry else ""
            raise BadQuestions(f'{path}:{number}: needs "documents", "expected_answer" or both{hint}')
        questions.append(Question(entry["question"], relevant or {}, expected))
    if not questions:
        raise BadQuestions(f"{path}: no questions")
    return questions
