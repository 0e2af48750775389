"""The OpenAI-compatible chat model: OpenAI itself, DeepSeek, vLLM, Ollama, llama.cpp's server...

The `openai` SDK does what it is good at: configuration (the key, the base URL, timeouts, retries, its headers) and
the HTTP client with its pool, limits and proxies. The streaming request is sent here, through that client:
- the URL, headers and timeouts the SDK would use are worked out once per model, and each answer's request is
  built from them. The SDK's request path (option models copied per attempt, headers and URL merged afresh) cost a
  fifth of the service's CPU per request at 50 simultaneous one-token answers (2.7 against 2.2 ms);
- retries follow the SDK's documented policy (`llm/retries.py`: connection errors, timeouts, 408, 409, 429 and 5xx,
  with its backoff and `Retry-After`), and only until the response headers arrive, so a retry can never repeat
  tokens a client already has; failures become our errors, as the SDK's became before;
- the streamed chunks are read here: the response's lines, `json.loads`, plain dicts. The SDK's stream builds a
  validated model object per chunk, which was most of the service's CPU per relayed token. The chunks' shape is the
  same, so the behaviour is too (reasoning fields, `<think>` splitting, usage, finish reasons, cancellation by
  closing the response).
"""

from __future__ import annotations

import json
import logging
import math
import ssl
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx2
import openai
from pydantic import SecretStr

