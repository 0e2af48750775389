"""A small web site for tests/test_sources.py and bench/sources.py, served on 127.0.0.1 by tests.servers.serve:
pages that change between syncs, ETag validators, robots.txt, redirects and slow pages, with a log of every request
it answered."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def page(title: str, body: str, links: list[str] = (), nav: bool = True) -> str:  # type: ignore[assignment]
    """A page as sites make them: a menu, a header and a footer around the main text."""
    menu = "".join(f'<li><a href="{link}">{link}</a></li>' for link in links)
    chrome = (
        '<header class="site-header"><a href="/">Acme Docs</a> Products Pricing Careers</header>'
        f"<nav><ul>{menu}</ul> Menu entries Login Signup</nav>"
        if nav
        else f"<div>{menu}</div>"
    )
    return (
        f"<!doctype html><html><head><title>{title}</title><style>body{{}}</style></head><body>{chrome}"
        f"<main><h1>{title}</h1><p>{body}</p></main>"
        '<div class="cookie-banner">We use cookies to improve your experience</div>'
        "<footer>Copyright Acme Corporation, all rights reserved</footer></body></html>"
    )


class Site:
    def __init__(self) -> None:
        self.pages: dict[str, tuple[str, bytes]] = {}  # path -> (content type, body)
        self.redirects: dict[str, str] = {}
        self.robots = ""
        self.delay = 0.0  # before every answer but robots.txt's
        self.slow: dict[str, float] = {}  # path -> its own delay
        self.log: list[tuple[str, int]] = []  # (path, status) of every answer
        self._lock = threading.Lock()
        self.app = Starlette(routes=[Route("/{path:path}", self._answer)])

    def html(self, path: str, text: str) -> None:
        self.pages[path] = ("text/html; charset=utf-8", text.encode())

    def requests_for(self, path: str) -> list[int]:
        with self._lock:
            return [status for logged, status in self.log if logged == path]

    async def _answer(self, request: Request) -> Response:
        path = "/" + request.path_params["path"]
        response = self._response(path, request.headers)
        if self.delay and path != "/robots.txt":
            await asyncio.sleep(self.delay)
        if path in self.slow:
            await asyncio.sleep(self.slow[path])
        with self._lock:
            self.log.append((path, response.status_code))
        return response

    def _response(self, path: str, headers: Any) -> Response:
        if path == "/robots.txt":
            return Response(self.robots, media_type="text/plain") if self.robots else Response(status_code=404)
        if path in self.redirects:
            return Response(status_code=302, headers={"Location": self.redirects[path]})
        if path not in self.pages:
            return Response("not here", status_code=404)
        media_type, body = self.pages[path]
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        if headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={"ETag": etag})
        return Response(body, headers={"ETag": etag, "Content-Type": media_type})
