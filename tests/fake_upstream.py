"""A scripted OpenAI-compatible server, served over real HTTP on 127.0.0.1, standing in for a paid API.

Each test sets a `Script` (tokens, delays, an error status, a cut or a hang) and then reads what the server saw:
the request bodies, and whether a stream's client went away before the end. The client code under test is the
real `openai` SDK talking to it.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


@dataclass
class Script:
    tokens: list[str] = field(default_factory=lambda: ["Hello", ",", " world", "!"])
    reasoning: list[str] = field(default_factory=list)  # sent as delta.reasoning_content before the tokens
    delay: float = 0.0  # seconds before each chunk
    status: int | None = None  # answer this status instead of a stream
    error_code: str | None = None  # the `code` in that answer's error body
    error_message: str = "scripted failure"
    failures: int | None = None  # answer `status` to only this many requests, then stream
    retry_after: str | None = None
    should_retry: str | None = None  # sent as the `x-should-retry` header with `status`
    cut_after: int | None = None  # drop the connection after this many content chunks, with no [DONE]
    hang: bool = False  # accept the request and never send a byte
    malformed_after: int | None = None  # send a chunk that is not JSON after this many content chunks
    usage: bool = True
    line_end: str = "\n"  # SSE allows LF, CRLF and CR
    piece_bytes: int | None = None  # write the body in pieces of this many bytes, cutting lines and characters
    final_line_end: bool = True  # False: the body ends right after its last line's text, with no line break
    done_marker: bool = True  # False: no `data: [DONE]` (some servers just close the body)


class FakeUpstream:
    def __init__(self) -> None:
        self.script = Script()
        self.requests: list[dict[str, Any]] = []
        self.request_headers: list[dict[str, str]] = []
        self.client_ports: list[int] = []  # the TCP port each request came from: one per connection the client opened
        self.completed = 0
        self.disconnected = threading.Event()
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/embeddings", self._embeddings, methods=["POST"]),
            ]
        )

    def reset(self, script: Script | None = None) -> None:
        self.script = script or Script()
        self.requests.clear()
        self.request_headers.clear()
        self.client_ports.clear()
        self.completed = 0
        self.disconnected.clear()

    def wait_disconnect(self, timeout: float) -> bool:
        return self.disconnected.wait(timeout)

    # --- handlers --------------------------------------------------------------------------------

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        self.request_headers.append(dict(request.headers))
        self.client_ports.append(request.client.port if request.client else 0)
        script = self.script
        if script.status is not None and (script.failures is None or len(self.requests) <= script.failures):
            headers = {"retry-after": script.retry_after} if script.retry_after else {}
            if script.should_retry is not None:
                headers["x-should-retry"] = script.should_retry
            error = {"error": {"message": script.error_message, "type": "server_error", "code": script.error_code}}
            return JSONResponse(error, status_code=script.status, headers=headers)
        if script.hang:
            # A plain handler is not cancelled when its client leaves, so watch for it.
            while not await request.is_disconnected():
                await asyncio.sleep(0.05)
            self.disconnected.set()
            return Response(status_code=499)
        if not body.get("stream"):
            return JSONResponse(self._completion(body, script))
        return StreamingResponse(self._framed(self._stream(body, script), script), media_type="text/event-stream")

    def _chunk(self, body: dict[str, Any], delta: dict[str, Any], finish: str | None = None) -> str:
        chunk = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(chunk)}\n\n"

    async def _framed(self, lines: AsyncIterator[str], script: Script) -> AsyncIterator[bytes]:
        """The stream's text with the script's line ends, written whole or in pieces."""
        async for text in lines:
            data = text.replace("\n", script.line_end).encode()
            if script.piece_bytes is None:
                yield data
                continue
            for start in range(0, len(data), script.piece_bytes):
                yield data[start : start + script.piece_bytes]
                await asyncio.sleep(0.001)  # a write of its own, so that the client's reads end mid-line

    async def _stream(self, body: dict[str, Any], script: Script) -> AsyncIterator[str]:
        finished = False
        try:
            yield self._chunk(body, {"role": "assistant", "content": ""})
            for piece in script.reasoning:
                await asyncio.sleep(script.delay)
                yield self._chunk(body, {"reasoning_content": piece})
            for n, token in enumerate(script.tokens):
                if script.cut_after is not None and n == script.cut_after:
                    raise ConnectionAbortedError("scripted cut")  # uvicorn drops the connection mid-body
                if script.malformed_after is not None and n == script.malformed_after:
                    yield "data: {this is not json\n\n"
                await asyncio.sleep(script.delay)
                yield self._chunk(body, {"content": token})
            tail = [self._chunk(body, {}, finish="stop")]
            if script.usage and (body.get("stream_options") or {}).get("include_usage"):
                usage = {
                    "prompt_tokens": 7,
                    "completion_tokens": len(script.tokens),
                    "total_tokens": 7 + len(script.tokens),
                }
                chunk = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": "fake",
                         "choices": [], "usage": usage}  # fmt: skip
                tail.append(f"data: {json.dumps(chunk)}\n\n")
            if script.done_marker:
                tail.append("data: [DONE]\n\n")
            if not script.final_line_end:
                tail[-1] = tail[-1].rstrip("\n")
            for text in tail:
                yield text
            finished = True
            self.completed += 1
        finally:
            if not finished:
                self.disconnected.set()

    def _completion(self, body: dict[str, Any], script: Script) -> dict[str, Any]:
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(script.tokens)},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": 7,
                "completion_tokens": len(script.tokens),
                "total_tokens": 7 + len(script.tokens),
            },
        }

    async def _embeddings(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        # A deterministic toy embedding: letter frequencies, so similar texts get similar vectors.
        data = []
        for i, text in enumerate(inputs):
            vector = [0.0] * 26
            for ch in text.lower():
                if "a" <= ch <= "z":
                    vector[ord(ch) - 97] += 1.0
            vector[0] += 0.01  # never all zeros
            data.append({"object": "embedding", "index": i, "embedding": vector})
        return JSONResponse({"object": "list", "data": data, "model": body.get("model"), "usage": {}})
