"""The audit log: who changed who may read a document, deleted one, or purged a user or an organisation, and when.

It records the act (`document.access`, `document.delete`, `user.purge`, `org.purge`), the actor (the credential's
kind, user and organisation, never the credential), the target's id and small details (the new access list); never a
document's text. Kept beside the other records: SQLite under DATA_DIR, or PostgreSQL when DATABASE_URL is set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: float
    action: str
    target: str
    org_id: str | None
    actor_kind: str
    actor_user: str | None
    details: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "action": self.action,
            "target": self.target,
            "orgId": self.org_id,
            "actor": {"kind": self.actor_kind, "userId": self.actor_user},
            "details": self.details,
        }


class AuditLog(Protocol):
    async def record(
        self,
        action: str,
        target: str,
        org_id: str | None,
        actor_kind: str,
        actor_user: str | None,
        details: dict[str, Any] | None = None,
    ) -> None: ...

    async def entries(self, org_id: str | None, limit: int, before: float | None = None) -> list[AuditEntry]:
        """Newest first; with `org_id`, only that organisation's."""
        ...

    async def forget_org(self, org_id: str) -> None:
        """Drop an organisation's entries but the purge's own (kept: the proof it happened)."""
        ...

    async def aclose(self) -> None: ...