from config import Settings
from llm.errors import (
    LLMError,
    PromptTooLong,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from llm.reasoning import ThinkTagSplitter, starts_inside_think
from llm.retries import retry_after_seconds, retry_delay, should_retry
from llm.tracing import with_trace_context
from llm.types import Delta, GenerationOptions, Message, Usage
from llm.upstream_pool import upstream_http_client

logger = logging.getLogger(__name__)


def make_async_client(
    settings: Settings,
    *,
    base_url: str | None = None,
    api_key: SecretStr | None = None,
    max_retries: int | None = None,
) -> openai.AsyncOpenAI:
    """An SDK client for the OPENAI_* settings, or for another server where `base_url`/`api_key` say so."""
    secret = api_key or settings.openai_api_key
    key = secret.get_secret_value() if secret else None
    return openai.AsyncOpenAI(
        # Local servers (vLLM, Ollama) take any key, but the SDK refuses to start without one.
        api_key=key or "no-key",
        base_url=base_url or settings.openai_base_url,
        timeout=openai.Timeout(settings.openai_timeout, connect=settings.openai_connect_timeout),
        max_retries=settings.openai_max_retries if max_retries is None else max_retries,
        http_client=upstream_http_client(),
    )


# How OpenAI (`"code": "context_length_exceeded"`) and vLLM ("This model's maximum context length is ...") say, in a
# 400's body, that the prompt does not fit the model's window.
_CONTEXT_OVERFLOW_MARKS = (b"context_length_exceeded", b"maximum context length")
ERROR_BODY_BYTES = 64 * 1024  # what is read of an error answer's body to classify it; the rest is dropped


def status_error(response: httpx2.Response, body: bytes = b"") -> LLMError:
    """An error answer as one of our errors, with a message safe to show a client (no upstream body)."""
    if response.status_code == 400 and any(mark in body for mark in _CONTEXT_OVERFLOW_MARKS):
        return PromptTooLong(
            "the prompt (the conversation and the retrieved context) is longer than the model's context window: "
            + PromptTooLong.ADVICE
        )
    if response.status_code == 429:
        wait = retry_after_seconds(response.headers)
        retry_after = max(0.0, wait) if wait is not None and math.isfinite(wait) else None
        return UpstreamRateLimited("the model provider is rate limiting requests", retry_after)
    return UpstreamUnavailable(f"the model provider answered with status {response.status_code}")


_DRAIN_SECONDS = 1.0  # a server that keeps the body open after [DONE] is not waited for longer than this


def _reasoning_of(delta: dict[str, Any]) -> str:
    # DeepSeek names it `reasoning_content`, vLLM `reasoning`.
    if "reasoning_content" not in delta and "reasoning" not in delta:
        return ""  # most chunks: answer text only
    for name in ("reasoning_content", "reasoning"):
        value = delta.get(name)
        if isinstance(value, str) and value:
            return value
    return ""


_DONE: dict[str, Any] = {}  # what `_chunk` returns for `data: [DONE]`
_LINE_ENDS = (b"\n", b"\r")  # SSE ends a line with LF, CR or CRLF: what `bytes.splitlines` splits on


def _chunk(line: bytes) -> dict[str, Any] | None:
    """The JSON object of one line of an OpenAI stream: None for lines that carry none (blank separators,
    `: keep-alive` comments, `event:` lines), `_DONE` for `data: [DONE]`. A function called per line rather than a
    generator layer: one generator hop costs more per token than the parsing."""
    if not line.startswith(b"data:"):
        return None
    data = line[5:].strip()
    if data == b"[DONE]":
        return _DONE
    try:
        text = data.decode()  # decoded here: `json.loads` of bytes first guesses their encoding, in Python
    except UnicodeDecodeError:  # bytes that are not UTF-8 become U+FFFD, as a text decoder would make them
        text = data.decode("utf-8", "replace")
    chunk = json.loads(text)  # ValueError on a chunk that is not JSON
    if not isinstance(chunk, dict):
        raise ValueError("a chunk that is not a JSON object")
    if "error" in chunk:  # some servers report a failure mid-stream as a chunk
        raise UpstreamUnavailable("the model provider reported an error mid-stream")
    return chunk


def _delta(chunk: dict[str, Any], splitter: ThinkTagSplitter) -> Delta | None:
    """What one chunk adds to the answer: its text (with inline `<think>` reasoning split off), its reasoning
    field, its finish reason, its usage; None for a chunk that carries none of them."""
    usage = None
    if raw_usage := chunk.get("usage"):
        usage = Usage(raw_usage.get("prompt_tokens") or 0, raw_usage.get("completion_tokens") or 0)
    choices = chunk.get("choices")
    if not choices:
        return None if usage is None else Delta(usage=usage)
    choice = choices[0]
    delta = choice.get("delta") or {}
    finish_reason = choice.get("finish_reason")
    content, inline_reasoning = splitter.feed(delta.get("content") or "")
    if finish_reason is not None:
        rest, rest_reasoning = splitter.flush()
        content, inline_reasoning = content + rest, inline_reasoning + rest_reasoning
    reasoning = _reasoning_of(delta) + inline_reasoning
    return Delta(content=content, reasoning=reasoning, usage=usage, finish_reason=finish_reason)


async def error_body(response: httpx2.Response) -> bytes:
    """The start of an error answer's body (at most ERROR_BODY_BYTES); nothing if it cannot be read."""
    body = bytearray()
    try:
        async for piece in response.aiter_bytes():
            body += piece
            if len(body) >= ERROR_BODY_BYTES:
                break
    except httpx2.HTTPError:
        pass
    return bytes(body[:ERROR_BODY_BYTES])


class OpenAIChatModel:
    provider = "openai"

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        model: str,
        max_tokens: int,
        temperature: float | None,
        think_starts_inside: bool | None = None,
    ) -> None:
        self._client = client
        self.model = model
        self._max_tokens = max_tokens
        self._temperature = temperature
        self._think_starts_inside = think_starts_inside  # None: guess from the model's name
        # What the SDK would send with every request, worked out once: its HTTP client (the one `make_async_client`
        # gave it, kept as `_client`), the endpoint's URL, its headers (the key, its user agent) and its timeouts.
        self._http: httpx2.AsyncClient = client._client
        self._url = client.base_url.copy_with(raw_path=client.base_url.raw_path + b"chat/completions")
        headers = {**client.default_headers, **client.auth_headers}
        self._headers = httpx2.Headers({name: value for name, value in headers.items() if isinstance(value, str)})
        self._timeout = client.timeout
        self._max_retries = client.max_retries

    def _request_args(self, messages: list[Message], options: GenerationOptions) -> dict[str, Any]:
        args: dict[str, Any] = {
            "model": options.model or self.model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": options.max_tokens or self._max_tokens,
        }
        temperature = options.temperature if options.temperature is not None else self._temperature
        if temperature is not None:
            args["temperature"] = temperature
        if options.stop:
            args["stop"] = list(options.stop)
        return args

    async def _open(self, body: bytes) -> httpx2.Response:
        """The streaming response, once its status says success. A failed attempt is retried as the SDK would
        (`llm/retries.py`); the last failure is raised as one of our errors."""
        for retries_taken in range(self._max_retries + 1):
            last = retries_taken == self._max_retries
            request = self._http.build_request(
                "POST", self._url, content=body, headers=self._headers, timeout=self._timeout
            )
            with_trace_context(request.headers)  # the upstream's own spans, if it makes any, join this trace
            try:
                response = await self._http.send(request, stream=True)
            except httpx2.TimeoutException as exc:
                if last:
                    raise UpstreamTimeout("the model provider did not answer in time") from exc
                await anyio.sleep(retry_delay(retries_taken, None))
                continue
            except (httpx2.RequestError, ssl.SSLError, anyio.EndOfStream) as exc:  # what the SDK retries
                if last:
                    raise UpstreamUnavailable("the model provider could not be reached") from exc
                await anyio.sleep(retry_delay(retries_taken, None))
                continue
            if response.is_success:
                return response
            answer = await error_body(response) if response.status_code == 400 else b""
            await response.aclose()
            if last or not should_retry(response.status_code, response.headers):
                raise status_error(response, answer)
            await anyio.sleep(retry_delay(retries_taken, response.headers))
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def stream(self, messages: list[Message], options: GenerationOptions) -> AsyncIterator[Delta]:
        # Serialised here, not by `chat.completions.create`, whose transformation of the body against the SDK's
        # TypedDicts cost 3 ms of CPU for a conversation of 21 messages.
        response = await self._open(json.dumps(self._request_args(messages, options)).encode())
        finished = False
        # Reasoning written inline as <think>...</think> is split off the answer; a separate reasoning field wins.
        inside = self._think_starts_inside
        splitter = ThinkTagSplitter(starts_inside_think(options.model or self.model) if inside is None else inside)
        # The body's bytes are split into lines here rather than by httpx's `aiter_lines`, whose text decoding and
        # line decoding are two more generator layers per read; `_chunk` decodes each line's UTF-8 itself.
        body = response.aiter_bytes()
        pending: bytes | bytearray = b""  # the start of a line cut by the end of a read
        done = False
        try:
            while not done:
                data = await anext(body, None)
                if data is None:
                    if not pending:
                        break
                    data = b"\n"  # the body ended inside a line: that line is complete
                if pending:
                    pending += data  # a bytearray: a long line arriving in many reads is joined in linear time
                    if b"\n" not in data and b"\r" not in data:
                        continue
                    lines = bytes(pending).splitlines()
                else:
                    lines = data.splitlines()
                # A line cut by the end of a read waits for the rest; a cut between CR and LF only adds a blank line.
                pending = b"" if data.endswith(_LINE_ENDS) or not lines else bytearray(lines.pop())
                for line in lines:
                    chunk = _chunk(line)
                    if chunk is None:
                        continue
                    if chunk is _DONE:
                        done = True
                        break
                    delta = _delta(chunk, splitter)
                    # The parsed chunk is not kept while the stream waits for its consumer (2 KiB per open stream).
                    chunk = None
                    if delta is not None:
                        # The usage chunk comes after the finish reason.
                        finished = finished or delta.usage is not None or delta.finish_reason is not None
                        yield delta
            # Read the stream to its end (after [DONE] only its last empty chunk is left), so that the connection
            # goes back to the pool: closed mid-body, it would be dropped, and the next answer would open a new one.
            with anyio.move_on_after(_DRAIN_SECONDS):
                async for _ in body:
                    pass
        except httpx2.TimeoutException as exc:
            raise UpstreamTimeout("the model provider stopped sending in time") from exc
        except httpx2.HTTPError as exc:  # the connection broke off mid-stream
            raise UpstreamProtocolError("the model provider's stream broke off") from exc
        except (ValueError, AttributeError, TypeError) as exc:  # a chunk that is not JSON, or not a chunk
            raise UpstreamProtocolError("the model provider sent a chunk that could not be read") from exc
        finally:
            # Closing the response early closes the connection: the upstream stops generating (and billing).
            await response.aclose()
        if not finished:
            raise UpstreamProtocolError("the model provider's stream ended before the answer was complete")

    async def aclose(self) -> None:
        await self._client.close()
