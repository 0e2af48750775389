"""Feedback on answers, for an organisation's administrators: every rating given over a period, with the answer, its
question and what produced it, as JSON, CSV (`Accept: text/csv` or `format=csv`), or as a questions file for
`python -m rag.evaluate` (`format=questions`: one JSON line per rated question, its answer and the documents it was
built from, so that a team can label the right documents and test a fix).

Who sees what is the administrative rule (api/admin.py): an organisation's key sees its organisation's feedback, a
trusted key any organisation's or all; a user's credential gets 403 (a user reads their own ratings in their chats).
"""

from __future__ import annotations

import csv
import datetime
import io
import json
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from fastapi.responses import Response

from api.admin import admin_org
from api.auth import PrincipalDep
from api.deps import ServicesDep
from api.schemas import ErrorBody
from api.usage import day
from rag.chats.feedback import Feedback, Rating
from rag.errors import InvalidRequest

router = APIRouter(prefix="/feedback", tags=["administration"])
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (403, 422)}
FORMATS = ("json", "csv", "questions")
CSV_COLUMNS = (
    "updated_at", "chat_id", "message_index", "user_id", "org_id", "rating", "reason", "comment", "question", "answer",
    "documents", "mode", "top_k", "model",
)  # fmt: skip


def _documents(feedback: Feedback) -> list[str]:
    """The answer's source documents, best first, each once."""
    return list(dict.fromkeys(s["document_id"] for s in feedback.details.get("sources", [])))


def _csv(rows: list[Feedback]) -> str:
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(CSV_COLUMNS)
    for f in rows:
        iso = datetime.datetime.fromtimestamp(f.updated_at, datetime.UTC).isoformat(timespec="seconds")
        settings = [f.details.get(name, "") for name in ("mode", "top_k", "model")]
        writer.writerow([
            iso, f.chat_id, f.message_index, f.user_id, f.org_id or "", f.rating, f.reason or "", f.comment or "",
            f.question, f.answer, " ".join(_documents(f)), *settings,
        ])  # fmt: skip
    return text.getvalue()


def _questions(rows: list[Feedback]) -> str:
    """A questions file for `python -m rag.evaluate`: the rated answer and its sources travel as `rated_answer`
    and `answer_documents`; `documents` (the right ones) and `expected_answer` are for the team to fill in."""
    lines = []
    for f in rows:
        entry = {
            "question": f.question,
            "rating": f.rating,
            "rated_answer": f.answer,
            "answer_documents": _documents(f),
            "reason": f.reason,
            "comment": f.comment,
            "chat_id": f.chat_id,
        }
        lines.append(json.dumps(entry, ensure_ascii=False))
    return "".join(line + "\n" for line in lines)


@router.get("", responses={200: {"content": {"text/csv": {}, "application/x-ndjson": {}}}, **_ERRORS})
async def list_feedback(
    services: ServicesDep,
    principal: PrincipalDep,
    start: Annotated[
        str | None, Query(alias="from", description="First day, YYYY-MM-DD (UTC); default: 30 days ago.")
    ] = None,
    end: Annotated[str | None, Query(alias="to", description="Last day, YYYY-MM-DD; default: today.")] = None,
    rating: Annotated[Rating | None, Query(description="Only 'up' or only 'down'.")] = None,
    output: Annotated[str | None, Query(alias="format", description="json, csv or questions.")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    offset: Annotated[int, Query(ge=0)] = 0,
    orgId: str | None = None,
    userId: str | None = None,
    accept: Annotated[str, Header()] = "",
) -> Any:
    """Ratings given in the period (by when last given), newest first, with the rated answer, its question, its
    sources' ids and the settings that produced it."""
    org_id = admin_org(principal, orgId)
    today = datetime.datetime.now(datetime.UTC).date()
    first = day(start, "from", today - datetime.timedelta(days=30))
    last = day(end, "to", today)
    if first > last:
        raise InvalidRequest(f"from: {first} is after to ({last})")
    output = output or ("csv" if "text/csv" in accept else "json")
    if output not in FORMATS:
        raise InvalidRequest(f"format: {output!r}; use {', '.join(FORMATS)}")
    since = datetime.datetime.combine(first, datetime.time(), datetime.UTC).timestamp()
    until = datetime.datetime.combine(last + datetime.timedelta(days=1), datetime.time(), datetime.UTC).timestamp()
    rows = await services.conversations.feedback(since, until, org_id, userId, rating, limit, offset)
    if output == "csv":
        return Response(_csv(rows), media_type="text/csv")
    if output == "questions":
        return Response(_questions(rows), media_type="application/x-ndjson")
    return {
        "from": first.isoformat(),
        "to": last.isoformat(),
        "org_id": org_id,
        "feedback": [f.as_dict() for f in rows],
    }
