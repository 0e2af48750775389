"""Usage and quotas over HTTP (rag/usage/): what was spent over a period, grouped as asked, as JSON or CSV; and the
limits that hold for an organisation.

Who sees what: a user's credential (a token, or a key acting for a user) sees that user's own usage; an
organisation's key sees its organisation's (any user's, with `userId`); a trusted key (or an open service) any
organisation's, or all of them. Setting an organisation's limits needs a trusted key: an organisation does not raise
its own."""

from __future__ import annotations

import csv
import datetime
import io
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from api.admin import admin_org, require_trusted
from api.auth import PrincipalDep
from api.deps import ServicesDep
from api.schemas import ErrorBody
from rag.errors import InvalidRequest
from rag.usage.ledger import COUNTS, GROUPS, Limits

router = APIRouter(prefix="/usage", tags=["administration"])
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (403, 422)}
MOST = 10**15  # a limit past this is a mistake, not a budget
Limit = Annotated[int | None, Field(None, ge=1, le=MOST)]


def day(value: str | None, field: str, default: datetime.date) -> datetime.date:
    """A day named YYYY-MM-DD in a query; 422 for anything else."""
    if value is None:
        return default
    try:
        return datetime.date.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"{field}: {value!r} is not a date (YYYY-MM-DD)") from None


@router.get("", responses={200: {"content": {"text/csv": {}}}, **_ERRORS})
async def usage(
    services: ServicesDep,
    principal: PrincipalDep,
    start: Annotated[
        str | None, Query(alias="from", description="First day, YYYY-MM-DD (UTC); default: the 1st of this month.")
    ] = None,
    end: Annotated[str | None, Query(alias="to", description="Last day, YYYY-MM-DD; default: today.")] = None,
    group_by: Annotated[
        str | None, Query(description="Comma-separated: user, key, model, day, kind (org for a trusted key).")
    ] = None,
    output: Annotated[str, Query(alias="format", description="json or csv.")] = "json",
    userId: str | None = None,
    orgId: str | None = None,
) -> Any:
    """Totals over a period: requests, prompt and completion tokens (`estimated`: answers whose model reported no
    usage, counted from their characters), chunks and tokens embedded, bytes sent to be stored."""
    today = datetime.datetime.now(datetime.UTC).date()
    first = day(start, "from", today.replace(day=1))
    last = day(end, "to", today)
    if first > last:
        raise InvalidRequest(f"from: {first} is after to ({last})")
    groups = [g.strip() for g in (group_by or "").split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise InvalidRequest(f"group_by: unknown {', '.join(unknown)}; use {', '.join(GROUPS)}")
    if output not in ("json", "csv"):
        raise InvalidRequest(f"format: {output!r}; use json or csv")
    user_id, org_id = principal.scope(userId, orgId)  # a trusted key without orgId: every organisation
    rows = await services.usage.ledger.totals(first.isoformat(), last.isoformat(), org_id, user_id, groups)
    if output == "csv":
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow([*groups, *COUNTS])
        for row in rows:
            writer.writerow([row[name] for name in (*groups, *COUNTS)])
        return Response(text.getvalue(), media_type="text/csv")
    return {"from": first.isoformat(), "to": last.isoformat(), "org_id": org_id, "user_id": user_id, "rows": rows}


class LimitsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tokens_per_day: Limit = None
    tokens_per_month: Limit = None
    user_tokens_per_day: Limit = None
    user_tokens_per_month: Limit = None
    upload_bytes_per_day: Limit = None
    chunks: Limit = None


@router.get("/limits", responses=_ERRORS)
async def get_limits(services: ServicesDep, principal: PrincipalDep, orgId: str | None = None) -> dict[str, Any]:
    """The limits that hold for an organisation: its own where an admin set them, else the settings' defaults."""
    org_id = admin_org(principal, orgId)
    return {"org_id": org_id, "limits": services.usage.limits_of(org_id).as_dict()}


@router.put("/limits/{org_id}", responses=_ERRORS)
async def set_limits(org_id: str, body: LimitsBody, services: ServicesDep, principal: PrincipalDep) -> dict[str, Any]:
    """Set an organisation's own limits (null: the default); every replica applies them within a batch or two
    (USAGE_FLUSH_SECONDS)."""
    require_trusted(principal, "limits hold for")
    authenticator = services.authenticator
    known = org_id in authenticator.key_organisations or authenticator.takes_tokens  # a token may name any
    if not known and not await services.usage.ledger.knows_org(org_id):
        raise InvalidRequest(f"org_id: {org_id!r} is not an organisation of this service (no key names it, no usage)")
    limits = Limits(**body.model_dump())
    await services.usage.ledger.set_limits(org_id, limits)
    await services.audit.record("usage.limits", org_id, org_id, principal.kind, principal.user_id, limits.as_dict())
    return {"org_id": org_id, "limits": limits.over(services.usage.defaults).as_dict()}
