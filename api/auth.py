"""Who is calling, from the credential alone: API keys (trusted, or bound to one organisation) and signed user tokens.

Credentials come from `Authorization: Bearer ...` or `X-API-Key: ...`, and on WebSocket also from `?api_key=` or
`?access_token=` (browsers cannot set headers there). A bearer value shaped like a JWT is verified as one when
JWT_SECRET (HS256) or JWT_PUBLIC_KEY (RS256, ES256) is set: signature, expiry, not-before and, when JWT_AUDIENCE is
set, the audience, with JWT_LEEWAY_SECONDS of clock skew; its `sub` is the user and its JWT_ORG_CLAIM the
organisation. Keys are compared in constant time against every configured key; neither keys nor tokens are logged.

The result is a `Principal`. Whenever it carries a tenant, that tenant wins: `Principal.scope()` fills in what a
request left out and refuses, with 403, a request that names another user or organisation.

Who may read which document is one more value on it, `Principal.reader` (see `rag/access.py`): a token's user and
its groups (the JWT_GROUPS_CLAIM claim), or the end user a key narrows itself to with `X-On-Behalf-Of` and
`X-On-Behalf-Of-Groups`. Narrowing only takes away: a token's holder sending those headers is refused (403).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, HTTPException, WebSocketException, status
from starlette.requests import HTTPConnection

from config import Settings
from llm.tracing import tracer
from rag.access import Reader
from rag.errors import TenantForbidden

PrincipalKind = Literal["anonymous", "key", "scoped_key", "token"]
HS_ALGORITHMS = ["HS256"]
PUBLIC_KEY_ALGORITHMS = ["RS256", "ES256"]


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller. A trusted key or an open service (`anonymous`) may name any tenant; a scoped key is bound to an
    organisation; a token to a user and an organisation."""

    kind: PrincipalKind
    user_id: str | None = None
    org_id: str | None = None
    groups: frozenset[str] = frozenset()
    narrowed: bool = False  # a key acting for one end user (X-On-Behalf-Of)
    key_id: str | None = None  # which API key, as the first hex digits of its SHA-256 (usage is counted per key)

    @property
    def reader(self) -> Reader | None:
        """Whose access lists bind this caller: a token's user, or the user a key narrowed itself to; None for an
        unnarrowed key or an open service, which read every document of the organisations they may name."""
        if (self.kind == "token" or self.narrowed) and self.user_id is not None:
            return Reader(self.user_id, self.groups)
        return None

    def narrowed_to(self, user_id: str, groups: frozenset[str]) -> Principal:
        """This key, acting for one end user: it sees what that user may read, in its own organisation(s). Only
        `on_behalf_of` calls it, after refusing a token."""
        return Principal(self.kind, user_id, self.org_id, groups, narrowed=True, key_id=self.key_id)

    def scope(self, user_id: str | None, org_id: str | None) -> tuple[str | None, str | None]:
        """The (user, organisation) a request acts for: the credential's wherever it has one."""
        if self.org_id is not None:
            if org_id is not None and org_id != self.org_id:
                raise TenantForbidden("this credential belongs to another organisation than the orgId requested")
            org_id = self.org_id
        if self.user_id is not None:
            if user_id is not None and user_id != self.user_id:
                raise TenantForbidden("this credential belongs to another user than the userId requested")
            user_id = self.user_id
        return user_id, org_id


ANONYMOUS = Principal("anonymous")


class Unauthenticated(Exception):
    """No credential, or one that is not valid; the message says which, never echoing the credential."""


def presented_credential(conn: HTTPConnection) -> str | None:
    authorization = conn.headers.get("authorization", "")
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    if key := conn.headers.get("x-api-key"):
        return key
    if conn.scope["type"] == "websocket":
        return conn.query_params.get("api_key") or conn.query_params.get("access_token")
    return None


def _looks_like_jwt(value: str) -> bool:
    return value.count(".") == 2 and value.startswith("eyJ")


