"""Which addresses a web source may reach: no server-side request forgery.

A URL is refused when its host is, or resolves to, an address that is not on the public internet: loopback, private
(10/8, 172.16/12, 192.168/16, fc00::/7), link-local (169.254/16 with the cloud metadata service, fe80::/10), shared
(100.64/10), multicast, reserved or unspecified, and the IPv6 forms that carry one of those (IPv4-mapped, 6to4,
NAT64). `SOURCES_ALLOW_HOSTS` lists what an intranet source may reach anyway: host names, addresses or CIDR ranges.

The check happens where the connection is made (`GuardedBackend.connect_tcp`): the name is resolved once, every address
it resolves to is checked, and the socket is opened to the checked address itself, so a redirect, a link or a name
whose DNS answer changes between check and use (rebinding) meets the same check. TLS still verifies the host name.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import httpcore

from rag.errors import InvalidRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SHARED = ipaddress.ip_network("100.64.0.0/10")


class AddressRefused(InvalidRequest):
    """A URL whose address a source may not reach; the message names the address and why."""


def why_not_public(address: IPAddress) -> str | None:
    """Why `address` is not a public one (None: it is)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            reason = why_not_public(embedded)
            return None if reason is None else f"{reason} (inside the IPv6 address)"
    for reason, test in (
        ("loopback", address.is_loopback),
        ("unspecified", address.is_unspecified),
        ("link-local, where cloud metadata services answer", address.is_link_local),
        ("private", address.is_private and not (isinstance(address, ipaddress.IPv4Address) and address in _SHARED)),
        ("shared (carrier-grade NAT)", isinstance(address, ipaddress.IPv4Address) and address in _SHARED),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("not globally routable", not address.is_global),
    ):
        if test:
            return reason
    return None


class AddressPolicy:
    """The public internet, and what SOURCES_ALLOW_HOSTS adds: host names (exact, any case) and addresses or ranges."""

    def __init__(self, allow: Iterable[str] = ()) -> None:
        self.hosts: set[str] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in (e.strip() for e in allow):
            if not entry:
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                self.hosts.add(entry.lower().rstrip("."))

    def refusal(self, host: str, address: IPAddress) -> str | None:
        """Why `host`, at `address`, may not be reached (None: it may)."""
        if host.lower().rstrip(".") in self.hosts or any(address in net for net in self.networks):
            return None
        reason = why_not_public(address)
        if reason is None:
            return None
        return f"{host} is at {address}, a {reason} address; SOURCES_ALLOW_HOSTS can allow it"

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Every address `host` resolves to, each checked: AddressRefused when any is refused (a name that also
        points inward is not trusted for its public answers)."""
        literal = _literal(host)
        if literal is not None:
            addresses = [literal]
        else:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except (socket.gaierror, UnicodeError) as exc:
                raise AddressRefused(f"{host} does not resolve: {exc}") from None
            addresses = list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))
        for address in addresses:
            reason = self.refusal(host, address)
            if reason is not None:
                raise AddressRefused(reason)
        return addresses


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def check_url(url: str) -> tuple[str, str, int]:
    """The scheme, host and port of a URL a source may name: http or https, a host, no credentials."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidRequest(f"{url!r} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidRequest(f"{url!r}: only http and https URLs can be a source")
    if not parts.hostname:
        raise InvalidRequest(f"{url!r} names no host")
    if parts.username is not None or parts.password is not None:
        raise InvalidRequest(f"{url!r} holds credentials; a source's URL may not")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's own network backend, connecting only to addresses the policy allows: the one place the check and
    the connection meet."""

    def __init__(self, policy: AddressPolicy, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.policy = policy
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self.policy.resolve(host, port)
        error: Exception | None = None
        for address in addresses:  # the checked addresses, never the name again
            try:
                return await self.inner.connect_tcp(str(address), port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise AddressRefused("a source cannot reach a Unix socket")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)