class Authenticator:
    """Turns a presented credential into a Principal, from the settings' keys and token verification keys."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # KEY or KEY:ORG_ID; a key is compared whole, the organisation is what it is bound to
        self._keys: list[tuple[bytes, str | None]] = []
        for entry in settings.api_keys:
            key, _, org = entry.get_secret_value().partition(":")
            self._keys.append((key.encode(), org or None))

    @property
    def key_organisations(self) -> set[str]:
        """The organisations the scoped keys are bound to."""
        return {org for _, org in self._keys if org is not None}

    @property
    def takes_tokens(self) -> bool:
        return self._token_key is not None

    @property
    def enabled(self) -> bool:
        return bool(self._keys) or self._token_key is not None

    @cached_property
    def _token_key(self) -> tuple[Any, list[str]] | None:
        if self.settings.jwt_secret is not None:
            return self.settings.jwt_secret.get_secret_value(), HS_ALGORITHMS
        if self.settings.jwt_public_key:
            pem = self.settings.jwt_public_key
            if not pem.lstrip().startswith("-----BEGIN"):
                pem = Path(pem).read_text(encoding="utf-8")  # a path to the PEM file
            return pem, PUBLIC_KEY_ALGORITHMS
        return None

    def principal(self, credential: str | None) -> Principal:
        if not self.enabled:
            return ANONYMOUS
        if credential is None:
            raise Unauthenticated("missing credentials: send an API key or a token (Authorization: Bearer ...)")
        if self._token_key is not None and _looks_like_jwt(credential):
            return self._verify_token(credential)
        org: str | None = None
        matched = False
        for key, bound_org in self._keys:  # every key, without stopping: the time taken says nothing of which
            if hmac.compare_digest(credential.encode(), key):
                matched, org = True, bound_org
        if not matched:
            raise Unauthenticated("invalid API key")
        key_id = hashlib.sha256(credential.encode()).hexdigest()[:12]
        return Principal("scoped_key", org_id=org, key_id=key_id) if org else Principal("key", key_id=key_id)

    def _verify_token(self, token: str) -> Principal:
        import jwt  # here, not at the top: only a service with a token key needs PyJWT and its crypto (9 MiB)

        assert self._token_key is not None
        key, algorithms = self._token_key
        settings = self.settings
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,  # fixed by the configuration: a token's own `alg` (`none`, HS256 signed with a
                # public key) is never trusted
                audience=settings.jwt_audience,
                leeway=settings.jwt_leeway_seconds,
                options={"require": ["exp", "sub"], "verify_aud": settings.jwt_audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated("the token is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated("the token is for another audience") from None
        except jwt.InvalidTokenError:
            raise Unauthenticated("invalid token") from None
        user = claims.get("sub")
        org = claims.get(settings.jwt_org_claim)
        groups = claims.get(settings.jwt_groups_claim, [])
        if not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
            raise Unauthenticated(f"the token's {settings.jwt_groups_claim} claim must be a list of group names")
        if not isinstance(user, str) or not user:
            raise Unauthenticated("the token's sub claim must name the user")
        if not isinstance(org, str) or not org:
            raise Unauthenticated(f"the token has no {settings.jwt_org_claim} claim naming the organisation")
        return Principal("token", user_id=user, org_id=org, groups=frozenset(groups))


async def authenticate(conn: HTTPConnection) -> Principal:
    """The dependency every protected route and WebSocket runs first."""
    with tracer.start_as_current_span("authenticate") as span:
        principal = _authenticate(conn)
        span.set_attribute("rag.principal", principal.kind)  # never the credential, nor whose it is
        return principal


def _authenticate(conn: HTTPConnection) -> Principal:
    authenticator: Authenticator = conn.app.state.services.authenticator
    try:
        principal = authenticator.principal(presented_credential(conn))
    except Unauthenticated as exc:
        if conn.scope["type"] == "websocket":
            raise WebSocketException(code=status.WS_1008_POLICY_VIOLATION, reason=str(exc)) from None
        raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None
    try:
        return on_behalf_of(principal, conn)
    except TenantForbidden as exc:
        if conn.scope["type"] == "websocket":
            raise WebSocketException(code=status.WS_1008_POLICY_VIOLATION, reason=str(exc)) from None
        raise


def on_behalf_of(principal: Principal, conn: HTTPConnection) -> Principal:
    """The principal narrowed to the end user named by `X-On-Behalf-Of` (and `X-On-Behalf-Of-Groups`, comma
    separated), when the request names one. Groups without a user are refused: they would narrow nothing."""
    user = conn.headers.get("x-on-behalf-of")
    groups_header = conn.headers.get("x-on-behalf-of-groups")
    if user is None and groups_header is None:
        return principal
    if principal.kind == "token":
        raise TenantForbidden("a user token cannot act on behalf of another user (X-On-Behalf-Of)")
    user = (user or "").strip()
    if not user:
        raise TenantForbidden("X-On-Behalf-Of-Groups needs X-On-Behalf-Of naming the user")
    groups = frozenset(g.strip() for g in (groups_header or "").split(",") if g.strip())
    return principal.narrowed_to(user, groups)


PrincipalDep = Annotated[Principal, Depends(authenticate)]
